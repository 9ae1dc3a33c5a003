//! Processor `batch`: groups requests into batches of `send_batch_size` items, or whatever arrived within
//! `timeout`, as the OpenTelemetry Collector's batch processor does. What it holds is flushed at shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use infercol_pipelines::config::duration;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, ConsumeError, Consumer, Data, Payload, Processor, ProcessorContext,
    ProcessorFactory, Signal, config_as,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Items (spans, metric points, log records) that make a batch be sent at once.
    pub send_batch_size: usize,
    /// The longest a request waits for others before its batch is sent anyway.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            send_batch_size: 8192,
            timeout: Duration::from_millis(200),
        }
    }
}

impl ComponentConfig for BatchConfig {
    fn validate(&self) -> Result<(), String> {
        if self.send_batch_size == 0 {
            return Err("send_batch_size: must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be more than 0".into());
        }
        Ok(())
    }
}

pub struct BatchProcessorFactory;

infercol_pipelines::factory!(
    BatchProcessorFactory,
    "batch",
    BatchConfig,
    &[Signal::Traces, Signal::Metrics, Signal::Logs]
);

impl ProcessorFactory for BatchProcessorFactory {
    fn create(&self, config: &AnyConfig, ctx: ProcessorContext) -> Result<Arc<dyn Processor>, ComponentError> {
        let config = config_as::<BatchConfig>(config)?.clone();
        Ok(Arc::new(BatchProcessor {
            inner: Arc::new(Inner {
                send_batch_size: config.send_batch_size,
                next: ctx.next,
                pending: Mutex::new(Pending::default()),
            }),
            timeout: config.timeout,
            timer: Default::default(),
        }))
    }
}

/// Requests merged so far.
#[derive(Default)]
struct Pending {
    items: usize,
    /// Acknowledgements of the requests merged so far: released when the batch is passed on.
    acks: Vec<Arc<infercol_pipelines::data::Ack>>,
    traces: Option<ExportTraceServiceRequest>,
    metrics: Option<ExportMetricsServiceRequest>,
    logs: Option<ExportLogsServiceRequest>,
}

impl Pending {
    fn add(&mut self, mut data: Data) {
        self.items += data.items();
        self.acks.extend(data.take_acks());
        match data.into_payload() {
            Payload::Traces(r) => {
                let r = Arc::unwrap_or_clone(r);
                match &mut self.traces {
                    Some(t) => t.resource_spans.extend(r.resource_spans),
                    None => self.traces = Some(r),
                }
            }
            Payload::Metrics(r) => {
                let r = Arc::unwrap_or_clone(r);
                match &mut self.metrics {
                    Some(m) => m.resource_metrics.extend(r.resource_metrics),
                    None => self.metrics = Some(r),
                }
            }
            Payload::Logs(r) => {
                let r = Arc::unwrap_or_clone(r);
                match &mut self.logs {
                    Some(l) => l.resource_logs.extend(r.resource_logs),
                    None => self.logs = Some(r),
                }
            }
        }
    }

    fn take(&mut self) -> Vec<Data> {
        self.items = 0;
        let mut out = Vec::new();
        if let Some(t) = self.traces.take() {
            out.push(Data::traces(t));
        }
        if let Some(m) = self.metrics.take() {
            out.push(Data::metrics(m));
        }
        if let Some(l) = self.logs.take() {
            out.push(Data::logs(l));
        }
        if let Some(first) = out.first_mut() {
            first.add_acks(std::mem::take(&mut self.acks));
        }
        out
    }
}

struct Inner {
    send_batch_size: usize,
    next: Arc<dyn Consumer>,
    pending: Mutex<Pending>,
}

impl Inner {
    async fn send(&self, batches: Vec<Data>) -> Result<(), ConsumeError> {
        for batch in batches {
            self.next.consume(batch).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl crate::ticker::Flush for Inner {
    async fn flush(&self) -> Result<(), ConsumeError> {
        let batches = match self.pending.lock() {
            Ok(mut p) => p.take(),
            Err(_) => return Ok(()),
        };
        self.send(batches).await
    }
}

pub struct BatchProcessor {
    inner: Arc<Inner>,
    timeout: Duration,
    timer: crate::ticker::Ticker,
}

#[async_trait]
impl Consumer for BatchProcessor {
    async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
        let full = {
            let mut pending = self
                .inner
                .pending
                .lock()
                .map_err(|_| ConsumeError::Permanent("batch processor lock poisoned".into()))?;
            pending.add(data);
            (pending.items >= self.inner.send_batch_size).then(|| pending.take())
        };
        match full {
            Some(batches) => self.inner.send(batches).await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Processor for BatchProcessor {
    async fn start(&self) -> Result<(), ComponentError> {
        self.timer.flush_every(
            self.timeout,
            self.inner.clone(),
            "batch processor: sending a timed batch",
        );
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), ComponentError> {
        self.timer.stop_and_flush(&*self.inner, "flushing the batch").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infercol_pipelines::{ComponentId, Telemetry};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    struct Collect(tokio::sync::Mutex<Vec<Data>>);

    #[async_trait]
    impl Consumer for Collect {
        async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
            self.0.lock().await.push(data);
            Ok(())
        }
    }

    fn spans(n: usize) -> Data {
        named("s", n)
    }

    fn named(prefix: &str, n: usize) -> Data {
        Data::traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..n)
                        .map(|i| Span {
                            name: format!("{prefix}{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    fn processor(size: usize, timeout: Duration) -> (Arc<dyn Processor>, Arc<Collect>) {
        let sink = Arc::new(Collect(Default::default()));
        (processor_into(size, timeout, sink.clone()), sink)
    }

    fn processor_into(size: usize, timeout: Duration, next: Arc<dyn Consumer>) -> Arc<dyn Processor> {
        let config: AnyConfig = Box::new(BatchConfig {
            send_batch_size: size,
            timeout,
        });
        BatchProcessorFactory
            .create(
                &config,
                ProcessorContext {
                    id: ComponentId::parse("batch").unwrap(),
                    pipeline: "traces".into(),
                    signal: Signal::Traces,
                    next,
                    telemetry: Telemetry::new(),
                    shared: Default::default(),
                },
            )
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn sends_when_size_reached_and_on_timeout_and_at_shutdown() {
        let (p, sink) = processor(10, Duration::from_millis(200));
        p.start().await.unwrap();
        // The first tick of the timer fires at once, with nothing pending.
        tokio::time::sleep(Duration::from_millis(1)).await;
        p.consume(spans(4)).await.unwrap();
        p.consume(spans(7)).await.unwrap();
        {
            let got = sink.0.lock().await;
            assert_eq!(got.len(), 1, "11 items reach the size of 10: one batch");
            assert_eq!(got[0].items(), 11);
        }
        p.consume(spans(3)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(sink.0.lock().await.len(), 2, "the timeout sends what is pending");
        p.consume(spans(2)).await.unwrap();
        p.shutdown().await.unwrap();
        let got = sink.0.lock().await;
        assert_eq!(got.len(), 3, "shutdown flushes");
        let total: usize = got.iter().map(|d| d.items()).sum();
        assert_eq!(total, 16);
    }

    /// A consumer whose first call waits until released (an exporter queue that is full), then collects.
    #[derive(Default)]
    struct Held {
        entered: tokio::sync::Notify,
        release: tokio::sync::Notify,
        first: std::sync::atomic::AtomicBool,
        names: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Consumer for Held {
        async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
            if !self.first.swap(true, std::sync::atomic::Ordering::SeqCst) {
                self.entered.notify_one();
                self.release.notified().await;
            }
            let Payload::Traces(t) = data.payload() else {
                return Err(ConsumeError::Permanent("traces expected".into()));
            };
            let names = t
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans);
            self.names.lock().unwrap().extend(names.map(|s| s.name.clone()));
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_a_timed_flush_in_progress_finish() {
        let next = Arc::new(Held::default());
        let p = processor_into(1000, Duration::from_millis(200), next.clone());
        p.start().await.unwrap();
        p.consume(named("a", 5)).await.unwrap();
        // The timed flush has taken the five out of the batch and waits on `next`.
        next.entered.notified().await;
        p.consume(named("b", 3)).await.unwrap();
        let stopping = tokio::spawn({
            let p = p.clone();
            async move { p.shutdown().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waited = !stopping.is_finished();
        next.release.notify_one();
        stopping.await.unwrap().unwrap();
        let mut got = next.names.lock().unwrap().clone();
        got.sort();
        let want = ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2"];
        assert_eq!(got, want, "every item consumed reaches next exactly once");
        assert!(waited, "shutdown waited for the flush in progress");
    }
}
