//! Every processor's items counted in one place, as the Collector's processorhelper does:
//! `otelcol_processor_incoming_items` for what enters a processor, `otelcol_processor_outgoing_items` for what it
//! passes on. The graph wraps each processor and the `next` it is given; no processor counts for itself.

use std::sync::Arc;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;

use crate::component::{ComponentError, ConsumeError, Consumer, Gate, Processor};
use crate::data::Data;

/// The rest of the chain, as a processor sees it: what it passes on is counted as its outgoing items.
pub(crate) struct Outgoing {
    pub next: Arc<dyn Consumer>,
    pub items: Counter,
}

#[async_trait]
impl Consumer for Outgoing {
    async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
        self.items.inc_by(data.items() as u64);
        self.next.consume(data).await
    }
}

/// A processor whose incoming items are counted.
pub(crate) struct Incoming {
    pub processor: Arc<dyn Processor>,
    pub items: Counter,
}

#[async_trait]
impl Consumer for Incoming {
    async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
        self.items.inc_by(data.items() as u64);
        self.processor.consume(data).await
    }
}

#[async_trait]
impl Processor for Incoming {
    fn gate(&self) -> Option<Arc<dyn Gate>> {
        self.processor.gate()
    }
    async fn start(&self) -> Result<(), ComponentError> {
        self.processor.start().await
    }
    async fn shutdown(&self) -> Result<(), ComponentError> {
        self.processor.shutdown().await
    }
}
