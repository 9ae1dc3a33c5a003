//! Receiver `nvml`: per GPU (`hw.id` = UUID, `hw.name`, `hw.gpu.index`), the utilisation (share of time a kernel
//! ran, from NVML's own samples so that short spikes inside the interval are seen: average and `.max`), memory
//! used and total, and per-process GPU memory of the running compute processes, attributed to model replicas.
//!
//! Without an NVIDIA driver or device it logs one warning and stays idle; `required: true` makes that a start-up
//! error. A query a device does not support (MIG, older GPUs) is logged once and skipped after.

pub mod device;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use infercol_pipelines::config::duration;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, ComponentId, Consumer, Receiver, ReceiverContext, ReceiverFactory,
    ReplicaDirectory, Signal, config_as,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use serde::Deserialize;

use crate::sampling::{Gauges, Sampler, SamplingThread, Stat, kv, kv_int, now_ns};
use device::{Gpu, GpuSource, NvmlSource, OpenError, QueryError};

/// `receivers.nvml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NvmlConfig {
    #[serde(with = "duration")]
    pub collection_interval: Duration,
    /// How often NVML's sample buffer is read (it holds only the last seconds).
    #[serde(with = "duration")]
    pub sample_interval: Duration,
    /// Fail at start-up when no GPU can be read, instead of warning and staying idle.
    pub required: bool,
}

impl Default for NvmlConfig {
    fn default() -> Self {
        NvmlConfig {
            collection_interval: Duration::from_secs(10),
            sample_interval: Duration::from_secs(1),
            required: false,
        }
    }
}

impl ComponentConfig for NvmlConfig {
    fn validate(&self) -> Result<(), String> {
        if self.sample_interval.is_zero() {
            return Err("sample_interval: must be more than 0".into());
        }
        if self.collection_interval < self.sample_interval {
            return Err("collection_interval: must be at least sample_interval".into());
        }
        Ok(())
    }
}

pub struct NvmlReceiverFactory {
    source: Arc<dyn GpuSource>,
}

impl Default for NvmlReceiverFactory {
    fn default() -> Self {
        NvmlReceiverFactory {
            source: Arc::new(NvmlSource),
        }
    }
}

impl NvmlReceiverFactory {
    /// A factory reading GPUs from `source` (unit tests pass a fake).
    pub fn with_source(source: Arc<dyn GpuSource>) -> Self {
        NvmlReceiverFactory { source }
    }
}

infercol_pipelines::factory!(NvmlReceiverFactory, "nvml", NvmlConfig, &[Signal::Metrics]);

impl ReceiverFactory for NvmlReceiverFactory {
    fn create(&self, config: &AnyConfig, ctx: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
        let consumer = ctx
            .consumers
            .get(Signal::Metrics)
            .cloned()
            .ok_or_else(|| ComponentError::new("nvml feeds metrics pipelines only"))?;
        Ok(Box::new(NvmlReceiver {
            config: config_as::<NvmlConfig>(config)?.clone(),
            id: ctx.id,
            source: self.source.clone(),
            consumer: Some(consumer),
            replicas: ctx.shared.get::<infercol_pipelines::ReplicaDirectory>(),
            thread: None,
        }))
    }
}

pub struct NvmlReceiver {
    config: NvmlConfig,
    id: ComponentId,
    source: Arc<dyn GpuSource>,
    consumer: Option<Arc<dyn Consumer>>,
    replicas: ReplicaDirectory,
    thread: Option<SamplingThread>,
}

#[async_trait]
impl Receiver for NvmlReceiver {
    async fn start(&mut self) -> Result<(), ComponentError> {
        let consumer = self
            .consumer
            .take()
            .ok_or_else(|| ComponentError::new("started twice"))?;
        let gpus = match self.source.open() {
            Ok(gpus) => gpus,
            Err(e) => {
                let why = match e {
                    OpenError::NoDriver(detail) => {
                        format!("no NVIDIA driver (libnvidia-ml.so.1 could not be loaded: {detail})")
                    }
                    OpenError::NoDevice => "the NVIDIA driver reports no GPU".to_string(),
                    OpenError::Failed(detail) => format!("NVML failed to start: {detail}"),
                };
                if self.config.required {
                    return Err(ComponentError::new(format!(
                        "{why}; `required: true` makes this an error"
                    )));
                }
                tracing::warn!(receiver = %self.id, "{why}: GPU metrics are off, the collector runs on");
                return Ok(());
            }
        };
        tracing::info!(receiver = %self.id, gpus = gpus.len(), "reading GPUs through NVML");
        let host = sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into());
        let sampler = GpuSampler::new(gpus, self.replicas.clone(), host, self.id.to_string());
        self.thread = Some(SamplingThread::spawn(
            self.id.to_string(),
            sampler,
            self.config.sample_interval,
            self.config.collection_interval,
            consumer,
        )?);
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ComponentError> {
        if let Some(t) = self.thread.take() {
            t.stop().await;
        }
        Ok(())
    }
}

struct GpuState {
    gpu: Box<dyn Gpu>,
    uuid: String,
    name: String,
    last_sample_us: u64,
    utilization: Stat,
    memory_used: Stat,
    memory_total: Option<u64>,
    processes: HashMap<u32, Stat>,
}

pub struct GpuSampler {
    gpus: Vec<GpuState>,
    replicas: ReplicaDirectory,
    host: String,
    id: String,
    /// (GPU uuid, query) pairs already reported as unsupported.
    unsupported: HashSet<(String, &'static str)>,
    interval_start_ns: u64,
}

impl GpuSampler {
    pub fn new(gpus: Vec<Box<dyn Gpu>>, replicas: ReplicaDirectory, host: String, id: String) -> GpuSampler {
        let gpus = gpus
            .into_iter()
            .map(|gpu| GpuState {
                uuid: gpu.uuid().unwrap_or_else(|_| format!("GPU-index-{}", gpu.index())),
                name: gpu.name().unwrap_or_default(),
                gpu,
                last_sample_us: 0,
                utilization: Stat::default(),
                memory_used: Stat::default(),
                memory_total: None,
                processes: HashMap::new(),
            })
            .collect();
        GpuSampler {
            gpus,
            replicas,
            host,
            id,
            unsupported: HashSet::new(),
            interval_start_ns: now_ns(),
        }
    }

    /// Queries that failed as unsupported, each reported once.
    pub fn unsupported(&self) -> &HashSet<(String, &'static str)> {
        &self.unsupported
    }

    fn unsupported_once(
        unsupported: &mut HashSet<(String, &'static str)>,
        id: &str,
        uuid: &str,
        what: &'static str,
        e: &QueryError,
    ) {
        match e {
            QueryError::NotSupported => {
                if unsupported.insert((uuid.to_string(), what)) {
                    tracing::warn!(receiver = %id, gpu = %uuid, "this GPU does not support {what}; it is left out");
                }
            }
            QueryError::Failed(detail) => tracing::debug!(receiver = %id, gpu = %uuid, "{what}: {detail}"),
        }
    }
}

impl Sampler for GpuSampler {
    fn sample(&mut self) {
        for g in &mut self.gpus {
            let skip =
                |unsupported: &HashSet<(String, &'static str)>, what| unsupported.contains(&(g.uuid.clone(), what));
            if !skip(&self.unsupported, "utilization samples") {
                match g.gpu.utilization_samples(g.last_sample_us) {
                    Ok(samples) => {
                        for (ts, v) in samples {
                            if ts > g.last_sample_us {
                                g.utilization.add(v / 100.0);
                                g.last_sample_us = ts;
                            }
                        }
                    }
                    Err(e) => {
                        Self::unsupported_once(&mut self.unsupported, &self.id, &g.uuid, "utilization samples", &e)
                    }
                }
            } else if !skip(&self.unsupported, "utilization") {
                match g.gpu.utilization() {
                    Ok(v) => g.utilization.add(v / 100.0),
                    Err(e) => Self::unsupported_once(&mut self.unsupported, &self.id, &g.uuid, "utilization", &e),
                }
            }
            if !skip(&self.unsupported, "memory") {
                match g.gpu.memory() {
                    Ok((used, total)) => {
                        g.memory_used.add(used as f64);
                        g.memory_total = Some(total);
                    }
                    Err(e) => Self::unsupported_once(&mut self.unsupported, &self.id, &g.uuid, "memory", &e),
                }
            }
            if !skip(&self.unsupported, "running compute processes") {
                match g.gpu.processes() {
                    Ok(list) => {
                        for (pid, bytes) in list {
                            if let Some(b) = bytes {
                                g.processes.entry(pid).or_default().add(b as f64);
                            }
                        }
                    }
                    Err(e) => Self::unsupported_once(
                        &mut self.unsupported,
                        &self.id,
                        &g.uuid,
                        "running compute processes",
                        &e,
                    ),
                }
            }
        }
    }

    fn collect(&mut self) -> Option<ExportMetricsServiceRequest> {
        let now = now_ns();
        let mut out = Gauges::new(self.interval_start_ns, now);
        for g in &mut self.gpus {
            let device = vec![
                kv("hw.id", g.uuid.clone()),
                kv("hw.name", g.name.clone()),
                kv_int("hw.gpu.index", i64::from(g.gpu.index())),
            ];
            out.avg_max(
                "hw.gpu.utilization",
                "1",
                "Share of time a kernel ran on the GPU.",
                &g.utilization,
                device.clone(),
            );
            if let Some(avg) = g.memory_used.avg() {
                out.point("hw.gpu.memory.usage", "By", "GPU memory in use.", avg, device.clone());
            }
            if let Some(total) = g.memory_total {
                out.point(
                    "hw.gpu.memory.limit",
                    "By",
                    "GPU memory in all.",
                    total as f64,
                    device.clone(),
                );
            }
            let mut pids: Vec<&u32> = g.processes.keys().collect();
            pids.sort();
            for pid in pids {
                let mut attributes = vec![kv("hw.id", g.uuid.clone()), kv_int("process.pid", i64::from(*pid))];
                if let Some(replica) = self.replicas.lookup(&self.host, *pid) {
                    attributes.extend(replica.labels().iter().map(|(k, v)| kv(k, *v)));
                }
                if let Some(avg) = g.processes[pid].avg() {
                    out.point(
                        "process.gpu.memory.usage",
                        "By",
                        "GPU memory a process holds.",
                        avg,
                        attributes,
                    );
                }
            }
            g.utilization = Stat::default();
            g.memory_used = Stat::default();
            g.processes.clear();
        }
        self.interval_start_ns = now;
        out.into_request(vec![kv("host.name", self.host.clone())], "infercol/nvml")
    }
}

#[cfg(test)]
mod tests;
