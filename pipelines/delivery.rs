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
    /// What `queue_size` counts: `requests` (default), `items` (spans, points, log records) or `bytes` (of the
    /// requests' protobuf encoding), as the Collector's `sizer`.
    pub sizer: Sizer,
    /// What the queue holds at most, in the sizer's unit.
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
            sizer: Sizer::Requests,
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
        if self.storage.is_some() && self.sizer != Sizer::Requests {
            return Err("sending_queue.sizer: a queue kept in `storage` counts requests; use `sizer: requests`".into());
        }
        Ok(())
    }
}

/// The unit of a sending queue's `queue_size`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sizer {
    #[default]
    Requests,
    Items,
    Bytes,
}

impl Sizer {
    /// What one request weighs in this unit.
    pub fn size_of(self, data: &crate::Data) -> usize {
        match self {
            Sizer::Requests => 1,
            Sizer::Items => data.items().max(1),
            Sizer::Bytes => data.encoded_len().max(1),
        }
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
