//! A model replica as a child process of a test: it sends one span naming its host and pid (as the OpenTelemetry
//! SDKs' host and process detectors do), so that `hostmetrics` attributes its CPU and memory, then holds 64 MiB
//! resident and keeps one core busy (or sleeps) until killed.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};

pub fn hostname() -> String {
    let out = Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The child's body, run from an ignored test of the test binary: with `INFERCOL_TEST_CHILD_OTLP` (the
/// collector's OTLP/HTTP address) and `INFERCOL_TEST_CHILD_MODEL` (default `busy-model`) set, it never returns.
pub fn run(busy: bool) {
    let Ok(endpoint) = std::env::var("INFERCOL_TEST_CHILD_OTLP") else {
        return;
    };
    let model = std::env::var("INFERCOL_TEST_CHILD_MODEL").unwrap_or_else(|_| "busy-model".into());
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[
            {{"key":"service.name","value":{{"stringValue":"{model}"}}}},
            {{"key":"deployment.id","value":{{"stringValue":"d-7"}}}},
            {{"key":"host.name","value":{{"stringValue":"{host}"}}}},
            {{"key":"process.pid","value":{{"intValue":"{pid}"}}}}]}},
          "scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175",
            "name":"POST /predict","kind":2,"startTimeUnixNano":"1764300000000000000","endTimeUnixNano":"1764300001000000000"}}]}}]}}]}}"#,
        host = hostname(),
        pid = std::process::id()
    );
    let mut memory = vec![0u8; 64 << 20];
    for i in (0..memory.len()).step_by(4096) {
        memory[i] = 1;
    }
    let mut stream = std::net::TcpStream::connect(&endpoint).unwrap();
    write!(
        stream,
        "POST /v1/traces HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut x = 0u64;
    loop {
        if busy {
            x = std::hint::black_box(x.wrapping_add(memory[(x as usize) % memory.len()] as u64));
        } else {
            std::thread::sleep(std::time::Duration::from_secs(1));
            x = std::hint::black_box(x.wrapping_add(memory[0] as u64));
        }
    }
}

/// A child replica: this test binary run with `--ignored --exact test_name`; killed when dropped.
pub struct Replica(pub Child);

impl Replica {
    pub fn spawn(test_name: &str, otlp_http: &str, model: &str) -> Replica {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", test_name, "--nocapture", "--test-threads=1"])
            .env("INFERCOL_TEST_CHILD_OTLP", otlp_http)
            .env("INFERCOL_TEST_CHILD_MODEL", model)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Replica(child)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
