//! End to end with a real Prometheus server (Debian's `prometheus` package): it scrapes infercol's `prometheus`
//! exporter (text format with classic buckets, and protobuf with native histograms) and receives the
//! `prometheusremotewrite` exporter's series; queries through its HTTP API give the counts sent and answer
//! `histogram_quantile`. `promtool check metrics` passes on a page holding every metric kind.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::prometheus::{Prometheus, which};
use common::{Collector, kv, server_span, traces_request};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value;

/// The latency of request `i`: lognormal-like, spread over two decades.
fn latency(i: u64) -> f64 {
    let u = ((i.wrapping_mul(2654435761) % 1009) as f64 + 0.5) / 1009.0;
    (u * 4.6 - 2.3).exp() * 0.2
}

/// Sends `n` request spans (every 10th a 503, every 7th a 404) over OTLP/gRPC.
async fn send_requests(endpoint: String, n: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let spans: Vec<_> = (0..n)
        .map(|i| {
            let code = if i % 10 == 0 {
                503
            } else if i % 7 == 0 {
                404
            } else {
                200
            };
            let attributes = vec![kv("http.response.status_code", any_value::Value::IntValue(code))];
            server_span(i, 9, now - (latency(i) * 1e9) as u64, now, attributes)
        })
        .collect();
    let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
    for chunk in spans.chunks(50) {
        let mut request = traces_request("bert", chunk.to_vec());
        if let Some(resource) = request.resource_spans[0].resource.as_mut() {
            resource.attributes.push(kv(
                "deployment.environment.name",
                any_value::Value::StringValue("prod".into()),
            ));
        }
        client.export(request).await.unwrap();
    }
}

fn exact_p99(n: u64) -> f64 {
    let mut v: Vec<f64> = (0..n).map(latency).collect();
    v.sort_by(f64::total_cmp);
    v[(0.99 * (n - 1) as f64).floor() as usize]
}

/// The `host:port` the collector's Prometheus exporter listens on.
fn exporter_target(c: &Collector) -> String {
    c.address("Prometheus metrics")
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string()
}

fn collector(remote_write: Option<&str>) -> Collector {
    let (rw_exporter, rw_name) = match remote_write {
        Some(url) => (
            format!("  prometheusremotewrite:\n    endpoint: \"{url}\"\n"),
            ", prometheusremotewrite",
        ),
        None => (String::new(), ""),
    };
    Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
connectors:
  model_metrics:
    flush_interval: 500ms
exporters:
  prometheus:
    endpoint: "127.0.0.1:0"
{rw_exporter}  file: {{ path: "{{dir}}/spans.jsonl" }}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:0" }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [model_metrics, file] }}
    metrics: {{ receivers: [model_metrics], exporters: [prometheus{rw_name}] }}
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_text_and_receives_remote_write() {
    common::install_crypto();
    // Prometheus first (the collector writes to it), then the collector on a port of its own, then the scrape.
    let prometheus = Prometheus::start("127.0.0.1:9", &["--web.enable-remote-write-receiver"]).await;
    let c = collector(Some(&format!("{}/api/v1/write", prometheus.url)));
    prometheus.scrape(&exporter_target(&c));
    let n = 400;
    send_requests(c.grpc(), n).await;

    // Scraped (the scrape job sets job="infercol").
    let scraped = prometheus
        .wait_for(r#"sum(model_requests_total{job="infercol"})"#, |v| v == n as f64)
        .await;
    assert_eq!(scraped, n as f64);
    let errors = prometheus
        .wait_for(r#"sum(model_requests_total{job="infercol",status_class="5xx"})"#, |v| {
            v > 0.0
        })
        .await;
    assert_eq!(errors, (0..n).filter(|i| i % 10 == 0).count() as f64);
    let p99 = prometheus
        .wait_for(
            r#"histogram_quantile(0.99, sum by (le) (model_request_duration_seconds_bucket{job="infercol",model="bert"}))"#,
            f64::is_finite,
        )
        .await;
    let exact = exact_p99(n);
    assert!(
        ((p99 - exact) / exact).abs() < 0.1,
        "classic buckets p99 {p99} vs exact {exact}"
    );

    // Remote-written: the same series, without the scrape's job label.
    let pushed = prometheus
        .wait_for(r#"sum(model_requests_total{job=""})"#, |v| v == n as f64)
        .await;
    assert_eq!(pushed, n as f64);
    let p99 = prometheus
        .wait_for(
            r#"histogram_quantile(0.99, sum by (le) (model_request_duration_seconds_bucket{job="",model="bert"}))"#,
            f64::is_finite,
        )
        .await;
    assert!(
        ((p99 - exact) / exact).abs() < 0.1,
        "remote-written p99 {p99} vs exact {exact}"
    );
    let window_p99 = prometheus
        .wait_for(
            r#"model_request_duration_seconds_window{job="infercol",quantile="0.99"}"#,
            f64::is_finite,
        )
        .await;
    assert!(
        ((window_p99 - exact) / exact).abs() <= 0.01,
        "window p99 {window_p99} vs exact {exact}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_with_native_histograms_scrapes_protobuf() {
    common::install_crypto();
    let c = collector(None);
    let prometheus = Prometheus::start(&exporter_target(&c), &["--enable-feature=native-histograms"]).await;
    let n = 300;
    send_requests(c.grpc(), n).await;
    let total = prometheus
        .wait_for(r#"sum(model_requests_total{job="infercol"})"#, |v| v == n as f64)
        .await;
    assert_eq!(total, n as f64);
    let count = prometheus
        .wait_for(
            r#"histogram_count(sum(model_request_duration_seconds{job="infercol"}))"#,
            |v| v == n as f64,
        )
        .await;
    assert_eq!(count, n as f64, "a native histogram holds every request");
    let p99 = prometheus
        .wait_for(
            r#"histogram_quantile(0.99, sum(model_request_duration_seconds{job="infercol"}))"#,
            f64::is_finite,
        )
        .await;
    let exact = exact_p99(n);
    assert!(((p99 - exact) / exact).abs() < 0.1, "native p99 {p99} vs exact {exact}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_page_with_every_metric_kind() {
    common::install_crypto();
    let c = Collector::start(
        r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
      http: { endpoint: "127.0.0.1:0" }
connectors:
  model_metrics:
    flush_interval: 200ms
exporters:
  prometheus:
    endpoint: "127.0.0.1:0"
  file: { path: "{dir}/spans.jsonl" }
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], exporters: [model_metrics, file] }
    metrics: { receivers: [otlp, model_metrics], exporters: [prometheus] }
"#,
    );
    send_requests(c.grpc(), 50).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let metrics = format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"vllm"}}}},{{"key":"service.instance.id","value":{{"stringValue":"pod-1"}}}}]}},"scopeMetrics":[{{"metrics":[
{{"name":"vllm.num_requests_waiting","unit":"{{request}}","gauge":{{"dataPoints":[{{"timeUnixNano":"{now}","asInt":"7"}}]}}}},
{{"name":"hw.gpu.utilization","unit":"1","gauge":{{"dataPoints":[{{"timeUnixNano":"{now}","asDouble":0.5,"attributes":[{{"key":"hw.id","value":{{"stringValue":"GPU-1"}}}}]}}]}}}},
{{"name":"vllm.prompt_tokens","unit":"{{token}}","sum":{{"isMonotonic":true,"aggregationTemporality":1,"dataPoints":[{{"timeUnixNano":"{now}","asInt":"3"}}]}}}},
{{"name":"process.cpu.time","unit":"s","sum":{{"isMonotonic":true,"aggregationTemporality":2,"dataPoints":[{{"timeUnixNano":"{now}","asDouble":12.5}}]}}}},
{{"name":"inflight","sum":{{"isMonotonic":false,"aggregationTemporality":2,"dataPoints":[{{"timeUnixNano":"{now}","asInt":"2"}}]}}}},
{{"name":"http.server.request.duration","unit":"s","histogram":{{"aggregationTemporality":2,"dataPoints":[{{"timeUnixNano":"{now}","count":"3","sum":1.5,"bucketCounts":["1","1","1"],"explicitBounds":[0.1,1],"attributes":[{{"key":"http.route","value":{{"stringValue":"/x"}}}},{{"key":"0code","value":{{"stringValue":"y"}}}}]}}]}}}},
{{"name":"rpc.latency","unit":"s","summary":{{"dataPoints":[{{"timeUnixNano":"{now}","count":"4","sum":10.0,"quantileValues":[{{"quantile":0.5,"value":2.0}},{{"quantile":0.99,"value":4.0}}]}}]}}}}
]}}]}}]}}"#
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/metrics", c.http()))
        .header("content-type", "application/json")
        .body(metrics)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page_url = format!(
        "http://{}/metrics",
        c.address("Prometheus metrics")
            .trim_start_matches("http://")
            .trim_end_matches("/metrics")
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = reqwest::get(&page_url).await.unwrap().text().await.unwrap();
        if page.contains("model_requests_total") && page.contains("rpc_latency_seconds") {
            break page;
        }
        assert!(Instant::now() < deadline, "page incomplete:\n{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for kind in ["counter", "gauge", "histogram", "summary"] {
        assert!(page.contains(&format!(" {kind}\n")), "the page holds a {kind}:\n{page}");
    }
    assert!(
        page.contains("target_info{"),
        "resource attributes in target_info:\n{page}"
    );
    assert!(
        page.contains("key_0code=\"y\""),
        "a label starting with a digit is prefixed"
    );
    assert!(
        page.contains("hw_gpu_utilization_ratio{"),
        "unit 1 gauges end in _ratio"
    );
    assert!(page.contains("vllm_num_requests_waiting{"), "curly units add nothing");
    assert!(page.contains("process_cpu_time_seconds_total{"));
    let mut promtool = Command::new(which("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}\n---\n{page}"
    );

    // OpenMetrics and gzip by negotiation.
    let r = reqwest::Client::new()
        .get(&page_url)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let om = r.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE model_requests counter"));
    assert!(om.contains("# {trace_id=\""), "exemplars in OpenMetrics");
    let r = reqwest::Client::new()
        .get(&page_url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
}
