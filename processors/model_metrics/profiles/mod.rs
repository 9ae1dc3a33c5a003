//! Server profiles (contract section 2, "server profiles"): how one real server's spans, at a named upstream
//! version, map onto the contract's concepts. A profile is recognised from a scope's instrumentation name and its
//! resource; it then reads each span of that scope as a request, a stage of one, a model call, or nothing. Spans
//! no profile claims follow the generic rules.
//!
//! Each profile's file names the upstream version and files it follows; the fixtures in
//! `tests/fixtures/profiles/<profile>/` are those spans as the server emits them.

mod asgi;
mod gen_ai;
mod grpc_python;
mod litellm;
mod ray_serve;
mod sglang;
mod tgi;
mod triton;
mod vllm;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use serde::Deserialize;

use super::assembly::{Facts, Role};
use super::classify::{Attributes, SpanLike, Status, Val, find_key, seconds};

/// A profile as the configuration names it (`spans.profiles`): `auto`, or one profile by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileChoice {
    /// Every built-in profile, recognised automatically.
    Auto,
    One(Profile),
}

impl<'de> Deserialize<'de> for ProfileChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if name == "auto" {
            return Ok(ProfileChoice::Auto);
        }
        match Profile::ALL.into_iter().find(|p| p.name() == name) {
            Some(p) => Ok(ProfileChoice::One(p)),
            None => {
                let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
                Err(serde::de::Error::custom(format!(
                    "`{name}` is no profile: auto, {}",
                    names.join(", ")
                )))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Vllm,
    Triton,
    Tgi,
    Sglang,
    RayServe,
    Litellm,
    Asgi,
    GrpcPython,
    Openllmetry,
    Openinference,
}

impl Profile {
    /// In the order they are tried.
    pub const ALL: [Profile; 10] = [
        Profile::Vllm,
        Profile::Triton,
        Profile::Tgi,
        Profile::Sglang,
        Profile::RayServe,
        Profile::Litellm,
        Profile::Openllmetry,
        Profile::Openinference,
        Profile::Asgi,
        Profile::GrpcPython,
    ];

    /// The name `spans.profiles` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Vllm => "vllm",
            Profile::Triton => "triton",
            Profile::Tgi => "tgi",
            Profile::Sglang => "sglang",
            Profile::RayServe => "ray_serve",
            Profile::Litellm => "litellm",
            Profile::Asgi => "asgi",
            Profile::GrpcPython => "grpc_python",
            Profile::Openllmetry => "openllmetry",
            Profile::Openinference => "openinference",
        }
    }

    fn chosen_by(self, choice: ProfileChoice) -> bool {
        choice == ProfileChoice::Auto || choice == ProfileChoice::One(self)
    }

    /// Whether the spans of this scope (in this resource) are this server's.
    fn matches(self, scope: &Scope<'_>) -> bool {
        match self {
            Profile::Vllm => vllm::matches(scope),
            Profile::Triton => triton::matches(scope),
            Profile::Tgi => tgi::matches(scope),
            Profile::Sglang => sglang::matches(scope),
            Profile::RayServe => ray_serve::matches(scope),
            Profile::Litellm => litellm::matches(scope),
            Profile::Asgi => asgi::matches(scope),
            Profile::GrpcPython => grpc_python::matches(scope),
            Profile::Openllmetry => gen_ai::matches_openllmetry(scope),
            Profile::Openinference => gen_ai::matches_openinference(scope),
        }
    }

    /// What one span of this server means.
    pub fn read<S: SpanLike>(self, span: &S) -> Read {
        match self {
            Profile::Vllm => vllm::read(span),
            Profile::Triton => triton::read(span),
            Profile::Tgi => tgi::read(span),
            Profile::Sglang => sglang::read(span),
            Profile::RayServe => ray_serve::read(span),
            Profile::Litellm => litellm::read(span),
            Profile::Asgi => asgi::read(span),
            Profile::GrpcPython => grpc_python::read(span),
            Profile::Openllmetry => gen_ai::read_openllmetry(span),
            Profile::Openinference => gen_ai::read_openinference(span),
        }
    }
}

/// What a scope is recognised by: its instrumentation scope's name and its resource.
pub struct Scope<'a> {
    pub name: &'a str,
    pub resource: &'a [KeyValue],
}

impl Scope<'_> {
    /// The resource's `service.name`, when it is a string.
    pub fn service_name(&self) -> Option<&str> {
        match self.resource.attribute("service.name") {
            Some(Some(Val::Str(s))) => Some(s),
            _ => None,
        }
    }
}

/// The profiles `spans.profiles` turns on.
#[derive(Clone, Debug, Default)]
pub struct Profiles {
    enabled: Vec<Profile>,
}

impl Profiles {
    pub fn new(choices: &[ProfileChoice]) -> Profiles {
        let enabled = Profile::ALL
            .into_iter()
            .filter(|p| choices.iter().any(|c| p.chosen_by(*c)))
            .collect();
        Profiles { enabled }
    }

    /// The profile of a scope's spans, if one recognises them.
    pub fn detect(&self, scope: &Scope<'_>) -> Option<Profile> {
        self.enabled.iter().copied().find(|p| p.matches(scope))
    }
}

/// What a profile makes of one span.
#[derive(Clone, Debug, PartialEq)]
pub enum Read {
    /// Not a span this profile knows: the generic rules read it.
    Generic,
    /// Neither a request nor part of one (a per-step call, a span of another process's making).
    Ignore,
    /// A request, a stage of one, or a SERVER span whose parent may be local; `status` is the request's when the
    /// profile knows better than the generic rules. `alone`: no other span adds to this request, so it is recorded
    /// at once rather than waiting for its stages.
    Part {
        role: Role,
        facts: Facts,
        status: Option<Status>,
        alone: bool,
    },
    /// A call the service made to a model (a gen_ai client span): inference time and tokens for the calling
    /// service, recorded on their own.
    ModelCall(Facts),
}

impl Read {
    pub fn request(facts: Facts) -> Read {
        Read::Part {
            role: Role::Request,
            facts,
            status: None,
            alone: false,
        }
    }

    /// A request span that carries every fact of its request.
    pub fn whole_request(facts: Facts) -> Read {
        Read::Part {
            role: Role::Request,
            facts,
            status: None,
            alone: true,
        }
    }

    pub fn stage(facts: Facts) -> Read {
        Read::Part {
            role: Role::Stage,
            facts,
            status: None,
            alone: false,
        }
    }
}

/// Seconds from the first of `keys` that the span carries (a number or a duration string), when it is a
/// non-negative finite value.
pub fn seconds_of<S: SpanLike>(span: &S, keys: &[&str]) -> Option<f64> {
    find_key(span.attributes(), keys)
        .and_then(seconds)
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// A count (tokens) from the first of `keys` the span carries.
pub fn count_of<S: SpanLike>(span: &S, keys: &[&str]) -> Option<f64> {
    find_key(span.attributes(), keys)
        .and_then(super::classify::number)
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// A non-empty string attribute.
pub fn text_of<S: SpanLike>(span: &S, keys: &[&str]) -> Option<String> {
    match find_key(span.attributes(), keys)? {
        Val::Str(s) if !s.is_empty() => Some(s.to_string()),
        _ => None,
    }
}

/// The span's duration in seconds, when its times are sound.
pub fn span_seconds<S: SpanLike>(span: &S) -> Option<f64> {
    (span.start() > 0 && span.end() >= span.start()).then(|| (span.end() - span.start()) as f64 / 1e9)
}

/// The time of the span's first event named `name`.
pub fn event_time<S: SpanLike>(span: &S, name: &str) -> Option<u64> {
    let mut at = None;
    span.for_each_event(&mut |n, t| {
        if n == name.as_bytes() && at.is_none_or(|a| t < a) {
            at = Some(t);
        }
    });
    at
}

/// Seconds between two events of the span, when both are there in that order.
pub fn between_events<S: SpanLike>(span: &S, from: &str, to: &str) -> Option<f64> {
    let (a, b) = (event_time(span, from)?, event_time(span, to)?);
    (b >= a).then(|| (b - a) as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_chosen_by_name_or_all_at_once() {
        let choices: Vec<ProfileChoice> = serde_json::from_str(r#"["triton", "ray_serve"]"#).unwrap();
        assert_eq!(
            choices,
            vec![
                ProfileChoice::One(Profile::Triton),
                ProfileChoice::One(Profile::RayServe)
            ]
        );
        assert_eq!(
            Profiles::new(&choices).enabled,
            vec![Profile::Triton, Profile::RayServe]
        );
        let auto: Vec<ProfileChoice> = serde_json::from_str(r#"["auto"]"#).unwrap();
        assert_eq!(Profiles::new(&auto).enabled, Profile::ALL.to_vec());
        assert!(Profiles::new(&[]).enabled.is_empty());
        assert!(serde_json::from_str::<Vec<ProfileChoice>>(r#"["tritonn"]"#).is_err());
    }

    #[test]
    fn a_scope_is_recognised_by_its_server() {
        let resource = [];
        let scope = |name| Scope {
            name,
            resource: &resource,
        };
        let all = Profiles::new(&[ProfileChoice::Auto]);
        assert_eq!(all.detect(&scope("vllm.tracing.otel")), Some(Profile::Vllm));
        assert_eq!(all.detect(&scope("triton-server")), Some(Profile::Triton));
        assert_eq!(all.detect(&scope("sglang server")), Some(Profile::Sglang));
        assert_eq!(
            all.detect(&scope("opentelemetry.instrumentation.fastapi")),
            Some(Profile::Asgi)
        );
        assert_eq!(
            all.detect(&scope("opentelemetry.instrumentation.openai.v1")),
            Some(Profile::Openllmetry)
        );
        assert_eq!(
            all.detect(&scope("opentelemetry.instrumentation.grpc")),
            Some(Profile::GrpcPython)
        );
        assert_eq!(all.detect(&scope("my-service")), None);
    }
}
