//! Server profiles end to end: each fixture in `tests/fixtures/profiles/<server>/` holds the spans of one or a
//! few requests, shaped as that server's source emits them (the folder's NOTES.md names the version and the
//! files). Each case goes through the real binary over OTLP/HTTP (JSON, as Triton sends it), split into two
//! export requests, in both orders, and over OTLP/gRPC (protobuf, read through the borrowed view); the metrics
//! it emits must hold the requests of `expected.json`: counts by model, protocol, status code and class, and the
//! exact end-to-end, inference, first-byte and queue times and tokens.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Collector, read_jsonl};
use serde_json::{Value, json};

const CONFIG: &str = r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
      http: { endpoint: "127.0.0.1:0" }
connectors:
  model_metrics:
    flush_interval: 1s
exporters:
  file/metrics: { path: "{dir}/metrics.jsonl" }
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    # A traces pipeline that only derives metrics: the connector is its one exporter.
    traces: { receivers: [otlp], exporters: [model_metrics] }
    metrics: { receivers: [model_metrics], exporters: [file/metrics] }
"#;

/// Every fixture's times are based here; the test moves them to a minute ago.
const FIXTURE_BASE_NS: u64 = 1_700_000_000_000_000_000;

/// The histogram of each expected value.
const VALUES: [(&str, &str); 6] = [
    ("duration_s", "model.request.duration"),
    ("inference_s", "model.inference.duration"),
    ("ttfb_s", "model.time_to_first_byte"),
    ("queue_s", "model.queue.duration"),
    ("input_tokens", "model.input_tokens"),
    ("output_tokens", "model.output_tokens"),
];

fn folder(profile: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/profiles")
        .join(profile)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Moves every time near the fixtures' base to `to`, keeping differences; other times (a 0 some servers send)
/// stay as they are.
fn shift_times(v: &mut Value, to: u64) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if key.ends_with("UnixNano") {
                    let t: u64 = value.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                    if t.abs_diff(FIXTURE_BASE_NS) < 3_600_000_000_000 {
                        *value = json!((t + to - FIXTURE_BASE_NS).to_string());
                    }
                } else {
                    shift_times(value, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| shift_times(i, to)),
        _ => {}
    }
}

/// The request split in two: alternate spans go to each half, each under its own resource and scope.
fn halves(request: &Value) -> [Value; 2] {
    let mut out = [json!({"resourceSpans": []}), json!({"resourceSpans": []})];
    let mut n = 0;
    for rs in request["resourceSpans"].as_array().unwrap() {
        for ss in rs["scopeSpans"].as_array().unwrap() {
            let mut parts = [Vec::new(), Vec::new()];
            for span in ss["spans"].as_array().unwrap() {
                parts[n % 2].push(span.clone());
                n += 1;
            }
            for (half, spans) in out.iter_mut().zip(parts) {
                if spans.is_empty() {
                    continue;
                }
                half["resourceSpans"].as_array_mut().unwrap().push(json!({
                    "resource": rs["resource"],
                    "scopeSpans": [{ "scope": ss["scope"], "spans": spans }],
                }));
            }
        }
    }
    out
}

fn label<'a>(point: &'a Value, key: &str) -> Option<&'a str> {
    point["attributes"].as_array()?.iter().find(|kv| kv["key"] == key)?["value"]["stringValue"].as_str()
}

/// The last point of each series of a metric in the metrics file: (labels, point).
fn last_points(lines: &[Value], name: &str) -> Vec<Value> {
    let metric = lines
        .iter()
        .rev()
        .flat_map(|l| l["resourceMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|rm| rm["scopeMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
        .find(|m| m["name"] == name);
    let Some(metric) = metric else { return Vec::new() };
    let data = ["sum", "exponentialHistogram", "histogram"]
        .into_iter()
        .find_map(|k| metric[k]["dataPoints"].as_array().cloned());
    data.unwrap_or_default()
}

fn number(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0)
}

/// What the metrics say, per model: request counts by (protocol, status_code, status_class), and each value's
/// count and sum.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    requests: BTreeMap<(String, String, String, String), u64>,
    values: BTreeMap<(String, &'static str), (u64, f64)>,
}

fn seen(lines: &[Value]) -> Seen {
    let mut out = Seen::default();
    for p in last_points(lines, "model.requests") {
        let key = ["model", "protocol", "status_code", "status_class"].map(|k| label(&p, k).unwrap().to_string());
        let [m, pr, c, k] = key;
        *out.requests.entry((m, pr, c, k)).or_default() += number(&p["asDouble"]).round() as u64;
    }
    for (_, metric) in VALUES {
        for p in last_points(lines, metric) {
            let model = label(&p, "model").unwrap().to_string();
            let e = out.values.entry((model, metric)).or_default();
            e.0 += number(&p["count"]) as u64;
            e.1 += number(&p["sum"]);
        }
    }
    out
}

/// What `expected.json` says for one case, in the same form; a null model is the first resource's service.name.
fn expected(case: &[Value], default_model: &str) -> Seen {
    let mut out = Seen::default();
    for r in case {
        let model = r["model"].as_str().unwrap_or(default_model).to_string();
        let key = ["protocol", "status_code", "status_class"].map(|k| r[k].as_str().unwrap().to_string());
        let [pr, c, k] = key;
        *out.requests.entry((model.clone(), pr, c, k)).or_default() += 1;
        for (field, metric) in &VALUES {
            if let Some(v) = r[*field].as_f64() {
                let e = out.values.entry((model.clone(), *metric)).or_default();
                e.0 += 1;
                e.1 += v;
            }
        }
    }
    out
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) {
    let response = client
        .post(format!("{url}/v1/traces"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
}

/// OTLP/gRPC: the same request as protobuf (read through the collector's borrowed view, not the owned types).
async fn export(url: &str, body: &Value) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let request: ExportTraceServiceRequest = serde_json::from_value(body.clone()).unwrap();
    let mut client = TraceServiceClient::connect(url.to_string()).await.unwrap();
    let response = client.export(request).await.unwrap().into_inner();
    assert!(
        response.partial_success.as_ref().is_none_or(|p| p.rejected_spans == 0),
        "{response:?}"
    );
}

/// Runs one case in one order through a fresh collector, and reads what it emitted.
async fn run(parts: &[Value], grpc: bool) -> (Seen, String) {
    let mut c = Collector::start(CONFIG);
    let client = reqwest::Client::new();
    for part in parts {
        if grpc {
            export(&c.grpc(), part).await;
        } else {
            post(&client, &c.http(), part).await;
        }
    }
    let metrics = c.path("metrics.jsonl");
    let (status, log) = c.stop();
    assert!(status.success(), "{log}");
    (seen(&read_jsonl(&metrics)), log)
}

fn close(a: &Seen, b: &Seen) -> bool {
    a.requests == b.requests
        && a.values.len() == b.values.len()
        && a.values
            .iter()
            .zip(&b.values)
            .all(|((ka, (na, sa)), (kb, (nb, sb)))| ka == kb && na == nb && (sa - sb).abs() <= 1e-6 + 1e-6 * sb.abs())
}

async fn check_profile(profile: &str) {
    let dir = folder(profile);
    let expected_file: Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let cases = expected_file["cases"].as_object().unwrap();
    assert!(cases.len() >= 2, "{profile}: a success and a failure at least");
    for (case, requests) in cases {
        let mut request: Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{case}.json"))).unwrap())
            .unwrap_or_else(|e| panic!("{profile}/{case}.json: {e}"));
        shift_times(&mut request, now_ns() - 60_000_000_000);
        let service = request["resourceSpans"][0]["resource"]["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|kv| kv["key"] == "service.name"))
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .unwrap_or("unknown_service")
            .to_string();
        let want = expected(requests.as_array().unwrap(), &service);
        let [a, b] = halves(&request);
        let orders = [
            ("whole", vec![request.clone()], false),
            ("a-b", vec![a.clone(), b.clone()], false),
            ("b-a", vec![b.clone(), a.clone()], false),
            ("b-a over gRPC", vec![b, a], true),
        ];
        for (order, parts, grpc) in orders {
            let (got, log) = run(&parts, grpc).await;
            assert!(
                close(&got, &want),
                "{profile}/{case} ({order}):\n got  {got:?}\n want {want:?}\n{log}"
            );
        }
    }
}

macro_rules! profile_tests {
    ($($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            check_profile(stringify!($name)).await;
        }
    )*};
}

profile_tests!(
    vllm,
    triton,
    tgi,
    sglang,
    ray_serve,
    litellm,
    asgi,
    grpc_python,
    openllmetry,
    openinference
);

/// With `spans.profiles: []`, the generic rules read Triton's three SERVER spans: the stages under a local parent
/// are still no requests of their own once the parent is seen (Triton sets no is-remote bits), but nothing knows
/// the model or the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_profiles_triton_is_one_request_per_trace_still() {
    let mut request: Value =
        serde_json::from_slice(&std::fs::read(folder("triton").join("success_http.json")).unwrap()).unwrap();
    shift_times(&mut request, now_ns() - 60_000_000_000);
    let mut c =
        Collector::start(&CONFIG.replace("flush_interval: 1s", "flush_interval: 1s\n    spans: { profiles: [] }"));
    post(&reqwest::Client::new(), &c.http(), &request).await;
    let metrics = c.path("metrics.jsonl");
    let (status, log) = c.stop();
    assert!(status.success(), "{log}");
    let got = seen(&read_jsonl(&metrics));
    let total: u64 = got.requests.values().sum();
    assert_eq!(total, 1, "{got:?}");
    assert!(
        got.requests
            .keys()
            .all(|(model, ..)| model == "triton-inference-server")
    );
    assert!(!got.values.keys().any(|(_, m)| *m == "model.queue.duration"));
}
