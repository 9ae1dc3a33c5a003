//! Processor `model_metrics`: derives the metrics of the contract (section 3) from the spans of model services.
//!
//! It sits in a traces pipeline, passes the spans on unchanged, and every `flush_interval` emits its metrics into
//! the metrics pipelines that list it under `receivers`: request volume by protocol, status code and status class;
//! histograms of end-to-end time, inference time, time to first byte, request and response size, input and
//! output tokens (OTLP exponential histograms, mergeable); and each histogram's quantiles over a sliding window of
//! span end time, as OTLP summaries.

mod assembly;
pub mod classify;
pub mod config;
pub mod gateway;
mod lookup;
mod per_replica;
pub mod profiles;
mod queue;
mod resource;
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
    AnyConfig, ComponentError, Connector, ConnectorContext, ConnectorFactory, ConsumeError, Consumer, Data, Payload,
    ReplicaDirectory, Signal, config_as,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use assembly::{Assembly, Facts, Part, Role, fill};
use classify::{Attributes, Classifier, Rejection, SpanLike, Val, adjusted_count};
use config::{ModelMetricsConfig, Source};
use profiles::{Profiles, Read};
use resource::ResourceFacts;
pub use state::HistogramMetric;
use state::{Dims, DimsId, Observation, State};

pub struct ModelMetricsFactory;

infercol_pipelines::factory!(
    ModelMetricsFactory,
    "model_metrics",
    ModelMetricsConfig,
    &[Signal::Traces]
);

impl ConnectorFactory for ModelMetricsFactory {
    fn routes(&self) -> &'static [(Signal, Signal)] {
        &[(Signal::Traces, Signal::Metrics)]
    }

    fn create(&self, config: &AnyConfig, ctx: ConnectorContext) -> Result<Arc<dyn Connector>, ComponentError> {
        let config = Arc::new(config_as::<ModelMetricsConfig>(config)?.clone());
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
        let seen = Arc::new(assembly::Seen::new(SEEN_SPAN_BITS));
        Ok(Arc::new(ModelMetricsConnector {
            inner: Arc::new(Inner {
                resources: Default::default(),
                classifier: Classifier::new(config.spans.clone()),
                profiles: Profiles::new(&config.spans.profiles),
                assembly: Mutex::new(Assembly::new(
                    assembly::Limits {
                        join_wait_ns: config.spans.join_wait.as_nanos() as u64,
                        orphan_wait_ns: config.spans.orphan_wait.as_nanos() as u64,
                        max_pending: config.spans.max_pending_spans,
                    },
                    seen.clone(),
                )),
                seen,
                waiting: Default::default(),
                candidates_waiting: Default::default(),
                draining: Default::default(),
                model_dimension: config.dimensions.iter().position(|d| d.name == "model"),
                state: Mutex::new(State::new(config.clone(), now)),
                shards: (0..shards)
                    .map(|_| Mutex::new(State::shard(config.clone(), now, admitted.clone())))
                    .collect(),
                admitted,
                next_shard: AtomicUsize::new(0),
                queue: Mutex::new(Default::default()),
                config,
                output: ctx.next,
                replicas: ctx.shared.get::<ReplicaDirectory>(),
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

/// Span ids remembered for the parent rule: 2^18 slots of 8 bytes, 2 MiB.
const SEEN_SPAN_BITS: u32 = 18;

struct Inner {
    config: Arc<ModelMetricsConfig>,
    resources: resource::ResourceCache,
    classifier: Classifier,
    profiles: Profiles,
    /// The parts of requests waiting for the rest of their spans.
    assembly: Mutex<Assembly>,
    /// Spans without is-remote bits, noted without the assembly's lock (see `assembly::Seen`).
    seen: Arc<assembly::Seen>,
    /// The assembly's parts and candidates waiting, as of its last change (read without its lock).
    waiting: AtomicUsize,
    candidates_waiting: AtomicUsize,
    /// Set at shutdown: the last flush resolves every waiting request.
    draining: std::sync::atomic::AtomicBool,
    /// Which dimension a profile's model name replaces.
    model_dimension: Option<usize>,
    /// The series as emitted: what the shards recorded, absorbed at each flush.
    state: Mutex<State>,
    /// Where spans are recorded between flushes, one per runtime thread (see `shard`).
    shards: Box<[Mutex<State>]>,
    next_shard: AtomicUsize,
    /// The dimension values `state` has series of, for the shards (see `State::shard`).
    admitted: state::Admitted,
    /// Requests in the async queues: an enqueue and its dequeue may be recorded in different shards.
    queue: Mutex<queue::QueueTracker>,
    /// The entry of the metrics pipelines that list this connector under `receivers`.
    output: Arc<dyn Consumer>,
    replicas: ReplicaDirectory,
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
                    // `from` names the resource's attributes first, then the span's (a model name on the span).
                    Source::Resource => attribute_text(resource, &d.from)
                        .or_else(|| span.and_then(|attrs| attribute_text(attrs, &d.from))),
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

    #[allow(clippy::too_many_arguments)]
    fn observe_resource<'a, S: SpanLike, I: Iterator<Item = S>>(
        &self,
        state: &mut State,
        (resource, facts): (&[KeyValue], &ResourceFacts),
        scopes: impl Iterator<Item = (&'a str, I)>,
        now: u64,
        gathered: &mut Gathered,
        rejected: &mut Vec<Rejection>,
        overflowed: &mut Vec<&'static str>,
    ) {
        rejected.extend((0..facts.truncated).map(|_| Rejection::LabelTruncated));
        let cx = ResourceContext {
            resource,
            replica: state.per_replica.replica_of(facts.key, resource),
            interned: state.intern(facts.dims.clone()),
            dims: facts.dims.clone(),
            key: facts.key,
            per_span_dims: self.config.dimensions.iter().any(|d| d.source == Source::Span),
            // A dimension the resource lacks may be on the span (`dimensions[].from` falls back to span attributes).
            missing: facts
                .missing
                .iter()
                .map(|&i| self.config.dimensions[i].from.as_slice())
                .collect(),
        };
        let mut batch = Batch {
            state,
            now,
            gathered,
            rejected,
            overflowed,
        };
        let mut replica_active = false;
        for (scope_name, spans) in scopes {
            let profile = self.profiles.detect(&profiles::Scope {
                name: scope_name,
                resource,
            });
            for span in spans {
                replica_active |= self.observe_span(&cx, &mut batch, profile, &span);
            }
        }
        if replica_active && let Some(id) = &facts.replica {
            self.replicas.seen_replica(id, resource, true);
        }
    }

    /// A resource's facts, worked out anew (the owned form of a request, which the cache does not key).
    fn resource_facts(&self, attributes: &[KeyValue]) -> ResourceFacts {
        ResourceFacts::new(
            attributes,
            |resource, cut| self.dims::<[KeyValue]>(resource, None, cut),
            &self.config.dimensions,
        )
    }

    /// One span: by its profile, else by the generic rules. Whether it makes its replica active.
    fn observe_span<S: SpanLike>(
        &self,
        cx: &ResourceContext<'_>,
        batch: &mut Batch<'_>,
        profile: Option<profiles::Profile>,
        span: &S,
    ) -> bool {
        let key = (cx.key, trace_number(span.trace_id()));
        if span.flags() & HAS_IS_REMOTE == 0 {
            let id = assembly::span_key(key, id_number(span.span_id()));
            self.seen.note(id);
            if batch.gathered.collect_noted {
                batch.gathered.noted.push(id);
            }
        }
        let wants_span_dims = cx.per_span_dims
            || cx
                .missing
                .iter()
                .any(|keys| classify::find(span.attributes(), keys).is_some());
        let dims_of = |rejected: &mut Vec<Rejection>| {
            if wants_span_dims {
                self.dims(cx.resource, Some(span.attributes()), rejected)
            } else {
                cx.dims.clone()
            }
        };
        // A span of no profile's scope skips building a `Read` (it holds a request's facts: a few hundred bytes).
        let read = match profile {
            Some(p) => p.read(span),
            None => Read::Generic,
        };
        let part = match read {
            Read::Ignore => return false,
            Read::ModelCall(facts) => {
                let dims = batch.state.intern(dims_of(batch.rejected));
                self.record_model_call(batch.state, dims, span, &facts, batch.now, batch.overflowed);
                return false;
            }
            Read::Part {
                role,
                facts,
                status,
                alone,
            } => {
                let part = self.profile_part(span, key, role, facts, status, dims_of, batch.rejected);
                match part {
                    Some(part) if alone && part.role == Role::Request => {
                        self.record_alone(batch, part);
                        return true;
                    }
                    other => other,
                }
            }
            Read::Generic => {
                let dims = if wants_span_dims {
                    batch.state.intern(dims_of(batch.rejected))
                } else {
                    cx.interned
                };
                let Batch {
                    state,
                    now,
                    rejected,
                    overflowed,
                    ..
                } = batch;
                match self.observe_generic(state, (cx.resource, cx.replica), dims, span, *now, rejected, overflowed) {
                    GenericRequest::No => return false,
                    GenericRequest::Active => return true,
                    GenericRequest::Candidate => {
                        self.profile_part(span, key, Role::Candidate, Facts::default(), None, dims_of, rejected)
                    }
                }
            }
        };
        let Some(part) = part else { return false };
        let active = part.role == Role::Request;
        batch.gathered.parts.push(part);
        active
    }

    /// A request no other span adds to, recorded now.
    fn record_alone(&self, batch: &mut Batch<'_>, part: Part) {
        if let Some(head) = part.head {
            let complete = assembly::Complete {
                head: *head,
                resource: part.key.0,
                start: part.start,
                end: part.end,
                facts: part.facts,
            };
            self.record_complete(batch.state, complete, batch.now, batch.overflowed);
        }
    }

    /// A profile's span as a part of a request: a request or candidate gets its head (dimensions, status,
    /// sampling weight) and the generic reading of its own attributes under the profile's facts. A candidate is
    /// decided here when its span says where its parent is; `None`: a SERVER span under a local parent, no request.
    #[allow(clippy::too_many_arguments)]
    fn profile_part<S: SpanLike>(
        &self,
        span: &S,
        key: assembly::TraceKey,
        role: Role,
        mut facts: Facts,
        status: Option<classify::Status>,
        dims_of: impl FnOnce(&mut Vec<Rejection>) -> Dims,
        rejected: &mut Vec<Rejection>,
    ) -> Option<Part> {
        let role = match role {
            Role::Candidate => match parent_locality(span) {
                Locality::None | Locality::Remote => Role::Request,
                Locality::Local => return None,
                Locality::Unknown => Role::Candidate,
            },
            other => other,
        };
        let profile_facts = facts != Facts::default();
        let head = if role == Role::Stage {
            None
        } else {
            let r = self.classifier.request(span, rejected);
            fill(&mut facts.duration, r.duration);
            if !facts.no_first_byte && !r.first_byte_fell_back {
                fill(&mut facts.time_to_first_byte, r.time_to_first_byte);
            }
            fill(&mut facts.request_size, r.request_size);
            fill(&mut facts.response_size, r.response_size);
            fill(&mut facts.input_tokens, r.input_tokens);
            fill(&mut facts.output_tokens, r.output_tokens);
            // A profile's server says what its queue time is (vLLM's 0.0 means "never measured").
            if !profile_facts {
                fill(&mut facts.queue, r.queue);
            }
            Some(Box::new(assembly::Head {
                dims: dims_of(rejected),
                status: status.unwrap_or(r.status),
                count: adjusted_count(span.trace_state()),
                trace_id: span.trace_id().try_into().unwrap_or([0; 16]),
                span_id: span.span_id().try_into().unwrap_or([0; 8]),
            }))
        };
        Some(Part {
            role,
            key,
            span_id: id_number(span.span_id()),
            parent: id_number(span.parent_span_id()),
            start: span.start(),
            end: span.end(),
            facts,
            head,
        })
    }

    /// The generic rules (contract section 2) for a span no profile claims: inference and async-queue spans are
    /// recorded here, and so is a request span whose parent is known to be remote or absent.
    #[allow(clippy::too_many_arguments)]
    fn observe_generic<S: SpanLike>(
        &self,
        state: &mut State,
        (resource, replica): (&[KeyValue], Option<u64>),
        dims: DimsId,
        span: &S,
        now: u64,
        rejected: &mut Vec<Rejection>,
        overflowed: &mut Vec<&'static str>,
    ) -> GenericRequest {
        let is_request = self.classifier.is_request(span);
        let is_inference = self.classifier.is_inference(span);
        let is_queue = self.classifier.is_async_queue(span);
        let is_enqueue = self.classifier.is_async_enqueue(span);
        let mut outcome = GenericRequest::No;
        if self.classifier.is_model_load(span) {
            outcome = GenericRequest::Active;
        }
        if !is_request && !is_inference && !is_queue && !is_enqueue {
            return outcome;
        }
        let count = adjusted_count(span.trace_state());
        // Histogram counts are integers: a sampled span stands for round(adjusted count) values.
        let at = Recorded {
            dims,
            weight: weight_of(count),
            end_ns: span.end(),
            trace_id: span.trace_id(),
            span_id: span.span_id(),
        };
        let mut record = |state: &mut State, metric: HistogramMetric, value: Option<f64>| {
            at.record_one(state, metric, value, now, overflowed);
        };
        if is_inference {
            let duration = Classifier::duration(span, rejected);
            record(state, HistogramMetric::InferenceDuration, duration);
        }
        if is_enqueue && let Some(id) = self.classifier.message_id(span) {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let values = state.dims(dims).clone();
            let model = infercol_pipelines::replicas::model_dims(resource);
            queue.enqueue(&id, &values, model, std::time::Instant::now());
        }
        if is_queue {
            let duration = Classifier::duration(span, rejected);
            record(state, HistogramMetric::AsyncQueueDuration, duration);
            if let Some(id) = self.classifier.message_id(span) {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                queue.dequeue(&id, std::time::Instant::now());
            }
        }
        if is_request {
            match parent_locality(span) {
                Locality::Local => return outcome,
                Locality::Unknown => return GenericRequest::Candidate,
                Locality::None | Locality::Remote => {}
            }
            let r = self.classifier.request(span, rejected);
            let counted_in_overflow = state.count_request(dims, &r.status, count, now);
            if let Some(replica) = replica {
                state.per_replica.record(replica, count, at.weight, r.duration, now);
            }
            record(state, HistogramMetric::RequestDuration, r.duration);
            record(state, HistogramMetric::TimeToFirstByte, r.time_to_first_byte);
            record(state, HistogramMetric::RequestSize, r.request_size);
            record(state, HistogramMetric::ResponseSize, r.response_size);
            record(state, HistogramMetric::InputTokens, r.input_tokens);
            record(state, HistogramMetric::OutputTokens, r.output_tokens);
            record(state, HistogramMetric::QueueDuration, r.queue);
            if counted_in_overflow {
                overflowed.push("model.requests");
            }
            outcome = GenericRequest::Active;
        }
        outcome
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
        // Only while candidates wait are the noted span ids looked up (one allocation, none per span).
        let collect_noted = self.candidates_waiting.load(Ordering::Relaxed) > 0;
        let mut gathered = Gathered {
            parts: Vec::new(),
            noted: Vec::with_capacity(if collect_noted { data.items() } else { 0 }),
            collect_noted,
        };
        let mut state = self.shard();
        if let Some(view) = data.view() {
            for rs in view.resources() {
                // The resource's facts, worked out once per distinct resource (see `resource`).
                let cached = self
                    .resources
                    .get_or_insert(&rs.attributes(), |owned| self.resource_facts(owned));
                let scopes = rs.scopes().map(|scope| (scope.name(), scope.spans()));
                self.observe_resource(
                    &mut state,
                    (&cached.attributes, &cached.facts),
                    scopes,
                    now,
                    &mut gathered,
                    &mut rejected,
                    &mut overflowed,
                );
            }
        } else if let Payload::Traces(request) = data.payload() {
            for rs in &request.resource_spans {
                let resource: &[KeyValue] = rs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
                let facts = self.resource_facts(resource);
                let scopes = rs.scope_spans.iter().map(|ss| {
                    let name = ss.scope.as_ref().map(|s| s.name.as_str()).unwrap_or("");
                    (name, ss.spans.iter())
                });
                self.observe_resource(
                    &mut state,
                    (resource, &facts),
                    scopes,
                    now,
                    &mut gathered,
                    &mut rejected,
                    &mut overflowed,
                );
            }
        }
        drop(state);
        if !gathered.parts.is_empty() || !gathered.noted.is_empty() || self.waiting.load(Ordering::Relaxed) > 0 {
            let resolved = {
                let mut assembly = self.assembly.lock().unwrap_or_else(PoisonError::into_inner);
                assembly.note_spans(&gathered.noted);
                for part in gathered.parts {
                    assembly.add(part, now);
                }
                let resolved = assembly.expire(now);
                self.publish_waiting(&assembly);
                resolved
            };
            self.record_resolved(resolved, now, &mut rejected, &mut overflowed);
        }
        self.count_rejected(rejected);
        for metric in overflowed {
            self.count_overflow(metric, 1);
        }
    }

    fn publish_waiting(&self, assembly: &Assembly) {
        self.waiting.store(assembly.pending(), Ordering::Relaxed);
        self.candidates_waiting.store(assembly.candidates(), Ordering::Relaxed);
    }

    fn count_rejected(&self, rejected: Vec<Rejection>) {
        for r in rejected {
            self.rejected
                .get_or_create(&vec![
                    ("processor".into(), self.id.clone()),
                    ("reason".into(), r.as_str().into()),
                ])
                .inc();
        }
    }

    /// Records the requests whose wait is over, and counts the stages that found none.
    fn record_resolved(
        &self,
        resolved: assembly::Resolved,
        now: u64,
        rejected: &mut Vec<Rejection>,
        overflowed: &mut Vec<&'static str>,
    ) {
        rejected.extend((0..resolved.orphans).map(|_| Rejection::OrphanSpan));
        if resolved.requests.is_empty() {
            return;
        }
        let mut state = self.shard();
        for request in resolved.requests {
            self.record_complete(&mut state, request, now, overflowed);
        }
    }

    /// One request with every fact its spans gave: counted, and each of its values recorded.
    fn record_complete(&self, state: &mut State, c: assembly::Complete, now: u64, overflowed: &mut Vec<&'static str>) {
        let status = assembly::final_status(&c.head, &c.facts);
        let dims = state.intern(self.with_model(c.head.dims.clone(), c.facts.model.as_deref()));
        if state.count_request(dims, &status, c.head.count, now) {
            overflowed.push("model.requests");
        }
        let f = &c.facts;
        state
            .per_replica
            .record(c.resource, c.head.count, weight_of(c.head.count), f.duration, now);
        let since_start = |t: u64| (t >= c.start).then(|| (t - c.start) as f64 / 1e9);
        let time_to_first_byte = f
            .time_to_first_byte
            .or_else(|| f.first_byte_ns.and_then(since_start))
            .or_else(|| f.token_sent_ns.filter(|_| f.streamed).and_then(since_start))
            .or(
                if f.no_first_byte || !self.config.spans.time_to_first_byte_falls_back_to_duration {
                    None
                } else {
                    f.duration
                },
            );
        let queue = f.queue.or_else(|| match (f.queue_start_ns, f.execution_start_ns) {
            (Some(q), Some(e)) if e >= q => Some((e - q) as f64 / 1e9),
            _ => None,
        });
        let at = Recorded {
            dims,
            weight: weight_of(c.head.count),
            end_ns: c.end,
            trace_id: &c.head.trace_id,
            span_id: &c.head.span_id,
        };
        let values = [
            (HistogramMetric::RequestDuration, f.duration),
            (HistogramMetric::InferenceDuration, f.inference),
            (HistogramMetric::TimeToFirstByte, time_to_first_byte),
            (HistogramMetric::RequestSize, f.request_size),
            (HistogramMetric::ResponseSize, f.response_size),
            (HistogramMetric::InputTokens, f.input_tokens),
            (HistogramMetric::OutputTokens, f.output_tokens),
            (HistogramMetric::QueueDuration, queue),
        ];
        at.record(state, &values, now, overflowed);
    }

    /// A model call's inference time and tokens, for the calling service's dimensions.
    fn record_model_call<S: SpanLike>(
        &self,
        state: &mut State,
        dims: DimsId,
        span: &S,
        facts: &Facts,
        now: u64,
        overflowed: &mut Vec<&'static str>,
    ) {
        let at = Recorded {
            dims,
            weight: weight_of(adjusted_count(span.trace_state())),
            end_ns: span.end(),
            trace_id: span.trace_id(),
            span_id: span.span_id(),
        };
        let values = [
            (HistogramMetric::InferenceDuration, facts.inference),
            (HistogramMetric::InputTokens, facts.input_tokens),
            (HistogramMetric::OutputTokens, facts.output_tokens),
        ];
        at.record(state, &values, now, overflowed);
    }

    /// The dimensions with the model a server named on its spans in place of the resource's.
    fn with_model(&self, dims: Dims, model: Option<&str>) -> Dims {
        let (Some(model), Some(at)) = (model, self.model_dimension) else {
            return dims;
        };
        let cut = infercol_pipelines::replicas::truncate_label(model, self.config.max_label_value_length).0;
        let mut values = dims.to_vec();
        values[at] = cut.into_owned();
        values.into()
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

impl Inner {
    /// Records the requests whose wait is over (all of them at shutdown), before the shards are absorbed.
    fn resolve_waiting(&self) {
        let now = now_ns();
        let resolved = {
            let mut assembly = self.assembly.lock().unwrap_or_else(PoisonError::into_inner);
            let resolved = if self.draining.load(Ordering::Relaxed) {
                assembly.drain()
            } else {
                assembly.expire(now)
            };
            self.publish_waiting(&assembly);
            resolved
        };
        let (mut rejected, mut overflowed) = (Vec::new(), Vec::new());
        self.record_resolved(resolved, now, &mut rejected, &mut overflowed);
        self.count_rejected(rejected);
        for metric in overflowed {
            self.count_overflow(metric, 1);
        }
    }
}

/// The OTLP span flags bit that says whether the parent is remote is known (and the bit that says it is).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// What every span of one resource shares.
struct ResourceContext<'r> {
    resource: &'r [KeyValue],
    /// The resource's dimension values, and their series key in the shard being recorded.
    dims: Dims,
    interned: DimsId,
    /// The resource's identity (see `resource_identity`).
    key: u64,
    /// The replica the resource is, when it names one (see `per_replica`): its key.
    replica: Option<u64>,
    per_span_dims: bool,
    /// The `from` lists of the resource-sourced dimensions this resource lacks.
    missing: Vec<&'r [String]>,
}

/// Where one export request's spans are recorded, and what they leave for later.
struct Batch<'b> {
    state: &'b mut State,
    now: u64,
    gathered: &'b mut Gathered,
    rejected: &'b mut Vec<Rejection>,
    overflowed: &'b mut Vec<&'static str>,
}

/// Where a request's or a span's values go: its series, weight, end time and exemplar ids.
struct Recorded<'a> {
    dims: DimsId,
    weight: u64,
    end_ns: u64,
    trace_id: &'a [u8],
    span_id: &'a [u8],
}

impl Recorded<'_> {
    /// Records each value that is there; a point that went to the overflow series is noted.
    fn record(
        &self,
        state: &mut State,
        values: &[(HistogramMetric, Option<f64>)],
        now: u64,
        overflowed: &mut Vec<&'static str>,
    ) {
        for &(metric, value) in values {
            self.record_one(state, metric, value, now, overflowed);
        }
    }

    // Inlined into the per-span path: a call per value there was a tenth of model_metrics' instructions.
    #[inline(always)]
    fn record_one(
        &self,
        state: &mut State,
        metric: HistogramMetric,
        value: Option<f64>,
        now: u64,
        overflowed: &mut Vec<&'static str>,
    ) {
        let Some(value) = value else { return };
        let obs = Observation {
            value,
            weight: self.weight,
            end_ns: self.end_ns,
            trace_id: self.trace_id,
            span_id: self.span_id,
        };
        if state.record(metric, self.dims, obs, now) {
            overflowed.push(metric.name());
        }
    }
}

/// What one export request leaves for the assembly, gathered before its lock is taken.
#[derive(Default)]
struct Gathered {
    parts: Vec<Part>,
    /// `span_key`s of spans without is-remote bits (they may be the parent of a waiting candidate), gathered
    /// only while candidates wait.
    noted: Vec<u64>,
    collect_noted: bool,
}

/// What the generic rules did with a span.
enum GenericRequest {
    No,
    /// A request or a model load: the replica is active.
    Active,
    /// A SERVER span whose parent may be local: it waits in the assembly.
    Candidate,
}

/// Where a span's parent is, as far as the span itself says.
enum Locality {
    None,
    Remote,
    Local,
    Unknown,
}

fn parent_locality(span: &impl SpanLike) -> Locality {
    let flags = span.flags();
    if span.parent_span_id().iter().all(|b| *b == 0) {
        Locality::None
    } else if flags & HAS_IS_REMOTE == 0 {
        Locality::Unknown
    } else if flags & IS_REMOTE != 0 {
        Locality::Remote
    } else {
        Locality::Local
    }
}

/// Histogram counts are integers: a sampled span stands for round(adjusted count) values.
fn weight_of(count: f64) -> u64 {
    if count == 1.0 { 1 } else { count.round().max(1.0) as u64 }
}

fn trace_number(id: &[u8]) -> u128 {
    match <[u8; 16]>::try_from(id) {
        Ok(bytes) => u128::from_be_bytes(bytes),
        Err(_) => u128::from(hash_bytes(id)),
    }
}

/// A span id as a number; 0 when there is none.
fn id_number(id: &[u8]) -> u64 {
    match <[u8; 8]>::try_from(id) {
        Ok(bytes) => u64::from_be_bytes(bytes),
        Err(_) if id.is_empty() => 0,
        Err(_) => hash_bytes(id),
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

#[async_trait]
impl crate::ticker::Flush for Inner {
    async fn flush(&self) -> Result<(), ConsumeError> {
        self.resolve_waiting();
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
        match request {
            Some(request) => self.output.consume(Data::metrics(request)).await,
            None => Ok(()),
        }
    }
}

/// The traces-to-metrics connector: it records what the spans say and emits the metrics on its flush interval.
pub struct ModelMetricsConnector {
    inner: Arc<Inner>,
    timer: crate::ticker::Ticker,
}

#[async_trait]
impl Consumer for ModelMetricsConnector {
    async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
        if data.signal() == Signal::Traces {
            self.inner.observe(&data);
        }
        Ok(())
    }
}

#[async_trait]
impl Connector for ModelMetricsConnector {
    async fn start(&self) -> Result<(), ComponentError> {
        self.timer.flush_every(
            self.inner.config.flush_interval,
            self.inner.clone(),
            "model_metrics: emitting derived metrics",
        );
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), ComponentError> {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.timer
            .stop_and_flush(&*self.inner, "emitting derived metrics")
            .await
    }
}
