//! What a span means (contract section 2): request or not, protocol, status code and class, durations, sizes,
//! tokens, and its sampling weight. Pure functions over a span, so every rule is tested on its own; a span is
//! either the owned OTLP type or the borrowed view of `infercol_pipelines::lite` (see `SpanLike`).

use infercol_pipelines::lite::{KeyValues, SpanView, Value as ViewValue, same_bytes};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtlpStatus;

use super::lookup::{Found, List, RequestKeys};

/// An attribute's value as classification reads it, borrowed from either form of a span.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Double(f64),
    Bool(bool),
    /// A value of another type (bytes, array, map), or none.
    Other,
}

impl<'a> From<&'a AnyValue> for Val<'a> {
    fn from(v: &'a AnyValue) -> Val<'a> {
        match v.value.as_ref() {
            Some(Value::StringValue(s)) => Val::Str(s),
            Some(Value::IntValue(i)) => Val::Int(*i),
            Some(Value::DoubleValue(d)) => Val::Double(*d),
            Some(Value::BoolValue(b)) => Val::Bool(*b),
            _ => Val::Other,
        }
    }
}

impl<'a> From<ViewValue<'a>> for Val<'a> {
    fn from(v: ViewValue<'a>) -> Val<'a> {
        match v {
            ViewValue::Str(s) => Val::Str(s),
            ViewValue::Int(i) => Val::Int(i),
            ViewValue::Double(d) => Val::Double(d),
            ViewValue::Bool(b) => Val::Bool(b),
            _ => Val::Other,
        }
    }
}

/// A list of attributes: the first one with a key, and its value (`None` inside when it carries none).
pub trait Attributes {
    fn attribute(&self, key: &str) -> Option<Option<Val<'_>>>;
    /// Each attribute's position and key, its value unread: a reader that wants a few keys pays for no other
    /// value (it reads those with `value_at`).
    fn for_each_key<'s>(&'s self, f: impl FnMut(usize, &'s [u8]));
    /// The value of the attribute at `at` (a position `for_each_key` gave); `None` when it carries none.
    fn value_at(&self, at: usize) -> Option<Val<'_>>;
}

/// A key's bit in a 64-bit sketch (see `lookup`): cheap, from its length and two of its bytes.
pub(super) fn key_bit(key: &[u8]) -> u64 {
    let n = key.len();
    let Some(&last) = key.last() else { return 1 };
    let h = (n as u64).wrapping_mul(0x9E37_79B9) ^ (u64::from(last) << 5) ^ u64::from(key[n / 2]).wrapping_mul(7);
    1 << (h.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 58)
}

impl Attributes for [KeyValue] {
    #[inline]
    fn attribute(&self, key: &str) -> Option<Option<Val<'_>>> {
        self.iter()
            .find(|kv| kv.key == key)
            .map(|kv| kv.value.as_ref().map(Val::from))
    }
    #[inline]
    fn for_each_key<'s>(&'s self, mut f: impl FnMut(usize, &'s [u8])) {
        for (at, kv) in self.iter().enumerate() {
            f(at, kv.key.as_bytes());
        }
    }
    #[inline]
    fn value_at(&self, at: usize) -> Option<Val<'_>> {
        self.get(at)?.value.as_ref().map(Val::from)
    }
}

impl Attributes for KeyValues<'_> {
    #[inline]
    fn attribute(&self, key: &str) -> Option<Option<Val<'_>>> {
        self.get(key.as_bytes()).map(|v| v.map(Val::from))
    }
    #[inline]
    fn for_each_key<'s>(&'s self, mut f: impl FnMut(usize, &'s [u8])) {
        for (at, key) in self.keys().enumerate() {
            f(at, key);
        }
    }
    #[inline]
    fn value_at(&self, at: usize) -> Option<Val<'_>> {
        KeyValues::value_at(self, at).map(Val::from)
    }
}

/// What classification reads of a span; both the owned OTLP span and the borrowed view give it.
pub trait SpanLike {
    type Attrs: Attributes + ?Sized;
    fn kind(&self) -> i32;
    /// The name as bytes (compared without decoding its text again).
    fn name(&self) -> &[u8];
    fn start(&self) -> u64;
    fn end(&self) -> u64;
    fn attributes(&self) -> &Self::Attrs;
    /// The earliest time of an event with one of `names`.
    fn first_event(&self, names: &[String]) -> Option<u64>;
    fn status_is_error(&self) -> bool;
    fn trace_state(&self) -> &str;
    fn trace_id(&self) -> &[u8];
    fn span_id(&self) -> &[u8];
    /// Empty when the span has no parent.
    fn parent_span_id(&self) -> &[u8];
    /// The OTLP span `flags` (0 when absent).
    fn flags(&self) -> u32;
    /// Each event's name and time.
    fn for_each_event(&self, f: &mut dyn FnMut(&[u8], u64));
}

impl SpanLike for Span {
    type Attrs = [KeyValue];
    fn kind(&self) -> i32 {
        self.kind
    }
    fn name(&self) -> &[u8] {
        self.name.as_bytes()
    }
    fn start(&self) -> u64 {
        self.start_time_unix_nano
    }
    fn end(&self) -> u64 {
        self.end_time_unix_nano
    }
    fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }
    fn first_event(&self, names: &[String]) -> Option<u64> {
        self.events
            .iter()
            .filter(|e| names.iter().any(|n| n == &e.name))
            .map(|e| e.time_unix_nano)
            .min()
    }
    fn status_is_error(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.code == OtlpStatus::Error as i32)
    }
    fn trace_state(&self) -> &str {
        &self.trace_state
    }
    fn trace_id(&self) -> &[u8] {
        &self.trace_id
    }
    fn span_id(&self) -> &[u8] {
        &self.span_id
    }
    fn parent_span_id(&self) -> &[u8] {
        &self.parent_span_id
    }
    fn flags(&self) -> u32 {
        self.flags
    }
    fn for_each_event(&self, f: &mut dyn FnMut(&[u8], u64)) {
        for e in &self.events {
            f(e.name.as_bytes(), e.time_unix_nano);
        }
    }
}

impl<'a> SpanLike for SpanView<'a> {
    type Attrs = KeyValues<'a>;
    fn kind(&self) -> i32 {
        SpanView::kind(self)
    }
    fn name(&self) -> &[u8] {
        SpanView::name(self)
    }
    fn start(&self) -> u64 {
        self.start_time_unix_nano()
    }
    fn end(&self) -> u64 {
        self.end_time_unix_nano()
    }
    fn attributes(&self) -> &KeyValues<'a> {
        SpanView::attributes(self)
    }
    fn first_event(&self, names: &[String]) -> Option<u64> {
        self.events()
            .filter(|(name, _)| names.iter().any(|n| same_bytes(n.as_bytes(), name)))
            .map(|(_, time)| time)
            .min()
    }
    fn status_is_error(&self) -> bool {
        self.status_code() == OtlpStatus::Error as i32
    }
    fn trace_state(&self) -> &str {
        SpanView::trace_state(self)
    }
    fn trace_id(&self) -> &[u8] {
        SpanView::trace_id(self)
    }
    fn span_id(&self) -> &[u8] {
        SpanView::span_id(self)
    }
    fn parent_span_id(&self) -> &[u8] {
        SpanView::parent_span_id(self)
    }
    fn flags(&self) -> u32 {
        SpanView::flags(self)
    }
    fn for_each_event(&self, f: &mut dyn FnMut(&[u8], u64)) {
        for (name, time) in self.events() {
            f(name, time);
        }
    }
}

/// A borrowed span reads as the span itself (the owned types are iterated by reference).
impl<S: SpanLike + ?Sized> SpanLike for &S {
    type Attrs = S::Attrs;
    fn kind(&self) -> i32 {
        (**self).kind()
    }
    fn name(&self) -> &[u8] {
        (**self).name()
    }
    fn start(&self) -> u64 {
        (**self).start()
    }
    fn end(&self) -> u64 {
        (**self).end()
    }
    fn attributes(&self) -> &S::Attrs {
        (**self).attributes()
    }
    fn first_event(&self, names: &[String]) -> Option<u64> {
        (**self).first_event(names)
    }
    fn status_is_error(&self) -> bool {
        (**self).status_is_error()
    }
    fn trace_state(&self) -> &str {
        (**self).trace_state()
    }
    fn trace_id(&self) -> &[u8] {
        (**self).trace_id()
    }
    fn span_id(&self) -> &[u8] {
        (**self).span_id()
    }
    fn parent_span_id(&self) -> &[u8] {
        (**self).parent_span_id()
    }
    fn flags(&self) -> u32 {
        (**self).flags()
    }
    fn for_each_event(&self, f: &mut dyn FnMut(&[u8], u64)) {
        (**self).for_each_event(f)
    }
}

use super::config::SpanRules;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Grpc,
    Websocket,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Websocket => "websocket",
        }
    }
}

/// `1xx` .. `5xx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusClass(u8);

impl StatusClass {
    pub const OK: StatusClass = StatusClass(2);
    pub const CLIENT_ERROR: StatusClass = StatusClass(4);
    pub const SERVER_ERROR: StatusClass = StatusClass(5);

    /// The class of an HTTP status code, when it is one (100..=599).
    pub fn of_http(code: i64) -> Option<StatusClass> {
        (100..=599).contains(&code).then_some(StatusClass((code / 100) as u8))
    }

    pub fn as_str(self) -> &'static str {
        ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"][self.0 as usize]
    }
}

/// A status code as the `status_code` label shows it; kept without allocating (a series key is built per span).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// An HTTP status or a WebSocket close code.
    Number(i64),
    /// A gRPC code's name.
    Name(&'static str),
    Unset,
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Code::Number(n) => write!(f, "{n}"),
            Code::Name(name) => f.write_str(name),
            Code::Unset => f.write_str("unset"),
        }
    }
}

/// A request's status: protocol, the code (the `status_code` label), and its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status {
    pub protocol: Protocol,
    pub code: Code,
    pub class: StatusClass,
}

/// Why a value from a span was not used; counted in the collector's own telemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    EndBeforeStart,
    InvalidStatusCode,
    InvalidSize,
    InvalidTokens,
    InvalidTimeToFirstByte,
    /// A span longer than `MAX_PLAUSIBLE_DURATION_NS` (an end time of u64::MAX, a clock gone wrong).
    ImplausibleDuration,
    /// A dimension value cut to `max_label_value_length`.
    LabelTruncated,
    /// A stage span (inference, tokens, first byte) whose request never came within `spans.orphan_wait`.
    OrphanSpan,
    InvalidQueueTime,
}

/// No request, inference or queue wait is believed to last longer than a day; longer spans are clock errors.
pub const MAX_PLAUSIBLE_DURATION_NS: u64 = 24 * 3600 * 1_000_000_000;

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::EndBeforeStart => "end_before_start",
            Rejection::InvalidStatusCode => "invalid_status_code",
            Rejection::InvalidSize => "invalid_size",
            Rejection::InvalidTokens => "invalid_tokens",
            Rejection::InvalidTimeToFirstByte => "invalid_time_to_first_byte",
            Rejection::ImplausibleDuration => "implausible_duration",
            Rejection::LabelTruncated => "label_truncated",
            Rejection::OrphanSpan => "orphan_span",
            Rejection::InvalidQueueTime => "invalid_queue_time",
        }
    }
}

/// What a request span contributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub status: Status,
    /// End-to-end seconds; `None` when the span's times are invalid.
    pub duration: Option<f64>,
    pub time_to_first_byte: Option<f64>,
    pub request_size: Option<f64>,
    pub response_size: Option<f64>,
    pub input_tokens: Option<f64>,
    pub output_tokens: Option<f64>,
    /// Seconds waited inside the server (`queue_duration_attributes`).
    pub queue: Option<f64>,
    /// The time to first byte is the duration because nothing marked the first byte.
    pub first_byte_fell_back: bool,
}

const GRPC_CODES: [(&str, i64); 17] = [
    ("OK", 200),
    ("CANCELLED", 499),
    ("UNKNOWN", 500),
    ("INVALID_ARGUMENT", 400),
    ("DEADLINE_EXCEEDED", 504),
    ("NOT_FOUND", 404),
    ("ALREADY_EXISTS", 409),
    ("PERMISSION_DENIED", 403),
    ("RESOURCE_EXHAUSTED", 429),
    ("FAILED_PRECONDITION", 400),
    ("ABORTED", 409),
    ("OUT_OF_RANGE", 400),
    ("UNIMPLEMENTED", 501),
    ("INTERNAL", 500),
    ("UNAVAILABLE", 503),
    ("DATA_LOSS", 500),
    ("UNAUTHENTICATED", 401),
];

/// A gRPC status (integer, integer as text, or name such as `UNAVAILABLE` / `StatusCode.UNAVAILABLE`) as
/// (name, HTTP equivalent).
pub fn grpc_status<'a>(value: impl Into<Val<'a>>) -> Option<(&'static str, i64)> {
    let code = match value.into() {
        Val::Int(i) => i,
        Val::Str(s) => {
            let s = s.trim();
            match s.parse::<i64>() {
                Ok(i) => i,
                Err(_) => {
                    let name = s.rsplit('.').next().unwrap_or(s).to_ascii_uppercase();
                    return GRPC_CODES.iter().find(|(n, _)| *n == name).copied();
                }
            }
        }
        _ => return None,
    };
    usize::try_from(code).ok().and_then(|i| GRPC_CODES.get(i)).copied()
}

/// The class of a WebSocket close code, for the codes the contract names.
pub fn websocket_class(code: i64) -> Option<StatusClass> {
    match code {
        1000 | 1001 => Some(StatusClass::OK),
        1002 | 1003 | 1007 | 1008 | 1009 | 1010 => Some(StatusClass::CLIENT_ERROR),
        1006 | 1011..=1014 => Some(StatusClass::SERVER_ERROR),
        _ => None,
    }
}

/// The value of the first attribute of `keys` (in that order) that the span carries; `None` when that attribute
/// carries no value.
pub fn find<'a, A: Attributes + ?Sized>(attributes: &'a A, keys: &[String]) -> Option<Val<'a>> {
    keys.iter().find_map(|k| attributes.attribute(k)).flatten()
}

/// `find` for keys written in the code (the profiles').
pub fn find_key<'a, A: Attributes + ?Sized>(attributes: &'a A, keys: &[&str]) -> Option<Val<'a>> {
    keys.iter().find_map(|k| attributes.attribute(k)).flatten()
}

/// A number from an int, a double, or a numeric string.
pub fn number(value: Val<'_>) -> Option<f64> {
    match value {
        Val::Int(i) => Some(i as f64),
        Val::Double(d) => Some(d),
        Val::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

/// Seconds from a number (taken as seconds) or a duration string with units: `116.988991ms`, `211.405µs`, `1.5s`,
/// `1m2.5s`, `100ns` (Rust's `Duration` Debug form, as TGI records it, and Go's `time.Duration` form). Written by
/// hand: the duration crates at hand parse neither fractional values nor the `µs` of Rust's Debug output.
pub fn seconds(value: Val<'_>) -> Option<f64> {
    match value {
        Val::Str(s) => duration_text(s.trim()),
        other => number(other),
    }
}

fn duration_text(s: &str) -> Option<f64> {
    if let Ok(v) = s.parse::<f64>() {
        return Some(v);
    }
    let (mut total, mut rest) = (0.0, s);
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// An integer from an int, an integral double, or an integer string.
fn integer(value: Val<'_>) -> Option<i64> {
    match value {
        Val::Int(i) => Some(i),
        Val::Double(d) if d.fract() == 0.0 && d.is_finite() => Some(d as i64),
        Val::Str(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

fn text(value: Val<'_>) -> Option<&str> {
    match value {
        Val::Str(s) => Some(s),
        _ => None,
    }
}

/// A non-negative finite quantity (size, tokens, seconds), or the rejection.
fn quantity(value: Option<Val<'_>>, why: Rejection, rejected: &mut Vec<Rejection>) -> Option<f64> {
    match number(value?) {
        Some(v) if v.is_finite() && v >= 0.0 => Some(v),
        _ => {
            rejected.push(why);
            None
        }
    }
}

pub struct Classifier {
    rules: SpanRules,
    request_kinds: Vec<i32>,
    request_keys: RequestKeys,
}

impl Classifier {
    pub fn new(rules: SpanRules) -> Classifier {
        let request_kinds = rules.request_span_kinds.iter().map(|k| k.otlp()).collect();
        Classifier {
            request_keys: RequestKeys::new(&rules),
            rules,
            request_kinds,
        }
    }

    pub fn is_request(&self, span: &impl SpanLike) -> bool {
        self.request_kinds.contains(&span.kind())
    }

    /// Whether the span's duration is inference time.
    pub fn is_inference<S: SpanLike>(&self, span: &S) -> bool {
        self.rules
            .inference_span_names
            .iter()
            .any(|n| same_bytes(n.as_bytes(), span.name()))
            || find(span.attributes(), &self.rules.inference_span_attributes).is_some()
    }

    pub fn is_async_queue(&self, span: &impl SpanLike) -> bool {
        self.rules
            .async_queue_span_names
            .iter()
            .any(|n| same_bytes(n.as_bytes(), span.name()))
    }

    pub fn is_async_enqueue(&self, span: &impl SpanLike) -> bool {
        self.rules
            .async_enqueue_span_names
            .iter()
            .any(|n| same_bytes(n.as_bytes(), span.name()))
    }

    pub fn is_model_load(&self, span: &impl SpanLike) -> bool {
        span.end() > 0
            && self
                .rules
                .model_load_span_names
                .iter()
                .any(|n| same_bytes(n.as_bytes(), span.name()))
    }

    /// The message id tying an enqueue to its queue span.
    pub fn message_id<S: SpanLike>(&self, span: &S) -> Option<String> {
        match find(span.attributes(), &self.rules.message_id_attributes)? {
            Val::Str(s) if !s.is_empty() => Some(s.to_string()),
            Val::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// The span's duration in seconds, or the rejection when it ends before it starts (or has no times) or lasts
    /// longer than a day.
    pub fn duration(span: &impl SpanLike, rejected: &mut Vec<Rejection>) -> Option<f64> {
        if span.start() == 0 || span.end() < span.start() {
            rejected.push(Rejection::EndBeforeStart);
            return None;
        }
        let nanos = span.end() - span.start();
        if nanos > MAX_PLAUSIBLE_DURATION_NS {
            rejected.push(Rejection::ImplausibleDuration);
            return None;
        }
        Some(nanos as f64 / 1e9)
    }

    pub fn status<S: SpanLike>(&self, span: &S, rejected: &mut Vec<Rejection>) -> Status {
        self.status_of(span, &self.request_keys.read(span.attributes()), rejected)
    }

    fn status_of<S: SpanLike>(&self, span: &S, found: &Found<'_, S::Attrs>, rejected: &mut Vec<Rejection>) -> Status {
        let grpc_code = found.get(List::GrpcStatus);
        let is_grpc = grpc_code.is_some()
            || found
                .get(List::RpcSystem)
                .and_then(text)
                .is_some_and(|s| s.eq_ignore_ascii_case("grpc"));
        let websocket = found.get(List::WebsocketClose);
        let (protocol, coded) = if is_grpc {
            let coded =
                grpc_code.map(|v| grpc_status(v).map(|(name, http)| (Code::Name(name), StatusClass::of_http(http))));
            (Protocol::Grpc, coded)
        } else if let Some(v) = websocket {
            let coded = Some(integer(v).map(|c| (Code::Number(c), websocket_class(c))));
            (Protocol::Websocket, coded)
        } else {
            let coded = found
                .get(List::HttpStatus)
                .map(|v| integer(v).and_then(|c| StatusClass::of_http(c).map(|k| (Code::Number(c), Some(k)))));
            (Protocol::Http, coded)
        };
        match coded {
            Some(Some((code, Some(class)))) => Status { protocol, code, class },
            // A close code the contract does not classify: the code is kept, the class follows the span.
            Some(Some((code, None))) => Status {
                protocol,
                code,
                class: self.class_without_code(span),
            },
            Some(None) => {
                rejected.push(Rejection::InvalidStatusCode);
                Status {
                    protocol,
                    code: Code::Unset,
                    class: self.class_without_code(span),
                }
            }
            None => Status {
                protocol,
                code: Code::Unset,
                class: self.class_without_code(span),
            },
        }
    }

    /// Without a status code: an ERROR status or an exception event is a server error (a prediction exception).
    fn class_without_code(&self, span: &impl SpanLike) -> StatusClass {
        let error = span.status_is_error() || span.first_event(&self.rules.exception_event_names).is_some();
        if error {
            StatusClass::SERVER_ERROR
        } else {
            StatusClass::OK
        }
    }

    pub fn request<S: SpanLike>(&self, span: &S, rejected: &mut Vec<Rejection>) -> Request {
        let rules = &self.rules;
        let found = self.request_keys.read(span.attributes());
        let status = self.status_of(span, &found, rejected);
        let duration = Self::duration(span, rejected);
        let from_event = span.first_event(&rules.first_byte_event_names);
        let mut first_byte_fell_back = false;
        let time_to_first_byte = match from_event {
            Some(t) if duration.is_some() && t >= span.start() => Some((t - span.start()) as f64 / 1e9),
            Some(_) => {
                rejected.push(Rejection::InvalidTimeToFirstByte);
                None
            }
            None => {
                let given = found.get(List::TimeToFirstToken);
                match quantity(given, Rejection::InvalidTimeToFirstByte, rejected) {
                    Some(v) => Some(v),
                    None if given.is_none() && rules.time_to_first_byte_falls_back_to_duration => {
                        first_byte_fell_back = true;
                        duration
                    }
                    None => None,
                }
            }
        };
        Request {
            status,
            duration,
            time_to_first_byte,
            request_size: quantity(found.get(List::RequestSize), Rejection::InvalidSize, rejected),
            response_size: quantity(found.get(List::ResponseSize), Rejection::InvalidSize, rejected),
            input_tokens: quantity(found.get(List::InputTokens), Rejection::InvalidTokens, rejected),
            output_tokens: quantity(found.get(List::OutputTokens), Rejection::InvalidTokens, rejected),
            queue: found.get(List::QueueDuration).and_then(|v| match seconds(v) {
                Some(s) if s.is_finite() && s >= 0.0 => Some(s),
                _ => {
                    rejected.push(Rejection::InvalidQueueTime);
                    None
                }
            }),
            first_byte_fell_back,
        }
    }
}

/// The adjusted count of a sampled span: 1 / (sampling probability) from the OpenTelemetry threshold in its W3C
/// tracestate (`ot=th:HEX`, the rejection threshold in 56 bits); 1 when there is none or it cannot be read.
pub fn adjusted_count(trace_state: &str) -> f64 {
    if trace_state.is_empty() {
        return 1.0;
    }
    let Some(ot) = trace_state
        .split(',')
        .map(str::trim)
        .find_map(|member| member.strip_prefix("ot="))
    else {
        return 1.0;
    };
    let Some(th) = ot.split(';').find_map(|kv| kv.strip_prefix("th:")) else {
        return 1.0;
    };
    if th.is_empty() || th.len() > 14 || !th.chars().all(|c| c.is_ascii_hexdigit()) {
        return 1.0;
    }
    // Trailing zeros are omitted: pad to 14 hex digits (56 bits).
    let Ok(threshold) = u64::from_str_radix(&format!("{th:0<14}"), 16) else {
        return 1.0;
    };
    let probability = ((1u64 << 56) - threshold) as f64 / (1u64 << 56) as f64;
    if probability <= 0.0 { 1.0 } else { 1.0 / probability }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Status as SpanStatus;
    use opentelemetry_proto::tonic::trace::v1::span::Event;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }
    fn int(key: &str, v: i64) -> KeyValue {
        kv(key, Value::IntValue(v))
    }
    fn string(key: &str, v: &str) -> KeyValue {
        kv(key, Value::StringValue(v.into()))
    }
    fn double(key: &str, v: f64) -> KeyValue {
        kv(key, Value::DoubleValue(v))
    }

    fn span(attributes: Vec<KeyValue>) -> Span {
        Span {
            name: "POST /predict".into(),
            kind: 2,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_250_000_000,
            attributes,
            ..Default::default()
        }
    }

    fn classify(s: &Span) -> (Request, Vec<Rejection>) {
        let mut rejected = Vec::new();
        let r = Classifier::new(SpanRules::default()).request(s, &mut rejected);
        (r, rejected)
    }

    fn status(attributes: Vec<KeyValue>) -> (String, String, String) {
        let (r, _) = classify(&span(attributes));
        (
            r.status.protocol.as_str().into(),
            r.status.code.to_string(),
            r.status.class.as_str().into(),
        )
    }

    fn st(p: &str, c: &str, k: &str) -> (String, String, String) {
        (p.into(), c.into(), k.into())
    }

    #[test]
    fn http_status_stable_then_legacy_attribute() {
        assert_eq!(
            status(vec![int("http.response.status_code", 200)]),
            st("http", "200", "2xx")
        );
        assert_eq!(status(vec![int("http.status_code", 404)]), st("http", "404", "4xx"));
        assert_eq!(
            status(vec![
                int("http.status_code", 200),
                int("http.response.status_code", 503)
            ]),
            st("http", "503", "5xx"),
            "the stable attribute wins"
        );
        assert_eq!(
            status(vec![string("http.response.status_code", "302")]),
            st("http", "302", "3xx")
        );
        assert_eq!(
            status(vec![int("http.response.status_code", 101)]),
            st("http", "101", "1xx")
        );
    }

    #[test]
    fn grpc_status_int_and_name_forms() {
        assert_eq!(status(vec![int("rpc.grpc.status_code", 0)]), st("grpc", "OK", "2xx"));
        assert_eq!(
            status(vec![int("rpc.grpc.status_code", 14)]),
            st("grpc", "UNAVAILABLE", "5xx")
        );
        assert_eq!(
            status(vec![string("rpc.status_code", "DEADLINE_EXCEEDED")]),
            st("grpc", "DEADLINE_EXCEEDED", "5xx")
        );
        assert_eq!(
            status(vec![string("rpc.status_code", "StatusCode.NOT_FOUND")]),
            st("grpc", "NOT_FOUND", "4xx")
        );
        assert_eq!(
            status(vec![string("rpc.status_code", "8")]),
            st("grpc", "RESOURCE_EXHAUSTED", "4xx")
        );
        assert_eq!(
            status(vec![int("rpc.grpc.status_code", 1)]),
            st("grpc", "CANCELLED", "4xx")
        );
        assert_eq!(
            status(vec![int("rpc.grpc.status_code", 12)]),
            st("grpc", "UNIMPLEMENTED", "5xx")
        );
        assert_eq!(
            status(vec![int("rpc.grpc.status_code", 16)]),
            st("grpc", "UNAUTHENTICATED", "4xx")
        );
        // rpc.system alone makes it gRPC; without a code the span status decides.
        assert_eq!(status(vec![string("rpc.system", "grpc")]), st("grpc", "unset", "2xx"));
        assert_eq!(
            status(vec![string("rpc.system.name", "grpc")]),
            st("grpc", "unset", "2xx")
        );
    }

    #[test]
    fn every_grpc_code_maps_as_the_contract_says() {
        let want = [
            200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401,
        ];
        for (code, http) in want.iter().enumerate() {
            let v = AnyValue {
                value: Some(Value::IntValue(code as i64)),
            };
            assert_eq!(grpc_status(&v).unwrap().1, *http, "code {code}");
        }
    }

    #[test]
    fn websocket_close_codes() {
        for (code, class) in [
            (1000, "2xx"),
            (1001, "2xx"),
            (1002, "4xx"),
            (1003, "4xx"),
            (1007, "4xx"),
            (1008, "4xx"),
            (1009, "4xx"),
            (1010, "4xx"),
            (1006, "5xx"),
            (1011, "5xx"),
            (1012, "5xx"),
            (1013, "5xx"),
            (1014, "5xx"),
        ] {
            assert_eq!(
                status(vec![int("websocket.close_code", code)]),
                st("websocket", &code.to_string(), class)
            );
        }
    }

    #[test]
    fn prediction_exceptions_without_a_code_are_5xx() {
        let mut s = span(vec![]);
        s.status = Some(SpanStatus {
            code: 2,
            message: "boom".into(),
        });
        assert_eq!(classify(&s).0.status.class.as_str(), "5xx");
        assert_eq!(classify(&s).0.status.code, Code::Unset);
        let mut s = span(vec![]);
        s.events.push(Event {
            name: "exception".into(),
            time_unix_nano: 1_100_000_000,
            ..Default::default()
        });
        assert_eq!(classify(&s).0.status.class.as_str(), "5xx");
        assert_eq!(
            classify(&span(vec![])).0.status.class.as_str(),
            "2xx",
            "no code, no error: success"
        );
        // With a code, the code decides.
        let mut s = span(vec![int("http.response.status_code", 200)]);
        s.status = Some(SpanStatus {
            code: 2,
            message: String::new(),
        });
        assert_eq!(classify(&s).0.status.class.as_str(), "2xx");
    }

    #[test]
    fn non_numeric_or_impossible_status_codes_are_rejected_and_counted() {
        let (r, rejected) = classify(&span(vec![string("http.response.status_code", "teapot")]));
        assert_eq!(
            (r.status.code.to_string().as_str(), r.status.class.as_str()),
            ("unset", "2xx")
        );
        assert_eq!(rejected, vec![Rejection::InvalidStatusCode]);
        let (_, rejected) = classify(&span(vec![int("http.response.status_code", 999)]));
        assert_eq!(rejected, vec![Rejection::InvalidStatusCode]);
        let (_, rejected) = classify(&span(vec![int("rpc.grpc.status_code", 42)]));
        assert_eq!(rejected, vec![Rejection::InvalidStatusCode]);
    }

    #[test]
    fn times_and_time_to_first_byte_fallbacks() {
        let (r, _) = classify(&span(vec![]));
        assert_eq!(r.duration, Some(0.25));
        assert_eq!(r.time_to_first_byte, Some(0.25), "falls back to the end-to-end time");
        let mut s = span(vec![double("gen_ai.latency.time_to_first_token", 0.04)]);
        assert_eq!(
            classify(&s).0.time_to_first_byte,
            Some(0.04),
            "vLLM's attribute, seconds"
        );
        s.events.push(Event {
            name: "first_token".into(),
            time_unix_nano: 1_030_000_000,
            ..Default::default()
        });
        s.events.push(Event {
            name: "gen_ai.first_token".into(),
            time_unix_nano: 1_020_000_000,
            ..Default::default()
        });
        assert_eq!(
            classify(&s).0.time_to_first_byte,
            Some(0.02),
            "the first event wins over the attribute"
        );
        let (r, rejected) = classify(&span(vec![string("gen_ai.latency.time_to_first_token", "soon")]));
        assert_eq!(r.time_to_first_byte, None);
        assert_eq!(rejected, vec![Rejection::InvalidTimeToFirstByte]);
    }

    #[test]
    fn a_span_ending_at_u64_max_is_no_request_of_half_a_millennium() {
        let mut s = span(vec![int("http.response.status_code", 200)]);
        s.end_time_unix_nano = u64::MAX;
        let (r, rejected) = classify(&s);
        assert_eq!(r.duration, None);
        assert_eq!(r.status.class.as_str(), "2xx", "still a request");
        assert!(rejected.contains(&Rejection::ImplausibleDuration), "{rejected:?}");
        s.end_time_unix_nano = s.start_time_unix_nano + MAX_PLAUSIBLE_DURATION_NS;
        let (r, _) = classify(&s);
        assert_eq!(r.duration, Some(86_400.0), "a day is still believed");
    }

    #[test]
    fn end_before_start_is_rejected() {
        let mut s = span(vec![int("http.response.status_code", 200)]);
        s.end_time_unix_nano = 500;
        let (r, rejected) = classify(&s);
        assert_eq!(r.duration, None);
        assert_eq!(r.time_to_first_byte, None);
        assert_eq!(r.status.class.as_str(), "2xx", "still a request");
        assert_eq!(rejected, vec![Rejection::EndBeforeStart]);
    }

    #[test]
    fn sizes_and_tokens_with_fallbacks_and_bad_values() {
        let (r, rejected) = classify(&span(vec![
            int("http.request_content_length", 100),
            int("http.request.body.size", 2048),
            string("http.response_content_length", "77"),
            int("gen_ai.usage.prompt_tokens", 12),
            int("gen_ai.usage.completion_tokens", 40),
            int("gen_ai.usage.output_tokens", 41),
        ]));
        assert!(rejected.is_empty());
        assert_eq!(r.request_size, Some(2048.0), "stable attribute first");
        assert_eq!(r.response_size, Some(77.0));
        assert_eq!(r.input_tokens, Some(12.0), "deprecated name as fallback");
        assert_eq!(r.output_tokens, Some(41.0));
        let (r, rejected) = classify(&span(vec![
            double("http.request.body.size", f64::NAN),
            int("http.response.body.size", -5),
            string("gen_ai.usage.input_tokens", "many"),
        ]));
        assert_eq!((r.request_size, r.response_size, r.input_tokens), (None, None, None));
        assert_eq!(
            rejected,
            vec![Rejection::InvalidSize, Rejection::InvalidSize, Rejection::InvalidTokens]
        );
    }

    #[test]
    fn request_and_inference_spans() {
        let c = Classifier::new(SpanRules::default());
        let mut s = span(vec![]);
        assert!(c.is_request(&s));
        s.kind = 1;
        assert!(!c.is_request(&s));
        s.name = "predict".into();
        assert!(c.is_inference(&s));
        s.name = "chat".into();
        assert!(!c.is_inference(&s));
        s.attributes.push(string("gen_ai.operation.name", "chat"));
        assert!(c.is_inference(&s));
    }

    #[test]
    fn sampling_threshold_gives_the_adjusted_count() {
        assert_eq!(adjusted_count(""), 1.0);
        assert_eq!(adjusted_count("ot=th:0"), 1.0);
        assert_eq!(adjusted_count("vendor=x,ot=th:8"), 2.0, "th:8 rejects half");
        assert_eq!(adjusted_count("ot=rv:abcdef12345678;th:c"), 4.0, "th:c keeps a quarter");
        assert!((adjusted_count("ot=th:fd70a4") - 100.0).abs() < 0.01, "1% sampling");
        assert_eq!(adjusted_count("ot=th:zz"), 1.0, "unreadable: counted once");
    }
}

#[cfg(test)]
mod duration_text_tests {
    use super::{Val, seconds};

    #[test]
    fn duration_strings_in_every_unit() {
        let cases = [
            ("116.988991ms", 0.116988991),
            ("211.405µs", 0.000211405),
            ("211.405μs", 0.000211405),
            ("12us", 0.000012),
            ("100ns", 0.0000001),
            ("1.5s", 1.5),
            ("1m2.5s", 62.5),
            ("1h2m3s", 3723.0),
            ("0.25", 0.25),
        ];
        for (text, want) in cases {
            let got = seconds(Val::Str(text)).unwrap_or_else(|| panic!("{text} parses"));
            assert!((got - want).abs() < 1e-12, "{text}: {got} != {want}");
        }
        assert_eq!(seconds(Val::Double(0.5)), Some(0.5));
        assert_eq!(seconds(Val::Int(2)), Some(2.0));
        for bad in ["", "ms", "1.5 parsecs", "1.2.3s", "-"] {
            assert_eq!(seconds(Val::Str(bad)), None, "{bad}");
        }
    }
}
