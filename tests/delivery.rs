//! End to end: nothing accepted is lost, through a chain of two collectors and through a SIGTERM in the middle
//! of a steady stream.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Collector, kv, otlp_to_file, read_jsonl_until, server_span, spans_of, traces_request};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request of `n` SERVER spans whose span ids are `first+1..=first+n` (so every span is unique and traceable).
fn request(first: u64, n: u64) -> ExportTraceServiceRequest {
    let ok = || vec![kv("http.response.status_code", any_value::Value::IntValue(200))];
    let spans = (first..first + n)
        .map(|id| {
            server_span(
                id,
                7,
                1_764_300_000_000_000_000 + id,
                1_764_300_000_050_000_000 + id,
                ok(),
            )
        })
        .collect();
    traces_request("resnet", spans)
}

fn span_ids_in_file(c: &Collector, at_least: usize) -> BTreeSet<String> {
    let lines = read_jsonl_until(&c.path("out.jsonl"), Duration::from_secs(60), |l| {
        spans_of(l).len() >= at_least
    });
    let spans = spans_of(&lines);
    let ids: BTreeSet<String> = spans
        .iter()
        .map(|(_, s)| s["spanId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), spans.len(), "no span twice");
    ids
}

async fn own_metric(c: &Collector, series: &str) -> f64 {
    let address = c.address("own metrics");
    let text = reqwest::get(address).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_through_otlp_and_otlphttp_exporters_loses_nothing() {
    common::install_crypto();
    let downstream = Collector::start(&otlp_to_file(""));
    let grpc_target = downstream.address("OTLP/gRPC");
    let http_target = downstream.http();
    let mut upstream = Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
      http: {{ endpoint: "127.0.0.1:0" }}
processors:
  batch: {{ send_batch_size: 500, timeout: 100ms }}
exporters:
  otlp:
    endpoint: "{grpc_target}"
    tls: {{ insecure: true }}
    compression: gzip
    headers: {{ x-tenant: e2e }}
  otlphttp:
    endpoint: "{http_target}"
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:0" }}
  pipelines:
    traces: {{ receivers: [otlp], processors: [batch], exporters: [otlp] }}
    logs: {{ receivers: [otlp], exporters: [otlphttp] }}
"#
    ));
    let endpoint = upstream.grpc();
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
            for i in 0..50u64 {
                let first = (worker * 50 + i) * 10;
                client.export(request(first, 10)).await.expect("accepted");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Logs through the otlphttp exporter.
    let http = reqwest::Client::new();
    for i in 0..5 {
        let body = format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"{}","body":{{"stringValue":"log {i}"}}}}]}}]}}]}}"#,
            1_764_300_000_000_000_000u64 + i
        );
        let r = http
            .post(format!("{}/v1/logs", upstream.http()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let ids = span_ids_in_file(&downstream, 2000);
    let want: BTreeSet<String> = (0..2000u64).map(|id| hex(&(id + 1).to_be_bytes())).collect();
    assert_eq!(ids, want, "every span crossed the chain exactly once");
    let lines = read_jsonl_until(&downstream.path("out.jsonl"), Duration::from_secs(30), |l| {
        l.iter().filter(|x| x.get("resourceLogs").is_some()).count() >= 5
    });
    let logs: Vec<String> = lines
        .iter()
        .filter_map(|l| l["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["body"]["stringValue"].as_str())
        .map(str::to_string)
        .collect();
    assert_eq!(logs.len(), 5, "{logs:?}");

    assert_eq!(
        own_metric(
            &upstream,
            "otelcol_receiver_accepted_spans_total{receiver=\"otlp\",transport=\"grpc\"}"
        )
        .await,
        2000.0
    );
    assert_eq!(
        own_metric(&upstream, "otelcol_exporter_sent_spans_total{exporter=\"otlp\"}").await,
        2000.0
    );
    assert_eq!(
        own_metric(
            &upstream,
            "otelcol_exporter_sent_log_records_total{exporter=\"otlphttp\"}"
        )
        .await,
        5.0
    );
    assert_eq!(
        own_metric(
            &downstream,
            "otelcol_receiver_accepted_spans_total{receiver=\"otlp\",transport=\"grpc\"}"
        )
        .await,
        2000.0
    );
    let (status, log) = upstream.stop();
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_steady_stream_loses_nothing_acknowledged() {
    // A batch that never fills and a long timeout: what was acknowledged sits in the processor until shutdown.
    let c = Collector::start(
        r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
processors:
  batch: { send_batch_size: 1000000, timeout: 60s }
exporters:
  file: { path: "{dir}/out.jsonl" }
service:
  telemetry:
    metrics: { level: none }
  pipelines:
    traces: { receivers: [otlp], processors: [batch], exporters: [file] }
"#,
    );
    let endpoint = c.grpc();
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..3u64 {
        let endpoint = endpoint.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
            let mut i = 0u64;
            while started.elapsed() < Duration::from_secs(20) {
                let first = (worker * 1_000_000 + i) * 20;
                i += 1;
                match client.export(request(first, 20)).await {
                    Ok(_) => acked.lock().unwrap().extend(first..first + 20),
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = acked.lock().unwrap().len();
    assert!(before > 0, "the stream is flowing");
    c.signal("TERM");
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = c;
    let status = common::wait_exit(&mut c.child, Duration::from_secs(40));
    assert!(status.success(), "clean exit after SIGTERM:\n{}", c.log());
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= before);
    let ids = span_ids_in_file(&c, acked.len());
    for id in &acked {
        assert!(
            ids.contains(&hex(&(id + 1).to_be_bytes())),
            "acknowledged span {id} was lost"
        );
    }
}
