//! Fault injection and hostile input on the real binary: a backend outage loses nothing acknowledged; overload
//! gets retryable refusals with bounded memory; bad and hostile requests get the protocol's answer and the process
//! keeps serving.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Collector, free_port, kv, otlp_to_file, peak_rss, read_jsonl, read_jsonl_until, server_span, spans_of,
    traces_request,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// `n` valid SERVER spans with span ids first+1 ..= first+n, each with a payload attribute of `pad` bytes.
fn request(first: u64, n: u64, pad: usize) -> ExportTraceServiceRequest {
    let spans = (first..first + n)
        .map(|id| {
            let attributes = vec![kv("payload", any_value::Value::StringValue("x".repeat(pad)))];
            server_span(id, 3, 1_764_300_000_000_000_000, 1_764_300_000_100_000_000, attributes)
        })
        .collect();
    traces_request("m", spans)
}

fn ids_in(lines: &[serde_json::Value]) -> Vec<u64> {
    spans_of(lines)
        .iter()
        .map(|(_, s)| u64::from_str_radix(s["spanId"].as_str().unwrap(), 16).unwrap() - 1)
        .collect()
}

fn upstream(backend_port: u16, extra_processors: &str, processors: &str, queue_size: usize) -> Collector {
    Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
processors:
{extra_processors}
exporters:
  otlp:
    endpoint: "127.0.0.1:{backend_port}"
    tls: {{ insecure: true }}
    timeout: 2s
    sending_queue: {{ queue_size: {queue_size}, num_consumers: 2 }}
    retry_on_failure: {{ initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 0s }}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:0" }}
  pipelines:
    traces: {{ receivers: [otlp], processors: [{processors}], exporters: [otlp] }}
"#
    ))
}

fn backend(port: u16) -> Collector {
    Collector::start(&otlp_to_file("").replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1))
}

/// Sends requests of `n` spans from `workers` clients for `duration`; returns acknowledged ids and counts of
/// retryable and other refusals.
async fn stream(endpoint: String, workers: u64, n: u64, pad: usize, duration: Duration) -> (Vec<u64>, usize, usize) {
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let refusals: Arc<Mutex<(usize, usize)>> = Arc::default();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (endpoint, acked, refusals) = (endpoint.clone(), acked.clone(), refusals.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
            let mut i = 0u64;
            while start.elapsed() < duration {
                let first = (w * 1_000_000 + i) * n;
                i += 1;
                match client.export(request(first, n, pad)).await {
                    Ok(_) => acked.lock().unwrap().extend(first..first + n),
                    Err(status) => {
                        let retryable = status.code() == tonic::Code::Unavailable
                            && tonic_types::StatusExt::get_details_retry_info(&status).is_some();
                        let mut r = refusals.lock().unwrap();
                        if retryable { r.0 += 1 } else { r.1 += 1 }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (retryable, other) = *refusals.lock().unwrap();
    let acked = acked.lock().unwrap().clone();
    (acked, retryable, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_outage_loses_nothing_acknowledged() {
    let port = free_port();
    let up = upstream(port, "  batch: { send_batch_size: 200, timeout: 50ms }", "batch", 1000);
    // The backend is down while the client sends.
    let (acked, _, other) = stream(up.grpc(), 2, 20, 10, Duration::from_secs(2)).await;
    assert_eq!(other, 0, "only retryable refusals");
    assert!(!acked.is_empty());
    // Then it comes up: everything acknowledged arrives, exactly once.
    let down = backend(port);
    let lines = read_jsonl_until(&down.path("out.jsonl"), Duration::from_secs(60), |l| {
        spans_of(l).len() >= acked.len()
    });
    let got: Vec<u64> = ids_in(&lines);
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(
        unique,
        acked.iter().copied().collect::<BTreeSet<u64>>(),
        "every acknowledged span arrived"
    );
    assert_eq!(got.len(), acked.len(), "and none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_retryably_and_memory_stays_under_the_limit() {
    let port = free_port();
    // A backend that is down, a small queue, a memory limit: several times more offered than can be held.
    let up = upstream(
        port,
        "  memory_limiter: { check_interval: 50ms, limit_mib: 120, spike_limit_mib: 40 }",
        "memory_limiter",
        20,
    );
    let (acked, retryable, other) = stream(up.grpc(), 4, 200, 200, Duration::from_secs(4)).await;
    assert_eq!(other, 0, "every refusal is UNAVAILABLE with RetryInfo");
    assert!(retryable > 0, "overload is refused");
    let peak = peak_rss(up.child.id());
    assert!(
        peak < 120 << 20,
        "peak resident memory {} MiB stays under the 120 MiB limit",
        peak >> 20
    );
    let down = backend(port);
    let lines = read_jsonl_until(&down.path("out.jsonl"), Duration::from_secs(60), |l| {
        spans_of(l).len() >= acked.len()
    });
    let got: BTreeSet<u64> = ids_in(&lines).into_iter().collect();
    assert_eq!(got.len(), acked.len(), "each acknowledged request counted exactly");
    assert_eq!(got, acked.into_iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limiter_refuses_over_http_with_retry_after() {
    common::install_crypto();
    let c = Collector::start(
        r#"
receivers:
  otlp:
    protocols:
      http: { endpoint: "127.0.0.1:0" }
processors:
  memory_limiter: { check_interval: 50ms, limit_mib: 2, spike_limit_mib: 1 }
exporters:
  file: { path: "{dir}/out.jsonl" }
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], processors: [memory_limiter], exporters: [file] }
"#,
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/traces", c.http()))
        .header("content-type", "application/x-protobuf")
        .body(request(0, 5, 1).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a collector above its memory limit refuses");
    assert!(r.headers().contains_key("retry-after"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        read_jsonl(&c.path("out.jsonl")).is_empty(),
        "nothing refused was half-processed"
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_the_protocol_answer_and_the_process_keeps_serving() {
    common::install_crypto();
    let c = Collector::start(
        r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0", max_recv_msg_size_mib: 1 }
      http: { endpoint: "127.0.0.1:0", max_request_body_size: 1048576 }
    auth:
      bearer_token: s3cret
connectors:
  model_metrics:
    flush_interval: 500ms
    cardinality_limit: 1000
    dimensions:
      - { name: model, from: [service.name], default: unknown_service }
      - { name: user, from: [user.id], source: span }
exporters:
  debug: { verbosity: basic }
  file/metrics: { path: "{dir}/metrics.jsonl" }
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], exporters: [model_metrics, debug] }
    metrics: { receivers: [model_metrics], exporters: [file/metrics] }
"#,
    );
    let http = reqwest::Client::new();
    let url = format!("{}/v1/traces", c.http());
    let post =
        |body: Vec<u8>, content_type: &'static str, encoding: Option<&'static str>, token: Option<&'static str>| {
            let mut r = http.post(&url).header("content-type", content_type).body(body);
            if let Some(e) = encoding {
                r = r.header("content-encoding", e);
            }
            if let Some(t) = token {
                r = r.header("authorization", format!("Bearer {t}"));
            }
            r.send()
        };
    const PB: &str = "application/x-protobuf";
    let valid = request(0, 3, 10).encode_to_vec();

    // Unauthenticated and wrong token: 401 / UNAUTHENTICATED.
    assert_eq!(post(valid.clone(), PB, None, None).await.unwrap().status(), 401);
    assert_eq!(
        post(valid.clone(), PB, None, Some("guess")).await.unwrap().status(),
        401
    );
    let channel = tonic::transport::Endpoint::from_shared(c.grpc())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = TraceServiceClient::new(channel.clone())
        .export(request(0, 1, 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Oversize body: 413. A gzip bomb (1 KiB that expands to 100 MiB): 413, stopped at the limit.
    let big = request(0, 2, 2 << 20).encode_to_vec();
    assert_eq!(post(big.clone(), PB, None, Some("s3cret")).await.unwrap().status(), 413);
    let bomb = gzip(&vec![0u8; 100 << 20]);
    assert!(bomb.len() < 200 << 10);
    assert_eq!(
        post(bomb, PB, Some("gzip"), Some("s3cret")).await.unwrap().status(),
        413
    );
    let zstd_bomb = zstd::encode_all(&vec![0u8; 100 << 20][..], 3).unwrap();
    let r = post(zstd_bomb, PB, Some("zstd"), Some("s3cret")).await.unwrap();
    let status = r.status();
    let body = r.bytes().await.unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    // Over gRPC, a message over max_recv_msg_size_mib is refused.
    let mut authed = tonic::Request::new(request(0, 2, 1 << 20));
    authed
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let err = TraceServiceClient::new(channel.clone())
        .export(authed)
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
        "{err:?}"
    );

    // Truncated protobuf, invalid UTF-8 in JSON, deeply nested values: 400.
    assert_eq!(
        post(valid[..valid.len() / 2].to_vec(), PB, None, Some("s3cret"))
            .await
            .unwrap()
            .status(),
        400
    );
    let mut bad_utf8 = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":{"stringValue":""#.to_vec();
    bad_utf8.extend([0xff, 0xfe]);
    bad_utf8.extend(br#""}}]}}]}"#);
    assert_eq!(
        post(bad_utf8, "application/json", None, Some("s3cret"))
            .await
            .unwrap()
            .status(),
        400
    );
    let mut deep = AnyValue {
        value: Some(any_value::Value::StringValue("leaf".into())),
    };
    for _ in 0..200 {
        deep = AnyValue {
            value: Some(any_value::Value::ArrayValue(
                opentelemetry_proto::tonic::common::v1::ArrayValue { values: vec![deep] },
            )),
        };
    }
    let mut nested = request(0, 1, 1);
    nested.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(KeyValue {
            key: "deep".into(),
            value: Some(deep),
            ..Default::default()
        });
    let status = post(nested.encode_to_vec(), PB, None, Some("s3cret"))
        .await
        .unwrap()
        .status();
    assert!(
        status == 400 || status == 200,
        "deep nesting is refused cleanly or taken whole: {status}"
    );

    // Invalid spans inside a valid request: partial success, the rest accepted.
    let mut mixed = request(100, 4, 1);
    let spans = &mut mixed.resource_spans[0].scope_spans[0].spans;
    spans[1].span_id = vec![1, 2, 3];
    spans[2].end_time_unix_nano = spans[2].start_time_unix_nano - 1;
    let r = post(mixed.encode_to_vec(), PB, None, Some("s3cret")).await.unwrap();
    assert_eq!(r.status(), 200);
    let answer =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(r.bytes().await.unwrap())
            .unwrap();
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert!(!partial.error_message.is_empty());

    // 1,000,000 distinct attribute values: memory stays bounded, the overflow series takes the rest.
    for batch in 0..500u64 {
        let mut r = request(1_000_000 + batch * 2_000, 2_000, 0);
        for (i, s) in r.resource_spans[0].scope_spans[0].spans.iter_mut().enumerate() {
            s.attributes = vec![kv("user.id", any_value::Value::StringValue(format!("u{batch}-{i}")))];
        }
        assert_eq!(
            post(r.encode_to_vec(), PB, None, Some("s3cret"))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let lines = read_jsonl_until(&c.path("metrics.jsonl"), Duration::from_secs(30), |l| {
        l.iter().any(|x| x.to_string().contains("otel_metric_overflow"))
    });
    assert!(!lines.is_empty());
    let peak = peak_rss(c.child.id());
    // What the pipeline holds at most (64 requests in its entry, the exporter's queue) bounds the peak, not the
    // 1,000,000 values: 1,000 series per metric and one overflow series are all model_metrics keeps.
    eprintln!(
        "peak resident memory after 1,000,000 distinct values: {} MiB",
        peak >> 20
    );
    assert!(peak < 400 << 20, "bounded memory: peak {} MiB", peak >> 20);

    // Still serving: a valid request after all that is accepted and passed on (the only 3-span request).
    let r = post(valid, PB, None, Some("s3cret")).await.unwrap();
    assert_eq!(r.status(), 200);
    c.wait_for_log("debug: traces: 3 spans", Duration::from_secs(120));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_outage_with_a_persistent_queue_loses_nothing_acknowledged() {
    let port = free_port();
    let storage = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
exporters:
  otlp:
    endpoint: "127.0.0.1:{port}"
    tls: {{ insecure: true }}
    timeout: 2s
    sending_queue: {{ queue_size: 5000, num_consumers: 2, storage: "{}" }}
    retry_on_failure: {{ initial_interval: 100ms, max_interval: 300ms, max_elapsed_time: 0s }}
service:
  telemetry:
    metrics: {{ level: none }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [otlp] }}
"#,
        storage.path().display()
    );
    let mut first = Collector::start(&config);
    let (acked, _, other) = stream(first.grpc(), 2, 20, 10, Duration::from_secs(2)).await;
    assert_eq!(other, 0);
    assert!(!acked.is_empty());
    // The collector is killed outright while the backend is still down.
    first.signal("KILL");
    common::wait_exit(&mut first.child, Duration::from_secs(10));
    // Restarted on the same storage, with the backend back: everything acknowledged arrives.
    let _second = Collector::start(&config);
    let down = backend(port);
    let lines = read_jsonl_until(&down.path("out.jsonl"), Duration::from_secs(60), |l| {
        let got: BTreeSet<u64> = ids_in(l).into_iter().collect();
        acked.iter().all(|id| got.contains(id))
    });
    let got: BTreeSet<u64> = ids_in(&lines).into_iter().collect();
    for id in &acked {
        assert!(got.contains(id), "acknowledged span {id} lost");
    }
}
