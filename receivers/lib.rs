//! infercol's receivers. Each is one folder: its configuration beside the code that does the work.

pub mod hostmetrics;
pub mod nop;
pub mod nvml;
pub mod otlp;
pub mod prometheus;
pub mod replica_probe;
mod sampling;
