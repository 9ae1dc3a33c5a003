//! Processor `memory_limiter`: checks the collector's resident memory every `check_interval`; above the soft limit
//! (`limit - spike_limit`) the pipelines it sits in refuse new requests at their entry, with the OTLP retryable
//! answers (gRPC UNAVAILABLE with RetryInfo, HTTP 503 with Retry-After), until memory is back under it. Data
//! already accepted keeps flowing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use infercol_pipelines::config::duration;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, ConsumeError, Consumer, Data, Gate, Processor, ProcessorContext,
    ProcessorFactory, Signal, config_as,
};
use serde::Deserialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryLimiterConfig {
    #[serde(with = "duration")]
    pub check_interval: Duration,
    /// The hard limit in MiB (0: use `limit_percentage`).
    pub limit_mib: u64,
    /// The hard limit as a percentage of the memory available (the cgroup's limit in a container).
    pub limit_percentage: u64,
    /// Headroom below the hard limit, in MiB (default: 20% of the limit); the soft limit is limit - spike.
    pub spike_limit_mib: Option<u64>,
    pub spike_limit_percentage: Option<u64>,
}

impl Default for MemoryLimiterConfig {
    fn default() -> Self {
        MemoryLimiterConfig {
            check_interval: Duration::from_secs(1),
            limit_mib: 0,
            limit_percentage: 0,
            spike_limit_mib: None,
            spike_limit_percentage: None,
        }
    }
}

impl ComponentConfig for MemoryLimiterConfig {
    fn validate(&self) -> Result<(), String> {
        if self.check_interval.is_zero() {
            return Err("check_interval: must be more than 0".into());
        }
        if self.limit_mib == 0 && self.limit_percentage == 0 {
            return Err("limit_mib or limit_percentage: set one of them".into());
        }
        if self.limit_percentage > 100 || self.spike_limit_percentage.is_some_and(|p| p > 100) {
            return Err("limit_percentage and spike_limit_percentage: at most 100".into());
        }
        if self.limit_mib > 0 && self.spike_limit_mib.is_some_and(|s| s >= self.limit_mib) {
            return Err("spike_limit_mib: must be below limit_mib".into());
        }
        Ok(())
    }
}

impl MemoryLimiterConfig {
    /// (hard, soft) limits in bytes, given the memory available.
    pub fn limits(&self, available: u64) -> (u64, u64) {
        let hard = if self.limit_mib > 0 {
            self.limit_mib << 20
        } else {
            available / 100 * self.limit_percentage
        };
        let spike = match (self.spike_limit_mib, self.spike_limit_percentage) {
            (Some(mib), _) => mib << 20,
            (None, Some(p)) => available / 100 * p,
            (None, None) => hard / 5,
        };
        (hard, hard.saturating_sub(spike))
    }
}

pub struct MemoryLimiterFactory;

infercol_pipelines::factory!(
    MemoryLimiterFactory,
    "memory_limiter",
    MemoryLimiterConfig,
    &[Signal::Traces, Signal::Metrics, Signal::Logs]
);

struct Limiter {
    refusing: AtomicBool,
    rss: AtomicU64,
    soft: u64,
}

impl Gate for Limiter {
    fn admit(&self) -> Result<(), ConsumeError> {
        if self.refusing.load(Ordering::Relaxed) {
            return Err(ConsumeError::Retryable {
                reason: format!(
                    "memory usage {} MiB is above the soft limit {} MiB",
                    self.rss.load(Ordering::Relaxed) >> 20,
                    self.soft >> 20
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(())
    }
}

impl ProcessorFactory for MemoryLimiterFactory {
    fn create(&self, config: &AnyConfig, ctx: ProcessorContext) -> Result<Arc<dyn Processor>, ComponentError> {
        let config = config_as::<MemoryLimiterConfig>(config)?.clone();
        let mut system = System::new().map_err(|e| ComponentError::new(format!("cannot read memory: {e}")))?;
        system.refresh_memory();
        let available = match system.cgroup_limits() {
            Some(c) if c.total_memory > 0 && c.total_memory < system.total_memory() => c.total_memory,
            _ => system.total_memory(),
        };
        let (hard, soft) = config.limits(available);
        tracing::info!(processor = %ctx.id, "memory limits: hard {} MiB, soft {} MiB", hard >> 20, soft >> 20);
        Ok(Arc::new(MemoryLimiter {
            next: ctx.next,
            limiter: Arc::new(Limiter {
                refusing: AtomicBool::new(false),
                rss: AtomicU64::new(0),
                soft,
            }),
            check_interval: config.check_interval,
            id: ctx.id.to_string(),
            task: Default::default(),
        }))
    }
}

pub struct MemoryLimiter {
    next: Arc<dyn Consumer>,
    limiter: Arc<Limiter>,
    check_interval: Duration,
    id: String,
    task: crate::ticker::Ticker,
}

#[async_trait]
impl Consumer for MemoryLimiter {
    async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
        self.next.consume(data).await
    }
}

#[async_trait]
impl Processor for MemoryLimiter {
    fn gate(&self) -> Option<Arc<dyn Gate>> {
        Some(self.limiter.clone())
    }

    async fn start(&self) -> Result<(), ComponentError> {
        let limiter = self.limiter.clone();
        let every = self.check_interval;
        let id = self.id.clone();
        let mut system = System::new().map_err(|e| ComponentError::new(format!("cannot read memory: {e}")))?;
        let pid = Pid::from_u32(std::process::id());
        let check = move |system: &mut System| {
            system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing().with_memory(),
            );
            let rss = system.process(pid).map(|p| p.memory()).unwrap_or(0);
            limiter.rss.store(rss, Ordering::Relaxed);
            let over = rss > limiter.soft;
            if limiter.refusing.swap(over, Ordering::Relaxed) != over {
                if over {
                    tracing::warn!(processor = %id, "memory {} MiB above the soft limit {} MiB: refusing new data", rss >> 20, limiter.soft >> 20);
                } else {
                    tracing::info!(processor = %id, "memory {} MiB back under the soft limit: accepting again", rss >> 20);
                }
            }
        };
        check(&mut system);
        // Reading one process's memory is a read of /proc: quick enough to run on the async runtime.
        self.task.start(every, move || {
            check(&mut system);
            std::future::ready(())
        });
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), ComponentError> {
        self.task.stop("memory_limiter: checking memory").await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_from_mib_and_percentages() {
        let c = MemoryLimiterConfig {
            limit_mib: 1000,
            ..Default::default()
        };
        assert_eq!(
            c.limits(0),
            (1000 << 20, 800 << 20),
            "spike defaults to 20% of the limit"
        );
        let c = MemoryLimiterConfig {
            limit_mib: 1000,
            spike_limit_mib: Some(100),
            ..Default::default()
        };
        assert_eq!(c.limits(0), (1000 << 20, 900 << 20));
        let c = MemoryLimiterConfig {
            limit_percentage: 50,
            spike_limit_percentage: Some(10),
            ..Default::default()
        };
        assert_eq!(c.limits(1000 << 20), (500 << 20, 400 << 20));
        assert!(
            MemoryLimiterConfig::default().validate().is_err(),
            "a limit is required"
        );
    }
}
