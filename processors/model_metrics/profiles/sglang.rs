//! SGLang 0.5.23 (`sglang/srt/observability/trace.py`, `req_time_stats.py`). Every span is INTERNAL. The request
//! is the root `" Req <rid>"` (`module="sglang::request"`), carrying `gen_ai.latency.e2e`,
//! `time_to_first_token` and `time_in_model_inference` in seconds (SGLang measures inference from dispatch, so it
//! includes the wait), the tokens, `gen_ai.response.model` and `gen_ai.response.finish_reasons`. The queue wait is
//! the scheduler process's `prefill_waiting` span, under the scheduler's thread span under the root. SGLang sends
//! no status code: a finish reason `abort`, or none after the scheduler took the request, is a failure; a request
//! its tokenizer rejects leaves no root span at all.

use super::{Read, Scope, count_of, seconds_of, span_seconds, text_of};
use crate::model_metrics::assembly::Facts;
use crate::model_metrics::classify::{Attributes, SpanLike, Val};

pub fn matches(scope: &Scope<'_>) -> bool {
    scope.name.starts_with("sglang")
}

pub fn read<S: SpanLike>(span: &S) -> Read {
    let attrs = span.attributes();
    if matches!(attrs.attribute("module"), Some(Some(Val::Str("sglang::request")))) {
        return request(span);
    }
    let name = span.name();
    if name == b"prefill_waiting" {
        return Read::stage(Facts {
            queue: span_seconds(span),
            ..Default::default()
        });
    }
    // The thread spans link a process's stages to the root.
    if name.starts_with(b"Scheduler") || name.starts_with(b"Tokenizer") {
        return Read::stage(Facts::default());
    }
    Read::Ignore
}

fn request<S: SpanLike>(span: &S) -> Read {
    let inference = seconds_of(span, &["gen_ai.latency.time_in_model_inference"]);
    let finish = text_of(span, &["gen_ai.response.finish_reasons"]);
    if finish.is_none() && inference.is_none() {
        // The placeholder root of an n > 1 request (its samples have roots of their own).
        return Read::Ignore;
    }
    let failed = finish.as_deref().is_none_or(|f| f.contains("abort"));
    Read::request(Facts {
        failed,
        duration: seconds_of(span, &["gen_ai.latency.e2e"]),
        time_to_first_byte: seconds_of(span, &["gen_ai.latency.time_to_first_token"]),
        inference,
        input_tokens: count_of(span, &["gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"]),
        output_tokens: count_of(span, &["gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens"]),
        model: text_of(span, &["gen_ai.response.model", "gen_ai.request.model"]),
        ..Default::default()
    })
}
