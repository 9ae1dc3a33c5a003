//! vLLM 0.33.0 (`vllm/v1/metrics/loggers.py` for the `vllm:` families; the OpenAI server's
//! prometheus-fastapi-instrumentator 8.1.0, set up in `vllm/entrypoints/serve/instrumentator/metrics.py`, for the
//! `http_*` ones), page at `GET /metrics` on the API port. The fixture and its notes are in
//! `tests/fixtures/scrape/vllm/`.
//!
//! Request volume comes from `http_requests_total{handler,method,status}`, whose `status` is already a class
//! (`2xx`): the page cannot give the code. `vllm:request_success_total` counts every request the engine finished,
//! errors and aborts included, so it is not used. Latencies and tokens are per model (`model_name`), summed over
//! engines.

use super::{Meaning, Rule, ServerProfile, classic};
use crate::prometheus::exposition::LabelSet;

/// The routes that are inferences (not `/v1/models`, `/tokenize`, unmatched paths `none`, ...).
const INFERENCE_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/score",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/score",
    "/pooling",
    "/classify",
    "/invocations",
    "/inference/v1/generate",
];

/// An inference route's answers by class; the class stands for the code, which the instrumentator groups away.
fn http_requests(labels: &LabelSet) -> Option<(String, &'static str)> {
    let label = |k: &str| labels.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    if !label("handler").is_some_and(|h| INFERENCE_ROUTES.contains(&h)) {
        return None;
    }
    let class = match label("status")? {
        "1xx" => "1xx",
        "2xx" => "2xx",
        "3xx" => "3xx",
        "4xx" => "4xx",
        "5xx" => "5xx",
        _ => return None,
    };
    Some((class.to_string(), class))
}

pub static VLLM: ServerProfile = ServerProfile {
    name: "vllm",
    version: "0.33.0",
    marker: "vllm:",
    model_label: Some("model_name"),
    rules: &[
        Rule {
            family: "http_requests_total",
            meaning: Meaning::Requests(http_requests),
        },
        Rule {
            family: "vllm:e2e_request_latency_seconds",
            meaning: classic("model.request.duration", "s"),
        },
        Rule {
            family: "vllm:request_inference_time_seconds",
            meaning: classic("model.inference.duration", "s"),
        },
        Rule {
            family: "vllm:time_to_first_token_seconds",
            meaning: classic("model.time_to_first_byte", "s"),
        },
        Rule {
            family: "vllm:request_queue_time_seconds",
            meaning: classic("model.queue.duration", "s"),
        },
        Rule {
            family: "vllm:request_prompt_tokens",
            meaning: classic("model.input_tokens", "{token}"),
        },
        Rule {
            family: "vllm:request_generation_tokens",
            meaning: classic("model.output_tokens", "{token}"),
        },
        Rule {
            family: "vllm:num_requests_waiting",
            meaning: Meaning::Gauge {
                metric: "model.queue.size",
                unit: "{request}",
                scale: 1.0,
                mean: false,
            },
        },
        Rule {
            family: "vllm:kv_cache_usage_perc",
            meaning: Meaning::Gauge {
                metric: "model.kv_cache.utilization",
                unit: "1",
                scale: 1.0,
                mean: true,
            },
        },
    ],
};
