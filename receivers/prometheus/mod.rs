//! Receiver `prometheus`: scrapes model servers' own `/metrics` pages (vLLM, TGI, Triton, SGLang, anything that
//! speaks the Prometheus text format or OpenMetrics) on an interval, as Prometheus does, and emits every family as
//! OTLP metrics, with `up`, `scrape_duration_seconds` and `scrape_samples_scraped` per target. Each target is
//! scraped on its own: one that is down, slow or broken changes its own `up` and nothing else. A failure is logged
//! when a target's state changes (not at every scrape) and counted in
//! `infercol_prometheus_scrape_failures_total{receiver, target, reason}`.

mod convert;
pub mod exposition;
pub mod profiles;
pub mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use infercol_pipelines::config::duration;
use infercol_pipelines::telemetry::Labels;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, Consumer, Data, Receiver, ReceiverContext, ReceiverFactory, Signal,
    config_as,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::replica_probe::{ProbeHistory, ProbeState};
use crate::sampling::{kv, now_ns};

/// What Prometheus asks for: OpenMetrics first, then the text format.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                      text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The page, e.g. `http://10.0.0.7:8000/metrics`.
    pub url: String,
    /// The model the server serves (resource `service.name`).
    #[serde(default = "unknown")]
    pub model: String,
    #[serde(default = "unknown")]
    pub deployment: String,
    #[serde(default = "unknown")]
    pub environment: String,
    /// Which server's families to map onto the contract: `auto` (from the page), `none`, or a profile's name.
    #[serde(default)]
    pub server: profiles::ServerChoice,
}

fn unknown() -> String {
    "unknown".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrapeTls {
    /// The CA that signs the servers' certificates (PEM), beside the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM), for servers that ask for one.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Accept any certificate (as Prometheus' `insecure_skip_verify`).
    pub insecure_skip_verify: bool,
}

/// `receivers.prometheus`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusReceiverConfig {
    pub targets: Vec<Target>,
    #[serde(with = "duration")]
    pub interval: Duration,
    /// At most `interval`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Sent with every scrape (an `Authorization`, say).
    pub headers: std::collections::BTreeMap<String, String>,
    pub tls: ScrapeTls,
    /// A page larger than this is refused (Prometheus' `body_size_limit`; here never unlimited).
    pub body_size_limit_mib: u64,
    /// A page with more samples is refused (Prometheus' `sample_limit`).
    pub sample_limit: usize,
    /// How long a model server's target that cannot be scraped counts as a starting replica before it counts as
    /// failed (as `replica_probe`'s).
    #[serde(with = "duration")]
    pub startup_timeout: Duration,
    /// The window the mapped histograms' quantiles cover (from bucket deltas).
    #[serde(with = "duration")]
    pub quantile_window: Duration,
    pub quantiles: Vec<f64>,
}

impl Default for PrometheusReceiverConfig {
    fn default() -> Self {
        PrometheusReceiverConfig {
            targets: Vec::new(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            headers: Default::default(),
            tls: ScrapeTls::default(),
            body_size_limit_mib: 16,
            sample_limit: 100_000,
            startup_timeout: Duration::from_secs(300),
            quantile_window: Duration::from_secs(60),
            quantiles: vec![0.5, 0.9, 0.95, 0.99],
        }
    }
}

impl ComponentConfig for PrometheusReceiverConfig {
    fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err(
                "targets: list at least one page to scrape, e.g. `- { url: http://vllm:8000/metrics, model: llama }`"
                    .into(),
            );
        }
        for (i, t) in self.targets.iter().enumerate() {
            if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                return Err(format!(
                    "targets[{i}].url: `{}` must start with http:// or https://",
                    t.url
                ));
            }
        }
        if self.interval.is_zero() {
            return Err("interval: must be more than 0".into());
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err(format!(
                "timeout: must be more than 0 and at most the interval ({})",
                humantime::format_duration(self.interval)
            ));
        }
        if self.body_size_limit_mib == 0 || self.sample_limit == 0 {
            return Err("body_size_limit_mib and sample_limit: must be at least 1".into());
        }
        for (k, v) in &self.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() || http::HeaderValue::from_str(v).is_err() {
                return Err(format!("headers.{k}: not a valid header"));
            }
        }
        if self.quantiles.iter().any(|q| !(0.0..=1.0).contains(q)) {
            return Err("quantiles: each between 0 and 1".into());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err("tls: cert_file and key_file go together".into());
        }
        Ok(())
    }
}

pub struct PrometheusReceiverFactory;

infercol_pipelines::factory!(
    PrometheusReceiverFactory,
    "prometheus",
    PrometheusReceiverConfig,
    &[Signal::Metrics]
);

impl ReceiverFactory for PrometheusReceiverFactory {
    fn create(&self, config: &AnyConfig, ctx: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
        let consumer = ctx
            .consumers
            .get(Signal::Metrics)
            .cloned()
            .ok_or_else(|| ComponentError::new("prometheus feeds metrics pipelines only"))?;
        let failures = ctx.telemetry.counter_family(
            "infercol_prometheus_scrape_failures",
            "Scrapes that failed, by receiver, target and reason (connect, timeout, http_status, body_too_large, malformed, sample_limit, duplicate_series).",
        );
        Ok(Box::new(PrometheusReceiver {
            config: config_as::<PrometheusReceiverConfig>(config)?.clone(),
            id: ctx.id.to_string(),
            consumer,
            failures,
            replicas: ctx.shared.get::<infercol_pipelines::ReplicaDirectory>(),
            running: None,
        }))
    }
}

pub struct PrometheusReceiver {
    config: PrometheusReceiverConfig,
    id: String,
    consumer: Arc<dyn Consumer>,
    failures: Family<Labels, Counter>,
    replicas: infercol_pipelines::ReplicaDirectory,
    running: Option<(watch::Sender<bool>, JoinSet<()>)>,
}

#[async_trait]
impl Receiver for PrometheusReceiver {
    async fn start(&mut self) -> Result<(), ComponentError> {
        let client = Arc::new(client(&self.config)?);
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for target in &self.config.targets {
            let scraper = Scraper {
                receiver: self.id.clone(),
                target: target.clone(),
                client: client.clone(),
                config: self.config.clone(),
                consumer: self.consumer.clone(),
                failures: self.failures.clone(),
                replicas: self.replicas.clone(),
                starts: Default::default(),
                mapped: Default::default(),
                suppressed: Default::default(),
                server: None,
                models: Vec::new(),
                history: ProbeHistory::new(Instant::now()),
                last: None,
            };
            tasks.spawn(scraper.run(stopped.clone()));
        }
        tracing::info!(receiver = %self.id, targets = self.config.targets.len(), "scraping every {}", humantime::format_duration(self.config.interval));
        self.running = Some((stop, tasks));
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        if let Some((stop, mut tasks)) = self.running.take() {
            let _ = stop.send(true);
            while tasks.join_next().await.is_some() {}
        }
        Ok(())
    }
}

fn client(config: &PrometheusReceiverConfig) -> Result<reqwest::Client, ComponentError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ComponentError::new(format!("tls.{key}: cannot read {}: {e}", path.display())))
    };
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .user_agent(concat!("infercol-prometheus/", env!("CARGO_PKG_VERSION")))
        .danger_accept_invalid_certs(config.tls.insecure_skip_verify);
    if let Some(ca) = &config.tls.ca_file {
        let cert = reqwest::Certificate::from_pem(&read("ca_file", ca)?)
            .map_err(|e| ComponentError::new(format!("tls.ca_file: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        let pem = [read("cert_file", cert)?, read("key_file", key)?].concat();
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|e| ComponentError::new(format!("tls.cert_file: {e}")))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| ComponentError::new(format!("cannot build the HTTP client: {e}")))
}

/// Why a scrape failed: the reason label, and the message for the log.
#[derive(Clone, Debug, PartialEq)]
struct Failure {
    reason: &'static str,
    message: String,
}

/// One target's scrape loop.
struct Scraper {
    receiver: String,
    target: Target,
    client: Arc<reqwest::Client>,
    config: PrometheusReceiverConfig,
    consumer: Arc<dyn Consumer>,
    failures: Family<Labels, Counter>,
    replicas: infercol_pipelines::ReplicaDirectory,
    starts: convert::FamilyStarts,
    mapped: profiles::MappedState,
    /// Model dimensions whose scraped equivalents are left out because spans give them (logged once each).
    suppressed: std::collections::HashSet<profiles::Dims>,
    /// The server profile its page matched last, and the models the page named.
    server: Option<&'static profiles::ServerProfile>,
    models: Vec<profiles::Dims>,
    /// This target as a replica.
    history: ProbeHistory,
    /// The last scrape's outcome, to log changes only.
    last: Option<Result<(), Failure>>,
}

impl Scraper {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.config.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            let began = Instant::now();
            let now = now_ns();
            let scraped = self.scrape().await;
            let elapsed = began.elapsed();
            let (mut metrics, outcome) = match scraped {
                Ok(families) => {
                    let samples: usize = families.iter().map(|f| f.samples.len()).sum();
                    let mut metrics = convert::to_metrics(&families, now, &mut self.starts);
                    metrics.extend(self.contract_metrics(&families, now));
                    metrics.push(scrape_gauge(
                        "scrape_samples_scraped",
                        "Samples on the page.",
                        samples as f64,
                        now,
                    ));
                    (metrics, Ok(()))
                }
                Err(failure) => (Vec::new(), Err(failure)),
            };
            metrics.push(scrape_gauge(
                "up",
                "1 when the last scrape succeeded, else 0.",
                outcome.is_ok() as u8 as f64,
                now,
            ));
            metrics.push(scrape_gauge(
                "scrape_duration_seconds",
                "How long the last scrape took.",
                elapsed.as_secs_f64(),
                now,
            ));
            metrics.extend(self.replica_metrics(outcome.is_ok(), now));
            self.note(&outcome);
            let request = self.request(metrics);
            if let Err(e) = self.consumer.consume(Data::metrics(request)).await {
                tracing::warn!(receiver = %self.receiver, target = %self.target.url, "scraped metrics not accepted: {e}");
            }
        }
    }

    /// Fetches and parses the page, within the time, size and sample limits.
    async fn scrape(&self) -> Result<Vec<exposition::Family>, Failure> {
        let fail = |reason, message: String| Failure { reason, message };
        let mut request = self.client.get(&self.target.url).header(http::header::ACCEPT, ACCEPT);
        for (k, v) in &self.config.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let mut response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                fail(
                    "timeout",
                    format!("no answer within {}", humantime::format_duration(self.config.timeout)),
                )
            } else {
                fail("connect", format!("cannot reach the target: {e}"))
            }
        })?;
        if !response.status().is_success() {
            return Err(fail(
                "http_status",
                format!("the target answered {}", response.status()),
            ));
        }
        let openmetrics = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/openmetrics-text"));
        let limit = (self.config.body_size_limit_mib as usize).saturating_mul(1 << 20);
        // Sized from the announced length (never past the limit), so that a large page is not copied through
        // doubling buffers: a 17 MB page would otherwise hold up to 32 MB while it is read.
        let announced = response.content_length().unwrap_or(0).min(limit as u64) as usize;
        let mut body = Vec::with_capacity(announced);
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            let reason = if e.is_timeout() { "timeout" } else { "connect" };
            fail(reason, format!("reading the page: {e}"))
        })? {
            if body.len() + chunk.len() > limit {
                return Err(fail(
                    "body_too_large",
                    format!(
                        "the page is larger than body_size_limit_mib ({} MiB)",
                        self.config.body_size_limit_mib
                    ),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let page = String::from_utf8(body).map_err(|_| fail("malformed", "the page is not UTF-8".into()))?;
        let limits = exposition::Limits {
            max_samples: self.config.sample_limit,
            max_line_bytes: 1 << 20,
        };
        exposition::parse(&page, openmetrics, limits).map_err(|e| {
            let reason = match e {
                exposition::ParseError::TooManySamples(_) => "sample_limit",
                exposition::ParseError::Duplicate { .. } => "duplicate_series",
                _ => "malformed",
            };
            fail(reason, e.to_string())
        })
    }

    /// The contract's metrics from the page, through the target's server profile; for model dimensions that
    /// spans already give (model_metrics derived them within the last minutes), none: the span-derived win.
    fn contract_metrics(&mut self, families: &[exposition::Family], now: u64) -> Vec<Metric> {
        let Some(profile) = self.target.server.profile(families) else {
            return Vec::new();
        };
        let target = (
            self.target.model.clone(),
            self.target.deployment.clone(),
            self.target.environment.clone(),
        );
        let within = (self.config.interval * 4).max(Duration::from_secs(60));
        let newly = std::cell::RefCell::new(Vec::new());
        // Asked once per sample: the directory (behind its lock) is asked once per model dimensions and scrape.
        let named = std::cell::RefCell::new(std::collections::BTreeMap::<profiles::Dims, bool>::new());
        let allowed = |dims: &profiles::Dims| {
            if let Some(&from_spans) = named.borrow().get(dims) {
                return !from_spans;
            }
            let from_spans = self.replicas.derives_from_spans(dims, within);
            named.borrow_mut().insert(dims.clone(), from_spans);
            if from_spans && !self.suppressed.contains(dims) {
                newly.borrow_mut().push(dims.clone());
            }
            !from_spans
        };
        let q = profiles::Quantiles {
            window_ns: self.config.quantile_window.as_nanos() as u64,
            quantiles: &self.config.quantiles,
        };
        let metrics = profiles::map(profile, families, &target, now, &mut self.mapped, &q, &allowed);
        self.server = Some(profile);
        let named = named.into_inner();
        if !named.is_empty() {
            self.models = named.into_keys().collect();
        }
        let newly = newly.into_inner();
        for dims in newly {
            tracing::info!(receiver = %self.receiver, target = %self.target.url, model = %dims.0, server = profile.name,
                "spans give this model's metrics: its scraped equivalents are left out (nothing is counted twice)");
            self.suppressed.insert(dims);
        }
        metrics
    }

    /// This target as a replica of the models its page serves: `active` while it is scraped, `starting` while it
    /// is not (from its first sight, or since it was last up, for `startup_timeout`), `failed` after that, as
    /// `replica_probe` counts. Only a model server's target counts (a profile named or detected); the replica
    /// count of those models is then left to it, as to a probe.
    fn replica_metrics(&mut self, up: bool, now: u64) -> Option<Metric> {
        let is_server = self.server.is_some() || matches!(self.target.server, profiles::ServerChoice::Named(_));
        if !is_server {
            return None;
        }
        let state = self.history.observe(up, Instant::now(), self.config.startup_timeout);
        if self.models.is_empty() {
            self.models = vec![(
                self.target.model.clone(),
                self.target.deployment.clone(),
                self.target.environment.clone(),
            )];
        }
        let mut points = Vec::new();
        for dims in &self.models {
            self.replicas.probed(dims);
            for s in [ProbeState::Active, ProbeState::Starting, ProbeState::Failed] {
                points.push(NumberDataPoint {
                    attributes: vec![
                        kv("model", dims.0.clone()),
                        kv("deployment", dims.1.clone()),
                        kv("environment", dims.2.clone()),
                        kv("state", s.as_str()),
                    ],
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsDouble((s == state) as u8 as f64)),
                    ..Default::default()
                });
            }
        }
        Some(Metric {
            name: "model.replicas".into(),
            unit: "{replica}".into(),
            description: "Model replicas by state.".into(),
            data: Some(metric::Data::Gauge(Gauge { data_points: points })),
            ..Default::default()
        })
    }

    /// Logs a change of state (down with its reason, or back up) and counts every failure.
    fn note(&mut self, outcome: &Result<(), Failure>) {
        if let Err(f) = outcome {
            let labels = vec![
                ("receiver".to_string(), self.receiver.clone()),
                ("target".to_string(), self.target.url.clone()),
                ("reason".to_string(), f.reason.to_string()),
            ];
            self.failures.get_or_create(&labels).inc();
        }
        if self.last.as_ref() == Some(outcome) {
            return;
        }
        match outcome {
            Ok(()) => tracing::info!(receiver = %self.receiver, target = %self.target.url, "scraping"),
            Err(f) => {
                tracing::warn!(receiver = %self.receiver, target = %self.target.url, reason = f.reason, "scrape failed: {}", f.message)
            }
        }
        self.last = Some(outcome.clone());
    }

    /// One target's resource, as the Collector's prometheus receiver and our dimensions name it.
    fn request(&self, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        let url = reqwest::Url::parse(&self.target.url).ok();
        let host = url
            .as_ref()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let port = url.as_ref().and_then(|u| u.port_or_known_default()).unwrap_or(0);
        let attributes = vec![
            kv("service.name", self.target.model.clone()),
            kv("deployment.name", self.target.deployment.clone()),
            kv("deployment.environment.name", self.target.environment.clone()),
            kv("service.instance.id", format!("{host}:{port}")),
            kv("server.address", host),
            crate::sampling::kv_int("server.port", port as i64),
            kv("url.full", self.target.url.clone()),
        ];
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "infercol/prometheus".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

fn scrape_gauge(name: &str, description: &str, value: f64, now: u64) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}
