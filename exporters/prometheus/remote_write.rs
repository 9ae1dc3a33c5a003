//! Exporter `prometheusremotewrite`: the same series as the pull exporter, pushed with the remote write 1.0
//! protocol (snappy-compressed protobuf `prometheus.WriteRequest`) to Prometheus, Mimir, VictoriaMetrics or any
//! compatible store. The protocol carries cumulative series: delta inputs (from agents) are added up here first,
//! as the pull exporter does, and the cumulative values are sent.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use infercol_pipelines::{ComponentError, ComponentId, Data, ExportError, Exporter, Payload};
use prost::Message;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};

use super::proto::LabelPair;
use super::store::{Point, TranslateOptions, Value, classic_buckets, flatten};
use super::text::float;

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<NativeHistogram>,
}

/// `prometheus.Histogram` of remote write 1.0 (Prometheus 2.40 and later): a native histogram with integer counts.
/// The proto's `oneof` count fields are written as the integer variants.
#[derive(Clone, PartialEq, Message)]
pub struct NativeHistogram {
    #[prost(uint64, optional, tag = "1")]
    pub count_int: Option<u64>,
    #[prost(double, tag = "3")]
    pub sum: f64,
    #[prost(sint32, tag = "4")]
    pub schema: i32,
    #[prost(double, tag = "5")]
    pub zero_threshold: f64,
    #[prost(uint64, optional, tag = "6")]
    pub zero_count_int: Option<u64>,
    #[prost(message, repeated, tag = "11")]
    pub positive_spans: Vec<super::proto::BucketSpan>,
    #[prost(sint64, repeated, tag = "12")]
    pub positive_deltas: Vec<i64>,
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
}

impl NativeHistogram {
    fn of(h: &infercol_pipelines::histogram::ExpoHistogram, timestamp: i64) -> NativeHistogram {
        let (h, spans, deltas) = super::proto::sparse(h);
        NativeHistogram {
            count_int: Some(h.count()),
            sum: h.sum(),
            schema: h.scale().max(-4),
            zero_threshold: super::proto::ZERO_THRESHOLD,
            zero_count_int: Some(h.zero_count()),
            positive_spans: spans,
            positive_deltas: deltas,
            timestamp,
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// The time series of a set of points, with `external` labels on each; delta points are left out (counted).
/// Exponential histograms go as native histograms with `native`, else as classic buckets.
pub fn timeseries(
    points: &[Point],
    external: &[(String, String)],
    native: bool,
    now_ms: i64,
) -> (Vec<TimeSeries>, usize) {
    let mut out = Vec::new();
    let mut dropped = 0;
    for p in points {
        if p.delta {
            dropped += 1;
            continue;
        }
        let timestamp = if p.time_ns > 0 {
            (p.time_ns / 1_000_000) as i64
        } else {
            now_ms
        };
        let labels_of = |suffix: &str, extra: Option<(&str, String)>| {
            let mut labels: Vec<(String, String)> = p.labels.clone();
            for (k, v) in external {
                if !labels.iter().any(|(n, _)| n == k) {
                    labels.push((k.clone(), v.clone()));
                }
            }
            if let Some((k, v)) = extra {
                labels.push((k.to_string(), v));
            }
            labels.push(("__name__".into(), format!("{}{suffix}", p.family)));
            labels.sort();
            labels
                .into_iter()
                .map(|(name, value)| LabelPair { name, value })
                .collect::<Vec<_>>()
        };
        let mut push = |suffix: &str, extra: Option<(&str, String)>, value: f64| {
            out.push(TimeSeries {
                labels: labels_of(suffix, extra),
                samples: vec![Sample { value, timestamp }],
                histograms: Vec::new(),
            });
        };
        match &p.value {
            Value::Number(v) => push("", None, *v),
            Value::Classic {
                bounds,
                counts,
                sum,
                count,
            } => {
                let mut cumulative = 0u64;
                for (i, c) in counts.iter().enumerate() {
                    cumulative += c;
                    let le = bounds.get(i).copied().unwrap_or(f64::INFINITY);
                    push("_bucket", Some(("le", float(le))), cumulative as f64);
                }
                push("_sum", None, *sum);
                push("_count", None, *count as f64);
            }
            Value::Native(h) if native => out.push(TimeSeries {
                labels: labels_of("", None),
                samples: Vec::new(),
                histograms: vec![NativeHistogram::of(h, timestamp)],
            }),
            Value::Native(h) => {
                for (le, cumulative) in classic_buckets(h) {
                    push("_bucket", Some(("le", float(le))), cumulative as f64);
                }
                push("_sum", None, h.sum());
                push("_count", None, h.count() as f64);
            }
            Value::Summary { quantiles, sum, count } => {
                for (q, v) in quantiles {
                    push("", Some(("quantile", float(*q))), *v);
                }
                push("_sum", None, *sum);
                push("_count", None, *count as f64);
            }
        }
    }
    (out, dropped)
}

pub struct RemoteWriteExporter {
    /// Cumulative values of the series that arrive as deltas.
    pub store: std::sync::Mutex<super::store::Store>,
    pub id: ComponentId,
    pub client: reqwest::Client,
    pub endpoint: String,
    pub options: TranslateOptions,
    pub external_labels: Vec<(String, String)>,
    /// Exponential histograms as native histograms (`send_native_histograms`).
    pub native_histograms: bool,
}

impl RemoteWriteExporter {
    pub fn new(
        id: ComponentId,
        endpoint: String,
        headers: &BTreeMap<String, String>,
        tls: &crate::otlp::TlsConfig,
        timeout: Duration,
        options: TranslateOptions,
        external_labels: Vec<(String, String)>,
    ) -> Result<RemoteWriteExporter, ComponentError> {
        Ok(RemoteWriteExporter {
            store: std::sync::Mutex::new(super::store::Store::new(Duration::from_secs(300))),
            id,
            client: crate::http_client(headers, tls, timeout)?,
            endpoint,
            options,
            external_labels,
            native_histograms: false,
        })
    }
}

#[async_trait]
impl Exporter for RemoteWriteExporter {
    async fn export(&self, data: Data) -> Result<(), ExportError> {
        let Payload::Metrics(request) = data.payload() else {
            return Ok(());
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut points = flatten(request, &self.options);
        if points.iter().any(|p| p.delta) {
            // Add the deltas up, then send each touched series' cumulative value.
            let mut store = self
                .store
                .lock()
                .map_err(|_| ExportError::permanent("remote write store lock poisoned"))?;
            let now = std::time::Instant::now();
            store.expire(now);
            store.apply(points.clone(), now);
            for p in &mut points {
                if p.delta
                    && let Some(v) = store.get(&p.family, &p.labels)
                {
                    p.value = v.clone();
                    p.delta = false;
                }
            }
        }
        let (series, _) = timeseries(&points, &self.external_labels, self.native_histograms, now_ms);
        if series.is_empty() {
            return Ok(());
        }
        let body = WriteRequest { timeseries: series }.encode_to_vec();
        let compressed = snap::raw::Encoder::new()
            .compress_vec(&body)
            .map_err(|e| ExportError::permanent(format!("snappy: {e}")))?;
        let response = self
            .client
            .post(&self.endpoint)
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header(CONTENT_ENCODING, "snappy")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(compressed)
            .send()
            .await
            .map_err(|e| ExportError::retryable(format!("sending to {}: {e}", self.endpoint), None))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = crate::retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let message = format!(
            "HTTP {status} from {}: {}",
            self.endpoint,
            text.chars().take(512).collect::<String>()
        );
        if status.is_server_error() || status.as_u16() == 429 {
            Err(ExportError::retryable(message, retry_after))
        } else {
            Err(ExportError::permanent(message))
        }
    }
}
