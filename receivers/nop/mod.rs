//! Receiver `nop`: receives nothing. A placeholder for a pipeline that needs a receiver, as the Collector's
//! `nop` receiver is.

use async_trait::async_trait;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, Receiver, ReceiverContext, ReceiverFactory, Signal,
};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NopConfig {}

impl ComponentConfig for NopConfig {}

pub struct NopReceiverFactory;

infercol_pipelines::factory!(
    NopReceiverFactory,
    "nop",
    NopConfig,
    &[Signal::Traces, Signal::Metrics, Signal::Logs]
);

impl ReceiverFactory for NopReceiverFactory {
    fn create(&self, _config: &AnyConfig, _ctx: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
        // The consumers are dropped at once: a pipeline fed only by nop closes as soon as it is stopped.
        Ok(Box::new(NopReceiver))
    }
}

struct NopReceiver;

#[async_trait]
impl Receiver for NopReceiver {
    async fn start(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }
    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }
}
