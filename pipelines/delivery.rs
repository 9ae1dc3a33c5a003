//! How an exporter delivers: its sending queue and its retries, with the OpenTelemetry Collector's keys and
//! defaults (`sending_queue`, `retry_on_failure`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

/// `sending_queue`: requests waiting for export, and how many exports run at once.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SendingQueue {
    /// Without a queue the pipeline waits for each export.
    pub enabled: bool,
    /// Requests the queue holds.
    pub queue_size: usize,
    pub num_consumers: usize,
    /// A directory: the queue is kept on disk there, so that a restart or a crash loses nothing acknowledged.
    pub storage: Option<PathBuf>,
    /// When the queue is full: `false` (default) refuses upstream with a retryable answer; `true` drops the
    /// request (counted in `otelcol_exporter_enqueue_failed_*` and logged).
    pub drop_on_overflow: bool,
}

impl Default for SendingQueue {
    fn default() -> Self {
        SendingQueue {
            enabled: true,
            queue_size: 1000,
            num_consumers: 10,
            storage: None,
            drop_on_overflow: false,
        }
    }
}

impl SendingQueue {
    /// The queue of a local exporter (file, debug, prometheus): one consumer keeps the order.
    pub fn local() -> SendingQueue {
        SendingQueue {
            num_consumers: 1,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && (self.queue_size == 0 || self.num_consumers == 0) {
            return Err("sending_queue: queue_size and num_consumers must be at least 1".into());
        }
        Ok(())
    }
}

/// `retry_on_failure`: exponential backoff with jitter; the server's RetryInfo or Retry-After wins.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryOnFailure {
    pub enabled: bool,
    #[serde(with = "duration")]
    pub initial_interval: Duration,
    #[serde(with = "duration")]
    pub max_interval: Duration,
    /// 0 retries forever.
    #[serde(with = "duration")]
    pub max_elapsed_time: Duration,
    pub multiplier: f64,
    pub randomization_factor: f64,
}

impl Default for RetryOnFailure {
    fn default() -> Self {
        RetryOnFailure {
            enabled: true,
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
            multiplier: 1.5,
            randomization_factor: 0.5,
        }
    }
}

impl RetryOnFailure {
    pub fn validate(&self) -> Result<(), String> {
        if self.multiplier < 1.0 {
            return Err("retry_on_failure.multiplier: must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.randomization_factor) {
            return Err("retry_on_failure.randomization_factor: must be between 0 and 1".into());
        }
        if self.initial_interval.is_zero() {
            return Err("retry_on_failure.initial_interval: must be more than 0".into());
        }
        Ok(())
    }
}
