//! OTLP/JSON as the HTTP receiver parses it: never a panic.
#![no_main]

use infercol_pipelines::{Data, Signal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    for signal in Signal::ALL {
        if let Ok(data) = Data::from_json(signal, input) {
            let _ = data.to_protobuf();
            let _ = data.without_invalid_spans();
        }
    }
});
