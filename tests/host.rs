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
connectors:
  model_metrics:
exporters:
  file/spans: { path: "{dir}/spans.jsonl" }
  file/metrics: { path: "{dir}/metrics.jsonl" }
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], exporters: [model_metrics, file/spans] }
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

/// Run only as the child of `host_metrics_agree_with_proc_and_a_busy_replica_is_attributed`: sends one span naming
/// its own pid, holds 64 MiB resident and keeps one core busy until killed.
#[test]
#[ignore = "a helper process, started by another test"]
fn busy_replica_child() {
    common::replica::run(true);
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
fn proc_stat() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    (total - idle, total)
}

fn meminfo(key: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 1024.0
}

/// The value of the first sample of `family` on a Prometheus page whose labels contain `matching`.
fn sample(page: &str, family: &str, matching: &str) -> Option<f64> {
    page.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .find(|l| l.contains(matching))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_metrics_agree_with_proc_and_a_busy_replica_is_attributed() {
    common::install_crypto();
    let c = Collector::start(
        r#"
receivers:
  otlp:
    protocols:
      http: { endpoint: "127.0.0.1:0" }
  hostmetrics:
    collection_interval: 2s
    sample_interval: 500ms
exporters:
  prometheus: { endpoint: "127.0.0.1:0" }
  file: { path: "{dir}/spans.jsonl" }
service:
  telemetry:
    metrics: { address: "127.0.0.1:0" }
  pipelines:
    traces: { receivers: [otlp], exporters: [file] }
    metrics: { receivers: [hostmetrics], exporters: [prometheus] }
"#,
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "busy_replica_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("INFERCOL_TEST_CHILD_OTLP", c.address("OTLP/HTTP"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child_pid = child.id();
    let _guard = Kill(&mut child);
    let page_url = c.address("Prometheus metrics");
    let http = reqwest::Client::new();

    // Follow the page and /proc/stat together: when a new collection appears, compare it with /proc/stat over the
    // same 2 s, and memory with /proc/meminfo at that moment.
    let mut stat_history: Vec<(std::time::Instant, (u64, u64))> = Vec::new();
    // A new collection shows as a change of the (CPU, used memory) pair: memory in bytes moves every collection,
    // CPU alone can read the same on a saturated machine.
    let mut last_seen: Option<(f64, f64)> = None;
    let mut checked_cpu = 0;
    let mut attributed = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while (checked_cpu < 2 || !attributed) && std::time::Instant::now() < deadline {
        stat_history.push((std::time::Instant::now(), proc_stat()));
        let page = http.get(&page_url).send().await.unwrap().text().await.unwrap();
        let cpu = sample(&page, "system_cpu_utilization_ratio", "");
        let seen = cpu.zip(sample(
            &page,
            "system_memory_usage_bytes",
            "system_memory_state=\"used\"",
        ));
        if let Some((cpu, _)) = seen
            && last_seen.is_some_and(|l| Some(l) != seen)
        {
            let now = std::time::Instant::now();
            let (busy1, total1) = stat_history.last().unwrap().1;
            let (_, (busy0, total0)) = stat_history
                .iter()
                .rev()
                .find(|(t, _)| now.duration_since(*t) >= Duration::from_millis(2000))
                .copied()
                .unwrap_or(stat_history[0]);
            let from_proc = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
            assert!(
                (cpu - from_proc).abs() <= 0.05,
                "system CPU {cpu} vs /proc/stat {from_proc}"
            );
            let used = sample(&page, "system_memory_usage_bytes", "system_memory_state=\"used\"").unwrap();
            let expected_used = meminfo("MemTotal") - meminfo("MemAvailable");
            assert!(
                ((used - expected_used) / expected_used).abs() <= 0.05,
                "memory used {used} vs /proc/meminfo {expected_used}"
            );
            let limit = sample(&page, "system_memory_limit_bytes", "").unwrap();
            assert!(((limit - meminfo("MemTotal")) / limit).abs() <= 0.05, "limit {limit}");
            checked_cpu += 1;
        }
        if seen.is_some() {
            last_seen = seen;
        }
        let pid_label = format!("process_pid=\"{child_pid}\"");
        if let (Some(cpu), Some(rss)) = (
            sample(&page, "process_cpu_utilization_ratio", &pid_label),
            sample(&page, "process_memory_usage_bytes", &pid_label),
        ) && cpu > 0.3
        {
            let line = page
                .lines()
                .find(|l| l.starts_with("process_cpu_utilization_ratio{") && l.contains(&pid_label))
                .unwrap();
            assert!(
                line.contains("model=\"busy-model\"") && line.contains("deployment=\"d-7\""),
                "{line}"
            );
            assert!(rss >= (64 << 20) as f64, "the child holds 64 MiB: {rss}");
            attributed = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(checked_cpu >= 2, "two collections compared with /proc");
    assert!(
        attributed,
        "the busy child appeared with its CPU, memory and span labels"
    );
}
