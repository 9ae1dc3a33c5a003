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
    send_from(endpoint, ids, None).await
}

/// Sends the spans `ids`, from the replica `replica` (`service.instance.id`) when one is named.
async fn send_from(endpoint: String, ids: std::ops::Range<u64>, replica: Option<&str>) {
    let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
    let mut start = ids.start;
    while start < ids.end {
        let end = (start + 100).min(ids.end);
        let mut request = request(start..end);
        if let (Some(id), Some(resource)) = (replica, request.resource_spans[0].resource.as_mut()) {
            resource
                .attributes
                .push(kv("service.instance.id", any_value::Value::StringValue(id.into())));
        }
        client.export(request).await.unwrap();
        start = end;
    }
}

/// An agent as the scale-out guide writes it: deltas, 4096 buckets, spans forwarded too.
fn agent(gateway_grpc: &str) -> Collector {
    agent_of(
        gateway_grpc,
        "delta",
        "histogram: { exponential: { max_size: 4096 } }",
        "model_metrics, otlp",
    )
}

/// An agent to a gateway: `temporality`, more `model_metrics` keys, and the traces pipeline's exporters.
fn agent_of(gateway_grpc: &str, temporality: &str, extra: &str, traces_to: &str) -> Collector {
    Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
connectors:
  model_metrics:
    flush_interval: 300ms
    aggregation_temporality: {temporality}
    {extra}
exporters:
  otlp:
    endpoint: "{gateway_grpc}"
    tls: {{ insecure: true }}
service:
  telemetry:
    metrics: {{ level: none }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [{traces_to}] }}
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

/// A gateway: OTLP from agents, written to Prometheus with its own `gateway` label (the deltas it adds up are its
/// share of each series), and a page that reads Prometheus.
fn gateway(name: &str, prometheus: &str) -> Collector {
    gateway_writing(name, prometheus, false)
}

/// A gateway that writes exponential histograms as native histograms with `native`.
fn gateway_writing(name: &str, prometheus: &str, native: bool) -> Collector {
    Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
exporters:
  prometheusremotewrite:
    endpoint: "{prometheus}/api/v1/write"
    external_labels: {{ gateway: "{name}" }}
    send_native_histograms: {native}
  dashboard:
    endpoint: "127.0.0.1:0"
    source: prometheus
    prometheus: {{ url: "{prometheus}", interval: 1s }}
service:
  telemetry:
    metrics: {{ level: none }}
  pipelines:
    metrics: {{ receivers: [otlp], exporters: [prometheusremotewrite, dashboard] }}
"#
    ))
}

/// A collector whose only part is a page over Prometheus (`extra`: more keys of `prometheus:`).
fn reader(prometheus: &str, extra: &str) -> Collector {
    Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
exporters:
  dashboard:
    endpoint: "127.0.0.1:0"
    source: prometheus
    prometheus: {{ url: "{prometheus}", interval: 1s, {extra} }}
service:
  telemetry:
    metrics: {{ level: none }}
  pipelines:
    metrics: {{ receivers: [otlp], exporters: [dashboard] }}
"#
    ))
}

/// A store that cannot be reached: the page's API answers 502 with the reason, and a bad parameter is still the
/// client's 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_reached_is_a_bad_gateway() {
    common::install_crypto();
    let port = common::free_port();
    let c = reader(&format!("http://127.0.0.1:{port}"), "timeout: 2s");
    let page = c.address("dashboard");
    let r = reqwest::get(format!("{page}api/panels?range=1h")).await.unwrap();
    assert_eq!(r.status().as_u16(), 502);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains(&format!("127.0.0.1:{port}")),
        "{body}"
    );
    let r = reqwest::get(format!("{page}api/panels?range=9y")).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = reqwest::get(format!("{page}api/labels")).await.unwrap();
    assert_eq!(r.status().as_u16(), 502);
}

/// An agent as a user runs one: model_metrics' defaults (its histograms' 160 buckets), deltas to a gateway.
fn plain_agent(gateway_grpc: &str) -> Collector {
    agent_sending(gateway_grpc, "delta")
}

/// An agent that sends `temporality` (delta or cumulative) to a gateway, with model_metrics' defaults.
fn agent_sending(gateway_grpc: &str, temporality: &str) -> Collector {
    agent_of(gateway_grpc, temporality, "", "model_metrics")
}

const ONE_DASHBOARD: &str = r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
connectors:
  model_metrics: { flush_interval: 300ms }
exporters:
  dashboard: { endpoint: "127.0.0.1:0" }
service:
  telemetry:
    metrics: { level: none }
  pipelines:
    traces: { receivers: [otlp], exporters: [model_metrics] }
    metrics: { receivers: [model_metrics], exporters: [dashboard] }
"#;

/// `/api/panels` of a page over the last `range` (3h: one-minute steps).
async fn panels_over(c: &Collector, range: &str) -> serde_json::Value {
    let url = format!("{}api/panels?range={range}", c.address("dashboard"));
    let r = reqwest::get(&url).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn panel<'a>(body: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    body["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap()
}

/// Requests counted per status line over the whole span: each step's rate times the step.
fn counts(body: &serde_json::Value) -> BTreeMap<String, f64> {
    let step = body["step"].as_f64().unwrap();
    panel(body, "volume")["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let total: f64 = s["values"].as_array().unwrap().iter().filter_map(|v| v.as_f64()).sum();
            (s["name"].as_str().unwrap().to_string(), (total * step).round())
        })
        .collect()
}

/// Waits until a page counts `total` requests; returns its panels.
async fn wait_counted(c: &Collector, total: f64) -> serde_json::Value {
    wait_counted_over(c, "3h", total).await
}

async fn wait_counted_over(c: &Collector, range: &str, total: f64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = panels_over(c, range).await;
        let sum: f64 = counts(&body).values().sum();
        if sum == total {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "counted {sum}, want {total}: {}",
            body["panels"][0]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The last value of a percentile line (the step that holds the burst).
fn latest(body: &serde_json::Value, id: &str, line: &str) -> f64 {
    let p = panel(body, id);
    let s = p["series"].as_array().unwrap().iter().find(|s| s["name"] == line);
    let values = s.unwrap_or_else(|| panic!("{id} has no {line}: {p}"))["values"]
        .as_array()
        .unwrap();
    values.iter().rev().find_map(|v| v.as_f64()).unwrap()
}

/// The page's p50..p99 (at the step of the burst) are within the bound the latency panel states of the exact
/// percentiles of the requests `ids`; the bound is model_metrics' default layout's (under 20%).
fn within_the_stated_bound(body: &serde_json::Value, ids: std::ops::Range<u64>) {
    let bound = panel(body, "latency")["relative_error"]
        .as_f64()
        .expect("the buckets' bound is stated");
    assert!(bound > 0.0 && bound < 0.2, "model_metrics' default layout: {bound}");
    for (q, line) in [(0.5, "p50"), (0.9, "p90"), (0.95, "p95"), (0.99, "p99")] {
        let (got, exact) = (latest(body, "latency", line), exact(ids.clone(), q));
        assert!(
            ((got - exact) / exact).abs() <= bound,
            "{line}: {got} vs exact {exact} (bound {bound})"
        );
    }
}

/// Two agents, each pinned to one of two gateways (as a layer-4 balancer pins a gRPC connection), both gateways
/// remote-writing into one Prometheus: every gateway's page, reading Prometheus, counts what one collector that
/// received everything counts, exactly, with percentiles within the buckets' bound; a gateway and an agent that
/// restart are not counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_pages_over_prometheus_match_one_collector() {
    common::install_crypto();
    let prometheus =
        common::prometheus::Prometheus::start("127.0.0.1:9", &["--web.enable-remote-write-receiver"]).await;
    let one = Collector::start(ONE_DASHBOARD);
    let gateway_a = gateway("a", &prometheus.url);
    let mut gateway_b = gateway("b", &prometheus.url);
    let agent_a = plain_agent(&gateway_a.address("OTLP/gRPC"));
    let mut agent_b = plain_agent(&gateway_b.address("OTLP/gRPC"));
    // The burst falls in one minute step, so that its percentiles are one step's.
    let second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() % 60;
    if second > 35 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
    let n = 2000;
    send_from(one.grpc(), 0..n / 2, Some("clip-a")).await;
    send_from(one.grpc(), n / 2..n, Some("clip-b")).await;
    send_from(agent_a.grpc(), 0..n / 2, Some("clip-a")).await;
    send_from(agent_b.grpc(), n / 2..n, Some("clip-b")).await;

    let reference = wait_counted(&one, n as f64).await;
    let want = counts(&reference);
    assert_eq!(want.len(), 3, "2xx, 4xx and 5xx: {want:?}");
    for g in [&gateway_a, &gateway_b] {
        let body = wait_counted(g, n as f64).await;
        assert_eq!(counts(&body), want, "the same counts per status class, exactly");
        assert_eq!(panel(&body, "latency")["sources"], serde_json::json!(["prometheus"]));
        within_the_stated_bound(&body, 0..n);
    }
    // The one collector's page merges the same histograms exactly: within the sketch's bound.
    within_the_stated_bound(&reference, 0..n);
    // The replica table: each replica's requests, exactly, and its p95 within its histogram's bound (9%).
    for g in [&gateway_a, &gateway_b, &one] {
        let body = panels_over(g, "3h").await;
        let seconds = body["times"].as_array().unwrap().len() as f64 * body["step"].as_f64().unwrap();
        let table = panel(&body, "replicas")["table"].as_array().unwrap().clone();
        let ids: Vec<&str> = table.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["clip-a", "clip-b"], "{table:?}");
        for (row, ids) in table.iter().zip([0..n / 2, n / 2..n]) {
            let served = row["requests_per_s"].as_f64().unwrap_or_else(|| panic!("{row}")) * seconds;
            assert!((served - (n / 2) as f64).abs() < 0.01, "{row}: {served}");
            let (p95, exact) = (row["p95"].as_f64().unwrap_or_else(|| panic!("{row}")), exact(ids, 0.95));
            assert!(
                ((p95 - exact) / exact).abs() <= 0.19,
                "{row}: p95 {p95} vs exact {exact}"
            );
        }
    }
    let labels = reqwest::get(format!("{}api/labels", gateway_a.address("dashboard")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let labels: serde_json::Value = serde_json::from_slice(&labels).unwrap();
    assert_eq!(labels["labels"]["model"], serde_json::json!(["clip"]), "{labels}");

    // A page given a matcher reads only what it selects: here gateway a's share.
    let a_only = reader(&prometheus.url, r#"matchers: ['gateway="a"']"#);
    let body = wait_counted(&a_only, (n / 2) as f64).await;
    assert_eq!(counts(&body).values().sum::<f64>(), (n / 2) as f64);

    // Gateway b and its agent restart: b's cumulative series start again from zero, which counts as a reset.
    let (status, log) = agent_b.stop();
    assert!(status.success(), "{log}");
    let (status, log) = gateway_b.stop();
    assert!(status.success(), "{log}");
    let gateway_b2 = gateway("b", &prometheus.url);
    let agent_b2 = plain_agent(&gateway_b2.address("OTLP/gRPC"));
    send(one.grpc(), n..n + 300).await;
    send(agent_b2.grpc(), n..n + 300).await;
    let want = counts(&wait_counted(&one, (n + 300) as f64).await);
    for g in [&gateway_a, &gateway_b2] {
        assert_eq!(counts(&wait_counted(g, (n + 300) as f64).await), want);
    }
    drop(agent_a);
}

/// Native histograms in the store (Prometheus with `native-histograms`, written by `send_native_histograms`): the
/// page's percentiles come from `rate()` over them, within their buckets' bound. The agent sends cumulative
/// series, so that every window has the sample before the burst; the counts are exact as with classic buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_histogram_store_gives_percentiles_within_its_buckets() {
    common::install_crypto();
    let prometheus = common::prometheus::Prometheus::start(
        "127.0.0.1:9",
        &[
            "--web.enable-remote-write-receiver",
            "--enable-feature=native-histograms",
        ],
    )
    .await;
    let one = Collector::start(ONE_DASHBOARD);
    let gateway = gateway_writing("a", &prometheus.url, true);
    let agent = agent_sending(&gateway.address("OTLP/gRPC"), "cumulative");
    // A first request, then a burst inside one 5-second step (a 15m range), seconds later.
    send(one.grpc(), 5000..5100).await;
    send(agent.grpc(), 5000..5100).await;
    wait_counted_over(&gateway, "15m", 100.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    while SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() % 5000 > 300 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = 2000;
    send(one.grpc(), 0..n).await;
    send(agent.grpc(), 0..n).await;
    let reference = wait_counted_over(&one, "15m", (n + 100) as f64).await;
    let body = wait_counted_over(&gateway, "15m", (n + 100) as f64).await;
    assert_eq!(counts(&body), counts(&reference));
    within_the_stated_bound(&body, 0..n);
    let stored = prometheus.query_vector("model_request_duration_seconds").await;
    assert!(
        stored.iter().all(|s| s.get("histogram").is_some()),
        "native histograms are stored: {stored:?}"
    );
}
