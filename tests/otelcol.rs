//! End to end with the OpenTelemetry Collector (built from the Go module proxy by `bench/build-otelcol`, which
//! `bash tests/run` runs) on both sides of infercol: OTLP in from it, OTLP out to it, nothing lost. The chain is
//! Collector -> infercol (model_metrics) -> Collector -> infercol (file exporter, to count what arrived).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Collector, free_port, kv, otlp_to_file, read_jsonl_until, server_span, spans_of, traces_request};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value;

struct Otelcol(Child);

impl Drop for Otelcol {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn otelcol(dir: &std::path::Path, name: &str, yaml: &str) -> Otelcol {
    let bin = std::env::var("INFERCOL_TEST_OTELCOL").expect(
        "INFERCOL_TEST_OTELCOL: the OpenTelemetry Collector binary; `bash tests/run` builds it (bench/build-otelcol)",
    );
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Otelcol(
        Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn request(first: u64, n: u64) -> ExportTraceServiceRequest {
    let spans = (first..first + n)
        .map(|i| {
            let code = if i % 5 == 0 { 503 } else { 200 };
            let attributes = vec![kv("http.response.status_code", any_value::Value::IntValue(code))];
            server_span(i, 4, 1_764_300_000_000_000_000, 1_764_300_000_200_000_000, attributes)
        })
        .collect();
    traces_request("bert", spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_collector_on_both_sides_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (front, back) = (free_port(), free_port());
    let out = dir.path();
    let sink = Collector::start(&otlp_to_file(""));
    let _back = otelcol(
        out,
        "back",
        &format!(
            r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{back}" }}
exporters:
  otlp:
    endpoint: "{}"
    tls: {{ insecure: true }}
service:
  telemetry: {{ metrics: {{ level: none }} }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [otlp] }}
    metrics: {{ receivers: [otlp], exporters: [otlp] }}
"#,
            sink.address("OTLP/gRPC")
        ),
    );
    let infercol = Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
connectors:
  model_metrics: {{ flush_interval: 300ms }}
exporters:
  otlp:
    endpoint: "127.0.0.1:{back}"
    tls: {{ insecure: true }}
    retry_on_failure: {{ initial_interval: 200ms }}
service:
  telemetry: {{ metrics: {{ level: none }} }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [model_metrics, otlp] }}
    metrics: {{ receivers: [model_metrics], exporters: [otlp] }}
"#
    ));
    let _front = otelcol(
        out,
        "front",
        &format!(
            r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{front}" }}
exporters:
  otlp:
    endpoint: "{}"
    tls: {{ insecure: true }}
service:
  telemetry: {{ metrics: {{ level: none }} }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [otlp] }}
"#,
            infercol.address("OTLP/gRPC")
        ),
    );
    // The front Collector takes a moment to listen.
    let mut client = loop {
        match TraceServiceClient::connect(format!("http://127.0.0.1:{front}")).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let n = 500;
    for first in (0..n).step_by(50) {
        client
            .export(request(first, 50))
            .await
            .expect("the front Collector accepts");
    }
    let file = sink.path("out.jsonl");
    let traces = read_jsonl_until(&file, Duration::from_secs(60), |l| spans_of(l).len() as u64 >= n);
    let ids: std::collections::BTreeSet<String> = spans_of(&traces)
        .iter()
        .map(|(_, s)| s["spanId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.len() as u64,
        n,
        "every span crossed Collector -> infercol -> Collector"
    );
    let requests = |lines: &[serde_json::Value]| -> f64 {
        lines
            .iter()
            .rev()
            .flat_map(|l| l["resourceMetrics"].as_array().cloned().unwrap_or_default())
            .flat_map(|rm| rm["scopeMetrics"].as_array().cloned().unwrap_or_default())
            .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
            .find(|m| m["name"] == "model.requests")
            .map(|m| {
                m["sum"]["dataPoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["asDouble"].as_f64().unwrap())
                    .sum()
            })
            .unwrap_or(0.0)
    };
    let metrics = read_jsonl_until(&file, Duration::from_secs(30), |l| requests(l) == n as f64);
    assert_eq!(
        requests(&metrics),
        n as f64,
        "the derived counts reach the Collector whole"
    );
}
