//! LiteLLM proxy 1.110.2 with `callbacks: ["otel"]` (`litellm/integrations/opentelemetry.py`). The request is the
//! SERVER span `Received Proxy Server Request`, with `http.response.status_code`; the model, the tokens and the
//! model's time are on its INTERNAL child `litellm_request` (`gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`/`output_tokens`). A streamed response marks no first byte (`llm.is_streaming`),
//! so none is recorded for it. A request refused before authentication runs emits no span.

use super::{Read, Scope, count_of, span_seconds, text_of};
use crate::model_metrics::assembly::Facts;
use crate::model_metrics::classify::{Attributes, SpanLike, Val};

pub fn matches(scope: &Scope<'_>) -> bool {
    scope.name == "litellm"
}

pub fn read<S: SpanLike>(span: &S) -> Read {
    match span.name() {
        b"Received Proxy Server Request" => Read::request(Facts::default()),
        b"litellm_request" => {
            let streaming = matches!(
                span.attributes().attribute("llm.is_streaming"),
                Some(Some(Val::Str("True" | "true"))) | Some(Some(Val::Bool(true)))
            );
            Read::stage(Facts {
                model: text_of(span, &["gen_ai.request.model", "gen_ai.response.model"]),
                input_tokens: count_of(span, &["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"]),
                output_tokens: count_of(span, &["gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"]),
                inference: span_seconds(span).filter(|_| !span.status_is_error()),
                no_first_byte: streaming,
                ..Default::default()
            })
        }
        _ => Read::Ignore,
    }
}
