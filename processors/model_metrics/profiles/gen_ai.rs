//! gen_ai client spans, seen from the service that calls a model: OpenLLMetry (opentelemetry-instrumentation-openai
//! 0.62.4, `shared/chat_wrappers.py`: CLIENT `openai.chat`, `gen_ai.usage.input_tokens`/`output_tokens`) and
//! OpenInference (openinference-instrumentation-openai 0.1.66: INTERNAL `ChatCompletion` with
//! `openinference.span.kind=LLM`, `llm.token_count.prompt`/`completion`). Each call's duration is inference time
//! and its tokens are counted, for the calling service's dimensions; the call is no request of its own.

use super::{Read, Scope, count_of, span_seconds};
use crate::model_metrics::assembly::Facts;
use crate::model_metrics::classify::{Attributes, SpanLike, Val};

/// Traceloop's LLM instrumentations share the contrib prefix: they are told apart by the provider's name.
const OPENLLMETRY_PROVIDERS: [&str; 12] = [
    "openai",
    "anthropic",
    "bedrock",
    "cohere",
    "mistralai",
    "ollama",
    "vertexai",
    "groq",
    "together",
    "google_generativeai",
    "watsonx",
    "transformers",
];

pub fn matches_openllmetry(scope: &Scope<'_>) -> bool {
    scope
        .name
        .strip_prefix("opentelemetry.instrumentation.")
        .and_then(|rest| rest.split('.').next())
        .is_some_and(|provider| OPENLLMETRY_PROVIDERS.contains(&provider))
}

pub fn read_openllmetry<S: SpanLike>(span: &S) -> Read {
    if span.attributes().attribute("gen_ai.operation.name").is_none()
        && span.attributes().attribute("gen_ai.system").is_none()
        && span.attributes().attribute("llm.request.type").is_none()
    {
        return Read::Generic;
    }
    Read::ModelCall(Facts {
        inference: span_seconds(span),
        input_tokens: count_of(span, &["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"]),
        output_tokens: count_of(span, &["gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"]),
        ..Default::default()
    })
}

pub fn matches_openinference(scope: &Scope<'_>) -> bool {
    scope.name.starts_with("openinference.instrumentation")
}

pub fn read_openinference<S: SpanLike>(span: &S) -> Read {
    if !matches!(
        span.attributes().attribute("openinference.span.kind"),
        Some(Some(Val::Str("LLM")))
    ) {
        return Read::Ignore;
    }
    Read::ModelCall(Facts {
        inference: span_seconds(span),
        input_tokens: count_of(span, &["llm.token_count.prompt"]),
        output_tokens: count_of(span, &["llm.token_count.completion"]),
        ..Default::default()
    })
}
