//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` with protobuf or JSON bodies, plain or gzip.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use infercol_pipelines::telemetry::ReceiverCounters;
use infercol_pipelines::{ConsumeError, Consumer, Data, Signal};
use prost::Message;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

pub struct Route {
    pub auth: super::config::AuthConfig,
    pub replicas: infercol_pipelines::ReplicaDirectory,
    pub signal: Signal,
    pub consumer: Arc<dyn Consumer>,
    pub counters: ReceiverCounters,
    pub max_body: usize,
    pub read_timeout: std::time::Duration,
    pub buffer: super::guard::RequestBuffer,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

/// An answer in the encoding of the request: an empty Export*ServiceResponse, or a `google.rpc.Status`.
fn answer(encoding: Encoding, status: StatusCode, message: Option<String>) -> Response {
    let body = match (message, encoding) {
        (None, Encoding::Protobuf) => Bytes::new(),
        (None, Encoding::Json) => Bytes::from_static(b"{}"),
        (Some(m), Encoding::Protobuf) => Bytes::from(
            tonic_types::Status {
                code: grpc_code_for(status),
                message: m,
                details: Vec::new(),
            }
            .encode_to_vec(),
        ),
        (Some(m), Encoding::Json) => {
            Bytes::from(serde_json::json!({ "code": grpc_code_for(status), "message": m }).to_string())
        }
    };
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
    response
}

/// The gRPC code a `google.rpc.Status` body carries for an HTTP status.
fn grpc_code_for(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 => 3,        // INVALID_ARGUMENT
        413 => 8,        // RESOURCE_EXHAUSTED
        415 => 3,        // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        408 => 4,        // DEADLINE_EXCEEDED
        429 | 503 => 14, // UNAVAILABLE
        _ => 13,         // INTERNAL
    }
}

/// What an oversize body is still read (and dropped) for, so that the client, still sending, sees the 413 instead
/// of a broken connection; past it the connection is closed.
const DRAIN_LIMIT: usize = 64 << 20;

/// Why a body was not read.
enum BodyFailure {
    TooLarge,
    Timeout(String),
    Busy(String),
    Broken(String),
}

/// Set on a request that came with a Content-Encoding, before it is decompressed.
#[derive(Clone, Copy)]
pub struct Compressed;

pub async fn mark_compressed(mut request: axum::extract::Request) -> axum::extract::Request {
    if request.headers().contains_key(header::CONTENT_ENCODING) {
        request.extensions_mut().insert(Compressed);
    }
    request
}

/// The body (decompressed, when it came compressed), read within the route's time and request buffer; over `max`
/// bytes what follows is read and discarded, up to `DRAIN_LIMIT`, when `drain` says so.
async fn read_body(route: &Route, body: Body, max: usize, drain: bool) -> Result<Bytes, BodyFailure> {
    let mut body = super::guard::GuardedBody::new(body, route.read_timeout, route.buffer.clone(), None);
    let mut kept: Vec<u8> = Vec::new();
    let mut over = false;
    let mut drained = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e {
            super::guard::BodyError::Violation(v @ super::guard::Violation::Busy { .. }) => {
                BodyFailure::Busy(v.to_string())
            }
            super::guard::BodyError::Violation(v) => BodyFailure::Timeout(v.to_string()),
            other => BodyFailure::Broken(other.to_string()),
        })?;
        let Ok(data) = frame.into_data() else { continue };
        if over {
            drained += data.len();
            if drained > DRAIN_LIMIT {
                break;
            }
        } else if kept.len() + data.len() > max {
            over = true;
            kept = Vec::new();
            if !drain {
                break;
            }
            body.stop_counting();
        } else {
            kept.extend_from_slice(&data);
        }
    }
    if over {
        return Err(BodyFailure::TooLarge);
    }
    Ok(Bytes::from(kept))
}

pub async fn export(
    State(route): State<Arc<Route>>,
    compressed: Option<axum::Extension<Compressed>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !route.auth.allows(authorization) {
        let mut r = answer(
            Encoding::Protobuf,
            StatusCode::UNAUTHORIZED,
            Some("missing or wrong bearer token in the Authorization header".into()),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let encoding = match content_type.as_str() {
        PROTOBUF => Encoding::Protobuf,
        JSON => Encoding::Json,
        other => {
            let shown = if other.is_empty() { "none" } else { other };
            return answer(
                Encoding::Protobuf,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some(format!(
                    "unsupported Content-Type `{shown}`; OTLP/HTTP accepts {PROTOBUF} and {JSON}"
                )),
            );
        }
    };
    let compression = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();

    let max = route.max_body;
    let too_large = || {
        answer(
            encoding,
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(format!("request body larger than max_request_body_size ({max} bytes)")),
        )
    };
    let raw = match read_body(&route, body, max, compressed.is_none()).await {
        Ok(bytes) => bytes,
        Err(BodyFailure::TooLarge) => return too_large(),
        Err(BodyFailure::Timeout(why)) => return answer(encoding, StatusCode::REQUEST_TIMEOUT, Some(why)),
        Err(BodyFailure::Busy(why)) => {
            let mut r = answer(encoding, StatusCode::SERVICE_UNAVAILABLE, Some(why));
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            return r;
        }
        Err(BodyFailure::Broken(e)) => {
            return answer(
                encoding,
                StatusCode::BAD_REQUEST,
                Some(format!("cannot read request body: {e}")),
            );
        }
    };
    // gzip and zstd were decompressed on the way in (the layer removed their header); what is left is refused.
    let bytes = match compression.as_str() {
        "" | "identity" => raw,
        other => {
            return answer(
                encoding,
                StatusCode::BAD_REQUEST,
                Some(format!(
                    "unsupported Content-Encoding `{other}`; use gzip, zstd or none"
                )),
            );
        }
    };

    let signal = route.signal;
    let parsed = match encoding {
        Encoding::Protobuf => Data::decode(signal, bytes).map_err(|e| e.to_string()),
        Encoding::Json => Data::from_json(signal, &bytes).map_err(|e| e.to_string()),
    };
    let data = match parsed {
        Ok(d) => d,
        Err(e) => {
            let kind = if encoding == Encoding::Json {
                "OTLP/JSON"
            } else {
                "protobuf"
            };
            return answer(
                encoding,
                StatusCode::BAD_REQUEST,
                Some(format!("malformed {kind} {signal} export request: {e}")),
            );
        }
    };
    let (data, rejected, why) = data.without_invalid_spans();
    if rejected > 0 {
        route.counters.refused(signal, rejected as usize);
    }
    let items = data.items();
    route.replicas.observe_data(&data);
    let result = if items == 0 {
        Ok(())
    } else {
        route.consumer.consume(data).await
    };
    match result {
        Ok(()) => {
            route.counters.accepted(signal, items);
            match why {
                Some(message) => {
                    let mut r = (
                        StatusCode::OK,
                        super::partial_success(rejected, message, encoding == Encoding::Json),
                    )
                        .into_response();
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
                    r
                }
                None => answer(encoding, StatusCode::OK, None),
            }
        }
        Err(e) => {
            route.counters.refused(signal, items);
            match e {
                ConsumeError::Retryable { reason, retry_after } => {
                    let mut r = answer(encoding, StatusCode::SERVICE_UNAVAILABLE, Some(reason));
                    let secs = retry_after.as_secs().max(1);
                    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                    r
                }
                ConsumeError::Permanent(reason) => answer(encoding, StatusCode::BAD_REQUEST, Some(reason)),
            }
        }
    }
}
