//! model_metrics' classification of arbitrary spans (every attribute type in every rule's keys) and of arbitrary
//! tracestates: never a panic, and only the contract's classes.
#![no_main]

use infercol_processors::model_metrics::classify::{Classifier, adjusted_count};
use infercol_processors::model_metrics::config::SpanRules;
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

fuzz_target!(|input: &[u8]| {
    let classifier = Classifier::new(SpanRules::default());
    if let Ok(span) = Span::decode(input) {
        let mut rejected = Vec::new();
        let request = classifier.request(&span, &mut rejected);
        assert!(["1xx", "2xx", "3xx", "4xx", "5xx"].contains(&request.status.class.as_str()));
        for v in [request.duration, request.time_to_first_byte, request.request_size, request.output_tokens] {
            assert!(v.is_none_or(|v| v.is_finite() && v >= 0.0));
        }
        let _ = classifier.is_inference(&span);
        let _ = classifier.message_id(&span);
        let weight = adjusted_count(&span.trace_state);
        assert!(weight.is_finite() && weight >= 1.0);
    }
});
