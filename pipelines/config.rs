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

/// A whole configuration, parsed and checked.
#[derive(Debug)]
pub struct Config {
    pub receivers: Vec<Declared>,
    pub processors: Vec<Declared>,
    pub exporters: Vec<Declared>,
    pub extensions: Vec<Declared>,
    pub pipelines: Vec<Pipeline>,
    pub telemetry: TelemetryConfig,
    /// What the loader noticed but accepted (an unset environment variable), for the caller to log once logging
    /// is set up.
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses YAML text (after `${env:...}` substitution) and validates it against the registry.
    pub fn parse(yaml: &str, registry: &Registry) -> Result<Config, ConfigError> {
        let expanded = expand_env(yaml, &|name| std::env::var(name).ok())?;
        let raw = parse_raw(&expanded.text, registry)?;
        let mut config = raw.validate(registry)?;
        config.warnings = expanded.warnings;
        Ok(config)
    }

    pub fn declared(&self, kind: Kind) -> &[Declared] {
        match kind {
            Kind::Receiver => &self.receivers,
            Kind::Processor => &self.processors,
            Kind::Exporter => &self.exporters,
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
        for kind in [Kind::Receiver, Kind::Exporter, Kind::Extension] {
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

    /// Whether a declared component is part of some pipeline (unused ones are not built, as in the Collector).
    pub fn is_used(&self, kind: Kind, id: &ComponentId) -> bool {
        self.pipelines.iter().any(|p| {
            let list = match kind {
                Kind::Receiver => &p.receivers,
                Kind::Processor => &p.processors,
                Kind::Exporter => &p.exporters,
                Kind::Extension => return false,
            };
            list.iter().any(|(r, _)| r == id)
        })
    }
}

struct RawConfig {
    receivers: Vec<Declared>,
    processors: Vec<Declared>,
    exporters: Vec<Declared>,
    extensions: Vec<Declared>,
    service: Option<RawService>,
}

fn parse_raw(yaml: &str, registry: &Registry) -> Result<RawConfig, ConfigError> {
    if yaml.trim().is_empty() {
        return Err(ConfigError::at(None, "the configuration is empty"));
    }
    // Duplicate keys are an error by default in serde-saphyr.
    let slot = ErrorSlot::default();
    serde_saphyr::with_deserializer_from_str(yaml, |d| ConfigSeed { registry, slot: &slot }.deserialize(d))
        .map_err(|e| slot.0.take().unwrap_or_else(|| saphyr_error(&e)))
}

/// The first error found by our own visitors, with the exact line (serde's error type cannot carry it through).
#[derive(Default)]
struct ErrorSlot(std::cell::RefCell<Option<ConfigError>>);

impl ErrorSlot {
    fn fail<E: de::Error>(&self, line: u64, message: String) -> E {
        let mut slot = self.0.borrow_mut();
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
        f.write_str("a mapping with receivers, processors, exporters, extensions and service")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawConfig, A::Error> {
        let mut raw = RawConfig {
            receivers: Vec::new(),
            processors: Vec::new(),
            exporters: Vec::new(),
            extensions: Vec::new(),
            service: None,
        };
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let line = key.referenced.line();
            let kind = match key.value.as_str() {
                "receivers" => Kind::Receiver,
                "processors" => Kind::Processor,
                "exporters" => Kind::Exporter,
                "extensions" => Kind::Extension,
                "connectors" => {
                    return Err(self.slot.fail(
                        line,
                        "`connectors` are not supported: infercol derives metrics with the `model_metrics` processor, \
                         which feeds the metrics pipelines that list it under `receivers`"
                            .into(),
                    ));
                }
                "service" => {
                    raw.service = Some(map.next_value::<Option<RawService>>()?.unwrap_or_default());
                    continue;
                }
                other => {
                    return Err(self.slot.fail(
                        line,
                        format!(
                            "unknown top-level key `{other}`; expected one of receivers, processors, exporters, \
                         extensions, service"
                        ),
                    ));
                }
            };
            let declared = map.next_value_seed(SectionSeed {
                kind,
                registry: self.registry,
                slot: self.slot,
            })?;
            match kind {
                Kind::Receiver => raw.receivers = declared,
                Kind::Processor => raw.processors = declared,
                Kind::Exporter => raw.exporters = declared,
                Kind::Extension => raw.extensions = declared,
            }
        }
        Ok(raw)
    }
}

struct SectionSeed<'a> {
    kind: Kind,
    registry: &'a Registry,
    slot: &'a ErrorSlot,
}

impl<'de> DeserializeSeed<'de> for SectionSeed<'_> {
    type Value = Vec<Declared>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Declared>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for SectionSeed<'_> {
    type Value = Vec<Declared>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a mapping of {} ids to their configuration", self.kind.singular())
    }

    fn visit_none<E: de::Error>(self) -> Result<Vec<Declared>, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<Declared>, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Declared>, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Declared>, A::Error> {
        let mut out: Vec<Declared> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let section = self.kind.section();
            let line = key.referenced.line();
            let id = ComponentId::parse(&key.value).map_err(|e| self.slot.fail(line, format!("{section}: {e}")))?;
            let Some(factory) = self.registry.factory(self.kind, id.type_name()) else {
                let known = self.registry.type_names(self.kind).join(", ");
                return Err(self.slot.fail(
                    line,
                    format!(
                        "{section}.{id}: unknown {} type `{}`; known types: {}",
                        self.kind.singular(),
                        id.type_name(),
                        if known.is_empty() { "none" } else { &known }
                    ),
                ));
            };
            if out.iter().any(|d| d.id == id) {
                return Err(self.slot.fail(line, format!("{section}.{id}: declared twice")));
            }
            let config = map.next_value_seed(ComponentSeed {
                factory,
                slot: self.slot,
                what: format!("{section}.{id}"),
                line,
            })?;
            out.push(Declared {
                id,
                line: key.referenced.line(),
                config,
            });
        }
        Ok(out)
    }
}

struct ComponentSeed<'a> {
    factory: &'a dyn crate::component::Factory,
    slot: &'a ErrorSlot,
    what: String,
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
            self.slot
                .fail(line.unwrap_or(self.line), format!("{}: {message}", self.what))
        })
    }
}

impl RawConfig {
    fn validate(self, registry: &Registry) -> Result<Config, ConfigError> {
        let service = self
            .service
            .ok_or_else(|| ConfigError::at(None, "missing `service` section: declare service.pipelines"))?;
        let raw_pipelines = service.pipelines.map(|p| p.0).unwrap_or_default();
        if raw_pipelines.is_empty() {
            return Err(ConfigError::at(
                None,
                "service.pipelines: no pipeline; declare at least one, e.g. `traces: { receivers: [otlp], exporters: [debug] }`",
            ));
        }
        let find = |list: &[Declared], id: &ComponentId| list.iter().any(|d| &d.id == id);
        let mut pipelines = Vec::new();
        let mut seen_ids = BTreeSet::new();
        for (key, raw) in raw_pipelines {
            let line = key.referenced.line();
            let id = key.value;
            let where_ = format!("service.pipelines.{id}");
            let signal_name = id.split_once('/').map(|(s, _)| s).unwrap_or(&id);
            let signal = Signal::parse(signal_name).ok_or_else(|| {
                ConfigError::at(
                    Some(line),
                    format!("{where_}: unknown signal `{signal_name}`; a pipeline id is traces, metrics or logs, optionally followed by /name"),
                )
            })?;
            if !seen_ids.insert(id.clone()) {
                return Err(ConfigError::at(Some(line), format!("{where_}: declared twice")));
            }
            if raw.receivers.is_empty() {
                return Err(ConfigError::at(
                    Some(line),
                    format!("{where_}: must have at least one receiver"),
                ));
            }
            if raw.exporters.is_empty() {
                return Err(ConfigError::at(
                    Some(line),
                    format!("{where_}: must have at least one exporter"),
                ));
            }
            let resolve = |kind: Kind, refs: Vec<Ref>| -> Result<Vec<(ComponentId, u64)>, ConfigError> {
                let mut out: Vec<(ComponentId, u64)> = Vec::new();
                let list_name = kind.section();
                for r in refs {
                    let rline = r.referenced.line();
                    let rid = ComponentId::parse(&r.value)
                        .map_err(|e| ConfigError::at(Some(rline), format!("{where_}.{list_name}: {e}")))?;
                    if out.iter().any(|(o, _)| o == &rid) {
                        return Err(ConfigError::at(
                            Some(rline),
                            format!("{where_}.{list_name}: `{rid}` is listed twice"),
                        ));
                    }
                    let declared_as_kind = find(
                        match kind {
                            Kind::Receiver => &self.receivers,
                            Kind::Processor => &self.processors,
                            _ => &self.exporters,
                        },
                        &rid,
                    );
                    // A processor that emits metrics may stand under `receivers` of a metrics pipeline.
                    let emitter = kind == Kind::Receiver
                        && !declared_as_kind
                        && find(&self.processors, &rid)
                        && registry
                            .processors
                            .get(rid.type_name())
                            .is_some_and(|f| f.emits_metrics());
                    if emitter {
                        if signal != Signal::Metrics {
                            return Err(ConfigError::at(
                                Some(rline),
                                format!(
                                    "{where_}.receivers: processor `{rid}` emits metrics; list it under receivers of a metrics pipeline only"
                                ),
                            ));
                        }
                        out.push((rid, rline));
                        continue;
                    }
                    if !declared_as_kind {
                        return Err(ConfigError::at(
                            Some(rline),
                            format!(
                                "{where_}.{list_name}: references {} `{rid}`, which is not declared under `{list_name}`",
                                kind.singular()
                            ),
                        ));
                    }
                    let factory = registry.factory(kind, rid.type_name());
                    if let Some(f) = factory
                        && !f.signals().contains(&signal)
                    {
                        let supported: Vec<&str> = f.signals().iter().map(|s| s.as_str()).collect();
                        return Err(ConfigError::at(
                            Some(rline),
                            format!(
                                "{where_}.{list_name}: {} `{rid}` does not support {signal} (it supports {})",
                                kind.singular(),
                                supported.join(", ")
                            ),
                        ));
                    }
                    out.push((rid, rline));
                }
                Ok(out)
            };
            let receivers = resolve(Kind::Receiver, raw.receivers)?;
            let processors = resolve(Kind::Processor, raw.processors)?;
            let exporters = resolve(Kind::Exporter, raw.exporters)?;
            pipelines.push(Pipeline {
                id,
                signal,
                line,
                receivers,
                processors,
                exporters,
            });
        }
        // A processor feeding a metrics pipeline must not sit in that pipeline's own chain (a loop).
        for p in &pipelines {
            for (rid, rline) in &p.receivers {
                if self.receivers.iter().any(|d| &d.id == rid) {
                    continue;
                }
                let consumers_of_emitter = pipelines.iter().filter(|q| q.processors.iter().any(|(x, _)| x == rid));
                for q in consumers_of_emitter {
                    if q.signal == Signal::Metrics {
                        return Err(ConfigError::at(
                            Some(*rline),
                            format!(
                                "service.pipelines.{}: processor `{rid}` emits metrics into this pipeline and also sits in metrics pipeline `{}`, which makes a loop",
                                p.id, q.id
                            ),
                        ));
                    }
                }
                if !pipelines.iter().any(|q| q.processors.iter().any(|(x, _)| x == rid)) {
                    return Err(ConfigError::at(
                        Some(*rline),
                        format!(
                            "service.pipelines.{}.receivers: processor `{rid}` emits metrics only from the spans it sees; place it under `processors` of a traces pipeline too",
                            p.id
                        ),
                    ));
                }
            }
        }
        for ext in &service.extensions {
            let rline = ext.referenced.line();
            let id = ComponentId::parse(&ext.value)
                .map_err(|e| ConfigError::at(Some(rline), format!("service.extensions: {e}")))?;
            if !find(&self.extensions, &id) {
                return Err(ConfigError::at(
                    Some(rline),
                    format!(
                        "service.extensions: references extension `{id}`, which is not declared under `extensions`"
                    ),
                ));
            }
        }
        service
            .telemetry
            .metrics
            .auth
            .validate("service.telemetry.metrics.auth.")
            .map_err(|e| ConfigError::at(None, e))?;
        if let Some(level) = &service.telemetry.logs.level {
            parse_log_level(level).map_err(|e| ConfigError::at(None, format!("service.telemetry.logs.level: {e}")))?;
        }
        Ok(Config {
            receivers: self.receivers,
            processors: self.processors,
            exporters: self.exporters,
            extensions: self.extensions,
            pipelines,
            telemetry: service.telemetry,
            warnings: Vec::new(),
        })
    }
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
    impl ExporterFactory for FakeExporter {
        fn create(&self, _: &AnyConfig, _: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
            Err(ComponentError::new("not in this test"))
        }
    }

    fn registry() -> Registry {
        Registry::default().receiver(FakeReceiver).exporter(FakeExporter)
    }

    fn err(yaml: &str) -> ConfigError {
        Config::parse(yaml, &registry()).expect_err("config should be rejected")
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
}
