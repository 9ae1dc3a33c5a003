//! Server profiles: what a model server's own families mean in the contract. Each profile names its server's
//! version and the families it maps, read from that server's source (see each file). The mapping emits the
//! contract's metrics (`model.requests` by status class, the latency, size and token histograms with their window
//! quantiles, `model.queue.size`, `model.kv_cache.utilization`) beside the families as scraped.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum, Summary,
    SummaryDataPoint, metric, number_data_point, summary_data_point,
};
use serde::Deserialize;

use super::exposition::{Family, FamilyType, LabelSet};
use super::window::{BucketWindow, Snapshot, quantile, worst_relative_error};
use crate::sampling::kv;

/// What one of a server's families means.
#[derive(Clone, Copy, Debug)]
pub enum Meaning {
    /// Finished requests; the status code and class from the sample's labels (None: not a request count).
    Requests(fn(&LabelSet) -> Option<(String, &'static str)>),
    /// A classic histogram of a contract histogram; `scale` turns the server's unit into the contract's.
    Histogram {
        metric: &'static str,
        unit: &'static str,
        scale: f64,
    },
    /// A gauge of the contract, scaled likewise; the series of one model are summed (requests waiting on every
    /// engine), or averaged when `mean` (a utilisation).
    Gauge {
        metric: &'static str,
        unit: &'static str,
        scale: f64,
        mean: bool,
    },
}

/// A classic histogram already in the contract's unit.
pub(crate) const fn classic(metric: &'static str, unit: &'static str) -> Meaning {
    Meaning::Histogram {
        metric,
        unit,
        scale: 1.0,
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// The family's name on the page (a counter's with the `_total` its client library writes, if it does).
    pub family: &'static str,
    pub meaning: Meaning,
}

pub struct ServerProfile {
    pub name: &'static str,
    /// The upstream version its families were read from.
    pub version: &'static str,
    /// A family name prefix only this server's pages carry.
    pub marker: &'static str,
    /// The label that names the model on the page; it wins over the target's `model`.
    pub model_label: Option<&'static str>,
    pub rules: &'static [Rule],
}

/// `server:` of a target: `auto` (detected from the page), a server's name, or `none`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ServerChoice {
    #[default]
    Auto,
    None,
    Named(&'static str),
}

impl<'de> Deserialize<'de> for ServerChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "auto" => Ok(ServerChoice::Auto),
            "none" => Ok(ServerChoice::None),
            other => PROFILES
                .iter()
                .find(|p| p.name == other)
                .map(|p| ServerChoice::Named(p.name))
                .ok_or_else(|| {
                    let known: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
                    serde::de::Error::custom(format!(
                        "unknown server `{other}`; use auto, none or one of {}",
                        known.join(", ")
                    ))
                }),
        }
    }
}

mod sglang;
mod tgi;
mod triton;
mod vllm;

/// The class of an HTTP status code, by its first digit (`None` for anything else).
pub fn class_of(code: &str) -> Option<&'static str> {
    match code.as_bytes() {
        [b'1', _, _] => Some("1xx"),
        [b'2', _, _] => Some("2xx"),
        [b'3', _, _] => Some("3xx"),
        [b'4', _, _] => Some("4xx"),
        [b'5', _, _] => Some("5xx"),
        _ => None,
    }
}

/// Every profile this build knows.
pub static PROFILES: &[&ServerProfile] = &[&vllm::VLLM, &sglang::SGLANG, &tgi::TGI, &triton::TRITON];

impl ServerChoice {
    /// The profile for a page: the named one, or the first whose marker a family carries.
    pub fn profile(&self, families: &[Family]) -> Option<&'static ServerProfile> {
        match self {
            ServerChoice::None => None,
            ServerChoice::Named(name) => PROFILES.iter().find(|p| p.name == *name).copied(),
            ServerChoice::Auto => PROFILES
                .iter()
                .find(|p| families.iter().any(|f| f.name.starts_with(p.marker)))
                .copied(),
        }
    }
}

/// A target's dimensions: model, deployment, environment.
pub type Dims = (String, String, String);

/// What the mapping keeps between scrapes: cumulative start times and the buckets of each window.
#[derive(Default)]
pub struct MappedState {
    starts: crate::prometheus::convert::StartTimes<(String, Vec<String>)>,
    windows: HashMap<(String, Dims), BucketWindow>,
}

/// How the window quantiles are computed.
pub struct Quantiles<'a> {
    pub window_ns: u64,
    pub quantiles: &'a [f64],
}

fn dims_attributes(dims: &Dims) -> Vec<KeyValue> {
    vec![
        kv("model", dims.0.clone()),
        kv("deployment", dims.1.clone()),
        kv("environment", dims.2.clone()),
    ]
}

/// The contract's metrics from a page, for the dimensions `allowed` lets through (span-derived ones win).
pub fn map(
    profile: &ServerProfile,
    families: &[Family],
    target: &Dims,
    now: u64,
    state: &mut MappedState,
    q: &Quantiles<'_>,
    allowed: &dyn Fn(&Dims) -> bool,
) -> Vec<Metric> {
    // A family without the model label (vLLM's HTTP families) belongs to the one model the page names, if it
    // names one; else to the target's.
    let named: std::collections::BTreeSet<&str> = profile
        .model_label
        .map(|l| {
            families
                .iter()
                .flat_map(|f| &f.samples)
                .filter_map(|s| s.labels.iter().find(|(k, _)| k == l).map(|(_, v)| v.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let default_model = match named.len() {
        1 => named.iter().next().map_or_else(|| target.0.clone(), |m| m.to_string()),
        _ => target.0.clone(),
    };
    let dims_of = |labels: &LabelSet| -> Dims {
        let model = profile
            .model_label
            .and_then(|l| labels.iter().find(|(k, _)| k == l))
            .map_or_else(|| default_model.clone(), |(_, v)| v.clone());
        (model, target.1.clone(), target.2.clone())
    };
    let mut requests: HashMap<(Dims, String, &'static str), f64> = HashMap::new();
    let mut out = Vec::new();
    state.starts.begin_scrape();
    for rule in profile.rules {
        let Some(family) = families
            .iter()
            .find(|f| f.name == rule.family || format!("{}_total", f.name) == rule.family)
        else {
            continue;
        };
        match rule.meaning {
            Meaning::Requests(class) => {
                for s in family
                    .samples
                    .iter()
                    .filter(|s| s.suffix != "_created" && s.value.is_finite())
                {
                    if let Some((code, class)) = class(&s.labels) {
                        let dims = dims_of(&s.labels);
                        if allowed(&dims) {
                            *requests.entry((dims, code, class)).or_default() += s.value;
                        }
                    }
                }
            }
            Meaning::Histogram { metric, unit, scale } if family.kind == FamilyType::Histogram => {
                out.extend(histogram(family, metric, unit, scale, &dims_of, allowed, now, state, q));
            }
            Meaning::Gauge {
                metric,
                unit,
                scale,
                mean,
            } => {
                let values = gauge_values(family, scale, mean, &dims_of, allowed);
                out.extend(gauge(metric, unit, values, now));
            }
            Meaning::Histogram { .. } => {}
        }
    }
    out.extend(requests_sum(requests, now, state));
    // Series gone from the page (or now derived from spans) are forgotten: the state is bounded by one page.
    state.starts.forget_unseen();
    state.windows.retain(|_, w| w.last_at() == Some(now));
    out
}

fn requests_sum(
    requests: HashMap<(Dims, String, &'static str), f64>,
    now: u64,
    state: &mut MappedState,
) -> Option<Metric> {
    if requests.is_empty() {
        return None;
    }
    let mut keys: Vec<_> = requests.keys().cloned().collect();
    keys.sort();
    let points = keys
        .into_iter()
        .map(|key| {
            let value = requests[&key];
            let (dims, code, class) = key;
            let id = vec![dims.0.clone(), dims.1.clone(), dims.2.clone(), code.to_string()];
            let mut attributes = dims_attributes(&dims);
            attributes.extend([
                kv("protocol", "http"),
                kv("status_code", code),
                kv("status_class", class),
            ]);
            NumberDataPoint {
                attributes,
                start_time_unix_nano: state.starts.start(("model.requests".into(), id), value, now),
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            }
        })
        .collect();
    Some(Metric {
        name: "model.requests".into(),
        unit: "{request}".into(),
        description: "Requests by status class, from the server's own counters.".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    })
}

fn gauge(metric: &str, unit: &str, by_dims: HashMap<Dims, f64>, now: u64) -> Option<Metric> {
    if by_dims.is_empty() {
        return None;
    }
    let mut entries: Vec<_> = by_dims.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let points = entries
        .into_iter()
        .map(|(dims, value)| NumberDataPoint {
            attributes: dims_attributes(&dims),
            time_unix_nano: now,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        })
        .collect();
    Some(Metric {
        name: metric.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge { data_points: points })),
        ..Default::default()
    })
}

/// A gauge family's values per dimensions: summed over its other labels (GPUs, engines), or their mean.
fn gauge_values(
    family: &Family,
    scale: f64,
    mean: bool,
    dims_of: &dyn Fn(&LabelSet) -> Dims,
    allowed: &dyn Fn(&Dims) -> bool,
) -> HashMap<Dims, f64> {
    let mut by_dims: HashMap<Dims, (f64, f64)> = HashMap::new();
    for s in family.samples.iter().filter(|s| s.value.is_finite()) {
        let dims = dims_of(&s.labels);
        if allowed(&dims) {
            let entry = by_dims.entry(dims).or_default();
            *entry = (entry.0 + s.value * scale, entry.1 + 1.0);
        }
    }
    by_dims
        .into_iter()
        .map(|(dims, (sum, n))| (dims, if mean { sum / n } else { sum }))
        .collect()
}

/// The window quantiles of one dimensions' buckets, once the window holds two scrapes.
fn window_summary(
    state: &mut MappedState,
    metric: &'static str,
    dims: &Dims,
    buckets: Vec<(f64, f64)>,
    now: u64,
    q: &Quantiles<'_>,
) -> Option<SummaryDataPoint> {
    let window = state.windows.entry((metric.to_string(), dims.clone())).or_default();
    window.push(Snapshot { at_ns: now, buckets }, q.window_ns);
    let delta = window.delta()?;
    let quantile_values = q
        .quantiles
        .iter()
        .filter_map(|&qq| quantile(qq, &delta).map(|value| summary_data_point::ValueAtQuantile { quantile: qq, value }))
        .collect();
    Some(SummaryDataPoint {
        attributes: dims_attributes(dims),
        start_time_unix_nano: now.saturating_sub(q.window_ns),
        time_unix_nano: now,
        count: delta.last().map_or(0.0, |b| b.1) as u64,
        quantile_values,
        ..Default::default()
    })
}

/// A histogram family's cumulative counts by bound (scaled to the contract's unit) and sum, per dimensions, summed
/// over the family's other labels (engines, GPUs), sorted by dimensions.
type SummedBuckets = Vec<(Dims, (Vec<(f64, f64)>, f64))>;

fn summed_buckets(
    family: &Family,
    scale: f64,
    dims_of: &dyn Fn(&LabelSet) -> Dims,
    allowed: &dyn Fn(&Dims) -> bool,
) -> SummedBuckets {
    let mut merged: HashMap<Dims, (Vec<(f64, f64)>, f64)> = HashMap::new();
    for s in &family.samples {
        let dims = dims_of(&s.labels);
        if !allowed(&dims) || !s.value.is_finite() {
            continue;
        }
        let entry = merged.entry(dims).or_default();
        match s.suffix.as_str() {
            "_bucket" => {
                let Some(le) = s.labels.iter().find(|(k, _)| k == "le") else {
                    continue;
                };
                let bound = if le.1 == "+Inf" {
                    f64::INFINITY
                } else {
                    le.1.parse::<f64>().map_or(f64::NAN, |b| b * scale)
                };
                if bound.is_nan() {
                    continue;
                }
                match entry.0.iter_mut().find(|(b, _)| *b == bound) {
                    Some(b) => b.1 += s.value,
                    None => entry.0.push((bound, s.value)),
                }
            }
            "_sum" => entry.1 += s.value * scale,
            _ => {}
        }
    }
    let mut entries: Vec<_> = merged.into_iter().filter(|(_, (b, _))| !b.is_empty()).collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// A server histogram, summed per dimensions over its other labels, as the contract's histogram and its window
/// summary.
#[allow(clippy::too_many_arguments)]
fn histogram(
    family: &Family,
    metric: &'static str,
    unit: &'static str,
    scale: f64,
    dims_of: &dyn Fn(&LabelSet) -> Dims,
    allowed: &dyn Fn(&Dims) -> bool,
    now: u64,
    state: &mut MappedState,
    q: &Quantiles<'_>,
) -> Vec<Metric> {
    let entries = summed_buckets(family, scale, dims_of, allowed);
    let (mut points, mut summaries) = (Vec::new(), Vec::new());
    // The widest relative error the layouts allow (every point of a family has the server's one layout).
    let mut bound: f64 = 0.0;
    for (dims, (mut buckets, sum)) in entries {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.last().is_none_or(|b| b.0.is_finite()) {
            continue;
        }
        let count = buckets.last().map_or(0.0, |b| b.1);
        let id = vec![dims.0.clone(), dims.1.clone(), dims.2.clone()];
        let start = state.starts.start((metric.to_string(), id), count, now);
        let mut previous = 0.0;
        let counts = buckets
            .iter()
            .map(|(_, c)| {
                let n = (c - previous).max(0.0) as u64;
                previous = f64::max(previous, *c);
                n
            })
            .collect();
        let finite: Vec<f64> = buckets.iter().map(|b| b.0).filter(|b| b.is_finite()).collect();
        bound = bound.max(worst_relative_error(&finite));
        points.push(HistogramDataPoint {
            attributes: dims_attributes(&dims),
            start_time_unix_nano: start,
            time_unix_nano: now,
            count: count as u64,
            sum: Some(sum),
            bucket_counts: counts,
            explicit_bounds: finite,
            ..Default::default()
        });
        summaries.extend(window_summary(state, metric, &dims, buckets, now, q));
    }
    let mut out = Vec::new();
    if !points.is_empty() {
        out.push(Metric {
            name: metric.into(),
            unit: unit.into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        });
    }
    if !summaries.is_empty() {
        out.push(Metric {
            name: infercol_pipelines::histogram::window_name(metric, unit),
            unit: unit.into(),
            description: "Quantiles over the quantile window, from the deltas of the server's classic buckets (linear within a bucket, as histogram_quantile).".into(),
            data: Some(metric::Data::Summary(Summary { data_points: summaries })),
            metadata: infercol_pipelines::histogram::quantile_error_metadata(bound),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prometheus::exposition::{Limits, parse};

    const LIMITS: Limits = Limits {
        max_samples: 100_000,
        max_line_bytes: 1 << 20,
    };

    fn fixture(server: &str) -> Vec<Family> {
        let path = format!(
            "{}/../tests/fixtures/scrape/{server}/page.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        parse(&std::fs::read_to_string(path).unwrap(), false, LIMITS).unwrap()
    }

    fn target() -> Dims {
        ("from-target".into(), "v1".into(), "prod".into())
    }

    fn find<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    fn requests_by_class(metrics: &[Metric]) -> Vec<(String, String, String, f64)> {
        let Some(metric::Data::Sum(sum)) = &find(metrics, "model.requests").data else {
            panic!()
        };
        sum.data_points
            .iter()
            .map(|p| {
                let get = |k: &str| {
                    p.attributes
                        .iter()
                        .find(|a| a.key == k)
                        .and_then(|a| match &a.value.as_ref()?.value {
                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                                Some(s.clone())
                            }
                            _ => None,
                        })
                };
                let value = match p.value {
                    Some(number_data_point::Value::AsDouble(v)) => v,
                    _ => f64::NAN,
                };
                (
                    get("model").unwrap(),
                    get("status_code").unwrap(),
                    get("status_class").unwrap(),
                    value,
                )
            })
            .collect()
    }

    #[test]
    fn triton_counts_by_reason_summed_over_gpus_and_names_the_model_from_its_label() {
        let families = fixture("triton");
        let profile = ServerChoice::Auto.profile(&families).expect("detected");
        assert_eq!(profile.name, "triton");
        let q = Quantiles {
            window_ns: 60_000_000_000,
            quantiles: &[0.5, 0.99],
        };
        let metrics = map(
            profile,
            &families,
            &target(),
            1,
            &mut MappedState::default(),
            &q,
            &|_| true,
        );
        let mut classes = requests_by_class(&metrics);
        classes.sort_by(|a, b| a.1.cmp(&b.1));
        // The fixture: 40 successes, 2 backend failures and 1 queue timeout for densenet_onnx.
        let row =
            |code: &str, class: &str, n: f64| ("densenet_onnx".to_string(), code.to_string(), class.to_string(), n);
        assert_eq!(
            classes,
            vec![
                row("200", "2xx", 40.0),
                row("499", "4xx", 0.0),
                row("500", "5xx", 2.0),
                row("503", "5xx", 1.0)
            ]
        );
        let Some(metric::Data::Histogram(h)) = &find(&metrics, "model.time_to_first_byte").data else {
            panic!()
        };
        assert_eq!(
            h.data_points[0].explicit_bounds,
            vec![0.1, 0.5, 2.0, 5.0],
            "milliseconds become seconds"
        );
        find(&metrics, "model.queue.size");
    }

    #[test]
    fn tgi_counts_by_error_meaning_and_its_histograms_keep_the_servers_layout() {
        let families = fixture("tgi");
        let profile = ServerChoice::Auto.profile(&families).expect("detected");
        assert_eq!(profile.name, "tgi");
        let q = Quantiles {
            window_ns: 60_000_000_000,
            quantiles: &[0.5],
        };
        let mut state = MappedState::default();
        let metrics = map(profile, &families, &target(), 1, &mut state, &q, &|_| true);
        let mut classes = requests_by_class(&metrics);
        classes.sort_by(|a, b| a.1.cmp(&b.1));
        // The fixture: 8 successes; one each of validation, dropped and generation.
        let row = |code: &str, class: &str, n: f64| ("from-target".to_string(), code.to_string(), class.to_string(), n);
        let got: Vec<_> = classes.into_iter().filter(|c| c.3 > 0.0).collect();
        assert_eq!(
            got,
            vec![
                row("200", "2xx", 8.0),
                row("422", "4xx", 1.0),
                row("499", "4xx", 1.0),
                row("500", "5xx", 1.0)
            ]
        );
        let Some(metric::Data::Histogram(h)) = &find(&metrics, "model.request.duration").data else {
            panic!()
        };
        assert_eq!(h.data_points[0].explicit_bounds.len(), 35);
        find(&metrics, "model.output_tokens");
        find(&metrics, "model.queue.size");
        // A second scrape a window later gives the quantiles of what ended between.
        let later = map(profile, &families, &target(), 61_000_000_000, &mut state, &q, &|_| true);
        let window = find(&later, "model.request.duration_seconds_window");
        // TGI's durations grow by 1.5 a bucket: the summary states that its quantiles are within 50%.
        let bound = infercol_pipelines::histogram::quantile_error_of(window).expect("the bound is stated");
        assert!((bound - 0.5).abs() < 1e-9, "{bound}");
    }

    #[test]
    fn vllm_counts_inference_routes_by_class_for_the_model_the_page_names() {
        let families = fixture("vllm");
        let profile = ServerChoice::Auto.profile(&families).expect("detected");
        assert_eq!(profile.name, "vllm");
        let q = Quantiles {
            window_ns: 60_000_000_000,
            quantiles: &[0.5],
        };
        let metrics = map(
            profile,
            &families,
            &target(),
            1,
            &mut MappedState::default(),
            &q,
            &|_| true,
        );
        let mut classes = requests_by_class(&metrics);
        classes.sort_by(|a, b| a.2.cmp(&b.2));
        let model = "meta-llama/Llama-3.1-8B-Instruct";
        let row = |class: &str, n: f64| (model.to_string(), class.to_string(), class.to_string(), n);
        // Chat and completions only: `/v1/models` and unmatched paths are not inferences.
        assert_eq!(classes, vec![row("2xx", 12.0), row("4xx", 3.0), row("5xx", 1.0)]);
        for name in [
            "model.request.duration",
            "model.inference.duration",
            "model.time_to_first_byte",
            "model.queue.duration",
            "model.input_tokens",
            "model.output_tokens",
            "model.queue.size",
            "model.kv_cache.utilization",
        ] {
            let m = find(&metrics, name);
            let points = match &m.data {
                Some(metric::Data::Histogram(h)) => {
                    h.data_points.iter().map(|p| p.attributes.clone()).collect::<Vec<_>>()
                }
                Some(metric::Data::Gauge(g)) => g.data_points.iter().map(|p| p.attributes.clone()).collect(),
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(points.len(), 1, "{name}: one series for the one model");
        }
    }

    /// SGLang on prometheus_client 0.26 answers OpenMetrics with its samples' `:` escaped (client_python#1177):
    /// both renderings of the same state give the same contract metrics.
    #[test]
    fn sglang_counts_its_inference_endpoints_by_code_in_both_renderings() {
        let q = Quantiles {
            window_ns: 60_000_000_000,
            quantiles: &[0.5],
        };
        let read = |file: &str, openmetrics: bool| {
            let path = format!("{}/../tests/fixtures/scrape/sglang/{file}", env!("CARGO_MANIFEST_DIR"));
            let families = parse(&std::fs::read_to_string(path).unwrap(), openmetrics, LIMITS).unwrap();
            let profile = ServerChoice::Auto.profile(&families).expect("detected");
            assert_eq!(profile.name, "sglang");
            map(
                profile,
                &families,
                &target(),
                1,
                &mut MappedState::default(),
                &q,
                &|_| true,
            )
        };
        let text = read("page.txt", false);
        let openmetrics = read("page.openmetrics.txt", true);
        let mut classes = requests_by_class(&text);
        classes.sort_by(|a, b| a.1.cmp(&b.1));
        let model = "meta-llama/Llama-3.1-8B-Instruct";
        let row = |code: &str, class: &str, n: f64| (model.to_string(), code.to_string(), class.to_string(), n);
        // 12 chat requests: 8 answered 200, 3 400 (one a client that went away), 1 500; `/health` is not counted.
        assert_eq!(
            classes,
            vec![row("200", "2xx", 8.0), row("400", "4xx", 3.0), row("500", "5xx", 1.0)]
        );
        let mut om = requests_by_class(&openmetrics);
        om.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(om, classes, "the OpenMetrics rendering reads the same");
        for name in [
            "model.request.duration",
            "model.time_to_first_byte",
            "model.queue.duration",
            "model.queue.size",
            "model.kv_cache.utilization",
        ] {
            find(&text, name);
            find(&openmetrics, name);
        }
    }

    #[test]
    fn span_derived_dimensions_are_left_out() {
        let families = fixture("triton");
        let q = Quantiles {
            window_ns: 60_000_000_000,
            quantiles: &[0.5],
        };
        let metrics = map(
            &triton::TRITON,
            &families,
            &target(),
            1,
            &mut MappedState::default(),
            &q,
            &|d| d.0 != "densenet_onnx",
        );
        assert!(metrics.is_empty(), "{metrics:?}");
    }

    /// The error bounds the README states for each server's layouts, from the fixtures' own bounds.
    #[test]
    fn the_stated_error_bounds_follow_the_servers_layouts() {
        let bounds_of = |server: &str, family: &str| -> Vec<f64> {
            let path = format!(
                "{}/../tests/fixtures/scrape/{server}/families.json",
                env!("CARGO_MANIFEST_DIR")
            );
            let all: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let f = all
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == family)
                .unwrap_or_else(|| panic!("{family}"));
            f["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_f64().unwrap())
                .collect()
        };
        let bound =
            |server: &str, family: &str| crate::prometheus::window::worst_relative_error(&bounds_of(server, family));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(bound("vllm", "vllm:e2e_request_latency_seconds"), 3.0));
        assert!(close(bound("vllm", "vllm:time_to_first_token_seconds"), 4.0));
        assert!(close(bound("vllm", "vllm:request_prompt_tokens"), 1.5));
        assert!(close(bound("tgi", "tgi_request_duration"), 0.5));
        assert!(close(bound("triton", "nv_inference_first_response_histogram_ms"), 4.0));
        assert!(close(bound("sglang", "sglang:time_to_first_token_seconds"), 1.0));
        assert!(close(bound("sglang", "sglang:queue_time_seconds"), 4.0));
        assert!(close(bound("sglang", "sglang:prompt_tokens_histogram"), 2.0));
    }
}
