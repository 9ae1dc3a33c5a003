//! Exporters `prometheus` (a pull endpoint for Prometheus to scrape) and `prometheusremotewrite` (push).

mod proto;
pub mod remote_write;
pub mod store;
pub mod text;
pub mod translate;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use infercol_pipelines::config::duration;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, Data, Endpoint, ExportError, Exporter, ExporterContext,
    ExporterFactory, Payload, RetryOnFailure, SendingQueue, Signal, config_as,
};
use serde::Deserialize;

use store::{Store, TranslateOptions, flatten};
use text::Format;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceToTelemetry {
    pub enabled: bool,
}

/// `exporters.prometheus`: serves every metric of its pipelines on `endpoint` at `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    pub endpoint: Endpoint,
    /// Serve over TLS (and require client certificates with `client_ca_file`).
    pub tls: Option<infercol_pipelines::tls::ServerTls>,
    /// Require `Authorization: Bearer <token>` of every client.
    pub auth: infercol_pipelines::auth::AuthConfig,
    /// Prefix of every family name.
    pub namespace: String,
    /// Labels added to every series.
    pub const_labels: BTreeMap<String, String>,
    /// Series not updated for this long disappear.
    #[serde(with = "duration")]
    pub metric_expiration: Duration,
    pub resource_to_telemetry_conversion: ResourceToTelemetry,
    /// Unit and `_total` suffixes, as the OpenTelemetry-to-Prometheus translation adds them.
    pub add_metric_suffixes: bool,
    /// The most a page may hold (bytes, before compression); families past it are left out, and it is logged.
    pub max_page_bytes: usize,
}

/// Scrapes rendered at once; more wait their turn.
const MAX_CONCURRENT_SCRAPES: usize = 2;

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            endpoint: Endpoint::new("127.0.0.1:9464"),
            tls: None,
            auth: Default::default(),
            namespace: String::new(),
            const_labels: BTreeMap::new(),
            metric_expiration: Duration::from_secs(300),
            resource_to_telemetry_conversion: ResourceToTelemetry::default(),
            add_metric_suffixes: true,
            max_page_bytes: 64 << 20,
        }
    }
}

fn check_labels(key: &str, labels: &BTreeMap<String, String>) -> Result<(), String> {
    for k in labels.keys() {
        if translate::label_name(k) != *k {
            return Err(format!("{key}: `{k}` is not a valid Prometheus label name"));
        }
    }
    Ok(())
}

impl ComponentConfig for PrometheusConfig {
    fn validate(&self) -> Result<(), String> {
        if self.metric_expiration.is_zero() {
            return Err("metric_expiration: must be more than 0".into());
        }
        if self.max_page_bytes < 1024 {
            return Err("max_page_bytes: must be at least 1024".into());
        }
        self.auth.validate("auth.")?;
        if let Some(tls) = &self.tls {
            tls.rustls()?;
        }
        check_labels("const_labels", &self.const_labels)
    }

    fn listen_endpoints(&self) -> Vec<(&'static str, &Endpoint)> {
        vec![("endpoint", &self.endpoint)]
    }
}

impl PrometheusConfig {
    fn options(&self) -> TranslateOptions {
        TranslateOptions {
            namespace: self.namespace.clone(),
            add_metric_suffixes: self.add_metric_suffixes,
            resource_to_telemetry: self.resource_to_telemetry_conversion.enabled,
            const_labels: self.const_labels.clone().into_iter().collect(),
        }
    }
}

pub struct PrometheusExporterFactory;

infercol_pipelines::factory!(
    PrometheusExporterFactory,
    "prometheus",
    PrometheusConfig,
    &[Signal::Metrics]
);

impl ExporterFactory for PrometheusExporterFactory {
    fn create(&self, config: &AnyConfig, ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
        let config = config_as::<PrometheusConfig>(config)?.clone();
        Ok(Arc::new(PrometheusExporter {
            id: ctx.id.to_string(),
            options: config.options(),
            store: Arc::new(RwLock::new(Store::new(config.metric_expiration))),
            config,
            server: crate::Server::new(),
        }))
    }
}

pub struct PrometheusExporter {
    id: String,
    config: PrometheusConfig,
    options: TranslateOptions,
    store: Arc<RwLock<Store>>,
    server: crate::Server,
}

/// The format a scraper asked for in `Accept`.
fn negotiate(headers: &HeaderMap) -> (Option<Format>, &'static str) {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if accept.contains("application/vnd.google.protobuf") && accept.contains("io.prometheus.client.metricfamily") {
        (None, proto::CONTENT_TYPE)
    } else if accept.contains("application/openmetrics-text") {
        (
            Some(Format::OpenMetrics),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (Some(Format::Text), "text/plain; version=0.0.4; charset=utf-8")
    }
}

/// Renders a page for a scrape; at most `max_page_bytes`, whole families only (the cut is logged).
fn scrape(store: &RwLock<Store>, headers: &HeaderMap, max_page_bytes: usize, id: &str) -> Response {
    if let Ok(mut s) = store.write() {
        s.expire(Instant::now());
    }
    let (format, content_type) = negotiate(headers);
    let body: Vec<u8> = {
        let Ok(s) = store.read() else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "store unavailable").into_response();
        };
        let (body, cut) = match format {
            Some(f) => {
                let (page, cut) = text::render(&s, f, max_page_bytes);
                (page.into_bytes(), cut)
            }
            None => proto::render(&s, max_page_bytes),
        };
        if cut {
            tracing::warn!(
                exporter = %id,
                "the page reached max_page_bytes ({max_page_bytes}); families past it were left out of this scrape"
            );
        }
        body
    };
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("gzip"));
    let (body, encoding) = if gzip {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
        match e.write_all(&body).and_then(|()| e.finish()) {
            Ok(compressed) => (compressed, Some("gzip")),
            Err(_) => (body, None),
        }
    } else {
        (body, None)
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(enc) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
    }
    response
}

#[async_trait]
impl Exporter for PrometheusExporter {
    async fn start(&self) -> Result<(), ComponentError> {
        let store = self.store.clone();
        let (max, id) = (self.config.max_page_bytes, self.id.clone());
        // Scrapes render on the blocking pool, two at a time: a page of many series is held in memory once per
        // scrape in progress, and rendering must not stall the runtime's receivers.
        let renders = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SCRAPES));
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move |headers: HeaderMap| {
                let (store, id, renders) = (store.clone(), id.clone(), renders.clone());
                async move {
                    let Ok(turn) = renders.acquire_owned().await else {
                        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
                    };
                    // The turn goes with the render: a client that gives up does not free it before the render ends.
                    tokio::task::spawn_blocking(move || {
                        let _turn = turn;
                        scrape(&store, &headers, max, &id)
                    })
                    .await
                    .unwrap_or_else(|_| (StatusCode::INTERNAL_SERVER_ERROR, "render failed").into_response())
                }
            }),
        );
        let tls = self.config.tls.as_ref();
        self.server
            .start(
                &self.id,
                "Prometheus metrics",
                &self.config.endpoint,
                tls,
                &self.config.auth,
                app,
                "/metrics",
            )
            .await
    }

    async fn export(&self, data: Data) -> Result<(), ExportError> {
        let Payload::Metrics(request) = data.payload() else {
            return Ok(());
        };
        // Translate outside the lock; a scrape only waits for the insertion.
        let points = flatten(request, &self.options);
        let mut store = self
            .store
            .write()
            .map_err(|_| ExportError::permanent("prometheus store lock poisoned"))?;
        store.apply(points, Instant::now());
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), ComponentError> {
        self.server.stop().await;
        Ok(())
    }
}

/// `exporters.prometheusremotewrite`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// The receiver's URL, e.g. `http://prometheus:9090/api/v1/write`.
    pub endpoint: String,
    pub headers: BTreeMap<String, String>,
    #[serde(with = "duration")]
    pub timeout: Duration,
    pub tls: crate::otlp::TlsConfig,
    pub namespace: String,
    /// Labels added to every series.
    pub external_labels: BTreeMap<String, String>,
    pub resource_to_telemetry_conversion: ResourceToTelemetry,
    pub add_metric_suffixes: bool,
    /// Exponential histograms as native histograms (the store must accept them: Prometheus with
    /// `--enable-feature=native-histograms`, Mimir); else as classic `_bucket` series.
    pub send_native_histograms: bool,
    pub sending_queue: SendingQueue,
    pub retry_on_failure: RetryOnFailure,
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        RemoteWriteConfig {
            endpoint: String::new(),
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(5),
            tls: Default::default(),
            namespace: String::new(),
            external_labels: BTreeMap::new(),
            resource_to_telemetry_conversion: ResourceToTelemetry::default(),
            add_metric_suffixes: true,
            send_native_histograms: false,
            // Remote write wants the samples of a series in order: one request at a time.
            sending_queue: SendingQueue {
                num_consumers: 1,
                ..Default::default()
            },
            retry_on_failure: RetryOnFailure::default(),
        }
    }
}

impl ComponentConfig for RemoteWriteConfig {
    fn validate(&self) -> Result<(), String> {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(format!(
                "endpoint: `{}` must be a URL such as http://127.0.0.1:9090/api/v1/write",
                self.endpoint
            ));
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be more than 0".into());
        }
        self.sending_queue.validate()?;
        self.retry_on_failure.validate()?;
        check_labels("external_labels", &self.external_labels)
    }

    fn delivery(&self) -> Option<(SendingQueue, RetryOnFailure)> {
        Some((self.sending_queue.clone(), self.retry_on_failure.clone()))
    }
}

pub struct RemoteWriteExporterFactory;

infercol_pipelines::factory!(
    RemoteWriteExporterFactory,
    "prometheusremotewrite",
    RemoteWriteConfig,
    &[Signal::Metrics]
);

impl ExporterFactory for RemoteWriteExporterFactory {
    fn create(&self, config: &AnyConfig, ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
        let c = config_as::<RemoteWriteConfig>(config)?;
        let mut exporter = remote_write::RemoteWriteExporter::new(
            ctx.id,
            c.endpoint.clone(),
            &c.headers,
            &c.tls,
            c.timeout,
            TranslateOptions {
                namespace: c.namespace.clone(),
                add_metric_suffixes: c.add_metric_suffixes,
                resource_to_telemetry: c.resource_to_telemetry_conversion.enabled,
                const_labels: Vec::new(),
            },
            c.external_labels.clone().into_iter().collect(),
        )?;
        exporter.native_histograms = c.send_native_histograms;
        Ok(Arc::new(exporter))
    }
}
