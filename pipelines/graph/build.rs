//! Phase one of the graph: every node created from the configuration, nothing started. Every failure to create a
//! component is collected, so that one run reports them all.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::component::{
    ComponentId, Connector, ConnectorContext, Consumer, Consumers, Extension, ExtensionContext, Gate, Health, Kind,
    Processor, ProcessorContext, Receiver, ReceiverContext, Registry, Shared,
};
use crate::config::{Config, MetricsLevel, Pipeline};
use crate::data::{Data, Signal};
use crate::telemetry::Telemetry;

use super::counted::{Incoming, Outgoing};
use super::entry::{Entry, FanOut, Gates, PIPELINE_CHANNEL_CAPACITY, PipelineInput};
use super::export::ExporterNode;

/// A pipeline created: its entry's receiving end, its processors in order, and the head of its chain.
pub(crate) struct PipelineNode {
    pub id: String,
    pub signal: Signal,
    pub rx: mpsc::Receiver<Data>,
    pub chain: Vec<Arc<dyn Processor>>,
    pub head: Arc<dyn Consumer>,
}

/// A connector created for one route, with the pipelines (indices in topological order) on either side.
pub(crate) struct ConnectorNode {
    pub id: ComponentId,
    pub connector: Arc<dyn Connector>,
    pub upstream: Vec<usize>,
}

/// Every node of the service, created and wired, none started.
pub(crate) struct Graph {
    pub telemetry: Telemetry,
    pub health: Arc<watch::Sender<Health>>,
    pub extensions: Vec<(ComponentId, Box<dyn Extension>)>,
    pub exporters: Vec<ExporterNode>,
    pub connectors: Vec<ConnectorNode>,
    /// In topological order: a pipeline comes before those it feeds through connectors.
    pub pipelines: Vec<PipelineNode>,
    pub receivers: Vec<(ComponentId, Box<dyn Receiver>)>,
    /// The entries of every pipeline, kept until the receivers hold theirs.
    pub inputs: BTreeMap<String, PipelineInput>,
}

/// What the builders share while the graph is made.
struct Builder<'a> {
    config: &'a Config,
    registry: &'a Registry,
    telemetry: Telemetry,
    shared: Shared,
    inputs: BTreeMap<String, PipelineInput>,
    errors: Vec<String>,
}

impl Graph {
    /// Creates every node; the error lists every component that could not be created.
    pub fn build(config: &Config, registry: &Registry) -> Result<Graph, Vec<String>> {
        let (health, _) = watch::channel(Health::Starting);
        let order = topological_order(config);
        let (inputs, mut outputs) = entries(config, registry);
        let mut b = Builder {
            config,
            registry,
            telemetry: Telemetry::new(),
            shared: Shared::default(),
            inputs,
            errors: Vec::new(),
        };
        let extensions = b.extensions(&health);
        let exporters = b.exporters();
        let position = |name: &str| order.iter().position(|i| config.pipelines[*i].id == name).unwrap_or(0);
        let connectors = b.connectors(&position);
        let mut pipelines = Vec::new();
        for &index in &order {
            let p = &config.pipelines[index];
            let Some(rx) = outputs.remove(&p.id) else { continue };
            let routes: Vec<&ConnectorRoute> = connectors.iter().filter(|c| c.from == p.signal).collect();
            if let Some(node) = b.pipeline(p, rx, &exporters, &routes) {
                pipelines.push(node);
            }
        }
        let receivers = b.receivers();
        if !b.errors.is_empty() {
            return Err(b.errors);
        }
        Ok(Graph {
            telemetry: b.telemetry,
            health: Arc::new(health),
            extensions,
            exporters,
            connectors: connectors.into_iter().map(|c| c.node).collect(),
            pipelines,
            receivers,
            inputs: b.inputs,
        })
    }
}

/// A connector instance and the signals it joins.
struct ConnectorRoute {
    from: Signal,
    node: ConnectorNode,
}

/// The pipelines in an order where every pipeline comes before the ones it feeds (the configuration has no loop).
fn topological_order(config: &Config) -> Vec<usize> {
    let n = config.pipelines.len();
    let mut feeding = vec![0usize; n];
    for p in &config.pipelines {
        for (q, _, _) in crate::config::downstream(config, p) {
            feeding[q] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..n).rev().filter(|i| feeding[*i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for (q, _, _) in crate::config::downstream(config, &config.pipelines[i]) {
            feeding[q] -= 1;
            if feeding[q] == 0 {
                ready.push(q);
            }
        }
    }
    // A loop is refused when the configuration is read; should one get here, its pipelines still run.
    let left: Vec<usize> = (0..n).filter(|i| !order.contains(i)).collect();
    order.extend(left);
    order
}

/// One entry channel per pipeline.
fn entries(
    config: &Config,
    registry: &Registry,
) -> (BTreeMap<String, PipelineInput>, BTreeMap<String, mpsc::Receiver<Data>>) {
    let mut inputs = BTreeMap::new();
    let mut outputs = BTreeMap::new();
    for p in &config.pipelines {
        let (tx, rx) = mpsc::channel(PIPELINE_CHANNEL_CAPACITY);
        let durable = p.exporters.iter().any(|(e, _)| {
            config.find(Kind::Exporter, e).is_some_and(|d| {
                registry
                    .exporters
                    .get(e.type_name())
                    .and_then(|f| f.delivery(&d.config))
                    .is_some_and(|(q, _)| q.enabled && q.storage.is_some())
            })
        });
        let entry = Entry {
            name: p.id.clone(),
            tx,
            gates: Gates::default(),
            durable,
        };
        inputs.insert(p.id.clone(), PipelineInput { pipelines: vec![entry] });
        outputs.insert(p.id.clone(), rx);
    }
    (inputs, outputs)
}

impl Builder<'_> {
    /// The joined entry of the pipelines of `signal` that list `id` under `receivers`.
    fn feeding(&self, id: &ComponentId, signal: Signal) -> Option<Arc<dyn Consumer>> {
        let feeds: Vec<&PipelineInput> = self
            .config
            .pipelines
            .iter()
            .filter(|p| p.signal == signal && p.receivers.iter().any(|(r, _)| r == id))
            .filter_map(|p| self.inputs.get(&p.id))
            .collect();
        (!feeds.is_empty()).then(|| Arc::new(PipelineInput::join(&feeds)) as Arc<dyn Consumer>)
    }

    fn extensions(&mut self, health: &watch::Sender<Health>) -> Vec<(ComponentId, Box<dyn Extension>)> {
        let mut out = Vec::new();
        for id in &self.config.service_extensions {
            let (Some(declared), Some(factory)) = (
                self.config.find(Kind::Extension, id),
                self.registry.extensions.get(id.type_name()),
            ) else {
                continue;
            };
            let ctx = ExtensionContext {
                id: id.clone(),
                telemetry: self.telemetry.clone(),
                shared: self.shared.clone(),
                health: health.subscribe(),
            };
            match factory.create(&declared.config, ctx) {
                Ok(e) => out.push((id.clone(), e)),
                Err(e) => self.errors.push(format!("extensions.{id}: {e}")),
            }
        }
        out
    }

    fn exporters(&mut self) -> Vec<ExporterNode> {
        let mut out = Vec::new();
        for declared in &self.config.exporters {
            let id = &declared.id;
            if !self.config.is_used(Kind::Exporter, id) {
                continue;
            }
            let Some(factory) = self.registry.exporters.get(id.type_name()) else {
                continue;
            };
            match ExporterNode::build(declared, factory.as_ref(), &self.telemetry) {
                Ok(node) => out.push(node),
                Err(e) => self.errors.push(format!("exporters.{id}: {e}")),
            }
        }
        out
    }

    /// One connector instance per id and route in use (traces to metrics).
    fn connectors(&mut self, position: &dyn Fn(&str) -> usize) -> Vec<ConnectorRoute> {
        let mut out = Vec::new();
        let config = self.config;
        for declared in &config.connectors {
            let id = &declared.id;
            let Some(factory) = self.registry.connectors.get(id.type_name()) else {
                continue;
            };
            for &(from, to) in factory.routes() {
                let upstream: Vec<usize> = config
                    .pipelines
                    .iter()
                    .filter(|p| p.signal == from && p.exporters.iter().any(|(e, _)| e == id))
                    .map(|p| position(&p.id))
                    .collect();
                let Some(next) = self.feeding(id, to).filter(|_| !upstream.is_empty()) else {
                    continue;
                };
                let ctx = ConnectorContext {
                    id: id.clone(),
                    from,
                    to,
                    next,
                    telemetry: self.telemetry.clone(),
                    shared: self.shared.clone(),
                };
                match factory.create(&declared.config, ctx) {
                    Ok(connector) => out.push(ConnectorRoute {
                        from,
                        node: ConnectorNode {
                            id: id.clone(),
                            connector,
                            upstream,
                        },
                    }),
                    Err(e) => self.errors.push(format!("connectors.{id}: {e}")),
                }
            }
        }
        out
    }

    /// A pipeline's processor chain, built from its exporters' end; its entry learns the chain's gates.
    fn pipeline(
        &mut self,
        p: &Pipeline,
        rx: mpsc::Receiver<Data>,
        exporters: &[ExporterNode],
        connectors: &[&ConnectorRoute],
    ) -> Option<PipelineNode> {
        let mut outs: Vec<Arc<dyn Consumer>> = Vec::new();
        for (id, _) in &p.exporters {
            outs.extend(exporters.iter().filter(|e| &e.id == id).map(|e| e.queue.clone()));
            outs.extend(
                connectors
                    .iter()
                    .filter(|c| &c.node.id == id)
                    .map(|c| c.node.connector.clone() as Arc<dyn Consumer>),
            );
        }
        let mut next = FanOut::of(outs);
        let counted = self.config.telemetry.metrics.level != MetricsLevel::None;
        let mut chain: Vec<Arc<dyn Processor>> = Vec::new();
        let mut failed = false;
        for (id, _) in p.processors.iter().rev() {
            let (Some(declared), Some(factory)) = (
                self.config.find(Kind::Processor, id),
                self.registry.processors.get(id.type_name()),
            ) else {
                continue;
            };
            let counters = counted.then(|| self.telemetry.processor(id, &p.id, p.signal));
            let given = match &counters {
                Some(c) => Arc::new(Outgoing {
                    next: next.clone(),
                    items: c.outgoing.clone(),
                }) as Arc<dyn Consumer>,
                None => next.clone(),
            };
            let ctx = ProcessorContext {
                id: id.clone(),
                pipeline: p.id.clone(),
                signal: p.signal,
                next: given,
                telemetry: self.telemetry.clone(),
                shared: self.shared.clone(),
            };
            let processor = match factory.create(&declared.config, ctx) {
                Ok(made) => match counters {
                    Some(c) => Arc::new(Incoming {
                        processor: made,
                        items: c.incoming,
                    }) as Arc<dyn Processor>,
                    None => made,
                },
                Err(e) => {
                    self.errors.push(format!("processors.{id} in pipeline {}: {e}", p.id));
                    failed = true;
                    continue;
                }
            };
            next = processor.clone() as Arc<dyn Consumer>;
            chain.push(processor);
        }
        chain.reverse();
        let gates: Vec<Arc<dyn Gate>> = chain.iter().filter_map(|p| p.gate()).collect();
        if let Some(input) = self.inputs.get(&p.id) {
            let _ = input.pipelines[0].gates.set(gates);
        }
        (!failed).then(|| PipelineNode {
            id: p.id.clone(),
            signal: p.signal,
            rx,
            chain,
            head: next,
        })
    }

    fn receivers(&mut self) -> Vec<(ComponentId, Box<dyn Receiver>)> {
        let mut out = Vec::new();
        for declared in &self.config.receivers {
            let id = &declared.id;
            let mut consumers = Consumers::default();
            for signal in Signal::ALL {
                if let Some(feed) = self.feeding(id, signal) {
                    consumers.set(signal, feed);
                }
            }
            if consumers.signals().is_empty() {
                continue;
            }
            let Some(factory) = self.registry.receivers.get(id.type_name()) else {
                continue;
            };
            let ctx = ReceiverContext {
                id: id.clone(),
                consumers,
                telemetry: self.telemetry.clone(),
                shared: self.shared.clone(),
            };
            match factory.create(&declared.config, ctx) {
                Ok(r) => out.push((id.clone(), r)),
                Err(e) => self.errors.push(format!("receivers.{id}: {e}")),
            }
        }
        out
    }
}
