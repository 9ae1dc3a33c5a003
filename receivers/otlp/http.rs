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

/// A refusal: the answer the client gets, in its request's encoding.
type Refused = Box<Response>;

pub async fn export(
    State(route): State<Arc<Route>>,
    compressed: Option<axum::Extension<Compressed>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let taken = async {
        authorize(&route, &headers)?;
        let encoding = encoding_of(&headers)?;
        let bytes = read_request(&route, &headers, encoding, body, compressed.is_some()).await?;
        let data = parse(route.signal, encoding, bytes)?;
        Ok::<_, Refused>((encoding, data))
    };
    match taken.await {
        Ok((encoding, data)) => deliver(&route, encoding, data).await,
        Err(refused) => *refused,
    }
}

/// A 401 unless the bearer token is right (or none is asked for).
fn authorize(route: &Route, headers: &HeaderMap) -> Result<(), Refused> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if route.auth.allows(authorization) {
        return Ok(());
    }
    let mut r = answer(
        Encoding::Protobuf,
        StatusCode::UNAUTHORIZED,
        Some("missing or wrong bearer token in the Authorization header".into()),
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(Box::new(r))
}

/// The request's encoding from its Content-Type; a 415 for any other.
fn encoding_of(headers: &HeaderMap) -> Result<Encoding, Refused> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    match content_type.as_str() {
        PROTOBUF => Ok(Encoding::Protobuf),
        JSON => Ok(Encoding::Json),
        other => {
            let shown = if other.is_empty() { "none" } else { other };
            Err(Box::new(answer(
                Encoding::Protobuf,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some(format!(
                    "unsupported Content-Type `{shown}`; OTLP/HTTP accepts {PROTOBUF} and {JSON}"
                )),
            )))
        }
    }
}

/// The body, decompressed (gzip and zstd were decompressed on the way in, and the layer removed their header;
/// another Content-Encoding is refused), within the route's size, time and buffer.
async fn read_request(
    route: &Route,
    headers: &HeaderMap,
    encoding: Encoding,
    body: Body,
    compressed: bool,
) -> Result<Bytes, Refused> {
    let max = route.max_body;
    let raw = read_body(route, body, max, !compressed)
        .await
        .map_err(|failure| match failure {
            BodyFailure::TooLarge => answer(
                encoding,
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(format!("request body larger than max_request_body_size ({max} bytes)")),
            ),
            BodyFailure::Timeout(why) => answer(encoding, StatusCode::REQUEST_TIMEOUT, Some(why)),
            BodyFailure::Busy(why) => {
                let mut r = answer(encoding, StatusCode::SERVICE_UNAVAILABLE, Some(why));
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u64));
                r
            }
            BodyFailure::Broken(e) => answer(
                encoding,
                StatusCode::BAD_REQUEST,
                Some(format!("cannot read request body: {e}")),
            ),
        })
        .map_err(Box::new)?;
    let compression = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match compression.as_str() {
        "" | "identity" => Ok(raw),
        other => Err(Box::new(answer(
            encoding,
            StatusCode::BAD_REQUEST,
            Some(format!(
                "unsupported Content-Encoding `{other}`; use gzip, zstd or none"
            )),
        ))),
    }
}

/// The export request; a 400 that names what was malformed.
fn parse(signal: Signal, encoding: Encoding, bytes: Bytes) -> Result<Data, Refused> {
    let parsed = match encoding {
        Encoding::Protobuf => Data::decode(signal, bytes).map_err(|e| e.to_string()),
        Encoding::Json => Data::from_json(signal, &bytes).map_err(|e| e.to_string()),
    };
    parsed.map_err(|e| {
        let kind = if encoding == Encoding::Json {
            "OTLP/JSON"
        } else {
            "protobuf"
        };
        Box::new(answer(
            encoding,
            StatusCode::BAD_REQUEST,
            Some(format!("malformed {kind} {signal} export request: {e}")),
        ))
    })
}

/// Hands the request to the pipelines; the answer is 200 (with a partial success for refused spans), or 503 with
/// Retry-After when the pipelines are full.
async fn deliver(route: &Route, encoding: Encoding, data: Data) -> Response {
    let signal = route.signal;
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
