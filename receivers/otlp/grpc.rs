//! OTLP/gRPC: the trace, metrics and logs `Export` methods, served over the raw request bytes.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use infercol_pipelines::telemetry::ReceiverCounters;
use infercol_pipelines::{ConsumeError, Consumer, Data, Signal};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::guard::{BodyError, GuardedBody, Violation};

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
        let encoding = req
            .headers()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        let body = GuardedBody::new(
            Box::pin(req.into_body()),
            shared.read_timeout,
            shared.buffer.clone(),
            Some(max),
        );
        Box::pin(async move {
            let answer = match read_message(body, max, encoding.as_deref()).await {
                Ok(message) => export::<S>(&shared, message).await,
                Err(status) => Err(status),
            };
            Ok(match answer {
                Ok(response) => unary_response(response),
                Err(status) => refuse(status),
            })
        })
    }
}

/// Reads the one message of a unary call. The framing and size were checked by the guard on the frame header;
/// the buffer grows with what arrives (at most 256 KiB is set aside up front), so a message that is declared but
/// never sent costs nothing. Written here rather than left to tonic's decoder, which reserves the declared length
/// at once: 100 streams declaring 4 MiB each held hundreds of MiB without sending them.
async fn read_message<B>(mut body: GuardedBody<B>, max: usize, encoding: Option<&str>) -> Result<Bytes, Status>
where
    GuardedBody<B>: http_body::Body<Data = Bytes, Error = BodyError> + Unpin,
{
    use http_body_util::BodyExt;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(BodyError::Violation(v)) => return Err(violation_status(&v)),
            Err(BodyError::Inner(e)) => return Err(Status::cancelled(format!("reading the request: {e}"))),
        };
        reserve_for(&mut buf, &data);
        buf.extend_from_slice(&data);
    }
    if buf.len() < 5 {
        return Err(Status::internal("missing request message"));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() != 5 + len {
        return Err(Status::internal("request message cut short"));
    }
    let compressed = buf[0];
    let message = Bytes::from(buf).slice(5..);
    match (compressed, encoding) {
        (0, _) => Ok(message),
        (1, Some(kind @ ("gzip" | "zstd"))) => match super::compression::decompress(kind, &message, max) {
            Ok(Some(plain)) => Ok(Bytes::from(plain)),
            Ok(None) => Err(Status::resource_exhausted(format!(
                "message larger than max_recv_msg_size_mib ({max} bytes) once decompressed"
            ))),
            Err(e) => Err(Status::internal(format!("invalid {kind} message: {e}"))),
        },
        // grpc-go's rules: a compressed message without an encoding is a protocol error; an encoding this server
        // lacks is UNIMPLEMENTED, with `grpc-accept-encoding` saying what it has (added by `refuse`).
        (1, None | Some("identity")) => Err(Status::internal("compressed message without a grpc-encoding header")),
        (1, Some(other)) => Err(Status::unimplemented(format!(
            "message compressed with `{other}`, which this server does not support (gzip, zstd)"
        ))),
        (flag, _) => Err(Status::internal(format!("invalid compression flag {flag}"))),
    }
}

/// Room in `buf` for `data`, the next bytes of a framed message: exactly the declared length when it is at most
/// 256 KiB (the usual request), else 256 KiB, doubling with what has arrived, and exactly the declared length once
/// half of it is there. A message is never held in a buffer much larger than itself, and a length that is only
/// declared, never sent, reserves at most 256 KiB.
fn reserve_for(buf: &mut Vec<u8>, data: &[u8]) {
    const FIRST: usize = 256 << 10;
    let needed = buf.len() + data.len();
    if needed <= buf.capacity() {
        return;
    }
    let mut header = [0u8; 5];
    let known = buf
        .iter()
        .chain(data)
        .take(5)
        .zip(&mut header)
        .map(|(b, h)| *h = *b)
        .count()
        == 5;
    let target = if known {
        let total = 5 + u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if total <= FIRST || needed * 2 >= total {
            total
        } else {
            (needed * 2).max(FIRST).min(total)
        }
    } else {
        FIRST
    };
    buf.reserve_exact(target.max(needed) - buf.len());
}

/// A trailers-only error answer; it says which encodings the server takes, as gRPC servers do.
fn refuse(status: Status) -> http::Response<tonic::body::Body> {
    let mut response = status.into_http();
    response
        .headers_mut()
        .insert("grpc-accept-encoding", http::HeaderValue::from_static("gzip,zstd"));
    response
}

/// A successful unary answer: the response message, uncompressed, and `grpc-status: 0` in the trailers.
fn unary_response(message: Bytes) -> http::Response<tonic::body::Body> {
    use http_body::Frame;
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [
        Ok::<_, Infallible>(Frame::data(Bytes::from(framed))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let mut response = http::Response::new(tonic::body::Body::new(body));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-accept-encoding", http::HeaderValue::from_static("gzip,zstd"));
    response
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

/// The answer for a body cut by the receiver's bounds, with codes that OTLP clients do not retry where retrying
/// cannot help (RESOURCE_EXHAUSTED without RetryInfo, as the Collector's gRPC server answers an oversize message).
fn violation_status(violation: &Violation) -> Status {
    match violation {
        Violation::TooLarge { .. } => Status::resource_exhausted(violation.to_string()),
        Violation::SecondMessage => Status::internal(violation.to_string()),
        Violation::Timeout(_) => Status::deadline_exceeded(violation.to_string()),
        Violation::Busy { .. } => Status::with_error_details(
            Code::Unavailable,
            violation.to_string(),
            ErrorDetails::with_retry_info(Some(infercol_pipelines::graph::RETRY_AFTER)),
        ),
    }
}

/// Decodes, checks and hands on one export request; the response message, or the status to answer with.
async fn export<S: OtlpService>(shared: &Shared, message: Bytes) -> Result<Bytes, Status> {
    let data = Data::decode(S::SIGNAL, message)
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
            Ok(match why {
                Some(message) => super::partial_success(rejected, message, false),
                // Every Export*ServiceResponse without partial success encodes to zero bytes.
                None => Bytes::new(),
            })
        }
        Err(e) => {
            shared.counters.refused(S::SIGNAL, items);
            Err(refusal_status(&e))
        }
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
