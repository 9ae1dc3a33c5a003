//! The dashboard's history on disk (`storage`), through the real binary: it survives a SIGKILL up to the last
//! flush, a directory already in use or that cannot be written is refused at start with the key named, and a full
//! disk changes nothing for the other pipelines.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Collector, kv, server_span, traces_request};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use serde_json::Value as Json;

fn config(storage: &std::path::Path) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0" }}
connectors:
  model_metrics: {{ flush_interval: 500ms }}
exporters:
  dashboard: {{ endpoint: "127.0.0.1:0", storage: "{}" }}
  prometheus: {{ endpoint: "127.0.0.1:0" }}
service:
  telemetry:
    metrics: {{ address: "127.0.0.1:0" }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [model_metrics] }}
    metrics: {{ receivers: [model_metrics], exporters: [dashboard, prometheus] }}
"#,
        storage.display()
    )
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// `n` requests of model `m` ending now, one in ten a 500, 100 ms to 1 s each.
async fn send(grpc: String, n: u64, first_id: u64) {
    let mut client = TraceServiceClient::connect(grpc).await.unwrap();
    let end = now_ns();
    let spans = (0..n)
        .map(|i| {
            let status = if i % 10 == 0 { 500 } else { 200 };
            let duration = 100_000_000 + (i % 10) * 100_000_000;
            server_span(
                first_id + i,
                7,
                end - duration,
                end,
                vec![kv("http.response.status_code", Value::IntValue(status))],
            )
        })
        .collect();
    client.export(traces_request("m", spans)).await.unwrap();
}

async fn panels(c: &Collector, query: &str) -> Json {
    let url = format!("{}api/panels?{query}", c.address("dashboard"));
    serde_json::from_slice(&reqwest::get(url).await.unwrap().bytes().await.unwrap()).unwrap()
}

/// Requests counted in a panel answer: rate times step, over every status group.
fn counted(body: &Json) -> f64 {
    let step = body["step"].as_f64().unwrap();
    body["panels"][0]["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().iter().filter_map(Json::as_f64))
        .sum::<f64>()
        * step
}

/// Traffic, a SIGKILL, a torn journal tail, a restart on the same directory: the API gives the same history as
/// before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_survives_a_sigkill_up_to_the_last_flush() {
    let storage = tempfile::tempdir().unwrap();
    let c = Collector::start(&config(storage.path()));
    send(c.grpc(), 200, 0).await;
    send(c.grpc(), 100, 1000).await;
    let to = (now_ns() / 1_000_000_000) as i64 + 60;
    let window = format!("from={}&to={to}&model=m", to - 900);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        let body = panels(&c, &window).await;
        if counted(&body) == 300.0 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard never counted 300: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Past the next flush, so that what the page showed has been written.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.signal("KILL");
    drop(c);
    // And the last write torn: garbage after the journal's last whole batch is cut at the restart, not served.
    let journal = std::fs::read_dir(storage.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .max()
        .expect("a journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(&[0x5A; 64]);
    std::fs::write(&journal, bytes).unwrap();

    let c = Collector::start(&config(storage.path()));
    let log = c.wait_for_log("history restored", Duration::from_secs(10));
    assert!(log.contains("series="), "{log}");
    let after = panels(&c, &window).await;
    assert_eq!(counted(&after), 300.0, "{after}");
    for panel in ["volume", "latency"] {
        // A step of zero requests is the same history as a step without a point: a flush after the count was
        // read, with nothing new, may land in the next step before the kill.
        let of = |body: &Json| {
            let mut series = body["panels"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["id"] == panel)
                .unwrap()["series"]
                .clone();
            for s in series.as_array_mut().unwrap() {
                for v in s["values"].as_array_mut().unwrap() {
                    if v.as_f64() == Some(0.0) {
                        *v = Json::Null;
                    }
                }
            }
            series
        };
        assert_eq!(of(&after), of(&before), "{panel} after the restart");
    }
    // And it goes on: new traffic adds to the history.
    send(c.grpc(), 50, 5000).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while counted(&panels(&c, &window).await) != 350.0 {
        assert!(std::time::Instant::now() < deadline, "new traffic after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starting with a storage another collector holds, or one that cannot be created, fails with the key named.
#[test]
fn a_storage_in_use_or_unwritable_is_refused_at_start() {
    let storage = tempfile::tempdir().unwrap();
    let _first = Collector::start(&config(storage.path()));
    for (dir, expected) in [
        (storage.path().to_path_buf(), "in use by another collector"),
        (std::path::PathBuf::from("/proc/infercol-history"), "cannot create"),
    ] {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), config(&dir)).unwrap();
        let out = Command::new(common::BIN)
            .arg("--config")
            .arg(file.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("dashboard") && stderr.contains("storage:") && stderr.contains(expected),
            "{stderr}"
        );
    }
}

/// A small tmpfs, mounted for the test and filled up.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (as tests/run runs on CI)"
        );
        Tmpfs(dir)
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.path().join("filler")).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// The disk fills up under the dashboard's storage: it logs once and counts what it could not write, the page
/// still answers from memory, and the Prometheus exporter beside it counts every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_changes_nothing_for_the_other_pipelines() {
    let disk = Tmpfs::mount("4m");
    let c = Collector::start(&config(&disk.0.path().join("history")));
    send(c.grpc(), 10, 0).await;
    c.wait_for_log("dashboard", Duration::from_secs(5));
    disk.fill();
    for round in 0..5 {
        send(c.grpc(), 100, 100 + round * 1000).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let scrape = c.address("Prometheus metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(&scrape).await.unwrap().text().await.unwrap();
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with("model_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if total == 510.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus exporter counted {total}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = panels(&c, "range=15m&model=m").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut body = body;
    while counted(&body) != 510.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the page counted {}",
            counted(&body)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        body = panels(&c, "range=15m&model=m").await;
    }
    let log = c.log();
    let failures = log
        .lines()
        .filter(|l| l.contains("cannot write history to storage"))
        .count();
    assert_eq!(failures, 1, "logged once:\n{log}");
    let own = reqwest::get(c.address("own metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: f64 = own
        .lines()
        .find(|l| l.starts_with("infercol_dashboard_storage_dropped_points_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "the points not written are counted:\n{own}");
}
