//! SGLang 0.5.23 (`sglang/srt/observability/metrics_collector.py` and `http_request_metrics.py`, rendered by
//! prometheus_client 0.26.0 in multiprocess mode), page at `GET /metrics` on the server port with
//! `--enable-metrics`. The fixture and its notes are in `tests/fixtures/scrape/sglang/`.
//!
//! Request volume comes from `sglang:http_responses_total{endpoint,status_code}` (no model label: the one model
//! the page names). Scheduler families are recorded by the attention rank 0 scheduler only, so summing over
//! ranks is right by default. There is no inference time and no byte size; time to first token and end-to-end
//! latency start at 0.1 s.

use super::{Meaning, Rule, ServerProfile, class_of, classic};
use crate::prometheus::exposition::LabelSet;

/// The endpoints that are inferences (not `/health`, `/metrics`, `/v1/models`, ...).
const INFERENCE_ENDPOINTS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/rerank",
    "/v1/score",
    "/generate",
    "/encode",
    "/classify",
    "/invocations",
];

fn http_responses(labels: &LabelSet) -> Option<(String, &'static str)> {
    let label = |k: &str| labels.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    if !label("endpoint").is_some_and(|e| INFERENCE_ENDPOINTS.contains(&e)) {
        return None;
    }
    let code = label("status_code")?;
    Some((code.to_string(), class_of(code)?))
}

pub static SGLANG: ServerProfile = ServerProfile {
    name: "sglang",
    version: "0.5.23",
    marker: "sglang:",
    model_label: Some("model_name"),
    rules: &[
        Rule {
            family: "sglang:http_responses_total",
            meaning: Meaning::Requests(http_responses),
        },
        Rule {
            family: "sglang:e2e_request_latency_seconds",
            meaning: classic("model.request.duration", "s"),
        },
        Rule {
            family: "sglang:time_to_first_token_seconds",
            meaning: classic("model.time_to_first_byte", "s"),
        },
        Rule {
            family: "sglang:queue_time_seconds",
            meaning: classic("model.queue.duration", "s"),
        },
        Rule {
            family: "sglang:prompt_tokens_histogram",
            meaning: classic("model.input_tokens", "{token}"),
        },
        Rule {
            family: "sglang:generation_tokens_histogram",
            meaning: classic("model.output_tokens", "{token}"),
        },
        Rule {
            family: "sglang:num_queue_reqs",
            meaning: Meaning::Gauge {
                metric: "model.queue.size",
                unit: "{request}",
                scale: 1.0,
                mean: false,
            },
        },
        Rule {
            family: "sglang:token_usage",
            meaning: Meaning::Gauge {
                metric: "model.kv_cache.utilization",
                unit: "1",
                scale: 1.0,
                mean: true,
            },
        },
    ],
};
