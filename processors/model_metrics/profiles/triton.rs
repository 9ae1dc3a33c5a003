//! NVIDIA Triton Inference Server 2.71.0 in `--trace-config mode=opentelemetry` (`src/tracer.cc`, exporting with
//! opentelemetry-cpp 1.13.0, which sets no is-remote bits). Three SERVER spans per request: the `InferRequest`
//! root (the request; its parent is the client's span when a `traceparent` came), a child named after the model
//! carrying `triton.model_name` and the `QUEUE_START` event, and a `compute` grandchild (inference). Queue time is
//! `QUEUE_START` to the compute's start; the first byte leaves at the first `HTTP_SEND_START`/`GRPC_SEND_START`.
//! Triton puts no status on its spans: a failed inference reads as a success (`status_code="unset"`), and a
//! request refused before it is traced (unknown model, bad input) emits no span.

use super::{Read, Scope, event_time, span_seconds, text_of};
use crate::model_metrics::assembly::{Facts, Role};
use crate::model_metrics::classify::{Attributes, Code, Protocol, SpanLike, Status, StatusClass, Val};

pub fn matches(scope: &Scope<'_>) -> bool {
    scope.name == "triton-server" || scope.service_name() == Some("triton-inference-server")
}

pub fn read<S: SpanLike>(span: &S) -> Read {
    if span.name() == b"InferRequest" {
        return request(span);
    }
    if span.name() == b"compute" {
        return Read::stage(Facts {
            inference: span_seconds(span),
            execution_start_ns: Some(span.start()),
            ..Default::default()
        });
    }
    if let Some(model) = text_of(span, &["triton.model_name"]) {
        // An ensemble's or a BLS call's inner models have a parent trace: the top model names the request.
        let top = !matches!(
            span.attributes().attribute("triton.trace_parent_id"),
            Some(Some(Val::Int(p))) if p != 0
        ) && !matches!(
            span.attributes().attribute("triton.trace_parent_id"),
            Some(Some(Val::Str(p))) if p != "0"
        );
        return Read::stage(Facts {
            model: top.then_some(model),
            queue_start_ns: event_time(span, "QUEUE_START"),
            ..Default::default()
        });
    }
    Read::Ignore
}

fn request<S: SpanLike>(span: &S) -> Read {
    let mut grpc = false;
    let mut first_send: Option<u64> = None;
    span.for_each_event(&mut |name, t| {
        grpc |= name.starts_with(b"GRPC_");
        // Streamed HTTP chunks carry time 0: only a send after the request began counts.
        if (name == b"HTTP_SEND_START" || name == b"GRPC_SEND_START") && t >= span.start() {
            first_send = Some(first_send.map_or(t, |f| f.min(t)));
        }
    });
    let completed = event_time(span, "INFER_RESPONSE_COMPLETE").filter(|t| *t >= span.start());
    Read::Part {
        role: Role::Request,
        facts: Facts {
            first_byte_ns: first_send.or(completed),
            ..Default::default()
        },
        status: Some(Status {
            protocol: if grpc { Protocol::Grpc } else { Protocol::Http },
            code: Code::Unset,
            class: StatusClass::OK,
        }),
        alone: false,
    }
}
