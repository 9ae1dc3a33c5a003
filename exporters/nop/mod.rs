//! Exporter `nop`: accepts everything and sends it nowhere. A placeholder for a pipeline that needs an exporter,
//! as the Collector's `nop` exporter is.

use std::sync::Arc;

use async_trait::async_trait;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, Data, ExportError, Exporter, ExporterContext, ExporterFactory, Signal,
};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NopConfig {}

impl ComponentConfig for NopConfig {}

pub struct NopExporterFactory;

infercol_pipelines::factory!(
    NopExporterFactory,
    "nop",
    NopConfig,
    &[Signal::Traces, Signal::Metrics, Signal::Logs]
);

impl ExporterFactory for NopExporterFactory {
    fn create(&self, _config: &AnyConfig, _ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
        Ok(Arc::new(NopExporter))
    }
}

struct NopExporter;

#[async_trait]
impl Exporter for NopExporter {
    async fn export(&self, _data: Data) -> Result<(), ExportError> {
        Ok(())
    }
}
