//! vLLM 0.33.0 (`vllm/tracing/otel.py`, `vllm/v1/engine/output_processor.py` `do_tracing`). One SERVER span per
//! engine request, `llm_request`, made in the API server's process when the request finishes. Its latencies are
//! attributes in seconds: `gen_ai.latency.e2e`, `time_to_first_token`, `time_in_queue`,
//! `time_in_model_inference` (prefill and decode). vLLM sets no HTTP attributes and no failure status: a failed
//! request reads as a success with no tokens, and one its API rejects emits no span at all. The model is in the
//! server's settings, not on the span (`gen_ai.response.model` is declared but never set): set
//! `OTEL_SERVICE_NAME` to name it. Its startup spans (`Loading (GPU)`, ...) are no requests.

use super::{Read, Scope, count_of, seconds_of, text_of};
use crate::model_metrics::assembly::Facts;
use crate::model_metrics::classify::SpanLike;

pub fn matches(scope: &Scope<'_>) -> bool {
    // 0.33 names its tracer `vllm.tracing.otel`; 0.11 named it after the instrumenting module (`vllm.llm_engine`)
    // and set the resource attribute below.
    scope.name.starts_with("vllm.")
        || scope
            .resource
            .iter()
            .any(|kv| kv.key == "vllm.instrumenting_module_name")
}

pub fn read<S: SpanLike>(span: &S) -> Read {
    if span.name() != b"llm_request" {
        return Read::Ignore;
    }
    let e2e = seconds_of(span, &["gen_ai.latency.e2e"]);
    let output_tokens = count_of(span, &["gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens"]);
    // 0.0 is what vLLM reports when the timestamps never came (no token, never scheduled): not a measurement.
    let positive = |v: Option<f64>| v.filter(|v| *v > 0.0);
    let ttft =
        positive(seconds_of(span, &["gen_ai.latency.time_to_first_token"])).filter(|_| output_tokens != Some(0.0));
    // On an error before scheduling, the inference time is the engine's raw monotonic clock: only a value within
    // the request's own time is one.
    let inference =
        positive(seconds_of(span, &["gen_ai.latency.time_in_model_inference"])).filter(|v| e2e.is_none_or(|e| *v <= e));
    // `llm_request` carries every number of its request: it is recorded at once.
    Read::whole_request(Facts {
        duration: e2e,
        time_to_first_byte: ttft,
        no_first_byte: ttft.is_none(),
        queue: positive(seconds_of(span, &["gen_ai.latency.time_in_queue"])),
        inference,
        input_tokens: count_of(span, &["gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"]),
        output_tokens,
        model: text_of(span, &["gen_ai.response.model", "gen_ai.request.model"]),
        ..Default::default()
    })
}
