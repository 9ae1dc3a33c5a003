//! A borrowed view of an OTLP trace export request: the same messages, fields and tags as
//! `opentelemetry-proto`'s generated types, decoded by the same prost machinery, but every string and bytes field
//! is a `Bytes` slice of the received buffer instead of a fresh `String` / `Vec<u8>`. Decoding a 1,000-span request
//! this way allocates the message lists only, not every name, key and value.
//!
//! Written by hand because the generated types fix `String`; prost's derive is the well-kept part that does the
//! wire format, unknown fields and the recursion limit exactly as for the owned types. What prost checks on top
//! for a `string` field is UTF-8, on every occurrence of the field; the view keeps the last occurrence only. So
//! `decode_exact` takes the view only when it provably holds all the request did: it decodes, its strings are UTF-8,
//! and it encodes back to exactly as many bytes as arrived (nothing overwritten, unknown or default-valued was
//! dropped: a re-encoding is never longer than the original). Then the owned types would decode the same request
//! to the same content; otherwise the caller decodes with the owned types, with prost's own answer. Requests from
//! the OpenTelemetry SDKs take the view (they encode each field once, defaults left out). Asserted on mutated
//! requests in the tests.

use bytes::Bytes;
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct LiteTraces {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<LiteResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<LiteResource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<LiteScopeSpans>,
    #[prost(bytes = "bytes", tag = "3")]
    pub schema_url: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteResource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<LiteKeyValue>,
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
    #[prost(message, repeated, tag = "3")]
    pub entity_refs: Vec<LiteEntityRef>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteEntityRef {
    #[prost(bytes = "bytes", tag = "1")]
    pub schema_url: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub r#type: Bytes,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub id_keys: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub description_keys: Vec<Bytes>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<LiteScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<LiteSpan>,
    #[prost(bytes = "bytes", tag = "3")]
    pub schema_url: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteScope {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub version: Bytes,
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<LiteKeyValue>,
    #[prost(uint32, tag = "4")]
    pub dropped_attributes_count: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteSpan {
    #[prost(bytes = "bytes", tag = "1")]
    pub trace_id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub span_id: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub trace_state: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    pub parent_span_id: Bytes,
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
    #[prost(bytes = "bytes", tag = "5")]
    pub name: Bytes,
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<LiteKeyValue>,
    #[prost(uint32, tag = "10")]
    pub dropped_attributes_count: u32,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<LiteEvent>,
    #[prost(uint32, tag = "12")]
    pub dropped_events_count: u32,
    #[prost(message, repeated, tag = "13")]
    pub links: Vec<LiteLink>,
    #[prost(uint32, tag = "14")]
    pub dropped_links_count: u32,
    #[prost(message, optional, tag = "15")]
    pub status: Option<LiteStatus>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteEvent {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub name: Bytes,
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<LiteKeyValue>,
    #[prost(uint32, tag = "4")]
    pub dropped_attributes_count: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteLink {
    #[prost(bytes = "bytes", tag = "1")]
    pub trace_id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub span_id: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub trace_state: Bytes,
    #[prost(message, repeated, tag = "4")]
    pub attributes: Vec<LiteKeyValue>,
    #[prost(uint32, tag = "5")]
    pub dropped_attributes_count: u32,
    #[prost(fixed32, tag = "6")]
    pub flags: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteStatus {
    #[prost(bytes = "bytes", tag = "2")]
    pub message: Bytes,
    #[prost(int32, tag = "3")]
    pub code: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteKeyValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(message, optional, tag = "2")]
    pub value: Option<LiteAnyValue>,
    #[prost(int32, tag = "3")]
    pub key_strindex: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteAnyValue {
    #[prost(oneof = "LiteValue", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub value: Option<LiteValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum LiteValue {
    #[prost(bytes = "bytes", tag = "1")]
    StringValue(Bytes),
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    #[prost(int64, tag = "3")]
    IntValue(i64),
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    #[prost(message, tag = "5")]
    ArrayValue(LiteArrayValue),
    #[prost(message, tag = "6")]
    KvlistValue(LiteKeyValueList),
    #[prost(bytes = "bytes", tag = "7")]
    BytesValue(Bytes),
    #[prost(int32, tag = "8")]
    StringValueStrindex(i32),
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<LiteAnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LiteKeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<LiteKeyValue>,
}

fn utf8(b: &Bytes) -> bool {
    std::str::from_utf8(b).is_ok()
}

fn kvs_utf8(kvs: &[LiteKeyValue]) -> bool {
    kvs.iter()
        .all(|kv| utf8(&kv.key) && kv.value.as_ref().is_none_or(any_utf8))
}

fn any_utf8(v: &LiteAnyValue) -> bool {
    match &v.value {
        Some(LiteValue::StringValue(s)) => utf8(s),
        Some(LiteValue::ArrayValue(a)) => a.values.iter().all(any_utf8),
        Some(LiteValue::KvlistValue(l)) => kvs_utf8(&l.values),
        _ => true,
    }
}

/// Whether every field the owned types declare as `string` is UTF-8.
fn strings_are_utf8(request: &LiteTraces) -> bool {
    request.resource_spans.iter().all(|rs| {
        utf8(&rs.schema_url)
            && rs.resource.as_ref().is_none_or(|r| {
                kvs_utf8(&r.attributes)
                    && r.entity_refs.iter().all(|e| {
                        utf8(&e.schema_url) && utf8(&e.r#type) && e.id_keys.iter().chain(&e.description_keys).all(utf8)
                    })
            })
            && rs.scope_spans.iter().all(|ss| {
                utf8(&ss.schema_url)
                    && ss
                        .scope
                        .as_ref()
                        .is_none_or(|sc| utf8(&sc.name) && utf8(&sc.version) && kvs_utf8(&sc.attributes))
                    && ss.spans.iter().all(|span| {
                        utf8(&span.trace_state)
                            && utf8(&span.name)
                            && kvs_utf8(&span.attributes)
                            && span.events.iter().all(|e| utf8(&e.name) && kvs_utf8(&e.attributes))
                            && span
                                .links
                                .iter()
                                .all(|l| utf8(&l.trace_state) && kvs_utf8(&l.attributes))
                            && span.status.as_ref().is_none_or(|st| utf8(&st.message))
                    })
            })
    })
}

/// The view of `bytes`, when it holds everything the request holds (see the module's documentation); `None`
/// sends the caller to the owned types.
pub fn decode_exact(bytes: Bytes) -> Option<LiteTraces> {
    let len = bytes.len();
    let request = LiteTraces::decode(bytes).ok()?;
    (request.encoded_len() == len && strings_are_utf8(&request)).then_some(request)
}

/// A string field's text (checked UTF-8 at decoding; an empty string otherwise).
pub fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

/// The owned form of attributes (for code that takes the generated types, such as the replica directory).
pub fn owned_attributes(kvs: &[LiteKeyValue]) -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
    kvs.iter()
        .map(|kv| {
            let mut buf = Vec::new();
            // Re-encoding one small message and decoding it as the owned type keeps one definition of the
            // conversion: the wire format. Attributes here are a resource's handful.
            kv.encode(&mut buf).expect("a Vec grows as needed");
            opentelemetry_proto::tonic::common::v1::KeyValue::decode(buf.as_slice()).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Event};

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn sample() -> ExportTraceServiceRequest {
        let nested = Value::KvlistValue(opentelemetry_proto::tonic::common::v1::KeyValueList {
            values: vec![kv(
                "inner",
                Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::StringValue("déjà vu".into())),
                    }],
                }),
            )],
        });
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::StringValue("m".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        name: "POST /predict".into(),
                        kind: 2,
                        start_time_unix_nano: 5,
                        end_time_unix_nano: 9,
                        trace_state: "ot=th:8".into(),
                        attributes: vec![
                            kv("http.response.status_code", Value::IntValue(200)),
                            kv("x", Value::DoubleValue(1.5)),
                            kv("b", Value::BoolValue(true)),
                            kv("n", nested),
                            kv("raw", Value::BytesValue(vec![0xff, 0xfe])),
                        ],
                        events: vec![Event {
                            name: "first_token".into(),
                            time_unix_nano: 7,
                            ..Default::default()
                        }],
                        status: Some(Status {
                            message: "ok".into(),
                            code: 1,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn the_view_holds_what_the_owned_types_hold() {
        let bytes = Bytes::from(sample().encode_to_vec());
        let lite = decode_exact(bytes.clone()).unwrap();
        let span = &lite.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(text(&span.name), "POST /predict");
        assert_eq!(span.kind, 2);
        assert_eq!(text(&span.trace_state), "ot=th:8");
        assert_eq!(text(&span.events[0].name), "first_token");
        assert_eq!(
            span.attributes[0].value.as_ref().unwrap().value,
            Some(LiteValue::IntValue(200))
        );
        // The same bytes again: nothing lost on the way.
        assert_eq!(lite.encode_to_vec(), bytes.to_vec());
        assert_eq!(
            owned_attributes(&lite.resource_spans[0].resource.as_ref().unwrap().attributes),
            sample().resource_spans[0].resource.as_ref().unwrap().attributes
        );
    }

    /// Every mutation of a valid request (bytes flipped, cut, inserted) that the view takes, the owned types take
    /// too, with the same content; and the view takes most of what the owned types take.
    #[test]
    fn accepts_exactly_what_the_owned_types_accept() {
        let valid = sample().encode_to_vec();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut viewed, mut owned_only) = (0, 0);
        for _ in 0..200_000 {
            let mut b = valid.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % b.len();
                match next() % 4 {
                    0 => b[i] = next() as u8,
                    1 => b[i] ^= 1 << (next() % 8),
                    2 => b.truncate(i),
                    _ => b.insert(i, next() as u8),
                }
                if b.is_empty() {
                    break;
                }
            }
            let owned = ExportTraceServiceRequest::decode(b.as_slice());
            let lite = decode_exact(Bytes::from(b.clone()));
            match (&owned, lite) {
                (Ok(o), Some(l)) => {
                    assert_eq!(o.encode_to_vec(), l.encode_to_vec(), "the same content");
                    viewed += 1;
                }
                (Ok(_), None) => owned_only += 1,
                (Err(e), Some(l)) => panic!("{b:?}: the view took {l:?}, the owned types refused: {e}"),
                (Err(_), None) => {}
            }
        }
        assert!(
            viewed > 5_000,
            "{viewed} taken by the view, {owned_only} by the owned types only"
        );
    }
}
