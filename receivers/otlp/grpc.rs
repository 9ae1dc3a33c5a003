//! OTLP/gRPC: the trace, metrics and logs `Export` methods, served over the raw request bytes.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use infercol_pipelines::telemetry::ReceiverCounters;
use infercol_pipelines::{ConsumeError, Consumer, Data, RawCodec, Signal};
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::guard::{GuardedBody, Violation};

/// What the three OTLP services have in common, and what differs.
pub trait OtlpService: Send + Sync + 'static {
    const NAME: &'static str;
    const SIGNAL: Signal;
}

pub struct TraceService;
impl OtlpService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const SIGNAL: Signal = Signal::Traces;
}

pub struct MetricsService;
impl OtlpService for MetricsService {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const SIGNAL: Signal = Signal::Metrics;
}

pub struct LogsService;
impl OtlpService for LogsService {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const SIGNAL: Signal = Signal::Logs;
}

pub struct Shared {
    pub auth: super::config::AuthConfig,
    pub replicas: infercol_pipelines::ReplicaDirectory,
    pub consumer: Arc<dyn Consumer>,
    pub counters: ReceiverCounters,
    pub max_recv_msg_size: usize,
    pub read_timeout: std::time::Duration,
    pub buffer: super::guard::RequestBuffer,
}

/// One OTLP gRPC service; `S` says which.
pub struct GrpcService<S> {
    shared: Arc<Shared>,
    _service: PhantomData<fn() -> S>,
}

impl<S> GrpcService<S> {
    pub fn new(shared: Shared) -> Self {
        GrpcService {
            shared: Arc::new(shared),
            _service: PhantomData,
        }
    }
}

impl<S> Clone for GrpcService<S> {
    fn clone(&self) -> Self {
        GrpcService {
            shared: self.shared.clone(),
            _service: PhantomData,
        }
    }
}

impl<S: OtlpService> NamedService for GrpcService<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower_service::Service<http::Request<B>> for GrpcService<S>
where
    S: OtlpService,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let is_export = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(S::NAME))
            .is_some_and(|m| m == "/Export");
        if !is_export {
            return Box::pin(async move {
                Ok(Status::unimplemented("unknown method; OTLP services have only Export").into_http())
            });
        }
        let shared = self.shared.clone();
        if !is_grpc_content_type(req.headers()) {
            // As gRPC servers do: this is not a gRPC request, so it gets an HTTP answer, not a gRPC status.
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::empty());
                *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
                Ok(response)
            });
        }
        let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        if !shared.auth.allows(authorization) {
            return Box::pin(async move {
                Ok(Status::unauthenticated("missing or wrong bearer token in the authorization metadata").into_http())
            });
        }
        let max = shared.max_recv_msg_size;
        let (parts, body) = req.into_parts();
        let body = GuardedBody::new(Box::pin(body), shared.read_timeout, shared.buffer.clone(), Some(max));
        let verdict = body.verdict();
        let req = http::Request::from_parts(parts, body);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(max);
            let response = grpc
                .unary(
                    Export::<S> {
                        shared,
                        _s: PhantomData,
                    },
                    req,
                )
                .await;
            let violation = verdict.lock().ok().and_then(|v| v.clone());
            Ok(match violation {
                Some(violation) => violation_status(&violation).into_http(),
                // tonic's own limit, on the decompressed message: OUT_OF_RANGE, which OTLP clients retry.
                None if grpc_status(&response) == Some(Code::OutOfRange) => Status::resource_exhausted(format!(
                    "decompressed message larger than max_recv_msg_size_mib ({max} bytes)"
                ))
                .into_http(),
                None => response,
            })
        })
    }
}

/// `application/grpc`, alone or with a `+format` suffix.
fn is_grpc_content_type(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim();
            v == "application/grpc" || v.starts_with("application/grpc+") || v.starts_with("application/grpc;")
        })
}

/// The status of a trailers-only answer (how tonic answers an error before any message).
fn grpc_status<B>(response: &http::Response<B>) -> Option<Code> {
    let value = response.headers().get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// The answer for a body cut by the receiver's bounds, with codes that OTLP clients do not retry where retrying
/// cannot help (RESOURCE_EXHAUSTED without RetryInfo, as the Collector's gRPC server answers an oversize message).
fn violation_status(violation: &Violation) -> Status {
    match violation {
        Violation::TooLarge { .. } => Status::resource_exhausted(violation.to_string()),
        Violation::SecondMessage => Status::internal(violation.to_string()),
        Violation::Timeout(_) => Status::deadline_exceeded(violation.to_string()),
    }
}

struct Export<S> {
    shared: Arc<Shared>,
    _s: PhantomData<fn() -> S>,
}

impl<S: OtlpService> tonic::server::UnaryService<Bytes> for Export<S> {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let data = Data::decode(S::SIGNAL, request.into_inner())
                .map_err(|e| Status::invalid_argument(format!("malformed OTLP {} export request: {e}", S::SIGNAL)))?;
            let (data, rejected, why) = data.without_invalid_spans();
            if rejected > 0 {
                shared.counters.refused(S::SIGNAL, rejected as usize);
            }
            let items = data.items();
            shared.replicas.observe_data(&data);
            let result = if items == 0 {
                Ok(())
            } else {
                shared.consumer.consume(data).await
            };
            match result {
                Ok(()) => {
                    shared.counters.accepted(S::SIGNAL, items);
                    Ok(tonic::Response::new(match why {
                        Some(message) => super::partial_success(rejected, message, false),
                        // Every Export*ServiceResponse without partial success encodes to zero bytes.
                        None => Bytes::new(),
                    }))
                }
                Err(e) => {
                    shared.counters.refused(S::SIGNAL, items);
                    Err(refusal_status(&e))
                }
            }
        })
    }
}

/// A refusal as the OTLP specification wants it: UNAVAILABLE with RetryInfo when the client should retry.
pub fn refusal_status(e: &ConsumeError) -> Status {
    match e {
        ConsumeError::Retryable { reason, retry_after } => Status::with_error_details(
            Code::Unavailable,
            reason.clone(),
            ErrorDetails::with_retry_info(Some(*retry_after)),
        ),
        ConsumeError::Permanent(reason) => Status::invalid_argument(reason.clone()),
    }
}
