//! OTLP metrics flattened into Prometheus series, and the store the pull exporter serves them from.
//!
//! Cumulative points replace what a series held; delta points are added to it (the pull model needs cumulative
//! values). A series not updated for `metric_expiration` is dropped, so the page does not grow forever.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use infercol_pipelines::histogram::ExpoHistogram;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value as Av};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, exemplar, metric::Data as MetricData, number_data_point,
};

use super::translate::{NameKind, labels, metric_name};

pub type Labels = Vec<(String, String)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    /// `target_info`: a gauge of 1 (an `info` family in OpenMetrics).
    Info,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    /// Explicit buckets: bounds and per-bucket (not cumulative) counts, the last one past the last bound.
    Classic {
        bounds: Vec<f64>,
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
    /// An OTLP exponential histogram (positive buckets and zeros); a native histogram for Prometheus.
    Native(ExpoHistogram),
    Summary {
        quantiles: Vec<(f64, f64)>,
        sum: f64,
        count: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    pub labels: Labels,
    pub value: f64,
    pub time_ns: u64,
}

/// One series' value as an OTLP point gave it.
#[derive(Clone, Debug)]
pub struct Point {
    pub family: String,
    pub kind: FamilyType,
    pub help: String,
    pub unit: Option<String>,
    pub labels: Labels,
    pub value: Value,
    pub exemplars: Vec<Exemplar>,
    pub delta: bool,
    pub time_ns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct TranslateOptions {
    pub namespace: String,
    pub add_metric_suffixes: bool,
    /// Every resource attribute becomes a label on every series of that resource.
    pub resource_to_telemetry: bool,
    pub const_labels: Vec<(String, String)>,
}

/// The longest label value the exporters write (bytes); longer attribute values are cut and end in `...`, so that
/// a client's huge attribute cannot make every page and every remote-write request huge. Longer than
/// model_metrics' 256, for `target_info` attributes such as a process's command line.
pub const MAX_LABEL_VALUE_LENGTH: usize = 1024;

/// An attribute value as a label value, cut to `MAX_LABEL_VALUE_LENGTH`.
fn text(v: &Option<AnyValue>) -> Option<String> {
    let value = full_text(v)?;
    match infercol_pipelines::replicas::truncate_label(&value, MAX_LABEL_VALUE_LENGTH) {
        (cut, true) => Some(cut.into_owned()),
        _ => Some(value),
    }
}

fn full_text(v: &Option<AnyValue>) -> Option<String> {
    Some(match v.as_ref()?.value.as_ref()? {
        Av::StringValue(s) => s.clone(),
        Av::BoolValue(b) => b.to_string(),
        Av::IntValue(i) => i.to_string(),
        Av::DoubleValue(d) => d.to_string(),
        Av::BytesValue(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Av::ArrayValue(a) => {
            let items: Vec<String> = a
                .values
                .iter()
                .map(|x| full_text(&Some(x.clone())).unwrap_or_default())
                .map(|s| format!("{s:?}"))
                .collect();
            format!("[{}]", items.join(","))
        }
        Av::KvlistValue(_) | Av::StringValueStrindex(_) => return None,
    })
}

fn pairs(attributes: &[KeyValue]) -> impl Iterator<Item = (String, String)> + '_ {
    attributes
        .iter()
        .filter_map(|kv| text(&kv.value).map(|v| (kv.key.clone(), v)))
}

fn find(attributes: &[KeyValue], keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| attributes.iter().find(|kv| kv.key == *k))
        .and_then(|kv| text(&kv.value))
        .filter(|s| !s.is_empty())
}

/// The labels a resource gives every series: `job` and `instance` (as the Collector's exporter sets them), the
/// model dimensions of the metrics contract when the resource names them, and, with
/// `resource_to_telemetry_conversion`, every attribute.
fn resource_labels(resource: &[KeyValue], all: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if all {
        out.extend(pairs(resource));
    }
    let service = find(resource, &["service.name"]);
    if let Some(name) = &service {
        let job = match find(resource, &["service.namespace"]) {
            Some(ns) => format!("{ns}/{name}"),
            None => name.clone(),
        };
        out.push(("job".into(), job));
        out.push(("model".into(), name.clone()));
    }
    if let Some(instance) = find(resource, &["service.instance.id"]) {
        out.push(("instance".into(), instance));
    }
    if let Some(d) = find(resource, &["deployment.id", "deployment.name", "service.version"]) {
        out.push(("deployment".into(), d));
    }
    if let Some(e) = find(resource, &["deployment.environment.name", "deployment.environment"]) {
        out.push(("environment".into(), e));
    }
    out
}

/// Merges point labels over resource labels (a point's own label wins), then the constant labels.
fn series_labels(point: &[KeyValue], resource: &[(String, String)], constant: &[(String, String)]) -> Labels {
    let mut own = labels(pairs(point));
    for (k, v) in labels(resource.iter().cloned()) {
        if !own.iter().any(|(n, _)| *n == k) {
            own.push((k, v));
        }
    }
    for (k, v) in constant {
        if !own.iter().any(|(n, _)| n == k) {
            own.push((k.clone(), v.clone()));
        }
    }
    own.sort();
    own
}

fn exemplars_of(list: &[opentelemetry_proto::tonic::metrics::v1::Exemplar]) -> Vec<Exemplar> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    list.iter()
        .map(|e| {
            let mut l = Vec::new();
            if !e.trace_id.is_empty() {
                l.push(("trace_id".to_string(), hex(&e.trace_id)));
            }
            if !e.span_id.is_empty() {
                l.push(("span_id".to_string(), hex(&e.span_id)));
            }
            Exemplar {
                labels: l,
                value: match e.value {
                    Some(exemplar::Value::AsDouble(d)) => d,
                    Some(exemplar::Value::AsInt(i)) => i as f64,
                    None => 0.0,
                },
                time_ns: e.time_unix_nano,
            }
        })
        .collect()
}

/// Flattens an export request into points, plus one `target_info` point per resource that has attributes.
pub fn flatten(request: &ExportMetricsServiceRequest, options: &TranslateOptions) -> Vec<Point> {
    let delta = AggregationTemporality::Delta as i32;
    let mut out = Vec::new();
    let suffixes = options.add_metric_suffixes;
    let ns = options.namespace.as_str();
    for rm in &request.resource_metrics {
        let resource = rm.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        let from_resource = resource_labels(resource, options.resource_to_telemetry);
        if !resource.is_empty() {
            let mut info: Vec<(String, String)> = pairs(resource).collect();
            info.extend(
                from_resource
                    .iter()
                    .filter(|(k, _)| k == "job" || k == "instance")
                    .cloned(),
            );
            out.push(Point {
                family: metric_name("target_info", "", NameKind::Other, ns, false),
                kind: FamilyType::Info,
                help: "Target metadata".into(),
                unit: None,
                labels: labels(info),
                value: Value::Number(1.0),
                exemplars: Vec::new(),
                delta: false,
                time_ns: 0,
            });
        }
        for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            let help = if m.description.is_empty() {
                m.name.clone()
            } else {
                m.description.clone()
            };
            let Some(data) = &m.data else { continue };
            let mut push =
                |family: String, kind: FamilyType, point_attrs: &[KeyValue], value, ex, is_delta, time_ns| {
                    out.push(Point {
                        unit: unit_suffix(&family, &m.unit),
                        family,
                        kind,
                        help: help.clone(),
                        labels: series_labels(point_attrs, &from_resource, &options.const_labels),
                        value,
                        exemplars: ex,
                        delta: is_delta,
                        time_ns,
                    });
                };
            match data {
                MetricData::Gauge(g) => {
                    let name = metric_name(&m.name, &m.unit, NameKind::Gauge, ns, suffixes);
                    for p in &g.data_points {
                        push(
                            name.clone(),
                            FamilyType::Gauge,
                            &p.attributes,
                            Value::Number(number(p)),
                            vec![],
                            false,
                            p.time_unix_nano,
                        );
                    }
                }
                MetricData::Sum(s) => {
                    let (kind, name_kind) = if s.is_monotonic {
                        (FamilyType::Counter, NameKind::MonotonicSum)
                    } else {
                        (FamilyType::Gauge, NameKind::Gauge)
                    };
                    let name = metric_name(&m.name, &m.unit, name_kind, ns, suffixes);
                    let is_delta = s.aggregation_temporality == delta;
                    for p in &s.data_points {
                        push(
                            name.clone(),
                            kind,
                            &p.attributes,
                            Value::Number(number(p)),
                            exemplars_of(&p.exemplars),
                            is_delta && s.is_monotonic,
                            p.time_unix_nano,
                        );
                    }
                }
                MetricData::Histogram(h) => {
                    let name = metric_name(&m.name, &m.unit, NameKind::Other, ns, suffixes);
                    let is_delta = h.aggregation_temporality == delta;
                    for p in &h.data_points {
                        if p.bucket_counts.len() != p.explicit_bounds.len() + 1 && !p.bucket_counts.is_empty() {
                            continue; // malformed point: bounds and counts disagree
                        }
                        let counts = if p.bucket_counts.is_empty() {
                            let mut c = vec![0; p.explicit_bounds.len() + 1];
                            if let Some(last) = c.last_mut() {
                                *last = p.count;
                            }
                            c
                        } else {
                            p.bucket_counts.clone()
                        };
                        let value = Value::Classic {
                            bounds: p.explicit_bounds.clone(),
                            counts,
                            sum: p.sum.unwrap_or(0.0),
                            count: p.count,
                        };
                        push(
                            name.clone(),
                            FamilyType::Histogram,
                            &p.attributes,
                            value,
                            exemplars_of(&p.exemplars),
                            is_delta,
                            p.time_unix_nano,
                        );
                    }
                }
                MetricData::ExponentialHistogram(h) => {
                    let name = metric_name(&m.name, &m.unit, NameKind::Other, ns, suffixes);
                    let is_delta = h.aggregation_temporality == delta;
                    for p in &h.data_points {
                        let histogram = ExpoHistogram::from_otlp(p);
                        push(
                            name.clone(),
                            FamilyType::Histogram,
                            &p.attributes,
                            Value::Native(histogram),
                            exemplars_of(&p.exemplars),
                            is_delta,
                            p.time_unix_nano,
                        );
                    }
                }
                MetricData::Summary(s) => {
                    let name = metric_name(&m.name, &m.unit, NameKind::Other, ns, suffixes);
                    for p in &s.data_points {
                        let value = Value::Summary {
                            quantiles: p.quantile_values.iter().map(|q| (q.quantile, q.value)).collect(),
                            sum: p.sum,
                            count: p.count,
                        };
                        push(
                            name.clone(),
                            FamilyType::Summary,
                            &p.attributes,
                            value,
                            vec![],
                            false,
                            p.time_unix_nano,
                        );
                    }
                }
            }
        }
    }
    out
}

fn number(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => 0.0,
    }
}

/// The OpenMetrics unit of a family, when its name ends with it.
fn unit_suffix(family: &str, unit: &str) -> Option<String> {
    let word = match unit {
        "s" => "seconds",
        "By" => "bytes",
        "1" => "ratio",
        _ => return None,
    };
    let base = family.strip_suffix("_total").unwrap_or(family);
    base.ends_with(&format!("_{word}")).then(|| word.to_string())
}

struct Series {
    value: Value,
    exemplars: Vec<Exemplar>,
    updated: Instant,
}

pub struct Family {
    pub kind: FamilyType,
    pub help: String,
    pub unit: Option<String>,
    series: HashMap<Labels, Series>,
}

impl Family {
    /// The series, sorted by labels (a stable page).
    pub fn series(&self) -> Vec<(&Labels, &Value, &[Exemplar])> {
        let mut out: Vec<_> = self
            .series
            .iter()
            .map(|(l, s)| (l, &s.value, s.exemplars.as_slice()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
}

/// The series the pull exporter serves.
pub struct Store {
    families: BTreeMap<String, Family>,
    expiration: Duration,
    warned: std::collections::HashSet<String>,
}

impl Store {
    pub fn new(expiration: Duration) -> Store {
        Store {
            families: BTreeMap::new(),
            expiration,
            warned: Default::default(),
        }
    }

    pub fn apply(&mut self, points: Vec<Point>, now: Instant) {
        for p in points {
            let family = self.families.entry(p.family.clone()).or_insert_with(|| Family {
                kind: p.kind,
                help: p.help.clone(),
                unit: p.unit.clone(),
                series: HashMap::new(),
            });
            if family.kind != p.kind {
                if self.warned.insert(p.family.clone()) {
                    tracing::warn!(
                        "metric family {} arrives as {:?} and as {:?}; keeping the first, dropping the other",
                        p.family,
                        family.kind,
                        p.kind
                    );
                }
                continue;
            }
            match family.series.get_mut(&p.labels) {
                Some(existing) if p.delta => {
                    accumulate(&mut existing.value, p.value);
                    if !p.exemplars.is_empty() {
                        existing.exemplars = p.exemplars;
                    }
                    existing.updated = now;
                }
                Some(existing) => {
                    existing.value = p.value;
                    if !p.exemplars.is_empty() {
                        existing.exemplars = p.exemplars;
                    }
                    existing.updated = now;
                }
                None => {
                    family.series.insert(
                        p.labels,
                        Series {
                            value: p.value,
                            exemplars: p.exemplars,
                            updated: now,
                        },
                    );
                }
            }
        }
    }

    /// The cumulative value of a series, after `apply`.
    pub fn get(&self, family: &str, labels: &Labels) -> Option<&Value> {
        self.families.get(family)?.series.get(labels).map(|s| &s.value)
    }

    /// Drops series not updated within `metric_expiration`.
    pub fn expire(&mut self, now: Instant) {
        let expiration = self.expiration;
        for family in self.families.values_mut() {
            family.series.retain(|_, s| now.duration_since(s.updated) < expiration);
        }
        self.families.retain(|_, f| !f.series.is_empty());
    }

    pub fn families(&self) -> impl Iterator<Item = (&String, &Family)> {
        self.families.iter()
    }

    pub fn series_count(&self) -> usize {
        self.families.values().map(|f| f.series.len()).sum()
    }
}

/// Adds a delta point to a cumulative value.
fn accumulate(into: &mut Value, delta: Value) {
    match (into, delta) {
        (Value::Number(a), Value::Number(b)) => *a += b,
        (
            Value::Classic {
                bounds,
                counts,
                sum,
                count,
            },
            Value::Classic {
                bounds: b2,
                counts: c2,
                sum: s2,
                count: n2,
            },
        ) if *bounds == b2 => {
            for (a, b) in counts.iter_mut().zip(c2) {
                *a += b;
            }
            *sum += s2;
            *count += n2;
        }
        (Value::Native(a), Value::Native(b)) => a.merge(&b),
        (into, other) => *into = other,
    }
}

/// Classic buckets of a native histogram, for the text formats: `(upper bound, cumulative count)`, the zero
/// bucket first (`le="0"`) when it holds values, ending with `+Inf` = count.
pub fn classic_buckets(h: &ExpoHistogram) -> Vec<(f64, u64)> {
    use infercol_pipelines::histogram::bucket_lower;
    let mut out = Vec::with_capacity(h.bucket_counts().len() + 2);
    let mut cumulative = h.zero_count();
    if h.zero_count() > 0 {
        out.push((0.0, cumulative));
    }
    for (i, c) in h.bucket_counts().iter().enumerate() {
        cumulative += c;
        out.push((bucket_lower(h.offset() + i as i32 + 1, h.scale()), cumulative));
    }
    out.push((f64::INFINITY, h.count().max(cumulative)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(value: f64, delta: bool) -> Point {
        Point {
            family: "jobs_total".into(),
            kind: FamilyType::Counter,
            help: "jobs".into(),
            unit: None,
            labels: vec![("model".into(), "m".into())],
            value: Value::Number(value),
            exemplars: vec![],
            delta,
            time_ns: 0,
        }
    }

    fn value(store: &Store) -> Vec<f64> {
        store
            .families()
            .flat_map(|(_, f)| f.series().into_iter().map(|(_, v, _)| v.clone()))
            .map(|v| match v {
                Value::Number(n) => n,
                _ => f64::NAN,
            })
            .collect()
    }

    #[test]
    fn deltas_accumulate_cumulatives_replace_and_idle_series_expire() {
        let mut store = Store::new(Duration::from_secs(300));
        let t0 = Instant::now();
        store.apply(vec![point(3.0, true)], t0);
        store.apply(vec![point(4.0, true)], t0);
        assert_eq!(value(&store), vec![7.0]);
        store.apply(vec![point(10.0, false)], t0);
        assert_eq!(value(&store), vec![10.0]);
        store.expire(t0 + Duration::from_secs(299));
        assert_eq!(store.series_count(), 1);
        store.expire(t0 + Duration::from_secs(301));
        assert_eq!(store.series_count(), 0, "not updated for metric_expiration: gone");
    }

    #[test]
    fn native_histograms_render_as_cumulative_classic_buckets() {
        let mut h: ExpoHistogram = ExpoHistogram::new(160, 3);
        for v in [0.0, 1.0, 1.5, 3.0] {
            h.record(v, 1);
        }
        let buckets = classic_buckets(&h);
        assert_eq!(buckets.first(), Some(&(0.0, 1)), "zeros first");
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 4)));
        assert!(
            buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "increasing bounds and counts"
        );
        // Every value is at or below the bound of the bucket that first counts it.
        let at = |v: f64| buckets.iter().find(|(le, _)| v <= *le).unwrap().1;
        assert_eq!(at(1.0), 2);
        assert_eq!(at(3.0), 4);
    }
}
