//! Model-service requests and a model_metrics processor, shared by the hot-path benchmark and the allocation test.

use std::sync::Arc;

use async_trait::async_trait;
use infercol_pipelines::{
    AnyConfig, ComponentId, ConnectorContext, ConnectorFactory, ConsumeError, Consumer, Data, Signal, Telemetry,
};
use infercol_processors::model_metrics::ModelMetricsFactory;
use infercol_processors::model_metrics::config::ModelMetricsConfig;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Event};

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Model-service spans over 4 resources, `per_resource` each (1,000 in all for 250): half request spans with the
/// contract's attributes, half children.
pub fn request(per_resource: u64) -> ExportTraceServiceRequest {
    let now = 1_764_300_000_000_000_000u64;
    let resource_spans = (0..4u64)
        .map(|r| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue(format!("model-{r}"))),
                    kv("service.version", Value::StringValue("v1".into())),
                    kv("deployment.environment.name", Value::StringValue("prod".into())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..per_resource)
                    .map(|i| {
                        let n = r * per_resource + i;
                        let start = now + n * 1_000_000;
                        if i.is_multiple_of(2) {
                            Span {
                                trace_id: [n + 1, 7].map(u64::to_be_bytes).concat(),
                                span_id: (n + 1).to_be_bytes().to_vec(),
                                name: "POST /v1/predict".into(),
                                kind: 2,
                                start_time_unix_nano: start,
                                end_time_unix_nano: start + 20_000_000 + n * 10_000,
                                attributes: vec![
                                    kv("http.request.method", Value::StringValue("POST".into())),
                                    kv(
                                        "http.response.status_code",
                                        Value::IntValue(if n.is_multiple_of(20) { 500 } else { 200 }),
                                    ),
                                    kv("http.request.body.size", Value::IntValue(1000 + n as i64)),
                                    kv("http.response.body.size", Value::IntValue(5000 + n as i64)),
                                    kv("gen_ai.usage.input_tokens", Value::IntValue(100)),
                                    kv("gen_ai.usage.output_tokens", Value::IntValue(200)),
                                ],
                                events: vec![Event {
                                    name: "first_token".into(),
                                    time_unix_nano: start + 5_000_000,
                                    ..Default::default()
                                }],
                                ..Default::default()
                            }
                        } else {
                            Span {
                                trace_id: [n, 7].map(u64::to_be_bytes).concat(),
                                span_id: (n + 1).to_be_bytes().to_vec(),
                                parent_span_id: n.to_be_bytes().to_vec(),
                                name: "predict".into(),
                                kind: 1,
                                start_time_unix_nano: start,
                                end_time_unix_nano: start + 15_000_000,
                                ..Default::default()
                            }
                        }
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

pub struct Discard;

#[async_trait]
impl Consumer for Discard {
    async fn consume(&self, _: Data) -> Result<(), ConsumeError> {
        Ok(())
    }
}

/// A model_metrics connector with the default configuration, its output discarded.
pub fn processor() -> Arc<dyn infercol_pipelines::Connector> {
    let config: AnyConfig = Box::<ModelMetricsConfig>::default();
    ModelMetricsFactory
        .create(
            &config,
            ConnectorContext {
                id: ComponentId::parse("model_metrics").unwrap(),
                from: Signal::Traces,
                to: Signal::Metrics,
                next: Arc::new(Discard),
                telemetry: Telemetry::new(),
                shared: Default::default(),
            },
        )
        .unwrap()
}
