//! The Metrics tab: the `dashboard` exporter's page in a real headless Chromium (driven over WebDriver by Debian's
//! chromedriver), and the Grafana dashboard in `examples/grafana/infercol.json` against a real Prometheus scraping
//! the same collector. Both get the same workload: two models over HTTP, gRPC and WebSocket, streaming and async
//! requests, this test process as a model replica (host CPU and memory), and GPU samples as another agent's nvml
//! receiver would send them over OTLP.
//!
//! With `INFERCOL_SCREENSHOT=FILE` the browser test also saves a screenshot of the page with data (the README's).

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::prometheus::{Prometheus, which};
use common::{Collector, free_port, kv};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Event};
use serde_json::{Value as Json, json};

const CONFIG: &str = r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
  hostmetrics: { collection_interval: 1s, sample_interval: 250ms }
connectors:
  model_metrics: { flush_interval: 1s }
exporters:
  dashboard: { endpoint: "127.0.0.1:0" }
  prometheus: { endpoint: "127.0.0.1:0" }
  debug:
service:
  telemetry:
    metrics: { level: none }
  pipelines:
    traces: { receivers: [otlp], exporters: [model_metrics, debug] }
    metrics: { receivers: [otlp, model_metrics, hostmetrics], exporters: [dashboard, prometheus] }
"#;

/// The model vLLM's fixture page names (its `model_name` label wins over the target's `model`).
const VLLM_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// `CONFIG` with a `prometheus` receiver scraping a vLLM 0.33.0 page (the fixture, its counters advancing).
fn with_scraped_vllm() -> String {
    let scrapes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let site = common::pages::serve(move |path| match path {
        "/metrics" => {
            let n = scrapes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                common::pages::advanced_fixture("vllm", n),
            )
        }
        _ => ("404 Not Found", "text/plain", String::new()),
    });
    CONFIG
        .replace(
            "  hostmetrics:",
            &format!(
                "  prometheus:\n    interval: 500ms\n    timeout: 400ms\n    quantile_window: 10s\n    targets:\n      - {{ url: \"http://{site}/metrics\", deployment: v1, environment: prod }}\n  hostmetrics:"
            ),
        )
        .replace(
            "receivers: [otlp, model_metrics, hostmetrics]",
            "receivers: [otlp, model_metrics, hostmetrics, prometheus]",
        )
}

/// The p50 of vLLM's fixture e2e histogram, as `histogram_quantile` reads its buckets: 13 requests, 6 at or below
/// 2.5 s and 9 at or below 5 s, so the 6.5th lies a sixth of the way from 2.5 to 5 s. The page's counters all
/// grow in proportion, so every window's delta gives the same.
const VLLM_E2E_P50: f64 = 2.5 + 2.5 / 6.0;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn hostname() -> String {
    let out = Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn resource(model: &str, environment: &str, deployment: &str, replica: bool) -> Resource {
    let mut attributes = vec![
        kv("service.name", s(model)),
        kv("deployment.environment.name", s(environment)),
        kv("deployment.id", s(deployment)),
    ];
    if replica {
        // This test process plays the replica: its CPU and memory are the model's.
        attributes.push(kv("host.name", s(&hostname())));
        attributes.push(kv("process.pid", Value::IntValue(i64::from(std::process::id()))));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

fn span(n: u64, name: &str, kind: i32, start: u64, end: u64, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: [n.to_be_bytes(), [7; 8]].concat(),
        span_id: (n + 1).to_be_bytes().to_vec(),
        name: name.into(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        ..Default::default()
    }
}

/// One round of traffic: `chat-llm` (prod, v1) streams over HTTP with 2xx and 429s, tokens and an async queue;
/// `vision` (staging, v2) answers over HTTP with 500s, over gRPC and over WebSocket.
fn round(r: u64) -> ExportTraceServiceRequest {
    let now = now_ns();
    let mut chat = Vec::new();
    let mut vision = Vec::new();
    // The load swells and ebbs from round to round.
    for i in 0..24 + (r * 7) % 24 {
        let n = r * 1000 + i;
        let seconds = 0.05 + (i % 10) as f64 * 0.03;
        let start = now - (seconds * 1e9) as u64;
        let code = if i % 8 == 0 { 429 } else { 200 };
        let mut request = span(
            n * 4,
            "POST /v1/chat",
            2,
            start,
            now,
            vec![
                kv("http.response.status_code", Value::IntValue(code)),
                kv("http.request.body.size", Value::IntValue(200 + 10 * i as i64)),
                kv("http.response.body.size", Value::IntValue(2000 + 100 * i as i64)),
                kv("gen_ai.usage.input_tokens", Value::IntValue(50 + i as i64)),
                kv("gen_ai.usage.output_tokens", Value::IntValue(200 + 3 * i as i64)),
                kv(
                    "gen_ai.latency.time_in_queue",
                    Value::DoubleValue(0.01 + i as f64 * 0.001),
                ),
            ],
        );
        request.events.push(Event {
            name: "first_token".into(),
            time_unix_nano: start + (seconds * 0.2e9) as u64,
            ..Default::default()
        });
        chat.push(request);
        chat.push(span(
            n * 4 + 1,
            "predict",
            1,
            start,
            start + (seconds * 0.7e9) as u64,
            vec![],
        ));
        // Async: enqueued, then waited `i` x 20 ms in the queue; every fourth one is still waiting.
        let id = kv("messaging.message.id", s(&format!("job-{r}-{i}")));
        chat.push(span(
            n * 4 + 2,
            "async.enqueue",
            4,
            now - 1_000_000,
            now - 900_000,
            vec![id.clone()],
        ));
        if i % 4 != 0 {
            let waited = (i + 1) * 20_000_000;
            chat.push(span(n * 4 + 3, "async.queue", 1, now - waited, now, vec![id]));
        }

        let attributes = match i % 4 {
            0 => vec![kv("http.response.status_code", Value::IntValue(500))],
            1 => vec![
                kv("rpc.system", s("grpc")),
                kv("rpc.grpc.status_code", Value::IntValue(14)),
            ],
            2 => vec![
                kv("rpc.system", s("grpc")),
                kv("rpc.grpc.status_code", Value::IntValue(0)),
            ],
            _ => vec![kv("websocket.close_code", Value::IntValue(1011))],
        };
        vision.push(span(n * 4 + 500_000, "Predict", 2, start, now + 20_000_000, attributes));
    }
    let rs = |resource: Resource, spans: Vec<Span>| ResourceSpans {
        resource: Some(resource),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![
            rs(resource("chat-llm", "prod", "v1", true), chat),
            rs(resource("vision", "staging", "v2", false), vision),
        ],
    }
}

/// GPU samples as another agent's nvml receiver sends them (this machine may have no GPU).
fn gpu_samples(r: u64) -> ExportMetricsServiceRequest {
    let now = now_ns();
    let gpu = "GPU-5f0c1c2e-0000-4000-8000-00000000beef";
    let point = |v: f64, attributes: Vec<KeyValue>| NumberDataPoint {
        attributes,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    };
    let device = || {
        vec![
            kv("hw.id", s(gpu)),
            kv("hw.name", s("NVIDIA H200")),
            kv("hw.gpu.index", Value::IntValue(0)),
        ]
    };
    let gauge = |name: &str, unit: &str, points: Vec<NumberDataPoint>| Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(Data::Gauge(Gauge { data_points: points })),
        ..Default::default()
    };
    let mut process = vec![
        kv("hw.id", s(gpu)),
        kv("process.pid", Value::IntValue(4242)),
        kv("model", s("chat-llm")),
        kv("deployment", s("v1")),
        kv("environment", s("prod")),
    ];
    process.push(kv("service.instance.id", s("agent-b:4242")));
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("host.name", s("gpu-agent-b"))],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    gauge(
                        "hw.gpu.utilization",
                        "1",
                        vec![point(0.6 + 0.05 * (r % 4) as f64, device())],
                    ),
                    gauge("hw.gpu.memory.usage", "By", vec![point(40e9, device())]),
                    gauge("hw.gpu.memory.limit", "By", vec![point(141e9, device())]),
                    gauge("process.gpu.memory.usage", "By", vec![point(38e9, process)]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Sends a round every 500 ms for `rounds` rounds.
async fn traffic(grpc: String, rounds: u64) {
    let mut traces = TraceServiceClient::connect(grpc.clone()).await.unwrap();
    let mut metrics = MetricsServiceClient::connect(grpc).await.unwrap();
    for r in 0..rounds {
        traces.export(round(r)).await.unwrap();
        metrics.export(gpu_samples(r)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A WebDriver session on Debian's chromedriver and headless Chromium.
struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    /// Chromium's profile, a directory of this test's: its processes are the ones whose command line names it.
    profile: tempfile::TempDir,
}

/// The processes whose command line holds `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed before `close`: leave nothing of Chromium running either.
        for pid in processes_with(&self.profile.path().display().to_string()) {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &pid.to_string()])
                .status();
        }
        // chromedriver runs in a process group of its own, which Chromium's processes join: end them all.
        // `-s KILL --` matters: procps-ng 4.0's `kill -KILL -PGID` reads the group as `-1` and signals every
        // process the user may signal, which once ended a whole CI run.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--"])
            .arg(format!("-{}", self.driver.id()))
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(which("chromedriver"))
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let profile = tempfile::tempdir().unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{root}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let user_data = format!("--user-data-dir={}", profile.path().display());
        let mut browser = Browser {
            driver,
            base: root.clone(),
            http,
            profile,
        };
        let session = browser
            .call(
                "POST",
                "/session",
                json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
                    "binary": which("chromium"),
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--window-size=1400,1500", user_data] } } } }),
            )
            .await;
        let id = session["sessionId"].as_str().expect("a WebDriver session").to_string();
        browser.base = format!("{root}/session/{id}");
        browser
    }

    /// Ends the WebDriver session (which closes Chromium: killing chromedriver alone would leave it running),
    /// stops chromedriver, and checks that no process of this test's Chromium is left.
    async fn close(mut self) {
        let ended = self.http.delete(&self.base).send().await;
        assert!(
            ended.is_ok_and(|r| r.status().is_success()),
            "the WebDriver session ends"
        );
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &self.driver.id().to_string()])
            .status();
        let _ = self.driver.wait();
        let profile = self.profile.path().display().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_with(&profile);
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "Chromium processes left running: {left:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(&self, method: &str, path: &str, body: Json) -> Json {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "POST" => self.http.post(url).body(body.to_string()),
            _ => self.http.get(url),
        };
        let response = request.header("content-type", "application/json").send().await.unwrap();
        let value: Json = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert!(value["value"]["error"].is_null(), "WebDriver {path}: {value}");
        value["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    async fn run(&self, script: &str) -> Json {
        self.call("POST", "/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// Waits until `script` returns true (it runs in the page).
    async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.run(script).await == Json::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The panels the span workload fills (the server queue's size comes only from a scraped page).
const PANELS: [&str; 9] = [
    "volume",
    "latency",
    "size",
    "replicas",
    "cpu_memory",
    "gpu",
    "queue_time",
    "queue_size",
    "server_queue_time",
];

/// The page of a running collector: the empty state before spans, every panel drawn after, filters that change
/// what is shown, and the choices of the latency panel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_draws_every_panel_and_follows_the_filters() {
    let c = Collector::start(CONFIG);
    let page = c.address("dashboard");
    let browser = Browser::start().await;

    // Before any span: the empty state says what to send.
    browser.goto(&page).await;
    browser
        .wait_until(
            "the empty state",
            "return window.infercol.updates > 0 && !document.getElementById('empty').classList.contains('hidden')",
        )
        .await;
    let text = browser.run("return document.getElementById('empty').innerText").await;
    let text = text.as_str().unwrap();
    assert!(
        text.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && text.contains("SERVER"),
        "{text}"
    );

    // Traffic: every panel draws. (For the README's screenshot, INFERCOL_SCREENSHOT_ROUNDS sends more.)
    let rounds = std::env::var("INFERCOL_SCREENSHOT_ROUNDS").map_or(16, |r| r.parse().unwrap());
    let sender = tokio::spawn(traffic(c.grpc(), rounds));
    let all_drawn = format!(
        "return window.infercol.empty === false && {}",
        PANELS
            .iter()
            .map(|p| format!(
                "Number((document.getElementById('panel-{p}') || {{dataset: {{}}}}).dataset.points || 0) > 0"
            ))
            .collect::<Vec<_>>()
            .join(" && ")
    );
    browser.wait_until("data in every panel", &all_drawn).await;
    let hidden = browser
        .run("return document.getElementById('empty').classList.contains('hidden')")
        .await;
    assert_eq!(hidden, Json::Bool(true), "the empty state goes once spans arrive");
    // Each panel holds a uPlot chart: a canvas with the plot drawn.
    for p in PANELS {
        let canvas = browser
            .run(&format!(
                "const c = document.querySelector('#panel-{p} canvas'); return c ? c.width * c.height : 0"
            ))
            .await;
        assert!(canvas.as_f64().unwrap_or(0.0) > 0.0, "panel {p} has no chart");
    }
    sender.await.unwrap();

    let names = |panel: &str| format!("return document.getElementById('panel-{panel}').dataset.names");
    // All models: HTTP classes of both, gRPC and WebSocket codes of `vision`.
    browser
        .wait_until(
            "every status group",
            &format!("{}.includes('WebSocket 1011')", names("volume")),
        )
        .await;
    let all = browser.run(&names("volume")).await;
    let all = all.as_str().unwrap();
    for group in ["2xx", "4xx", "5xx", "gRPC UNAVAILABLE", "gRPC OK", "WebSocket 1011"] {
        assert!(all.contains(group), "volume shows {group}: {all}");
    }

    // The model filter: chat-llm has no 5xx, no gRPC and no WebSocket.
    browser
        .run("const m = document.getElementById('model'); m.value = 'chat-llm'; m.dispatchEvent(new Event('change')); return m.value")
        .await;
    browser
        .wait_until(
            "the volume of chat-llm alone",
            "return document.getElementById('panel-volume').dataset.names === '2xx|4xx'",
        )
        .await;
    assert!(
        browser
            .run("return location.search")
            .await
            .as_str()
            .unwrap()
            .contains("model=chat-llm")
    );
    // The environment filter on top: chat-llm runs in prod only, so staging leaves nothing.
    browser
        .run("const e = document.getElementById('environment'); e.value = 'staging'; e.dispatchEvent(new Event('change')); return 1")
        .await;
    browser
        .wait_until(
            "an empty selection",
            "return document.getElementById('panel-volume').dataset.points === '0'",
        )
        .await;
    // vision in staging: its 5xx, gRPC and WebSocket codes, and no 4xx.
    browser
        .run("const m = document.getElementById('model'); m.value = 'vision'; m.dispatchEvent(new Event('change')); return 1")
        .await;
    browser
        .wait_until(
            "the volume of vision alone",
            "const n = document.getElementById('panel-volume').dataset.names || ''; return n.includes('5xx') && n.includes('gRPC OK') && !n.includes('4xx')",
        )
        .await;

    // The latency choice: time to first byte of chat-llm is a fifth of its end-to-end time.
    browser
        .run(
            "for (const [id, v] of [['model', 'chat-llm'], ['environment', '']]) { const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('change')); } return 1",
        )
        .await;
    // The latest p50 the latency panel drew.
    const P50: &str = "const s = (window.infercol.panels || []).find(p => p.id === 'latency'); \
        const v = s ? s.series[0].values.filter(x => x != null) : []; return v.length ? v[v.length - 1] : null";
    browser
        .wait_until(
            "chat-llm's latency",
            &format!(
                "return document.getElementById('panel-volume').dataset.names === '2xx|4xx' && \
                 (function() {{ {P50} }})() != null"
            ),
        )
        .await;
    let end_to_end = browser.run(P50).await.as_f64().unwrap();
    browser
        .run("const c = document.querySelector('#panel-latency select.choice'); c.value = 'ttfb'; c.dispatchEvent(new Event('change')); return 1")
        .await;
    browser
        .wait_until(
            "the time to first byte",
            "return location.search.includes('latency=ttfb')",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ttfb = browser.run(P50).await.as_f64().unwrap();
    assert!(
        (ttfb / end_to_end - 0.2).abs() < 0.05,
        "time to first byte p50 {ttfb} against end-to-end {end_to_end}"
    );

    // The range picker.
    browser
        .run("document.querySelector('#ranges button[data-range=\"15m\"]').click(); return 1")
        .await;
    browser
        .wait_until("the 15m range", "return location.search.includes('range=15m')")
        .await;

    if let Ok(path) = std::env::var("INFERCOL_SCREENSHOT") {
        use base64::Engine;
        browser
            .run(
                "for (const [id, v] of [['model', ''], ['environment', '']]) { const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('change')); } document.querySelector('#panel-latency select.choice').value = 'request'; document.querySelector('#panel-latency select.choice').dispatchEvent(new Event('change')); return 1",
            )
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let png = browser.call("GET", "/screenshot", Json::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    browser.close().await;
}

/// Picks a value in one of the page's filters, as a user does.
async fn pick(browser: &Browser, filter: &str, value: &str) {
    browser
        .run(&format!(
            "const e = document.getElementById('{filter}'); e.value = {}; e.dispatchEvent(new Event('change')); return 1",
            Json::from(value)
        ))
        .await;
}

/// A model scraped from vLLM's own page beside one derived from spans: both are in the model filter, fill the
/// same panels, and each panel says where its figures come from; the scraped percentiles say how far vLLM's
/// buckets let them be off, and the p50 is the one its buckets give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scraped_vllm_model_shows_beside_a_span_derived_one() {
    let c = Collector::start(&with_scraped_vllm());
    let page = c.address("dashboard");
    let browser = Browser::start().await;
    let sender = tokio::spawn(traffic(c.grpc(), 16));
    browser.goto(&format!("{page}?range=15m")).await;
    browser
        .wait_until(
            "both models in the filter",
            &format!(
                "const o = Array.from(document.getElementById('model').options).map(o => o.value); \
                 return o.includes('chat-llm') && o.includes({})",
                Json::from(VLLM_MODEL)
            ),
        )
        .await;

    pick(&browser, "model", VLLM_MODEL).await;
    let ds = |panel: &str, key: &str| {
        format!("(document.getElementById('panel-{panel}') || {{dataset: {{}}}}).dataset.{key}")
    };
    browser
        .wait_until(
            "the scraped model's panels",
            &format!(
                "return {} === 'scraped' && ['2xx', '4xx', '5xx'].every(c => ({} || '').split('|').includes(c)) && \
                 ['latency', 'replicas', 'server_queue_time', 'server_queue_size'].every(p => Number({}) > 0) && \
                 {} === 'scraped'",
                ds("volume", "sources"),
                ds("volume", "names"),
                ds("' + p + '", "points"),
                ds("latency", "sources"),
            ),
        )
        .await;
    let note = browser
        .run("return document.querySelector('#panel-latency .note').textContent")
        .await;
    assert!(
        note.as_str()
            .unwrap()
            .contains("from the server's buckets: within 300%"),
        "vLLM's e2e layout (1920 to 7680 s) allows 300%: {note}"
    );
    let replicas = browser
        .run(
            "const p = window.infercol.panels.find(p => p.id === 'replicas'); \
             return p.series.map(s => s.name + ' ' + s.values.filter(v => v != null).pop()).join(', ')",
        )
        .await;
    assert_eq!(
        replicas, "active 1, starting 0",
        "the scraped server is one active replica"
    );
    const P50: &str = "const s = (window.infercol.panels || []).find(p => p.id === 'latency'); \
        const v = s ? s.series[0].values.filter(x => x != null) : []; return v.length ? v[v.length - 1] : null";
    let p50 = browser.run(P50).await.as_f64().unwrap();
    assert!(
        (p50 - VLLM_E2E_P50).abs() < 1e-3,
        "p50 {p50}, the buckets give {VLLM_E2E_P50}"
    );

    // The span-derived model: its own sources and the sketch's bound.
    pick(&browser, "model", "chat-llm").await;
    browser
        .wait_until(
            "chat-llm from spans",
            &format!(
                "return {} === 'spans' && {} === 'spans' && {} === '2xx|4xx'",
                ds("latency", "sources"),
                ds("volume", "sources"),
                ds("volume", "names")
            ),
        )
        .await;
    let note = browser
        .run("return document.querySelector('#panel-latency .note').textContent")
        .await;
    // From the merged histograms: within the bound of their scale (model_metrics' 160 buckets over this
    // workload's spread: scale 5, 1.1%).
    let bound = browser
        .run("return window.infercol.panels.find(p => p.id === 'latency').relative_error")
        .await
        .as_f64()
        .unwrap();
    assert!(bound <= 0.022, "{bound}");
    let shown = format!("from spans · within {:.1}%", bound * 100.0);
    assert!(note.as_str().unwrap().contains(&shown), "{note} should say {shown}");
    // All models: both sources, and the wider bound.
    pick(&browser, "model", "").await;
    browser
        .wait_until(
            "both sources",
            &format!(
                "return {} === 'spans,scraped' && {} === '3'",
                ds("latency", "sources"),
                ds("latency", "relativeError")
            ),
        )
        .await;
    sender.await.unwrap();
    browser.close().await;
}

/// One metric of `model`'s resource, from instrumentation scope `scope`.
fn one_metric(model: &str, scope: &str, metric: Metric) -> ExportMetricsServiceRequest {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s(model))],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: scope.into(),
                    ..Default::default()
                }),
                metrics: vec![metric],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Requests of `model` counted by an agent's model_metrics `ago_s` seconds ago (a delta, as a back-dated flush).
fn counted_at(model: &str, ago_s: u64, requests: f64) -> ExportMetricsServiceRequest {
    use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Sum};
    let at = now_ns() - ago_s * 1_000_000_000;
    let metric = Metric {
        name: "model.requests".into(),
        data: Some(Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                attributes: vec![kv("protocol", s("http")), kv("status_class", s("2xx"))],
                start_time_unix_nano: at - 10_000_000_000,
                time_unix_nano: at,
                value: Some(number_data_point::Value::AsDouble(requests)),
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    one_metric(model, "infercol/model_metrics", metric)
}

/// The 24h and 7d ranges draw what was counted a day and three days ago; a model with a single point shows it;
/// the step in progress is drawn and marked; a span picked in the URL (as dragging over a chart picks it) is
/// shown with the resolution of its points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longer_ranges_draw_the_history_and_a_single_point_shows() {
    let c = Collector::start(
        "receivers:\n  otlp:\n    protocols:\n      grpc: { endpoint: \"127.0.0.1:0\" }\nexporters:\n  dashboard: { endpoint: \"127.0.0.1:0\" }\nservice:\n  telemetry: { metrics: { level: none } }\n  pipelines:\n    metrics: { receivers: [otlp], exporters: [dashboard] }\n",
    );
    let mut metrics = MetricsServiceClient::connect(c.grpc()).await.unwrap();
    for (ago, n) in [(3 * 86_400, 600.0), (20 * 3_600, 300.0)] {
        metrics.export(counted_at("old", ago, n)).await.unwrap();
    }
    metrics.export(counted_at("fresh", 0, 40.0)).await.unwrap();
    let page = c.address("dashboard");
    let browser = Browser::start().await;
    let points = "Number((document.getElementById('panel-volume') || {dataset: {}}).dataset.points || -1)";
    browser.goto(&format!("{page}?model=old&range=7d")).await;
    browser
        .wait_until(
            "both days in 7d",
            &format!("return window.infercol.updates > 0 && {points} >= 2"),
        )
        .await;
    let resolution = browser.run("return window.infercol.resolution").await;
    assert_eq!(resolution, 600, "7 days back, the points are 10-minute ones");
    browser
        .run("document.querySelector('#ranges button[data-range=\"24h\"]').click(); return 1")
        .await;
    browser
        .wait_until(
            "only the last day in 24h",
            &format!("return location.search.includes('range=24h') && {points} === 1"),
        )
        .await;
    browser
        .run("document.querySelector('#ranges button[data-range=\"1h\"]').click(); return 1")
        .await;
    browser
        .wait_until(
            "nothing in the last hour",
            "return location.search.includes('range=1h') && !document.querySelector('#panel-volume .nodata').classList.contains('hidden')",
        )
        .await;

    // One point, drawn as a point, in the step still in progress.
    pick(&browser, "model", "fresh").await;
    browser
        .wait_until("the fresh model's single point", &format!("return {points} === 1"))
        .await;
    let drawn = browser
        .run(
            "const c = window.infercol.charts.volume; if (!c) return false; const show = c.series[1].points.show; \
             return (typeof show === 'function' ? show(c, 1) : show) === true",
        )
        .await;
    assert_eq!(drawn, true, "a single point is drawn as a point");
    let partial = browser
        .run("return [window.infercol.partial, document.querySelector('#panel-volume .note').textContent]")
        .await;
    assert_eq!(partial[0], true, "{partial}");
    assert!(
        partial[1].as_str().unwrap().contains("last step in progress"),
        "{partial}"
    );

    // A span three days back, as a drag over a chart picks it: the page says what it shows.
    let to = now_ns() / 1_000_000_000 - 3 * 86_400 + 1_800;
    browser
        .goto(&format!("{page}?model=old&from={}&to={to}", to - 3_600))
        .await;
    browser
        .wait_until(
            "the picked span",
            &format!("return !document.getElementById('zoom').classList.contains('hidden') && {points} === 1"),
        )
        .await;
    browser.close().await;
}

/// The JSON API on its own: the ranges and choices it accepts, and clear errors for the rest.
#[tokio::test]
async fn the_api_answers_and_refuses_clearly() {
    let c = Collector::start(CONFIG);
    let page = c.address("dashboard");
    let get = |path: &str| {
        let url = format!("{}{}", page.trim_end_matches('/'), path);
        async move {
            let r = reqwest::get(url).await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                serde_json::from_slice::<Json>(&r.bytes().await.unwrap()).unwrap_or(Json::Null),
            )
        }
    };
    let (status, labels) = get("/api/labels").await;
    assert_eq!(status, 200);
    assert_eq!(labels["empty"], true);
    traffic(c.grpc(), 4).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, labels) = get("/api/labels").await;
        if labels["labels"]["model"] == json!(["chat-llm", "vision"]) {
            assert_eq!(labels["labels"]["environment"], json!(["prod", "staging"]));
            assert_eq!(labels["labels"]["deployment"], json!(["v1", "v2"]));
            break;
        }
        assert!(Instant::now() < deadline, "labels never listed both models: {labels}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for range in ["15m", "1h", "6h"] {
        let (status, body) = get(&format!("/api/panels?range={range}&model=vision")).await;
        assert_eq!(status, 200, "{body}");
        let ids: Vec<&str> = body["panels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids[..PANELS.len()], PANELS);
        assert_eq!(ids[PANELS.len()..], ["server_queue_size"]);
        assert!(
            body["times"].as_array().unwrap().len() >= 60,
            "{range}: enough steps to draw"
        );
    }
    let (status, body) = get("/api/panels?range=2x").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("range"), "{body}");
    // Ranges past a week, spans wider than the retention or upside down: refused with the parameter named,
    // never a scan of everything.
    for bad in ["range=30d", "from=0&to=100000000000", "from=2000&to=1000", "from=1000"] {
        let (status, body) = get(&format!("/api/panels?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with("range") || error.starts_with("from"),
            "{bad}: {error}"
        );
    }
    // A span outside the retention is an empty answer.
    let (status, body) = get("/api/panels?from=1000000&to=1003600").await;
    assert_eq!(status, 200, "{body}");
    let values: Vec<&Json> = body["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["series"].as_array().unwrap())
        .flat_map(|s| s["values"].as_array().unwrap())
        .filter(|v| !v.is_null())
        .collect();
    assert!(values.is_empty(), "nothing back then: {values:?}");
    let (status, body) = get("/api/panels?latency=p99").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("latency"), "{body}");
    let (status, _) = get("/api/nothing-here").await;
    assert_eq!(status, 404);
}

/// Every query of examples/grafana/infercol.json returns data from a real Prometheus scraping the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_query_returns_data_from_prometheus() {
    let c = Collector::start(&with_scraped_vllm());
    let target = c
        .address("Prometheus metrics")
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let prometheus = Prometheus::start(&target, &[]).await;
    let sender = tokio::spawn(traffic(c.grpc(), 24));

    let dashboard: Json =
        serde_json::from_str(&std::fs::read_to_string("examples/grafana/infercol.json").unwrap()).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let options = |name: &str| -> Vec<String> {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| {
                v["options"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["value"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap()
    };
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().to_string();
            let mut expanded = vec![expr];
            for (variable, values) in [("latency", options("latency")), ("size", options("size"))] {
                expanded = expanded
                    .into_iter()
                    .flat_map(|e| {
                        if e.contains(&format!("${{{variable}}}")) {
                            values
                                .iter()
                                .map(|v| e.replace(&format!("${{{variable}}}"), v))
                                .collect()
                        } else {
                            vec![e]
                        }
                    })
                    .collect();
            }
            for e in expanded {
                let e = e
                    .replace("$model", ".*")
                    .replace("$environment", ".*")
                    .replace("$deployment", ".*")
                    .replace("$__rate_interval", "1m");
                queries.push((panel["title"].as_str().unwrap().to_string(), e));
            }
        }
    }
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing = queries.clone();
    while !missing.is_empty() {
        let mut still = Vec::new();
        for (title, q) in missing {
            let result = prometheus.query_vector(&q).await;
            let has_value = result.iter().any(|r| {
                r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v.is_finite())
            });
            if !has_value {
                still.push((title, q));
            }
        }
        missing = still;
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Grafana queries without data:\n{}",
            missing
                .iter()
                .map(|(t, q)| format!("{t}: {q}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // And the variables: every model and environment the workload used.
    let values = |q: &'static str, label: &'static str| {
        let prometheus = &prometheus;
        async move {
            let mut v: Vec<String> = prometheus
                .query_vector(q)
                .await
                .iter()
                .filter_map(|r| r["metric"][label].as_str().map(String::from))
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(
        values("group by (model) (model_requests_total)", "model").await,
        ["chat-llm", VLLM_MODEL, "vision"]
    );
    // The scraped model's percentiles in Grafana are those its buckets give, as on infercol's own page.
    let p50 = prometheus
        .wait_for(
            &format!(
                "histogram_quantile(0.5, sum by (le) (rate(model_request_duration_seconds_bucket{{model=\"{VLLM_MODEL}\"}}[1m])))"
            ),
            f64::is_finite,
        )
        .await;
    assert!(
        (p50 - VLLM_E2E_P50).abs() < 1e-3,
        "p50 {p50}, the buckets give {VLLM_E2E_P50}"
    );
    assert_eq!(
        values("group by (environment) (model_requests_total)", "environment").await,
        ["prod", "staging"]
    );
    sender.abort();
}

/// One batch of 240 requests: the page's percentiles (merged exponential buckets) and Grafana's
/// `histogram_quantile` over the Prometheus exporter's buckets of the same histogram agree within the bucket bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_grafana_agree_on_the_percentiles() {
    let c = Collector::start(CONFIG);
    let target = c
        .address("Prometheus metrics")
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let prometheus = Prometheus::start(&target, &[]).await;
    let end = now_ns();
    let spans: Vec<Span> = (0..240u64)
        .map(|i| {
            // 100 ms to 2 s, spread evenly on a log scale.
            let seconds = 0.1 * 20f64.powf(i as f64 / 239.0);
            common::server_span(
                i,
                3,
                end - (seconds * 1e9) as u64,
                end,
                vec![kv("http.response.status_code", Value::IntValue(200))],
            )
        })
        .collect();
    TraceServiceClient::connect(c.grpc())
        .await
        .unwrap()
        .export(common::traces_request("agree", spans))
        .await
        .unwrap();
    let url = format!("{}api/panels?range=15m&model=agree", c.address("dashboard"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let latency = loop {
        let body: Json = serde_json::from_slice(&reqwest::get(&url).await.unwrap().bytes().await.unwrap()).unwrap();
        let panel = body["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "latency")
            .unwrap()
            .clone();
        if panel["series"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| !v.is_null())
        {
            break panel;
        }
        assert!(Instant::now() < deadline, "the page never drew the batch");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let bound = latency["relative_error"].as_f64().unwrap();
    for (i, q) in ["0.5", "0.9", "0.95", "0.99"].iter().enumerate() {
        let page = latency["series"][i]["values"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(Json::as_f64)
            .unwrap();
        let grafana = prometheus
            .wait_for(
                &format!(
                    "histogram_quantile({q}, sum by (le) (model_request_duration_seconds_bucket{{model=\"agree\"}}))"
                ),
                f64::is_finite,
            )
            .await;
        // Each reads a value in the same exponential bucket (or the next one, as their ranks differ by one).
        assert!(
            ((page - grafana) / grafana).abs() <= 3.0 * bound,
            "p{q}: page {page}, histogram_quantile {grafana}, bound {bound}"
        );
    }
}

#[test]
#[ignore = "a helper process, started by another test"]
fn busy_replica_child() {
    common::replica::run(true);
}

#[test]
#[ignore = "a helper process, started by another test"]
fn idle_replica_child() {
    common::replica::run(false);
}

/// The size of `model`'s async queue as its service reports it (a gauge over OTLP).
fn queue_size(model: &str, size: f64) -> ExportMetricsServiceRequest {
    let metric = Metric {
        name: "model.async_queue.size".into(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                time_unix_nano: now_ns(),
                value: Some(number_data_point::Value::AsDouble(size)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    one_metric(model, "queue-service", metric)
}

/// A busy replica (one core spinning) gets the larger-instance advice beside its CPU panel, an idle one the
/// overprovisioning advice, and a queue that keeps growing the advice to add replicas; each with its evidence. A
/// model with two replicas lists both in the replica table, and picking one filters the page to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn considerations_and_the_replica_table_follow_the_evidence() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    // One spinning core is 1/cores of the machine: the high mark is well below it (a loaded CI machine may not
    // give the child its whole core every second).
    let c = Collector::start(&format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: \"127.0.0.1:0\" }}\n      http: {{ endpoint: \"127.0.0.1:0\" }}\n  hostmetrics: {{ collection_interval: 1s, sample_interval: 250ms }}\nconnectors:\n  model_metrics: {{ flush_interval: 1s }}\nexporters:\n  dashboard:\n    endpoint: \"127.0.0.1:0\"\n    considerations: {{ cpu_high: {:.3}, high_for: 8s, low_for: 8s, queue_growth_for: 8s }}\nservice:\n  telemetry: {{ metrics: {{ level: none }} }}\n  pipelines:\n    traces: {{ receivers: [otlp], exporters: [model_metrics] }}\n    metrics: {{ receivers: [otlp, hostmetrics, model_metrics], exporters: [dashboard] }}\n",
        0.3 / cores
    ));
    let _busy = common::replica::Replica::spawn("busy_replica_child", &c.address("OTLP/HTTP"), "busy-model");
    let _idle = common::replica::Replica::spawn("idle_replica_child", &c.address("OTLP/HTTP"), "idle-model");
    let _pair = [
        common::replica::Replica::spawn("idle_replica_child", &c.address("OTLP/HTTP"), "pair-model"),
        common::replica::Replica::spawn("idle_replica_child", &c.address("OTLP/HTTP"), "pair-model"),
    ];
    let grpc = c.grpc();
    let queue = tokio::spawn(async move {
        let mut metrics = MetricsServiceClient::connect(grpc).await.unwrap();
        for i in 0..60 {
            metrics.export(queue_size("queue-model", (i * 3) as f64)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let page = c.address("dashboard");
    let browser = Browser::start().await;
    browser.goto(&format!("{page}?range=15m")).await;
    let advice =
        |panel: &str| format!("(document.getElementById('panel-{panel}') || {{dataset: {{}}}}).dataset.advice || ''");
    for (model, panel, id, says) in [
        (
            "busy-model",
            "cpu_memory",
            "larger_instance",
            "consider a larger instance",
        ),
        (
            "idle-model",
            "cpu_memory",
            "overprovisioned",
            "possible overprovisioning",
        ),
        ("queue-model", "queue_size", "queue_growing", "increase max replicas"),
    ] {
        browser
            .wait_until(
                &format!("{model} in the filter"),
                &format!(
                    "return Array.from(document.getElementById('model').options).some(o => o.value === '{model}')"
                ),
            )
            .await;
        pick(&browser, "model", model).await;
        browser
            .wait_until(
                &format!("{id} beside {panel} for {model}"),
                &format!("return ({}).split(',').includes('{id}')", advice(panel)),
            )
            .await;
        let text = browser
            .run(&format!(
                "return document.querySelector('#panel-{panel} .advice').textContent"
            ))
            .await;
        let text = text.as_str().unwrap();
        assert!(
            text.contains(says) && text.contains("against") && text.contains("since"),
            "{model}: {text}"
        );
    }
    // The same advice from the API, with its evidence.
    let url = format!("{page}api/considerations?range=15m&model=busy-model");
    let deadline = Instant::now() + Duration::from_secs(30);
    let larger = loop {
        let body: Json = serde_json::from_slice(&reqwest::get(&url).await.unwrap().bytes().await.unwrap()).unwrap();
        if let Some(c) = body["considerations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "larger_instance")
        {
            break c.clone();
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let evidence = &larger["evidence"];
    assert!(
        evidence["figure"].as_f64().unwrap() >= evidence["threshold"].as_f64().unwrap(),
        "{larger}"
    );
    assert!(evidence["for_seconds"].as_f64().unwrap() >= 8.0, "{larger}");

    // The replica table: the two replicas of pair-model, each with its state and memory; picking one filters the
    // CPU and memory panel to it.
    pick(&browser, "model", "pair-model").await;
    let replicas = "(document.getElementById('panel-replicas').dataset.replicas || '')";
    browser
        .wait_until(
            "both replicas in the table",
            &format!("return {replicas}.split('|').filter(x => x).length === 2"),
        )
        .await;
    // Each replica served one request of 1 s: its rate over the range and its p95 (within 9%).
    let table = "window.infercol.panels.find(p => p.id === 'replicas').table";
    browser
        .wait_until(
            "each replica's requests",
            &format!(
                "return {table}.length === 2 && {table}.every(r => r.requests_per_s > 0 && Math.abs(r.p95 - 1) < 0.09)"
            ),
        )
        .await;
    let cells = browser
        .run("return Array.from(document.querySelectorAll('#panel-replicas table.replicas tr[data-replica] td')).map(td => td.textContent)")
        .await;
    assert!(
        cells[4].as_str().unwrap().ends_with(" s") || cells[4].as_str().unwrap().ends_with(" ms"),
        "{cells}"
    );
    const MEMORY: &str = "const p = window.infercol.panels.find(p => p.id === 'cpu_memory'); \
        const s = p.series.find(s => s.name === 'memory'); const v = s ? s.values.filter(x => x != null) : []; \
        return v.length ? v[v.length - 1] : null";
    browser
        .wait_until(
            "the pair's memory",
            &format!("return (function() {{ {MEMORY} }})() > 100 * 1024 * 1024"),
        )
        .await;
    let both = browser.run(MEMORY).await.as_f64().unwrap();
    let picked = browser
        .run("const row = document.querySelector('#panel-replicas table.replicas tr[data-replica]'); row.click(); return row.dataset.replica")
        .await;
    let picked = picked.as_str().unwrap().to_string();
    browser
        .wait_until(
            "one replica picked",
            &format!(
                "return location.search.includes('replica=') && {replicas} === {}",
                Json::from(picked.as_str())
            ),
        )
        .await;
    let one = browser.run(MEMORY).await.as_f64().unwrap();
    assert!(
        one < 0.75 * both && one > 60.0 * 1024.0 * 1024.0,
        "one replica {one} of the pair's {both}"
    );
    let row = browser
        .run("return Array.from(document.querySelectorAll('#panel-replicas table.replicas tr[data-replica] td')).map(td => td.textContent)")
        .await;
    assert_eq!(row[0], picked.as_str(), "{row}");
    assert!(row[1] == "active" || row[1] == "starting", "{row}");
    assert_eq!(
        row.as_array().unwrap().len(),
        8,
        "id, state, since, req/s, p95, CPU, memory, GPU memory: {row}"
    );
    queue.abort();
    browser.close().await;
}

/// With `source: prometheus` the page draws what a real Prometheus holds, remote-written by the collector: the
/// filters list the models, the model panels say they come from Prometheus and how far the buckets let the
/// percentiles be off, and the GPU panel shows the GPU samples that went the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reads_a_prometheus_store() {
    common::install_crypto();
    let prometheus = Prometheus::start("127.0.0.1:9", &["--web.enable-remote-write-receiver"]).await;
    let c = Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
connectors:
  model_metrics: {{ flush_interval: 300ms }}
exporters:
  prometheusremotewrite: {{ endpoint: "{url}/api/v1/write" }}
  dashboard:
    endpoint: "127.0.0.1:0"
    source: prometheus
    prometheus: {{ url: "{url}", interval: 1s }}
service:
  telemetry:
    metrics: {{ level: none }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [model_metrics] }}
    metrics: {{ receivers: [otlp, model_metrics], exporters: [prometheusremotewrite, dashboard] }}
"#,
        url = prometheus.url
    ));
    let page = c.address("dashboard");
    let browser = Browser::start().await;
    let sender = tokio::spawn(traffic(c.grpc(), 8));
    browser.goto(&format!("{page}?range=15m")).await;
    browser
        .wait_until(
            "both models in the filter",
            "const o = Array.from(document.getElementById('model').options).map(o => o.value); \
             return o.includes('chat-llm') && o.includes('vision')",
        )
        .await;
    pick(&browser, "model", "chat-llm").await;
    let ds = |panel: &str, key: &str| {
        format!("(document.getElementById('panel-{panel}') || {{dataset: {{}}}}).dataset.{key}")
    };
    browser
        .wait_until(
            "the model's panels from Prometheus",
            &format!(
                "return {} === 'prometheus' && ['2xx', '4xx'].every(c => ({} || '').split('|').includes(c)) && \
                 ['latency', 'size', 'gpu'].every(p => Number({}) > 0)",
                ds("volume", "sources"),
                ds("volume", "names"),
                ds("' + p + '", "points"),
            ),
        )
        .await;
    let note = browser
        .run("return document.querySelector('#panel-latency .note').textContent")
        .await;
    let note = note.as_str().unwrap();
    assert!(
        note.contains("from Prometheus") && note.contains("from the buckets: within"),
        "{note}"
    );
    sender.abort();
    browser.close().await;
}
