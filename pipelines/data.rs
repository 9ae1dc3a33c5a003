//! The data that flows through a pipeline: one OTLP export request of one signal.
//!
//! A request travels as the `opentelemetry-proto` type behind an `Arc` (fan-out clones are cheap) and, when it is
//! still exactly what a client sent, with the protobuf bytes it arrived in, so that an exporter forwarding OTLP
//! sends those bytes instead of encoding again.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data as MetricData;
use prost::Message;
use serde::{Deserialize, Serialize};

/// The three OTLP signals a pipeline can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// What one item of this signal is called in the collector's own telemetry (as the Collector names them).
    pub fn item_name(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "metric_points",
            Signal::Logs => "log_records",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<Signal> {
        match s {
            "traces" => Some(Signal::Traces),
            "metrics" => Some(Signal::Metrics),
            "logs" => Some(Signal::Logs),
            _ => None,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One export request, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Traces(Arc<ExportTraceServiceRequest>),
    Metrics(Arc<ExportMetricsServiceRequest>),
    Logs(Arc<ExportLogsServiceRequest>),
}

/// A receiver's wait for a request to be safe: released when every holder of the request has dropped it, that
/// is, when each durable exporter queue has written it to disk (and every other queue has taken it). A holder
/// that could not keep the request marks it failed, and the client gets a retryable refusal.
#[derive(Debug)]
pub struct Ack {
    failed: std::sync::atomic::AtomicBool,
    done: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<bool>>>,
}

impl Ack {
    /// A new acknowledgement and the receiver's end, which yields whether the request was kept.
    pub fn new() -> (Arc<Ack>, tokio::sync::oneshot::Receiver<bool>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Arc::new(Ack {
                failed: std::sync::atomic::AtomicBool::new(false),
                done: std::sync::Mutex::new(Some(tx)),
            }),
            rx,
        )
    }

    pub fn fail(&self) {
        self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(tx) = self.done.lock().ok().and_then(|mut d| d.take()) {
            let _ = tx.send(!self.failed.load(std::sync::atomic::Ordering::SeqCst));
        }
    }
}

/// One export request travelling through a pipeline.
///
/// A trace request that arrived as protobuf is kept as its bytes and a borrowed view of them
/// (`crate::lite`): what reads spans (model_metrics) reads the view, what forwards OTLP sends the bytes, and the
/// owned types are decoded only when a component asks for `payload()`.
#[derive(Clone, Debug)]
pub struct Data {
    signal: Signal,
    /// The owned form: set from the start, or decoded from `encoded` on first use when `view` is set.
    payload: OnceLock<Payload>,
    view: Option<Arc<crate::lite::TraceView>>,
    /// The protobuf encoding of `payload`, kept when it is known (as received, or encoded once already).
    encoded: Option<Bytes>,
    items: usize,
    resources: usize,
    /// Receivers waiting for this request to be safe (empty unless a pipeline has a durable queue).
    acks: Vec<Arc<Ack>>,
}

impl Data {
    pub fn traces(request: ExportTraceServiceRequest) -> Data {
        Data::new(Payload::Traces(Arc::new(request)), None)
    }

    pub fn metrics(request: ExportMetricsServiceRequest) -> Data {
        Data::new(Payload::Metrics(Arc::new(request)), None)
    }

    pub fn logs(request: ExportLogsServiceRequest) -> Data {
        Data::new(Payload::Logs(Arc::new(request)), None)
    }

    /// Decodes a protobuf export request of `signal`, keeping its bytes for exporters that forward OTLP. A trace
    /// request whose view holds all of it, and whose spans are all acceptable, is not decoded further (see
    /// `crate::lite`); every other request is decoded with the owned types, which give prost's answer.
    pub fn decode(signal: Signal, bytes: Bytes) -> Result<Data, prost::DecodeError> {
        if signal == Signal::Traces
            && let Some(view) = crate::lite::TraceView::decode(bytes.clone())
            && view.spans().all(|s| {
                id_problem(
                    s.trace_id(),
                    s.span_id(),
                    s.parent_span_id(),
                    s.start_time_unix_nano(),
                    s.end_time_unix_nano(),
                )
                .is_none()
            })
        {
            return Ok(Data {
                signal,
                payload: OnceLock::new(),
                items: view.span_count(),
                resources: view.resource_count(),
                view: Some(Arc::new(view)),
                encoded: Some(bytes),
                acks: Vec::new(),
            });
        }
        let payload = match signal {
            Signal::Traces => Payload::Traces(Arc::new(ExportTraceServiceRequest::decode(bytes.clone())?)),
            Signal::Metrics => Payload::Metrics(Arc::new(ExportMetricsServiceRequest::decode(bytes.clone())?)),
            Signal::Logs => Payload::Logs(Arc::new(ExportLogsServiceRequest::decode(bytes.clone())?)),
        };
        Ok(Data::new(payload, Some(bytes)))
    }

    /// Parses an OTLP/JSON export request of `signal` (lowerCamelCase, hex ids, 64-bit integers as strings).
    pub fn from_json(signal: Signal, json: &[u8]) -> Result<Data, serde_json::Error> {
        let payload = match signal {
            Signal::Traces => Payload::Traces(Arc::new(serde_json::from_slice(json)?)),
            Signal::Metrics => Payload::Metrics(Arc::new(serde_json::from_slice(json)?)),
            Signal::Logs => Payload::Logs(Arc::new(serde_json::from_slice(json)?)),
        };
        Ok(Data::new(payload, None))
    }

    pub fn new(payload: Payload, encoded: Option<Bytes>) -> Data {
        let items = count_items(&payload);
        let (signal, resources) = match &payload {
            Payload::Traces(r) => (Signal::Traces, r.resource_spans.len()),
            Payload::Metrics(r) => (Signal::Metrics, r.resource_metrics.len()),
            Payload::Logs(r) => (Signal::Logs, r.resource_logs.len()),
        };
        Data {
            signal,
            payload: OnceLock::from(payload),
            view: None,
            encoded,
            items,
            resources,
            acks: Vec::new(),
        }
    }

    /// The borrowed view of a trace request that arrived as protobuf, when it has one.
    pub fn view(&self) -> Option<&crate::lite::TraceView> {
        self.view.as_deref()
    }

    /// How many resources the request holds.
    pub fn resources(&self) -> usize {
        self.resources
    }

    /// Attaches acknowledgements (a receiver's, or those of requests merged into this one).
    pub fn add_acks(&mut self, acks: Vec<Arc<Ack>>) {
        self.acks.extend(acks);
    }

    /// Takes the acknowledgements off: whoever holds them now decides when the request is safe.
    pub fn take_acks(&mut self) -> Vec<Arc<Ack>> {
        std::mem::take(&mut self.acks)
    }

    /// Marks the request as not kept: its receivers answer with a retryable refusal.
    pub fn fail_acks(&self) {
        for a in &self.acks {
            a.fail();
        }
    }

    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// The owned form (decoded now, once, for a request that so far travelled as its view).
    pub fn payload(&self) -> &Payload {
        self.payload.get_or_init(|| {
            // The view takes only what the owned types accept (`lite::TraceView::decode`).
            let bytes = self.encoded.clone().unwrap_or_default();
            let request = ExportTraceServiceRequest::decode(bytes).unwrap_or_else(|e| {
                tracing::error!("a request the view took did not decode with the owned types: {e}");
                debug_assert!(
                    false,
                    "a request the view took did not decode with the owned types: {e}"
                );
                ExportTraceServiceRequest::default()
            });
            Payload::Traces(Arc::new(request))
        })
    }

    pub fn into_payload(self) -> Payload {
        self.payload().clone()
    }

    /// The signal and protobuf bytes, as the durable queue stores them.
    pub fn to_record(&self) -> (Signal, Bytes) {
        (self.signal(), self.to_protobuf())
    }

    /// Spans, metric data points or log records in this request.
    pub fn items(&self) -> usize {
        self.items
    }

    /// The protobuf encoding: the bytes as received when nothing changed them, else encoded now.
    pub fn to_protobuf(&self) -> Bytes {
        if let Some(bytes) = &self.encoded {
            return bytes.clone();
        }
        match self.payload() {
            Payload::Traces(r) => Bytes::from(r.encode_to_vec()),
            Payload::Metrics(r) => Bytes::from(r.encode_to_vec()),
            Payload::Logs(r) => Bytes::from(r.encode_to_vec()),
        }
    }

    /// The length of the protobuf encoding (the bytes as received when nothing changed them), without encoding.
    pub fn encoded_len(&self) -> usize {
        if let Some(bytes) = &self.encoded {
            return bytes.len();
        }
        match self.payload() {
            Payload::Traces(r) => r.encoded_len(),
            Payload::Metrics(r) => r.encoded_len(),
            Payload::Logs(r) => r.encoded_len(),
        }
    }

    /// The OTLP/JSON encoding, one line, as the OpenTelemetry Collector's file exporter writes it.
    pub fn to_json(&self) -> String {
        let result = match self.payload() {
            Payload::Traces(r) => serde_json::to_string(r.as_ref()),
            Payload::Metrics(r) => serde_json::to_string(r.as_ref()),
            Payload::Logs(r) => serde_json::to_string(r.as_ref()),
        };
        // The proto types serialise plain data (strings, numbers, maps); serde_json cannot fail on them.
        result.unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Why a span inside a valid request cannot be accepted, or `None` when it can.
pub fn span_problem(span: &opentelemetry_proto::tonic::trace::v1::Span) -> Option<&'static str> {
    id_problem(
        &span.trace_id,
        &span.span_id,
        &span.parent_span_id,
        span.start_time_unix_nano,
        span.end_time_unix_nano,
    )
}

fn id_problem(trace_id: &[u8], span_id: &[u8], parent: &[u8], start: u64, end: u64) -> Option<&'static str> {
    if trace_id.len() != 16 || trace_id.iter().all(|b| *b == 0) {
        return Some("trace id is not 16 bytes, or all zero");
    }
    if span_id.len() != 8 || span_id.iter().all(|b| *b == 0) {
        return Some("span id is not 8 bytes, or all zero");
    }
    if !parent.is_empty() && parent.len() != 8 {
        return Some("parent span id is not 8 bytes");
    }
    if end < start {
        return Some("span ends before it starts");
    }
    None
}

impl Data {
    /// Removes the spans that cannot be accepted (bad ids, end before start), for an OTLP partial success:
    /// returns the data to pass on, how many spans were rejected and why (the first reason). Untouched data keeps
    /// its encoded bytes.
    pub fn without_invalid_spans(self) -> (Data, u64, Option<String>) {
        // A request kept as its view was checked span by span when it was decoded.
        if self.view.is_some() {
            return (self, 0, None);
        }
        let Payload::Traces(request) = self.payload() else {
            return (self, 0, None);
        };
        let mut first = None;
        let rejected = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .filter(|s| {
                let p = span_problem(s);
                if first.is_none() {
                    first = p;
                }
                p.is_some()
            })
            .count() as u64;
        if rejected == 0 {
            return (self, 0, None);
        }
        let acks = self.acks.clone();
        let mut request = Arc::unwrap_or_clone(request.clone());
        for rs in &mut request.resource_spans {
            for ss in &mut rs.scope_spans {
                ss.spans.retain(|s| span_problem(s).is_none());
            }
            rs.scope_spans.retain(|ss| !ss.spans.is_empty());
        }
        request.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
        let message = first.map(|f| format!("{rejected} spans rejected: {f}"));
        let mut data = Data::traces(request);
        data.add_acks(acks);
        (data, rejected, message)
    }
}

fn count_items(payload: &Payload) -> usize {
    match payload {
        Payload::Traces(r) => r
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum(),
        Payload::Metrics(r) => r
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| match &m.data {
                Some(MetricData::Gauge(g)) => g.data_points.len(),
                Some(MetricData::Sum(s)) => s.data_points.len(),
                Some(MetricData::Histogram(h)) => h.data_points.len(),
                Some(MetricData::ExponentialHistogram(h)) => h.data_points.len(),
                Some(MetricData::Summary(s)) => s.data_points.len(),
                None => 0,
            })
            .sum(),
        Payload::Logs(r) => r
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len())
            .sum(),
    }
}

/// A metrics export request of one resource and one instrumentation scope (what the collector's own sources emit).
pub fn metrics_request(
    resource: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
    scope: &str,
    metrics: Vec<opentelemetry_proto::tonic::metrics::v1::Metric>,
) -> ExportMetricsServiceRequest {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: scope.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
