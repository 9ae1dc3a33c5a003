//! Ray Serve 2.60.0 (`ray/serve/_private/tracing_utils.py`, `proxy.py`, `replica.py`). Three SERVER spans per
//! request, in two processes: the proxy's `proxy_http_request <deployment> <METHOD> <path>` (or
//! `proxy_grpc_request ...`) is the request, with the status code and the `deployment` (the model label); its
//! child `route_to_replica ...` is the wait for a replica with room (the server's queue); the replica's
//! `replica_handle_request ...` (another process, another resource) is the model's own time. Serve streams every
//! HTTP response and marks no first byte, so no time to first byte is recorded. Serve samples 1% of requests
//! by default (`sampling_ratio`) without an OpenTelemetry threshold in the tracestate, so counts are of the
//! sampled requests only.

use super::{Read, Scope, span_seconds, text_of};
use crate::model_metrics::assembly::Facts;
use crate::model_metrics::classify::SpanLike;

pub fn matches(scope: &Scope<'_>) -> bool {
    scope.name == "ray.serve._private.tracing_utils"
}

pub fn read<S: SpanLike>(span: &S) -> Read {
    let name = span.name();
    if name.starts_with(b"proxy_http_request ") || name.starts_with(b"proxy_grpc_request ") {
        return Read::request(Facts {
            model: text_of(span, &["deployment"]),
            no_first_byte: true,
            ..Default::default()
        });
    }
    if name.starts_with(b"route_to_replica ") {
        return Read::stage(Facts {
            queue: span_seconds(span),
            ..Default::default()
        });
    }
    if name.starts_with(b"replica_handle_request ") {
        return Read::stage(Facts {
            inference: span_seconds(span),
            ..Default::default()
        });
    }
    Read::Ignore
}
