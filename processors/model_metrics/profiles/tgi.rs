//! Hugging Face text-generation-inference 3.3.7 (`router/src/server.rs`, `router/src/infer/mod.rs`,
//! `backends/v3/src/backend.rs`, `backends/v3/src/queue.rs`; tracing-opentelemetry 0.21 with opentelemetry-otlp
//! 0.13, which sets no span flags). Every router span is INTERNAL. The request is the handler span
//! (`code.namespace=text_generation_router::server`: `generate`, `generate_stream`, `chat_completions`,
//! `completions`; `vertex_compatibility`), whose `total_time`, `queue_time`, `inference_time` and
//! `time_per_token` are Rust `Duration` Debug strings. The per-step batch spans and the shard's gRPC SERVER spans
//! (`/generate.v3.TextGenerationService/...`, one per prefill and decode step) are no requests and no inference of
//! their own. TGI sends no status code: an ERROR on the request's own stages tells the failure (`send_error`,
//! the infer `generate_stream`, `apply_chat_template`: the client got 4xx; the infer `generate`: 5xx); a handler
//! span without `total_time` and without such an error failed too. A streamed response's first byte is its first
//! `send_generation`. The optional HTTP SERVER span (TRACE level) gives the status code when it is on.

use super::{Read, Scope, seconds_of, span_seconds};
use crate::model_metrics::assembly::Facts;
use crate::model_metrics::classify::{Attributes, Code, Protocol, SpanLike, Status, StatusClass, Val, number};

pub fn matches(scope: &Scope<'_>) -> bool {
    scope.name == "text_generation_server.tracing"
        || scope
            .service_name()
            .is_some_and(|s| s.starts_with("text-generation-inference"))
}

const HANDLERS: [&[u8]; 4] = [b"generate", b"generate_stream", b"chat_completions", b"completions"];

pub fn read<S: SpanLike>(span: &S) -> Read {
    let namespace = match span.attributes().attribute("code.namespace") {
        Some(Some(Val::Str(s))) => s,
        _ => "",
    };
    let name = span.name();
    let error = span.status_is_error();
    let class = |class| Status {
        protocol: Protocol::Http,
        code: Code::Unset,
        class,
    };
    let facts = match (namespace, name) {
        ("text_generation_router::server", n) if HANDLERS.contains(&n) => return request(span),
        ("text_generation_router::vertex", b"vertex_compatibility") => return request(span),
        (_, b"async_stream") => Facts {
            streamed: true,
            ..Default::default()
        },
        (_, b"send_generation") => Facts {
            token_sent_ns: Some(span.end()),
            ..Default::default()
        },
        (_, b"queued") => Facts {
            queue: span_seconds(span),
            ..Default::default()
        },
        (_, b"send_error") | ("text_generation_router::infer", b"generate_stream") | (_, b"apply_chat_template")
            if error =>
        {
            Facts {
                status: Some(class(StatusClass::CLIENT_ERROR)),
                ..Default::default()
            }
        }
        ("text_generation_router::infer", b"generate") if error => Facts {
            status: Some(class(StatusClass::SERVER_ERROR)),
            ..Default::default()
        },
        _ if span.kind() == 2 && !name.starts_with(b"/generate.") => Facts {
            status: http_status(span),
            ..Default::default()
        },
        _ => return Read::Ignore,
    };
    Read::stage(facts)
}

fn request<S: SpanLike>(span: &S) -> Read {
    let inference = seconds_of(span, &["inference_time"]);
    let per_token = seconds_of(span, &["time_per_token"]).filter(|t| *t > 0.0);
    let output_tokens = inference.zip(per_token).map(|(i, t)| (i / t).round());
    Read::request(Facts {
        failed: span.attributes().attribute("total_time").is_none(),
        queue: seconds_of(span, &["queue_time"]),
        inference,
        output_tokens,
        model: adapter_id(span),
        ..Default::default()
    })
}

/// The model a chat request named: `adapter_id: Some("<model>")` in the `parameters` field's Debug text.
fn adapter_id<S: SpanLike>(span: &S) -> Option<String> {
    let Some(Some(Val::Str(parameters))) = span.attributes().attribute("parameters") else {
        return None;
    };
    let rest = &parameters[parameters.find("adapter_id: Some(\"")? + "adapter_id: Some(\"".len()..];
    let model = &rest[..rest.find("\")")?];
    (!model.is_empty()).then(|| model.to_string())
}

/// The optional HTTP layer's status code (a string in TGI's exporter).
fn http_status<S: SpanLike>(span: &S) -> Option<Status> {
    let code = span.attributes().attribute("http.response.status_code")??;
    let code = number(code)? as i64;
    Some(Status {
        protocol: Protocol::Http,
        code: Code::Number(code),
        class: StatusClass::of_http(code)?,
    })
}
