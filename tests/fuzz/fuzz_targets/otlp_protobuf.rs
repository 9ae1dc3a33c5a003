//! OTLP protobuf as the receivers decode it, for every signal: never a panic, and what decodes re-encodes. For
//! traces also: whatever the borrowed view takes, the owned types take too, with the same content.
#![no_main]

use infercol_pipelines::{Data, Signal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Some(view) = infercol_pipelines::lite::decode_exact(bytes::Bytes::copy_from_slice(input)) {
        use prost::Message;
        let owned = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(input)
            .expect("the owned types take what the view takes");
        assert_eq!(owned.encode_to_vec(), view.encode_to_vec());
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
