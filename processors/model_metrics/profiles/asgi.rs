//! FastAPI and other ASGI apps under opentelemetry-instrumentation-asgi / -fastapi 0.66b2
//! (`opentelemetry/instrumentation/asgi/__init__.py`). The SERVER span is the request (by the generic parent
//! rule); its INTERNAL children `<route> http send` wrap each ASGI `send`: the one with
//! `asgi.event.type=http.response.start` is when the status line and headers left, the first byte of the
//! response. Without it the generic fallback (first byte with the whole body) would make every streamed
//! response's first byte its end.

use super::{Read, Scope};
use crate::model_metrics::assembly::{Facts, Role};
use crate::model_metrics::classify::{Attributes, SpanLike, Val};

pub fn matches(scope: &Scope<'_>) -> bool {
    matches!(
        scope.name,
        "opentelemetry.instrumentation.asgi"
            | "opentelemetry.instrumentation.fastapi"
            | "opentelemetry.instrumentation.starlette"
    )
}

pub fn read<S: SpanLike>(span: &S) -> Read {
    if span.kind() == 2 {
        return Read::Part {
            role: Role::Candidate,
            facts: Facts::default(),
            status: None,
            alone: false,
        };
    }
    match span.attributes().attribute("asgi.event.type") {
        Some(Some(Val::Str("http.response.start"))) => Read::stage(Facts {
            first_byte_ns: Some(span.end()),
            ..Default::default()
        }),
        Some(_) => Read::Ignore,
        None => Read::Generic,
    }
}
