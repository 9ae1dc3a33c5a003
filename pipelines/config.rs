//! The YAML configuration in the OpenTelemetry Collector's shape, read in one pass with line numbers.
//!
//! `receivers`, `processors`, `exporters` and `extensions` map component ids (`type[/name]`) to each component's
//! own configuration, which its factory reads directly from the YAML (so an unknown key or a wrong type is
//! reported at its line). `service.pipelines.<signal>[/<name>]` wires them. `${env:VAR}` and
//! `${env:VAR:-default}` are replaced before parsing (line numbers are kept).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::component::{AnyConfig, ComponentId, Kind, Registry};
use crate::data::Signal;

/// A configuration error: what was wrong, where (line, when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub message: String,
    pub line: Option<u64>,
}

impl ConfigError {
    pub(crate) fn at(line: Option<u64>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
            line: line.filter(|l| *l > 0),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A listen or connect address from the configuration, with the line it was set on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub line: Option<u64>,
}

impl Endpoint {
    pub fn new(address: impl Into<String>) -> Endpoint {
        Endpoint {
            address: address.into(),
            line: None,
        }
    }

    /// `address`, and ` (line N)` when it came from a file.
    pub fn describe(&self) -> String {
        match self.line {
            Some(l) => format!("{} (line {l})", self.address),
            None => format!("{} (default)", self.address),
        }
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
        let s = Spanned::<String>::deserialize(d)?;
        let line = s.referenced.line();
        Ok(Endpoint {
            address: s.value,
            line: (line > 0).then_some(line),
        })
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.address)
    }
}

/// Serde helpers for Go-style durations (`200ms`, `10s`, `1m30s`, `1h`).
pub mod duration {
    use super::*;

    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        if s == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(s)
            .map_err(|e| format!("invalid duration `{s}` ({e}); write it like `200ms`, `10s`, `1m30s`"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(de::Error::custom)
    }

    pub fn serialize<S: serde::Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

/// One declared component: its id, the line it was declared on and its parsed configuration.
pub struct Declared {
    pub id: ComponentId,
    pub line: u64,
    pub config: AnyConfig,
}

impl fmt::Debug for Declared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (line {})", self.id, self.line)
    }
}

/// A component reference inside a pipeline, with its line.
pub type Ref = Spanned<String>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub receivers: Vec<Ref>,
    #[serde(default)]
    pub processors: Vec<Ref>,
    #[serde(default)]
    pub exporters: Vec<Ref>,
}

/// One pipeline: `<signal>[/<name>]`.
#[derive(Debug)]
pub struct Pipeline {
    pub id: String,
    pub signal: Signal,
    pub line: u64,
    pub receivers: Vec<(ComponentId, u64)>,
    pub processors: Vec<(ComponentId, u64)>,
    pub exporters: Vec<(ComponentId, u64)>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct LogsTelemetry {
    /// `trace`, `debug`, `info`, `warn`, `error`; `RUST_LOG` wins when set.
    pub level: Option<String>,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub encoding: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MetricsLevel {
    None,
    Basic,
    #[default]
    Normal,
    Detailed,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsTelemetry {
    pub level: MetricsLevel,
    /// Where the collector's own metrics are served for Prometheus to scrape.
    pub address: Endpoint,
    /// Require `Authorization: Bearer <token>` of scrapers.
    pub auth: crate::auth::AuthConfig,
}

impl Default for MetricsTelemetry {
    fn default() -> Self {
        MetricsTelemetry {
            level: MetricsLevel::Normal,
            address: Endpoint::new("127.0.0.1:8888"),
            auth: crate::auth::AuthConfig::default(),
        }
    }
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub logs: LogsTelemetry,
    pub metrics: MetricsTelemetry,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    extensions: Vec<Ref>,
    #[serde(default)]
    pipelines: Option<Ordered<Spanned<String>, PipelineConfig>>,
    #[serde(default)]
    telemetry: TelemetryConfig,
}

/// A YAML mapping read in document order.
#[derive(Debug)]
struct Ordered<K, V>(Vec<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Ordered<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for V2<K, V> {
            type Value = Ordered<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Ordered(Vec::new()))
            }
        }
        d.deserialize_map(V2(PhantomData))
    }
}

/// Every error a configuration has, in the order of their lines: a user fixes them in one go, not one per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
        errors.sort_by_key(|e| e.line.unwrap_or(u64::MAX));
        errors.dedup();
        ConfigErrors(errors)
    }

    /// The first error (there is always one).
    pub fn first(&self) -> &ConfigError {
        &self.0[0]
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A whole configuration, parsed and checked.
#[derive(Debug)]
pub struct Config {
    pub receivers: Vec<Declared>,
    pub processors: Vec<Declared>,
    pub exporters: Vec<Declared>,
    pub connectors: Vec<Declared>,
    pub extensions: Vec<Declared>,
    pub pipelines: Vec<Pipeline>,
    /// `service.extensions`: the extensions to run, in order.
    pub service_extensions: Vec<ComponentId>,
    pub telemetry: TelemetryConfig,
    /// What the loader noticed but accepted (an unset environment variable, a connector written as a processor),
    /// for the caller to log once logging is set up.
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses YAML text (after `${env:...}` substitution) and validates it against the registry; the error holds
    /// every mistake found, each with its line.
    pub fn parse(yaml: &str, registry: &Registry) -> Result<Config, ConfigErrors> {
        let expanded = expand_env(yaml, &|name| std::env::var(name).ok())?;
        let (raw, mut errors) = parse_raw(&expanded.text, registry)?;
        let mut config = raw.validate(registry, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors::sorted(errors));
        }
        config.warnings.splice(0..0, expanded.warnings);
        Ok(config)
    }

    pub fn declared(&self, kind: Kind) -> &[Declared] {
        match kind {
            Kind::Receiver => &self.receivers,
            Kind::Processor => &self.processors,
            Kind::Exporter => &self.exporters,
            Kind::Connector => &self.connectors,
            Kind::Extension => &self.extensions,
        }
    }

    pub fn find(&self, kind: Kind, id: &ComponentId) -> Option<&Declared> {
        self.declared(kind).iter().find(|d| &d.id == id)
    }

    /// Checks that every address the configuration listens on can be bound now; the error names the component,
    /// the key and the line.
    pub fn check_listen_addresses(&self, registry: &Registry) -> Result<(), ConfigError> {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut check = |who: String, endpoint: &Endpoint| -> Result<(), ConfigError> {
            // Port 0 asks the system for any free port: never a clash.
            let any_port = endpoint.address.ends_with(":0");
            if !any_port && let Some(other) = seen.insert(endpoint.address.clone(), who.clone()) {
                return Err(ConfigError::at(
                    endpoint.line,
                    format!("{who}: address {} is also used by {other}", endpoint.address),
                ));
            }
            match std::net::TcpListener::bind(&endpoint.address) {
                Ok(_) => Ok(()),
                Err(e) => Err(ConfigError::at(
                    endpoint.line,
                    format!("{who}: cannot listen on {}: {e}", endpoint.address),
                )),
            }
        };
        for kind in Kind::ALL {
            for declared in self.declared(kind) {
                if !self.is_used(kind, &declared.id) {
                    continue;
                }
                let Some(factory) = registry.factory(kind, declared.id.type_name()) else {
                    continue;
                };
                for (key, endpoint) in factory.listen_endpoints(&declared.config) {
                    check(format!("{}.{}: {key}", kind.section(), declared.id), endpoint)?;
                }
            }
        }
        if self.telemetry.metrics.level != MetricsLevel::None {
            check(
                "service.telemetry.metrics: address".to_string(),
                &self.telemetry.metrics.address,
            )?;
        }
        Ok(())
    }

    /// Whether a declared component is part of the service (unused ones are not built, as in the Collector).
    pub fn is_used(&self, kind: Kind, id: &ComponentId) -> bool {
        let listed = |list: &[(ComponentId, u64)]| list.iter().any(|(r, _)| r == id);
        match kind {
            Kind::Receiver => self.pipelines.iter().any(|p| listed(&p.receivers)),
            Kind::Processor => self.pipelines.iter().any(|p| listed(&p.processors)),
            Kind::Exporter => self.pipelines.iter().any(|p| listed(&p.exporters)),
            Kind::Connector => self.pipelines.iter().any(|p| listed(&p.exporters)),
            Kind::Extension => self.service_extensions.contains(id),
        }
    }

    /// Whether `id` in a pipeline's `receivers` or `exporters` list is a connector.
    pub fn is_connector(&self, id: &ComponentId) -> bool {
        self.find(Kind::Connector, id).is_some()
    }
}

struct RawConfig {
    sections: BTreeMap<Kind, Vec<Declared>>,
    /// Connectors declared under `processors` (the form before connectors existed): id and line.
    legacy_processors: Vec<(ComponentId, u64)>,
    service: Option<RawService>,
}

/// How many components with a broken body one parse may step over to report the mistakes after them.
const MAX_SKIPPED: usize = 64;

/// Parses the document, collecting every mistake: one at a key (an unknown type or section, an id declared twice)
/// is noted and its value skipped; one inside a component's body stops the parser, so the document is parsed
/// again with that body skipped (its defaults stand in), until the rest parses.
fn parse_raw(yaml: &str, registry: &Registry) -> Result<(RawConfig, Vec<ConfigError>), ConfigErrors> {
    if yaml.trim().is_empty() {
        return Err(ConfigError::at(None, "the configuration is empty").into());
    }
    let mut skipped: BTreeSet<(Kind, ComponentId)> = BTreeSet::new();
    let mut broken: Vec<ConfigError> = Vec::new();
    loop {
        let slot = ErrorSlot::default();
        let parsed = serde_saphyr::with_deserializer_from_str(yaml, |d| {
            ConfigSeed {
                registry,
                slot: &slot,
                skipped: &skipped,
            }
            .deserialize(d)
        });
        let mut errors = std::mem::take(&mut *slot.noted.borrow_mut());
        match parsed {
            Ok(raw) => {
                errors.extend(broken);
                return Ok((raw, errors));
            }
            Err(e) => {
                let fatal = slot.fatal.take().unwrap_or_else(|| saphyr_error(&e));
                match slot.broken_body.take() {
                    Some(body) if skipped.len() < MAX_SKIPPED && skipped.insert(body.clone()) => broken.push(fatal),
                    _ => {
                        errors.extend(broken);
                        errors.push(fatal);
                        return Err(ConfigErrors::sorted(errors));
                    }
                }
            }
        }
    }
}

/// What our own visitors found, with exact lines (serde's error type cannot carry them through).
#[derive(Default)]
struct ErrorSlot {
    /// Mistakes stepped over; the parse went on.
    noted: std::cell::RefCell<Vec<ConfigError>>,
    /// The mistake that stopped this parse.
    fatal: std::cell::RefCell<Option<ConfigError>>,
    /// The component whose body held it, to be skipped on the next parse.
    broken_body: std::cell::RefCell<Option<(Kind, ComponentId)>>,
}

impl ErrorSlot {
    fn note(&self, line: u64, message: String) {
        self.noted.borrow_mut().push(ConfigError::at(Some(line), message));
    }

    fn fail<E: de::Error>(&self, line: u64, message: String) -> E {
        let mut slot = self.fatal.borrow_mut();
        if slot.is_none() {
            *slot = Some(ConfigError::at(Some(line), message.clone()));
        }
        E::custom(message)
    }
}

/// Splits serde-saphyr's ` at line N, column M` suffixes (and `line N column M: ` prefix) off a message.
fn split_location(message: &str) -> (String, Option<u64>) {
    let first = message.lines().next().unwrap_or(message).trim();
    let mut msg = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let mut line = None;
    while let Some(pos) = msg.rfind(" at line ") {
        let tail = &msg[pos + " at line ".len()..];
        let Some((n, rest)) = tail.split_once(", column ") else {
            break;
        };
        let (Ok(n), true) = (n.parse::<u64>(), rest.chars().all(|c| c.is_ascii_digit())) else {
            break;
        };
        line = Some(n);
        msg.truncate(pos);
    }
    if let Some(rest) = msg.strip_prefix("line ")
        && let Some((coords, text)) = rest.split_once(": ")
        && coords.split(" column ").all(|x| x.parse::<u64>().is_ok())
    {
        msg = text.to_string();
    }
    (msg, line)
}

fn saphyr_error(e: &serde_saphyr::Error) -> ConfigError {
    let (message, inner_line) = split_location(&e.to_string());
    ConfigError::at(inner_line.or(e.location().map(|l| l.line())), message)
}

struct ConfigSeed<'a> {
    registry: &'a Registry,
    slot: &'a ErrorSlot,
    skipped: &'a BTreeSet<(Kind, ComponentId)>,
}

impl<'de> DeserializeSeed<'de> for ConfigSeed<'_> {
    type Value = RawConfig;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawConfig, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ConfigSeed<'_> {
    type Value = RawConfig;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping with receivers, processors, exporters, connectors, extensions and service")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawConfig, A::Error> {
        let mut raw = RawConfig {
            sections: BTreeMap::new(),
            legacy_processors: Vec::new(),
            service: None,
        };
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let line = key.referenced.line();
            if key.value == "service" {
                raw.service = Some(map.next_value::<Option<RawService>>()?.unwrap_or_default());
                continue;
            }
            let Some(kind) = Kind::ALL.into_iter().find(|k| k.section() == key.value) else {
                self.slot.note(
                    line,
                    format!(
                        "unknown top-level key `{}`; expected one of receivers, processors, exporters, connectors, \
                         extensions, service",
                        key.value
                    ),
                );
                map.next_value::<de::IgnoredAny>()?;
                continue;
            };
            if raw.sections.contains_key(&kind) {
                self.slot.note(line, format!("`{}` declared twice", kind.section()));
                map.next_value::<de::IgnoredAny>()?;
                continue;
            }
            let declared = map.next_value_seed(SectionSeed {
                kind,
                registry: self.registry,
                slot: self.slot,
                skipped: self.skipped,
            })?;
            let mut own = Vec::new();
            for (as_kind, d) in declared {
                if as_kind == kind {
                    own.push(d);
                } else {
                    raw.legacy_processors.push((d.id.clone(), d.line));
                    raw.sections.entry(as_kind).or_default().push(d);
                }
            }
            raw.sections.entry(kind).or_default().extend(own);
        }
        Ok(raw)
    }
}

struct SectionSeed<'a> {
    kind: Kind,
    registry: &'a Registry,
    slot: &'a ErrorSlot,
    skipped: &'a BTreeSet<(Kind, ComponentId)>,
}

impl<'de> DeserializeSeed<'de> for SectionSeed<'_> {
    type Value = Vec<(Kind, Declared)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'a> SectionSeed<'a> {
    /// The factory for a declared id, and the kind it really is: a connector declared under `processors` (as
    /// model_metrics was before connectors) is read as the connector. `Err` says why the id is refused.
    fn factory(&self, id: &ComponentId) -> Result<(Kind, &'a dyn crate::component::Factory), String> {
        let section = self.kind.section();
        if let Some(f) = self.registry.factory(self.kind, id.type_name()) {
            return Ok((self.kind, f));
        }
        if self.kind == Kind::Processor
            && let Some(f) = self.registry.factory(Kind::Connector, id.type_name())
        {
            return Ok((Kind::Connector, f));
        }
        if let Some(other) = Kind::ALL
            .into_iter()
            .find(|k| self.registry.factory(*k, id.type_name()).is_some())
        {
            return Err(format!(
                "{section}.{id}: `{}` is a {}; declare it under `{}`",
                id.type_name(),
                other.singular(),
                other.section()
            ));
        }
        let known = self.registry.type_names(self.kind).join(", ");
        Err(format!(
            "{section}.{id}: unknown {} type `{}`; known types: {}",
            self.kind.singular(),
            id.type_name(),
            if known.is_empty() { "none" } else { &known }
        ))
    }
}

impl<'de> Visitor<'de> for SectionSeed<'_> {
    type Value = Vec<(Kind, Declared)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a mapping of {} ids to their configuration", self.kind.singular())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(Kind, Declared)> = Vec::new();
        let section = self.kind.section();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let line = key.referenced.line();
            let found = ComponentId::parse(&key.value)
                .map_err(|e| format!("{section}: {e}"))
                .and_then(|id| {
                    if out.iter().any(|(_, d)| d.id == id) {
                        return Err(format!("{section}.{id}: declared twice"));
                    }
                    self.factory(&id).map(|(kind, f)| (id, kind, f))
                });
            let (id, kind, factory) = match found {
                Ok(found) => found,
                Err(message) => {
                    self.slot.note(line, message);
                    map.next_value::<de::IgnoredAny>()?;
                    continue;
                }
            };
            let config = if self.skipped.contains(&(kind, id.clone())) {
                // Its body was reported on an earlier parse: skipped now, so that what follows is checked too.
                map.next_value::<de::IgnoredAny>()?;
                factory.default_config()
            } else {
                map.next_value_seed(ComponentSeed {
                    factory,
                    slot: self.slot,
                    what: format!("{section}.{id}"),
                    body: (kind, id.clone()),
                    line,
                })?
            };
            out.push((kind, Declared { id, line, config }));
        }
        Ok(out)
    }
}

struct ComponentSeed<'a> {
    factory: &'a dyn crate::component::Factory,
    slot: &'a ErrorSlot,
    what: String,
    body: (Kind, ComponentId),
    line: u64,
}

impl<'de> DeserializeSeed<'de> for ComponentSeed<'_> {
    type Value = AnyConfig;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<AnyConfig, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ComponentSeed<'_> {
    type Value = AnyConfig;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "the configuration of a `{}` component", self.factory.type_name())
    }

    fn visit_none<E: de::Error>(self) -> Result<AnyConfig, E> {
        Ok(self.factory.default_config())
    }

    fn visit_unit<E: de::Error>(self) -> Result<AnyConfig, E> {
        Ok(self.factory.default_config())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<AnyConfig, D::Error> {
        let mut erased = <dyn erased_serde::Deserializer>::erase(d);
        self.factory.parse_config(&mut erased).map_err(|e| {
            let (message, line) = split_location(&e.to_string());
            *self.slot.broken_body.borrow_mut() = Some(self.body.clone());
            self.slot
                .fail(line.unwrap_or(self.line), format!("{}: {message}", self.what))
        })
    }
}

impl RawConfig {
    /// Builds the configuration, noting every mistake in `errors` (the caller refuses the configuration when it
    /// is not empty).
    fn validate(mut self, registry: &Registry, errors: &mut Vec<ConfigError>) -> Config {
        let service = self.service.take().unwrap_or_else(|| {
            errors.push(ConfigError::at(
                None,
                "missing `service` section: declare service.pipelines",
            ));
            RawService::default()
        });
        let mut section = |k: Kind| self.sections.remove(&k).unwrap_or_default();
        let mut config = Config {
            receivers: section(Kind::Receiver),
            processors: section(Kind::Processor),
            exporters: section(Kind::Exporter),
            connectors: section(Kind::Connector),
            extensions: section(Kind::Extension),
            pipelines: Vec::new(),
            service_extensions: Vec::new(),
            telemetry: service.telemetry,
            warnings: Vec::new(),
        };
        let raw_pipelines = service.pipelines.map(|p| p.0).unwrap_or_default();
        if raw_pipelines.is_empty() {
            errors.push(ConfigError::at(
                None,
                "service.pipelines: no pipeline; declare at least one, e.g. `traces: { receivers: [otlp], exporters: [debug] }`",
            ));
        }
        let mut checker = PipelineChecker {
            config: &config,
            registry,
            legacy: &self.legacy_processors,
            errors,
            moved: BTreeMap::new(),
        };
        let mut pipelines = Vec::new();
        for (key, raw) in raw_pipelines {
            if pipelines.iter().any(|p: &Pipeline| p.id == key.value) {
                checker.error(
                    key.referenced.line(),
                    format!("service.pipelines.{}: declared twice", key.value),
                );
                continue;
            }
            if let Some(p) = checker.pipeline(key, raw) {
                pipelines.push(p);
            }
        }
        let moved = std::mem::take(&mut checker.moved);
        config.pipelines = pipelines;
        for (id, (line, into)) in moved {
            config.warnings.push(format!(
                "processors.{id} (line {line}): `{}` is a connector; this processor form is read as one. Write it \
                 under `connectors:` and list it under `exporters` of {} instead of `processors`; the metrics \
                 pipelines keep it under `receivers`",
                id.type_name(),
                into.join(", ")
            ));
        }
        let legacy: Vec<ComponentId> = self.legacy_processors.iter().map(|(id, _)| id.clone()).collect();
        let unfed = check_connectors(&config, registry, &legacy, errors);
        config.warnings.extend(unfed);
        check_loops(&config, errors);
        config.service_extensions = resolve_extensions(&config, &service.extensions, errors);
        if let Err(e) = config
            .telemetry
            .metrics
            .auth
            .validate("service.telemetry.metrics.auth.")
        {
            errors.push(ConfigError::at(None, e));
        }
        if let Some(level) = &config.telemetry.logs.level
            && let Err(e) = parse_log_level(level)
        {
            errors.push(ConfigError::at(None, format!("service.telemetry.logs.level: {e}")));
        }
        config
    }
}

/// Resolves the references of pipelines, noting each mistake and going on.
struct PipelineChecker<'a> {
    config: &'a Config,
    registry: &'a Registry,
    legacy: &'a [(ComponentId, u64)],
    errors: &'a mut Vec<ConfigError>,
    /// Connectors written as processors: where they were declared and the pipelines they were moved to.
    moved: BTreeMap<ComponentId, (u64, Vec<String>)>,
}

/// What a pipeline's reference names.
enum Named {
    Component,
    Connector,
    /// A connector under `processors` (the form before connectors): it becomes an exporter of the pipeline.
    LegacyConnector,
}

impl PipelineChecker<'_> {
    fn error(&mut self, line: u64, message: String) {
        self.errors.push(ConfigError::at(Some(line), message));
    }

    fn pipeline(&mut self, key: Spanned<String>, raw: PipelineConfig) -> Option<Pipeline> {
        let line = key.referenced.line();
        let id = key.value;
        let where_ = format!("service.pipelines.{id}");
        let signal_name = id.split_once('/').map(|(s, _)| s).unwrap_or(&id);
        let Some(signal) = Signal::parse(signal_name) else {
            self.error(
                line,
                format!("{where_}: unknown signal `{signal_name}`; a pipeline id is traces, metrics or logs, optionally followed by /name"),
            );
            return None;
        };
        // An empty list is reported; a list whose references were all wrong already has its errors.
        let empty = |what: &str, refs: &[Ref], legacy_too: bool| {
            (refs.is_empty() && !legacy_too)
                .then(|| ConfigError::at(Some(line), format!("{where_}: must have at least one {what}")))
        };
        let has_legacy = raw
            .processors
            .iter()
            .any(|r| self.legacy.iter().any(|(l, _)| l.to_string() == r.value));
        let missing: Vec<ConfigError> = [
            empty("receiver", &raw.receivers, false),
            empty("exporter", &raw.exporters, has_legacy),
        ]
        .into_iter()
        .flatten()
        .collect();
        let receivers = self.list(&where_, Kind::Receiver, signal, raw.receivers);
        let mut processors = self.list(&where_, Kind::Processor, signal, raw.processors);
        let mut exporters = self.list(&where_, Kind::Exporter, signal, raw.exporters);
        let legacy: Vec<(ComponentId, u64)> = processors
            .iter()
            .filter(|(p, _)| self.legacy.iter().any(|(l, _)| l == p))
            .cloned()
            .collect();
        for (connector, at) in legacy {
            processors.retain(|(p, _)| p != &connector);
            let declared_at = self
                .legacy
                .iter()
                .find(|(l, _)| l == &connector)
                .map_or(at, |(_, l)| *l);
            let entry = self.moved.entry(connector.clone()).or_insert((declared_at, Vec::new()));
            entry.1.push(format!("pipeline {id}"));
            if !exporters.iter().any(|(e, _)| e == &connector) {
                exporters.insert(0, (connector, at));
            }
        }
        if !missing.is_empty() || receivers.is_empty() || exporters.is_empty() {
            self.errors.extend(missing);
            return None;
        }
        Some(Pipeline {
            id,
            signal,
            line,
            receivers,
            processors,
            exporters,
        })
    }

    /// Resolves one list of a pipeline; a reference that is wrong is reported and left out.
    fn list(&mut self, where_: &str, list: Kind, signal: Signal, refs: Vec<Ref>) -> Vec<(ComponentId, u64)> {
        let mut out: Vec<(ComponentId, u64)> = Vec::new();
        let list_name = list.section();
        for r in refs {
            let rline = r.referenced.line();
            let rid = match ComponentId::parse(&r.value) {
                Ok(rid) => rid,
                Err(e) => {
                    self.error(rline, format!("{where_}.{list_name}: {e}"));
                    continue;
                }
            };
            if out.iter().any(|(o, _)| o == &rid) {
                self.error(rline, format!("{where_}.{list_name}: `{rid}` is listed twice"));
                continue;
            }
            match self.named(where_, list, signal, &rid) {
                Ok(_) => out.push((rid, rline)),
                Err(message) => self.error(rline, message),
            }
        }
        out
    }

    /// What `rid` in a pipeline's `list` is, or why it cannot stand there.
    fn named(&self, where_: &str, list: Kind, signal: Signal, rid: &ComponentId) -> Result<Named, String> {
        let list_name = list.section();
        let config = self.config;
        if config.find(list, rid).is_some() {
            let factory = self.registry.factory(list, rid.type_name());
            if let Some(f) = factory
                && !f.signals().contains(&signal)
            {
                let supported: Vec<&str> = f.signals().iter().map(|s| s.as_str()).collect();
                return Err(format!(
                    "{where_}.{list_name}: {} `{rid}` does not support {signal} (it supports {})",
                    list.singular(),
                    supported.join(", ")
                ));
            }
            return Ok(Named::Component);
        }
        if config.is_connector(rid) {
            let routes = self
                .registry
                .connectors
                .get(rid.type_name())
                .map_or(&[][..], |f| f.routes());
            let fits = match list {
                Kind::Receiver => routes.iter().any(|(_, to)| *to == signal),
                Kind::Exporter | Kind::Processor => routes.iter().any(|(from, _)| *from == signal),
                _ => false,
            };
            let legacy = list == Kind::Processor && self.legacy.iter().any(|(l, _)| l == rid);
            return match (fits, list) {
                (true, Kind::Receiver | Kind::Exporter) => Ok(Named::Connector),
                (true, _) if legacy => Ok(Named::LegacyConnector),
                (_, Kind::Processor) if !legacy => Err(format!(
                    "{where_}.processors: `{rid}` is a connector; list it under `exporters` of the pipeline it reads and under `receivers` of the pipelines it feeds"
                )),
                _ => Err(format!(
                    "{where_}.{list_name}: connector `{rid}` cannot stand there in a {signal} pipeline (it connects {})",
                    describe_routes(routes)
                )),
            };
        }
        let declared_elsewhere = Kind::ALL.into_iter().find(|k| config.find(*k, rid).is_some());
        Err(match declared_elsewhere {
            Some(other) => format!(
                "{where_}.{list_name}: `{rid}` is declared under `{}`; a {} cannot stand under `{list_name}`",
                other.section(),
                other.singular()
            ),
            None => format!(
                "{where_}.{list_name}: references {} `{rid}`, which is not declared under `{list_name}`",
                list.singular()
            ),
        })
    }
}

fn describe_routes(routes: &[(Signal, Signal)]) -> String {
    let names: Vec<String> = routes.iter().map(|(f, t)| format!("{f} to {t}")).collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// The routes of a connector id in a configuration.
fn routes_of(config: &Config, registry: &Registry, id: &ComponentId) -> &'static [(Signal, Signal)] {
    match config.find(Kind::Connector, id) {
        Some(_) => registry.connectors.get(id.type_name()).map_or(&[], |f| f.routes()),
        None => &[],
    }
}

/// A connector must be the exporter of a pipeline and the receiver of another it can feed, as in the Collector. One
/// written as a processor (the form before connectors) was allowed to feed nothing: it gets the warning it had then.
fn check_connectors(
    config: &Config,
    registry: &Registry,
    legacy: &[ComponentId],
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for p in &config.pipelines {
        for (cid, line) in p.exporters.iter().filter(|(c, _)| config.is_connector(c)) {
            let routes = routes_of(config, registry, cid);
            let feeds = config
                .pipelines
                .iter()
                .any(|q| q.receivers.iter().any(|(r, _)| r == cid) && routes.contains(&(p.signal, q.signal)));
            if !feeds && legacy.contains(cid) {
                warnings.push(format!(
                    "processors.{cid}: no metrics pipeline lists it under `receivers`: its metrics go nowhere"
                ));
            } else if !feeds {
                errors.push(ConfigError::at(
                    Some(*line),
                    format!(
                        "service.pipelines.{}.exporters: connector `{cid}` is not under `receivers` of any pipeline it can feed ({})",
                        p.id,
                        describe_routes(routes)
                    ),
                ));
            }
        }
        for (cid, line) in p.receivers.iter().filter(|(c, _)| config.is_connector(c)) {
            let routes = routes_of(config, registry, cid);
            let fed = config
                .pipelines
                .iter()
                .any(|q| q.exporters.iter().any(|(e, _)| e == cid) && routes.contains(&(q.signal, p.signal)));
            if !fed {
                errors.push(ConfigError::at(
                    Some(*line),
                    format!(
                        "service.pipelines.{}.receivers: connector `{cid}` is not under `exporters` of any pipeline, so it has nothing to emit ({})",
                        p.id,
                        describe_routes(routes)
                    ),
                ));
            }
        }
    }
    warnings
}

/// The pipelines a pipeline feeds through connectors, with the connector and the line it is listed on.
pub(crate) fn downstream<'a>(
    config: &'a Config,
    p: &'a Pipeline,
) -> impl Iterator<Item = (usize, &'a ComponentId, u64)> + 'a {
    p.exporters
        .iter()
        .filter(|(c, _)| config.is_connector(c))
        .flat_map(move |(cid, line)| {
            config
                .pipelines
                .iter()
                .enumerate()
                .filter(move |(_, q)| q.receivers.iter().any(|(r, _)| r == cid))
                .map(move |(i, _)| (i, cid, *line))
        })
}

/// A loop through connectors would send a pipeline's own output back into it forever.
fn check_loops(config: &Config, errors: &mut Vec<ConfigError>) {
    // Depth-first search with colours: 1 on the path, 2 done.
    fn visit(
        config: &Config,
        at: usize,
        colour: &mut [u8],
        path: &mut Vec<(usize, String, u64)>,
    ) -> Option<ConfigError> {
        colour[at] = 1;
        for (next, cid, line) in downstream(config, &config.pipelines[at]) {
            path.push((at, cid.to_string(), line));
            if colour[next] == 1 {
                let start = path.iter().position(|(p, _, _)| *p == next).unwrap_or(0);
                let cycle: Vec<String> = path[start..]
                    .iter()
                    .map(|(p, c, _)| format!("{} -> {c}", config.pipelines[*p].id))
                    .collect();
                return Some(ConfigError::at(
                    Some(path[start].2),
                    format!(
                        "service.pipelines: a loop through connectors: {} -> {}; a pipeline must not receive what it exports",
                        cycle.join(" -> "),
                        config.pipelines[next].id
                    ),
                ));
            }
            if colour[next] == 0
                && let Some(e) = visit(config, next, colour, path)
            {
                return Some(e);
            }
            path.pop();
        }
        colour[at] = 2;
        None
    }
    let mut colour = vec![0u8; config.pipelines.len()];
    for start in 0..config.pipelines.len() {
        if colour[start] == 0
            && let Some(e) = visit(config, start, &mut colour, &mut Vec::new())
        {
            errors.push(e);
            return;
        }
    }
}

fn resolve_extensions(config: &Config, refs: &[Ref], errors: &mut Vec<ConfigError>) -> Vec<ComponentId> {
    let mut out = Vec::new();
    for ext in refs {
        let line = ext.referenced.line();
        match ComponentId::parse(&ext.value) {
            Err(e) => errors.push(ConfigError::at(Some(line), format!("service.extensions: {e}"))),
            Ok(id) if config.find(Kind::Extension, &id).is_none() => errors.push(ConfigError::at(
                Some(line),
                format!("service.extensions: references extension `{id}`, which is not declared under `extensions`"),
            )),
            Ok(id) if out.contains(&id) => errors.push(ConfigError::at(
                Some(line),
                format!("service.extensions: `{id}` is listed twice"),
            )),
            Ok(id) => out.push(id),
        }
    }
    out
}

/// Checks a log level name and returns it in the form `tracing` filters take.
pub fn parse_log_level(level: &str) -> Result<&'static str, String> {
    match level.to_ascii_lowercase().as_str() {
        "trace" => Ok("trace"),
        "debug" => Ok("debug"),
        "info" => Ok("info"),
        "warn" | "warning" => Ok("warn"),
        "error" => Ok("error"),
        "off" | "none" => Ok("off"),
        _ => Err(format!(
            "unknown level `{level}`; use one of trace, debug, info, warn, error"
        )),
    }
}

pub use crate::env_subst::{Expanded, expand_env};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(duration::parse("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(duration::parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration::parse("0").unwrap(), Duration::ZERO);
        assert!(duration::parse("ten seconds").is_err());
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use crate::component::*;
    use std::sync::Arc;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct FakeConfig {
        endpoint: Endpoint,
        count: u32,
    }
    impl Default for FakeConfig {
        fn default() -> Self {
            FakeConfig {
                endpoint: Endpoint::new("127.0.0.1:0"),
                count: 1,
            }
        }
    }
    impl ComponentConfig for FakeConfig {
        fn validate(&self) -> Result<(), String> {
            if self.count == 0 {
                return Err("count: must be at least 1".into());
            }
            Ok(())
        }
    }
    struct FakeReceiver;
    crate::factory!(FakeReceiver, "fake", FakeConfig, &[Signal::Traces, Signal::Metrics]);
    impl ReceiverFactory for FakeReceiver {
        fn create(&self, _: &AnyConfig, _: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
            Err(ComponentError::new("not in this test"))
        }
    }
    struct FakeExporter;
    crate::factory!(FakeExporter, "sink", FakeConfig, &[Signal::Traces]);
    struct FakeSinkAll;
    crate::factory!(FakeSinkAll, "sink", FakeConfig, &[Signal::Traces, Signal::Metrics]);
    impl ExporterFactory for FakeSinkAll {
        fn create(&self, _: &AnyConfig, _: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
            Err(ComponentError::new("not in this test"))
        }
    }
    impl ExporterFactory for FakeExporter {
        fn create(&self, _: &AnyConfig, _: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
            Err(ComponentError::new("not in this test"))
        }
    }

    /// A connector from traces to traces or to metrics.
    struct Relay;
    crate::factory!(Relay, "relay", FakeConfig, &[Signal::Traces, Signal::Metrics]);
    impl ConnectorFactory for Relay {
        fn routes(&self) -> &'static [(Signal, Signal)] {
            &[(Signal::Traces, Signal::Traces), (Signal::Traces, Signal::Metrics)]
        }
        fn create(&self, _: &AnyConfig, _: ConnectorContext) -> Result<Arc<dyn Connector>, ComponentError> {
            Err(ComponentError::new("not in this test"))
        }
    }

    fn registry() -> Registry {
        Registry::default()
            .receiver(FakeReceiver)
            .exporter(FakeExporter)
            .connector(Relay)
    }

    fn err(yaml: &str) -> ConfigError {
        Config::parse(yaml, &registry())
            .expect_err("config should be rejected")
            .0
            .remove(0)
    }

    fn errors(yaml: &str) -> Vec<ConfigError> {
        Config::parse(yaml, &registry())
            .expect_err("config should be rejected")
            .0
    }

    #[test]
    fn valid_config_parses_with_ids_and_lines() {
        let c = Config::parse(
            "receivers:\n  fake:\n  fake/two: { count: 3 }\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces/a:\n      receivers: [fake, fake/two]\n      exporters: [sink]\n",
            &registry(),
        )
        .unwrap();
        assert_eq!(c.receivers.len(), 2);
        assert_eq!(c.receivers[1].id.to_string(), "fake/two");
        assert_eq!(c.receivers[1].line, 3);
        assert_eq!(c.pipelines[0].signal, Signal::Traces);
        assert_eq!(c.pipelines[0].receivers[1].1, 9);
        let conf: &FakeConfig = config_as(&c.receivers[1].config).unwrap();
        assert_eq!(conf.count, 3);
    }

    #[test]
    fn unknown_type_names_component_and_line() {
        let e = err(
            "receivers:\n  fake:\n  kafka/x:\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces: { receivers: [fake], exporters: [sink] }\n",
        );
        assert!(
            e.message.contains("receivers.kafka/x") && e.message.contains("unknown receiver type `kafka`"),
            "{e}"
        );
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn unknown_key_and_wrong_type_name_key_and_line() {
        let e = err(
            "receivers:\n  fake:\n    count: 2\n    colour: red\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces: { receivers: [fake], exporters: [sink] }\n",
        );
        assert!(e.message.contains("colour"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        let e = err(
            "receivers:\n  fake:\n    count: many\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces: { receivers: [fake], exporters: [sink] }\n",
        );
        assert!(
            e.message.contains("many") || e.message.contains("u32") || e.message.contains("integer"),
            "{e}"
        );
        assert_eq!(e.line, Some(3), "{e}");
        let e = err(
            "receivers:\n  fake:\n    count: 0\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces: { receivers: [fake], exporters: [sink] }\n",
        );
        assert!(e.message.contains("count: must be at least 1"), "{e}");
        assert!(e.line.is_some_and(|l| (2..=4).contains(&l)), "{e}");
    }

    #[test]
    fn undeclared_reference_and_unsupported_signal() {
        let e = err(
            "receivers:\n  fake:\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces:\n      receivers: [fake]\n      exporters: [sink, sink/other]\n",
        );
        assert!(
            e.message.contains("service.pipelines.traces.exporters") && e.message.contains("`sink/other`"),
            "{e}"
        );
        assert_eq!(e.line, Some(9));
        let e = err(
            "receivers:\n  fake:\nexporters:\n  sink:\nservice:\n  pipelines:\n    logs:\n      receivers: [fake]\n      exporters: [sink]\n",
        );
        assert!(e.message.contains("does not support logs"), "{e}");
        assert_eq!(e.line, Some(8));
        let e = err(
            "receivers:\n  fake:\nexporters:\n  sink:\nservice:\n  pipelines:\n    spans: { receivers: [fake], exporters: [sink] }\n",
        );
        assert!(e.message.contains("unknown signal `spans`"), "{e}");
        let e = err("receivers:\n  fake:\nexporters:\n  sink:\nservic:\n  pipelines: {}\n");
        assert!(e.message.contains("servic"), "{e}");
        assert_eq!(e.line, Some(5));
    }

    #[test]
    fn a_connector_is_the_exporter_of_one_pipeline_and_the_receiver_of_another() {
        let c = Config::parse(
            "receivers:\n  fake:\nconnectors:\n  relay:\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces: { receivers: [fake], exporters: [relay] }\n    metrics: { receivers: [relay], exporters: [sink] }\n",
            &Registry::default()
                .receiver(FakeReceiver)
                .connector(Relay)
                .exporter(FakeSinkAll),
        )
        .unwrap();
        assert_eq!(c.connectors.len(), 1);
        assert!(c.is_used(Kind::Connector, &c.connectors[0].id));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // Exported to but never received from: its output would go nowhere.
        let e = err(
            "receivers:\n  fake:\nconnectors:\n  relay:\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces: { receivers: [fake], exporters: [relay, sink] }\n",
        );
        assert!(e.message.contains("connector `relay` is not under `receivers`"), "{e}");
        assert_eq!(e.line, Some(9));
        // A connector from traces cannot be the exporter of a metrics pipeline.
        let all = errors(
            "receivers:\n  fake:\nconnectors:\n  relay:\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces: { receivers: [relay], exporters: [sink] }\n    metrics: { receivers: [fake], exporters: [relay] }\n",
        );
        assert!(
            all.iter()
                .any(|e| e.message.contains("cannot stand there in a metrics pipeline") && e.line == Some(10)),
            "{all:?}"
        );
    }

    /// The form before connectors let model_metrics feed nothing, with a warning; it still does.
    #[test]
    fn a_connector_written_as_a_processor_may_feed_nothing_with_a_warning() {
        let c = Config::parse(
            "receivers:\n  fake:\nprocessors:\n  relay:\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces: { receivers: [fake], processors: [relay], exporters: [sink] }\n",
            &registry(),
        )
        .unwrap();
        assert_eq!(c.pipelines[0].processors.len(), 0, "read as the connector");
        assert_eq!(c.pipelines[0].exporters[0].0.to_string(), "relay");
        assert!(
            c.warnings.iter().any(|w| w.contains("its metrics go nowhere")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn a_loop_through_connectors_is_refused() {
        let errors = errors(
            "receivers:\n  fake:\nconnectors:\n  relay/a:\n  relay/b:\nexporters:\n  sink:\nservice:\n  pipelines:\n    traces/in: { receivers: [fake, relay/b], exporters: [relay/a] }\n    traces/out: { receivers: [relay/a], exporters: [sink, relay/b] }\n",
        );
        let e = errors
            .iter()
            .find(|e| e.message.contains("loop"))
            .expect("a loop error");
        assert!(
            e.message
                .contains("traces/in -> relay/a -> traces/out -> relay/b -> traces/in"),
            "{e}"
        );
        assert_eq!(e.line, Some(10), "{e}");
    }

    #[test]
    fn independent_mistakes_are_all_reported_each_with_its_line() {
        let errors = errors(
            "receivers:\n  fake:\n    count: 0\n  fake/b:\n    colour: red\nexporters:\n  sink:\n  kafka:\nservice:\n  pipelines:\n    traces: { receivers: [fake, fake/b], exporters: [sink, sink/missing] }\n",
        );
        let found: Vec<(Option<u64>, &str)> = errors.iter().map(|e| (e.line, e.message.as_str())).collect();
        assert_eq!(errors.len(), 4, "{found:?}");
        assert!(
            errors[0].message.contains("count: must be at least 1")
                && errors[0].line.is_some_and(|l| (2..=3).contains(&l)),
            "{found:?}"
        );
        assert!(
            errors[1].message.contains("receivers.fake/b") && errors[1].message.contains("colour"),
            "{found:?}"
        );
        assert_eq!(errors[1].line, Some(5), "{found:?}");
        assert!(errors[2].message.contains("unknown exporter type `kafka`"), "{found:?}");
        assert_eq!(errors[2].line, Some(8), "{found:?}");
        assert!(errors[3].message.contains("`sink/missing`"), "{found:?}");
        assert_eq!(errors[3].line, Some(11), "{found:?}");
    }
}
