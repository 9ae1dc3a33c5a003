//! Extension `health_check`: an HTTP endpoint for liveness and readiness probes, as the OpenTelemetry Collector's
//! `health_check` extension has it (`endpoint` 127.0.0.1:13133, `path` `/`). It answers 200 while every pipeline
//! runs, and 503 while the collector starts, while it shuts down, and after a component failed.

use std::sync::{Arc, OnceLock};
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
    /// Bodies that replace the JSON answers, as the Collector's `response_body.healthy` / `.unhealthy`.
    pub response_body: Option<ResponseBody>,
    /// The Collector's `check_collector_pipeline`, accepted so that its configurations load; it is deprecated
    /// there and has no effect there or here (the answer already follows every pipeline's state).
    pub check_collector_pipeline: Option<CheckCollectorPipeline>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseBody {
    pub healthy: String,
    pub unhealthy: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckCollectorPipeline {
    pub enabled: bool,
    pub interval: String,
    pub exporter_failure_threshold: u64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            endpoint: Endpoint::new("127.0.0.1:13133"),
            path: "/".into(),
            response_body: None,
            check_collector_pipeline: None,
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

/// The answer to a probe: the configured body, else the Collector's JSON.
fn respond(health: &Health, up_since: SystemTime, bodies: Option<&ResponseBody>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (status, json) = answer(health, up_since);
    match bodies {
        Some(b) if status == StatusCode::OK => (status, b.healthy.clone()).into_response(),
        Some(b) => (status, b.unhealthy.clone()).into_response(),
        None => (status, json).into_response(),
    }
}

/// The Collector's body: `status`, and when available `upSince` and `uptime`.
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
        let bodies = self.config.response_body.clone();
        // `upSince` is when every pipeline came to run, as the Collector reports it.
        let up_since: Arc<OnceLock<SystemTime>> = Arc::default();
        let (mut watch, since) = (self.health.clone(), up_since.clone());
        tokio::spawn(async move {
            if watch.wait_for(|h| *h == Health::Running).await.is_ok() {
                let _ = since.set(SystemTime::now());
            }
        });
        let app = axum::Router::new().route(
            &self.config.path,
            axum::routing::get(move || {
                let (health, bodies, up_since) = (health.clone(), bodies.clone(), up_since.clone());
                async move {
                    let current = health.borrow().clone();
                    let since = up_since.get().copied().unwrap_or_else(SystemTime::now);
                    respond(&current, since, bodies.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: axum::response::Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_answer_follows_the_health_with_the_collectors_bodies() {
        let since = SystemTime::now();
        let running = respond(&Health::Running, since, None);
        assert_eq!(running.status(), StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body_of(running).await).unwrap();
        assert_eq!(json["status"], "Server available");
        assert!(json["upSince"].as_str().is_some_and(|s| s.ends_with('Z')), "{json}");
        for state in [
            Health::Starting,
            Health::Stopping,
            Health::Failed("exporters.otlp: refused".into()),
        ] {
            let answer = respond(&state, since, None);
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "{state:?}");
            let json: serde_json::Value = serde_json::from_str(&body_of(answer).await).unwrap();
            assert_eq!(json["status"], "Server not available");
        }
        let bodies = ResponseBody {
            healthy: "I'm OK".into(),
            unhealthy: "I'm not well".into(),
        };
        assert_eq!(body_of(respond(&Health::Running, since, Some(&bodies))).await, "I'm OK");
        let down = respond(&Health::Stopping, since, Some(&bodies));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body_of(down).await, "I'm not well");
    }
}
