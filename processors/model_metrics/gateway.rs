//! Processor `model_quantiles`, for a gateway that many agents feed: it merges the agents' delta exponential
//! histograms of the model metrics into sliding windows and emits the quantile summaries
//! (`<histogram>_<unit>_window`) of the merged data, replacing the agents' own summaries (quantiles do not merge,
//! histograms do). Counters and histograms pass through unchanged; the Prometheus exporter adds up the deltas.
//!
//! Agents run `model_metrics` with `aggregation_temporality: delta` and enough buckets to keep the window scale
//! (`histogram.exponential.max_size: 4096`), so that the merged quantiles keep the 1% bound.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use infercol_pipelines::config::duration;
use infercol_pipelines::histogram::{ExpoHistogram, MAX_SCALE, quantile_error_metadata, relative_error_at};
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, ConsumeError, Consumer, Data, Payload, Processor, ProcessorContext,
    ProcessorFactory, Signal, config_as,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, Summary, SummaryDataPoint, metric::Data as MetricData,
};
use serde::Deserialize;

use super::state::{HistogramMetric, window_name};
use super::window::QuantileWindow;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelQuantilesConfig {
    #[serde(with = "duration")]
    pub flush_interval: Duration,
    #[serde(with = "duration")]
    pub quantile_window: Duration,
    pub quantiles: Vec<f64>,
    /// Series without new data for this long are dropped.
    #[serde(with = "duration")]
    pub metrics_expiration: Duration,
}

impl Default for ModelQuantilesConfig {
    fn default() -> Self {
        ModelQuantilesConfig {
            flush_interval: Duration::from_secs(10),
            quantile_window: Duration::from_secs(60),
            quantiles: vec![0.5, 0.9, 0.95, 0.99],
            metrics_expiration: Duration::from_secs(300),
        }
    }
}

impl ComponentConfig for ModelQuantilesConfig {
    fn validate(&self) -> Result<(), String> {
        if self.flush_interval.is_zero() || self.quantile_window < Duration::from_secs(1) {
            return Err("flush_interval and quantile_window: must be positive (quantile_window at least 1s)".into());
        }
        if let Some(q) = self.quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
            return Err(format!("quantiles: {q} is not between 0 and 1"));
        }
        Ok(())
    }
}

pub struct ModelQuantilesFactory;

infercol_pipelines::factory!(
    ModelQuantilesFactory,
    "model_quantiles",
    ModelQuantilesConfig,
    &[Signal::Metrics]
);

type SeriesKey = (String, Vec<(String, String)>);

struct Series {
    unit: String,
    attributes: Vec<KeyValue>,
    window: QuantileWindow,
    last_seen_ns: u64,
}

struct Inner {
    config: ModelQuantilesConfig,
    next: Arc<dyn Consumer>,
    /// The model histograms and their summaries' names.
    histograms: HashSet<&'static str>,
    summaries: HashSet<String>,
    series: Mutex<HashMap<SeriesKey, Series>>,
}

fn key_of(name: &str, attributes: &[KeyValue]) -> SeriesKey {
    let mut pairs: Vec<(String, String)> = attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                format!("{:?}", kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect();
    pairs.sort();
    (name.to_string(), pairs)
}

impl ProcessorFactory for ModelQuantilesFactory {
    fn create(&self, config: &AnyConfig, ctx: ProcessorContext) -> Result<Arc<dyn Processor>, ComponentError> {
        Ok(Arc::new(ModelQuantiles {
            inner: Arc::new(Inner {
                config: config_as::<ModelQuantilesConfig>(config)?.clone(),
                next: ctx.next,
                histograms: HistogramMetric::ALL.iter().map(|m| m.name()).collect(),
                summaries: HistogramMetric::ALL.iter().map(|m| m.window_name()).collect(),
                series: Mutex::new(HashMap::new()),
            }),
            timer: Default::default(),
        }))
    }
}

impl Inner {
    /// Merges the model histograms' delta points into the windows; returns the request without agents' summaries.
    fn observe(&self, mut request: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest {
        let now = super::now_ns();
        let delta = AggregationTemporality::Delta as i32;
        if let Ok(mut series) = self.series.lock() {
            for m in request
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
            {
                let Some(MetricData::ExponentialHistogram(h)) = &m.data else {
                    continue;
                };
                if !self.histograms.contains(m.name.as_str()) || h.aggregation_temporality != delta {
                    continue;
                }
                for p in &h.data_points {
                    let histogram: ExpoHistogram = ExpoHistogram::from_otlp(p);
                    let entry = series.entry(key_of(&m.name, &p.attributes)).or_insert_with(|| Series {
                        unit: m.unit.clone(),
                        attributes: p.attributes.clone(),
                        window: QuantileWindow::new(self.config.quantile_window),
                        last_seen_ns: now,
                    });
                    entry.window.merge(p.time_unix_nano, now, &histogram);
                    entry.last_seen_ns = now;
                }
            }
        }
        for rm in &mut request.resource_metrics {
            for sm in &mut rm.scope_metrics {
                sm.metrics.retain(|m| !self.summaries.contains(&m.name));
            }
        }
        request
    }
}

#[async_trait]
impl crate::ticker::Flush for Inner {
    async fn flush(&self) -> Result<(), ConsumeError> {
        let now = super::now_ns();
        let mut by_metric: BTreeMap<(String, String), (i32, Vec<SummaryDataPoint>)> = BTreeMap::new();
        if let Ok(mut series) = self.series.lock() {
            let expiration = self.config.metrics_expiration.as_nanos() as u64;
            series.retain(|_, s| now.saturating_sub(s.last_seen_ns) < expiration);
            for ((name, _), s) in series.iter_mut() {
                let Some(window) = s.window.snapshot(now) else { continue };
                let (coarsest, points) = by_metric
                    .entry((name.clone(), s.unit.clone()))
                    .or_insert_with(|| (MAX_SCALE, Vec::new()));
                *coarsest = (*coarsest).min(window.scale());
                points.push(super::window::summary_point(
                    &window,
                    s.attributes.clone(),
                    now,
                    self.config.quantile_window,
                    &self.config.quantiles,
                ));
            }
        }
        if by_metric.is_empty() {
            return Ok(());
        }
        let metrics = by_metric
            .into_iter()
            .map(|((name, unit), (coarsest, data_points))| Metric {
                name: window_name(&name, &unit),
                description: format!("Quantiles of {name} over the last window, merged from every agent."),
                unit,
                data: Some(MetricData::Summary(Summary { data_points })),
                metadata: quantile_error_metadata(relative_error_at(coarsest)),
            })
            .collect();
        let request = infercol_pipelines::data::metrics_request(Vec::new(), "infercol/model_quantiles", metrics);
        self.next.consume(Data::metrics(request)).await
    }
}

pub struct ModelQuantiles {
    inner: Arc<Inner>,
    timer: crate::ticker::Ticker,
}

#[async_trait]
impl Consumer for ModelQuantiles {
    async fn consume(&self, mut data: Data) -> Result<(), ConsumeError> {
        let request = match data.payload() {
            Payload::Metrics(request) => request.clone(),
            _ => return self.inner.next.consume(data).await,
        };
        let acks = data.take_acks();
        let mut passed = Data::metrics(self.inner.observe(Arc::unwrap_or_clone(request)));
        passed.add_acks(acks);
        self.inner.next.consume(passed).await
    }
}

#[async_trait]
impl Processor for ModelQuantiles {
    async fn start(&self) -> Result<(), ComponentError> {
        self.timer.flush_every(
            self.inner.config.flush_interval,
            self.inner.clone(),
            "model_quantiles: emitting merged quantiles",
        );
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), ComponentError> {
        self.timer
            .stop_and_flush(&*self.inner, "emitting merged quantiles")
            .await
    }
}
