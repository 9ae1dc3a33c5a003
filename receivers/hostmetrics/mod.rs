//! Receiver `hostmetrics`: system CPU and memory (the cgroup's limit when one applies, as in containers) and the
//! CPU and resident memory of model replica processes, sampled every `sample_interval` and reported every
//! `collection_interval` as the interval's average (`<name>`) and maximum (`<name>.max`).

mod config;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use infercol_pipelines::{
    AnyConfig, ComponentError, ComponentId, Consumer, Receiver, ReceiverContext, ReceiverFactory, ReplicaDirectory,
    Signal, config_as,
};
use regex::Regex;
use sysinfo::{MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

pub use config::{HostMetricsConfig, ProcessConfig, ProcessInclude};

use crate::sampling::{Gauges, Sampler, SamplingThread, Stat, kv, kv_int, now_ns};

pub struct HostMetricsReceiverFactory;

infercol_pipelines::factory!(
    HostMetricsReceiverFactory,
    "hostmetrics",
    HostMetricsConfig,
    &[Signal::Metrics]
);

impl ReceiverFactory for HostMetricsReceiverFactory {
    fn create(&self, config: &AnyConfig, ctx: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
        let consumer = ctx
            .consumers
            .get(Signal::Metrics)
            .cloned()
            .ok_or_else(|| ComponentError::new("hostmetrics feeds metrics pipelines only"))?;
        Ok(Box::new(HostMetricsReceiver {
            config: config_as::<HostMetricsConfig>(config)?.clone(),
            id: ctx.id,
            consumer: Some(consumer),
            replicas: ctx.shared.get::<infercol_pipelines::ReplicaDirectory>(),
            thread: None,
        }))
    }
}

pub struct HostMetricsReceiver {
    config: HostMetricsConfig,
    id: ComponentId,
    consumer: Option<Arc<dyn Consumer>>,
    replicas: ReplicaDirectory,
    thread: Option<SamplingThread>,
}

#[async_trait]
impl Receiver for HostMetricsReceiver {
    async fn start(&mut self) -> Result<(), ComponentError> {
        let consumer = self
            .consumer
            .take()
            .ok_or_else(|| ComponentError::new("started twice"))?;
        let sampler = HostSampler::new(&self.config, self.replicas.clone())?;
        self.thread = Some(SamplingThread::spawn(
            format!("{}", self.id),
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

struct ProcessStats {
    name: String,
    cpu: Stat,
    memory: Stat,
}

pub struct HostSampler {
    system: System,
    host: String,
    cpus: f64,
    include: ProcessInclude,
    command_lines: Vec<Regex>,
    replicas: Option<(ReplicaDirectory, std::time::Duration)>,
    /// Processes watched in this interval, chosen at the start of the interval.
    watched: Vec<Pid>,
    cpu: Stat,
    memory_used: Stat,
    memory_limit: u64,
    processes: HashMap<u32, ProcessStats>,
    interval_start_ns: u64,
}

impl HostSampler {
    pub fn new(config: &HostMetricsConfig, replicas: ReplicaDirectory) -> Result<HostSampler, ComponentError> {
        let system = System::new().map_err(|e| ComponentError::new(format!("cannot read system information: {e}")))?;
        let command_lines = config
            .process
            .include
            .command_lines
            .iter()
            .map(|p| Regex::new(p).map_err(|e| ComponentError::new(format!("process.include.command_lines: {e}"))))
            .collect::<Result<_, _>>()?;
        let mut sampler = HostSampler {
            system,
            host: System::host_name().unwrap_or_else(|_| "unknown".into()),
            cpus: 1.0,
            include: config.process.include.clone(),
            command_lines,
            replicas: config
                .process
                .replicas_from_telemetry
                .then_some((replicas, config.process.replica_ttl)),
            watched: Vec::new(),
            cpu: Stat::default(),
            memory_used: Stat::default(),
            memory_limit: 0,
            processes: HashMap::new(),
            interval_start_ns: now_ns(),
        };
        // A first CPU reading, so that the first sample has something to compare with.
        sampler.system.refresh_cpu_usage();
        sampler.cpus = sampler.system.cpus().len().max(1) as f64;
        sampler.choose_processes();
        Ok(sampler)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Picks the processes to watch this interval: those `process.include` names, and the known replicas.
    fn choose_processes(&mut self) {
        let wants_any = !self.include.names.is_empty() || !self.command_lines.is_empty();
        let mut chosen: Vec<Pid> = self.include.pids.iter().map(|p| Pid::from_u32(*p)).collect();
        if let Some((directory, ttl)) = &self.replicas {
            chosen.extend(directory.pids_on(&self.host, *ttl).into_iter().map(Pid::from_u32));
        }
        if wants_any {
            self.system.refresh_processes_specifics(
                ProcessesToUpdate::All,
                true,
                ProcessRefreshKind::nothing()
                    .with_cmd(UpdateKind::OnlyIfNotSet)
                    .with_exe(UpdateKind::OnlyIfNotSet),
            );
            for (pid, p) in self.system.processes() {
                let name = p.name().to_string_lossy();
                let exe = p
                    .exe()
                    .and_then(|e| e.file_name())
                    .map(|n| n.to_string_lossy().into_owned());
                let by_name = self
                    .include
                    .names
                    .iter()
                    .any(|n| *n == name || exe.as_deref() == Some(n.as_str()));
                let by_cmd = !self.command_lines.is_empty() && {
                    let cmd = p
                        .cmd()
                        .iter()
                        .map(|a| a.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(" ");
                    self.command_lines.iter().any(|r| r.is_match(&cmd))
                };
                if by_name || by_cmd {
                    chosen.push(*pid);
                }
            }
        }
        chosen.sort();
        chosen.dedup();
        self.watched = chosen;
    }
}

impl Sampler for HostSampler {
    fn sample(&mut self) {
        self.system.refresh_cpu_usage();
        self.cpu.add(f64::from(self.system.global_cpu_usage()) / 100.0);
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let (used, limit) = match self.system.cgroup_limits() {
            // In a container the cgroup's limit is what the replica can use.
            Some(c) if c.total_memory > 0 && c.total_memory < self.system.total_memory() => {
                (c.total_memory.saturating_sub(c.free_memory), c.total_memory)
            }
            _ => (self.system.used_memory(), self.system.total_memory()),
        };
        self.memory_used.add(used as f64);
        self.memory_limit = limit;
        if self.watched.is_empty() {
            return;
        }
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&self.watched),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        for pid in &self.watched {
            let Some(p) = self.system.process(*pid) else { continue };
            let stats = self.processes.entry(pid.as_u32()).or_insert_with(|| ProcessStats {
                name: p.name().to_string_lossy().into_owned(),
                cpu: Stat::default(),
                memory: Stat::default(),
            });
            // sysinfo reports a process's CPU in percent of one core; the convention is a share of all cores.
            stats.cpu.add(f64::from(p.cpu_usage()) / 100.0 / self.cpus);
            stats.memory.add(p.memory() as f64);
        }
    }

    fn collect(&mut self) -> Option<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest> {
        let now = now_ns();
        let mut g = Gauges::new(self.interval_start_ns, now);
        g.avg_max(
            "system.cpu.utilization",
            "1",
            "Share of CPU time in use, all cores.",
            &self.cpu,
            vec![],
        );
        g.avg_max(
            "system.memory.usage",
            "By",
            "Memory in use (the cgroup's, in a container).",
            &self.memory_used,
            vec![kv("system.memory.state", "used")],
        );
        if self.memory_limit > 0 {
            g.point(
                "system.memory.limit",
                "By",
                "Memory available in all (the cgroup limit, in a container).",
                self.memory_limit as f64,
                vec![],
            );
        }
        let mut pids: Vec<&u32> = self.processes.keys().collect();
        pids.sort();
        for pid in pids {
            let stats = &self.processes[pid];
            let mut attributes = vec![
                kv_int("process.pid", i64::from(*pid)),
                kv("process.executable.name", stats.name.clone()),
            ];
            if let Some((directory, _)) = &self.replicas
                && let Some(replica) = directory.lookup(&self.host, *pid)
            {
                attributes.extend(replica.labels().iter().map(|(k, v)| kv(k, *v)));
            }
            g.avg_max(
                "process.cpu.utilization",
                "1",
                "Share of all cores' CPU time the process used.",
                &stats.cpu,
                attributes.clone(),
            );
            g.avg_max(
                "process.memory.usage",
                "By",
                "Resident memory of the process.",
                &stats.memory,
                attributes,
            );
        }
        self.cpu = Stat::default();
        self.memory_used = Stat::default();
        self.processes.clear();
        self.interval_start_ns = now;
        self.choose_processes();
        g.into_request(vec![kv("host.name", self.host.clone())], "infercol/hostmetrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data as MetricData, number_data_point};

    fn value(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
        match p.value {
            Some(number_data_point::Value::AsDouble(d)) => d,
            _ => f64::NAN,
        }
    }

    fn string(key: &str, v: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn samples_this_machine_and_attributes_a_replica_process() {
        let replicas = ReplicaDirectory::default();
        let own_pid = std::process::id();
        let config = HostMetricsConfig::default();
        let mut sampler = HostSampler::new(&config, replicas.clone()).unwrap();
        // This test process plays a replica that sent spans with its host.name and process.pid.
        replicas.observe(&[
            string("service.name", "whisper"),
            string("host.name", sampler.host()),
            KeyValue {
                key: "process.pid".into(),
                value: Some(AnyValue {
                    value: Some(Value::IntValue(own_pid as i64)),
                }),
                ..Default::default()
            },
            string("deployment.environment.name", "test"),
        ]);
        sampler.choose_processes();
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(250));
            sampler.sample();
        }
        let request = sampler.collect().expect("metrics");
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let get = |name: &str| {
            metrics
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let points = |name: &str| match &get(name).data {
            Some(MetricData::Gauge(g)) => g.data_points.clone(),
            _ => panic!("gauge"),
        };
        let cpu = value(&points("system.cpu.utilization")[0]);
        let cpu_max = value(&points("system.cpu.utilization.max")[0]);
        assert!(
            (0.0..=1.0).contains(&cpu) && cpu <= cpu_max + 1e-9,
            "cpu {cpu} max {cpu_max}"
        );
        let used = value(&points("system.memory.usage")[0]);
        let limit = value(&points("system.memory.limit")[0]);
        assert!(used > 0.0 && used <= limit, "used {used} limit {limit}");
        assert_eq!(get("system.memory.usage").unit, "By");
        let rss = points("process.memory.usage");
        let mine = rss
            .iter()
            .find(|p| p.attributes.iter().any(|kv| kv.key == "process.pid" && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::IntValue(i)) if *i == own_pid as i64)))
            .expect("this process is watched as a replica");
        assert!(value(mine) > 1_000_000.0, "a test process has more than 1 MB resident");
        let label = |k: &str| {
            mine.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
        };
        assert_eq!(label("model").as_deref(), Some("whisper"));
        assert_eq!(label("environment").as_deref(), Some("test"));
        assert_eq!(
            label("service.instance.id"),
            Some(format!("{}:{own_pid}", sampler.host()))
        );
        assert!(points("process.cpu.utilization.max").len() == rss.len());
    }

    #[test]
    fn processes_by_name_and_command_line() {
        let config: HostMetricsConfig = HostMetricsConfig {
            process: ProcessConfig {
                include: ProcessInclude {
                    names: vec![],
                    command_lines: vec![regex::escape(&std::env::args().next().unwrap())],
                    pids: vec![],
                },
                replicas_from_telemetry: false,
                ..Default::default()
            },
            ..Default::default()
        };
        let sampler = HostSampler::new(&config, ReplicaDirectory::default()).unwrap();
        assert!(
            sampler.watched.contains(&Pid::from_u32(std::process::id())),
            "found by its command line"
        );
    }
}
