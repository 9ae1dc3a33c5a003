//! The Prometheus protobuf exposition (`io.prometheus.client.MetricFamily`, length-delimited), which carries native
//! histograms: what a Prometheus with native histograms enabled asks for first.
//!
//! The messages are written out here with prost's derive: no maintained crate publishes the client_model types
//! with the native-histogram fields for prost 0.14.

use prost::Message;

use super::store::{Exemplar, FamilyType, Store, Value};

#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoExemplar {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(message, optional, tag = "3")]
    pub timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Counter {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(message, optional, tag = "2")]
    pub exemplar: Option<ProtoExemplar>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Quantile {
    #[prost(double, tag = "1")]
    pub quantile: f64,
    #[prost(double, tag = "2")]
    pub value: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(uint64, tag = "1")]
    pub sample_count: u64,
    #[prost(double, tag = "2")]
    pub sample_sum: f64,
    #[prost(message, repeated, tag = "3")]
    pub quantile: Vec<Quantile>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Bucket {
    #[prost(uint64, tag = "1")]
    pub cumulative_count: u64,
    #[prost(double, tag = "2")]
    pub upper_bound: f64,
    #[prost(message, optional, tag = "3")]
    pub exemplar: Option<ProtoExemplar>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(uint64, tag = "1")]
    pub sample_count: u64,
    #[prost(double, tag = "2")]
    pub sample_sum: f64,
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(sint32, tag = "5")]
    pub schema: i32,
    #[prost(double, tag = "6")]
    pub zero_threshold: f64,
    #[prost(uint64, tag = "7")]
    pub zero_count: u64,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "13")]
    pub positive_delta: Vec<i64>,
    #[prost(message, repeated, tag = "16")]
    pub exemplars: Vec<ProtoExemplar>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    #[prost(message, optional, tag = "4")]
    pub summary: Option<Summary>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricFamily {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub help: String,
    /// COUNTER 0, GAUGE 1, SUMMARY 2, UNTYPED 3, HISTOGRAM 4.
    #[prost(int32, tag = "3")]
    pub r#type: i32,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Native histogram schemas Prometheus accepts.
const MAX_SCHEMA: i32 = 8;

fn pairs(labels: &[(String, String)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(n, v)| LabelPair {
            name: n.clone(),
            value: v.clone(),
        })
        .collect()
}

fn proto_exemplar(e: &Exemplar) -> ProtoExemplar {
    ProtoExemplar {
        label: pairs(&e.labels),
        value: e.value,
        timestamp: (e.time_ns > 0).then_some(Timestamp {
            seconds: (e.time_ns / 1_000_000_000) as i64,
            nanos: (e.time_ns % 1_000_000_000) as i32,
        }),
    }
}

/// The sparse buckets of a native histogram from an OTLP exponential one: the schema is the scale (coarsened to
/// at most 8), and a Prometheus bucket index is the OTLP index + 1 (Prometheus buckets are upper-inclusive at
/// base^index). Returns the histogram as coarsened, its spans and the count deltas; the exposition and remote
/// write carry the same fields.
pub fn sparse(
    h: &infercol_pipelines::histogram::ExpoHistogram,
) -> (infercol_pipelines::histogram::ExpoHistogram, Vec<BucketSpan>, Vec<i64>) {
    let mut h = h.clone();
    if h.scale() > MAX_SCHEMA {
        h.downscale(h.scale() - MAX_SCHEMA);
    }
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut deltas = Vec::new();
    let mut previous_count = 0i64;
    let mut next_index: Option<i32> = None;
    for (i, c) in h.bucket_counts().iter().enumerate() {
        if *c == 0 {
            continue;
        }
        let index = h.offset() + i as i32 + 1;
        match (next_index, spans.last_mut()) {
            (Some(expected), Some(span)) if expected == index => span.length += 1,
            (Some(expected), _) => spans.push(BucketSpan {
                offset: index - expected,
                length: 1,
            }),
            (None, _) => spans.push(BucketSpan {
                offset: index,
                length: 1,
            }),
        }
        next_index = Some(index + 1);
        deltas.push(*c as i64 - previous_count);
        previous_count = *c as i64;
    }
    (h, spans, deltas)
}

/// client_golang's default zero threshold: only exact zeros fall in the zero bucket, and Prometheus sees a native
/// histogram even when every value is zero.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// A native histogram for the exposition, from an OTLP exponential one (see `sparse`).
fn native(h: &infercol_pipelines::histogram::ExpoHistogram, exemplars: &[Exemplar]) -> Histogram {
    let (h, spans, deltas) = sparse(h);
    Histogram {
        sample_count: h.count(),
        sample_sum: h.sum(),
        bucket: Vec::new(),
        schema: h.scale().max(-4),
        zero_threshold: ZERO_THRESHOLD,
        zero_count: h.zero_count(),
        positive_span: spans,
        positive_delta: deltas,
        exemplars: exemplars.iter().map(proto_exemplar).collect(),
    }
}

/// The whole page as length-delimited MetricFamily messages, or as many whole families as fit in `max` bytes
/// (then `true`: the page was cut).
pub fn render(store: &Store, max: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut cut = false;
    for (name, f) in store.families() {
        let before = out.len();
        let r#type = match f.kind {
            FamilyType::Counter => 0,
            FamilyType::Gauge | FamilyType::Info => 1,
            FamilyType::Summary => 2,
            FamilyType::Histogram => 4,
        };
        let metric = f
            .series()
            .into_iter()
            .map(|(labels, value, exemplars)| {
                let mut m = Metric {
                    label: pairs(labels),
                    ..Default::default()
                };
                match (f.kind, value) {
                    (FamilyType::Counter, Value::Number(v)) => {
                        m.counter = Some(Counter {
                            value: *v,
                            exemplar: exemplars.first().map(proto_exemplar),
                        })
                    }
                    (_, Value::Number(v)) => m.gauge = Some(Gauge { value: *v }),
                    (
                        _,
                        Value::Classic {
                            bounds,
                            counts,
                            sum,
                            count,
                        },
                    ) => {
                        let mut cumulative = 0;
                        let bucket = bounds
                            .iter()
                            .zip(counts)
                            .map(|(b, c)| {
                                cumulative += c;
                                Bucket {
                                    cumulative_count: cumulative,
                                    upper_bound: *b,
                                    exemplar: None,
                                }
                            })
                            .collect();
                        m.histogram = Some(Histogram {
                            sample_count: *count,
                            sample_sum: *sum,
                            bucket,
                            ..Default::default()
                        });
                    }
                    (_, Value::Native(h)) => m.histogram = Some(native(h, exemplars)),
                    (_, Value::Summary { quantiles, sum, count }) => {
                        m.summary = Some(Summary {
                            sample_count: *count,
                            sample_sum: *sum,
                            quantile: quantiles
                                .iter()
                                .map(|(q, v)| Quantile {
                                    quantile: *q,
                                    value: *v,
                                })
                                .collect(),
                        })
                    }
                }
                m
            })
            .collect();
        let family = MetricFamily {
            name: name.clone(),
            help: f.help.clone(),
            r#type,
            metric,
        };
        // Writing into a Vec cannot fail.
        let _ = family.encode_length_delimited(&mut out);
        if out.len() > max {
            out.truncate(before);
            cut = true;
            break;
        }
    }
    (out, cut)
}
