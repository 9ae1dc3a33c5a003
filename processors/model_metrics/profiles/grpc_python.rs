//! Python gRPC servers under opentelemetry-instrumentation-grpc 0.66b2
//! (`opentelemetry/instrumentation/grpc/_server.py`). The SERVER span sets `rpc.grpc.status_code` to 0 when it
//! starts; `context.abort(code, ...)` overwrites it, but an uncaught exception only records `exception` events
//! (`set_status_on_exception=False`) and the client receives UNKNOWN. So an exception under a 0 code is UNKNOWN,
//! a server error.

use super::{Read, Scope};
use crate::model_metrics::assembly::{Facts, Role};
use crate::model_metrics::classify::{Code, Protocol, SpanLike, Status, StatusClass, find_key, grpc_status};

pub fn matches(scope: &Scope<'_>) -> bool {
    scope.name.starts_with("opentelemetry.instrumentation.grpc")
}

pub fn read<S: SpanLike>(span: &S) -> Read {
    if span.kind() != 2 {
        return Read::Generic;
    }
    let ok = find_key(span.attributes(), &["rpc.grpc.status_code", "rpc.response.status_code"])
        .and_then(grpc_status)
        .is_none_or(|(name, _)| name == "OK");
    let mut raised = false;
    span.for_each_event(&mut |name, _| raised |= name == b"exception");
    let status = (ok && raised).then_some(Status {
        protocol: Protocol::Grpc,
        code: Code::Name("UNKNOWN"),
        class: StatusClass::SERVER_ERROR,
    });
    Read::Part {
        role: Role::Candidate,
        facts: Facts::default(),
        status,
        // The span carries the whole call: nothing waits for other spans.
        alone: true,
    }
}
