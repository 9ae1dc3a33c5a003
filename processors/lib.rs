//! infercol's processors. Each is one folder: its configuration beside the code that does the work.

pub mod batch;
pub mod memory_limiter;
pub mod model_metrics;
mod ticker;
