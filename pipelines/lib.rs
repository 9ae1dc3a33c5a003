//! infercol's spine: the signal data, the component traits and factories, the YAML configuration model with its
//! validation, and the graph that wires, starts and stops pipelines. It depends on no component.

pub mod auth;
pub mod batched_writes;
pub mod component;
pub mod config;
pub mod data;
pub mod delivery;
pub mod disk_queue;
pub mod env_subst;
pub mod graph;
pub mod histogram;
pub mod lite;
pub mod raw_codec;
pub mod replicas;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use component::{
    AnyConfig, ComponentConfig, ComponentError, ComponentId, Connector, ConnectorContext, ConnectorFactory,
    ConsumeError, Consumer, Consumers, ExportError, Exporter, ExporterContext, ExporterFactory, Extension,
    ExtensionContext, ExtensionFactory, Factory, Gate, Health, Kind, Processor, ProcessorContext, ProcessorFactory,
    Receiver, ReceiverContext, ReceiverFactory, Registry, Shared, config_as, parse_config,
};
pub use config::{Config, ConfigError, ConfigErrors, Endpoint};
pub use data::{Data, Payload, Signal};
pub use delivery::{RetryOnFailure, SendingQueue, Sizer};
pub use graph::{FanOut, Service};
pub use raw_codec::RawCodec;
pub use replicas::{ModelDims, Replica, ReplicaCounts, ReplicaDirectory};
pub use telemetry::Telemetry;

#[doc(hidden)]
pub use erased_serde;
