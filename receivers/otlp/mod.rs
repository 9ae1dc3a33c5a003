//! Receiver `otlp`: OTLP over gRPC and HTTP, as the OpenTelemetry specification defines it.

mod compression;
mod config;
pub mod grpc;
pub mod guard;
pub mod http;

use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use infercol_pipelines::batched_writes::BatchedWrites;
use infercol_pipelines::server::{HttpServing, incoming, serve_http, warn_if_exposed};
use infercol_pipelines::{
    AnyConfig, ComponentError, ComponentId, Consumers, Endpoint, Receiver, ReceiverContext, ReceiverFactory, Signal,
    Telemetry, config_as,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{GrpcConfig, HttpConfig, Keepalive, KeepaliveServerParameters, OtlpReceiverConfig, Protocols};
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
            replicas: ctx.shared.get::<infercol_pipelines::ReplicaDirectory>(),
            servers: Vec::new(),
            buffer: None,
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
    buffer: Option<guard::RequestBuffer>,
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
        let limit = (self.config.request_buffer_limit_mib as usize).saturating_mul(1024 * 1024);
        self.buffer = Some(guard::RequestBuffer::new(limit));
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
    fn request_buffer(&self) -> guard::RequestBuffer {
        self.buffer
            .clone()
            .unwrap_or_else(|| guard::RequestBuffer::new(64 << 20))
    }

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
                read_timeout: config.read_timeout,
                buffer: self.request_buffer(),
            })
        };
        let keepalive = &config.keepalive.server_parameters;
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_keepalive_interval(config::nonzero(keepalive.time))
            .http2_keepalive_timeout(config::nonzero(keepalive.timeout));
        if let Some(age) = config::nonzero(keepalive.max_connection_age) {
            builder = builder.max_connection_age(age);
        }
        if let Some(grace) = config::nonzero(keepalive.max_connection_age_grace) {
            builder = builder.max_connection_age_grace(grace);
        }
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
        let bound = listener
            .local_addr()
            .map_err(|e| ComponentError::new(format!("protocols.grpc.endpoint: {e}")))?;
        let id = self.id.clone();
        tracing::info!(receiver = %id, "OTLP/gRPC on {bound}");
        let what = format!("receivers.{id}: OTLP/gRPC");
        warn_if_exposed(&what, &bound, self.config.auth.bearer_token.is_some());
        // Responses of the streams that finish in one pass go out in one write (see `BatchedWrites`).
        let incoming = Box::pin(incoming(listener, &config.connection_limits(), what).map_ok(BatchedWrites::new));
        let task = tokio::spawn(async move {
            let result = router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(receiver = %id, "OTLP/gRPC server on {bound}: {e}");
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
                read_timeout: config.read_timeout,
                buffer: self.request_buffer(),
            });
            router = router.route(path, axum::routing::post(http::export).with_state(route));
        }
        // tower-http decompresses gzip and zstd as the body is read, so that the handler's limit on the
        // decompressed size stops a bomb early; other encodings pass through for the handler to refuse in OTLP's
        // error encoding. The mark, taken before the layer removes the header, tells the handler not to drain an
        // oversize compressed body (that would decompress what it refuses). The size limit stays in the handler
        // rather than tower-http's body-limit layer: that layer answers 413 in plain text, where OTLP wants a
        // google.rpc.Status in the request's encoding, and it cannot drain an uncompressed body so that a client
        // still sending sees the 413.
        let router = router
            .layer(
                tower_http::decompression::RequestDecompressionLayer::new()
                    .gzip(true)
                    .zstd(true)
                    .pass_through_unaccepted(true),
            )
            .layer(axum::middleware::map_request(http::mark_compressed));
        let (stop, stopped) = oneshot::channel::<()>();
        let bound = listener
            .local_addr()
            .map_err(|e| ComponentError::new(format!("protocols.http.endpoint: {e}")))?;
        let id = self.id.clone();
        let tls = match &config.tls {
            Some(tls) => Some(
                tls.rustls()
                    .map_err(|e| ComponentError::new(format!("protocols.http.{e}")))?,
            ),
            None => None,
        };
        let shown = if tls.is_some() { " (TLS)" } else { "" };
        tracing::info!(receiver = %id, "OTLP/HTTP on {bound}{shown}");
        let what = format!("receivers.{id}: OTLP/HTTP");
        warn_if_exposed(&what, &bound, self.config.auth.bearer_token.is_some());
        let serving = HttpServing {
            tls,
            limits: config.connection_limits(),
            // The routes answer a missing token themselves, in OTLP's error encoding.
            auth: None,
        };
        let task = tokio::spawn(serve_http(listener, router, serving, stopped, what));
        Ok(Server { stop, task })
    }
}
