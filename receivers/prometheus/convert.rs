//! Scraped families as OTLP metrics, as the Collector's prometheus receiver emits them: counters as cumulative
//! monotonic sums, gauges (and untyped samples) as gauges, classic histograms as explicit-bucket histograms,
//! summaries as summaries. A cumulative series keeps the start time of its first sight; when its value goes down
//! (the server restarted) it starts again at that scrape, so a rate over it sees a reset, as Prometheus' `rate()`
//! does.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum, Summary,
    SummaryDataPoint, metric, number_data_point, summary_data_point,
};

use super::exposition::{Family, FamilyType, LabelSet, Sample};

/// A series: its family's name and its labels.
type SeriesKey = (String, LabelSet);

/// The start times of cumulative series, by key, and what each last was, to see a reset. Used for the families
/// as scraped and for the contract's metrics mapped from them.
///
/// A series seen for the first time starts at that scrape: its value is a baseline (a rate over it counts nothing
/// before the next scrape), as the Collector's prometheus receiver adjusts it. A value lower than the last one is
/// a restart somewhere since the previous scrape: the series starts again just after that scrape, so that the
/// new value counts in full, as `rate()` counts it.
pub struct StartTimes<K> {
    series: HashMap<K, Cumulative>,
    scrape: u64,
}

struct Cumulative {
    start: u64,
    value: f64,
    at: u64,
    scrape: u64,
}

impl<K> Default for StartTimes<K> {
    fn default() -> Self {
        StartTimes {
            series: HashMap::new(),
            scrape: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq> StartTimes<K> {
    /// Marks the start of a scrape: series not seen again before [`StartTimes::forget_unseen`] are forgotten.
    pub fn begin_scrape(&mut self) {
        self.scrape += 1;
    }

    /// The start time of a series now at `value`, seen at `at`.
    pub fn start(&mut self, key: K, value: f64, at: u64) -> u64 {
        let scrape = self.scrape;
        let c = self.series.entry(key).or_insert(Cumulative {
            start: at,
            value,
            at,
            scrape,
        });
        if value < c.value {
            // A counter went backwards: the process restarted after the previous scrape.
            c.start = c.at.saturating_add(1).min(at);
        }
        (c.value, c.at, c.scrape) = (value, at, scrape);
        c.start
    }

    /// Forgets the series the scrape since [`StartTimes::begin_scrape`] did not see (bounded by the page's series).
    pub fn forget_unseen(&mut self) {
        let scrape = self.scrape;
        self.series.retain(|_, c| c.scrape == scrape);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.series.len()
    }
}

/// The start times of the families as scraped.
pub type FamilyStarts = StartTimes<SeriesKey>;

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.clone())),
            }),
            ..Default::default()
        })
        .collect()
}

fn time_of(sample: &Sample, now: u64) -> u64 {
    sample
        .timestamp_ms
        .map_or(now, |ms| (ms.max(0) as u64).saturating_mul(1_000_000))
}

/// The OTLP metrics of one scrape's families, at `now` (ns).
pub fn to_metrics(families: &[Family], now: u64, starts: &mut FamilyStarts) -> Vec<Metric> {
    starts.begin_scrape();
    let mut metrics = Vec::with_capacity(families.len());
    for family in families.iter().filter(|f| !f.samples.is_empty()) {
        let data = match family.kind {
            FamilyType::Counter => counter(family, now, starts),
            FamilyType::Gauge | FamilyType::Untyped => gauge(family, now),
            FamilyType::Histogram => histogram(family, now, starts),
            FamilyType::Summary => summary(family, now, starts),
        };
        let name = match family.kind {
            // OpenMetrics declares a counter without `_total`, text 0.0.4 often with it: the sample's name is kept.
            FamilyType::Counter if family.samples.iter().any(|s| s.suffix == "_total") => {
                format!("{}_total", family.name)
            }
            _ => family.name.clone(),
        };
        metrics.push(Metric {
            name,
            description: family.help.clone(),
            data: Some(data),
            ..Default::default()
        });
    }
    starts.forget_unseen();
    metrics
}

fn counter(family: &Family, now: u64, starts: &mut FamilyStarts) -> metric::Data {
    let points = family
        .samples
        .iter()
        // A counter that is not a finite number is no count (and would poison every rate over it).
        .filter(|s| s.suffix != "_created" && s.value.is_finite())
        .map(|s| {
            let time = time_of(s, now);
            NumberDataPoint {
                attributes: attributes(&s.labels),
                start_time_unix_nano: starts.start((family.name.clone(), s.labels.clone()), s.value, time),
                time_unix_nano: time,
                value: Some(number_data_point::Value::AsDouble(s.value)),
                ..Default::default()
            }
        })
        .collect();
    metric::Data::Sum(Sum {
        data_points: points,
        aggregation_temporality: AggregationTemporality::Cumulative as i32,
        is_monotonic: true,
    })
}

fn gauge(family: &Family, now: u64) -> metric::Data {
    let points = family
        .samples
        .iter()
        .map(|s| NumberDataPoint {
            attributes: attributes(&s.labels),
            time_unix_nano: time_of(s, now),
            value: Some(number_data_point::Value::AsDouble(s.value)),
            ..Default::default()
        })
        .collect();
    metric::Data::Gauge(Gauge { data_points: points })
}

/// The samples of a histogram or summary grouped by their labels without `le` / `quantile`, in page order.
fn series<'a>(family: &'a Family, bound: &str) -> Vec<(LabelSet, Vec<&'a Sample>)> {
    let mut out: Vec<(LabelSet, Vec<&Sample>)> = Vec::new();
    for s in &family.samples {
        let key: LabelSet = s.labels.iter().filter(|(k, _)| k != bound).cloned().collect();
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, samples)) => samples.push(s),
            None => out.push((key, vec![s])),
        }
    }
    out
}

fn histogram(family: &Family, now: u64, starts: &mut FamilyStarts) -> metric::Data {
    let mut points = Vec::new();
    for (labels, samples) in series(family, "le") {
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.suffix == "_bucket")
            .filter_map(|s| {
                let le = s.labels.iter().find(|(k, _)| k == "le")?.1.as_str();
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((bound, s.value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let of = |suffix: &str| samples.iter().find(|s| s.suffix == suffix).map(|s| s.value);
        let count = of("_count").or(buckets.last().map(|b| b.1)).unwrap_or(0.0);
        let time = samples.first().map_or(now, |s| time_of(s, now));
        let start = starts.start((family.name.clone(), labels.clone()), count, time);
        // Cumulative `le` counts become per-bucket counts; a bucket count that goes down (a broken page) is 0.
        let mut previous = 0.0;
        let mut counts: Vec<u64> = buckets
            .iter()
            .map(|(_, c)| {
                let n = (c - previous).max(0.0);
                previous = previous.max(*c);
                n as u64
            })
            .collect();
        let mut bounds: Vec<f64> = buckets.iter().map(|b| b.0).filter(|b| b.is_finite()).collect();
        if buckets.last().is_none_or(|b| b.0.is_finite()) {
            // No +Inf bucket on the page: what `_count` holds beyond the last bound goes into the overflow bucket.
            counts.push((count - previous).max(0.0) as u64);
        }
        bounds.truncate(counts.len().saturating_sub(1));
        points.push(HistogramDataPoint {
            attributes: attributes(&labels),
            start_time_unix_nano: start,
            time_unix_nano: time,
            count: count.max(0.0) as u64,
            sum: of("_sum").filter(|s| s.is_finite()),
            bucket_counts: counts,
            explicit_bounds: bounds,
            ..Default::default()
        });
    }
    metric::Data::Histogram(Histogram {
        data_points: points,
        aggregation_temporality: AggregationTemporality::Cumulative as i32,
    })
}

fn summary(family: &Family, now: u64, starts: &mut FamilyStarts) -> metric::Data {
    let mut points = Vec::new();
    for (labels, samples) in series(family, "quantile") {
        let of = |suffix: &str| samples.iter().find(|s| s.suffix == suffix).map(|s| s.value);
        let count = of("_count").unwrap_or(0.0);
        let time = samples.first().map_or(now, |s| time_of(s, now));
        let quantile_values = samples
            .iter()
            .filter(|s| s.suffix.is_empty())
            .filter_map(|s| {
                let q = s.labels.iter().find(|(k, _)| k == "quantile")?.1.parse().ok()?;
                Some(summary_data_point::ValueAtQuantile {
                    quantile: q,
                    value: s.value,
                })
            })
            .collect();
        points.push(SummaryDataPoint {
            attributes: attributes(&labels),
            start_time_unix_nano: starts.start((family.name.clone(), labels.clone()), count, time),
            time_unix_nano: time,
            count: count.max(0.0) as u64,
            sum: of("_sum").unwrap_or(0.0),
            quantile_values,
            ..Default::default()
        });
    }
    metric::Data::Summary(Summary { data_points: points })
}

#[cfg(test)]
mod tests {
    use super::super::exposition::{Limits, parse};
    use super::*;

    const LIMITS: Limits = Limits {
        max_samples: 1000,
        max_line_bytes: 4096,
    };

    fn metrics(page: &str, now: u64, starts: &mut FamilyStarts) -> Vec<Metric> {
        to_metrics(&parse(page, false, LIMITS).unwrap(), now, starts)
    }

    #[test]
    fn a_histogram_becomes_per_bucket_counts_with_its_sum_and_count() {
        let page = "# TYPE lat histogram\nlat_bucket{le=\"0.1\",m=\"a\"} 2\nlat_bucket{le=\"0.5\",m=\"a\"} 5\nlat_bucket{le=\"+Inf\",m=\"a\"} 6\nlat_sum{m=\"a\"} 1.5\nlat_count{m=\"a\"} 6\n";
        let out = metrics(page, 10, &mut FamilyStarts::default());
        let Some(metric::Data::Histogram(h)) = &out[0].data else {
            panic!("{out:?}")
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 0.5]);
        assert_eq!(p.bucket_counts, vec![2, 3, 1]);
        assert_eq!((p.count, p.sum), (6, Some(1.5)));
        assert_eq!(p.attributes.len(), 1, "`le` is not an attribute");
        assert_eq!(h.aggregation_temporality, AggregationTemporality::Cumulative as i32);
    }

    #[test]
    fn a_counter_keeps_its_start_until_it_goes_backwards() {
        let mut starts = FamilyStarts::default();
        let page = |v: u32| format!("# TYPE tgi_request_count counter\ntgi_request_count {v}\n");
        let start_of = |m: &[Metric]| match &m[0].data {
            Some(metric::Data::Sum(s)) => (s.data_points[0].start_time_unix_nano, s.is_monotonic),
            other => panic!("{other:?}"),
        };
        assert_eq!(start_of(&metrics(&page(5), 100, &mut starts)), (100, true));
        assert_eq!(start_of(&metrics(&page(9), 200, &mut starts)).0, 100);
        assert_eq!(
            start_of(&metrics(&page(2), 300, &mut starts)).0,
            201,
            "a restart starts the series again, just after the scrape before it"
        );
        assert_eq!(start_of(&metrics(&page(4), 400, &mut starts)).0, 201);
        metrics("other 1\n", 500, &mut starts);
        assert_eq!(starts.len(), 0, "a series gone from the page is forgotten");
    }
}
