//! An exporter's bounded sending queue, its workers and their retries (the Collector's exporterhelper).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::component::{ComponentId, ConsumeError, Consumer, Exporter};
use crate::data::Data;
use crate::delivery::{RetryOnFailure, Sizer};
use crate::disk_queue::DiskQueue;
use crate::telemetry::ExporterCounters;

use super::entry::RETRY_AFTER;

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

/// A started exporter: its workers empty the queue.
pub(crate) struct RunningExporter {
    pub id: ComponentId,
    exporter: Arc<dyn Exporter>,
    workers: Vec<JoinHandle<()>>,
    disk: Option<Arc<DiskQueue>>,
    cancel: tokio::sync::watch::Sender<bool>,
    /// The room of a queue counted in items or bytes, closed when the queue is abandoned at shutdown.
    room: Option<Arc<tokio::sync::Semaphore>>,
}

/// How long pipelines and exporters may take to drain at shutdown (one attempt per queued request, no retries)
/// before what is left is dropped and logged.
pub(crate) const EXPORTER_DRAIN: Duration = Duration::from_secs(15);

impl RunningExporter {
    /// From here on nothing is retried: each request still queued gets one attempt.
    pub fn stop_retrying(&self) {
        let _ = self.cancel.send(true);
    }

    /// Stops exporting and closes the queue: whoever waits to enqueue is answered at once, and what is queued is
    /// dropped.
    pub fn abandon(&mut self) {
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
pub(crate) async fn stop_exporters(exporters: Vec<RunningExporter>, deadline: tokio::time::Instant) {
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

/// An exporter created with its queue, not yet started: nothing is sent until [`ExporterNode::start`].
pub(crate) struct ExporterNode {
    pub id: ComponentId,
    exporter: Arc<dyn Exporter>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>,
    consumers: usize,
    retry: RetryOnFailure,
    disk: Option<Arc<DiskQueue>>,
    counters: ExporterCounters,
    room: Option<Arc<tokio::sync::Semaphore>>,
    /// The queue's entry, for the fan-outs of the pipelines that name this exporter.
    pub queue: Arc<dyn Consumer>,
}

impl ExporterNode {
    /// Creates the exporter and its queue (opening a durable one).
    pub fn build(
        declared: &crate::config::Declared,
        factory: &dyn crate::component::ExporterFactory,
        telemetry: &crate::telemetry::Telemetry,
    ) -> Result<ExporterNode, String> {
        let id = declared.id.clone();
        let exporter = factory
            .create(
                &declared.config,
                crate::component::ExporterContext {
                    id: id.clone(),
                    telemetry: telemetry.clone(),
                },
            )
            .map_err(|e| e.to_string())?;
        let counters = telemetry.exporter(&id);
        let (queue, retry) = factory.delivery(&declared.config).unwrap_or_else(|| {
            let mut q = crate::delivery::SendingQueue::local();
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
                let opened = DiskQueue::open(&dir, capacity)
                    .map_err(|e| format!("sending_queue.storage {}: {e}", dir.display()))?;
                Some(Arc::new(opened))
            }
            _ => None,
        };
        // In items or bytes, the room bounds the queue and the channel only the requests (one item or byte each at
        // least).
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
        let room_handle = room.as_ref().map(|(_, semaphore, _)| semaphore.clone());
        let entry = ExporterQueue {
            tx,
            room,
            disk: disk.clone(),
            counters: counters.clone(),
            drop_on_overflow: queue.drop_on_overflow,
            id: id.clone(),
        };
        Ok(ExporterNode {
            id,
            exporter,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            consumers,
            retry,
            disk,
            counters,
            room: room_handle,
            queue: Arc::new(entry),
        })
    }

    /// Starts the exporter, then the workers that empty its queue.
    pub async fn start(self) -> Result<RunningExporter, crate::component::ComponentError> {
        self.exporter.start().await?;
        let (cancel, _) = tokio::sync::watch::channel(false);
        let workers = (0..self.consumers)
            .map(|_| {
                let worker = Worker {
                    id: self.id.clone(),
                    exporter: self.exporter.clone(),
                    counters: self.counters.clone(),
                    policy: self.retry.clone(),
                    cancelled: cancel.subscribe(),
                };
                match self.disk.clone() {
                    Some(disk) => tokio::spawn(worker.drain_disk(disk)),
                    None => tokio::spawn(worker.drain_memory(self.rx.clone())),
                }
            })
            .collect();
        Ok(RunningExporter {
            id: self.id,
            exporter: self.exporter,
            workers,
            disk: self.disk,
            cancel,
            room: self.room,
        })
    }
}

/// One consumer of an exporter's queue.
struct Worker {
    id: ComponentId,
    exporter: Arc<dyn Exporter>,
    counters: ExporterCounters,
    policy: RetryOnFailure,
    cancelled: tokio::sync::watch::Receiver<bool>,
}

impl Worker {
    /// A durable queue is not drained at shutdown: what is left stays on disk.
    async fn drain_disk(mut self, disk: Arc<DiskQueue>) {
        while let Some((record, data)) = disk.pop().await {
            let mut stopping = self.cancelled.clone();
            let delivered = tokio::select! {
                _ = export_with_retry(&self.id, self.exporter.as_ref(), data, &self.counters, &self.policy, &mut stopping) => true,
                _ = self.cancelled.wait_for(|c| *c) => false,
            };
            if !delivered {
                break;
            }
            disk.done(record);
            self.counters.queue_size.set(disk.len() as i64);
        }
    }

    async fn drain_memory(mut self, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>) {
        loop {
            let next = rx.lock().await.recv().await;
            let Some((data, _share)) = next else { break };
            self.counters.queue_size.dec();
            export_with_retry(
                &self.id,
                self.exporter.as_ref(),
                data,
                &self.counters,
                &self.policy,
                &mut self.cancelled,
            )
            .await;
        }
    }
}
