//! Which model replica a process is: learned from the resources of the telemetry model services send
//! (`host.name` + `process.pid`, which the OpenTelemetry SDKs add), so that host and GPU samples of that process
//! carry the replica's model, deployment, environment and `service.instance.id` without any configuration.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};

use crate::data::{Data, Payload};

/// What is known of one replica process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub service_instance_id: String,
    pub model: String,
    pub deployment: String,
    pub environment: String,
}

impl Replica {
    /// The labels this replica gives its process metrics.
    pub fn labels(&self) -> [(&'static str, &str); 4] {
        [
            ("model", &self.model),
            ("deployment", &self.deployment),
            ("environment", &self.environment),
            ("service.instance.id", &self.service_instance_id),
        ]
    }
}

/// Entries kept at most; past that the oldest are dropped (a bound against hostile resources).
const MAX_REPLICAS: usize = 100_000;
/// How often a known replica's `last_seen` is refreshed (so that the hot path mostly takes a read lock).
const REFRESH: Duration = Duration::from_secs(10);

/// (host.name, process.pid) -> the replica and when it was last heard from.
type Entries = HashMap<(String, u32), (Replica, Instant)>;

#[derive(Clone, Default)]
pub struct ReplicaDirectory {
    inner: Arc<RwLock<Entries>>,
}

fn text<'a>(attributes: &'a [KeyValue], keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| attributes.iter().find(|kv| kv.key == *k))
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        })
}

fn pid(attributes: &[KeyValue]) -> Option<u32> {
    let kv = attributes.iter().find(|kv| kv.key == "process.pid")?;
    match kv.value.as_ref()?.value.as_ref()? {
        Value::IntValue(i) => u32::try_from(*i).ok(),
        Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

impl ReplicaDirectory {
    /// Learns from one resource; cheap when nothing changed.
    pub fn observe(&self, resource: &[KeyValue]) {
        let (Some(host), Some(pid)) = (text(resource, &["host.name"]), pid(resource)) else {
            return;
        };
        let replica = Replica {
            service_instance_id: text(resource, &["service.instance.id"])
                .map(str::to_string)
                .unwrap_or_else(|| format!("{host}:{pid}")),
            model: text(resource, &["service.name"])
                .unwrap_or("unknown_service")
                .to_string(),
            deployment: text(resource, &["deployment.id", "deployment.name", "service.version"])
                .unwrap_or("unknown")
                .to_string(),
            environment: text(resource, &["deployment.environment.name", "deployment.environment"])
                .unwrap_or("unknown")
                .to_string(),
        };
        let now = Instant::now();
        if let Ok(map) = self.inner.read()
            && let Some((known, seen)) = map.get(&(host.to_string(), pid))
            && *known == replica
            && now.duration_since(*seen) < REFRESH
        {
            return;
        }
        let Ok(mut map) = self.inner.write() else { return };
        if map.len() >= MAX_REPLICAS
            && !map.contains_key(&(host.to_string(), pid))
            && let Some(oldest) = map.iter().min_by_key(|(_, (_, seen))| *seen).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert((host.to_string(), pid), (replica, now));
    }

    /// Learns from every resource of an export request.
    pub fn observe_data(&self, data: &Data) {
        match data.payload() {
            Payload::Traces(r) => r
                .resource_spans
                .iter()
                .filter_map(|x| x.resource.as_ref())
                .for_each(|res| self.observe(&res.attributes)),
            Payload::Metrics(r) => r
                .resource_metrics
                .iter()
                .filter_map(|x| x.resource.as_ref())
                .for_each(|res| self.observe(&res.attributes)),
            Payload::Logs(r) => r
                .resource_logs
                .iter()
                .filter_map(|x| x.resource.as_ref())
                .for_each(|res| self.observe(&res.attributes)),
        }
    }

    pub fn lookup(&self, host: &str, pid: u32) -> Option<Replica> {
        self.inner
            .read()
            .ok()?
            .get(&(host.to_string(), pid))
            .map(|(r, _)| r.clone())
    }

    /// The pids of replicas seen on `host` within `ttl`.
    pub fn pids_on(&self, host: &str, ttl: Duration) -> Vec<u32> {
        let now = Instant::now();
        let Ok(map) = self.inner.read() else { return Vec::new() };
        map.iter()
            .filter(|((h, _), (_, seen))| h == host && now.duration_since(*seen) < ttl)
            .map(|((_, pid), _)| *pid)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    #[test]
    fn learns_replicas_from_host_and_pid() {
        let d = ReplicaDirectory::default();
        d.observe(&[kv("service.name", Value::StringValue("llama".into()))]);
        assert!(
            d.pids_on("gpu-1", Duration::from_secs(60)).is_empty(),
            "no host.name/process.pid: nothing to learn"
        );
        d.observe(&[
            kv("service.name", Value::StringValue("llama".into())),
            kv("host.name", Value::StringValue("gpu-1".into())),
            kv("process.pid", Value::IntValue(4242)),
            kv("deployment.environment.name", Value::StringValue("prod".into())),
        ]);
        let r = d.lookup("gpu-1", 4242).unwrap();
        assert_eq!(
            (r.model.as_str(), r.environment.as_str(), r.deployment.as_str()),
            ("llama", "prod", "unknown")
        );
        assert_eq!(
            r.service_instance_id, "gpu-1:4242",
            "host.name + process.pid when there is no service.instance.id"
        );
        assert_eq!(d.pids_on("gpu-1", Duration::from_secs(60)), vec![4242]);
        assert!(d.lookup("gpu-2", 4242).is_none());
    }
}
