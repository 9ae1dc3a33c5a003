//! End to end: host samples attributed to the replica whose spans named this host and process, and a collector
//! on a machine without an NVIDIA driver that warns once and keeps running.

mod common;

use std::time::Duration;

use common::{Collector, read_jsonl_until};
use serde_json::Value;

fn hostname() -> String {
    let out = std::process::Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn points<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .flat_map(|l| l["resourceMetrics"].as_array().into_iter().flatten())
        .flat_map(|rm| rm["scopeMetrics"].as_array().into_iter().flatten())
        .flat_map(|sm| sm["metrics"].as_array().into_iter().flatten())
        .filter(|m| m["name"] == name)
        .flat_map(|m| m["gauge"]["dataPoints"].as_array().into_iter().flatten())
        .collect()
}

fn label<'a>(p: &'a Value, key: &str) -> Option<&'a Value> {
    p["attributes"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

#[tokio::test]
async fn replica_processes_carry_their_model_labels_and_nvml_stays_idle_without_a_driver() {
    common::install_crypto();
    let mut c = Collector::start(
        r#"
receivers:
  otlp:
    protocols:
      http: { endpoint: "127.0.0.1:0" }
  hostmetrics:
    collection_interval: 1s
    sample_interval: 250ms
  nvml:
    collection_interval: 1s
processors:
  model_metrics:
exporters:
  file/spans: { path: "{dir}/spans.jsonl" }
  file/metrics: { path: "{dir}/metrics.jsonl" }
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], processors: [model_metrics], exporters: [file/spans] }
    metrics: { receivers: [hostmetrics, nvml, model_metrics], exporters: [file/metrics] }
"#,
    );
    // This test process plays a model replica: its spans carry host.name and process.pid, as SDKs add them.
    let pid = std::process::id();
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[
            {{"key":"service.name","value":{{"stringValue":"stable-diffusion"}}}},
            {{"key":"deployment.environment.name","value":{{"stringValue":"canary"}}}},
            {{"key":"host.name","value":{{"stringValue":"{host}"}}}},
            {{"key":"process.pid","value":{{"intValue":"{pid}"}}}}]}},
          "scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "name":"POST /generate","kind":2,"startTimeUnixNano":"1764300000000000000","endTimeUnixNano":"1764300001000000000"}}]}}]}}]}}"#,
        host = hostname()
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/traces", c.http()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let lines = read_jsonl_until(&c.path("metrics.jsonl"), Duration::from_secs(30), |l| {
        points(l, "process.memory.usage")
            .iter()
            .any(|p| label(p, "process.pid").and_then(|v| v["intValue"].as_str()) == Some(&pid.to_string()))
    });
    let mine = points(&lines, "process.memory.usage")
        .into_iter()
        .find(|p| label(p, "process.pid").and_then(|v| v["intValue"].as_str()) == Some(&pid.to_string()))
        .unwrap();
    assert_eq!(label(mine, "model").unwrap()["stringValue"], "stable-diffusion");
    assert_eq!(label(mine, "environment").unwrap()["stringValue"], "canary");
    assert_eq!(
        label(mine, "service.instance.id").unwrap()["stringValue"],
        format!("{}:{pid}", hostname())
    );
    assert!(mine["asDouble"].as_f64().unwrap() > 1e6, "resident memory in bytes");
    let cpu = points(&lines, "system.cpu.utilization");
    assert!(
        !cpu.is_empty()
            && cpu
                .iter()
                .all(|p| (0.0..=1.0).contains(&p["asDouble"].as_f64().unwrap()))
    );
    assert!(!points(&lines, "system.memory.limit").is_empty());

    // No NVIDIA driver here: one clear warning, and the collector kept running and reporting.
    let log = c.log();
    let has_gpu = std::path::Path::new("/proc/driver/nvidia").exists();
    if !has_gpu {
        assert_eq!(log.matches("GPU metrics are off").count(), 1, "one warning:\n{log}");
        assert!(log.contains("no NVIDIA driver") || log.contains("no GPU"), "{log}");
    }
    let (status, log) = c.stop();
    assert!(status.success(), "{log}");
}
