//! End to end: replicas behind real HTTP readiness endpoints turn from 503 to 200 and the exported
//! `model.replicas` goes from starting to active; an async workload's queue fills, drains back to 0, and its
//! queue-time quantiles are within 1% of the exact ones.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Collector, read_jsonl_until};
use serde_json::{Value, json};

/// A readiness endpoint that answers 503 until `ready` is set.
async fn readiness_server(ready: Arc<AtomicBool>) -> String {
    let app = ready;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let app = app.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let status = if app.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = stream
                    .write_all(
                        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
            });
        }
    });
    format!("http://{address}/health/ready")
}

fn gauge_points(lines: &[Value], name: &str) -> Vec<Value> {
    // The last request holding the metric: gauges are the latest value.
    lines
        .iter()
        .rev()
        .flat_map(|l| l["resourceMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|rm| rm["scopeMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
        .find(|m| m["name"] == name)
        .and_then(|m| m["gauge"]["dataPoints"].as_array().cloned())
        .unwrap_or_default()
}

fn label(p: &Value, key: &str) -> String {
    p["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key))
        .and_then(|kv| kv["value"]["stringValue"].as_str())
        .unwrap_or("")
        .to_string()
}

fn replicas(lines: &[Value], model: &str, state: &str) -> Option<f64> {
    gauge_points(lines, "model.replicas")
        .iter()
        .find(|p| label(p, "model") == model && label(p, "state") == state)
        .and_then(|p| p["asDouble"].as_f64())
}

fn config(targets: &str) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:0" }}
  replica_probe:
    interval: 200ms
    timeout: 150ms
    startup_timeout: 60s
    targets:
{targets}
connectors:
  model_metrics:
    flush_interval: 300ms
    quantile_window: 5m
exporters:
  file/spans: {{ path: "{{dir}}/spans.jsonl" }}
  file/metrics: {{ path: "{{dir}}/metrics.jsonl" }}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:0" }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [model_metrics, file/spans] }}
    metrics: {{ receivers: [replica_probe, model_metrics], exporters: [file/metrics] }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probed_replicas_go_from_starting_to_active() {
    let a = Arc::new(AtomicBool::new(false));
    let b = Arc::new(AtomicBool::new(false));
    let url_a = readiness_server(a.clone()).await;
    let url_b = readiness_server(b.clone()).await;
    let c = Collector::start(&config(&format!(
        "      - {{ url: \"{url_a}\", model: sd-xl, environment: prod }}\n      - {{ url: \"{url_b}\", model: sd-xl, environment: prod }}"
    )));
    let metrics = c.path("metrics.jsonl");
    let wait = |active: f64, starting: f64| {
        let metrics = metrics.clone();
        move || {
            read_jsonl_until(&metrics, Duration::from_secs(20), |l| {
                replicas(l, "sd-xl", "active") == Some(active) && replicas(l, "sd-xl", "starting") == Some(starting)
            })
        }
    };
    tokio::task::spawn_blocking(wait(0.0, 2.0)).await.unwrap();
    a.store(true, Ordering::SeqCst);
    let lines = tokio::task::spawn_blocking(wait(1.0, 1.0)).await.unwrap();
    assert_eq!(replicas(&lines, "sd-xl", "failed"), Some(0.0));
    b.store(true, Ordering::SeqCst);
    tokio::task::spawn_blocking(wait(2.0, 0.0)).await.unwrap();
    // Not ready again (a restart): starting, not failed, within the startup timeout.
    a.store(false, Ordering::SeqCst);
    tokio::task::spawn_blocking(wait(1.0, 1.0)).await.unwrap();
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn span(name: &str, kind: u32, id: usize, start: u64, end: u64) -> Value {
    json!({
        "traceId": format!("{:032x}", id + 1),
        "spanId": format!("{:016x}", (id + 1) * 7 + kind as usize),
        "name": name,
        "kind": kind,
        "startTimeUnixNano": start.to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": [{"key": "messaging.message.id", "value": {"stringValue": format!("job-{id}")}}]
    })
}

async fn send(c: &Collector, service: &str, spans: Vec<Value>) {
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "service.instance.id", "value": {"stringValue": format!("{service}-0")}}]},
        "scopeSpans": [{"spans": spans}]}]});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/traces", c.http()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn queue_size(lines: &[Value], model: &str) -> Option<f64> {
    gauge_points(lines, "model.async_queue.size")
        .iter()
        .find(|p| label(p, "model") == model)
        .and_then(|p| p["asDouble"].as_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_queue_fills_drains_to_zero_with_exact_quantiles() {
    common::install_crypto();
    let url = readiness_server(Arc::new(AtomicBool::new(true))).await;
    let c = Collector::start(&config(&format!("      - {{ url: \"{url}\", model: other }}")));
    let n = 200;
    let now = now_ns();
    // Queue waits: 10 ms .. several seconds, with a tail.
    let waits: Vec<f64> = (0..n)
        .map(|i| 0.01 * (1.0 + (i as f64 * 0.37).sin().abs() * 30.0) * if i % 50 == 0 { 20.0 } else { 1.0 })
        .collect();
    let enqueues: Vec<Value> = (0..n)
        .map(|i| span("async.enqueue", 4, i, now - 5_000_000_000, now - 4_999_000_000))
        .collect();
    send(&c, "batch-api", enqueues).await;
    let metrics = c.path("metrics.jsonl");
    let m = metrics.clone();
    tokio::task::spawn_blocking(move || {
        read_jsonl_until(&m, Duration::from_secs(20), |l| {
            queue_size(l, "batch-api") == Some(n as f64)
        })
    })
    .await
    .unwrap();
    // Dequeues arrive out of order, some twice, from the worker.
    let mut queue_spans: Vec<Value> = (0..n)
        .rev()
        .map(|i| {
            let start = now - 5_000_000_000;
            span("async.queue", 5, i, start, start + (waits[i] * 1e9) as u64)
        })
        .collect();
    let duplicates: Vec<Value> = queue_spans.iter().take(10).cloned().collect();
    queue_spans.extend(duplicates);
    let (first, second) = queue_spans.split_at(queue_spans.len() / 2);
    send(&c, "batch-api", first.to_vec()).await;
    send(&c, "batch-api", second.to_vec()).await;
    let m = metrics.clone();
    let lines = tokio::task::spawn_blocking(move || {
        read_jsonl_until(&m, Duration::from_secs(20), |l| queue_size(l, "batch-api") == Some(0.0))
    })
    .await
    .unwrap();
    assert_eq!(queue_size(&lines, "batch-api"), Some(0.0), "the drained queue reads 0");
    let summary = lines
        .iter()
        .rev()
        .flat_map(|l| l["resourceMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|rm| rm["scopeMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
        .find(|m| m["name"] == "model.async_queue.duration_seconds_window")
        .expect("queue-time quantiles");
    let point = &summary["summary"]["dataPoints"][0];
    assert_eq!(
        point["count"],
        (n + 10).to_string(),
        "every queue span counts in the time histogram, duplicates too"
    );
    let mut sorted: Vec<f64> = waits.iter().copied().chain(waits[n - 10..].iter().copied()).collect();
    sorted.sort_by(f64::total_cmp);
    for qv in point["quantileValues"].as_array().unwrap() {
        let q = qv["quantile"].as_f64().unwrap();
        let got = qv["value"].as_f64().unwrap();
        let want = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
        assert!(
            ((got - want) / want).abs() <= 0.01,
            "queue time p{q}: {got} vs exact {want}"
        );
    }
}
