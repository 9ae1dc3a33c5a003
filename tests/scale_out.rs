//! End to end: the same spans sent to one infercol, and split across two agents (delta OTLP) feeding a gateway,
//! give the same counts exactly and quantiles within 1%; an agent that restarts is not counted twice.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Collector, kv, server_span, traces_request};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value;

fn latency(i: u64) -> f64 {
    let u = ((i.wrapping_mul(2654435761) % 1013) as f64 + 0.5) / 1013.0;
    (u * 5.0 - 3.0).exp() * if i.is_multiple_of(61) { 30.0 } else { 1.0 }
}

fn code(i: u64) -> i64 {
    match i % 13 {
        0 => 500,
        1 | 2 => 404,
        _ => 200,
    }
}

fn request(ids: std::ops::Range<u64>) -> ExportTraceServiceRequest {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let spans = ids
        .map(|i| {
            let attributes = vec![kv("http.response.status_code", any_value::Value::IntValue(code(i)))];
            server_span(i, 5, now - (latency(i) * 1e9) as u64, now, attributes)
        })
        .collect();
    traces_request("clip", spans)
}

async fn send(endpoint: String, ids: std::ops::Range<u64>) {
    let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
    let mut start = ids.start;
    while start < ids.end {
        let end = (start + 100).min(ids.end);
        client.export(request(start..end)).await.unwrap();
        start = end;
    }
}

fn agent(gateway_grpc: &str) -> Collector {
    Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
connectors:
  model_metrics:
    flush_interval: 300ms
    aggregation_temporality: delta
    histogram: {{ exponential: {{ max_size: 4096 }} }}
exporters:
  otlp:
    endpoint: "{gateway_grpc}"
    tls: {{ insecure: true }}
service:
  telemetry:
    metrics: {{ level: none }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [model_metrics, otlp] }}
    metrics: {{ receivers: [model_metrics], exporters: [otlp] }}
"#
    ))
}

const GATEWAY: &str = r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
processors:
  model_quantiles:
    flush_interval: 300ms
exporters:
  prometheus: { endpoint: "127.0.0.1:0" }
  debug:
service:
  telemetry:
    metrics: { level: none }
  pipelines:
    metrics: { receivers: [otlp], processors: [model_quantiles], exporters: [prometheus] }
    traces: { receivers: [otlp], exporters: [debug] }
"#;

/// `family{labels} value` samples of a Prometheus page, keyed by the labels that matter here.
fn samples(page: &str, family: &str, keys: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in page.lines().filter(|l| l.starts_with(&format!("{family}{{"))) {
        let (labels, value) = line.rsplit_once(' ').unwrap();
        let key: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                let at = labels.find(&format!("{k}=\""))? + k.len() + 2;
                Some(format!("{k}={}", &labels[at..at + labels[at..].find('"')?]))
            })
            .collect();
        *out.entry(key.join(",")).or_default() += value.parse::<f64>().unwrap();
    }
    out
}

async fn page(c: &Collector) -> String {
    reqwest::get(c.address("Prometheus metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn wait_total(c: &Collector, total: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = page(c).await;
        let sum: f64 = samples(&p, "model_requests_total", &[]).values().sum();
        if sum == total && p.contains("model_request_duration_seconds_window{") {
            return p;
        }
        assert!(Instant::now() < deadline, "total {sum}, want {total}:\n{p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn exact(ids: std::ops::Range<u64>, q: f64) -> f64 {
    let mut v: Vec<f64> = ids.map(latency).collect();
    v.sort_by(f64::total_cmp);
    v[(q * (v.len() - 1) as f64).floor() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_and_a_gateway_match_one_collector() {
    common::install_crypto();
    let single = Collector::start(common::MODEL_METRICS_TO_PROMETHEUS);
    let gateway = Collector::start(GATEWAY);
    let gateway_grpc = gateway.address("OTLP/gRPC");
    let a = agent(&gateway_grpc);
    let mut b = agent(&gateway_grpc);
    let n = 1200;
    send(single.grpc(), 0..n).await;
    send(a.grpc(), 0..n / 2).await;
    send(b.grpc(), n / 2..n).await;

    let one = wait_total(&single, n as f64).await;
    let merged = wait_total(&gateway, n as f64).await;
    let keys = ["status_class", "status_code"];
    assert_eq!(
        samples(&one, "model_requests_total", &keys),
        samples(&merged, "model_requests_total", &keys),
        "the same counts per status, exactly"
    );
    assert_eq!(
        samples(&one, "model_request_duration_seconds_count", &[]),
        samples(&merged, "model_request_duration_seconds_count", &[]),
    );
    for q in ["0.5", "0.9", "0.95", "0.99"] {
        let want = exact(0..n, q.parse().unwrap());
        for (who, p) in [("one collector", &one), ("gateway", &merged)] {
            let got = samples(p, "model_request_duration_seconds_window", &["quantile"])[&format!("quantile={q}")];
            assert!(((got - want) / want).abs() <= 0.01, "{who}: p{q} {got} vs exact {want}");
        }
    }

    // Agent b restarts: its new deltas add to what the gateway has; nothing is counted twice.
    let (status, log) = b.stop();
    assert!(status.success(), "{log}");
    let b2 = agent(&gateway_grpc);
    send(b2.grpc(), n..n + 300).await;
    let merged = wait_total(&gateway, (n + 300) as f64).await;
    let total: f64 = samples(&merged, "model_requests_total", &[]).values().sum();
    assert_eq!(total, (n + 300) as f64);
    drop(a);
}
