//! Component identity, the Receiver / Processor / Exporter traits and their factories.
//!
//! As in the OpenTelemetry Collector, every component type has a factory that knows its type name, the signals
//! it supports, how to read its configuration, and how to create an instance from it. Only the binary knows
//! every factory; it hands them to the [`Registry`]. A connector is the exporter of one pipeline and the receiver
//! of another (traces in, metrics out); an extension runs beside the pipelines (a health check).

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::config::Endpoint;
use crate::data::{Data, Signal};
use crate::delivery::{RetryOnFailure, SendingQueue};
use crate::telemetry::Telemetry;

/// The five kinds of component a configuration declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Receiver,
    Processor,
    Exporter,
    Connector,
    Extension,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Receiver,
        Kind::Processor,
        Kind::Exporter,
        Kind::Connector,
        Kind::Extension,
    ];

    /// The configuration section that declares components of this kind.
    pub fn section(self) -> &'static str {
        match self {
            Kind::Receiver => "receivers",
            Kind::Processor => "processors",
            Kind::Exporter => "exporters",
            Kind::Connector => "connectors",
            Kind::Extension => "extensions",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Receiver => "receiver",
            Kind::Processor => "processor",
            Kind::Exporter => "exporter",
            Kind::Connector => "connector",
            Kind::Extension => "extension",
        }
    }
}

/// A component id, `type[/name]`, as in the OpenTelemetry Collector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId {
    type_name: String,
    name: Option<String>,
}

impl ComponentId {
    pub fn parse(s: &str) -> Result<ComponentId, String> {
        let (type_name, name) = match s.split_once('/') {
            Some((t, n)) => (t, Some(n)),
            None => (s, None),
        };
        let valid_type = type_name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && type_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_type {
            return Err(format!(
                "invalid component id `{s}`: the type must start with a letter and hold only letters, digits and `_`"
            ));
        }
        if let Some(n) = name
            && (n.is_empty() || n.chars().any(|c| c.is_whitespace() || c == '/'))
        {
            return Err(format!(
                "invalid component id `{s}`: the name after `/` must be non-empty, without spaces or `/`"
            ));
        }
        Ok(ComponentId {
            type_name: type_name.to_string(),
            name: name.map(str::to_string),
        })
    }

    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{}", self.type_name, n),
            None => f.write_str(&self.type_name),
        }
    }
}

/// Why a request was not taken into a pipeline.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Temporarily full or shutting down: the client should retry after the given delay.
    #[error("{reason}; retry after {retry_after:?}")]
    Retryable { reason: String, retry_after: Duration },
    /// The data cannot be accepted, ever (it is invalid): the client must not retry.
    #[error("{0}")]
    Permanent(String),
}

/// Something that takes data: a pipeline's entry, a processor, the fan-out to exporters.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Takes `data`. `Ok` means the data is now the pipeline's responsibility: it will be exported or flushed.
    async fn consume(&self, data: Data) -> Result<(), ConsumeError>;
}

/// An error from an exporter's export call.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExportError {
    pub message: String,
    /// The protocol says the same request may succeed later (UNAVAILABLE, 503, 429, a refused connection...).
    pub retryable: bool,
    /// The server's throttle delay (gRPC RetryInfo, HTTP Retry-After), which wins over the backoff.
    pub retry_after: Option<Duration>,
}

impl ExportError {
    pub fn permanent(message: impl Into<String>) -> ExportError {
        ExportError {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    pub fn retryable(message: impl Into<String>, retry_after: Option<Duration>) -> ExportError {
        ExportError {
            message: message.into(),
            retryable: true,
            retry_after,
        }
    }
}

/// A failure to create, start or stop a component; the message names the component and what was wrong.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct ComponentError(pub String);

impl ComponentError {
    pub fn new(message: impl Into<String>) -> ComponentError {
        ComponentError(message.into())
    }
}

/// A receiver listens (or samples) and pushes what it gets into the consumers of its pipelines.
#[async_trait]
pub trait Receiver: Send {
    /// Starts serving. Binding errors are returned, never panicked on.
    async fn start(&mut self) -> Result<(), ComponentError>;
    /// Stops accepting new data and waits for requests in flight; afterwards it holds no consumer.
    async fn shutdown(&mut self) -> Result<(), ComponentError>;
}

/// A check a pipeline makes before it takes a request (the memory limiter's), so that a refusal reaches the
/// client as a retryable answer instead of data being dropped after it was acknowledged.
pub trait Gate: Send + Sync {
    fn admit(&self) -> Result<(), ConsumeError>;
}

/// A processor in a pipeline's chain. It passes what it produces to the next consumer it was created with.
#[async_trait]
pub trait Processor: Consumer {
    /// A check the pipeline's entry runs before taking a request.
    fn gate(&self) -> Option<Arc<dyn Gate>> {
        None
    }
    /// Starts timers or background work.
    async fn start(&self) -> Result<(), ComponentError> {
        Ok(())
    }
    /// Flushes everything it holds to the next consumer; nothing accepted is lost.
    async fn shutdown(&self) -> Result<(), ComponentError> {
        Ok(())
    }
}

/// An exporter sends data out of the collector. The graph gives each one a bounded queue.
#[async_trait]
pub trait Exporter: Send + Sync {
    async fn start(&self) -> Result<(), ComponentError> {
        Ok(())
    }
    async fn export(&self, data: Data) -> Result<(), ExportError>;
    /// Flushes and closes; called once, after the last export.
    async fn shutdown(&self) -> Result<(), ComponentError> {
        Ok(())
    }
}

/// A connector: the exporter of some pipelines, whose output enters others (model_metrics turns spans into
/// metrics). The pipelines that list it under `exporters` call `consume` in their workers.
#[async_trait]
pub trait Connector: Consumer {
    async fn start(&self) -> Result<(), ComponentError> {
        Ok(())
    }
    /// Emits everything it holds; called once the pipelines feeding it have drained.
    async fn shutdown(&self) -> Result<(), ComponentError> {
        Ok(())
    }
}

/// An extension runs beside the pipelines: started before them, stopped after them.
#[async_trait]
pub trait Extension: Send {
    async fn start(&mut self) -> Result<(), ComponentError>;
    async fn shutdown(&mut self) -> Result<(), ComponentError>;
}

/// The consumers a receiver feeds, one per signal it was placed in.
#[derive(Clone, Default)]
pub struct Consumers {
    by_signal: [Option<Arc<dyn Consumer>>; 3],
}

impl Consumers {
    pub fn set(&mut self, signal: Signal, consumer: Arc<dyn Consumer>) {
        self.by_signal[signal.index()] = Some(consumer);
    }

    pub fn get(&self, signal: Signal) -> Option<&Arc<dyn Consumer>> {
        self.by_signal[signal.index()].as_ref()
    }

    pub fn signals(&self) -> Vec<Signal> {
        Signal::ALL.into_iter().filter(|s| self.get(*s).is_some()).collect()
    }
}

/// State some components share, asked for by type (as Vector's `extra_context`): the replica directory that the
/// receivers fill and model_metrics reads. The spine does not know what is in it; a component that asks for a type
/// gets the one instance every other component asking for it gets.
#[derive(Clone, Default)]
pub struct Shared(Arc<std::sync::Mutex<BTreeMap<std::any::TypeId, Box<dyn Any + Send + Sync>>>>);

impl Shared {
    /// The shared `T`, made with `T::default()` by whoever asks first. `T` is a handle (an `Arc` inside), so the
    /// clone handed out is the same state.
    pub fn get<T: Any + Clone + Default + Send + Sync>(&self) -> T {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_ref::<T>()
            .cloned()
            .unwrap_or_default()
    }

    /// Makes `value` the shared `T` (a test hands in a directory it fills itself).
    pub fn provide<T: Any + Clone + Default + Send + Sync>(&self, value: T) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(std::any::TypeId::of::<T>(), Box::new(value));
    }
}

/// What a receiver is created with.
pub struct ReceiverContext {
    pub id: ComponentId,
    pub consumers: Consumers,
    pub telemetry: Telemetry,
    pub shared: Shared,
}

/// What a processor is created with.
pub struct ProcessorContext {
    pub id: ComponentId,
    /// The pipeline this instance is part of (each pipeline gets its own processor instances).
    pub pipeline: String,
    pub signal: Signal,
    /// The rest of the chain.
    pub next: Arc<dyn Consumer>,
    pub telemetry: Telemetry,
    pub shared: Shared,
}

/// What an exporter is created with.
pub struct ExporterContext {
    pub id: ComponentId,
    pub telemetry: Telemetry,
}

/// What a connector is created with: one instance per connector id and route (traces to metrics).
pub struct ConnectorContext {
    pub id: ComponentId,
    /// The signal it takes, as an exporter of the pipelines that list it under `exporters`.
    pub from: Signal,
    /// The signal it emits into the pipelines that list it under `receivers`.
    pub to: Signal,
    /// Those pipelines' entry (every one of them, or none, takes each request).
    pub next: Arc<dyn Consumer>,
    pub telemetry: Telemetry,
    pub shared: Shared,
}

/// How the service stands, for extensions that report it (health_check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Components are being started; nothing is accepted yet.
    Starting,
    /// Every pipeline runs.
    Running,
    /// Receivers stop and pipelines drain.
    Stopping,
    /// A component failed (its start, or a pipeline worker); the message says which.
    Failed(String),
}

/// What an extension is created with.
pub struct ExtensionContext {
    pub id: ComponentId,
    pub telemetry: Telemetry,
    pub shared: Shared,
    /// The service's health, updated as it starts, runs and stops.
    pub health: tokio::sync::watch::Receiver<Health>,
}

/// A component's configuration, type-erased; its factory knows the concrete type.
pub type AnyConfig = Box<dyn Any + Send + Sync>;

/// A component's configuration struct: serde with defaults and unknown keys denied, plus checks serde cannot make.
pub trait ComponentConfig: DeserializeOwned + Default + Send + Sync + 'static {
    /// Checks values; the error names the key that is wrong and what would be right.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// The addresses this component will listen on, with the key that sets each.
    fn listen_endpoints(&self) -> Vec<(&'static str, &Endpoint)> {
        Vec::new()
    }
    /// An exporter's `sending_queue` and `retry_on_failure`, when it has those keys.
    fn delivery(&self) -> Option<(SendingQueue, RetryOnFailure)> {
        None
    }
}

/// Reads and checks a configuration of type `C`: the helper every factory's `parse_config` calls.
pub fn parse_config<C: ComponentConfig>(
    deserializer: &mut dyn erased_serde::Deserializer<'_>,
) -> Result<AnyConfig, erased_serde::Error> {
    // serde_path_to_error names the key inside the component (`protocols.grpc.endpoint`) that was wrong.
    let config: C = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            inner
        } else {
            <erased_serde::Error as serde::de::Error>::custom(format!("{path}: {inner}"))
        }
    })?;
    config
        .validate()
        .map_err(<erased_serde::Error as serde::de::Error>::custom)?;
    Ok(Box::new(config))
}

/// Downcasts a configuration to the factory's own type.
pub fn config_as<C: ComponentConfig>(config: &AnyConfig) -> Result<&C, ComponentError> {
    config
        .downcast_ref::<C>()
        .ok_or_else(|| ComponentError::new("internal error: configuration of another component type"))
}

/// What every factory says about itself.
pub trait Factory: Send + Sync {
    fn type_name(&self) -> &'static str;
    /// The signals the component handles.
    fn signals(&self) -> &'static [Signal];
    /// The configuration used when the component is declared without a body (`otlp:`).
    fn default_config(&self) -> AnyConfig;
    fn parse_config(
        &self,
        deserializer: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<AnyConfig, erased_serde::Error>;
    /// The addresses the component listens on, as (key, endpoint).
    fn listen_endpoints<'a>(&self, _config: &'a AnyConfig) -> Vec<(&'static str, &'a Endpoint)> {
        Vec::new()
    }
    /// An exporter's queue and retry settings, when its configuration has them.
    fn delivery(&self, _config: &AnyConfig) -> Option<(SendingQueue, RetryOnFailure)> {
        None
    }
}

pub trait ReceiverFactory: Factory {
    fn create(&self, config: &AnyConfig, ctx: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError>;
}

pub trait ProcessorFactory: Factory {
    fn create(&self, config: &AnyConfig, ctx: ProcessorContext) -> Result<Arc<dyn Processor>, ComponentError>;
}

pub trait ExporterFactory: Factory {
    /// How many exports of this exporter may run at once (the queue's consumers).
    fn default_consumers(&self) -> usize {
        1
    }
    fn create(&self, config: &AnyConfig, ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError>;
}

pub trait ConnectorFactory: Factory {
    /// The (from, to) signal pairs it connects.
    fn routes(&self) -> &'static [(Signal, Signal)];
    fn create(&self, config: &AnyConfig, ctx: ConnectorContext) -> Result<Arc<dyn Connector>, ComponentError>;
}

pub trait ExtensionFactory: Factory {
    fn create(&self, config: &AnyConfig, ctx: ExtensionContext) -> Result<Box<dyn Extension>, ComponentError>;
}

/// Implements [`Factory`] for a factory type from its config type and signals.
#[macro_export]
macro_rules! factory {
    ($factory:ty, $type_name:expr, $config:ty, $signals:expr) => {
        impl $crate::Factory for $factory {
            fn type_name(&self) -> &'static str {
                $type_name
            }
            fn signals(&self) -> &'static [$crate::Signal] {
                $signals
            }
            fn default_config(&self) -> $crate::AnyConfig {
                Box::new(<$config as Default>::default())
            }
            fn parse_config(
                &self,
                deserializer: &mut dyn $crate::erased_serde::Deserializer<'_>,
            ) -> Result<$crate::AnyConfig, $crate::erased_serde::Error> {
                $crate::parse_config::<$config>(deserializer)
            }
            fn listen_endpoints<'a>(&self, config: &'a $crate::AnyConfig) -> Vec<(&'static str, &'a $crate::Endpoint)> {
                match config.downcast_ref::<$config>() {
                    Some(c) => $crate::ComponentConfig::listen_endpoints(c),
                    None => Vec::new(),
                }
            }
            fn delivery(&self, config: &$crate::AnyConfig) -> Option<($crate::SendingQueue, $crate::RetryOnFailure)> {
                config
                    .downcast_ref::<$config>()
                    .and_then($crate::ComponentConfig::delivery)
            }
        }
    };
}

/// Every factory the binary knows, by kind and type name.
#[derive(Default, Clone)]
pub struct Registry {
    pub receivers: BTreeMap<&'static str, Arc<dyn ReceiverFactory>>,
    pub processors: BTreeMap<&'static str, Arc<dyn ProcessorFactory>>,
    pub exporters: BTreeMap<&'static str, Arc<dyn ExporterFactory>>,
    pub connectors: BTreeMap<&'static str, Arc<dyn ConnectorFactory>>,
    pub extensions: BTreeMap<&'static str, Arc<dyn ExtensionFactory>>,
}

impl Registry {
    pub fn receiver(mut self, f: impl ReceiverFactory + 'static) -> Self {
        self.receivers.insert(f.type_name(), Arc::new(f));
        self
    }
    pub fn processor(mut self, f: impl ProcessorFactory + 'static) -> Self {
        self.processors.insert(f.type_name(), Arc::new(f));
        self
    }
    pub fn exporter(mut self, f: impl ExporterFactory + 'static) -> Self {
        self.exporters.insert(f.type_name(), Arc::new(f));
        self
    }
    pub fn connector(mut self, f: impl ConnectorFactory + 'static) -> Self {
        self.connectors.insert(f.type_name(), Arc::new(f));
        self
    }
    pub fn extension(mut self, f: impl ExtensionFactory + 'static) -> Self {
        self.extensions.insert(f.type_name(), Arc::new(f));
        self
    }

    /// The factory of a type, as the generic [`Factory`].
    pub fn factory(&self, kind: Kind, type_name: &str) -> Option<&dyn Factory> {
        fn up<T: Factory + ?Sized>(f: &Arc<T>) -> &T {
            f.as_ref()
        }
        match kind {
            Kind::Receiver => self.receivers.get(type_name).map(|f| up(f) as &dyn Factory),
            Kind::Processor => self.processors.get(type_name).map(|f| up(f) as &dyn Factory),
            Kind::Exporter => self.exporters.get(type_name).map(|f| up(f) as &dyn Factory),
            Kind::Connector => self.connectors.get(type_name).map(|f| up(f) as &dyn Factory),
            Kind::Extension => self.extensions.get(type_name).map(|f| up(f) as &dyn Factory),
        }
    }

    pub fn type_names(&self, kind: Kind) -> Vec<&'static str> {
        match kind {
            Kind::Receiver => self.receivers.keys().copied().collect(),
            Kind::Processor => self.processors.keys().copied().collect(),
            Kind::Exporter => self.exporters.keys().copied().collect(),
            Kind::Connector => self.connectors.keys().copied().collect(),
            Kind::Extension => self.extensions.keys().copied().collect(),
        }
    }
}
