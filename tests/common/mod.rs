//! Helpers for the end-to-end tests: run the real `infercol` binary on a configuration in a temporary
//! directory, with every listener on port 0, and learn the addresses it bound from its log.

#![allow(dead_code)]

pub mod pages;
pub mod prometheus;
pub mod replica;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_infercol");

/// A running collector process.
pub struct Collector {
    pub child: Child,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// Writes `yaml` (with `{dir}` replaced by the temporary directory) to a file and runs it.
    pub fn start(yaml: &str) -> Collector {
        Collector::start_as(yaml, |config| {
            let mut command = Command::new(BIN);
            command.arg("--config").arg(config);
            command
        })
    }

    /// As `start`, with the command that `launch` makes from the configuration's path (another binary, a
    /// wrapper that sets limits, extra environment); it runs in the temporary directory with stderr read.
    pub fn start_as(yaml: &str, launch: impl FnOnce(&Path) -> Command) -> Collector {
        let dir = tempfile::tempdir().expect("temp dir");
        let yaml = yaml.replace("{dir}", dir.path().to_str().expect("utf-8 temp path"));
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let child = launch(&config)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn infercol");
        Collector::watch(child, dir)
    }

    /// Wraps a spawned child whose stderr is piped; waits until it says it is running.
    pub fn watch(mut child: Child, dir: tempfile::TempDir) -> Collector {
        // The tests' HTTP clients (reqwest) need the process's TLS provider, even for plain HTTP.
        install_crypto();
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let c = Collector { child, dir, log };
        c.wait_for_log("infercol is running", Duration::from_secs(20));
        c
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no `{needle}` in the collector's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address a server announced in the log, e.g. `OTLP/gRPC` or `OTLP/HTTP`.
    pub fn address(&self, what: &str) -> String {
        let line = self.wait_for_log(&format!("{what} on "), Duration::from_secs(5));
        let rest = &line[line.find(&format!("{what} on ")).unwrap() + what.len() + 4..];
        rest.split_whitespace().next().unwrap().to_string()
    }

    pub fn grpc(&self) -> String {
        format!("http://{}", self.address("OTLP/gRPC"))
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.address("OTLP/HTTP"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for the process to exit; its directory stays until the `Collector` is dropped.
    pub fn stop(&mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let status = wait_exit(&mut self.child, Duration::from_secs(40));
        // Give the log reader a moment to drain.
        std::thread::sleep(Duration::from_millis(100));
        (status, self.log())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the collector did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line of a file exporter's output, parsed; waits until `done` says the content is complete.
pub fn read_jsonl_until(
    path: &Path,
    timeout: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = read_jsonl(path);
        if done(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not reach the expected content in time; it holds {} lines",
            path.display(),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A line still being written has no newline yet: read only complete lines.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line is not JSON ({e}): {l}")))
        .collect()
}

/// Every span in OTLP/JSON export requests, each with its resource's attributes.
pub fn spans_of(requests: &[serde_json::Value]) -> Vec<(serde_json::Value, serde_json::Value)> {
    let mut out = Vec::new();
    for r in requests {
        for rs in r["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push((rs["resource"].clone(), s.clone()));
                }
            }
        }
    }
    out
}

/// The value of an OTLP/JSON attribute list entry, as written (`{"stringValue": ...}` and so on).
pub fn attr<'a>(attributes: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    attributes
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

/// A configuration: otlp (gRPC + HTTP on free ports) into a file exporter in the temp dir.
pub fn otlp_to_file(extra_exporters: &str) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
      http: {{ endpoint: "127.0.0.1:0" }}
exporters:
  file:
    path: "{{dir}}/out.jsonl"
{extra_exporters}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:0" }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [file] }}
    metrics: {{ receivers: [otlp], exporters: [file] }}
    logs: {{ receivers: [otlp], exporters: [file] }}
"#
    )
}

/// Peak resident memory of a process, from /proc (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A port that was free a moment ago, for servers that cannot report a port 0 they were given (Prometheus, the
/// OpenTelemetry Collector) or that must be known before they start.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn kv(
    key: &str,
    value: opentelemetry_proto::tonic::common::v1::any_value::Value,
) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    opentelemetry_proto::tonic::common::v1::KeyValue {
        key: key.into(),
        value: Some(opentelemetry_proto::tonic::common::v1::AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A SERVER request span number `id`: span id `id + 1`, trace id from `id` and `tag`, never all zero.
pub fn server_span(
    id: u64,
    tag: u8,
    start: u64,
    end: u64,
    attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> opentelemetry_proto::tonic::trace::v1::Span {
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: [id.to_be_bytes(), [tag.max(1); 8]].concat(),
        span_id: (id + 1).to_be_bytes().to_vec(),
        name: "POST /predict".into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        ..Default::default()
    }
}

/// An export request of `spans` from one service.
pub fn traces_request(
    service: &str,
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv("service.name", Value::StringValue(service.into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// otlp (gRPC, free port) -> model_metrics (300 ms flushes) -> prometheus (free port); spans to debug.
pub const MODEL_METRICS_TO_PROMETHEUS: &str = r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
connectors:
  model_metrics:
    flush_interval: 300ms
exporters:
  prometheus: { endpoint: "127.0.0.1:0" }
  debug:
service:
  telemetry:
    metrics: { level: none }
  pipelines:
    traces: { receivers: [otlp], exporters: [model_metrics, debug] }
    metrics: { receivers: [model_metrics], exporters: [prometheus] }
"#;

/// The whole answer (status line, headers, body) to a plain HTTP/1.1 request sent over a fresh connection, for
/// tests that must not depend on an async client (a blocking test, or one that watches a process start).
pub fn http_exchange(address: &str, request_line: &str, content_type: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    write!(
        stream,
        "{request_line} HTTP/1.1\r\nHost: {address}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

/// POSTs OTLP/JSON traces to an OTLP/HTTP receiver at `address` and checks it answered 200.
pub fn post_json_traces(address: &str, json: &str) {
    let answer = http_exchange(address, "POST /v1/traces", "application/json", json);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
