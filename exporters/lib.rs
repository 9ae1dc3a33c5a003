//! infercol's exporters. Each is one folder: its configuration beside the code that does the work.

pub mod dashboard;
pub mod debug;
pub mod file;
pub mod nop;
pub mod otlp;
pub mod prometheus;

use std::collections::BTreeMap;
use std::time::Duration;

use infercol_pipelines::{ComponentError, Endpoint};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An HTTP(S) server an exporter runs (the Prometheus endpoint, the dashboard), stopped with the exporter.
pub(crate) struct Server(std::sync::Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>);

impl Server {
    pub(crate) fn new() -> Server {
        Server(std::sync::Mutex::new(None))
    }

    /// Listens on `endpoint` (over TLS when `tls` is set; behind the bearer token when `auth` has one) and serves
    /// `app`; logs `{what} on URL{path}`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        &self,
        id: &str,
        what: &str,
        endpoint: &Endpoint,
        tls: Option<&infercol_pipelines::tls::ServerTls>,
        auth: &infercol_pipelines::auth::AuthConfig,
        app: axum::Router,
        path: &str,
    ) -> Result<(), ComponentError> {
        use infercol_pipelines::server::{HttpServing, serve_http, warn_if_exposed};
        let listener = tokio::net::TcpListener::bind(&endpoint.address)
            .await
            .map_err(|e| ComponentError::new(format!("endpoint {}: cannot listen: {e}", endpoint.describe())))?;
        let bound = listener
            .local_addr()
            .map_err(|e| ComponentError::new(format!("endpoint: {e}")))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = HttpServing {
            tls: tls.map(|t| t.rustls().map_err(ComponentError::new)).transpose()?,
            auth: auth.bearer(),
            ..HttpServing::default()
        };
        let scheme = if serving.tls.is_some() { "https" } else { "http" };
        tracing::info!(exporter = %id, "{what} on {scheme}://{bound}{path}");
        warn_if_exposed(&format!("exporters.{id}: {what}"), &bound, serving.auth.is_some());
        let task = tokio::spawn(serve_http(
            listener,
            app,
            serving,
            stopped,
            format!("exporters.{id}: {what}"),
        ));
        if let Ok(mut server) = self.0.lock() {
            *server = Some((stop, task));
        }
        Ok(())
    }

    pub(crate) async fn stop(&self) {
        let server = self.0.lock().ok().and_then(|mut s| s.take());
        if let Some((stop, task)) = server {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// The server's throttle delay from a `Retry-After` header (seconds).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// An HTTP client with the exporter's headers, timeout and trusted CA, shared by the HTTP exporters.
pub(crate) fn http_client(
    headers: &BTreeMap<String, String>,
    tls: &otlp::TlsConfig,
    timeout: Duration,
) -> Result<reqwest::Client, ComponentError> {
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
    // reqwest is built without a default crypto provider; ring is the one the whole binary uses. Installing
    // twice is harmless (the second call only reports that one is there).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| ComponentError::new(format!("headers: `{k}`: {e}")))?;
        let value = HeaderValue::from_str(v).map_err(|e| ComponentError::new(format!("headers.{k}: {e}")))?;
        map.insert(name, value);
    }
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(map)
        .tcp_nodelay(true)
        .user_agent(concat!("infercol/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &tls.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| ComponentError::new(format!("tls.ca_file: cannot read {}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| ComponentError::new(format!("tls.ca_file: {}: {e}", ca.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    if let Some((cert, key)) = tls.identity().map_err(ComponentError::new)? {
        let pem = [cert, b"\n".to_vec(), key].concat();
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| ComponentError::new(format!("tls.cert_file/key_file: {e}")))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| ComponentError::new(format!("cannot build the HTTP client: {e}")))
}
