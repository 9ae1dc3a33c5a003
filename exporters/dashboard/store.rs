//! The dashboard's memory: every number its pipelines deliver, as time series at the resolution they arrive in
//! (the model_metrics flush, the receivers' collection interval), kept for `retention`.
//!
//! A series is a metric name plus its point's attributes; a point is 16 bytes (time in ms, value). Monotonic sums
//! are kept as the increase since the series' previous point (whatever the temporality), gauges as they are,
//! window summaries as one series per quantile plus one of the window's count (to weigh quantiles when several
//! series are combined). Histogram buckets are not kept: the window quantiles answer the percentile panels.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, metric::Data as MetricData, number_data_point};

use super::disk::{Changes, History, SeriesRecord};
use super::histograms::{self, HistogramSeries};
use infercol_pipelines::histogram::ExpoHistogram;

/// The labels the dashboard filters on.
pub const FILTERS: [&str; 3] = ["model", "environment", "deployment"];

/// Bytes one stored point takes.
pub const POINT_BYTES: usize = std::mem::size_of::<Point>();

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Milliseconds since the Unix epoch (the point's own time, not its arrival).
    pub t: i64,
    pub v: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// Increase since the previous point.
    Increase,
    Gauge,
    /// One quantile of a window summary (label `quantile`), or (label `quantile` = `count`) the window's count.
    Quantile,
    /// An exponential histogram's steps (kept apart, in [`Store::histograms`]).
    Histogram,
}

/// Where a series comes from, by the instrumentation scope that emitted it: the page marks each panel's sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Origin {
    /// Derived from spans (model_metrics, or a gateway's model_quantiles over agents' histograms).
    Spans,
    /// Mapped from a model server's own Prometheus page (the prometheus receiver).
    Scraped,
    /// Anything else: a service's own OpenTelemetry metrics, host and GPU samples.
    Other,
}

impl Origin {
    fn of_scope(scope: &str) -> Origin {
        match scope {
            "infercol/model_metrics" | "infercol/model_quantiles" => Origin::Spans,
            "infercol/prometheus" => Origin::Scraped,
            _ => Origin::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Origin::Spans => "spans",
            Origin::Scraped => "scraped",
            Origin::Other => "metrics",
        }
    }
}

#[derive(Debug)]
pub struct Series {
    /// Its key on disk.
    pub id: u32,
    pub kind: Kind,
    pub origin: Origin,
    /// For window quantiles: the relative error their summary states (the sketch's, or the server's buckets').
    pub relative_error: Option<f64>,
    pub points: VecDeque<Point>,
    /// A cumulative sum's last (start time, value), to turn it into increases.
    last_cumulative: Option<(u64, f64)>,
    /// Up to when (ms) each of [`TIERS`] has merged this series' points.
    rolled: [i64; 2],
}

impl Series {
    fn record(&self, key: &Key) -> SeriesRecord {
        SeriesRecord {
            name: key.0.clone(),
            labels: key.1.clone(),
            kind: self.kind,
            origin: self.origin,
            relative_error: self.relative_error,
            last_cumulative: self.last_cumulative,
        }
    }
}

/// The resolutions beyond the recent hours: points older than the first figure are merged into steps of the
/// second (counts added up, gauges and quantiles the step's last), so that 7 days of a series at a 10 s flush take
/// 5,400 points instead of 60,480: 6 h at the flush interval, then 1 minute to 2 days, then 10 minutes.
pub const TIERS: [(i64, i64); 2] = [(6 * 3_600_000, 60_000), (48 * 3_600_000, 600_000)];

/// Metric name and sorted attributes.
pub type Key = (String, BTreeMap<String, String>);

/// What the store notes of a metric's origin with each of its points.
#[derive(Clone, Copy)]
struct Source {
    origin: Origin,
    relative_error: Option<f64>,
}

pub struct Store {
    pub retention: Duration,
    /// The thresholds the advice beside the panels is given at.
    pub considerations: super::considerations::ConsiderationsConfig,
    pub max_series: usize,
    pub series: HashMap<Key, Series>,
    /// Exponential histograms by step, for percentiles from merged buckets.
    pub histograms: HashMap<Key, HistogramSeries>,
    /// Points refused because `max_series` was reached (counted, logged once).
    pub dropped: u64,
    /// The typical spacing of points, in ms (the median over recent arrivals), for the query step.
    gaps: VecDeque<i64>,
    next_id: u32,
    /// What changed since [`Store::take_changes`], gathered only when a disk keeps the history.
    changes: Option<Changes>,
    last_compaction: i64,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// The model labels a resource implies (contract section 1), for points that do not carry them.
fn resource_labels(resource: &[KeyValue]) -> BTreeMap<String, String> {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| resource.iter().find(|kv| kv.key == *k).map(|kv| text(&kv.value)))
    };
    let mut out = BTreeMap::new();
    for (label, keys) in [
        ("model", &["service.name"][..]),
        (
            "deployment",
            &["deployment.id", "deployment.name", "service.version"][..],
        ),
        (
            "environment",
            &["deployment.environment.name", "deployment.environment"][..],
        ),
    ] {
        if let Some(v) = first(keys) {
            out.insert(label.to_string(), v);
        }
    }
    out
}

/// Merges the points of `s` that have aged past each tier into that tier's steps (see [`TIERS`]); what is merged
/// away and what replaces it go into `changes`.
fn roll_up(s: &mut Series, now_ms: i64, mut changes: Option<&mut Changes>) {
    for (tier, (age, width)) in TIERS.iter().enumerate() {
        // Only steps wholly older than the tier's age; those before `rolled` are merged already.
        let boundary = (now_ms - age).div_euclid(*width) * width;
        let from = s.rolled[tier];
        if boundary <= from {
            continue;
        }
        let mut merged: VecDeque<Point> = VecDeque::with_capacity(s.points.len());
        let mut points = std::mem::take(&mut s.points).into_iter().peekable();
        while let Some(mut p) = points.next() {
            if p.t < from || p.t >= boundary {
                merged.push_back(p);
                continue;
            }
            let step = p.t.div_euclid(*width);
            let mut combined = false;
            while let Some(next) = points.next_if(|n| n.t < boundary && n.t.div_euclid(*width) == step) {
                if let Some(c) = changes.as_deref_mut() {
                    c.removed.push((s.id, p.t));
                }
                let v = if s.kind == Kind::Increase { p.v + next.v } else { next.v };
                p = Point { t: next.t, v };
                combined = true;
            }
            if combined && let Some(c) = changes.as_deref_mut() {
                c.points.push((s.id, p));
            }
            merged.push_back(p);
        }
        s.points = merged;
        s.rolled[tier] = boundary;
    }
}

/// How recent a cumulative series' start must be, at its first sight, for its value to count as new.
pub const FRESH_START_MS: i64 = 120_000;

/// Whether a cumulative point seen first at `t_ms` is a baseline rather than new counts: it starts at that very
/// point (a scraped counter, as the Collector's prometheus receiver marks one), or long before it (an agent
/// running for days, first seen by a gateway or by this dashboard after a restart without storage). Its past is
/// not in this range; counting it would draw the whole history as one burst. A series that started within
/// [`FRESH_START_MS`] (model_metrics' first flush of a new series) counts in full.
pub fn is_baseline(start_ns: u64, t_ms: i64) -> bool {
    let age = t_ms - (start_ns / 1_000_000) as i64;
    age <= 0 || age > FRESH_START_MS
}

/// A series' attributes.
type Labels = BTreeMap<String, String>;

/// A point's labels; a point without model labels but from a model's resource belongs to that model.
fn point_labels(attributes: &[KeyValue], implied: &Labels) -> Labels {
    let mut l: Labels = attributes.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect();
    if !l.contains_key("model") {
        for (k, v) in implied {
            l.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    l
}

fn number(value: &Option<number_data_point::Value>) -> Option<f64> {
    match value {
        Some(number_data_point::Value::AsDouble(d)) => Some(*d),
        Some(number_data_point::Value::AsInt(i)) => Some(*i as f64),
        None => None,
    }
}

fn ms(ns: u64) -> i64 {
    (ns / 1_000_000) as i64
}

impl Store {
    pub fn new(retention: Duration, max_series: usize) -> Store {
        Store {
            retention,
            considerations: Default::default(),
            max_series,
            series: HashMap::new(),
            histograms: HashMap::new(),
            dropped: 0,
            gaps: VecDeque::new(),
            next_id: 0,
            changes: None,
            last_compaction: 0,
        }
    }

    /// From now on, gathers what changes for [`Store::take_changes`] (the history is kept on disk).
    pub fn keep_changes(&mut self) {
        self.changes = Some(Changes::default());
    }

    /// What changed since the last call (nothing unless [`Store::keep_changes`]).
    pub fn take_changes(&mut self) -> Changes {
        self.changes.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Puts back the history read from disk (before any point arrives). Returns how many points it holds.
    pub fn restore(&mut self, history: History) -> usize {
        let mut points = 0;
        for (id, record, steps, last) in history.histograms {
            self.next_id = self.next_id.max(id.saturating_add(1));
            points += steps.len();
            let mut h = HistogramSeries::new(id, record.origin);
            h.seen = steps.last().map_or(0, |(t, _)| *t);
            (h.deltas, h.last) = (steps.into(), last);
            self.histograms.insert((record.name, record.labels), h);
        }
        for (id, record, list) in history.points {
            if self.series.len() >= self.max_series {
                break;
            }
            points += list.len();
            self.next_id = self.next_id.max(id.saturating_add(1));
            self.series.insert(
                (record.name, record.labels),
                Series {
                    id,
                    kind: record.kind,
                    origin: record.origin,
                    relative_error: record.relative_error,
                    points: list.into(),
                    last_cumulative: record.last_cumulative,
                    rolled: [0; 2],
                },
            );
        }
        points
    }

    /// The spacing to bin queries at: the median gap between a series' points, 10 s before any is known.
    pub fn resolution_ms(&self) -> i64 {
        if self.gaps.is_empty() {
            return 10_000;
        }
        let mut g: Vec<i64> = self.gaps.iter().copied().collect();
        g.sort_unstable();
        g[g.len() / 2].max(1_000)
    }

    /// Bytes held by the points (the README's memory figure is this over series and hours).
    pub fn point_bytes(&self) -> usize {
        self.series.values().map(|s| s.points.capacity() * POINT_BYTES).sum()
    }

    fn push(&mut self, key: Key, kind: Kind, from: Source, t: i64, value: f64, cumulative: Option<u64>) {
        if !value.is_finite() {
            return;
        }
        let full = self.series.len() + self.histograms.len() >= self.max_series;
        let series = match self.series.get_mut(&key) {
            Some(s) => s,
            None if full => {
                if self.dropped == 0 {
                    tracing::warn!(
                        "dashboard: {} series kept, the limit (max_series); new series are not shown",
                        self.max_series
                    );
                }
                self.dropped += 1;
                return;
            }
            None => {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                self.series.entry(key.clone()).or_insert(Series {
                    id,
                    kind,
                    origin: from.origin,
                    relative_error: None,
                    points: VecDeque::new(),
                    last_cumulative: None,
                    rolled: [0; 2],
                })
            }
        };
        let before = (
            series.origin,
            series.relative_error,
            series.last_cumulative,
            series.points.is_empty(),
        );
        (series.origin, series.relative_error) = (from.origin, from.relative_error);
        let v = match cumulative {
            Some(start) => {
                let increase = match series.last_cumulative {
                    Some((s, last)) if s == start && value >= last => value - last,
                    // First sight of a series that did not just start: a baseline, as `rate()` reads a first
                    // sample (see `is_baseline`).
                    None if is_baseline(start, t) => 0.0,
                    // A series that just started, or a restart (new start time, or a value that went down): all
                    // of it is new.
                    _ => value,
                };
                series.last_cumulative = Some((start, value));
                increase
            }
            None => value,
        };
        if let Some(last) = series.points.back() {
            if t < last.t {
                return; // Out of order: a series only moves forward.
            }
            let gap = t - last.t;
            // A gap longer than the recent hours is a series that was silent (or history sent late), not the
            // spacing of the recent points: counted, it would bin a 1-hour range in steps of days.
            if gap > 0 && gap < TIERS[0].0 {
                self.gaps.push_back(gap);
                if self.gaps.len() > 256 {
                    self.gaps.pop_front();
                }
            }
        }
        series.points.push_back(Point { t, v });
        if let Some(changes) = &mut self.changes {
            changes.points.push((series.id, Point { t, v }));
            let (origin, relative_error, last_cumulative, new) = before;
            if new
                || origin != series.origin
                || relative_error != series.relative_error
                || last_cumulative != series.last_cumulative
            {
                changes.series.push((series.id, series.record(&key)));
            }
        }
    }

    /// Keeps the step an exponential histogram point adds (see [`HistogramSeries::step_of`]).
    fn push_histogram(&mut self, key: Key, from: Source, t: i64, point: ExpoHistogram<u64>, start: Option<u64>) {
        if !self.histograms.contains_key(&key) {
            if self.series.len() + self.histograms.len() >= self.max_series {
                self.dropped += 1;
                return;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            let h = HistogramSeries::new(id, from.origin);
            if let Some(changes) = &mut self.changes {
                let record = SeriesRecord {
                    name: key.0.clone(),
                    labels: key.1.clone(),
                    kind: Kind::Histogram,
                    origin: from.origin,
                    relative_error: None,
                    last_cumulative: None,
                };
                changes.series.push((id, record));
            }
            self.histograms.insert(key.clone(), h);
        }
        let Some(h) = self.histograms.get_mut(&key) else { return };
        if h.deltas.back().is_some_and(|(last, _)| t < *last) {
            return; // Out of order.
        }
        let step = h.step_of(t, point, start);
        if let Some(changes) = &mut self.changes {
            if let Some((start, last)) = &h.last {
                let mut bytes = start.to_le_bytes().to_vec();
                bytes.extend(histograms::encode(last));
                changes.lasts.push((h.id, bytes));
            }
            if let Some(step) = &step {
                changes.steps.push((h.id, t, histograms::encode(step)));
            }
        }
        if let Some(step) = step {
            h.deltas.push_back((t, step));
        }
    }

    /// Keeps what `request` holds.
    pub fn ingest(&mut self, request: &ExportMetricsServiceRequest) {
        for rm in &request.resource_metrics {
            let resource = rm.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
            let implied = resource_labels(resource);
            for (scope, metric) in rm
                .scope_metrics
                .iter()
                .flat_map(|s| s.metrics.iter().map(move |m| (s.scope.as_ref(), m)))
            {
                let from = Source {
                    origin: Origin::of_scope(scope.map_or("", |s| s.name.as_str())),
                    relative_error: infercol_pipelines::histogram::quantile_error_of(metric),
                };
                self.ingest_metric(metric, from, &implied);
            }
        }
    }

    fn ingest_metric(
        &mut self,
        metric: &opentelemetry_proto::tonic::metrics::v1::Metric,
        from: Source,
        implied: &Labels,
    ) {
        let labels = |attributes: &[KeyValue]| point_labels(attributes, implied);
        let key = |attributes: &[KeyValue]| (metric.name.clone(), labels(attributes));
        match &metric.data {
            Some(MetricData::Sum(sum)) => {
                let cumulative = sum.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                let kind = if sum.is_monotonic { Kind::Increase } else { Kind::Gauge };
                for p in &sum.data_points {
                    let Some(value) = number(&p.value) else { continue };
                    let start = (cumulative && sum.is_monotonic).then_some(p.start_time_unix_nano);
                    self.push(key(&p.attributes), kind, from, ms(p.time_unix_nano), value, start);
                }
            }
            Some(MetricData::Gauge(g)) => {
                for p in &g.data_points {
                    let Some(value) = number(&p.value) else { continue };
                    self.push(key(&p.attributes), Kind::Gauge, from, ms(p.time_unix_nano), value, None);
                }
            }
            Some(MetricData::Summary(s)) => {
                for p in &s.data_points {
                    let base = labels(&p.attributes);
                    let t = ms(p.time_unix_nano);
                    let quantiles = p.quantile_values.iter().map(|q| (q.quantile.to_string(), q.value));
                    for (quantile, value) in quantiles.chain([("count".to_string(), p.count as f64)]) {
                        let mut l = base.clone();
                        l.insert("quantile".into(), quantile);
                        self.push((metric.name.clone(), l), Kind::Quantile, from, t, value, None);
                    }
                }
            }
            Some(MetricData::ExponentialHistogram(h)) => {
                let cumulative = h.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                for p in &h.data_points {
                    let point = ExpoHistogram::from_otlp(p);
                    let start = cumulative.then_some(p.start_time_unix_nano);
                    self.push_histogram(key(&p.attributes), from, ms(p.time_unix_nano), point, start);
                }
            }
            // Explicit buckets (a scraped server's) are for Prometheus and OTLP backends: their percentiles come
            // from the window quantiles.
            _ => {}
        }
    }

    /// [`Store::expire`], at most every 10 s (each pass walks every series).
    pub fn maybe_expire(&mut self, now_ms: i64) {
        if now_ms - self.last_compaction >= 10_000 || self.last_compaction == 0 {
            self.expire(now_ms);
        }
    }

    /// Drops points older than the retention and series left empty, and merges older points into the coarser
    /// [`TIERS`].
    pub fn expire(&mut self, now_ms: i64) {
        self.last_compaction = now_ms;
        let oldest = now_ms - self.retention.as_millis() as i64;
        let mut changes = self.changes.take();
        self.series.retain(|_, s| {
            while s.points.front().is_some_and(|p| p.t < oldest) {
                let p = s.points.pop_front();
                if let (Some(c), Some(p)) = (&mut changes, p) {
                    c.removed.push((s.id, p.t));
                }
            }
            if s.points.is_empty() {
                if let Some(c) = &mut changes {
                    c.dropped_series.push(s.id);
                }
                return false;
            }
            roll_up(s, now_ms, changes.as_mut());
            if s.points.len() * 4 < s.points.capacity() && s.points.capacity() > 64 {
                s.points.shrink_to_fit();
            }
            true
        });
        let tiers = TIERS;
        self.histograms.retain(|_, h| {
            while h.deltas.front().is_some_and(|(t, _)| *t < oldest) {
                if let (Some(c), Some((t, _))) = (&mut changes, h.deltas.pop_front()) {
                    c.removed_steps.push((h.id, t));
                }
            }
            if h.deltas.is_empty() && h.seen < oldest {
                if let Some(c) = &mut changes {
                    c.dropped_series.push(h.id);
                }
                return false;
            }
            let (removed, replaced) = h.roll_up(now_ms, &tiers);
            if let Some(c) = &mut changes {
                c.removed_steps.extend(removed.into_iter().map(|t| (h.id, t)));
                for t in replaced {
                    if let Some((_, step)) = h.deltas.iter().find(|(at, _)| *at == t) {
                        c.steps.push((h.id, t, histograms::encode(step)));
                    }
                }
            }
            true
        });
        self.changes = changes;
    }

    /// Whether nothing derived from spans has arrived yet (host and GPU samples may have).
    pub fn no_model_data(&self) -> bool {
        !self.series.keys().any(|(name, _)| name.starts_with("model."))
    }

    /// The values each filter label takes, sorted.
    pub fn label_values(&self) -> BTreeMap<&'static str, Vec<String>> {
        let mut out: BTreeMap<&'static str, std::collections::BTreeSet<String>> = BTreeMap::new();
        for ((name, labels), _) in self.series.iter() {
            if !name.starts_with("model.") && !labels.contains_key("model") {
                continue;
            }
            for f in FILTERS {
                if let Some(v) = labels.get(f) {
                    out.entry(f).or_default().insert(v.clone());
                }
            }
        }
        FILTERS
            .iter()
            .map(|f| (*f, out.remove(f).map(|s| s.into_iter().collect()).unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
    };

    /// A string attribute (also for the panels' tests).
    pub(crate) fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    /// One export request of `metrics` (also for the panels' tests).
    pub(crate) fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn counter(value: f64, start: u64, at_s: u64, temporality: AggregationTemporality) -> Metric {
        Metric {
            name: "model.requests".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes: vec![kv("model", "m"), kv("status_class", "2xx")],
                    start_time_unix_nano: start,
                    time_unix_nano: at_s * 1_000_000_000,
                    value: Some(number_data_point::Value::AsDouble(value)),
                    ..Default::default()
                }],
                aggregation_temporality: temporality as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    fn values(store: &Store, name: &str) -> Vec<f64> {
        let (_, s) = store.series.iter().find(|((n, _), _)| n == name).unwrap();
        s.points.iter().map(|p| p.v).collect()
    }

    #[test]
    fn cumulative_sums_become_increases_and_restarts_count_from_zero() {
        let mut store = Store::new(Duration::from_secs(3600), 100);
        for (value, start, at) in [(5.0, 1, 10), (12.0, 1, 20), (12.0, 1, 30), (3.0, 2, 40)] {
            store.ingest(&request(vec![counter(
                value,
                start,
                at,
                AggregationTemporality::Cumulative,
            )]));
        }
        assert_eq!(values(&store, "model.requests"), vec![5.0, 7.0, 0.0, 3.0]);
        assert_eq!(store.resolution_ms(), 10_000);
    }

    /// History sent late (points three days and 20 hours back) says nothing of the flush interval: the recent
    /// hours are still binned at the spacing of recent points, 10 s before any is known.
    #[test]
    fn points_days_apart_leave_the_resolution_of_the_recent_hours() {
        let mut store = Store::new(Duration::from_secs(7 * 86_400), 100);
        let back = |hours: u64| 7 * 86_400 - hours * 3_600;
        for at in [back(72), back(20)] {
            store.ingest(&request(vec![counter(1.0, 1, at, AggregationTemporality::Delta)]));
        }
        assert_eq!(store.resolution_ms(), 10_000);
        for at in [7 * 86_400, 7 * 86_400 + 30, 7 * 86_400 + 60] {
            store.ingest(&request(vec![counter(1.0, 1, at, AggregationTemporality::Delta)]));
        }
        assert_eq!(store.resolution_ms(), 30_000, "the spacing of the recent points");
    }

    /// A counter seen for the first time that starts at that point (scraped) or long before it (an agent running
    /// for days) is a baseline: what was counted before this range, not a burst. A restart after it, or a series
    /// that just started, counts in full.
    #[test]
    fn a_counter_that_starts_at_its_first_point_is_a_baseline() {
        let mut store = Store::new(Duration::from_secs(3600), 100);
        let cumulative = AggregationTemporality::Cumulative;
        for (value, start_s, at_s) in [(1000.0, 10, 10), (1004.0, 10, 20), (3.0, 21, 30), (5.0, 21, 40)] {
            store.ingest(&request(vec![counter(
                value,
                start_s * 1_000_000_000,
                at_s,
                cumulative,
            )]));
        }
        assert_eq!(values(&store, "model.requests"), vec![0.0, 4.0, 3.0, 2.0]);
        // An agent's counter that started a day ago, first seen now (a gateway, or this dashboard restarted
        // without storage): a baseline too; one that started a few seconds ago (a new series) counts in full.
        let mut store = Store::new(Duration::from_secs(3600), 100);
        let day_ago = (100_000 - 86_400) * 1_000_000_000;
        store.ingest(&request(vec![counter(5000.0, day_ago, 100_000, cumulative)]));
        store.ingest(&request(vec![counter(5004.0, day_ago, 100_010, cumulative)]));
        assert_eq!(values(&store, "model.requests"), vec![0.0, 4.0]);
        let mut store = Store::new(Duration::from_secs(3600), 100);
        store.ingest(&request(vec![counter(
            7.0,
            99_995 * 1_000_000_000,
            100_000,
            cumulative,
        )]));
        assert_eq!(values(&store, "model.requests"), vec![7.0]);
    }

    #[test]
    fn delta_sums_are_kept_as_they_are() {
        let mut store = Store::new(Duration::from_secs(3600), 100);
        for (value, at) in [(5.0, 10), (7.0, 20)] {
            store.ingest(&request(vec![counter(value, 0, at, AggregationTemporality::Delta)]));
        }
        assert_eq!(values(&store, "model.requests"), vec![5.0, 7.0]);
    }

    #[test]
    fn retention_and_the_series_limit_bound_memory() {
        let mut store = Store::new(Duration::from_secs(60), 2);
        for i in 0..5 {
            let metric = Metric {
                name: format!("g{i}"),
                data: Some(Data::Gauge(Gauge {
                    data_points: vec![NumberDataPoint {
                        time_unix_nano: 1_000_000_000 * 100,
                        value: Some(number_data_point::Value::AsDouble(1.0)),
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            };
            store.ingest(&request(vec![metric]));
        }
        assert_eq!(store.series.len(), 2, "past max_series new series are refused");
        assert_eq!(store.dropped, 3);
        store.expire(100_000 + 59_000);
        assert_eq!(store.series.len(), 2, "within the retention");
        store.expire(100_000 + 61_000);
        assert!(store.series.is_empty(), "older than the retention: gone");
    }

    /// The README's figure: one series at the default 10 s flush holds 360 points an hour, 16 bytes each.
    #[test]
    fn memory_per_series_and_hour() {
        let mut store = Store::new(Duration::from_secs(3600), 100);
        for i in 0..720u64 {
            let metric = Metric {
                name: "model.async_queue.size".into(),
                data: Some(Data::Gauge(Gauge {
                    data_points: vec![NumberDataPoint {
                        time_unix_nano: i * 10_000_000_000,
                        value: Some(number_data_point::Value::AsDouble(i as f64)),
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            };
            store.ingest(&request(vec![metric]));
            store.expire((i * 10_000) as i64);
        }
        let points: usize = store.series.values().map(|s| s.points.len()).sum();
        assert_eq!(points, 361, "an hour of 10 s points (both ends)");
        assert_eq!(POINT_BYTES, 16);
        let bytes = store.point_bytes();
        assert!(bytes <= 8 * 1024, "{bytes} bytes for one series-hour");
    }
}
