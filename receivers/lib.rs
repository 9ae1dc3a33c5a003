//! infercol's receivers. Each is one folder: its configuration beside the code that does the work.

pub mod otlp;
