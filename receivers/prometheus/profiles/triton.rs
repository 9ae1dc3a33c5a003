//! NVIDIA Triton Inference Server 2.70.0 (container 26.06; core branch r26.06, rendered by prometheus-cpp
//! v1.0.1), page on port 8002 at `/metrics`. Families from core `src/metric_model_reporter.cc` and
//! `src/metrics.cc`; the fixture and its notes are in `tests/fixtures/scrape/triton/`.
//!
//! Triton counts successes and failures by `reason` (no status code), per `model` and `version`, on one series
//! without `gpu_uuid` and one per GPU: the mapping sums over them. Its latencies are cumulative microsecond
//! counters (a mean, no distribution); the one histogram is the optional first-response time in milliseconds
//! (`--metrics-config histogram_latencies=true`, bounds 100, 500, 2000, 5000 ms).

use super::{Meaning, Rule, ServerProfile};
use crate::prometheus::exposition::LabelSet;

/// `nv_inference_request_failure{reason}`: REJECTED is a queue timeout answered 503; CANCELED, a request whose
/// client went away (499, as the contract maps gRPC CANCELLED); BACKEND and OTHER carry the backend's error,
/// which the page does not give: counted as 500.
fn failure(labels: &LabelSet) -> Option<(String, &'static str)> {
    match labels.iter().find(|(k, _)| k == "reason").map(|(_, v)| v.as_str()) {
        Some("REJECTED") => Some(("503".into(), "5xx")),
        Some("CANCELED") => Some(("499".into(), "4xx")),
        _ => Some(("500".into(), "5xx")),
    }
}

fn success(_: &LabelSet) -> Option<(String, &'static str)> {
    Some(("200".into(), "2xx"))
}

pub static TRITON: ServerProfile = ServerProfile {
    name: "triton",
    version: "2.70.0",
    marker: "nv_inference_",
    model_label: Some("model"),
    rules: &[
        Rule {
            family: "nv_inference_request_success",
            meaning: Meaning::Requests(success),
        },
        Rule {
            family: "nv_inference_request_failure",
            meaning: Meaning::Requests(failure),
        },
        Rule {
            family: "nv_inference_first_response_histogram_ms",
            meaning: Meaning::Histogram {
                metric: "model.time_to_first_byte",
                unit: "s",
                scale: 0.001,
            },
        },
        Rule {
            family: "nv_inference_pending_request_count",
            meaning: Meaning::Gauge {
                metric: "model.queue.size",
                unit: "{request}",
                scale: 1.0,
                mean: false,
            },
        },
    ],
};
