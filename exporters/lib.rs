//! infercol's exporters. Each is one folder: its configuration beside the code that does the work.

pub mod debug;
pub mod file;
pub mod otlp;
