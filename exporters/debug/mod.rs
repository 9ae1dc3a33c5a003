//! Exporter `debug`: a readable summary of what passes, on stderr.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, Data, ExportError, Exporter, ExporterContext, ExporterFactory, Payload,
    Signal, config_as,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data as MetricData;
use serde::Deserialize;

#[derive(Clone, Copy, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verbosity {
    /// One line per request: how many resources and items.
    #[default]
    Basic,
    /// Also one line per span, metric or log record.
    Normal,
    /// Every field and attribute.
    Detailed,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DebugExporterConfig {
    pub verbosity: Verbosity,
}

impl ComponentConfig for DebugExporterConfig {}

pub struct DebugExporterFactory;

infercol_pipelines::factory!(
    DebugExporterFactory,
    "debug",
    DebugExporterConfig,
    &[Signal::Traces, Signal::Metrics, Signal::Logs]
);

impl ExporterFactory for DebugExporterFactory {
    fn create(&self, config: &AnyConfig, ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
        Ok(Arc::new(DebugExporter {
            verbosity: config_as::<DebugExporterConfig>(config)?.verbosity,
            id: ctx.id.to_string(),
        }))
    }
}

pub struct DebugExporter {
    verbosity: Verbosity,
    id: String,
}

#[async_trait]
impl Exporter for DebugExporter {
    async fn export(&self, data: Data) -> Result<(), ExportError> {
        let text = render(&self.id, &data, self.verbosity);
        // A failed write to stderr is not worth failing the pipeline for.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
        Ok(())
    }
}

fn value(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => format!("{s:?}"),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(|v| value(&Some(v.clone()))).collect();
            format!("[{}]", items.join(", "))
        }
        Some(any_value::Value::KvlistValue(kv)) => format!("{{{}}}", attrs(&kv.values)),
        Some(any_value::Value::BytesValue(b)) => format!("<{} bytes>", b.len()),
        Some(any_value::Value::StringValueStrindex(i)) => format!("<string #{i}>"),
        None => "<empty>".into(),
    }
}

fn attrs(kvs: &[KeyValue]) -> String {
    kvs.iter()
        .map(|kv| format!("{}={}", kv.key, value(&kv.value)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The text the exporter writes for one request.
pub fn render(id: &str, data: &Data, verbosity: Verbosity) -> String {
    let mut out = String::new();
    let resources = data.resources();
    let _ = writeln!(
        out,
        "{id}: {}: {} {} in {resources} resources",
        data.signal(),
        data.items(),
        data.signal().item_name()
    );
    if verbosity == Verbosity::Basic {
        return out;
    }
    let detailed = verbosity == Verbosity::Detailed;
    match data.payload() {
        Payload::Traces(r) => {
            for rs in &r.resource_spans {
                if detailed && let Some(res) = &rs.resource {
                    let _ = writeln!(out, "  resource: {}", attrs(&res.attributes));
                }
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        let duration_ms = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e6;
                        let _ = write!(
                            out,
                            "  span {:?} trace={} span={} kind={} {:.3}ms",
                            s.name,
                            hex(&s.trace_id),
                            hex(&s.span_id),
                            s.kind,
                            duration_ms
                        );
                        if detailed {
                            let status = s.status.as_ref().map(|st| st.code).unwrap_or(0);
                            let _ = write!(
                                out,
                                " parent={} status={status} {}",
                                hex(&s.parent_span_id),
                                attrs(&s.attributes)
                            );
                            for e in &s.events {
                                let _ = write!(out, "\n    event {:?} {}", e.name, attrs(&e.attributes));
                            }
                        }
                        out.push('\n');
                    }
                }
            }
        }
        Payload::Metrics(r) => {
            for rm in &r.resource_metrics {
                if detailed && let Some(res) = &rm.resource {
                    let _ = writeln!(out, "  resource: {}", attrs(&res.attributes));
                }
                for sm in &rm.scope_metrics {
                    for m in &sm.metrics {
                        let (kind, points) = match &m.data {
                            Some(MetricData::Gauge(g)) => ("gauge", g.data_points.len()),
                            Some(MetricData::Sum(s)) => ("sum", s.data_points.len()),
                            Some(MetricData::Histogram(h)) => ("histogram", h.data_points.len()),
                            Some(MetricData::ExponentialHistogram(h)) => ("exponential_histogram", h.data_points.len()),
                            Some(MetricData::Summary(s)) => ("summary", s.data_points.len()),
                            None => ("empty", 0),
                        };
                        let _ = writeln!(out, "  metric {} ({kind}, unit {:?}): {points} points", m.name, m.unit);
                    }
                }
            }
        }
        Payload::Logs(r) => {
            for rl in &r.resource_logs {
                if detailed && let Some(res) = &rl.resource {
                    let _ = writeln!(out, "  resource: {}", attrs(&res.attributes));
                }
                for sl in &rl.scope_logs {
                    for l in &sl.log_records {
                        let _ = write!(out, "  log {} {}", l.severity_text, value(&l.body));
                        if detailed {
                            let _ = write!(out, " {}", attrs(&l.attributes));
                        }
                        out.push('\n');
                    }
                }
            }
        }
    }
    out
}
