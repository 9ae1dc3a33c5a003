//! The command line: `validate` names the culprit of every kind of bad configuration, start-up refuses the same
//! configurations without starting anything, and `components` / `--version` answer.

mod common;

use std::process::Command;

use common::BIN;

/// Runs `infercol validate` on `yaml`; returns (exit success, stdout + stderr).
fn validate(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs the collector itself on `yaml`, expecting it to refuse to start.
fn start_fails(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_exit(&mut child, std::time::Duration::from_secs(20));
    assert!(!status.success(), "start-up should fail");
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const VALID: &str = r#"receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:0" }
processors:
  batch: { send_batch_size: 100, timeout: 1s }
exporters:
  debug: { verbosity: detailed }
  file/spans: { path: spans.jsonl }
service:
  telemetry:
    logs: { level: warn }
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], processors: [batch], exporters: [file/spans, debug] }
"#;

#[test]
fn a_valid_configuration_validates() {
    let (ok, text) = validate(VALID);
    assert!(ok, "{text}");
    assert!(text.contains("configuration is valid"), "{text}");
}

fn assert_names(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "the message should name `{n}`:\n{text}");
    }
}

#[test]
fn unknown_component_type() {
    let yaml = VALID.replace("  batch: { send_batch_size: 100, timeout: 1s }", "  sampler: {}");
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert_names(
        &text,
        &["processors.sampler", "unknown processor type `sampler`", "line 6"],
    );
    assert_names(&start_fails(&yaml), &["processors.sampler", "line 6"]);
}

#[test]
fn pipeline_naming_an_undeclared_component() {
    let yaml = VALID.replace(
        "exporters: [file/spans, debug]",
        "exporters: [file/spans, otlp/upstream]",
    );
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert_names(
        &text,
        &[
            "service.pipelines.traces.exporters",
            "`otlp/upstream`",
            "not declared",
            "line 15",
        ],
    );
    assert_names(&start_fails(&yaml), &["otlp/upstream", "line 15"]);
}

#[test]
fn wrong_value_type() {
    let yaml = VALID.replace("send_batch_size: 100", "send_batch_size: lots");
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert_names(&text, &["processors.batch", "send_batch_size", "line 6"]);
    let yaml = VALID.replace("timeout: 1s", "timeout: soon");
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert_names(&text, &["processors.batch", "timeout", "soon", "line 6"]);
}

#[test]
fn unknown_key() {
    let yaml = VALID.replace(
        "grpc: { endpoint: \"127.0.0.1:0\" }",
        "grpc: { endpoint: \"127.0.0.1:0\", max_conns: 3 }",
    );
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert_names(&text, &["receivers.otlp", "max_conns", "line 4"]);
    assert_names(&start_fails(&yaml), &["receivers.otlp", "max_conns", "line 4"]);
}

#[test]
fn port_already_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = VALID.replace(
        "grpc: { endpoint: \"127.0.0.1:0\" }",
        &format!("grpc: {{ endpoint: \"127.0.0.1:{port}\" }}"),
    );
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert_names(
        &text,
        &[
            "receivers.otlp",
            "protocols.grpc.endpoint",
            &format!("127.0.0.1:{port}"),
            "line 4",
        ],
    );
    let text = start_fails(&yaml);
    assert_names(&text, &["receivers.otlp", "protocols.grpc.endpoint", "line 4"]);
    // Nothing started half-way: the own-metrics listener of the failed start is closed again (the process is gone).
    drop(taken);
}

#[test]
fn model_metrics_keys_are_checked() {
    let yaml = VALID.replace(
        "  batch: { send_batch_size: 100, timeout: 1s }",
        "  model_metrics:\n    quantile_windw: 30s",
    );
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert_names(&text, &["processors.model_metrics", "quantile_windw", "line 7"]);
    let yaml = VALID.replace(
        "  batch: { send_batch_size: 100, timeout: 1s }",
        "  model_metrics:\n    quantiles: [0.5, 99]",
    );
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert_names(&text, &["processors.model_metrics", "quantiles", "99"]);
    let yaml = VALID.replace(
        "  batch: { send_batch_size: 100, timeout: 1s }",
        "  model_metrics:\n    spans:\n      inference_span_name: [predict]",
    );
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert_names(&text, &["processors.model_metrics", "inference_span_name", "line 8"]);
}

#[test]
fn env_substitution_and_defaults() {
    let yaml = VALID.replace(
        "path: spans.jsonl",
        "path: ${env:INFERCOL_TEST_UNSET_VAR:-fallback.jsonl}",
    );
    let (ok, text) = validate(&yaml);
    assert!(ok, "{text}");
    let yaml = VALID.replace("path: spans.jsonl", "path: ${vault:secret}");
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert_names(&text, &["vault:secret", "line 9"]);
}

#[test]
fn components_and_version() {
    let out = Command::new(BIN).arg("components").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // Every component type the contract names.
    for name in [
        "otlp",
        "hostmetrics",
        "nvml",
        "replica_probe",
        "model_metrics",
        "batch",
        "memory_limiter",
        "otlphttp",
        "prometheus",
        "prometheusremotewrite",
        "file",
        "debug",
        "dashboard",
        "model_quantiles",
        "nop",
        "health_check",
    ] {
        assert!(text.contains(name), "components should list {name}:\n{text}");
    }
    let connectors = &text[text.find("connectors:").expect("a connectors section")..];
    assert!(
        connectors.contains("model_metrics") && connectors.contains("traces -> metrics"),
        "{text}"
    );
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("infercol "));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("validate") && help.contains("--config"), "{help}");
}

#[test]
fn the_embedded_default_configuration_is_valid() {
    let out = Command::new(BIN).arg("default-config").output().unwrap();
    let (ok, text) = validate(
        &String::from_utf8_lossy(&out.stdout)
            .replace("127.0.0.1:4317", "127.0.0.1:0")
            .replace("127.0.0.1:4318", "127.0.0.1:0")
            .replace("127.0.0.1:8888", "127.0.0.1:0")
            .replace("127.0.0.1:9464", "127.0.0.1:0")
            .replace("127.0.0.1:9465", "127.0.0.1:0")
            .replace("127.0.0.1:13133", "127.0.0.1:0"),
    );
    assert!(ok, "{text}");
}

#[test]
fn every_example_configuration_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            // Move every listener to a free port so the check does not depend on what else runs here.
            let out = Command::new(BIN)
                .args(["validate", "--config"])
                .arg(&path)
                .env("INFERCOL_OTLP_GRPC_ENDPOINT", "127.0.0.1:0")
                .env("INFERCOL_OTLP_HTTP_ENDPOINT", "127.0.0.1:0")
                .env("INFERCOL_TELEMETRY_ENDPOINT", "127.0.0.1:0")
                .env("INFERCOL_PROMETHEUS_ENDPOINT", "127.0.0.1:0")
                .env("INFERCOL_DASHBOARD_ENDPOINT", "127.0.0.1:0")
                .env("INFERCOL_HEALTH_CHECK_ENDPOINT", "127.0.0.1:0")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "examples/configs holds the ready configurations");
}

/// A Collector-style configuration with a connector validates; a traces pipeline that only derives metrics needs
/// no other exporter.
#[test]
fn the_connector_form_validates_and_needs_no_dummy_exporter() {
    let (ok, text) = validate(
        "receivers:\n  otlp:\n    protocols:\n      grpc: { endpoint: \"127.0.0.1:0\" }\nconnectors:\n  model_metrics: { quantile_window: 60s }\nexporters:\n  debug:\nservice:\n  telemetry: { metrics: { level: none } }\n  pipelines:\n    traces: { receivers: [otlp], exporters: [model_metrics] }\n    metrics: { receivers: [otlp, model_metrics], exporters: [debug] }\n",
    );
    assert!(ok, "{text}");
    assert!(!text.contains("warning"), "{text}");
    // The form before connectors still validates, with a warning that says what to write.
    let (ok, text) = validate(
        "receivers:\n  otlp:\n    protocols:\n      grpc: { endpoint: \"127.0.0.1:0\" }\nprocessors:\n  model_metrics:\nexporters:\n  debug:\nservice:\n  telemetry: { metrics: { level: none } }\n  pipelines:\n    traces: { receivers: [otlp], processors: [model_metrics], exporters: [debug] }\n    metrics: { receivers: [model_metrics], exporters: [debug] }\n",
    );
    assert!(ok, "{text}");
    assert_names(&text, &["warning", "processors.model_metrics (line 6)", "connectors:"]);
}

/// Three independent mistakes are all reported, each with its line, in one run.
#[test]
fn every_mistake_is_reported_with_its_line() {
    let yaml = "receivers:\n  otlp:\n    protocols:\n      grpc: { endpoint: \"127.0.0.1:0\", max_recv_msg_size_mib: lots }\nconnectors:\n  model_metrics: { quantile_windw: 60s }\nexporters:\n  debug:\nservice:\n  telemetry: { metrics: { level: none } }\n  pipelines:\n    traces: { receivers: [otlp], exporters: [model_metrics, debugg] }\n    metrics: { receivers: [model_metrics], exporters: [debug] }\n";
    let (ok, text) = validate(yaml);
    assert!(!ok, "{text}");
    assert_names(
        &text,
        &[
            "3 errors",
            "line 4",
            "max_recv_msg_size_mib",
            "line 6",
            "quantile_windw",
            "line 12",
            "`debugg`",
        ],
    );
    let first = text.find("line 4").unwrap();
    let second = text.find("line 6").unwrap();
    let third = text.find("line 12").unwrap();
    assert!(first < second && second < third, "in line order:\n{text}");
}

/// A connector listed where it cannot stand (model_metrics emits metrics, not spans, so it cannot feed back into
/// the traces pipeline it reads) is refused at its line. Loops through connectors that could close are refused
/// by the configuration's unit tests, with a connector from traces to traces.
#[test]
fn a_connector_cannot_feed_the_pipeline_it_reads() {
    let yaml = "receivers:\n  otlp:\n    protocols:\n      grpc: { endpoint: \"127.0.0.1:0\" }\nconnectors:\n  model_metrics:\nexporters:\n  debug:\nservice:\n  telemetry: { metrics: { level: none } }\n  pipelines:\n    traces: { receivers: [otlp, model_metrics], exporters: [model_metrics] }\n    metrics: { receivers: [model_metrics], exporters: [debug] }\n";
    let (ok, text) = validate(yaml);
    assert!(!ok, "{text}");
    assert_names(
        &text,
        &[
            "line 12",
            "connector `model_metrics` cannot stand there in a traces pipeline",
        ],
    );
}
