//! Hugging Face text-generation-inference v3.3.7 (router `router/src/server.rs`, backend v3; rendered by
//! metrics-exporter-prometheus 0.15.3), page at `GET /metrics` on the main port. The fixture and its notes are in
//! `tests/fixtures/scrape/tgi/`.
//!
//! TGI has no model label (the model is the target's `model`), counts successes and failures by `err`, and its
//! durations share one layout of 35 bounds, each 1.5 times the last (a percentile within 50%). There is no
//! time-to-first-token and no byte size. `tgi_request_count` counts some routes twice and is not used.

use super::{Meaning, Rule, ServerProfile, classic};
use crate::prometheus::exposition::LabelSet;

/// `tgi_request_failure{err}`, by what the error means (server.rs `From<InferError>`): validation and template
/// errors are 422, overload 429; a failed generation is a server fault, counted 5xx though TGI answers it 424 (a
/// prediction exception is a 5xx); an incomplete stream 500; `dropped`, a client that went away (499).
fn failure(labels: &LabelSet) -> Option<(String, &'static str)> {
    match labels.iter().find(|(k, _)| k == "err").map(|(_, v)| v.as_str()) {
        Some("validation" | "template") => Some(("422".into(), "4xx")),
        Some("overloaded") => Some(("429".into(), "4xx")),
        Some("dropped") => Some(("499".into(), "4xx")),
        _ => Some(("500".into(), "5xx")),
    }
}

fn success(_: &LabelSet) -> Option<(String, &'static str)> {
    Some(("200".into(), "2xx"))
}

const fn seconds(metric: &'static str) -> Meaning {
    classic(metric, "s")
}

const fn tokens(metric: &'static str) -> Meaning {
    classic(metric, "{token}")
}

pub static TGI: ServerProfile = ServerProfile {
    name: "tgi",
    version: "3.3.7",
    marker: "tgi_",
    model_label: None,
    rules: &[
        Rule {
            family: "tgi_request_success",
            meaning: Meaning::Requests(success),
        },
        Rule {
            family: "tgi_request_failure",
            meaning: Meaning::Requests(failure),
        },
        Rule {
            family: "tgi_request_duration",
            meaning: seconds("model.request.duration"),
        },
        Rule {
            family: "tgi_request_inference_duration",
            meaning: seconds("model.inference.duration"),
        },
        Rule {
            family: "tgi_request_queue_duration",
            meaning: seconds("model.queue.duration"),
        },
        Rule {
            family: "tgi_request_input_length",
            meaning: tokens("model.input_tokens"),
        },
        Rule {
            family: "tgi_request_generated_tokens",
            meaning: tokens("model.output_tokens"),
        },
        Rule {
            family: "tgi_queue_size",
            meaning: Meaning::Gauge {
                metric: "model.queue.size",
                unit: "{request}",
                scale: 1.0,
                mean: false,
            },
        },
    ],
};
