//! The attacks of the security review, each run against the real binary on loopback as a hostile client or a
//! broken backend would run it. Each failed before its fix; peak resident memory is printed and held under a
//! generous ceiling.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{BIN, Collector, kv, server_span, traces_request};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// The binary under attack: this build, or another named by `INFERCOL_ATTACK_BIN` (to show that an attack worked
/// on an earlier build).
fn bin() -> String {
    std::env::var("INFERCOL_ATTACK_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// Peak resident memory of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    common::peak_rss(pid) >> 20
}

/// Prints a process's peak resident memory and holds it under `ceiling_mib`.
fn assert_peak(pid: u32, ceiling_mib: u64) {
    let peak = peak_rss_mib(pid);
    println!("peak resident memory: {peak} MiB");
    assert!(peak < ceiling_mib, "peak {peak} MiB, over {ceiling_mib} MiB");
}

/// otlp (gRPC on a free port, with `grpc_options`) -> debug: the collector the gRPC attacks hit.
fn grpc_to_debug(grpc_options: &str) -> String {
    format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: \"127.0.0.1:0\"{grpc_options} }}\nexporters:\n  \
         debug:\nservice:\n  telemetry:\n    metrics: {{ level: none }}\n  pipelines:\n    \
         traces: {{ receivers: [otlp], exporters: [debug] }}\n"
    )
}

/// CPU seconds a process has used (user + system), from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn one_span_request(service: &str, id: u64) -> ExportTraceServiceRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    traces_request(service, vec![server_span(id, 7, now - 50_000_000, now, vec![])])
}

/// Runs `infercol validate` on `yaml` with extra environment variables; returns (success, stdout + stderr).
fn validate(yaml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut command = Command::new(bin());
    command.arg("validate").arg("--config").arg(&path);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Starts the collector on `yaml` with extra environment variables and `ulimit -n` set to `open_files` (soft and
/// hard) when given.
fn start_with(yaml: &str, env: &[(&str, &str)], open_files: Option<u32>) -> Collector {
    Collector::start_as(yaml, |config| {
        let limit = open_files.map(|n| format!("ulimit -n {n} && ")).unwrap_or_default();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{limit}exec \"$0\" --config \"$1\""))
            .arg(bin())
            .arg(config);
        for (k, v) in env {
            command.env(k, v);
        }
        command
    })
}

fn http_get(url: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut request = client.get(url);
    if let Some(t) = token {
        request = request.header("Authorization", t);
    }
    let response = request.send().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.text().unwrap_or_default()))
}

// 1 and 9: authentication that an unset variable cannot switch off, one scheme rule everywhere.

const AUTHENTICATED: &str = r#"
receivers:
  otlp:
    auth: { bearer_token: ${env:INFERCOL_ATTACK_TOKEN} }
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
      http: { endpoint: "127.0.0.1:0" }
exporters:
  debug:
  prometheus:
    endpoint: "127.0.0.1:0"
    auth: { bearer_token: ${env:INFERCOL_ATTACK_TOKEN} }
service:
  telemetry:
    metrics:
      address: "127.0.0.1:0"
      auth: { bearer_token: ${env:INFERCOL_ATTACK_TOKEN} }
  pipelines:
    traces: { receivers: [otlp], exporters: [debug] }
    metrics: { receivers: [otlp], exporters: [prometheus] }
"#;

#[test]
fn an_unset_token_is_a_config_error_at_validate_and_at_start() {
    let (valid, text) = validate(AUTHENTICATED, &[]);
    assert!(
        !valid,
        "validate must refuse an empty token from an unset variable:\n{text}"
    );
    assert!(text.contains("bearer_token"), "the error names the key:\n{text}");
    assert!(
        text.contains("INFERCOL_ATTACK_TOKEN is not set") || text.contains("environment variable"),
        "and says why:\n{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, AUTHENTICATED).unwrap();
    let out = Command::new(bin()).arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success(), "the collector does not start without its token");
    // The unset variable is also reported as a warning when the rest is valid.
    let yaml = "receivers:\n  otlp:\n    protocols:\n      grpc: { endpoint: \"127.0.0.1:0\" }\nexporters:\n  prometheus:\n    endpoint: \"127.0.0.1:0\"\n    namespace: \"${env:INFERCOL_ATTACK_UNSET}\"\nservice:\n  pipelines:\n    metrics: { receivers: [otlp], exporters: [prometheus] }\n";
    let (valid, text) = validate(yaml, &[]);
    assert!(valid, "{text}");
    assert!(
        text.contains("warning: line 8: environment variable INFERCOL_ATTACK_UNSET is not set"),
        "{text}"
    );
}

#[test]
fn an_environment_value_cannot_add_configuration() {
    // The value of GRPC tries to add an HTTP listener on every interface below the gRPC endpoint.
    let yaml = "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: ${env:GRPC}\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces: { receivers: [otlp], exporters: [debug] }\n";
    let injected = "127.0.0.1:0\n      http:\n        endpoint: 0.0.0.0:0";
    let (valid, text) = validate(yaml, &[("GRPC", injected)]);
    assert!(!valid, "the value stays one scalar, which is no address:\n{text}");
    assert!(text.contains("protocols.grpc.endpoint"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_the_same_over_http_and_grpc() {
    let c = start_with(AUTHENTICATED, &[("INFERCOL_ATTACK_TOKEN", "s3cret")], None);
    let http = c.http();
    let client = reqwest::Client::new();
    let body = one_span_request("auth", 1).encode_to_vec();
    for (header, expected) in [
        (None, 401),
        (Some("Bearer s3cret"), 200),
        (Some("bearer s3cret"), 200),
        (Some("BEARER s3cret"), 200),
        (Some(" Bearer  s3cret "), 200),
        (Some("Basic s3cret"), 401),
        (Some("Bearer wrong"), 401),
    ] {
        let mut request = client
            .post(format!("{http}/v1/traces"))
            .header("Content-Type", "application/x-protobuf")
            .body(body.clone());
        if let Some(h) = header {
            request = request.header("Authorization", h);
        }
        let status = request.send().await.unwrap().status().as_u16();
        assert_eq!(status, expected, "HTTP with {header:?}");
    }
    let channel = tonic::transport::Endpoint::from_shared(c.grpc())
        .unwrap()
        .connect()
        .await
        .unwrap();
    for (header, ok) in [
        (None, false),
        (Some("BEARER s3cret"), true),
        (Some(" Bearer s3cret"), true),
        (Some("bearer\ts3cret"), true),
        (Some("Basic s3cret"), false),
    ] {
        let mut request = tonic::Request::new(one_span_request("auth", 2));
        if let Some(h) = header {
            request.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        let result = TraceServiceClient::new(channel.clone()).export(request).await;
        match result {
            Ok(_) => assert!(ok, "gRPC with {header:?} must be refused"),
            Err(status) => {
                assert!(!ok, "gRPC with {header:?} must pass: {status:?}");
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
            }
        }
    }
    // The Prometheus endpoint and the collector's own metrics take the same token.
    let prometheus = c.address("Prometheus metrics");
    let telemetry = c.address("own metrics");
    for url in [prometheus, telemetry] {
        let url = url.clone();
        let (refused, allowed) = tokio::task::spawn_blocking(move || {
            (
                http_get(&url, None).unwrap().0,
                http_get(&url, Some("bearer s3cret")).unwrap().0,
            )
        })
        .await
        .unwrap();
        assert_eq!((refused, allowed), (401, 200));
    }
    assert_peak(c.child.id(), 200);
}

// 2: idle and slow sockets cannot take every descriptor.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_cannot_starve_the_other_listeners() {
    let _ = rlimit::increase_nofile_limit(8192);
    let yaml = r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
      http: { endpoint: "127.0.0.1:0", read_header_timeout: 2s }
exporters:
  debug:
  prometheus: { endpoint: "127.0.0.1:0" }
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], exporters: [debug] }
    metrics: { receivers: [otlp], exporters: [prometheus] }
"#;
    let c = start_with(yaml, &[], Some(1024));
    let http = c.address("OTLP/HTTP");
    let (grpc, prometheus, telemetry) = (c.grpc(), c.address("Prometheus metrics"), c.address("own metrics"));
    // 1,100 sockets on the OTLP/HTTP port, each holding half a request header (a slow client).
    let mut hostile = Vec::new();
    for _ in 0..1100 {
        if let Ok(mut s) = TcpStream::connect_timeout(&http.parse().unwrap(), Duration::from_millis(500)) {
            let _ = s.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n");
            hostile.push(s);
        }
    }
    assert!(hostile.len() >= 1000, "the attack opened {} sockets", hostile.len());
    let pid = c.child.id();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    // The other listeners serve at once.
    let mut traces = TraceServiceClient::connect(grpc).await.unwrap();
    traces
        .export(one_span_request("starved", 1))
        .await
        .expect("gRPC serves");
    for url in [prometheus, telemetry] {
        let (status, _) = tokio::task::spawn_blocking(move || http_get(&url, None).expect("serves"))
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let seconds = started.elapsed().as_secs_f64();
    println!("CPU while 1,100 sockets were held: {cpu:.2} s in {seconds:.1} s");
    assert!(
        cpu < 0.5 * seconds,
        "no hot accept loop: {cpu:.2} CPU seconds in {seconds:.1} s"
    );
    // The attacked listener itself serves a real client once the header timeout has closed the slow ones.
    let url = format!("http://{http}/v1/traces");
    let body = one_span_request("starved", 2).encode_to_vec();
    let served = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        while Instant::now() < deadline {
            let sent = client
                .post(&url)
                .header("Content-Type", "application/x-protobuf")
                .body(body.clone())
                .send();
            if sent.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(served, "the OTLP/HTTP listener serves again while the attack lasts");
    println!(
        "the attacked OTLP/HTTP listener served a real client after {:?}",
        started.elapsed()
    );
    // The slow clients were cut by the header timeout.
    let mut closed = 0;
    for s in &mut hostile[..100] {
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let mut buf = [0u8; 256];
        if s.read(&mut buf).is_ok() {
            closed += 1;
        }
    }
    assert!(closed > 0, "slow sockets are answered or closed");
    let peak = peak_rss_mib(pid);
    println!("peak resident memory: {peak} MiB");
    assert!(peak < 300, "peak {peak} MiB");
}

// 3 and 10: gRPC streams, unfinished messages, framing.

/// A raw HTTP/2 connection to the gRPC port.
async fn h2_connect(address: &str) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.unwrap()
}

fn export_request(content_type: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri("http://localhost/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The grpc-status of an answer (headers for trailers-only answers, else trailers).
async fn grpc_status(response: h2::client::ResponseFuture) -> Option<String> {
    let response = response.await.ok()?;
    if let Some(s) = response.headers().get("grpc-status") {
        return Some(s.to_str().ok()?.to_string());
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.ok()??;
    Some(trailers.get("grpc-status")?.to_str().ok()?.to_string())
}

/// Sends `data` on `stream` as flow control allows, for at most `limit`.
async fn push(stream: &mut h2::SendStream<bytes::Bytes>, mut data: bytes::Bytes, limit: Duration, end: bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let capacity = tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| stream.poll_capacity(cx))).await;
        let Ok(Some(Ok(n))) = capacity else { return };
        let chunk = data.split_to(n.min(data.len()));
        if stream.send_data(chunk, end && data.is_empty()).is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_grpc_messages_cannot_hold_memory() {
    let c = start_with(&grpc_to_debug(", read_timeout: 4s"), &[], None);
    let address = c.address("OTLP/gRPC");
    let mut send = h2_connect(&address).await;
    // One empty export first, so that the server's SETTINGS have arrived.
    let (response, mut stream) = send.send_request(export_request("application/grpc"), false).unwrap();
    push(
        &mut stream,
        bytes::Bytes::from_static(&[0, 0, 0, 0, 0]),
        Duration::from_secs(5),
        true,
    )
    .await;
    assert_eq!(grpc_status(response).await.as_deref(), Some("0"));
    let send = send.ready().await.unwrap();
    let streams = send.current_max_send_streams();
    println!("the server allows {streams} concurrent streams");
    assert!(
        streams <= 100,
        "SETTINGS_MAX_CONCURRENT_STREAMS is advertised: {streams}"
    );
    // 200 streams, each declaring a message just under 4 MiB and sending all of it but the last 64 KiB.
    let declared: u32 = (4 << 20) - 64;
    let mut header = vec![0u8];
    header.extend_from_slice(&declared.to_be_bytes());
    let mut prefix = header.clone();
    prefix.extend(std::iter::repeat_n(0u8, declared as usize - (64 << 10)));
    let prefix = bytes::Bytes::from(prefix);
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (mut send, prefix, statuses) = (send.clone(), prefix.clone(), statuses.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_secs(8), send.ready()).await else {
                return;
            };
            send = ready;
            let Ok((response, mut stream)) = send.send_request(export_request("application/grpc"), false) else {
                return;
            };
            push(&mut stream, prefix, Duration::from_secs(8), false).await;
            if let Ok(Some(status)) = tokio::time::timeout(Duration::from_secs(10), grpc_status(response)).await {
                statuses.lock().unwrap().push(status);
            }
            drop(stream);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let peak = peak_rss_mib(c.child.id());
    println!("peak resident memory with 200 unfinished 4 MiB messages: {peak} MiB");
    assert!(
        peak < 300,
        "unfinished messages are bounded by the request buffer: peak {peak} MiB"
    );
    let statuses = statuses.lock().unwrap().clone();
    assert!(
        statuses.iter().any(|s| s == "4"),
        "stalled messages are cut by the read timeout with DEADLINE_EXCEEDED: {statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s == "14"),
        "messages that find the request buffer full are refused retryably: {statuses:?}"
    );
    // The receiver serves a real client afterwards.
    let mut traces = TraceServiceClient::connect(c.grpc()).await.unwrap();
    traces
        .export(one_span_request("after", 1))
        .await
        .expect("serves after the attack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_framing_is_enforced() {
    let c = start_with(&grpc_to_debug(""), &[], None);
    let address = c.address("OTLP/gRPC");
    let message = one_span_request("framing", 1).encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    // Two messages in a unary call.
    let mut send = h2_connect(&address).await;
    let (response, mut stream) = send.send_request(export_request("application/grpc"), false).unwrap();
    let twice = bytes::Bytes::from([framed.clone(), framed.clone()].concat());
    push(&mut stream, twice, Duration::from_secs(5), true).await;
    let status = grpc_status(response).await;
    assert!(
        status.as_deref().is_some_and(|s| s != "0"),
        "two messages in a unary call are refused: {status:?}"
    );
    // One message is fine.
    let mut send = send.ready().await.unwrap();
    let (response, mut stream) = send.send_request(export_request("application/grpc"), false).unwrap();
    push(
        &mut stream,
        bytes::Bytes::from(framed.clone()),
        Duration::from_secs(5),
        true,
    )
    .await;
    assert_eq!(grpc_status(response).await.as_deref(), Some("0"));
    // JSON on the gRPC port is not gRPC.
    let mut send = send.ready().await.unwrap();
    let (response, mut stream) = send.send_request(export_request("application/json"), false).unwrap();
    push(
        &mut stream,
        bytes::Bytes::from_static(b"{}"),
        Duration::from_secs(5),
        true,
    )
    .await;
    let response = response.await.unwrap();
    assert_eq!(response.status(), 415, "a non-gRPC content type gets 415");
    assert_peak(c.child.id(), 200);
}

// 7: an oversized message is refused with a code that clients do not retry.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_gets_resource_exhausted_without_retry_info() {
    let c = start_with(&grpc_to_debug(", max_recv_msg_size_mib: 1"), &[], None);
    let big = || {
        let attributes = vec![kv("payload", Value::StringValue("x".repeat(2 << 20)))];
        traces_request("big", vec![server_span(1, 7, 1, 2, attributes)])
    };
    for compressed in [false, true] {
        let mut client = TraceServiceClient::connect(c.grpc())
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20);
        if compressed {
            client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        let status = client.export(big()).await.expect_err("too large");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("max_recv_msg_size_mib"), "{status:?}");
        assert!(tonic_types::StatusExt::get_details_retry_info(&status).is_none());
    }
    assert_peak(c.child.id(), 200);
}

// 4: label values have a length limit, and the page a size limit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_label_values_are_cut_and_counted() {
    let yaml = r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
connectors:
  model_metrics: { flush_interval: 300ms }
exporters:
  debug:
  prometheus: { endpoint: "127.0.0.1:0" }
  prometheus/small: { endpoint: "127.0.0.1:0", max_page_bytes: 4096 }
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], exporters: [model_metrics, debug] }
    metrics: { receivers: [model_metrics], exporters: [prometheus, prometheus/small] }
"#;
    let c = start_with(yaml, &[], None);
    let mut traces = TraceServiceClient::connect(c.grpc()).await.unwrap();
    for i in 0..60u64 {
        let name = format!("{i:03}{}", "m".repeat(256 << 10));
        traces.export(one_span_request(&name, i)).await.unwrap();
    }
    let pages: Vec<String> = c
        .log()
        .lines()
        .filter(|l| l.contains("Prometheus metrics on "))
        .map(|l| {
            l[l.find("http://").unwrap()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(pages.len(), 2);
    let telemetry = c.address("own metrics");
    let (page, small, own) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, page) = http_get(&pages[0], None).unwrap();
            if page.matches("model_requests_total{").count() >= 60 || Instant::now() > deadline {
                let (_, small) = http_get(&pages[1], None).unwrap();
                let (_, own) = http_get(&telemetry, None).unwrap();
                return (page, small, own);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    println!("page of 60 models with 256 KiB names: {} bytes", page.len());
    assert!(
        page.matches("model_requests_total{").count() >= 60,
        "every model is counted"
    );
    assert!(page.len() < 2 << 20, "the page stays small: {} bytes", page.len());
    for line in page.lines().filter(|l| l.starts_with("model_requests_total{")) {
        let model = &line[line.find("model=\"").unwrap() + 7..];
        let model = &model[..model.find('"').unwrap()];
        assert!(
            model.len() <= 256 && model.ends_with("..."),
            "cut with a marker: {} bytes",
            model.len()
        );
    }
    assert!(
        own.lines()
            .any(|l| l.contains("reason=\"label_truncated\"") && !l.ends_with(" 0")),
        "the cuts are counted:\n{own}"
    );
    assert!(
        small.len() <= 4096,
        "max_page_bytes bounds the page: {} bytes",
        small.len()
    );
    c.wait_for_log("max_page_bytes", Duration::from_secs(5));
    let peak = peak_rss_mib(c.child.id());
    println!("peak resident memory: {peak} MiB");
    assert!(peak < 300, "peak {peak} MiB");
}

// 5: a zero retry delay does not make a hot loop, and shutdown does not wait on a backend that keeps refusing.

/// An HTTP/1.1 backend answering every request with 429 and `Retry-After: 0`; counts the requests.
fn refusing_backend() -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let mut pending = Vec::new();
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    // One answer per request whose headers and body have arrived.
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if pending.len() < end + 4 + length {
                            break;
                        }
                        pending.drain(..end + 4 + length);
                        counted.fetch_add(1, Ordering::SeqCst);
                        let answer = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n";
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, calls)
}

/// A gRPC backend answering every export UNAVAILABLE with a RetryInfo of 0 s; counts the calls.
async fn refusing_grpc_backend() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let refusal = <tonic::Status as tonic_types::StatusExt>::with_error_details(
        tonic::Code::Unavailable,
        "overloaded",
        tonic_types::ErrorDetails::with_retry_info(Some(Duration::ZERO)),
    )
    .into_http::<tonic::body::Body>();
    let headers = refusal.headers().clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (counted, headers) = (counted.clone(), headers.clone());
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    drop(request);
                    let mut response = http::Response::new(());
                    *response.headers_mut() = headers.clone();
                    let _ = respond.send_response(response, true);
                }
            });
        }
    });
    (port, calls)
}

/// The exporter section for a backend on `port` that always refuses with a zero delay.
async fn zero_delay_backend(grpc: bool) -> (String, Arc<AtomicUsize>, &'static str) {
    if grpc {
        let (port, calls) = refusing_grpc_backend().await;
        let exporter = format!(
            "otlp:\n    endpoint: \"127.0.0.1:{port}\"\n    tls: {{ insecure: true }}\n    compression: none\n    \
             retry_on_failure: {{ initial_interval: 1s, max_elapsed_time: 0s }}"
        );
        (exporter, calls, "UNAVAILABLE with RetryInfo 0 s")
    } else {
        let (port, calls) = refusing_backend();
        let exporter = format!(
            "otlphttp:\n    endpoint: \"http://127.0.0.1:{port}\"\n    compression: none\n    \
             retry_on_failure: {{ initial_interval: 1s, max_elapsed_time: 0s }}"
        );
        (exporter, calls, "429 with Retry-After: 0")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_retry_delay_is_no_hot_loop_and_shutdown_does_not_wait_for_it() {
    for grpc in [false, true] {
        let (exporter, calls, answer) = zero_delay_backend(grpc).await;
        let id = exporter.split(':').next().unwrap().to_string();
        let yaml = format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: \"127.0.0.1:0\" }}\nexporters:\n  \
             {exporter}\nservice:\n  telemetry:\n    metrics: {{ level: none }}\n  pipelines:\n    \
             traces: {{ receivers: [otlp], exporters: [{id}] }}\n"
        );
        let mut c = start_with(&yaml, &[], None);
        let mut traces = TraceServiceClient::connect(c.grpc()).await.unwrap();
        traces.export(one_span_request("retry", 1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let attempts = calls.load(Ordering::SeqCst);
        println!("attempts in 5 s for one request answered {answer}: {attempts}");
        assert!(
            (1..=10).contains(&attempts),
            "{answer}: backed off, not a hot loop: {attempts} calls"
        );
        assert_peak(c.child.id(), 200);
        let stopping = Instant::now();
        let (status, log) = c.stop();
        let took = stopping.elapsed();
        println!("shutdown with a backend that keeps answering {answer} took {took:?}");
        assert!(status.success(), "a clean exit:\n{log}");
        assert!(
            took < Duration::from_secs(10),
            "shutdown did not wait out its deadline: {took:?}"
        );
        assert!(
            log.contains("dropping data"),
            "the refused request is reported as dropped:\n{log}"
        );
    }
}

// 8: exporter queues bounded in bytes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_bounded_in_bytes_holds_a_hung_backend_to_its_size() {
    // A backend that accepts connections and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for s in hung.incoming().flatten() {
            holder.lock().unwrap().push(s);
        }
    });
    let yaml = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
exporters:
  otlp:
    endpoint: "127.0.0.1:{port}"
    tls: {{ insecure: true }}
    compression: none
    timeout: 30s
    sending_queue: {{ sizer: bytes, queue_size: 33554432, num_consumers: 2 }}
service:
  telemetry:
    metrics: {{ level: none }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [otlp] }}
"#
    );
    let c = start_with(&yaml, &[], None);
    let (mut accepted, mut refused) = (0usize, 0usize);
    let mut traces = TraceServiceClient::connect(c.grpc())
        .await
        .unwrap()
        .max_encoding_message_size(8 << 20);
    for i in 0..100u64 {
        let attributes = vec![kv("payload", Value::StringValue("x".repeat((4 << 20) - 4096)))];
        let request = traces_request("queued", vec![server_span(i, 7, 1, 2, attributes)]);
        match traces.export(request).await {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::Unavailable,
                    "a full queue refuses retryably"
                );
                refused += 1;
            }
        }
    }
    let peak = peak_rss_mib(c.child.id());
    println!("100 requests of 4 MiB to a hung backend: {accepted} accepted, {refused} refused; peak {peak} MiB");
    assert!(refused > 0, "the queue filled up");
    // The queue's 32 MiB (8 requests, exports in flight included), the pipeline's entry (64 requests), and one request
    // in the hands of each of the pipeline's workers (one per runtime thread, one per core).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert!(
        accepted <= 8 + 64 + workers,
        "{accepted} accepted: more than the queue and the pipeline hold"
    );
    assert!(peak < 800, "peak {peak} MiB");
    // Shutdown with a full queue and a backend that never answers: bounded by the exporters' drain, not the deadline.
    let mut c = c;
    let stopping = Instant::now();
    let (status, log) = c.stop();
    let took = stopping.elapsed();
    println!("shutdown with a full queue and a hung backend took {took:?}");
    assert!(status.success(), "a clean exit:\n{log}");
    assert!(took < Duration::from_secs(25), "shutdown took {took:?}");
}

// 6: the file exporter never leaves a partial record on a full disk.

#[test]
fn a_full_disk_leaves_no_partial_record_in_the_file() {
    // A 256 KiB tmpfs of its own (a user and mount namespace), nearly filled by a ballast file.
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("disk");
    std::fs::create_dir(&mount).unwrap();
    let config = dir.path().join("config.yaml");
    let yaml = r#"
receivers:
  otlp:
    protocols:
      http: { endpoint: "127.0.0.1:0" }
exporters:
  file: { path: "MOUNT/spans.jsonl" }
service:
  telemetry:
    metrics: { level: none }
  pipelines:
    traces: { receivers: [otlp], exporters: [file] }
"#
    .replace("MOUNT", mount.to_str().unwrap());
    std::fs::write(&config, yaml).unwrap();
    let script = "mount -t tmpfs -o size=256k tmpfs \"$1\" && dd if=/dev/zero of=\"$1/ballast\" bs=1k count=200 \
                  2>/dev/null && exec \"$0\" --config \"$2\"";
    let child = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
        .arg(bin())
        .arg(&mount)
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs");
    let c = Collector::watch(child, tempfile::tempdir().unwrap());
    let http = c.http();
    // The process's view of its tmpfs, from outside its mount namespace.
    let inside = std::path::PathBuf::from(format!("/proc/{}/root{}", c.child.id(), mount.display()));
    let client = reqwest::blocking::Client::new();
    let mut sent = 0u64;
    for i in 0..60u64 {
        let attributes = vec![kv("payload", Value::StringValue(format!("{i:04}").repeat(500)))];
        let body = traces_request("disk", vec![server_span(i, 7, 1, 2, attributes)]).encode_to_vec();
        let response = client
            .post(format!("{http}/v1/traces"))
            .header("Content-Type", "application/x-protobuf")
            .body(body)
            .send()
            .unwrap();
        if response.status().is_success() {
            sent += 1;
        }
    }
    assert!(sent > 0);
    c.wait_for_log("No space left on device", Duration::from_secs(20));
    // Room again: the exporter's retries write what waited.
    std::fs::remove_file(inside.join("ballast")).unwrap();
    let file = inside.join("spans.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    let lines = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() as u64 >= sent || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let unreadable = lines
        .iter()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
        .count();
    println!(
        "{sent} acknowledged requests, {} lines, {unreadable} unreadable",
        lines.len()
    );
    assert_peak(c.child.id(), 200);
    assert_eq!(unreadable, 0, "no partial record");
    assert_eq!(lines.len() as u64, sent, "every acknowledged request written once");
}

/// A client that sends only stage spans (Triton `compute` spans whose request never comes), each in a trace of
/// its own, cannot make the processor hold them without bound: past `spans.max_pending_spans` the oldest are
/// resolved early and counted as `orphan_span`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_spans_without_requests_cannot_hold_memory() {
    let yaml = r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
connectors:
  model_metrics: { flush_interval: 1s, spans: { max_pending_spans: 20000 } }
exporters:
  debug:
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], exporters: [model_metrics, debug] }
    metrics: { receivers: [model_metrics], exporters: [debug] }
"#;
    let c = start_with(yaml, &[], None);
    let mut traces = TraceServiceClient::connect(c.grpc()).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let (batches, per_batch) = (100u64, 4000u64);
    for b in 0..batches {
        let mut request = traces_request("triton-inference-server", Vec::new());
        let scope = &mut request.resource_spans[0].scope_spans[0];
        scope.scope = Some(opentelemetry_proto::tonic::common::v1::InstrumentationScope {
            name: "triton-server".into(),
            ..Default::default()
        });
        for i in 0..per_batch {
            let n = b * per_batch + i + 1;
            let mut span = server_span(n, 9, now - 2_000_000, now, vec![kv("x", Value::IntValue(1))]);
            span.name = "compute".into();
            span.parent_span_id = (n | 1 << 62).to_be_bytes().to_vec();
            scope.spans.push(span);
        }
        traces.export(request).await.unwrap();
    }
    let telemetry = c.address("own metrics");
    let sent = (batches * per_batch) as f64;
    let orphans = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, own) = http_get(&telemetry, None).unwrap();
            let orphans = own
                .lines()
                .find(|l| l.contains("reason=\"orphan_span\""))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if orphans >= sent - 20_000.0 || Instant::now() > deadline {
                return orphans;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    println!("{sent} stage spans sent, {orphans} counted as orphans");
    assert_peak(c.child.id(), 200);
    assert!(
        orphans >= sent - 20_000.0,
        "all but the last 20,000 resolved early: {orphans}"
    );
}
