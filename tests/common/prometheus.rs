//! A real Prometheus server (Debian's package) scraping a collector, for the end-to-end tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The path of an installed program; a missing one fails the test with what `tests/run` installs.
pub fn which(binary: &str) -> String {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {binary}"))
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "`{binary}` is not installed: `bash tests/run` installs it (Debian's prometheus, chromium, chromium-driver)"
    );
    path
}

pub struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape_config(target: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: infercol\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{target}']\n"
    )
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`). Prometheus cannot listen on port 0 and say where, so
    /// its port is a free one picked here; should another test take it first, Prometheus exits and is started
    /// again on another.
    pub async fn start(target: &str, flags: &[&str]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(target)).unwrap();
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new(which("prometheus"))
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .args(flags)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if let Ok(r) = reqwest::get(format!("{url}/-/ready")).await
                    && r.status().is_success()
                {
                    return Prometheus { child, _dir: dir, url };
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("Prometheus did not become ready");
    }

    /// Points the scrape at another target (a collector started after Prometheus, on a port of its own choosing)
    /// and reloads the configuration, as SIGHUP does.
    pub fn scrape(&self, target: &str) {
        std::fs::write(self._dir.path().join("prometheus.yml"), scrape_config(target)).unwrap();
        let status = Command::new("kill")
            .args(["-s", "HUP", "--", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "Prometheus takes SIGHUP");
    }

    /// The value of an instant query with one result, if it has one.
    pub async fn query(&self, q: &str) -> Option<f64> {
        let r = reqwest::get(format!("{}/api/v1/query?query={}", self.url, encode(q)))
            .await
            .ok()?;
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
        let result = body["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// Polls a query until `accept` says yes; returns the last value.
    pub async fn wait_for(&self, q: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(45);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(q).await;
            if last.is_some_and(&accept) {
                return last.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("`{q}` never gave the expected value; last: {last:?}");
    }
}

impl Prometheus {
    /// The series an instant query returns (empty when none).
    pub async fn query_vector(&self, q: &str) -> Vec<serde_json::Value> {
        let Ok(r) = reqwest::get(format!("{}/api/v1/query?query={}", self.url, encode(q))).await else {
            return Vec::new();
        };
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default();
        assert_ne!(body["status"], "error", "`{q}`: {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// A query string value, percent-encoded.
pub fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
