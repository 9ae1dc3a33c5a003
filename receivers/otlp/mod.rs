//! Receiver `otlp`: OTLP over gRPC and HTTP, as the OpenTelemetry specification defines it.

mod config;
pub mod grpc;
pub mod http;

use std::sync::Arc;

use async_trait::async_trait;
use infercol_pipelines::{
    AnyConfig, ComponentError, ComponentId, Consumers, Endpoint, Receiver, ReceiverContext, ReceiverFactory, Signal,
    Telemetry, config_as,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{GrpcConfig, HttpConfig, OtlpReceiverConfig, Protocols};
pub use infercol_pipelines::tls::ServerTls;

/// The traces export response that reports rejected spans (OTLP partial success), as protobuf or OTLP/JSON.
pub(crate) fn partial_success(rejected: u64, message: String, json: bool) -> bytes::Bytes {
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
    use prost::Message;
    let response = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: rejected as i64,
            error_message: message,
        }),
    };
    if json {
        bytes::Bytes::from(serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()))
    } else {
        bytes::Bytes::from(response.encode_to_vec())
    }
}

pub struct OtlpReceiverFactory;

infercol_pipelines::factory!(
    OtlpReceiverFactory,
    "otlp",
    OtlpReceiverConfig,
    &[Signal::Traces, Signal::Metrics, Signal::Logs]
);

impl ReceiverFactory for OtlpReceiverFactory {
    fn create(&self, config: &AnyConfig, ctx: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
        Ok(Box::new(OtlpReceiver {
            config: config_as::<OtlpReceiverConfig>(config)?.clone(),
            id: ctx.id,
            consumers: Some(ctx.consumers),
            telemetry: ctx.telemetry,
            replicas: ctx.replicas,
            servers: Vec::new(),
        }))
    }
}

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

pub struct OtlpReceiver {
    config: OtlpReceiverConfig,
    id: ComponentId,
    consumers: Option<Consumers>,
    telemetry: Telemetry,
    replicas: infercol_pipelines::ReplicaDirectory,
    servers: Vec<Server>,
}

async fn bind(key: &str, endpoint: &Endpoint) -> Result<TcpListener, ComponentError> {
    TcpListener::bind(&endpoint.address)
        .await
        .map_err(|e| ComponentError::new(format!("{key} {}: cannot listen: {e}", endpoint.describe())))
}

#[async_trait]
impl Receiver for OtlpReceiver {
    async fn start(&mut self) -> Result<(), ComponentError> {
        // The servers own the consumers from here on; the receiver keeps none, so that shutdown closes them.
        let consumers = self
            .consumers
            .take()
            .ok_or_else(|| ComponentError::new("started twice"))?;
        // Bind everything first, so that a taken port fails the start before anything serves.
        let grpc = match &self.config.protocols.grpc {
            Some(g) => Some((g, bind("protocols.grpc.endpoint", &g.endpoint).await?)),
            None => None,
        };
        let http = match &self.config.protocols.http {
            Some(h) => Some((h, bind("protocols.http.endpoint", &h.endpoint).await?)),
            None => None,
        };
        if let Some((config, listener)) = grpc {
            self.servers.push(self.serve_grpc(config, listener, &consumers)?);
        }
        if let Some((config, listener)) = http {
            self.servers.push(self.serve_http(config, listener, &consumers)?);
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        for server in self.servers.drain(..) {
            let _ = server.stop.send(());
            if let Err(e) = server.task.await {
                return Err(ComponentError::new(format!("server task failed: {e}")));
            }
        }
        Ok(())
    }
}

impl OtlpReceiver {
    fn serve_grpc(
        &self,
        config: &GrpcConfig,
        listener: TcpListener,
        consumers: &Consumers,
    ) -> Result<Server, ComponentError> {
        let counters = self.telemetry.receiver(&self.id, "grpc");
        let max = (config.max_recv_msg_size_mib as usize).saturating_mul(1024 * 1024);
        let shared = |signal: Signal| {
            consumers.get(signal).map(|consumer| grpc::Shared {
                auth: self.config.auth.clone(),
                replicas: self.replicas.clone(),
                consumer: consumer.clone(),
                counters: counters.clone(),
                max_recv_msg_size: max,
            })
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            let (cert, key, ca) = tls
                .pem()
                .map_err(|e| ComponentError::new(format!("protocols.grpc.{e}")))?;
            let mut server_tls =
                tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
            if let Some(ca) = ca {
                server_tls = server_tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder
                .tls_config(server_tls)
                .map_err(|e| ComponentError::new(format!("protocols.grpc.tls: {e}")))?;
        }
        let router = builder
            .add_optional_service(shared(Signal::Traces).map(grpc::GrpcService::<grpc::TraceService>::new))
            .add_optional_service(shared(Signal::Metrics).map(grpc::GrpcService::<grpc::MetricsService>::new))
            .add_optional_service(shared(Signal::Logs).map(grpc::GrpcService::<grpc::LogsService>::new));
        let (stop, stopped) = oneshot::channel::<()>();
        let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let id = self.id.clone();
        tracing::info!(receiver = %id, "OTLP/gRPC on {address}");
        let task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let result = router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(receiver = %id, "OTLP/gRPC server on {address}: {e}");
            }
        });
        Ok(Server { stop, task })
    }

    fn serve_http(
        &self,
        config: &HttpConfig,
        listener: TcpListener,
        consumers: &Consumers,
    ) -> Result<Server, ComponentError> {
        let counters = self.telemetry.receiver(&self.id, "http");
        let mut router = axum::Router::new();
        for (signal, path) in [
            (Signal::Traces, &config.traces_url_path),
            (Signal::Metrics, &config.metrics_url_path),
            (Signal::Logs, &config.logs_url_path),
        ] {
            let Some(consumer) = consumers.get(signal) else {
                continue;
            };
            let route = Arc::new(http::Route {
                auth: self.config.auth.clone(),
                replicas: self.replicas.clone(),
                signal,
                consumer: consumer.clone(),
                counters: counters.clone(),
                max_body: config.max_request_body_size as usize,
            });
            router = router.route(path, axum::routing::post(http::export).with_state(route));
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let id = self.id.clone();
        if let Some(tls) = &config.tls {
            let tls = tls
                .rustls()
                .map_err(|e| ComponentError::new(format!("protocols.http.{e}")))?;
            tracing::info!(receiver = %id, "OTLP/HTTP on {address} (TLS)");
            let task = tokio::spawn(infercol_pipelines::tls::serve_https(listener, router, tls, stopped));
            return Ok(Server { stop, task });
        }
        tracing::info!(receiver = %id, "OTLP/HTTP on {address}");
        let task = tokio::spawn(async move {
            let result = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(receiver = %id, "OTLP/HTTP server on {address}: {e}");
            }
        });
        Ok(Server { stop, task })
    }
}
