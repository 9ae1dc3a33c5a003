//! The series the processor keeps: one counter per (dimensions, protocol, status), one histogram pair
//! (exported histogram + quantile window) per (metric, dimensions). Bounded by `cardinality_limit` per metric
//! (the rest goes to one overflow series) and by `metrics_expiration` (idle series are dropped).

// hashbrown's default hasher (foldhash) is several times faster than std's SipHash on these short string keys,
// and still seeded per map; the cardinality limit bounds what an adversary can put in a map.
use hashbrown::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, Sum, Summary, exemplar, metric::Data as MetricData, number_data_point,
};

use infercol_pipelines::ReplicaDirectory;

/// Replicas listed one by one (`model.replica.state_since`) at most, over all models.
pub const REPLICA_TABLE_LIMIT: usize = 1000;

use super::classify::Status;
use super::config::{ModelMetricsConfig, Temporality};
use super::window::QuantileWindow;
use infercol_pipelines::histogram::{
    ExplicitHistogram, ExpoHistogram, Indexed, MAX_SCALE, quantile_error_metadata, relative_error_at,
};

/// The derived histograms, in the contract's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistogramMetric {
    RequestDuration,
    InferenceDuration,
    TimeToFirstByte,
    RequestSize,
    ResponseSize,
    InputTokens,
    OutputTokens,
    AsyncQueueDuration,
    /// Time a request waited inside the model server (its scheduler or batch queue) before it was executed.
    QueueDuration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quantity {
    Seconds,
    Bytes,
    Tokens,
}

impl HistogramMetric {
    pub const ALL: [HistogramMetric; 9] = [
        HistogramMetric::RequestDuration,
        HistogramMetric::InferenceDuration,
        HistogramMetric::TimeToFirstByte,
        HistogramMetric::RequestSize,
        HistogramMetric::ResponseSize,
        HistogramMetric::InputTokens,
        HistogramMetric::OutputTokens,
        HistogramMetric::AsyncQueueDuration,
        HistogramMetric::QueueDuration,
    ];

    /// (OTLP name, unit, description)
    fn describe(self) -> (&'static str, &'static str, &'static str) {
        match self {
            HistogramMetric::RequestDuration => ("model.request.duration", "s", "End-to-end time of requests."),
            HistogramMetric::InferenceDuration => ("model.inference.duration", "s", "Time spent in inference."),
            HistogramMetric::TimeToFirstByte => ("model.time_to_first_byte", "s", "Time to the first byte or token."),
            HistogramMetric::RequestSize => ("model.request.size", "By", "Size of request bodies."),
            HistogramMetric::ResponseSize => ("model.response.size", "By", "Size of response bodies."),
            HistogramMetric::InputTokens => ("model.input_tokens", "{token}", "Input tokens per request."),
            HistogramMetric::OutputTokens => ("model.output_tokens", "{token}", "Output tokens per request."),
            HistogramMetric::AsyncQueueDuration => (
                "model.async_queue.duration",
                "s",
                "Time requests waited in the async queue.",
            ),
            HistogramMetric::QueueDuration => (
                "model.queue.duration",
                "s",
                "Time requests waited inside the model server before they were executed.",
            ),
        }
    }

    fn quantity(self) -> Quantity {
        match self {
            HistogramMetric::RequestDuration
            | HistogramMetric::InferenceDuration
            | HistogramMetric::TimeToFirstByte
            | HistogramMetric::AsyncQueueDuration
            | HistogramMetric::QueueDuration => Quantity::Seconds,
            HistogramMetric::RequestSize | HistogramMetric::ResponseSize => Quantity::Bytes,
            HistogramMetric::InputTokens | HistogramMetric::OutputTokens => Quantity::Tokens,
        }
    }

    pub fn name(self) -> &'static str {
        self.describe().0
    }

    /// The OTLP name of the quantile summary: chosen so that the OpenTelemetry-to-Prometheus translation (which
    /// adds a unit suffix only when the name lacks it) gives `<histogram family>_window`, e.g.
    /// `model.request.duration_seconds_window` -> `model_request_duration_seconds_window`.
    pub fn window_name(self) -> String {
        let (name, unit, _) = self.describe();
        window_name(name, unit)
    }
}

pub use infercol_pipelines::histogram::window_name;

/// Dimension values, in the order of the configured dimensions.
pub type Dims = Arc<[String]>;

/// A trace the exported histogram links to.
#[derive(Clone, Debug)]
pub struct Sample {
    pub value: f64,
    pub time_ns: u64,
    /// Fixed-size, so that keeping a sample allocates nothing (ids of other sizes are refused at the receiver).
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

#[derive(Default, Clone, Debug)]
struct Exemplars {
    slowest: Option<Sample>,
    random: Option<Sample>,
    seen: u64,
}

#[derive(Clone, Debug)]
enum Buckets2 {
    Exponential(ExpoHistogram),
    Explicit(ExplicitHistogram),
}

#[derive(Clone, Debug)]
struct CounterSeries {
    value: f64,
    /// Requests counted (unweighted), for the overflow counter when the series overflows at the absorb.
    points: u64,
    start_ns: u64,
    last_seen_ns: u64,
    dirty: bool,
}

#[derive(Clone, Debug)]
struct HistogramSeries {
    buckets: Buckets2,
    window: QuantileWindow,
    exemplars: Exemplars,
    /// Values recorded (unweighted), for the overflow counter when the series overflows at the absorb.
    points: u64,
    start_ns: u64,
    last_seen_ns: u64,
    dirty: bool,
}

impl CounterSeries {
    fn new(start_ns: u64, last_seen_ns: u64) -> CounterSeries {
        CounterSeries {
            value: 0.0,
            points: 0,
            start_ns,
            last_seen_ns,
            dirty: false,
        }
    }
}

impl HistogramSeries {
    fn new(bounds: Option<Arc<[f64]>>, max_size: usize, window: Duration, now_ns: u64) -> HistogramSeries {
        HistogramSeries {
            buckets: match bounds {
                Some(b) => Buckets2::Explicit(ExplicitHistogram::new(b)),
                None => Buckets2::Exponential(ExpoHistogram::new(max_size, MAX_SCALE)),
            },
            window: QuantileWindow::new(window),
            exemplars: Exemplars::default(),
            points: 0,
            start_ns: now_ns,
            last_seen_ns: now_ns,
            dirty: false,
        }
    }

    /// Adds what `other` (a series of the same metric and configuration) recorded; `random` picks between the two
    /// random exemplars in proportion to the values each one was chosen from.
    fn absorb(&mut self, other: &HistogramSeries, now_ns: u64, random: u64) {
        match (&mut self.buckets, &other.buckets) {
            (Buckets2::Exponential(a), Buckets2::Exponential(b)) => a.merge(b),
            (Buckets2::Explicit(a), Buckets2::Explicit(b)) => a.merge(b),
            // One configuration makes both: a mismatch cannot happen.
            _ => debug_assert!(false, "series of different bucket kinds"),
        }
        self.window.absorb(&other.window, now_ns);
        let (a, b) = (&mut self.exemplars, &other.exemplars);
        if let Some(slowest) = &b.slowest
            && a.slowest.as_ref().is_none_or(|s| slowest.value > s.value)
        {
            a.slowest = Some(slowest.clone());
        }
        let seen = a.seen + b.seen;
        // The random exemplar of the union: b's with probability b.seen / seen (multiply-shift, as in `record`).
        if b.random.is_some() && ((u128::from(random) * u128::from(seen)) >> 64) < u128::from(b.seen) {
            a.random = b.random.clone();
        }
        a.seen = seen;
        self.points += other.points;
        self.start_ns = self.start_ns.min(other.start_ns);
        self.last_seen_ns = self.last_seen_ns.max(other.last_seen_ns);
        self.dirty |= other.dirty;
    }
}

/// One observation for a histogram.
pub struct Observation<'a> {
    pub value: f64,
    pub weight: u64,
    pub end_ns: u64,
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
}

/// A handle on interned dimension values: series maps are keyed by it, so that recording a span hashes and
/// compares one integer instead of the dimension strings (the strings are looked up once per resource).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DimsId(u32);

/// Dimension values in use, each once, with a stable handle; handles no series uses any more are reused.
#[derive(Default)]
struct Interner {
    ids: HashMap<Dims, DimsId>,
    values: Vec<Option<Dims>>,
    free: Vec<u32>,
}

impl Interner {
    fn intern(&mut self, dims: Dims) -> DimsId {
        if let Some(id) = self.ids.get(&dims) {
            return *id;
        }
        let id = match self.free.pop() {
            Some(i) => {
                self.values[i as usize] = Some(dims.clone());
                DimsId(i)
            }
            None => {
                self.values.push(Some(dims.clone()));
                DimsId((self.values.len() - 1) as u32)
            }
        };
        self.ids.insert(dims, id);
        id
    }

    fn get(&self, id: DimsId) -> &Dims {
        self.values[id.0 as usize].as_ref().expect("a live handle")
    }

    /// Forgets every handle for which `used` says no.
    fn retain(&mut self, used: impl Fn(DimsId) -> bool) {
        for i in 0..self.values.len() {
            if self.values[i].is_some() && !used(DimsId(i as u32)) {
                let dims = self.values[i].take().expect("checked");
                self.ids.remove(&dims);
                self.free.push(i as u32);
            }
        }
    }
}

/// `None` is the overflow series.
type RequestKey = Option<(DimsId, Status)>;

/// The series of one histogram metric by dimension handle (`None`: the overflow series). Handles are dense
/// indices (see `Interner`), so finding a span's series is an index, not a hash probe: the probe was about half
/// of recording's own time. The table is as long as the largest handle in use, which the interner bounds.
#[derive(Default)]
struct SeriesTable {
    by_dims: Vec<Option<Box<HistogramSeries>>>,
    overflow: Option<Box<HistogramSeries>>,
    /// Series of dimension values (the overflow series not counted), for the cardinality limit.
    count: usize,
}

impl SeriesTable {
    #[inline]
    fn get_mut(&mut self, key: Option<DimsId>) -> Option<&mut HistogramSeries> {
        match key {
            None => self.overflow.as_deref_mut(),
            Some(id) => self.by_dims.get_mut(id.0 as usize)?.as_deref_mut(),
        }
    }

    fn contains_key(&self, key: Option<DimsId>) -> bool {
        match key {
            None => self.overflow.is_some(),
            Some(id) => self.by_dims.get(id.0 as usize).is_some_and(Option::is_some),
        }
    }

    fn get_or_insert_with(
        &mut self,
        key: Option<DimsId>,
        new: impl FnOnce() -> HistogramSeries,
    ) -> &mut HistogramSeries {
        let slot = match key {
            None => &mut self.overflow,
            Some(id) => {
                let at = id.0 as usize;
                if at >= self.by_dims.len() {
                    self.by_dims.resize_with(at + 1, || None);
                }
                if self.by_dims[at].is_none() {
                    self.count += 1;
                }
                &mut self.by_dims[at]
            }
        };
        slot.get_or_insert_with(|| Box::new(new()))
    }

    fn series_count(&self) -> usize {
        self.count
    }

    fn keys(&self) -> impl Iterator<Item = Option<DimsId>> + '_ {
        let dims = self.by_dims.iter().enumerate();
        dims.filter(|(_, s)| s.is_some())
            .map(|(at, _)| Some(DimsId(at as u32)))
            .chain(self.overflow.is_some().then_some(None))
    }

    #[cfg(test)]
    fn values(&self) -> impl Iterator<Item = &HistogramSeries> {
        self.by_dims.iter().flatten().chain(&self.overflow).map(|s| &**s)
    }

    fn retain(&mut self, keep: impl Fn(&HistogramSeries) -> bool) {
        for slot in &mut self.by_dims {
            if slot.as_deref().is_some_and(|s| !keep(s)) {
                *slot = None;
                self.count -= 1;
            }
        }
        if self.overflow.as_deref().is_some_and(|s| !keep(s)) {
            self.overflow = None;
        }
        // The handles past the last series are free: the table need not reach them.
        while self.by_dims.last().is_some_and(Option::is_none) {
            self.by_dims.pop();
        }
    }

    fn into_entries(self) -> impl Iterator<Item = (Option<DimsId>, HistogramSeries)> {
        let dims = self.by_dims.into_iter().enumerate();
        dims.filter_map(|(at, s)| s.map(|s| (Some(DimsId(at as u32)), *s)))
            .chain(self.overflow.map(|s| (None, *s)))
    }
}

pub struct State {
    config: Arc<ModelMetricsConfig>,
    explicit_bounds: Option<[Arc<[f64]>; 3]>,
    interner: Interner,
    requests: HashMap<RequestKey, CounterSeries>,
    histograms: Vec<SeriesTable>,
    last_flush_ns: u64,
    rng: u64,
    /// In a recording shard: the dimension values that have series in the state the shard is absorbed into.
    /// A full shard still takes those (see `admits`), so that a burst of new series cannot push the points of
    /// series already admitted into the overflow series.
    admitted: Option<Admitted>,
    /// Requests and end-to-end time replica by replica (the dashboard's replica table).
    pub per_replica: super::per_replica::PerReplica,
}

/// Dimension values with series in the state that emits, as of its last flush; shared with its shards.
pub type Admitted = Arc<std::sync::RwLock<hashbrown::HashSet<Dims>>>;

fn default_size_bounds() -> Vec<f64> {
    (3..=15).map(|k| 4f64.powi(k)).collect()
}

fn default_token_bounds() -> Vec<f64> {
    (0..=16).map(|k| 2f64.powi(k)).collect()
}

fn series_count<K: std::hash::Hash + Eq, V>(map: &HashMap<Option<K>, V>) -> usize {
    map.len() - usize::from(map.contains_key(&None))
}

impl State {
    pub fn new(config: Arc<ModelMetricsConfig>, now_ns: u64) -> State {
        let explicit_bounds = config.histogram.explicit.as_ref().map(|e| {
            let or = |v: &Vec<f64>, d: fn() -> Vec<f64>| -> Arc<[f64]> {
                if v.is_empty() { d().into() } else { v.clone().into() }
            };
            [
                e.buckets.clone().into(),
                or(&e.size_buckets, default_size_bounds),
                or(&e.token_buckets, default_token_bounds),
            ]
        });
        State {
            config,
            explicit_bounds,
            interner: Interner::default(),
            requests: HashMap::new(),
            histograms: HistogramMetric::ALL.iter().map(|_| SeriesTable::default()).collect(),
            last_flush_ns: now_ns,
            rng: now_ns | 1,
            admitted: None,
            per_replica: Default::default(),
        }
    }

    /// A recording shard of a state that shares `admitted`: it keeps series as the state does, up to the
    /// cardinality limit, and beyond the limit the series of dimension values in `admitted`. So a shard holds at
    /// most twice the limit per metric, for one flush interval.
    pub fn shard(config: Arc<ModelMetricsConfig>, now_ns: u64, admitted: Admitted) -> State {
        State {
            admitted: Some(admitted),
            ..State::new(config, now_ns)
        }
    }

    /// Whether a new series of `dims` may be kept in a map already holding `count` series (the parts of a
    /// state, so that a map of it can be borrowed meanwhile).
    fn admits(
        config: &ModelMetricsConfig,
        admitted: Option<&Admitted>,
        interner: &Interner,
        count: usize,
        dims: DimsId,
    ) -> bool {
        count < config.cardinality_limit
            || admitted.is_some_and(|a| {
                a.read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains(interner.get(dims))
            })
    }

    /// Publishes the dimension values that have series now, for the shards (after each flush).
    pub fn publish_admitted(&self, to: &Admitted) {
        let dims: hashbrown::HashSet<Dims> = self
            .requests
            .keys()
            .flatten()
            .map(|(id, _)| *id)
            .chain(self.histograms.iter().flat_map(|m| m.keys()).flatten())
            .map(|id| self.interner.get(id).clone())
            .collect();
        *to.write().unwrap_or_else(std::sync::PoisonError::into_inner) = dims;
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: enough to pick exemplars at random.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The handle on `dims`, for `count_request` and `record`; valid until the next `flush`.
    pub fn intern(&mut self, dims: Dims) -> DimsId {
        self.interner.intern(dims)
    }

    pub fn dims(&self, id: DimsId) -> &Dims {
        self.interner.get(id)
    }

    /// Counts one request (with its sampling weight); returns whether it went to the overflow series.
    pub fn count_request(&mut self, dims: DimsId, status: &Status, weight: f64, now_ns: u64) -> bool {
        let key: RequestKey = Some((dims, *status));
        let add = |series: &mut CounterSeries| {
            series.value += weight;
            series.points += 1;
            series.last_seen_ns = now_ns;
            series.dirty = true;
        };
        // One lookup on the common path: the series exists.
        if let Some(series) = self.requests.get_mut(&key) {
            add(series);
            return false;
        }
        let count = series_count(&self.requests);
        let overflow = !State::admits(&self.config, self.admitted.as_ref(), &self.interner, count, dims);
        let series = self
            .requests
            .entry(if overflow { None } else { key })
            .or_insert_with(|| CounterSeries::new(now_ns, now_ns));
        add(series);
        overflow
    }

    fn bounds(&self, metric: HistogramMetric) -> Option<Arc<[f64]>> {
        self.explicit_bounds.as_ref().map(|b| {
            b[match metric.quantity() {
                Quantity::Seconds => 0,
                Quantity::Bytes => 1,
                Quantity::Tokens => 2,
            }]
            .clone()
        })
    }

    /// Moves everything the `shards` (states of the same configuration, recording since the last flush) hold
    /// into this one, under this one's cardinality limit; `overflowed` gets a metric's name and point count for
    /// each series that went to the overflow series here. Recording threads each fill a shard of their own; the
    /// flush absorbs the shards into one state, so that series, limits, expiry and temporality are decided in one
    /// place. New series are admitted in the order they were first seen (then by their dimension values), as one
    /// state recording every span would have admitted them.
    pub fn absorb(&mut self, shards: Vec<State>, now_ns: u64, overflowed: &mut Vec<(&'static str, u64)>) {
        let limit = self.config.cardinality_limit;
        let mut requests = Vec::new();
        let mut histograms: Vec<Vec<(Option<DimsId>, HistogramSeries)>> =
            HistogramMetric::ALL.iter().map(|_| Vec::new()).collect();
        let mut per_replicas = Vec::with_capacity(shards.len());
        for shard in shards {
            let State {
                interner,
                requests: shard_requests,
                histograms: shard_histograms,
                per_replica,
                ..
            } = shard;
            per_replicas.push(per_replica);
            let here = &mut self.interner;
            let mut translate = |id: DimsId| here.intern(interner.get(id).clone());
            for (key, series) in shard_requests {
                requests.push((key.map(|(id, status)| (translate(id), status)), series));
            }
            for (into, map) in histograms.iter_mut().zip(shard_histograms) {
                into.extend(
                    map.into_entries()
                        .map(|(key, series)| (key.map(&mut translate), series)),
                );
            }
        }
        self.per_replica.absorb_all(per_replicas);
        let interner = &self.interner;
        let dims = |id: &Option<DimsId>| id.map(|id| interner.get(id));
        requests.sort_by(|(a, x), (b, y)| {
            (x.start_ns, dims(&a.map(|k| k.0)), a.map(|k| k.1)).cmp(&(
                y.start_ns,
                dims(&b.map(|k| k.0)),
                b.map(|k| k.1),
            ))
        });
        for list in &mut histograms {
            list.sort_by(|(a, x), (b, y)| (x.start_ns, dims(a)).cmp(&(y.start_ns, dims(b))));
        }

        for (key, s) in requests {
            let overflow = key.is_some() && !self.requests.contains_key(&key) && series_count(&self.requests) >= limit;
            let series = self
                .requests
                .entry(if overflow { None } else { key })
                .or_insert_with(|| CounterSeries::new(s.start_ns, s.last_seen_ns));
            series.value += s.value;
            series.points += s.points;
            series.start_ns = series.start_ns.min(s.start_ns);
            series.last_seen_ns = series.last_seen_ns.max(s.last_seen_ns);
            series.dirty |= s.dirty;
            if overflow {
                overflowed.push(("model.requests", s.points));
            }
        }
        let window = self.config.quantile_window;
        let max_size = self.config.histogram.exponential.max_size;
        for (metric, list) in HistogramMetric::ALL.iter().zip(histograms) {
            let bounds = self.bounds(*metric);
            for (key, s) in list {
                let random = self.next_random();
                let here = &mut self.histograms[*metric as usize];
                let overflow = key.is_some() && !here.contains_key(key) && here.series_count() >= limit;
                here.get_or_insert_with(if overflow { None } else { key }, || {
                    HistogramSeries::new(bounds.clone(), max_size, window, s.start_ns)
                })
                .absorb(&s, now_ns, random);
                if overflow {
                    overflowed.push((metric.name(), s.points));
                }
            }
        }
    }

    /// Records one value; returns whether it went to the overflow series.
    pub fn record(&mut self, metric: HistogramMetric, dims: DimsId, obs: Observation<'_>, now_ns: u64) -> bool {
        let index = metric as usize;
        let window = self.config.quantile_window;
        let max_size = self.config.histogram.exponential.max_size;
        let bounds = self.bounds(metric);
        let exemplars_on = self.config.exemplars.enabled;
        let random = self.next_random();
        let key = Some(dims);
        let mut overflow = false;
        let (config, admitted, interner) = (&self.config, self.admitted.as_ref(), &self.interner);
        let map = &mut self.histograms[index];
        // One lookup on the common path: the series exists.
        let series = match map.get_mut(key) {
            Some(series) => series,
            None => {
                overflow = !State::admits(config, admitted, interner, map.series_count(), dims);
                map.get_or_insert_with(if overflow { None } else { key }, || {
                    HistogramSeries::new(bounds, max_size, window, now_ns)
                })
            }
        };
        // One bucket index for both exponential histograms (the series' and the window's).
        let indexed = Indexed::new(obs.value);
        match &mut series.buckets {
            Buckets2::Exponential(h) => h.record_indexed(indexed, obs.weight),
            Buckets2::Explicit(h) => h.record(obs.value, obs.weight),
        }
        series.window.record_indexed(obs.end_ns, now_ns, indexed, obs.weight);
        series.points += 1;
        series.last_seen_ns = now_ns;
        series.dirty = true;
        if exemplars_on && let (Ok(trace_id), Ok(span_id)) = (obs.trace_id.try_into(), obs.span_id.try_into()) {
            let e = &mut series.exemplars;
            e.seen += 1;
            let sample = || Sample {
                value: obs.value,
                time_ns: obs.end_ns,
                trace_id,
                span_id,
            };
            if e.slowest.as_ref().is_none_or(|s| obs.value > s.value) {
                e.slowest = Some(sample());
            }
            // Reservoir sampling: replace with probability 1/seen. The high word of random * seen is uniform over
            // [0, seen) (Lemire's multiply-shift), without the division a modulo costs on every value.
            if (u128::from(random) * u128::from(e.seen)) >> 64 == 0 {
                e.random = Some(sample());
            }
        }
        overflow
    }

    /// Memory held by the series (heap estimate), for the README's figures and tests.
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        let h: usize = self
            .histograms
            .iter()
            .flat_map(|m| m.values())
            .map(|s| {
                std::mem::size_of::<HistogramSeries>()
                    + s.window.heap_bytes()
                    + match &s.buckets {
                        Buckets2::Exponential(e) => e.heap_bytes(),
                        Buckets2::Explicit(e) => e.counts.capacity() * 8,
                    }
            })
            .sum();
        let slots: usize = self.histograms.iter().map(|t| t.by_dims.capacity() * 8).sum();
        h + slots + self.requests.len() * (std::mem::size_of::<CounterSeries>() + std::mem::size_of::<RequestKey>())
    }

    fn attributes(&self, dims: Option<DimsId>, extra: &[(&str, &str)]) -> Vec<KeyValue> {
        self.attributes_of(dims.map(|id| self.interner.get(id)), extra)
    }

    fn attributes_of(&self, dims: Option<&Dims>, extra: &[(&str, &str)]) -> Vec<KeyValue> {
        let Some(dims) = dims else {
            return vec![kv("otel_metric_overflow", "true")];
        };
        self.config
            .dimensions
            .iter()
            .zip(dims.iter())
            .map(|(d, v)| kv(&d.name, v))
            .chain(extra.iter().map(|(k, v)| kv(k, v)))
            .collect()
    }

    /// Builds the metrics to emit at `now_ns`, resets delta state and drops expired series; also returns how
    /// many queued requests were given up as lost.
    /// Tells the directory which model dimensions have request metrics from spans, so that a scraper of the
    /// same servers leaves its equivalents out (nothing is counted twice).
    fn mark_derived(&self, replicas: &ReplicaDirectory) {
        let position = |name: &str| self.config.dimensions.iter().position(|d| d.name == name);
        let (Some(m), d, e) = (position("model"), position("deployment"), position("environment")) else {
            return;
        };
        let mut marked = std::collections::HashSet::new();
        for (id, _) in self.requests.keys().flatten() {
            if !marked.insert(*id) {
                continue;
            }
            let values = self.interner.get(*id);
            let of = |i: Option<usize>| {
                i.and_then(|i| values.get(i))
                    .cloned()
                    .unwrap_or_else(|| "unknown".into())
            };
            replicas.derived_from_spans(&(of(Some(m)), of(d), of(e)));
        }
    }

    pub fn flush(
        &mut self,
        now_ns: u64,
        replicas: &ReplicaDirectory,
        queue: &mut super::queue::QueueTracker,
    ) -> (Option<ExportMetricsServiceRequest>, u64) {
        let delta = self.config.aggregation_temporality == Temporality::Delta;
        let temporality = if delta {
            AggregationTemporality::Delta
        } else {
            AggregationTemporality::Cumulative
        } as i32;
        let interval_start = self.last_flush_ns;
        let mut metrics = Vec::new();

        let mut points = Vec::new();
        self.mark_derived(replicas);
        // Ordered by dimension values, then status.
        let mut keys: Vec<&RequestKey> = self.requests.keys().collect();
        keys.sort_by(|a, b| {
            let value = |k: &RequestKey| k.map(|(id, status)| (self.interner.get(id).clone(), status));
            value(a).cmp(&value(b))
        });
        for key in keys {
            let s = &self.requests[key];
            if delta && !s.dirty {
                continue;
            }
            let attributes = match key {
                Some((dims, status)) => self.attributes(
                    Some(*dims),
                    &[
                        ("protocol", status.protocol.as_str()),
                        ("status_code", &status.code.to_string()),
                        ("status_class", status.class.as_str()),
                    ],
                ),
                None => self.attributes(None, &[]),
            };
            points.push(NumberDataPoint {
                attributes,
                start_time_unix_nano: if delta { interval_start } else { s.start_ns },
                time_unix_nano: now_ns,
                value: Some(number_data_point::Value::AsDouble(s.value)),
                ..Default::default()
            });
        }
        if !points.is_empty() {
            metrics.push(Metric {
                name: "model.requests".into(),
                description: "Inference requests, by protocol, status code and status class.".into(),
                unit: "{request}".into(),
                data: Some(MetricData::Sum(Sum {
                    data_points: points,
                    aggregation_temporality: temporality,
                    is_monotonic: true,
                })),
                ..Default::default()
            });
        }

        for metric in HistogramMetric::ALL {
            let (name, unit, description) = metric.describe();
            let mut expo_points = Vec::new();
            let mut explicit_points = Vec::new();
            let mut summary_points = Vec::new();
            // The coarsest scale among the windows: the summary states the bound of its least precise point.
            let mut coarsest = MAX_SCALE;
            let mut map = std::mem::take(&mut self.histograms[metric as usize]);
            let mut ordered: Vec<Option<DimsId>> = map.keys().collect();
            ordered.sort_by_key(|k| k.map(|id| self.interner.get(id)));
            for key in ordered {
                let Some(series) = map.get_mut(key) else { continue };
                let attributes = self.attributes(key, &[]);
                if !delta || series.dirty {
                    let exemplars = take_exemplars(&mut series.exemplars);
                    let start = if delta { interval_start } else { series.start_ns };
                    match &series.buckets {
                        Buckets2::Exponential(h) => expo_points.push(ExponentialHistogramDataPoint {
                            exemplars,
                            ..h.to_otlp(attributes.clone(), start, now_ns)
                        }),
                        Buckets2::Explicit(h) => explicit_points.push(HistogramDataPoint {
                            attributes: attributes.clone(),
                            start_time_unix_nano: start,
                            time_unix_nano: now_ns,
                            count: h.count,
                            sum: Some(h.sum),
                            bucket_counts: h.counts.clone(),
                            explicit_bounds: h.bounds.to_vec(),
                            min: (h.count > 0).then_some(h.min),
                            max: (h.count > 0).then_some(h.max),
                            exemplars,
                            ..Default::default()
                        }),
                    }
                    if delta {
                        series.buckets = match &series.buckets {
                            Buckets2::Exponential(_) => Buckets2::Exponential(ExpoHistogram::new(
                                self.config.histogram.exponential.max_size,
                                MAX_SCALE,
                            )),
                            Buckets2::Explicit(h) => Buckets2::Explicit(ExplicitHistogram::new(h.bounds.clone())),
                        };
                    }
                }
                if let Some(window) = series.window.snapshot(now_ns) {
                    coarsest = coarsest.min(window.scale());
                    summary_points.push(super::window::summary_point(
                        &window,
                        attributes,
                        now_ns,
                        self.config.quantile_window,
                        &self.config.quantiles,
                    ));
                }
                series.dirty = false;
            }
            self.histograms[metric as usize] = map;
            if !expo_points.is_empty() {
                metrics.push(Metric {
                    name: name.into(),
                    description: description.into(),
                    unit: unit.into(),
                    data: Some(MetricData::ExponentialHistogram(ExponentialHistogram {
                        data_points: expo_points,
                        aggregation_temporality: temporality,
                    })),
                    ..Default::default()
                });
            }
            if !explicit_points.is_empty() {
                metrics.push(Metric {
                    name: name.into(),
                    description: description.into(),
                    unit: unit.into(),
                    data: Some(MetricData::Histogram(Histogram {
                        data_points: explicit_points,
                        aggregation_temporality: temporality,
                    })),
                    ..Default::default()
                });
            }
            if !summary_points.is_empty() {
                metrics.push(Metric {
                    name: metric.window_name(),
                    description: format!(
                        "{description} Quantiles over the last {} by span end time.",
                        humantime_short(self.config.quantile_window)
                    ),
                    unit: unit.into(),
                    data: Some(MetricData::Summary(Summary {
                        data_points: summary_points,
                    })),
                    metadata: quantile_error_metadata(relative_error_at(coarsest)),
                });
            }
        }

        // Queue size: every queue seen (zero once drained), unless the service reports its own.
        let now = std::time::Instant::now();
        let expired = queue.expire(now, self.config.queue_entry_ttl, self.config.metrics_expiration);
        let reported_within = (self.config.flush_interval * 3).max(Duration::from_secs(60));
        let mut queue_points = Vec::new();
        for (dims, model, size) in queue.sizes() {
            if replicas.reports_queue_size(&model, reported_within) {
                continue;
            }
            queue_points.push(gauge_point(self.attributes_of(Some(&dims), &[]), now_ns, size as f64));
        }
        if !queue_points.is_empty() {
            metrics.push(gauge(
                "model.async_queue.size",
                "{request}",
                "Requests waiting in the async queue.",
                queue_points,
            ));
        }
        metrics.extend(replica_metrics(replicas, self.config.replica_ttl, now_ns));
        metrics.extend(self.per_replica.metrics(delta, now_ns));

        // Delta state starts over; idle series go.
        for s in self.requests.values_mut() {
            if delta {
                s.value = 0.0;
            }
            s.dirty = false;
        }
        let expiration = self.config.metrics_expiration.as_nanos() as u64;
        self.per_replica.flushed(delta, now_ns, expiration);
        self.requests
            .retain(|_, s| now_ns.saturating_sub(s.last_seen_ns) < expiration);
        for map in &mut self.histograms {
            map.retain(|s| now_ns.saturating_sub(s.last_seen_ns) < expiration);
        }
        // Handles of expired series go; the ones left stay as they are.
        let mut used = vec![false; self.interner.values.len()];
        for (id, _) in self.requests.keys().flatten() {
            used[id.0 as usize] = true;
        }
        for id in self.histograms.iter().flat_map(|m| m.keys()).flatten() {
            used[id.0 as usize] = true;
        }
        self.interner.retain(|id| used[id.0 as usize]);
        self.last_flush_ns = now_ns;

        if metrics.is_empty() {
            return (None, expired.lost);
        }
        let request = infercol_pipelines::data::metrics_request(Vec::new(), "infercol/model_metrics", metrics);
        (Some(request), expired.lost)
    }
}

/// Replicas by state (`model.replicas`) and one by one (`model.replica.state_since`), from the telemetry every
/// receiver saw.
fn replica_metrics(replicas: &ReplicaDirectory, ttl: Duration, now_ns: u64) -> Vec<Metric> {
    let mut metrics = Vec::new();
    // Replicas by state, from the telemetry every receiver saw.
    let mut replica_points = Vec::new();
    for ((model, deployment, environment), counts) in replicas.counts(ttl) {
        for (state, n) in [("active", counts.active), ("starting", counts.starting)] {
            let attributes = vec![
                kv("model", &model),
                kv("deployment", &deployment),
                kv("environment", &environment),
                kv("state", state),
            ];
            replica_points.push(gauge_point(attributes, now_ns, n as f64));
        }
    }
    if !replica_points.is_empty() {
        metrics.push(gauge(
            "model.replicas",
            "{replica}",
            "Model replicas by state.",
            replica_points,
        ));
    }
    // Replicas one by one (the dashboard's replica table): when each entered its state, for at most
    // REPLICA_TABLE_LIMIT of them, so that the `service.instance.id` dimension stays bounded.
    let one_by_one: Vec<_> = replicas
        .states(ttl, REPLICA_TABLE_LIMIT)
        .into_iter()
        .map(|r| {
            let attributes = vec![
                kv("model", &r.dims.0),
                kv("deployment", &r.dims.1),
                kv("environment", &r.dims.2),
                kv("service.instance.id", &r.id),
                kv("state", if r.active { "active" } else { "starting" }),
            ];
            gauge_point(attributes, now_ns, r.since)
        })
        .collect();
    if !one_by_one.is_empty() {
        metrics.push(gauge(
            "model.replica.state_since",
            "s",
            "When each replica entered its state (active or starting), in Unix seconds.",
            one_by_one,
        ));
    }
    metrics
}

fn gauge_point(attributes: Vec<KeyValue>, now_ns: u64, value: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        time_unix_nano: now_ns,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

fn gauge(name: &str, unit: &str, description: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(MetricData::Gauge(opentelemetry_proto::tonic::metrics::v1::Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

fn humantime_short(d: Duration) -> String {
    if d.as_secs().is_multiple_of(60) && d.as_secs() >= 60 {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

fn take_exemplars(e: &mut Exemplars) -> Vec<Exemplar> {
    let mut out = Vec::new();
    let slowest = e.slowest.take();
    let random = e.random.take();
    e.seen = 0;
    for s in [slowest, random].into_iter().flatten() {
        if out.iter().any(|x: &Exemplar| x.span_id == s.span_id) {
            continue;
        }
        out.push(Exemplar {
            time_unix_nano: s.time_ns,
            value: Some(exemplar::Value::AsDouble(s.value)),
            span_id: s.span_id.to_vec(),
            trace_id: s.trace_id.to_vec(),
            ..Default::default()
        });
    }
    out
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}
