//! Extension `health_check`: an HTTP endpoint for liveness and readiness probes, as the OpenTelemetry Collector's
//! `health_check` extension has it (`endpoint` 127.0.0.1:13133, `path` `/`). It answers 200 while every pipeline
//! runs, and 503 while the collector starts, while it shuts down, and after a component failed.

use std::time::SystemTime;

use async_trait::async_trait;
use axum::http::StatusCode;
use infercol_pipelines::config::Endpoint;
use infercol_pipelines::server::{HttpServing, serve_http};
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, Extension, ExtensionContext, ExtensionFactory, Health, config_as,
};
use serde::Deserialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub endpoint: Endpoint,
    /// The path probes ask; any other answers 404.
    pub path: String,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            endpoint: Endpoint::new("127.0.0.1:13133"),
            path: "/".into(),
        }
    }
}

impl ComponentConfig for HealthCheckConfig {
    fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err(format!("path: `{}` must start with `/`", self.path));
        }
        Ok(())
    }
    fn listen_endpoints(&self) -> Vec<(&'static str, &Endpoint)> {
        vec![("endpoint", &self.endpoint)]
    }
}

pub struct HealthCheckFactory;

infercol_pipelines::factory!(HealthCheckFactory, "health_check", HealthCheckConfig, &[]);

impl ExtensionFactory for HealthCheckFactory {
    fn create(&self, config: &AnyConfig, ctx: ExtensionContext) -> Result<Box<dyn Extension>, ComponentError> {
        Ok(Box::new(HealthCheck {
            config: config_as::<HealthCheckConfig>(config)?.clone(),
            health: ctx.health,
            server: None,
        }))
    }
}

pub struct HealthCheck {
    config: HealthCheckConfig,
    health: watch::Receiver<Health>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// The answer to a probe, with the Collector's body: `status`, and when available `upSince` and `uptime`.
fn answer(health: &Health, up_since: SystemTime) -> (StatusCode, axum::Json<serde_json::Value>) {
    match health {
        Health::Running => {
            let uptime = up_since.elapsed().unwrap_or_default();
            let uptime = std::time::Duration::from_millis(uptime.as_millis() as u64);
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({
                    "status": "Server available",
                    "upSince": humantime::format_rfc3339_millis(up_since).to_string(),
                    "uptime": humantime::format_duration(uptime).to_string(),
                })),
            )
        }
        other => {
            let detail = match other {
                Health::Starting => "starting".to_string(),
                Health::Stopping => "shutting down".to_string(),
                Health::Failed(why) => format!("failed: {why}"),
                Health::Running => unreachable!("answered above"),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "status": "Server not available", "detail": detail })),
            )
        }
    }
}

#[async_trait]
impl Extension for HealthCheck {
    async fn start(&mut self) -> Result<(), ComponentError> {
        let address = &self.config.endpoint;
        let listener = tokio::net::TcpListener::bind(&address.address)
            .await
            .map_err(|e| ComponentError::new(format!("endpoint: cannot listen on {}: {e}", address.describe())))?;
        let bound = listener
            .local_addr()
            .map_err(|e| ComponentError::new(format!("endpoint: {e}")))?;
        let health = self.health.clone();
        let up_since = SystemTime::now();
        let app = axum::Router::new().route(
            &self.config.path,
            axum::routing::get(move || {
                let health = health.clone();
                async move {
                    let current = health.borrow().clone();
                    answer(&current, up_since)
                }
            }),
        );
        // A probe on every interface is what Kubernetes needs (the kubelet asks the pod's address), and the
        // answer tells nothing secret: no warning, unlike the data endpoints.
        tracing::info!("health check on http://{bound}{}", self.config.path);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve_http(
            listener,
            app,
            HttpServing::default(),
            stopped,
            "health_check".into(),
        ));
        self.server = Some((stop, task));
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        Ok(())
    }
}
