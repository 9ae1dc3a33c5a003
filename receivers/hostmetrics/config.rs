use std::time::Duration;

use infercol_pipelines::ComponentConfig;
use infercol_pipelines::config::duration;
use serde::Deserialize;

/// Which processes get per-process metrics, besides the replicas learned from spans.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessInclude {
    /// Process names (`python3`, `tritonserver`), matched exactly against the name or the executable's file name.
    pub names: Vec<String>,
    /// Regular expressions matched against the whole command line (`vllm.entrypoints`).
    pub command_lines: Vec<String>,
    pub pids: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    pub include: ProcessInclude,
    /// Also watch the processes of replicas whose telemetry carried this host's `host.name` and a `process.pid`.
    pub replicas_from_telemetry: bool,
    /// A replica not heard from for this long is no longer watched.
    #[serde(with = "duration")]
    pub replica_ttl: Duration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            include: ProcessInclude::default(),
            replicas_from_telemetry: true,
            replica_ttl: Duration::from_secs(120),
        }
    }
}

/// `receivers.hostmetrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostMetricsConfig {
    /// How often metrics are emitted.
    #[serde(with = "duration")]
    pub collection_interval: Duration,
    /// How often CPU and memory are sampled inside an interval (for the maximum beside the average).
    #[serde(with = "duration")]
    pub sample_interval: Duration,
    pub process: ProcessConfig,
}

impl Default for HostMetricsConfig {
    fn default() -> Self {
        HostMetricsConfig {
            collection_interval: Duration::from_secs(10),
            sample_interval: Duration::from_secs(1),
            process: ProcessConfig::default(),
        }
    }
}

impl ComponentConfig for HostMetricsConfig {
    fn validate(&self) -> Result<(), String> {
        if self.sample_interval < Duration::from_millis(200) {
            return Err("sample_interval: must be at least 200ms (CPU usage needs two readings that far apart)".into());
        }
        if self.collection_interval < self.sample_interval {
            return Err("collection_interval: must be at least sample_interval".into());
        }
        for (i, pattern) in self.process.include.command_lines.iter().enumerate() {
            regex::Regex::new(pattern).map_err(|e| {
                format!("process.include.command_lines[{i}]: `{pattern}` is not a valid regular expression: {e}")
            })?;
        }
        Ok(())
    }
}
