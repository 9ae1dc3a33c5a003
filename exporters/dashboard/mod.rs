//! Exporter `dashboard`: a page with the Metrics tab of a hosted inference platform, served from memory and kept
//! on disk across restarts when `storage` names a directory.
//!
//! It keeps the metrics of its pipelines for `retention` (see `store`, `histograms`, `disk`) and serves, on
//! `endpoint`:
//! - `/` — the page (embedded in the binary, with its chart library: it needs no network access);
//! - `/api/labels` — the values of the filters (`model`, `environment`, `deployment`), `empty` (true until
//!   model metrics arrive) and `series` (how many series are kept);
//! - `/api/panels?range=1h|from=..&to=..&model=..&environment=..&deployment=..&latency=request&size=request` —
//!   the panels' series and the considerations (see `panels`, `considerations`);
//! - `/api/considerations` with the same parameters — the considerations alone.
//!
//! With `source: prometheus` the same API is answered with PromQL over a Prometheus-compatible store (see
//! `promql`): every gateway's page is then the same merged view, and the pipelines' metrics are not kept here.

pub mod considerations;
pub mod disk;
pub mod histograms;
pub mod panels;
pub mod promql;
pub mod store;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::Query as QueryString;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use infercol_pipelines::config::duration;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, Data, Endpoint, ExportError, Exporter, ExporterContext,
    ExporterFactory, Payload, Signal, config_as,
};
use serde::Deserialize;

use store::Store;

/// `exporters.dashboard`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    pub endpoint: Endpoint,
    /// Serve over TLS (and require client certificates with `client_ca_file`), as the Prometheus exporter does.
    pub tls: Option<infercol_pipelines::tls::ServerTls>,
    /// Require `Authorization: Bearer <token>` of every client.
    pub auth: infercol_pipelines::auth::AuthConfig,
    /// How long points are kept (the page's longest range is 7d; longer ranges come from `from` and `to`).
    #[serde(with = "duration")]
    pub retention: Duration,
    /// Series kept at most; points of further series are not kept (counted, logged once).
    pub max_series: usize,
    /// The thresholds of the advice beside the panels (see `considerations`).
    pub considerations: considerations::ConsiderationsConfig,
    /// A directory that keeps the history across restarts (see `disk`), or `none`: memory only.
    #[serde(deserialize_with = "storage")]
    pub storage: Option<std::path::PathBuf>,
    /// Where the panels come from: `embedded` (the metrics of this exporter's pipelines, kept here) or
    /// `prometheus` (PromQL over the store that the exporters write, see `promql`).
    pub source: SourceKind,
    /// The query API read with `source: prometheus`.
    pub prometheus: promql::PrometheusSourceConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Embedded,
    Prometheus,
}

fn storage<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<std::path::PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok(match s.trim() {
        "" | "none" => None,
        dir => Some(dir.into()),
    })
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            endpoint: Endpoint::new("127.0.0.1:9465"),
            tls: None,
            auth: Default::default(),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_series: 20_000,
            considerations: Default::default(),
            storage: None,
            source: SourceKind::Embedded,
            prometheus: Default::default(),
        }
    }
}

impl ComponentConfig for DashboardConfig {
    fn validate(&self) -> Result<(), String> {
        if self.retention < Duration::from_secs(60) || self.retention > Duration::from_secs(31 * 24 * 3600) {
            return Err("retention: must be between 1m and 31d".into());
        }
        if self.max_series == 0 {
            return Err("max_series: must be more than 0".into());
        }
        self.considerations.validate()?;
        if self.source == SourceKind::Prometheus {
            self.prometheus.validate()?;
        }
        self.auth.validate("auth.")?;
        if let Some(tls) = &self.tls {
            tls.rustls()?;
        }
        Ok(())
    }

    fn listen_endpoints(&self) -> Vec<(&'static str, &Endpoint)> {
        vec![("endpoint", &self.endpoint)]
    }
}

pub struct DashboardExporterFactory;

infercol_pipelines::factory!(
    DashboardExporterFactory,
    "dashboard",
    DashboardConfig,
    &[Signal::Metrics]
);

impl ExporterFactory for DashboardExporterFactory {
    fn create(&self, config: &AnyConfig, ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
        let config = config_as::<DashboardConfig>(config)?.clone();
        let dropped = ctx
            .telemetry
            .counter_family(
                "infercol_dashboard_storage_dropped_points",
                "Points the dashboard could not write to its storage (disk full, or unwritable); they stay in memory until they expire.",
            )
            .get_or_create(&vec![("exporter".to_string(), ctx.id.to_string())])
            .clone();
        let prometheus = match config.source {
            SourceKind::Prometheus => Some(Arc::new(promql::Source::new(&config.prometheus)?)),
            SourceKind::Embedded => None,
        };
        Ok(Arc::new(DashboardExporter {
            id: ctx.id.to_string(),
            prometheus,
            store: Arc::new(RwLock::new({
                let mut store = Store::new(config.retention, config.max_series);
                store.considerations = config.considerations.clone();
                store
            })),
            config,
            server: crate::Server::new(),
            disk: Arc::new(std::sync::Mutex::new(None)),
            dropped,
        }))
    }
}

pub struct DashboardExporter {
    id: String,
    /// With `source: prometheus`: the store the panels are read from (the pipelines' metrics are then not kept).
    prometheus: Option<Arc<promql::Source>>,
    config: DashboardConfig,
    store: Arc<RwLock<Store>>,
    server: crate::Server,
    /// The history on disk, from start to shutdown, when `storage` names a directory.
    disk: Arc<std::sync::Mutex<Option<disk::Disk>>>,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl DashboardExporter {
    /// Opens the storage and puts its history back in the store.
    fn open_storage(&self, dir: &std::path::Path) -> Result<(), ComponentError> {
        let disk = disk::Disk::open(dir).map_err(ComponentError::new)?;
        let loaded = disk.load().map_err(ComponentError::new)?;
        let series = loaded.points.len() + loaded.histograms.len();
        let mut store = self
            .store
            .write()
            .map_err(|_| ComponentError::new("dashboard store lock poisoned"))?;
        let points = store.restore(loaded);
        store.keep_changes();
        // What expired while the collector was down goes now, on disk too.
        store.expire(now_ms());
        let changes = store.take_changes();
        drop(store);
        let mut disk = disk;
        disk.write(changes);
        tracing::info!(exporter = %self.id, storage = %dir.display(), series, points, "dashboard: history restored");
        *self
            .disk
            .lock()
            .map_err(|_| ComponentError::new("dashboard storage lock poisoned"))? = Some(disk);
        Ok(())
    }

    /// Writes what the store changed to disk, off the runtime's threads.
    async fn persist(&self, changes: disk::Changes) {
        if changes.is_empty() {
            return;
        }
        let (disk, dropped) = (self.disk.clone(), self.dropped.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(mut guard) = disk.lock() else { return };
            if let Some(disk) = guard.as_mut() {
                let before = disk.dropped_points;
                disk.write(changes);
                dropped.inc_by(disk.dropped_points - before);
            }
        })
        .await;
    }
}

const INDEX: &str = include_str!("assets/index.html");
const APP: &str = include_str!("assets/app.js");
const UPLOT_JS: &str = include_str!("assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uPlot.min.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], axum::Json(value)).into_response()
}

/// Panel queries answered at once; more wait their turn.
const MAX_CONCURRENT_QUERIES: usize = 2;

/// The `/api/panels` (or `/api/considerations`) answer for one query.
fn answer_panels(store: &RwLock<Store>, q: &panels::Query, considerations_only: bool) -> axum::response::Response {
    if let Ok(mut s) = store.write() {
        s.maybe_expire(now_ms());
    }
    let Ok(s) = store.read() else {
        return json(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({"error": "store"}));
    };
    match panels::panels(&s, q, now_ms()) {
        Ok(body) => panels_answer(body, considerations_only),
        Err(e) => json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
    }
}

/// What the API reads: the embedded store, or a Prometheus-compatible one.
#[derive(Clone)]
struct Backend {
    store: Arc<RwLock<Store>>,
    prometheus: Option<Arc<promql::Source>>,
    retention_ms: i64,
    considerations: considerations::ConsiderationsConfig,
}

/// `/api/labels`.
async fn labels(backend: Backend) -> Response {
    if let Some(source) = &backend.prometheus {
        return match source.labels(now_ms(), backend.retention_ms).await {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => json(StatusCode::BAD_GATEWAY, serde_json::json!({ "error": e })),
        };
    }
    let Ok(s) = backend.store.read() else {
        return json(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({"error": "store"}));
    };
    json(
        StatusCode::OK,
        serde_json::json!({
            "empty": s.no_model_data(),
            "series": s.series.len(),
            "labels": s.label_values(),
        }),
    )
}

fn router(backend: Backend) -> axum::Router {
    use axum::routing::get;
    let queries = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_QUERIES));
    let labels_backend = backend.clone();
    axum::Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/assets/uPlot.iife.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS) }),
        )
        .route(
            "/assets/uPlot.min.css",
            get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS) }),
        )
        .route("/api/labels", get(move || labels(labels_backend.clone())))
        .route(
            "/api/panels",
            get({
                let (backend, queries) = (backend.clone(), queries.clone());
                move |q| query(backend.clone(), queries.clone(), q, false)
            }),
        )
        .route(
            "/api/considerations",
            get(move |q| query(backend.clone(), queries.clone(), q, true)),
        )
}

type PanelsQuery = Result<QueryString<panels::Query>, axum::extract::rejection::QueryRejection>;

/// `/api/panels`, or with `considerations_only` `/api/considerations` (the same query, only the advice).
async fn query(
    backend: Backend,
    queries: Arc<tokio::sync::Semaphore>,
    q: PanelsQuery,
    considerations_only: bool,
) -> Response {
    let q = match q {
        Ok(QueryString(q)) => q,
        Err(e) => return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": e.body_text()})),
    };
    // Two queries at a time: a 7d query over many series must not stall the runtime's receivers, nor many of
    // them hold their answers in memory at once (nor, from Prometheus, take every query slot of the store).
    let Ok(turn) = queries.acquire_owned().await else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "stopping"}),
        );
    };
    if let Some(source) = &backend.prometheus {
        let answer = promql::panels(source, &q, now_ms(), backend.retention_ms, &backend.considerations).await;
        drop(turn);
        return match answer {
            Ok(body) => panels_answer(body, considerations_only),
            Err(promql::Failure::Query(e)) => json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
            Err(promql::Failure::Store(e)) => json(StatusCode::BAD_GATEWAY, serde_json::json!({ "error": e })),
        };
    }
    // On the blocking pool; the turn goes with the query: a client that gives up does not free it early.
    let store = backend.store.clone();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        answer_panels(&store, &q, considerations_only)
    })
    .await
    .unwrap_or_else(|_| {
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": "query failed"}),
        )
    })
}

/// The whole body, or with `considerations_only` the span and the considerations.
fn panels_answer(body: serde_json::Value, considerations_only: bool) -> Response {
    if considerations_only {
        return json(
            StatusCode::OK,
            serde_json::json!({ "from": body["from"], "to": body["to"], "considerations": body["considerations"] }),
        );
    }
    json(StatusCode::OK, body)
}

#[async_trait]
impl Exporter for DashboardExporter {
    async fn start(&self) -> Result<(), ComponentError> {
        if let Some(dir) = &self.config.storage
            && self.prometheus.is_none()
        {
            self.open_storage(dir)?;
        }
        let app = router(Backend {
            store: self.store.clone(),
            prometheus: self.prometheus.clone(),
            retention_ms: self.config.retention.as_millis() as i64,
            considerations: self.config.considerations.clone(),
        });
        let tls = self.config.tls.as_ref();
        self.server
            .start(
                &self.id,
                "dashboard",
                &self.config.endpoint,
                tls,
                &self.config.auth,
                app,
                "/",
            )
            .await
    }

    async fn export(&self, data: Data) -> Result<(), ExportError> {
        let Payload::Metrics(request) = data.payload() else {
            return Ok(());
        };
        if self.prometheus.is_some() {
            // The page reads the store the exporters write; nothing is kept here.
            return Ok(());
        }
        let changes = {
            let mut store = self
                .store
                .write()
                .map_err(|_| ExportError::permanent("dashboard store lock poisoned"))?;
            store.ingest(request);
            // Old points go as new ones come, whether or not anyone looks at the page.
            store.maybe_expire(now_ms());
            store.take_changes()
        };
        self.persist(changes).await;
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), ComponentError> {
        self.server.stop().await;
        let disk = self.disk.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mut guard) = disk.lock()
                && let Some(disk) = guard.take()
            {
                disk.sync();
            }
        })
        .await;
        Ok(())
    }
}
