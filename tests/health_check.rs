//! The `health_check` extension against the real binary: a probe is answered 503 while the collector starts,
//! 200 while every pipeline runs, and 503 again while it shuts down, as Kubernetes' probes expect.
//!
//! The start is held by a file exporter whose path is a named pipe (opening a pipe for writing waits for a
//! reader), the shutdown by an OTLP exporter whose server accepts connections and never answers: both are what a
//! slow disk or a hung backend look like to the collector, with no hook in the collector for the test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The status code of `GET path` on `address`, or None when nothing answers.
fn probe(address: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Probes until the answer is `want`.
fn wait_for_status(address: &str, path: &str, want: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = probe(address, path);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: expected {want}, the probe answered {got:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_line(log: &Mutex<Vec<String>>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = log.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log:\n{}",
            log.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn health_check_answers_503_while_starting_and_stopping_and_200_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("spans.pipe");
    assert!(Command::new("mkfifo").arg(&pipe).status().unwrap().success());
    // A backend that takes connections and never answers: the export in flight holds the shutdown.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_address = hung.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in hung.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:0" }}
exporters:
  file: {{ path: "{pipe}" }}
  otlphttp:
    endpoint: "http://{hung_address}"
    timeout: 8s
    retry_on_failure: {{ enabled: false }}
extensions:
  health_check: {{ endpoint: "127.0.0.1:0", path: /health/status }}
service:
  extensions: [health_check]
  telemetry: {{ metrics: {{ level: none }} }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [otlphttp] }}
    logs: {{ receivers: [otlp], exporters: [file] }}
"#,
            pipe = pipe.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(common::BIN)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let line = wait_for_line(&log, "health check on http://");
    let health = line[line.find("http://").unwrap() + 7..]
        .split('/')
        .next()
        .unwrap()
        .to_string();

    // Starting: the file exporter waits for the pipe's reader.
    wait_for_status(&health, "/health/status", 503, "while starting");
    assert!(!log.lock().unwrap().iter().any(|l| l.contains("infercol is running")));
    assert_eq!(
        probe(&health, "/elsewhere"),
        Some(404),
        "only the configured path answers"
    );
    let reader = std::thread::spawn(move || {
        let mut drained = Vec::new();
        let _ = std::fs::File::open(&pipe).and_then(|mut f| f.read_to_end(&mut drained));
    });

    // Running.
    wait_for_line(&log, "infercol is running");
    wait_for_status(&health, "/health/status", 200, "while running");
    let line = wait_for_line(&log, "OTLP/HTTP on ");
    let otlp = line[line.find("OTLP/HTTP on ").unwrap() + 13..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let span = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"held","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
    common::post_json_traces(&otlp, span);
    // The export is in flight once the backend holds a connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the exporter never reached its backend");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Stopping: the export in flight holds the shutdown until its timeout.
    assert!(
        Command::new("kill")
            .args(["-s", "TERM"])
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    wait_for_status(&health, "/health/status", 503, "while shutting down");
    let status = common::wait_exit(&mut child, Duration::from_secs(40));
    assert!(status.success(), "{}", log.lock().unwrap().join("\n"));
    assert_eq!(
        probe(&health, "/health/status"),
        None,
        "the extension stops last, with the process"
    );
    reader.join().unwrap();
}
