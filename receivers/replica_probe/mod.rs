//! Receiver `replica_probe`: probes replicas' readiness endpoints as a Kubernetes readiness probe would, and
//! reports `model.replicas` by state: a 2xx answer is `active`; a refusal, a time-out or another status is
//! `starting` within `startup_timeout` of first sight (or of the last time it was active), and `failed` beyond.
//! Where a probe and the telemetry both see a model, the probe's count is the one reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use infercol_pipelines::config::duration;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, ComponentId, Consumer, Data, ModelDims, Receiver, ReceiverContext,
    ReceiverFactory, ReplicaDirectory, Signal, config_as,
};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::sampling::{Gauges, kv, now_ns};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The readiness endpoint, e.g. `http://10.0.0.7:8000/health/ready`.
    pub url: String,
    pub model: String,
    #[serde(default = "unknown")]
    pub deployment: String,
    #[serde(default = "unknown")]
    pub environment: String,
}

fn unknown() -> String {
    "unknown".into()
}

/// `receivers.replica_probe`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaProbeConfig {
    pub targets: Vec<Target>,
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How long a replica that does not answer 2xx counts as starting before it counts as failed.
    #[serde(with = "duration")]
    pub startup_timeout: Duration,
}

impl Default for ReplicaProbeConfig {
    fn default() -> Self {
        ReplicaProbeConfig {
            targets: Vec::new(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            startup_timeout: Duration::from_secs(300),
        }
    }
}

impl ComponentConfig for ReplicaProbeConfig {
    fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("targets: list at least one readiness URL with its model".into());
        }
        for (i, t) in self.targets.iter().enumerate() {
            if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                return Err(format!(
                    "targets[{i}].url: `{}` must start with http:// or https://",
                    t.url
                ));
            }
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err("interval and timeout: must be more than 0".into());
        }
        if self.timeout > self.interval {
            return Err("timeout: must not exceed interval".into());
        }
        Ok(())
    }
}

/// The state of one replica, as its probes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeState {
    Active,
    Starting,
    Failed,
}

impl ProbeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeState::Active => "active",
            ProbeState::Starting => "starting",
            ProbeState::Failed => "failed",
        }
    }
}

/// One replica's probe history: the readiness-probe rules as a small state machine.
#[derive(Clone, Debug)]
pub struct ProbeHistory {
    since: Instant,
    state: ProbeState,
}

impl ProbeHistory {
    pub fn new(now: Instant) -> ProbeHistory {
        ProbeHistory {
            since: now,
            state: ProbeState::Starting,
        }
    }

    /// Applies one probe result (`ready`: a 2xx answer in time).
    pub fn observe(&mut self, ready: bool, now: Instant, startup_timeout: Duration) -> ProbeState {
        self.state = match (ready, self.state) {
            (true, _) => ProbeState::Active,
            // Not ready after being ready: it is starting again (a restart), from now.
            (false, ProbeState::Active) => {
                self.since = now;
                ProbeState::Starting
            }
            (false, _) if now.duration_since(self.since) < startup_timeout => ProbeState::Starting,
            (false, _) => ProbeState::Failed,
        };
        self.state
    }
}

pub struct ReplicaProbeFactory;

infercol_pipelines::factory!(
    ReplicaProbeFactory,
    "replica_probe",
    ReplicaProbeConfig,
    &[Signal::Metrics]
);

impl ReceiverFactory for ReplicaProbeFactory {
    fn create(&self, config: &AnyConfig, ctx: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
        let consumer = ctx
            .consumers
            .get(Signal::Metrics)
            .cloned()
            .ok_or_else(|| ComponentError::new("replica_probe feeds metrics pipelines only"))?;
        Ok(Box::new(ReplicaProbe {
            config: config_as::<ReplicaProbeConfig>(config)?.clone(),
            id: ctx.id,
            consumer: Some(consumer),
            replicas: ctx.shared.get::<infercol_pipelines::ReplicaDirectory>(),
            task: None,
        }))
    }
}

pub struct ReplicaProbe {
    config: ReplicaProbeConfig,
    id: ComponentId,
    consumer: Option<Arc<dyn Consumer>>,
    replicas: ReplicaDirectory,
    task: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

async fn probe(client: &reqwest::Client, url: &str) -> bool {
    matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
}

#[async_trait]
impl Receiver for ReplicaProbe {
    async fn start(&mut self) -> Result<(), ComponentError> {
        let consumer = self
            .consumer
            .take()
            .ok_or_else(|| ComponentError::new("started twice"))?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(self.config.timeout)
            .user_agent(concat!("infercol-replica-probe/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ComponentError::new(format!("cannot build the HTTP client: {e}")))?;
        let config = self.config.clone();
        let replicas = self.replicas.clone();
        let id = self.id.to_string();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut histories: Vec<ProbeHistory> = config.targets.iter().map(|_| ProbeHistory::new(start)).collect();
            let mut ticks = tokio::time::interval(config.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = &mut stopped => break,
                }
                let started = now_ns();
                let results = futures::future::join_all(config.targets.iter().map(|t| probe(&client, &t.url))).await;
                let now = Instant::now();
                let mut counts: BTreeMap<ModelDims, [u64; 3]> = BTreeMap::new();
                for ((target, history), ready) in config.targets.iter().zip(&mut histories).zip(results) {
                    let dims = (
                        target.model.clone(),
                        target.deployment.clone(),
                        target.environment.clone(),
                    );
                    replicas.probed(&dims);
                    let state = history.observe(ready, now, config.startup_timeout);
                    counts.entry(dims).or_default()[state as usize] += 1;
                }
                let mut g = Gauges::new(started, now_ns());
                for ((model, deployment, environment), by_state) in counts {
                    for state in [ProbeState::Active, ProbeState::Starting, ProbeState::Failed] {
                        let attributes = vec![
                            kv("model", model.clone()),
                            kv("deployment", deployment.clone()),
                            kv("environment", environment.clone()),
                            kv("state", state.as_str()),
                        ];
                        g.point(
                            "model.replicas",
                            "{replica}",
                            "Model replicas by state.",
                            by_state[state as usize] as f64,
                            attributes,
                        );
                    }
                }
                if let Some(request) = g.into_request(Vec::new(), "infercol/replica_probe")
                    && let Err(e) = consumer.consume(Data::metrics(request)).await
                {
                    tracing::warn!(receiver = %id, "metrics not accepted: {e}");
                }
            }
        });
        self.task = Some((stop, task));
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        if let Some((stop, task)) = self.task.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transition_of_the_readiness_rules() {
        let t0 = Instant::now();
        let startup = Duration::from_secs(60);
        let mut h = ProbeHistory::new(t0);
        assert_eq!(
            h.observe(false, t0 + Duration::from_secs(1), startup),
            ProbeState::Starting,
            "refused early: starting"
        );
        assert_eq!(
            h.observe(false, t0 + Duration::from_secs(61), startup),
            ProbeState::Failed,
            "beyond startup_timeout: failed"
        );
        assert_eq!(
            h.observe(true, t0 + Duration::from_secs(62), startup),
            ProbeState::Active,
            "2xx: active"
        );
        assert_eq!(
            h.observe(false, t0 + Duration::from_secs(63), startup),
            ProbeState::Starting,
            "not ready again: starting anew"
        );
        assert_eq!(
            h.observe(false, t0 + Duration::from_secs(100), startup),
            ProbeState::Starting
        );
        assert_eq!(
            h.observe(false, t0 + Duration::from_secs(124), startup),
            ProbeState::Failed
        );
        let mut fresh = ProbeHistory::new(t0);
        assert_eq!(
            fresh.observe(true, t0, startup),
            ProbeState::Active,
            "ready at first sight"
        );
    }
}
