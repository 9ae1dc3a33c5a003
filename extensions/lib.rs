//! infercol's extensions: components that run beside the pipelines. Each is one folder.

pub mod health_check;
