//! End to end: spans from the OpenTelemetry Rust SDK through the real binary; model_metrics feeds the metrics
//! pipeline; counts per status class are exact and quantiles within 1% of the exact ones.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use common::{Collector, read_jsonl};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;

const CONFIG: &str = r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
connectors:
  model_metrics:
    flush_interval: 500ms
    quantile_window: 5m
exporters:
  file/spans: { path: "{dir}/spans.jsonl" }
  file/metrics: { path: "{dir}/metrics.jsonl" }
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], exporters: [model_metrics, file/spans] }
    metrics: { receivers: [model_metrics], exporters: [file/metrics] }
"#;

/// A deterministic lognormal-ish latency with rare outliers, from an index.
fn latency(i: u64) -> f64 {
    let u = ((i.wrapping_mul(2654435761) % 10_007) as f64 + 0.5) / 10_007.0;
    let v = (u * 4.0 - 2.0).exp() * 0.1;
    if i.is_multiple_of(97) { v * 40.0 } else { v }
}

fn label<'a>(point: &'a Value, key: &str) -> Option<&'a str> {
    point["attributes"].as_array()?.iter().find(|kv| kv["key"] == key)?["value"]["stringValue"].as_str()
}

/// The last emitted point set of a metric, from the metrics file.
fn last_metric(lines: &[Value], name: &str) -> Option<Value> {
    lines
        .iter()
        .rev()
        .flat_map(|l| l["resourceMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|rm| rm["scopeMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
        .find(|m| m["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_become_exact_counts_and_quantiles_within_one_percent() {
    let mut c = Collector::start(CONFIG);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(c.grpc())
        .build()
        .unwrap();
    let n: u64 = 600;
    let durations = tokio::task::spawn_blocking(move || {
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name("sentiment")
                    .with_attributes([
                        KeyValue::new("deployment.environment.name", "staging"),
                        KeyValue::new("service.version", "2024-11"),
                    ])
                    .build(),
            )
            .build();
        let tracer = provider.tracer("e2e");
        let now = SystemTime::now();
        let mut durations = Vec::new();
        for i in 0..n {
            let seconds = latency(i);
            durations.push(seconds);
            let end = now - Duration::from_millis(i % 1000);
            let start = end - Duration::from_secs_f64(seconds);
            let mut attributes = vec![KeyValue::new("http.request.body.size", 100 + i as i64)];
            match i % 10 {
                0 => attributes.push(KeyValue::new("http.response.status_code", 500)),
                1 | 2 => attributes.push(KeyValue::new("http.response.status_code", 429)),
                3 => {} // no code: the span status decides
                _ => attributes.push(KeyValue::new("http.response.status_code", 200)),
            }
            let mut span = tracer
                .span_builder("POST /v1/classify")
                .with_kind(SpanKind::Server)
                .with_start_time(start)
                .with_attributes(attributes)
                .start(&tracer);
            if i % 20 == 3 {
                span.set_status(Status::error("prediction failed"));
            }
            span.end_with_timestamp(end);
            // An inference child span for every request.
            let mut child = tracer
                .span_builder("predict")
                .with_kind(SpanKind::Internal)
                .with_start_time(start)
                .start(&tracer);
            child.end_with_timestamp(start + Duration::from_secs_f64(seconds / 2.0));
        }
        provider.force_flush().unwrap();
        provider.shutdown().unwrap();
        durations
    })
    .await
    .unwrap();

    // Every span reached the traces pipeline; then stop, which flushes the final metrics.
    common::read_jsonl_until(&c.path("spans.jsonl"), Duration::from_secs(30), |l| {
        common::spans_of(l).len() as u64 >= 2 * n
    });
    let metrics_file = c.path("metrics.jsonl");
    let (status, log) = c.stop();
    assert!(status.success(), "{log}");
    let lines = read_jsonl(&metrics_file);

    let requests = last_metric(&lines, "model.requests").expect("model.requests emitted");
    assert_eq!(requests["sum"]["isMonotonic"], true);
    let mut by_class: BTreeMap<String, f64> = BTreeMap::new();
    for p in requests["sum"]["dataPoints"].as_array().unwrap() {
        assert_eq!(label(p, "model"), Some("sentiment"));
        assert_eq!(label(p, "deployment"), Some("2024-11"));
        assert_eq!(label(p, "environment"), Some("staging"));
        assert_eq!(label(p, "protocol"), Some("http"));
        *by_class
            .entry(label(p, "status_class").unwrap().to_string())
            .or_default() += p["asDouble"].as_f64().unwrap();
    }
    let (mut ok, mut client, mut server) = (0.0, 0.0, 0.0);
    for i in 0..n {
        match i % 10 {
            0 => server += 1.0,
            1 | 2 => client += 1.0,
            3 if i % 20 == 3 => server += 1.0,
            _ => ok += 1.0,
        }
    }
    assert_eq!(by_class.get("2xx"), Some(&ok));
    assert_eq!(by_class.get("4xx"), Some(&client));
    assert_eq!(by_class.get("5xx"), Some(&server));

    let summary = last_metric(&lines, "model.request.duration_seconds_window").expect("quantile summary");
    let point = &summary["summary"]["dataPoints"][0];
    assert_eq!(point["count"], n.to_string(), "every request is in the window");
    let mut sorted = durations.clone();
    sorted.sort_by(f64::total_cmp);
    let quantiles = point["quantileValues"].as_array().unwrap();
    assert_eq!(quantiles.len(), 4);
    for qv in quantiles {
        let q = qv["quantile"].as_f64().unwrap();
        let got = qv["value"].as_f64().unwrap();
        let want = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
        assert!(((got - want) / want).abs() <= 0.01, "p{q}: {got} vs exact {want}");
    }
    let histogram = last_metric(&lines, "model.request.duration").expect("exponential histogram");
    let h = &histogram["exponentialHistogram"]["dataPoints"][0];
    assert_eq!(h["count"], n.to_string());
    let inference = last_metric(&lines, "model.inference.duration").expect("inference histogram");
    assert_eq!(
        inference["exponentialHistogram"]["dataPoints"][0]["count"],
        n.to_string()
    );
    assert!(last_metric(&lines, "model.request.size_bytes_window").is_some());
}
