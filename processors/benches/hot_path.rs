//! Micro-benchmarks of the hot path, for regression tracking: decoding a 1,000-span request, classifying its spans,
//! and recording them in model_metrics. `cargo bench -p infercol-processors` (numbers per request of 1,000 spans).

use std::sync::Arc;

use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infercol_pipelines::{
    AnyConfig, ComponentId, ConsumeError, Consumer, Data, ProcessorContext, ProcessorFactory, Signal, Telemetry,
};
use infercol_processors::model_metrics::ModelMetricsFactory;
use infercol_processors::model_metrics::classify::Classifier;
use infercol_processors::model_metrics::config::{ModelMetricsConfig, SpanRules};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Event};
use prost::Message;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// 1,000 model-service spans over 4 resources: half request spans with the contract's attributes, half children.
fn request() -> ExportTraceServiceRequest {
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
                spans: (0..250u64)
                    .map(|i| {
                        let n = r * 250 + i;
                        let start = now + n * 1_000_000;
                        if i % 2 == 0 {
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
                                        Value::IntValue(if n % 20 == 0 { 500 } else { 200 }),
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

struct Discard;

#[async_trait]
impl Consumer for Discard {
    async fn consume(&self, _: Data) -> Result<(), ConsumeError> {
        Ok(())
    }
}

fn hot_path(c: &mut Criterion) {
    let request = request();
    let bytes = bytes::Bytes::from(request.encode_to_vec());
    let mut group = c.benchmark_group("per_1000_spans");
    group.throughput(Throughput::Elements(1000));

    group.bench_function("decode", |b| {
        b.iter(|| Data::decode(Signal::Traces, bytes.clone()).unwrap())
    });

    let classifier = Classifier::new(SpanRules::default());
    let spans: Vec<&Span> = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    group.bench_function("classify", |b| {
        b.iter(|| {
            let mut rejected = Vec::new();
            spans
                .iter()
                .copied()
                .filter(|s| classifier.is_request(*s))
                .map(|s| classifier.request(s, &mut rejected).status.class)
                .count()
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config: AnyConfig = Box::<ModelMetricsConfig>::default();
    let processor = ModelMetricsFactory
        .create(
            &config,
            ProcessorContext {
                id: ComponentId::parse("model_metrics").unwrap(),
                pipeline: "traces".into(),
                signal: Signal::Traces,
                next: Arc::new(Discard),
                metrics_output: Some(Arc::new(Discard)),
                telemetry: Telemetry::new(),
                replicas: Default::default(),
            },
        )
        .unwrap();
    // As the receivers pass it on: the borrowed view of the protobuf bytes.
    let data = Data::decode(Signal::Traces, bytes.clone()).unwrap();
    assert!(data.view().is_some());
    group.bench_function("record (model_metrics)", |b| {
        b.iter(|| runtime.block_on(processor.consume(data.clone())).unwrap())
    });
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
