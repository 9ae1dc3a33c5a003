//! The running service: pipelines wired from the configuration, started and shut down in order.
//!
//! receivers -> (fan-in) bounded channel per pipeline -> pipeline task running the processor chain -> fan-out ->
//! one bounded queue per exporter -> export workers. Backpressure travels upstream through the bounded channels;
//! a receiver that cannot enqueue in time answers the client with a retryable refusal.
//!
//! Shutdown: receivers stop accepting and finish what is in flight; every channel then closes because its last
//! sender is dropped, so each pipeline drains, flushes its processors (which may emit into metrics pipelines) and
//! drops its exporter queues; exporters drain their queues and flush. Nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::component::{
    ComponentError, ComponentId, ConsumeError, Consumer, Consumers, Exporter, ExporterContext, Gate, Kind, Processor,
    ProcessorContext, Receiver, ReceiverContext, Registry,
};
use crate::config::{Config, MetricsLevel};
use crate::data::{Ack, Data};
use crate::delivery::{RetryOnFailure, SendingQueue, Sizer};
use crate::disk_queue::DiskQueue;
use crate::telemetry::{ExporterCounters, Telemetry};

/// Requests a pipeline's entry channel holds before receivers wait.
pub const PIPELINE_CHANNEL_CAPACITY: usize = 64;
/// How long a receiver waits for room in a full pipeline before refusing with a retryable answer.
pub const ENQUEUE_WAIT: Duration = Duration::from_secs(1);
/// How long a receiver waits for a request to reach a durable sending queue before refusing it (retryably).
pub const DURABLE_WAIT: Duration = Duration::from_secs(10);
/// The delay suggested to clients that were refused because a pipeline was full.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The entry of one or more pipelines of a signal: receivers and metric-emitting processors push here. A request
/// enters all of them or none: room is reserved in every pipeline first, so a refused request is not
/// half-processed.
/// The gates of one pipeline, known once its processors exist.
type Gates = Arc<std::sync::OnceLock<Vec<Arc<dyn Gate>>>>;

#[derive(Clone)]
struct Entry {
    name: String,
    tx: mpsc::Sender<Data>,
    gates: Gates,
    /// An exporter of this pipeline keeps its queue on disk: the client's answer waits until the request is there.
    durable: bool,
}

#[derive(Clone)]
struct PipelineInput {
    pipelines: Vec<Entry>,
}

impl PipelineInput {
    fn join(inputs: &[&PipelineInput]) -> PipelineInput {
        PipelineInput {
            pipelines: inputs.iter().flat_map(|i| i.pipelines.iter().cloned()).collect(),
        }
    }
}

#[async_trait]
impl Consumer for PipelineInput {
    async fn consume(&self, mut data: Data) -> Result<(), ConsumeError> {
        for entry in &self.pipelines {
            for gate in entry.gates.get().into_iter().flatten() {
                gate.admit()?;
            }
        }
        let deadline = tokio::time::Instant::now() + ENQUEUE_WAIT;
        let mut permits = Vec::with_capacity(self.pipelines.len());
        for Entry { name, tx, .. } in &self.pipelines {
            match tokio::time::timeout_at(deadline, tx.reserve()).await {
                Ok(Ok(permit)) => permits.push(permit),
                Ok(Err(_)) => {
                    return Err(ConsumeError::Retryable {
                        reason: "the collector is shutting down".to_string(),
                        retry_after: RETRY_AFTER,
                    });
                }
                Err(_) => {
                    return Err(ConsumeError::Retryable {
                        reason: format!("pipeline {name} is full"),
                        retry_after: RETRY_AFTER,
                    });
                }
            }
        }
        let durable = self.pipelines.iter().any(|e| e.durable);
        let kept = durable.then(|| {
            let (ack, kept) = Ack::new();
            data.add_acks(vec![ack]);
            kept
        });
        let last = permits.pop();
        for permit in permits {
            permit.send(data.clone());
        }
        if let Some(permit) = last {
            permit.send(data);
        }
        match kept {
            None => Ok(()),
            Some(kept) => match tokio::time::timeout(DURABLE_WAIT, kept).await {
                Ok(Ok(true)) => Ok(()),
                _ => Err(ConsumeError::Retryable {
                    reason: "the request could not be written to the sending queue in time".into(),
                    retry_after: RETRY_AFTER,
                }),
            },
        }
    }
}

/// Hands the same data to several consumers: clones (an `Arc` clone) for all but the last.
pub struct FanOut {
    consumers: Vec<Arc<dyn Consumer>>,
}

impl FanOut {
    /// A consumer for `consumers`: the one itself when there is only one.
    pub fn of(mut consumers: Vec<Arc<dyn Consumer>>) -> Arc<dyn Consumer> {
        if consumers.len() == 1 {
            return consumers.remove(0);
        }
        Arc::new(FanOut { consumers })
    }
}

#[async_trait]
impl Consumer for FanOut {
    async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
        let Some((last, rest)) = self.consumers.split_last() else {
            return Ok(());
        };
        for c in rest {
            c.consume(data.clone()).await?;
        }
        last.consume(data).await
    }
}

/// The entry of an exporter's queue.
/// A queued request, with its share of a queue bounded in items or bytes (released once it is exported).
type Queued = (Data, Option<tokio::sync::OwnedSemaphorePermit>);

struct ExporterQueue {
    tx: mpsc::Sender<Queued>,
    /// `queue_size` in items or bytes; `None` when the queue counts requests (the channel bounds those).
    /// The total is kept: a request larger than the whole queue takes all of it, and passes alone.
    room: Option<(Sizer, Arc<tokio::sync::Semaphore>, usize)>,
    disk: Option<Arc<DiskQueue>>,
    counters: ExporterCounters,
    drop_on_overflow: bool,
    id: ComponentId,
}

#[async_trait]
impl Consumer for ExporterQueue {
    async fn consume(&self, mut data: Data) -> Result<(), ConsumeError> {
        if let Some(disk) = &self.disk {
            let (signal, items) = (data.signal(), data.items());
            return match disk.push(&data, self.drop_on_overflow).await {
                Ok(true) => {
                    self.counters.queue_size.set(disk.len() as i64);
                    // On disk: dropping `data` releases the clients waiting for it.
                    Ok(())
                }
                Ok(false) => {
                    data.fail_acks();
                    self.counters.enqueue_failed(signal, items);
                    tracing::error!(exporter = %self.id, items, "sending queue full: {signal} dropped (drop_on_overflow)");
                    Ok(())
                }
                Err(e) => {
                    data.fail_acks();
                    tracing::error!(exporter = %self.id, "sending queue storage: {e}");
                    Err(ConsumeError::Retryable {
                        reason: format!("sending queue storage: {e}"),
                        retry_after: RETRY_AFTER,
                    })
                }
            };
        }
        // An in-memory queue does not survive a crash: the request is as safe as it will get once queued.
        drop(data.take_acks());
        let (signal, items) = (data.signal(), data.items());
        let dropped = || {
            self.counters.enqueue_failed(signal, items);
            tracing::error!(exporter = %self.id, items, "sending queue full: {signal} dropped (drop_on_overflow)");
            Ok(())
        };
        let closed = || ConsumeError::Retryable {
            reason: "exporter queue closed".into(),
            retry_after: RETRY_AFTER,
        };
        let share = match &self.room {
            None => None,
            Some((sizer, room, total)) => {
                let cost = sizer.size_of(&data).min(*total).min(u32::MAX as usize) as u32;
                if self.drop_on_overflow {
                    match room.clone().try_acquire_many_owned(cost) {
                        Ok(p) => Some(p),
                        Err(_) => return dropped(),
                    }
                } else {
                    Some(room.clone().acquire_many_owned(cost).await.map_err(|_| closed())?)
                }
            }
        };
        if self.drop_on_overflow {
            return match self.tx.try_send((data, share)) {
                Ok(()) => {
                    self.counters.queue_size.inc();
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Full(_)) => dropped(),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
            };
        }
        // A full queue makes the pipeline wait; the wait reaches the receivers, which refuse with a retryable
        // answer once their own wait runs out. Nothing is dropped.
        self.counters.queue_size.inc();
        self.tx.send((data, share)).await.map_err(|_| {
            self.counters.queue_size.dec();
            closed()
        })
    }
}

/// A pseudo-random number in [0, 1) for jitter; a clock-seeded hash is enough to spread retries.
fn jitter_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// No retry comes sooner than this after a failure, whatever the configuration or the server says.
const RETRY_FLOOR: Duration = Duration::from_millis(100);

/// Exports `data`, retrying what the protocol calls retryable. Once `stopping` turns true (shutdown) nothing is
/// retried any more: a request the backend refuses then is dropped and counted, as the Collector's retry sender
/// does, so that a backend that keeps refusing cannot hold shutdown to its deadline.
async fn export_with_retry(
    id: &ComponentId,
    exporter: &dyn Exporter,
    data: Data,
    counters: &ExporterCounters,
    policy: &RetryOnFailure,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut interval = policy.initial_interval;
    let signal = data.signal();
    let items = data.items();
    loop {
        let e = match exporter.export(data.clone()).await {
            Ok(()) => {
                counters.sent(signal, items);
                return;
            }
            Err(e) => e,
        };
        if !e.retryable || !policy.enabled {
            counters.failed(signal, items);
            tracing::error!(exporter = %id, items, "export failed, not retryable, dropping data: {}", e.message);
            return;
        }
        if *stopping.borrow() {
            counters.failed(signal, items);
            tracing::error!(exporter = %id, items, "export failed while shutting down, dropping data: {}", e.message);
            return;
        }
        let wait = retry_delay(policy, interval, e.retry_after);
        if !policy.max_elapsed_time.is_zero() && started.elapsed() + wait > policy.max_elapsed_time {
            counters.failed(signal, items);
            tracing::error!(exporter = %id, items, "export failed, giving up after {:?}, dropping data: {}", started.elapsed(), e.message);
            return;
        }
        tracing::warn!(exporter = %id, "export failed, retrying in {wait:?}: {}", e.message);
        let stopped = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = stopping.wait_for(|s| *s) => true,
        };
        if stopped {
            counters.failed(signal, items);
            tracing::error!(exporter = %id, items, "shutting down during a retry, dropping data: {}", e.message);
            return;
        }
        interval = interval.mul_f64(policy.multiplier).min(policy.max_interval);
    }
}

/// The wait before the next attempt: the jittered backoff, or the server's throttle delay when that is longer (as
/// the Collector's retry sender takes the larger), never under `RETRY_FLOOR`. A server answering "retry after
/// 0 s" therefore gets the backoff, not a hot loop.
fn retry_delay(policy: &RetryOnFailure, interval: Duration, server: Option<Duration>) -> Duration {
    let jitter = 1.0 + policy.randomization_factor * (2.0 * jitter_unit() - 1.0);
    let backoff = interval.mul_f64(jitter.max(0.0));
    server.map_or(backoff, |s| s.max(backoff)).max(RETRY_FLOOR)
}

struct RunningExporter {
    id: ComponentId,
    exporter: Arc<dyn Exporter>,
    workers: Vec<JoinHandle<()>>,
    disk: Option<Arc<DiskQueue>>,
    cancel: tokio::sync::watch::Sender<bool>,
    /// The room of a queue counted in items or bytes, closed when the queue is abandoned at shutdown.
    room: Option<Arc<tokio::sync::Semaphore>>,
}

/// A running collector.
pub struct Service {
    receivers: Vec<(ComponentId, Box<dyn Receiver>)>,
    pipelines: Vec<(String, JoinHandle<()>)>,
    exporters: Vec<RunningExporter>,
    telemetry_server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    telemetry: Telemetry,
}

impl Service {
    /// Builds every component of every pipeline and starts them: exporters first, receivers last. On any error
    /// what was started is stopped again, and the error names the component.
    pub async fn start(config: Config, registry: &Registry) -> Result<Service, ComponentError> {
        config
            .check_listen_addresses(registry)
            .map_err(|e| ComponentError::new(e.to_string()))?;
        let telemetry = Telemetry::new();
        let replicas = crate::replicas::ReplicaDirectory::default();

        // One entry channel per pipeline.
        let mut inputs: BTreeMap<String, PipelineInput> = BTreeMap::new();
        let mut outputs: BTreeMap<String, mpsc::Receiver<Data>> = BTreeMap::new();
        for p in &config.pipelines {
            let (tx, rx) = mpsc::channel(PIPELINE_CHANNEL_CAPACITY);
            inputs.insert(
                p.id.clone(),
                PipelineInput {
                    pipelines: vec![Entry {
                        name: p.id.clone(),
                        tx,
                        gates: Gates::default(),
                        durable: p.exporters.iter().any(|(e, _)| {
                            config.find(Kind::Exporter, e).is_some_and(|d| {
                                registry
                                    .exporters
                                    .get(e.type_name())
                                    .and_then(|f| f.delivery(&d.config))
                                    .is_some_and(|(q, _)| q.enabled && q.storage.is_some())
                            })
                        }),
                    }],
                },
            );
            outputs.insert(p.id.clone(), rx);
        }

        // Exporters, each with its queue and workers, shared by the pipelines that name them.
        let mut exporters = Vec::new();
        let mut queues: BTreeMap<ComponentId, Arc<dyn Consumer>> = BTreeMap::new();
        for declared in &config.exporters {
            if !config.is_used(Kind::Exporter, &declared.id) {
                continue;
            }
            let id = declared.id.clone();
            let Some(factory) = registry.exporters.get(id.type_name()) else {
                continue;
            };
            let exporter = factory.create(
                &declared.config,
                ExporterContext {
                    id: id.clone(),
                    telemetry: telemetry.clone(),
                },
            );
            let exporter = match exporter {
                Ok(e) => e,
                Err(e) => {
                    stop_exporters(exporters, tokio::time::Instant::now() + EXPORTER_DRAIN).await;
                    return Err(ComponentError::new(format!("exporters.{id}: {e}")));
                }
            };
            if let Err(e) = exporter.start().await {
                stop_exporters(exporters, tokio::time::Instant::now() + EXPORTER_DRAIN).await;
                return Err(ComponentError::new(format!("exporters.{id}: {e}")));
            }
            let counters = telemetry.exporter(&id);
            let (queue, retry) = factory.delivery(&declared.config).unwrap_or_else(|| {
                let mut q = SendingQueue::local();
                q.num_consumers = factory.default_consumers();
                (q, RetryOnFailure::default())
            });
            // Without a queue the pipeline waits for each export: a one-slot hand-over to one consumer.
            let (capacity, consumers) = if queue.enabled {
                (queue.queue_size.max(1), queue.num_consumers.max(1))
            } else {
                (1, 1)
            };
            counters.queue_capacity.set(capacity as i64);
            let disk = match (&queue.storage, queue.enabled) {
                (Some(dir), true) => {
                    let dir = dir.join(id.to_string().replace('/', "_"));
                    match DiskQueue::open(&dir, capacity) {
                        Ok(q) => Some(Arc::new(q)),
                        Err(e) => {
                            stop_exporters(exporters, tokio::time::Instant::now() + EXPORTER_DRAIN).await;
                            return Err(ComponentError::new(format!(
                                "exporters.{id}: sending_queue.storage {}: {e}",
                                dir.display()
                            )));
                        }
                    }
                }
                _ => None,
            };
            // In items or bytes, the room bounds the queue and the channel only the requests (one item or byte each
            // at least).
            let room = (queue.enabled && queue.sizer != Sizer::Requests).then(|| {
                let total = capacity.min(tokio::sync::Semaphore::MAX_PERMITS);
                (queue.sizer, Arc::new(tokio::sync::Semaphore::new(total)), total)
            });
            let channel = if room.is_some() {
                capacity.min(100_000)
            } else {
                capacity
            };
            let (tx, rx) = mpsc::channel::<Queued>(channel);
            let rx = Arc::new(Mutex::new(rx));
            let (cancel, _) = tokio::sync::watch::channel(false);
            let workers = (0..consumers)
                .map(|_| {
                    let rx = rx.clone();
                    let exporter = exporter.clone();
                    let counters = counters.clone();
                    let id = id.clone();
                    let policy = retry.clone();
                    let disk = disk.clone();
                    let mut cancelled = cancel.subscribe();
                    tokio::spawn(async move {
                        if let Some(disk) = disk {
                            // A durable queue is not drained at shutdown: what is left stays on disk.
                            while let Some((record, data)) = disk.pop().await {
                                let mut stopping = cancelled.clone();
                                let delivered = tokio::select! {
                                    _ = export_with_retry(&id, exporter.as_ref(), data, &counters, &policy, &mut stopping) => true,
                                    _ = cancelled.wait_for(|c| *c) => false,
                                };
                                if !delivered {
                                    break;
                                }
                                disk.done(record);
                                counters.queue_size.set(disk.len() as i64);
                            }
                            return;
                        }
                        loop {
                            let next = rx.lock().await.recv().await;
                            let Some((data, _share)) = next else { break };
                            counters.queue_size.dec();
                            export_with_retry(&id, exporter.as_ref(), data, &counters, &policy, &mut cancelled).await;
                        }
                    })
                })
                .collect();
            let room_handle = room.as_ref().map(|(_, semaphore, _)| semaphore.clone());
            queues.insert(
                id.clone(),
                Arc::new(ExporterQueue {
                    tx,
                    room,
                    disk: disk.clone(),
                    counters,
                    drop_on_overflow: queue.drop_on_overflow,
                    id: id.clone(),
                }),
            );
            exporters.push(RunningExporter {
                id,
                exporter,
                workers,
                disk,
                cancel,
                room: room_handle,
            });
        }

        // Pipelines: the processor chain, built from the exporters' end.
        let mut pipelines = Vec::new();
        let mut started_processors: Vec<Arc<dyn Processor>> = Vec::new();
        let mut failure: Option<ComponentError> = None;
        'pipelines: for p in &config.pipelines {
            let mut next = FanOut::of(p.exporters.iter().map(|(id, _)| queues[id].clone()).collect());
            let mut chain: Vec<Arc<dyn Processor>> = Vec::new();
            for (id, _) in p.processors.iter().rev() {
                let Some(declared) = config.find(Kind::Processor, id) else {
                    continue;
                };
                let Some(factory) = registry.processors.get(id.type_name()) else {
                    continue;
                };
                let feeds: Vec<&PipelineInput> = config
                    .pipelines
                    .iter()
                    .filter(|q| q.receivers.iter().any(|(r, _)| r == id))
                    .map(|q| &inputs[&q.id])
                    .collect();
                let ctx = ProcessorContext {
                    id: id.clone(),
                    pipeline: p.id.clone(),
                    signal: p.signal,
                    next: next.clone(),
                    metrics_output: (!feeds.is_empty())
                        .then(|| Arc::new(PipelineInput::join(&feeds)) as Arc<dyn Consumer>),
                    telemetry: telemetry.clone(),
                    replicas: replicas.clone(),
                };
                let processor = match factory.create(&declared.config, ctx) {
                    Ok(proc_) => proc_,
                    Err(e) => {
                        failure = Some(ComponentError::new(format!(
                            "processors.{id} in pipeline {}: {e}",
                            p.id
                        )));
                        break 'pipelines;
                    }
                };
                if let Err(e) = processor.start().await {
                    failure = Some(ComponentError::new(format!(
                        "processors.{id} in pipeline {}: {e}",
                        p.id
                    )));
                    break 'pipelines;
                }
                started_processors.push(processor.clone());
                next = processor.clone() as Arc<dyn Consumer>;
                chain.push(processor);
            }
            chain.reverse();
            let gates: Vec<Arc<dyn Gate>> = chain.iter().filter_map(|p| p.gate()).collect();
            if let Some(input) = inputs.get(&p.id) {
                let _ = input.pipelines[0].gates.set(gates);
            }
            let head = next;
            let Some(rx) = outputs.remove(&p.id) else { continue };
            let name = p.id.clone();
            // A traces pipeline runs its processors on every thread of the runtime at once: requests are
            // independent, and model_metrics records into a shard per thread. Metrics and logs pipelines keep one
            // worker, so that what they carry (cumulative points, log records) stays in order.
            let workers = match p.signal {
                crate::data::Signal::Traces => tokio::runtime::Handle::current().metrics().num_workers().max(1),
                _ => 1,
            };
            let task = tokio::spawn(async move {
                let rx = Arc::new(Mutex::new(rx));
                let mut running = tokio::task::JoinSet::new();
                for _ in 0..workers {
                    let (head, rx, name) = (head.clone(), rx.clone(), name.clone());
                    running.spawn(async move {
                        loop {
                            let next = rx.lock().await.recv().await;
                            let Some(data) = next else { break };
                            if let Err(e) = head.consume(data).await {
                                tracing::warn!(pipeline = %name, "data not delivered: {e}");
                            }
                        }
                    });
                }
                // A worker that panicked is gone (the others go on); the processors are shut down in any case.
                while let Some(done) = running.join_next().await {
                    if let Err(e) = done {
                        tracing::error!(pipeline = %name, "a pipeline worker failed: {e}");
                    }
                }
                for processor in &chain {
                    if let Err(e) = processor.shutdown().await {
                        tracing::warn!(pipeline = %name, "processor shutdown: {e}");
                    }
                }
                tracing::debug!(pipeline = %name, "pipeline drained");
            });
            pipelines.push((p.id.clone(), task));
        }
        if let Some(e) = failure {
            for processor in started_processors {
                let _ = processor.shutdown().await;
            }
            drop(inputs);
            drop(queues);
            stop_exporters(exporters, tokio::time::Instant::now() + EXPORTER_DRAIN).await;
            return Err(e);
        }
        // The pipeline tasks own the processors from here on: a processor that emits metrics holds an entry of
        // a metrics pipeline, which closes only when the last reference to that processor is gone.
        drop(started_processors);
        drop(queues);

        // The collector's own metrics.
        let telemetry_server = if config.telemetry.metrics.level != MetricsLevel::None {
            match serve_telemetry(&config.telemetry.metrics, telemetry.clone()).await {
                Ok(server) => Some(server),
                Err(e) => {
                    drop(inputs);
                    let service = Service {
                        receivers: Vec::new(),
                        pipelines,
                        exporters,
                        telemetry_server: None,
                        telemetry,
                    };
                    service.shutdown().await;
                    return Err(ComponentError::new(format!(
                        "service.telemetry.metrics: address {}: {e}",
                        config.telemetry.metrics.address.describe()
                    )));
                }
            }
        } else {
            None
        };

        // Receivers last, so that nothing is accepted before the whole graph is ready.
        let mut service = Service {
            receivers: Vec::new(),
            pipelines,
            exporters,
            telemetry_server,
            telemetry: telemetry.clone(),
        };
        for declared in &config.receivers {
            let id = &declared.id;
            let mut consumers = Consumers::default();
            for signal in crate::data::Signal::ALL {
                let feeds: Vec<&PipelineInput> = config
                    .pipelines
                    .iter()
                    .filter(|p| p.signal == signal && p.receivers.iter().any(|(r, _)| r == id))
                    .map(|p| &inputs[&p.id])
                    .collect();
                if !feeds.is_empty() {
                    consumers.set(signal, Arc::new(PipelineInput::join(&feeds)));
                }
            }
            if consumers.signals().is_empty() {
                continue;
            }
            let Some(factory) = registry.receivers.get(id.type_name()) else {
                continue;
            };
            let ctx = ReceiverContext {
                id: id.clone(),
                consumers,
                telemetry: telemetry.clone(),
                replicas: replicas.clone(),
            };
            let started = match factory.create(&declared.config, ctx) {
                Ok(mut r) => r.start().await.map(|()| r),
                Err(e) => Err(e),
            };
            match started {
                Ok(r) => service.receivers.push((id.clone(), r)),
                Err(e) => {
                    drop(inputs);
                    service.shutdown().await;
                    return Err(ComponentError::new(format!("receivers.{id}: {e}")));
                }
            }
        }
        // From here on only receivers and emitting processors hold pipeline entries, so that the channels close
        // when they are gone.
        drop(inputs);
        Ok(service)
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Stops receivers, drains every pipeline and exporter queue, and flushes the exporters.
    pub async fn shutdown(mut self) {
        for (id, receiver) in &mut self.receivers {
            if let Err(e) = receiver.shutdown().await {
                tracing::warn!(receiver = %id, "shutdown: {e}");
            }
        }
        self.receivers.clear();
        // From here on nothing is retried: the backends had their chance while the collector ran. Each request
        // still queued gets one attempt, and the pipelines and the exporters have EXPORTER_DRAIN in all.
        for running in &self.exporters {
            let _ = running.cancel.send(true);
        }
        let deadline = tokio::time::Instant::now() + EXPORTER_DRAIN;
        let mut pipelines = std::mem::take(&mut self.pipelines);
        let mut released = false;
        for (name, task) in &mut pipelines {
            let mut finished = tokio::time::timeout_at(deadline, &mut *task).await;
            if finished.is_err() {
                if !released {
                    // A pipeline still waits for room in an exporter's queue: close the queues, so that what is
                    // left is dropped (and logged) instead of holding shutdown to its deadline.
                    tracing::error!(pipeline = %name, "still draining after {EXPORTER_DRAIN:?}; dropping what the exporters have not sent");
                    for running in &mut self.exporters {
                        running.abandon();
                    }
                    released = true;
                }
                finished = tokio::time::timeout(Duration::from_secs(5), &mut *task).await;
            }
            match finished {
                Ok(Err(e)) => tracing::error!(pipeline = %name, "pipeline task failed: {e}"),
                Err(_) => {
                    task.abort();
                    tracing::error!(pipeline = %name, "pipeline did not stop; aborted");
                }
                Ok(Ok(())) => {}
            }
        }
        stop_exporters(std::mem::take(&mut self.exporters), deadline).await;
        if let Some((stop, task)) = self.telemetry_server.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        tracing::info!("shutdown complete");
    }
}

/// How long pipelines and exporters may take to drain at shutdown (one attempt per queued request, no retries)
/// before what is left is dropped and logged.
const EXPORTER_DRAIN: Duration = Duration::from_secs(15);

impl RunningExporter {
    /// Stops exporting and closes the queue: whoever waits to enqueue is answered at once, and what is queued is
    /// dropped.
    fn abandon(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
        if let Some(room) = &self.room {
            room.close();
        }
        if let Some(disk) = &self.disk {
            // What is on disk stays there for the next start; a pipeline waiting for room is answered.
            disk.close();
        }
    }
}

/// Stops the exporters: durable queues keep what is left; in-memory queues are drained (one attempt each) until
/// `deadline`, then dropped.
async fn stop_exporters(exporters: Vec<RunningExporter>, deadline: tokio::time::Instant) {
    for running in &exporters {
        let _ = running.cancel.send(true);
        if let Some(disk) = &running.disk {
            // Everything the pipelines passed on is on disk by now; exports in flight stop, and what was not
            // delivered is delivered after the next start.
            disk.close();
            if !disk.is_empty() {
                tracing::info!(exporter = %running.id, left = disk.len(), "requests kept on disk for the next start");
            }
        }
    }
    for running in exporters {
        for worker in running.workers {
            let abort = worker.abort_handle();
            if tokio::time::timeout_at(deadline, worker).await.is_err() {
                abort.abort();
                tracing::error!(exporter = %running.id, "did not drain its queue within {EXPORTER_DRAIN:?}; dropping what is left");
            }
        }
        if let Err(e) = running.exporter.shutdown().await {
            tracing::warn!(exporter = %running.id, "shutdown: {e}");
        }
    }
}

async fn serve_telemetry(
    config: &crate::config::MetricsTelemetry,
    telemetry: Telemetry,
) -> std::io::Result<(oneshot::Sender<()>, JoinHandle<()>)> {
    use crate::server::{HttpServing, serve_http, warn_if_exposed};
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(&config.address.address).await?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let telemetry = telemetry.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    telemetry.render(),
                )
            }
        }),
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let bound = listener.local_addr()?;
    tracing::info!("own metrics on http://{bound}/metrics");
    let serving = HttpServing {
        auth: config.auth.bearer(),
        ..HttpServing::default()
    };
    warn_if_exposed("service.telemetry.metrics", &bound, serving.auth.is_some());
    let task = tokio::spawn(serve_http(listener, app, serving, stop_rx, "own metrics".into()));
    Ok((stop_tx, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::*;
    use crate::config::Config;
    use crate::data::{Payload, Signal};
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use serde::Deserialize;
    use std::sync::Mutex as StdMutex;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Empty {}
    impl ComponentConfig for Empty {}

    /// A receiver that pushes three requests of `spans` spans when started.
    struct Burst;
    crate::factory!(Burst, "burst", Empty, &[Signal::Traces]);
    struct BurstReceiver(Option<Consumers>);
    #[async_trait]
    impl Receiver for BurstReceiver {
        async fn start(&mut self) -> Result<(), ComponentError> {
            let consumers = self.0.take().unwrap();
            let traces = consumers.get(Signal::Traces).unwrap();
            for _ in 0..3 {
                let spans = (0..5).map(|_| Span::default()).collect();
                let request = ExportTraceServiceRequest {
                    resource_spans: vec![ResourceSpans {
                        scope_spans: vec![ScopeSpans {
                            spans,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                };
                traces.consume(Data::traces(request)).await.unwrap();
            }
            Ok(())
        }
        async fn shutdown(&mut self) -> Result<(), ComponentError> {
            Ok(())
        }
    }
    impl ReceiverFactory for Burst {
        fn create(&self, _: &AnyConfig, ctx: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
            Ok(Box::new(BurstReceiver(Some(ctx.consumers))))
        }
    }

    /// A receiver whose start always fails (as `nvml` with `required: true` does on a machine without a GPU).
    struct Failing;
    crate::factory!(Failing, "failing", Empty, &[Signal::Traces]);
    struct FailingReceiver;
    #[async_trait]
    impl Receiver for FailingReceiver {
        async fn start(&mut self) -> Result<(), ComponentError> {
            Err(ComponentError::new("no device"))
        }
        async fn shutdown(&mut self) -> Result<(), ComponentError> {
            Ok(())
        }
    }
    impl ReceiverFactory for Failing {
        fn create(&self, _: &AnyConfig, _: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
            Ok(Box::new(FailingReceiver))
        }
    }

    /// A processor that passes spans on and, at shutdown only, emits one gauge point with the spans it saw.
    struct Counting;
    crate::factory!(Counting, "counting", Empty, &[Signal::Traces, Signal::Metrics]);
    struct CountingProcessor {
        seen: StdMutex<i64>,
        next: Arc<dyn Consumer>,
        out: Option<Arc<dyn Consumer>>,
    }
    #[async_trait]
    impl Consumer for CountingProcessor {
        async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
            *self.seen.lock().unwrap() += data.items() as i64;
            self.next.consume(data).await
        }
    }
    #[async_trait]
    impl Processor for CountingProcessor {
        async fn shutdown(&self) -> Result<(), ComponentError> {
            let seen = *self.seen.lock().unwrap();
            let point = NumberDataPoint {
                value: Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(seen)),
                ..Default::default()
            };
            let request = ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    scope_metrics: vec![ScopeMetrics {
                        metrics: vec![Metric {
                            name: "spans.seen".into(),
                            data: Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Gauge(Gauge {
                                data_points: vec![point],
                            })),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            if let Some(out) = &self.out {
                out.consume(Data::metrics(request))
                    .await
                    .map_err(|e| ComponentError::new(e.to_string()))?;
            }
            Ok(())
        }
    }
    impl ProcessorFactory for Counting {
        fn emits_metrics(&self) -> bool {
            true
        }
        fn create(&self, _: &AnyConfig, ctx: ProcessorContext) -> Result<Arc<dyn Processor>, ComponentError> {
            Ok(Arc::new(CountingProcessor {
                seen: StdMutex::new(0),
                next: ctx.next,
                out: ctx.metrics_output,
            }))
        }
    }

    /// An exporter that keeps what it gets, in a list shared by every instance.
    #[derive(Clone, Default)]
    struct Keep(Arc<StdMutex<Vec<(String, Data)>>>);
    impl Factory for Keep {
        fn type_name(&self) -> &'static str {
            "keep"
        }
        fn signals(&self) -> &'static [Signal] {
            &[Signal::Traces, Signal::Metrics]
        }
        fn default_config(&self) -> AnyConfig {
            Box::new(Empty {})
        }
        fn parse_config(&self, d: &mut dyn erased_serde::Deserializer<'_>) -> Result<AnyConfig, erased_serde::Error> {
            parse_config::<Empty>(d)
        }
    }
    struct KeepExporter(String, Keep);
    #[async_trait]
    impl Exporter for KeepExporter {
        async fn export(&self, data: Data) -> Result<(), ExportError> {
            self.1.0.lock().unwrap().push((self.0.clone(), data));
            Ok(())
        }
    }
    impl ExporterFactory for Keep {
        fn create(&self, _: &AnyConfig, ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
            Ok(Arc::new(KeepExporter(ctx.id.to_string(), self.clone())))
        }
    }

    /// A receiver failing after others started, with a processor that emits metrics: the start stops what it
    /// started and returns the error (it used to wait forever for the metrics pipeline to close).
    #[tokio::test]
    async fn a_receiver_failing_to_start_stops_the_graph_and_returns_its_error() {
        let kept = Keep::default();
        let registry = Registry::default()
            .receiver(Burst)
            .receiver(Failing)
            .processor(Counting)
            .exporter(kept.clone());
        let config = Config::parse(
            r#"
receivers:
  burst:
  failing:
processors:
  counting:
exporters:
  keep/a:
  keep/m:
service:
  telemetry: { metrics: { level: none } }
  pipelines:
    traces: { receivers: [burst, failing], processors: [counting], exporters: [keep/a] }
    metrics: { receivers: [counting], exporters: [keep/m] }
"#,
            &registry,
        )
        .unwrap();
        let started = tokio::time::timeout(Duration::from_secs(10), Service::start(config, &registry))
            .await
            .expect("a failed start returns instead of hanging");
        let Err(e) = started else {
            panic!("the start should fail")
        };
        assert!(e.to_string().contains("receivers.failing: no device"), "{e}");
        let kept = kept.0.lock().unwrap();
        let spans: usize = kept
            .iter()
            .filter(|(id, _)| id == "keep/a")
            .map(|(_, d)| d.items())
            .sum();
        assert_eq!(
            spans, 15,
            "what the first receiver sent before the failure is still delivered"
        );
    }

    #[tokio::test]
    async fn fan_in_fan_out_and_a_processor_feeding_a_metrics_pipeline_at_shutdown() {
        let kept = Keep::default();
        let registry = Registry::default()
            .receiver(Burst)
            .processor(Counting)
            .exporter(kept.clone());
        let config = Config::parse(
            r#"
receivers:
  burst:
  burst/2:
processors:
  counting:
exporters:
  keep/a:
  keep/b:
  keep/m:
service:
  telemetry: { metrics: { level: none } }
  pipelines:
    traces: { receivers: [burst, burst/2], processors: [counting], exporters: [keep/a, keep/b] }
    metrics: { receivers: [counting], exporters: [keep/m] }
"#,
            &registry,
        )
        .unwrap();
        let service = Service::start(config, &registry).await.unwrap();
        service.shutdown().await;
        let kept = kept.0.lock().unwrap();
        for exporter in ["keep/a", "keep/b"] {
            let spans: usize = kept
                .iter()
                .filter(|(id, _)| id == exporter)
                .map(|(_, d)| d.items())
                .sum();
            assert_eq!(spans, 30, "both receivers' spans reach {exporter}");
        }
        let metrics: Vec<&Data> = kept.iter().filter(|(id, _)| id == "keep/m").map(|(_, d)| d).collect();
        assert_eq!(
            metrics.len(),
            1,
            "what the processor emits at shutdown still reaches the metrics exporter"
        );
        let Payload::Metrics(m) = metrics[0].payload() else {
            panic!("metrics expected")
        };
        let point = &m.resource_metrics[0].scope_metrics[0].metrics[0];
        assert_eq!(point.name, "spans.seen");
    }

    /// A processor that notes how many requests are inside it at once, and holds each one (up to two seconds)
    /// until it has seen two at once.
    struct Overlap;
    crate::factory!(Overlap, "overlap", Empty, &[Signal::Traces]);
    struct OverlapProcessor {
        inside: Arc<StdMutex<(usize, usize)>>,
        next: Arc<dyn Consumer>,
    }
    #[async_trait]
    impl Consumer for OverlapProcessor {
        async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
            {
                let mut g = self.inside.lock().unwrap();
                g.0 += 1;
                g.1 = g.1.max(g.0);
            }
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.inside.lock().unwrap().1 < 2 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.inside.lock().unwrap().0 -= 1;
            self.next.consume(data).await
        }
    }
    #[async_trait]
    impl Processor for OverlapProcessor {}
    static OVERLAP: std::sync::LazyLock<Arc<StdMutex<(usize, usize)>>> = std::sync::LazyLock::new(Default::default);
    impl ProcessorFactory for Overlap {
        fn create(&self, _: &AnyConfig, ctx: ProcessorContext) -> Result<Arc<dyn Processor>, ComponentError> {
            Ok(Arc::new(OverlapProcessor {
                inside: OVERLAP.clone(),
                next: ctx.next,
            }))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_traces_pipeline_runs_its_processors_on_every_runtime_thread() {
        let kept = Keep::default();
        let registry = Registry::default()
            .receiver(Burst)
            .processor(Overlap)
            .exporter(kept.clone());
        let config = Config::parse(
            r#"
receivers: { burst: }
processors: { overlap: }
exporters: { keep: }
service:
  telemetry: { metrics: { level: none } }
  pipelines:
    traces: { receivers: [burst], processors: [overlap], exporters: [keep] }
"#,
            &registry,
        )
        .unwrap();
        let service = Service::start(config, &registry).await.unwrap();
        service.shutdown().await;
        let spans: usize = kept.0.lock().unwrap().iter().map(|(_, d)| d.items()).sum();
        assert_eq!(spans, 15, "every span is delivered");
        assert_eq!(
            OVERLAP.lock().unwrap().1,
            2,
            "two requests were in the processor at once"
        );
    }

    #[test]
    fn a_processor_cannot_feed_the_pipeline_it_sits_in() {
        let registry = Registry::default()
            .receiver(Burst)
            .processor(Counting)
            .exporter(Keep::default());
        let err = Config::parse(
            "receivers:\n  burst:\nprocessors:\n  counting:\nexporters:\n  keep:\nservice:\n  pipelines:\n    traces: { receivers: [burst], processors: [counting], exporters: [keep] }\n    metrics: { receivers: [counting], exporters: [keep] }\n    metrics/loop: { receivers: [counting], processors: [counting], exporters: [keep] }\n",
            &registry,
        )
        .unwrap_err();
        assert!(err.message.contains("loop"), "{err}");
    }
}
