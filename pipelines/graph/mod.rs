//! The running service: pipelines wired from the configuration, started and shut down in order.
//!
//! receivers -> (fan-in) bounded channel per pipeline -> pipeline workers running the processor chain -> fan-out ->
//! one bounded queue per exporter -> export workers, or a connector, whose output enters the pipelines that list it
//! under `receivers`. Backpressure travels upstream through the bounded channels; a receiver that cannot enqueue in
//! time answers the client with a retryable refusal.
//!
//! Two phases, as the Collector's `service/internal/graph` and Vector's topology builder: [`build`] creates every
//! node and collects every error; [`Service::start`] then starts the nodes in reverse topological order
//! (extensions, exporters, then each pipeline after those it feeds, receivers last), and [`Service::shutdown`]
//! stops them in forward order. A failed start runs the same shutdown over what was started: one rollback path.
//!
//! Shutdown: receivers stop accepting and finish what is in flight; each pipeline's entry then closes because its
//! last sender is gone, so the pipeline drains and flushes its processors; a connector is shut down (it emits what
//! it holds) once every pipeline feeding it has drained, which closes the entries of the pipelines it feeds;
//! exporters drain their queues and flush; extensions stop last. Nothing acknowledged is lost.

use std::sync::Arc;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::component::{ComponentError, ComponentId, Extension, Health, Receiver, Registry};
use crate::config::{Config, MetricsLevel};
use crate::telemetry::Telemetry;

mod build;
mod counted;
mod entry;
mod export;
mod run;

pub use entry::{DURABLE_WAIT, ENQUEUE_WAIT, FanOut, PIPELINE_CHANNEL_CAPACITY, RETRY_AFTER};

use build::{ConnectorNode, Graph};
use export::{EXPORTER_DRAIN, RunningExporter, stop_exporters};
use run::PipelineRun;

/// A running collector.
pub struct Service {
    health: Arc<watch::Sender<Health>>,
    extensions: Vec<(ComponentId, Box<dyn Extension>)>,
    exporters: Vec<RunningExporter>,
    /// Connectors, and whether each was started; removed once shut down.
    connectors: Vec<(ConnectorNode, bool)>,
    /// In topological order.
    pipelines: Vec<PipelineRun>,
    receivers: Vec<(ComponentId, Box<dyn Receiver>)>,
    telemetry_server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    telemetry: Telemetry,
}

impl Service {
    /// Builds every node of the configuration, then starts them. On an error what was started is stopped again,
    /// and the error names the component (every component, when several cannot be created).
    pub async fn start(config: Config, registry: &Registry) -> Result<Service, ComponentError> {
        config
            .check_listen_addresses(registry)
            .map_err(|e| ComponentError::new(e.to_string()))?;
        let graph = Graph::build(&config, registry).map_err(|errors| ComponentError::new(errors.join("\n")))?;
        let mut service = Service {
            health: graph.health.clone(),
            extensions: Vec::new(),
            exporters: Vec::new(),
            connectors: Vec::new(),
            pipelines: Vec::new(),
            receivers: Vec::new(),
            telemetry_server: None,
            telemetry: graph.telemetry.clone(),
        };
        match service.start_all(graph, &config).await {
            Ok(()) => {
                service.health.send_replace(Health::Running);
                Ok(service)
            }
            Err(e) => {
                service.health.send_replace(Health::Failed(e.to_string()));
                service.shutdown().await;
                Err(e)
            }
        }
    }

    /// Starts the nodes in reverse topological order; what is not started when an error comes is dropped.
    async fn start_all(&mut self, graph: Graph, config: &Config) -> Result<(), ComponentError> {
        let Graph {
            extensions,
            exporters,
            connectors,
            pipelines,
            receivers,
            inputs,
            ..
        } = graph;
        for (id, mut extension) in extensions {
            extension
                .start()
                .await
                .map_err(|e| ComponentError::new(format!("extensions.{id}: {e}")))?;
            self.extensions.push((id, extension));
        }
        for node in exporters {
            let id = node.id.clone();
            let running = node
                .start()
                .await
                .map_err(|e| ComponentError::new(format!("exporters.{id}: {e}")))?;
            self.exporters.push(running);
        }
        self.connectors = connectors.into_iter().map(|c| (c, false)).collect();
        self.pipelines = pipelines.into_iter().map(PipelineRun::new).collect();
        for index in (0..self.pipelines.len()).rev() {
            // The connectors this pipeline feeds: the pipelines they feed come later, and are running already.
            for (node, started) in self.connectors.iter_mut() {
                if !*started && node.upstream.contains(&index) {
                    node.connector
                        .start()
                        .await
                        .map_err(|e| ComponentError::new(format!("connectors.{}: {e}", node.id)))?;
                    *started = true;
                }
            }
            self.pipelines[index].start(self.health.clone()).await?;
        }
        if config.telemetry.metrics.level != MetricsLevel::None {
            let server = serve_telemetry(&config.telemetry.metrics, self.telemetry.clone())
                .await
                .map_err(|e| {
                    ComponentError::new(format!(
                        "service.telemetry.metrics: address {}: {e}",
                        config.telemetry.metrics.address.describe()
                    ))
                })?;
            self.telemetry_server = Some(server);
        }
        // Receivers last, so that nothing is accepted before the whole graph is ready.
        for (id, mut receiver) in receivers {
            receiver
                .start()
                .await
                .map_err(|e| ComponentError::new(format!("receivers.{id}: {e}")))?;
            self.receivers.push((id, receiver));
        }
        // From here on only receivers and connectors hold pipeline entries, so that the entries close when they
        // are gone.
        drop(inputs);
        Ok(())
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The service's health, as extensions see it.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// Stops receivers, drains every pipeline (and the connectors between them) and exporter queue, flushes the
    /// exporters, then stops the extensions.
    pub async fn shutdown(mut self) {
        if self.health.borrow().eq(&Health::Running) || self.health.borrow().eq(&Health::Starting) {
            self.health.send_replace(Health::Stopping);
        }
        for (id, receiver) in &mut self.receivers {
            if let Err(e) = receiver.shutdown().await {
                tracing::warn!(receiver = %id, "shutdown: {e}");
            }
        }
        self.receivers.clear();
        // From here on nothing is retried: the backends had their chance while the collector ran. Each request
        // still queued gets one attempt, and the pipelines and the exporters have EXPORTER_DRAIN in all.
        for running in &self.exporters {
            running.stop_retrying();
        }
        let deadline = tokio::time::Instant::now() + EXPORTER_DRAIN;
        let mut released = false;
        for index in 0..self.pipelines.len() {
            self.pipelines[index]
                .stop(deadline, &mut released, &mut self.exporters)
                .await;
            self.stop_drained_connectors().await;
        }
        self.pipelines.clear();
        stop_exporters(std::mem::take(&mut self.exporters), deadline).await;
        if let Some((stop, task)) = self.telemetry_server.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        for (id, extension) in self.extensions.iter_mut().rev() {
            if let Err(e) = extension.shutdown().await {
                tracing::warn!(extension = %id, "shutdown: {e}");
            }
        }
        tracing::info!("shutdown complete");
    }

    /// Shuts down the connectors whose every feeding pipeline has drained, and lets them go: what they emit at
    /// shutdown enters the pipelines after them, whose entries then close.
    async fn stop_drained_connectors(&mut self) {
        let pipelines = &self.pipelines;
        let drained = |node: &ConnectorNode| {
            node.upstream
                .iter()
                .all(|i| pipelines.get(*i).is_none_or(|p| p.finished))
        };
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.connectors)
            .into_iter()
            .partition(|(node, _)| drained(node));
        self.connectors = rest;
        for (node, started) in done {
            if started && let Err(e) = node.connector.shutdown().await {
                tracing::warn!(connector = %node.id, "shutdown: {e}");
            }
        }
    }
}

async fn serve_telemetry(
    config: &crate::config::MetricsTelemetry,
    telemetry: Telemetry,
) -> std::io::Result<(oneshot::Sender<()>, JoinHandle<()>)> {
    use crate::server::{HttpServing, serve_http, warn_if_exposed};
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(&config.address.address).await?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let telemetry = telemetry.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    telemetry.render(),
                )
            }
        }),
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let bound = listener.local_addr()?;
    tracing::info!("own metrics on http://{bound}/metrics");
    let serving = HttpServing {
        auth: config.auth.bearer(),
        ..HttpServing::default()
    };
    warn_if_exposed("service.telemetry.metrics", &bound, serving.auth.is_some());
    let task = tokio::spawn(serve_http(listener, app, serving, stop_rx, "own metrics".into()));
    Ok((stop_tx, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::*;
    use crate::config::Config;
    use crate::data::{Data, Payload, Signal};
    use async_trait::async_trait;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use serde::Deserialize;
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Empty {}
    impl ComponentConfig for Empty {}

    /// A receiver that pushes three requests of `spans` spans when started.
    struct Burst;
    crate::factory!(Burst, "burst", Empty, &[Signal::Traces]);
    struct BurstReceiver(Option<Consumers>);
    #[async_trait]
    impl Receiver for BurstReceiver {
        async fn start(&mut self) -> Result<(), ComponentError> {
            let consumers = self.0.take().unwrap();
            let traces = consumers.get(Signal::Traces).unwrap();
            for _ in 0..3 {
                let spans = (0..5).map(|_| Span::default()).collect();
                let request = ExportTraceServiceRequest {
                    resource_spans: vec![ResourceSpans {
                        scope_spans: vec![ScopeSpans {
                            spans,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                };
                traces.consume(Data::traces(request)).await.unwrap();
            }
            Ok(())
        }
        async fn shutdown(&mut self) -> Result<(), ComponentError> {
            Ok(())
        }
    }
    impl ReceiverFactory for Burst {
        fn create(&self, _: &AnyConfig, ctx: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
            Ok(Box::new(BurstReceiver(Some(ctx.consumers))))
        }
    }

    /// A receiver whose start always fails (as `nvml` with `required: true` does on a machine without a GPU).
    struct Failing;
    crate::factory!(Failing, "failing", Empty, &[Signal::Traces]);
    struct FailingReceiver;
    #[async_trait]
    impl Receiver for FailingReceiver {
        async fn start(&mut self) -> Result<(), ComponentError> {
            Err(ComponentError::new("no device"))
        }
        async fn shutdown(&mut self) -> Result<(), ComponentError> {
            Ok(())
        }
    }
    impl ReceiverFactory for Failing {
        fn create(&self, _: &AnyConfig, _: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
            Ok(Box::new(FailingReceiver))
        }
    }

    /// A connector that counts the spans it is given and, at shutdown only, emits one gauge point with that count.
    struct Counting;
    crate::factory!(Counting, "counting", Empty, &[Signal::Traces, Signal::Metrics]);
    struct CountingConnector {
        seen: StdMutex<i64>,
        out: Arc<dyn Consumer>,
    }
    #[async_trait]
    impl Consumer for CountingConnector {
        async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
            *self.seen.lock().unwrap() += data.items() as i64;
            Ok(())
        }
    }
    #[async_trait]
    impl Connector for CountingConnector {
        async fn shutdown(&self) -> Result<(), ComponentError> {
            let seen = *self.seen.lock().unwrap();
            let point = NumberDataPoint {
                value: Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(seen)),
                ..Default::default()
            };
            let request = ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    scope_metrics: vec![ScopeMetrics {
                        metrics: vec![Metric {
                            name: "spans.seen".into(),
                            data: Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Gauge(Gauge {
                                data_points: vec![point],
                            })),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            self.out
                .consume(Data::metrics(request))
                .await
                .map_err(|e| ComponentError::new(e.to_string()))
        }
    }
    impl ConnectorFactory for Counting {
        fn routes(&self) -> &'static [(Signal, Signal)] {
            &[(Signal::Traces, Signal::Metrics)]
        }
        fn create(&self, _: &AnyConfig, ctx: ConnectorContext) -> Result<Arc<dyn Connector>, ComponentError> {
            Ok(Arc::new(CountingConnector {
                seen: StdMutex::new(0),
                out: ctx.next,
            }))
        }
    }

    /// An exporter that keeps what it gets, in a list shared by every instance.
    #[derive(Clone, Default)]
    struct Keep(Arc<StdMutex<Vec<(String, Data)>>>);
    impl Factory for Keep {
        fn type_name(&self) -> &'static str {
            "keep"
        }
        fn signals(&self) -> &'static [Signal] {
            &[Signal::Traces, Signal::Metrics]
        }
        fn default_config(&self) -> AnyConfig {
            Box::new(Empty {})
        }
        fn parse_config(&self, d: &mut dyn erased_serde::Deserializer<'_>) -> Result<AnyConfig, erased_serde::Error> {
            parse_config::<Empty>(d)
        }
    }
    struct KeepExporter(String, Keep);
    #[async_trait]
    impl Exporter for KeepExporter {
        async fn export(&self, data: Data) -> Result<(), ExportError> {
            self.1.0.lock().unwrap().push((self.0.clone(), data));
            Ok(())
        }
    }
    impl ExporterFactory for Keep {
        fn create(&self, _: &AnyConfig, ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
            Ok(Arc::new(KeepExporter(ctx.id.to_string(), self.clone())))
        }
    }

    /// A receiver failing after others started, with a connector that emits metrics: the start stops what it
    /// started and returns the error (it used to wait forever for the metrics pipeline to close).
    #[tokio::test]
    async fn a_receiver_failing_to_start_stops_the_graph_and_returns_its_error() {
        let kept = Keep::default();
        let registry = Registry::default()
            .receiver(Burst)
            .receiver(Failing)
            .connector(Counting)
            .exporter(kept.clone());
        let config = Config::parse(
            r#"
receivers:
  burst:
  failing:
connectors:
  counting:
exporters:
  keep/a:
  keep/m:
service:
  telemetry: { metrics: { level: none } }
  pipelines:
    traces: { receivers: [burst, failing], exporters: [keep/a, counting] }
    metrics: { receivers: [counting], exporters: [keep/m] }
"#,
            &registry,
        )
        .unwrap();
        let started = tokio::time::timeout(Duration::from_secs(10), Service::start(config, &registry))
            .await
            .expect("a failed start returns instead of hanging");
        let Err(e) = started else {
            panic!("the start should fail")
        };
        assert!(e.to_string().contains("receivers.failing: no device"), "{e}");
        let kept = kept.0.lock().unwrap();
        let spans: usize = kept
            .iter()
            .filter(|(id, _)| id == "keep/a")
            .map(|(_, d)| d.items())
            .sum();
        assert_eq!(
            spans, 15,
            "what the first receiver sent before the failure is still delivered"
        );
    }

    #[tokio::test]
    async fn fan_in_fan_out_and_a_connector_feeding_a_metrics_pipeline_at_shutdown() {
        let kept = Keep::default();
        let registry = Registry::default()
            .receiver(Burst)
            .connector(Counting)
            .exporter(kept.clone());
        let config = Config::parse(
            r#"
receivers:
  burst:
  burst/2:
connectors:
  counting:
exporters:
  keep/a:
  keep/b:
  keep/m:
service:
  telemetry: { metrics: { level: none } }
  pipelines:
    traces: { receivers: [burst, burst/2], exporters: [keep/a, counting, keep/b] }
    metrics: { receivers: [counting], exporters: [keep/m] }
"#,
            &registry,
        )
        .unwrap();
        let service = Service::start(config, &registry).await.unwrap();
        service.shutdown().await;
        let kept = kept.0.lock().unwrap();
        for exporter in ["keep/a", "keep/b"] {
            let spans: usize = kept
                .iter()
                .filter(|(id, _)| id == exporter)
                .map(|(_, d)| d.items())
                .sum();
            assert_eq!(spans, 30, "both receivers' spans reach {exporter}");
        }
        let metrics: Vec<&Data> = kept.iter().filter(|(id, _)| id == "keep/m").map(|(_, d)| d).collect();
        assert_eq!(
            metrics.len(),
            1,
            "what the connector emits at shutdown still reaches the metrics exporter"
        );
        let Payload::Metrics(m) = metrics[0].payload() else {
            panic!("metrics expected")
        };
        let point = &m.resource_metrics[0].scope_metrics[0].metrics[0];
        assert_eq!(point.name, "spans.seen");
    }

    /// A processor that notes how many requests are inside it at once, and holds each one (up to two seconds)
    /// until it has seen two at once.
    struct Overlap;
    crate::factory!(Overlap, "overlap", Empty, &[Signal::Traces]);
    struct OverlapProcessor {
        inside: Arc<StdMutex<(usize, usize)>>,
        next: Arc<dyn Consumer>,
    }
    #[async_trait]
    impl Consumer for OverlapProcessor {
        async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
            {
                let mut g = self.inside.lock().unwrap();
                g.0 += 1;
                g.1 = g.1.max(g.0);
            }
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.inside.lock().unwrap().1 < 2 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.inside.lock().unwrap().0 -= 1;
            self.next.consume(data).await
        }
    }
    #[async_trait]
    impl Processor for OverlapProcessor {}
    static OVERLAP: std::sync::LazyLock<Arc<StdMutex<(usize, usize)>>> = std::sync::LazyLock::new(Default::default);
    impl ProcessorFactory for Overlap {
        fn create(&self, _: &AnyConfig, ctx: ProcessorContext) -> Result<Arc<dyn Processor>, ComponentError> {
            Ok(Arc::new(OverlapProcessor {
                inside: OVERLAP.clone(),
                next: ctx.next,
            }))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_traces_pipeline_runs_its_processors_on_every_runtime_thread() {
        let kept = Keep::default();
        let registry = Registry::default()
            .receiver(Burst)
            .processor(Overlap)
            .exporter(kept.clone());
        let config = Config::parse(
            r#"
receivers: { burst: }
processors: { overlap: }
exporters: { keep: }
service:
  telemetry: { metrics: { level: none } }
  pipelines:
    traces: { receivers: [burst], processors: [overlap], exporters: [keep] }
"#,
            &registry,
        )
        .unwrap();
        let service = Service::start(config, &registry).await.unwrap();
        service.shutdown().await;
        let spans: usize = kept.0.lock().unwrap().iter().map(|(_, d)| d.items()).sum();
        assert_eq!(spans, 15, "every span is delivered");
        assert_eq!(
            OVERLAP.lock().unwrap().1,
            2,
            "two requests were in the processor at once"
        );
    }

    /// A processor that passes on every other request.
    struct Halve;
    crate::factory!(Halve, "halve", Empty, &[Signal::Traces]);
    struct HalveProcessor {
        seen: StdMutex<usize>,
        next: Arc<dyn Consumer>,
    }
    #[async_trait]
    impl Consumer for HalveProcessor {
        async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
            let pass = {
                let mut seen = self.seen.lock().unwrap();
                *seen += 1;
                *seen % 2 == 1
            };
            if pass { self.next.consume(data).await } else { Ok(()) }
        }
    }
    #[async_trait]
    impl Processor for HalveProcessor {}
    impl ProcessorFactory for Halve {
        fn create(&self, _: &AnyConfig, ctx: ProcessorContext) -> Result<Arc<dyn Processor>, ComponentError> {
            Ok(Arc::new(HalveProcessor {
                seen: StdMutex::new(0),
                next: ctx.next,
            }))
        }
    }

    /// Every processor's items are counted by the graph, in and out, as the Collector's processorhelper counts.
    #[tokio::test]
    async fn every_processor_is_counted_in_and_out_by_the_graph() {
        let kept = Keep::default();
        let registry = Registry::default()
            .receiver(Burst)
            .processor(Halve)
            .exporter(kept.clone());
        let config = Config::parse(
            "receivers: { burst: }\nprocessors: { halve: }\nexporters: { keep: }\nservice:\n  telemetry: { metrics: { address: \"127.0.0.1:0\" } }\n  pipelines:\n    traces: { receivers: [burst], processors: [halve], exporters: [keep] }\n",
            &registry,
        )
        .unwrap();
        let service = Service::start(config, &registry).await.unwrap();
        let telemetry = service.telemetry().clone();
        service.shutdown().await;
        let page = telemetry.render();
        let labels = r#"{processor="halve",pipeline="traces",otel_signal="traces"}"#;
        assert!(
            page.contains(&format!("otelcol_processor_incoming_items_total{labels} 15")),
            "{page}"
        );
        assert!(
            page.contains(&format!("otelcol_processor_outgoing_items_total{labels} 10")),
            "{page}"
        );
    }

    /// The form before connectors (the connector under `processors`, in the traces pipeline's chain) still runs,
    /// read as the connector, with a warning that says what to write.
    #[tokio::test]
    async fn a_connector_written_as_a_processor_runs_as_the_connector_and_warns() {
        let kept = Keep::default();
        let registry = Registry::default()
            .receiver(Burst)
            .connector(Counting)
            .exporter(kept.clone());
        let config = Config::parse(
            "receivers:\n  burst:\nprocessors:\n  counting:\nexporters:\n  keep/a:\n  keep/m:\nservice:\n  telemetry: { metrics: { level: none } }\n  pipelines:\n    traces: { receivers: [burst], processors: [counting], exporters: [keep/a] }\n    metrics: { receivers: [counting], exporters: [keep/m] }\n",
            &registry,
        )
        .unwrap();
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.contains("processors.counting (line 4)") && w.contains("connectors:")),
            "{:?}",
            config.warnings
        );
        let service = Service::start(config, &registry).await.unwrap();
        service.shutdown().await;
        let kept = kept.0.lock().unwrap();
        let spans: usize = kept
            .iter()
            .filter(|(id, _)| id == "keep/a")
            .map(|(_, d)| d.items())
            .sum();
        assert_eq!(spans, 15, "the spans still reach the traces pipeline's exporter");
        assert_eq!(
            kept.iter().filter(|(id, _)| id == "keep/m").count(),
            1,
            "the connector's metrics reach the metrics pipeline"
        );
    }
}
