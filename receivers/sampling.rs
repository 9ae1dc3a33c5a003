//! What the sampling receivers (hostmetrics, nvml) share: a thread that samples every `sample_interval`, emits a
//! metrics request every `collection_interval`, and stops promptly; and the running average and maximum that
//! let an interval's spikes show beside its average.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use infercol_pipelines::{ComponentError, Consumer, Data};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, metric::Data as MetricData, number_data_point,
};

/// Average and maximum of the samples of one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stat {
    sum: f64,
    max: f64,
    n: u32,
}

impl Stat {
    pub fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.max = if self.n == 0 { v } else { self.max.max(v) };
        self.sum += v;
        self.n += 1;
    }
    pub fn avg(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / f64::from(self.n))
    }
    pub fn max(&self) -> Option<f64> {
        (self.n > 0).then_some(self.max)
    }
}

/// What a sampling receiver does each sample and each collection.
pub trait Sampler: Send + 'static {
    fn sample(&mut self);
    /// The interval's metrics; the interval starts over.
    fn collect(&mut self) -> Option<ExportMetricsServiceRequest>;
}

pub struct SamplingThread {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl SamplingThread {
    /// Starts sampling on a thread of its own (sysinfo and NVML calls block); emits through `consumer` on the
    /// async runtime of the caller.
    pub fn spawn(
        name: String,
        mut sampler: impl Sampler,
        sample_interval: Duration,
        collection_interval: Duration,
        consumer: Arc<dyn Consumer>,
    ) -> Result<SamplingThread, ComponentError> {
        let runtime = tokio::runtime::Handle::current();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut next_collection = Instant::now() + collection_interval;
                loop {
                    sampler.sample();
                    if Instant::now() >= next_collection {
                        next_collection += collection_interval;
                        if let Some(request) = sampler.collect()
                            && let Err(e) = runtime.block_on(consumer.consume(Data::metrics(request)))
                        {
                            tracing::warn!(receiver = %name, "metrics not accepted: {e}");
                        }
                    }
                    let wait = sample_interval.min(next_collection.saturating_duration_since(Instant::now()));
                    match stopped.recv_timeout(wait.max(Duration::from_millis(1))) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        _ => break,
                    }
                }
            })
            .map_err(|e| ComponentError::new(format!("cannot start the sampling thread: {e}")))?;
        Ok(SamplingThread { stop, thread })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// Builds the gauges of one collection.
pub struct Gauges {
    start_ns: u64,
    now_ns: u64,
    metrics: Vec<Metric>,
}

impl Gauges {
    pub fn new(start_ns: u64, now_ns: u64) -> Gauges {
        Gauges {
            start_ns,
            now_ns,
            metrics: Vec::new(),
        }
    }

    /// Adds a point to the gauge `name` (created on first use).
    pub fn point(&mut self, name: &str, unit: &str, description: &str, value: f64, attributes: Vec<KeyValue>) {
        let point = NumberDataPoint {
            attributes,
            start_time_unix_nano: self.start_ns,
            time_unix_nano: self.now_ns,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        };
        if let Some(m) = self.metrics.iter_mut().find(|m| m.name == name)
            && let Some(MetricData::Gauge(g)) = &mut m.data
        {
            g.data_points.push(point);
            return;
        }
        self.metrics.push(Metric {
            name: name.into(),
            description: description.into(),
            unit: unit.into(),
            data: Some(MetricData::Gauge(Gauge {
                data_points: vec![point],
            })),
            ..Default::default()
        });
    }

    /// The average as `name` and the interval's maximum as `name.max`.
    pub fn avg_max(&mut self, name: &str, unit: &str, description: &str, stat: &Stat, attributes: Vec<KeyValue>) {
        if let (Some(avg), Some(max)) = (stat.avg(), stat.max()) {
            self.point(name, unit, description, avg, attributes.clone());
            let max_name = format!("{name}.max");
            self.point(
                &max_name,
                unit,
                &format!("{description} Maximum over the collection interval."),
                max,
                attributes,
            );
        }
    }

    pub fn into_request(self, resource: Vec<KeyValue>, scope: &str) -> Option<ExportMetricsServiceRequest> {
        if self.metrics.is_empty() {
            return None;
        }
        Some(infercol_pipelines::data::metrics_request(resource, scope, self.metrics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_keeps_average_and_spike() {
        let mut s = Stat::default();
        assert_eq!(s.avg(), None);
        for v in [0.1, 0.1, 0.9, 0.1, f64::NAN] {
            s.add(v);
        }
        assert!((s.avg().unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(s.max(), Some(0.9));
    }
}
