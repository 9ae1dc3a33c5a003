//! Processor `model_metrics`: derives the metrics of the contract (section 3) from the spans of model services.
//!
//! It sits in a traces pipeline, passes the spans on unchanged, and every `flush_interval` emits its metrics into
//! the metrics pipelines that list it under `receivers`: request volume by protocol, status code and status class;
//! histograms of end-to-end time, inference time, time to first byte, request and response size, input and
//! output tokens (OTLP exponential histograms, mergeable); and each histogram's quantiles over a sliding window of
//! span end time, as OTLP summaries.

pub mod classify;
pub mod config;
pub mod gateway;
mod queue;
mod state;
pub mod window;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use infercol_pipelines::telemetry::Labels;
use infercol_pipelines::{
    AnyConfig, ComponentError, ConsumeError, Consumer, Data, Payload, Processor, ProcessorContext, ProcessorFactory,
    Signal, config_as,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use classify::{Attributes, Classifier, Rejection, SpanLike, Val, adjusted_count};
use config::{ModelMetricsConfig, Source};
pub use state::HistogramMetric;
use state::{Dims, Observation, State};

pub struct ModelMetricsFactory;

infercol_pipelines::factory!(
    ModelMetricsFactory,
    "model_metrics",
    ModelMetricsConfig,
    &[Signal::Traces]
);

impl ProcessorFactory for ModelMetricsFactory {
    fn emits_metrics(&self) -> bool {
        true
    }

    fn create(&self, config: &AnyConfig, ctx: ProcessorContext) -> Result<Arc<dyn Processor>, ComponentError> {
        let config = Arc::new(config_as::<ModelMetricsConfig>(config)?.clone());
        if ctx.metrics_output.is_none() {
            tracing::warn!(
                processor = %ctx.id,
                "no metrics pipeline lists this processor under `receivers`: its metrics go nowhere"
            );
        }
        let id = ctx.id.to_string();
        let rejected = ctx.telemetry.counter_family(
            "infercol_model_metrics_rejected_values",
            "Span values model_metrics could not use (end before start, non-numeric or negative values), by reason.",
        );
        let overflow = ctx.telemetry.counter_family(
            "infercol_model_metrics_overflow_points",
            "Points recorded into the otel_metric_overflow series because a metric reached cardinality_limit.",
        );
        let queue_lost = ctx.telemetry.counter_family(
            "infercol_model_metrics_queue_entries_expired",
            "Enqueued requests whose dequeue span never came within queue_entry_ttl (dropped from the queue size).",
        );
        // One recording shard per thread of the runtime: the pipeline's workers record concurrently, each into a
        // shard it finds free, and the flush absorbs the shards into the one state that emits.
        let shards = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1)
            .max(1);
        let now = now_ns();
        let admitted = state::Admitted::default();
        Ok(Arc::new(ModelMetricsProcessor {
            inner: Arc::new(Inner {
                classifier: Classifier::new(config.spans.clone()),
                state: Mutex::new(State::new(config.clone(), now)),
                shards: (0..shards)
                    .map(|_| Mutex::new(State::shard(config.clone(), now, admitted.clone())))
                    .collect(),
                admitted,
                next_shard: AtomicUsize::new(0),
                queue: Mutex::new(Default::default()),
                config,
                next: ctx.next,
                output: ctx.metrics_output,
                replicas: ctx.replicas,
                id,
                rejected,
                overflow,
                queue_lost,
            }),
            timer: Default::default(),
        }))
    }
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

struct Inner {
    config: Arc<ModelMetricsConfig>,
    classifier: Classifier,
    /// The series as emitted: what the shards recorded, absorbed at each flush.
    state: Mutex<State>,
    /// Where spans are recorded between flushes, one per runtime thread (see `shard`).
    shards: Box<[Mutex<State>]>,
    next_shard: AtomicUsize,
    /// The dimension values `state` has series of, for the shards (see `State::shard`).
    admitted: state::Admitted,
    /// Requests in the async queues: an enqueue and its dequeue may be recorded in different shards.
    queue: Mutex<queue::QueueTracker>,
    next: Arc<dyn Consumer>,
    output: Option<Arc<dyn Consumer>>,
    replicas: infercol_pipelines::ReplicaDirectory,
    id: String,
    rejected: Family<Labels, Counter>,
    overflow: Family<Labels, Counter>,
    queue_lost: Family<Labels, Counter>,
}

/// The value of a string attribute (other types as their text), when present.
fn attribute_text<A: Attributes + ?Sized>(attributes: &A, keys: &[String]) -> Option<String> {
    match classify::find(attributes, keys)? {
        Val::Str(s) if !s.is_empty() => Some(s.to_string()),
        Val::Int(i) => Some(i.to_string()),
        Val::Double(d) => Some(d.to_string()),
        Val::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Inner {
    /// The dimension values of a resource (and span); a value over `max_label_value_length` is cut and counted.
    fn dims<A: Attributes + ?Sized>(
        &self,
        resource: &[KeyValue],
        span: Option<&A>,
        rejected: &mut Vec<Rejection>,
    ) -> Dims {
        let max = self.config.max_label_value_length;
        self.config
            .dimensions
            .iter()
            .map(|d| {
                let text = match d.source {
                    Source::Resource => attribute_text(resource, &d.from),
                    Source::Span => span.and_then(|attrs| attribute_text(attrs, &d.from)),
                };
                let text = text.unwrap_or_else(|| d.default.clone());
                match infercol_pipelines::replicas::truncate_label(&text, max) {
                    (cut, true) => {
                        rejected.push(Rejection::LabelTruncated);
                        cut.into_owned()
                    }
                    _ => text,
                }
            })
            .collect::<Vec<_>>()
            .into()
    }

    fn observe_resource<S: SpanLike>(
        &self,
        state: &mut State,
        resource: &[KeyValue],
        spans: impl Iterator<Item = S>,
        now: u64,
        rejected: &mut Vec<Rejection>,
        overflowed: &mut Vec<&'static str>,
    ) {
        let per_span_dims = self.config.dimensions.iter().any(|d| d.source == Source::Span);
        let resource_dims = state.intern(self.dims::<S::Attrs>(resource, None, rejected));
        let mut replica_active = false;
        for span in spans {
            let is_request = self.classifier.is_request(&span);
            let is_inference = self.classifier.is_inference(&span);
            let is_queue = self.classifier.is_async_queue(&span);
            let is_enqueue = self.classifier.is_async_enqueue(&span);
            replica_active |= is_request || self.classifier.is_model_load(&span);
            if !is_request && !is_inference && !is_queue && !is_enqueue {
                continue;
            }
            let dims = if per_span_dims {
                state.intern(self.dims(resource, Some(span.attributes()), rejected))
            } else {
                resource_dims
            };
            let count = adjusted_count(span.trace_state());
            // Histogram counts are integers: a sampled span stands for round(adjusted count) values.
            let weight = if count == 1.0 { 1 } else { count.round().max(1.0) as u64 };
            let mut record = |state: &mut State, metric: HistogramMetric, value: Option<f64>| {
                if let Some(value) = value {
                    let obs = Observation {
                        value,
                        weight,
                        end_ns: span.end(),
                        trace_id: span.trace_id(),
                        span_id: span.span_id(),
                    };
                    if state.record(metric, dims, obs, now) {
                        overflowed.push(metric.name());
                    }
                }
            };
            if is_inference {
                let duration = Classifier::duration(&span, rejected);
                record(state, HistogramMetric::InferenceDuration, duration);
            }
            if is_enqueue && let Some(id) = self.classifier.message_id(&span) {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let model = infercol_pipelines::replicas::model_dims(resource);
                let values = state.dims(dims).clone();
                queue.enqueue(&id, &values, model, std::time::Instant::now());
            }
            if is_queue {
                let duration = Classifier::duration(&span, rejected);
                record(state, HistogramMetric::AsyncQueueDuration, duration);
                if let Some(id) = self.classifier.message_id(&span) {
                    let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                    queue.dequeue(&id, std::time::Instant::now());
                }
            }
            if is_request {
                let r = self.classifier.request(&span, rejected);
                let counted_in_overflow = state.count_request(dims, &r.status, count, now);
                record(state, HistogramMetric::RequestDuration, r.duration);
                record(state, HistogramMetric::TimeToFirstByte, r.time_to_first_byte);
                record(state, HistogramMetric::RequestSize, r.request_size);
                record(state, HistogramMetric::ResponseSize, r.response_size);
                record(state, HistogramMetric::InputTokens, r.input_tokens);
                record(state, HistogramMetric::OutputTokens, r.output_tokens);
                if counted_in_overflow {
                    overflowed.push("model.requests");
                }
            }
        }
        if replica_active {
            self.replicas.seen(resource, true);
        }
    }

    /// A recording shard no other thread holds, if there is one (tried from a rotating start, so that threads
    /// spread over the shards); otherwise the first one tried, waited for. A shard whose holder panicked is
    /// used as it is: its series are whole values (a panic between two of them leaves a request part-recorded).
    fn shard(&self) -> MutexGuard<'_, State> {
        let n = self.shards.len();
        let start = self.next_shard.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            match self.shards[(start + i) % n].try_lock() {
                Ok(shard) => return shard,
                Err(TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.shards[start].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the spans of a request: the owned form, or the borrowed view of `data` when it has one (no string
    /// of a span is copied then).
    fn observe(&self, data: &Data) {
        let now = now_ns();
        let mut rejected: Vec<Rejection> = Vec::new();
        let mut overflowed: Vec<&'static str> = Vec::new();
        let mut state = self.shard();
        if let Some(view) = data.view() {
            for rs in view.resources() {
                // The resource's attributes in the owned form, once per resource (dimensions, replicas, queues).
                let resource = rs.attributes().owned();
                self.observe_resource(&mut state, &resource, rs.spans(), now, &mut rejected, &mut overflowed);
            }
        } else if let Payload::Traces(request) = data.payload() {
            for rs in &request.resource_spans {
                let resource: &[KeyValue] = rs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
                let spans = rs.scope_spans.iter().flat_map(|ss| &ss.spans);
                self.observe_resource(&mut state, resource, spans, now, &mut rejected, &mut overflowed);
            }
        }
        drop(state);
        for r in rejected {
            self.rejected
                .get_or_create(&vec![
                    ("processor".into(), self.id.clone()),
                    ("reason".into(), r.as_str().into()),
                ])
                .inc();
        }
        for metric in overflowed {
            self.count_overflow(metric, 1);
        }
    }

    /// Counts `points` recorded into the overflow series of `metric`.
    fn count_overflow(&self, metric: &str, points: u64) {
        self.overflow
            .get_or_create(&vec![
                ("processor".into(), self.id.clone()),
                ("metric".into(), metric.into()),
            ])
            .inc_by(points);
    }
}

#[async_trait]
impl crate::ticker::Flush for Inner {
    async fn flush(&self) -> Result<(), ConsumeError> {
        let mut overflowed = Vec::new();
        let (request, lost) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            // Each shard is swapped for an empty one under its lock (recording waits only for the swap), then all
            // are absorbed. Lock order: the state, then one shard at a time; recording takes only a shard.
            let taken: Vec<State> = self
                .shards
                .iter()
                .map(|shard| {
                    let fresh = State::shard(self.config.clone(), now_ns(), self.admitted.clone());
                    std::mem::replace(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner), fresh)
                })
                .collect();
            // The time of the points: after every swap, so that no series absorbed starts after it.
            let now = now_ns();
            state.absorb(taken, now, &mut overflowed);
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let emitted = state.flush(now, &self.replicas, &mut queue);
            state.publish_admitted(&self.admitted);
            emitted
        };
        for (metric, points) in overflowed {
            self.count_overflow(metric, points);
        }
        if lost > 0 {
            tracing::warn!(processor = %self.id, lost, "queued requests never dequeued within queue_entry_ttl; dropped from the queue size");
            self.queue_lost
                .get_or_create(&vec![("processor".into(), self.id.clone())])
                .inc_by(lost);
        }
        match (request, &self.output) {
            (Some(request), Some(output)) => output.consume(Data::metrics(request)).await,
            _ => Ok(()),
        }
    }
}

pub struct ModelMetricsProcessor {
    inner: Arc<Inner>,
    timer: crate::ticker::Ticker,
}

#[async_trait]
impl Consumer for ModelMetricsProcessor {
    async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
        if data.signal() == Signal::Traces {
            self.inner.observe(&data);
        }
        self.inner.next.consume(data).await
    }
}

#[async_trait]
impl Processor for ModelMetricsProcessor {
    async fn start(&self) -> Result<(), ComponentError> {
        self.timer.flush_every(
            self.inner.config.flush_interval,
            self.inner.clone(),
            "model_metrics: emitting derived metrics",
        );
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), ComponentError> {
        self.timer
            .stop_and_flush(&*self.inner, "emitting derived metrics")
            .await
    }
}
