//! OTLP protobuf as the receivers decode it, for every signal: never a panic, and what decodes re-encodes. For
//! traces also: whatever the borrowed view takes, the owned types take too, with the same content.
#![no_main]

use infercol_pipelines::{Data, Signal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Some(view) = infercol_pipelines::lite::TraceView::decode(bytes::Bytes::copy_from_slice(input)) {
        use prost::Message;
        let owned = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(input)
            .expect("the owned types take what the view takes");
        // Attributes compared by their encoding (a double can be NaN, which equals nothing).
        let encoded = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
            kvs.iter().map(|kv| kv.encode_to_vec()).collect::<Vec<_>>()
        };
        assert_eq!(owned.resource_spans.len(), view.resource_count());
        for (rs, r) in owned.resource_spans.iter().zip(view.resources()) {
            let resource = rs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
            assert_eq!(encoded(resource), encoded(&r.attributes().owned()));
            let spans: Vec<_> = rs.scope_spans.iter().flat_map(|ss| &ss.spans).collect();
            assert_eq!(spans.len(), r.spans().len());
            for (o, v) in spans.into_iter().zip(r.spans()) {
                assert_eq!(o.trace_id, v.trace_id());
                assert_eq!(o.span_id, v.span_id());
                assert_eq!(o.parent_span_id, v.parent_span_id());
                assert_eq!(o.trace_state, v.trace_state());
                assert_eq!(o.name.as_bytes(), v.name());
                assert_eq!(o.kind, v.kind());
                assert_eq!(o.start_time_unix_nano, v.start_time_unix_nano());
                assert_eq!(o.end_time_unix_nano, v.end_time_unix_nano());
                assert_eq!(o.status.as_ref().map(|s| s.code).unwrap_or(0), v.status_code());
                assert_eq!(encoded(&o.attributes), encoded(&v.attributes().owned()));
                // The borrowed values classification reads agree with the owned ones.
                for ((key, value), o) in v.attributes().iter().zip(&o.attributes) {
                    use infercol_pipelines::lite::Value as B;
                    use opentelemetry_proto::tonic::common::v1::any_value::Value as O;
                    assert_eq!(key, o.key.as_bytes());
                    match (value, o.value.as_ref().map(|a| &a.value)) {
                        (None, None) | (Some(B::Unset), Some(None)) => {}
                        (Some(B::Str(a)), Some(Some(O::StringValue(b)))) => assert_eq!(a, b),
                        (Some(B::Int(a)), Some(Some(O::IntValue(b)))) => assert_eq!(a, *b),
                        (Some(B::Bool(a)), Some(Some(O::BoolValue(b)))) => assert_eq!(a, *b),
                        (Some(B::Double(a)), Some(Some(O::DoubleValue(b)))) => assert_eq!(a.to_bits(), b.to_bits()),
                        (Some(B::Bytes(a)), Some(Some(O::BytesValue(b)))) => assert_eq!(a, b.as_slice()),
                        (Some(B::Nested), Some(Some(O::ArrayValue(_) | O::KvlistValue(_)))) => {}
                        (Some(B::StrIndex(a)), Some(Some(O::StringValueStrindex(b)))) => assert_eq!(a, *b),
                        (a, b) => panic!("the view read {a:?}, the owned types {b:?}"),
                    }
                }
                let events: Vec<_> = o.events.iter().map(|e| (e.name.as_bytes(), e.time_unix_nano)).collect();
                assert_eq!(events, v.events().collect::<Vec<_>>());
            }
        }
    }
    for signal in Signal::ALL {
        if let Ok(data) = Data::decode(signal, bytes::Bytes::copy_from_slice(input)) {
            let (kept, _rejected, _why) = data.without_invalid_spans();
            let _ = kept.items();
            let json = kept.to_json();
            // What we write as OTLP/JSON must read back.
            assert!(Data::from_json(signal, json.as_bytes()).is_ok(), "{json}");
        }
    }
});
