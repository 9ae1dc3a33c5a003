//! What the collector knows of model replicas, learned from the resources of every signal received and shared by
//! the components of one running collector:
//! - which process a replica is (`host.name` + `process.pid`, which the OpenTelemetry SDKs add), so that host and
//!   GPU samples of that process carry the replica's model, deployment, environment and `service.instance.id`;
//! - each replica's lifecycle (contract: first telemetry of any signal -> starting; first request span or the end
//!   of `model.load` -> active; silent for `replica_ttl` -> gone), for `model.replicas`;
//! - which models a `replica_probe` receiver watches (the probe wins over telemetry), and which models report their
//!   own `model.async_queue.size` gauge (that value wins over the derived one).

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

/// The model dimensions of a replica: (model, deployment, environment).
pub type ModelDims = (String, String, String);

#[derive(Clone, Debug)]
struct Lifecycle {
    dims: ModelDims,
    last_seen: Instant,
    active: bool,
    /// When it entered its state (first seen, or first active), in Unix seconds.
    since: f64,
}

/// One replica as the replica table shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaState {
    pub id: String,
    pub dims: ModelDims,
    pub active: bool,
    /// When it entered that state, in Unix seconds.
    pub since: f64,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The most model dimensions remembered as derived from spans.
const FROM_SPANS_LIMIT: usize = 100_000;

#[derive(Default)]
struct Fleet {
    replicas: HashMap<String, Lifecycle>,
    probed: HashMap<ModelDims, Instant>,
    queue_reported: HashMap<ModelDims, Instant>,
    /// Model dimensions model_metrics derived request metrics for from spans, and when last.
    from_spans: HashMap<ModelDims, Instant>,
}

/// Replicas counted by state for one model / deployment / environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReplicaCounts {
    pub active: u64,
    pub starting: u64,
}

#[derive(Clone, Default)]
pub struct ReplicaDirectory {
    inner: Arc<RwLock<Entries>>,
    fleet: Arc<RwLock<Fleet>>,
    /// Resources of decoded requests observed within `RECENT`, by `KeyValues::identity`: a request from one of
    /// them costs a lookup, not the owned form of its attributes (a decode and a few allocations per pair).
    recent: Arc<RwLock<HashMap<u64, Instant>>>,
}

/// How long a resource observed stays observed: what `seen` would skip anyway (it refreshes a replica at most once
/// a second).
const RECENT: Duration = Duration::from_secs(1);
/// Resources remembered as recent at most; past it the stale ones go, and if none is stale, all.
const MAX_RECENT: usize = 100_000;

/// The replica id of a resource (contract: `service.instance.id`, else `host.name` + `process.pid`).
pub fn replica_id(resource: &[KeyValue]) -> Option<String> {
    if let Some(id) = text(resource, &["service.instance.id"]) {
        return Some(id.to_string());
    }
    Some(format!("{}:{}", text(resource, &["host.name"])?, pid(resource)?))
}

/// The model dimensions of a resource, by the contract's default mapping.
pub fn model_dims(resource: &[KeyValue]) -> ModelDims {
    let label = |keys: &[&str], default: &str| {
        let value = text(resource, keys).unwrap_or(default);
        truncate_label(value, DEFAULT_MAX_LABEL_VALUE_LENGTH).0.into_owned()
    };
    (
        label(&["service.name"], "unknown_service"),
        label(&["deployment.id", "deployment.name", "service.version"], "unknown"),
        label(&["deployment.environment.name", "deployment.environment"], "unknown"),
    )
}

/// The longest label value taken from telemetry by default (bytes); longer ones are cut and marked.
pub const DEFAULT_MAX_LABEL_VALUE_LENGTH: usize = 256;

/// What ends a label value that was cut.
pub const TRUNCATION_MARKER: &str = "...";

/// `value` cut to at most `max` bytes (on a character boundary, the marker included) when longer, and whether it
/// was cut. Label values come from clients: without a bound, a few huge model names make every series, every
/// page and every store grow with them.
pub fn truncate_label(value: &str, max: usize) -> (std::borrow::Cow<'_, str>, bool) {
    if value.len() <= max {
        return (std::borrow::Cow::Borrowed(value), false);
    }
    let mut end = max.saturating_sub(TRUNCATION_MARKER.len());
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    (
        std::borrow::Cow::Owned(format!("{}{TRUNCATION_MARKER}", &value[..end])),
        true,
    )
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
        self.seen(resource, false);
        self.observe_process(resource);
    }

    /// A replica's telemetry arrived (`active`: it served a request or finished loading its model).
    pub fn seen(&self, resource: &[KeyValue], active: bool) {
        if let Some(id) = replica_id(resource) {
            self.seen_replica(&id, resource, active);
        }
    }

    /// `seen` for a resource whose replica id (`replica_id`) is known already.
    pub fn seen_replica(&self, id: &str, resource: &[KeyValue], active: bool) {
        let now = Instant::now();
        if let Ok(fleet) = self.fleet.read()
            && let Some(known) = fleet.replicas.get(id)
            && (known.active || !active)
            && now.duration_since(known.last_seen) < Duration::from_secs(1)
        {
            return;
        }
        let Ok(mut fleet) = self.fleet.write() else { return };
        if fleet.replicas.len() >= MAX_REPLICAS && !fleet.replicas.contains_key(id) {
            return;
        }
        let entry = fleet.replicas.entry(id.to_string()).or_insert_with(|| Lifecycle {
            dims: model_dims(resource),
            last_seen: now,
            active: false,
            since: unix_now(),
        });
        entry.last_seen = now;
        if active && !entry.active {
            entry.since = unix_now();
        }
        entry.active |= active;
    }

    /// At most `limit` replicas one by one (sorted by model dimensions, then id), with their state and since when;
    /// models a probe watches are left out, as in [`ReplicaDirectory::counts`].
    pub fn states(&self, ttl: Duration, limit: usize) -> Vec<ReplicaState> {
        let now = Instant::now();
        let Ok(fleet) = self.fleet.read() else {
            return Vec::new();
        };
        let mut out: Vec<ReplicaState> = fleet
            .replicas
            .iter()
            .filter(|(_, r)| now.duration_since(r.last_seen) < ttl && !fleet.probed.contains_key(&r.dims))
            .map(|(id, r)| ReplicaState {
                id: id.clone(),
                dims: r.dims.clone(),
                active: r.active,
                since: r.since,
            })
            .collect();
        out.sort_by(|a, b| (&a.dims, &a.id).cmp(&(&b.dims, &b.id)));
        out.truncate(limit);
        out
    }

    /// Replicas by model dimensions and state; replicas silent for `ttl` are gone. Models a probe watches are left
    /// out (the probe reports them).
    pub fn counts(&self, ttl: Duration) -> Vec<(ModelDims, ReplicaCounts)> {
        let now = Instant::now();
        let Ok(mut fleet) = self.fleet.write() else {
            return Vec::new();
        };
        fleet.replicas.retain(|_, r| now.duration_since(r.last_seen) < ttl);
        fleet.probed.retain(|_, t| now.duration_since(*t) < ttl);
        let mut out: HashMap<ModelDims, ReplicaCounts> = HashMap::new();
        for r in fleet.replicas.values() {
            if fleet.probed.contains_key(&r.dims) {
                continue;
            }
            let c = out.entry(r.dims.clone()).or_default();
            if r.active {
                c.active += 1;
            } else {
                c.starting += 1;
            }
        }
        let mut out: Vec<_> = out.into_iter().collect();
        out.sort();
        out
    }

    /// A `replica_probe` receiver watches these model dimensions.
    pub fn probed(&self, dims: &ModelDims) {
        if let Ok(mut fleet) = self.fleet.write() {
            fleet.probed.insert(dims.clone(), Instant::now());
        }
    }

    /// A service reported its own `model.async_queue.size` for these model dimensions.
    pub fn queue_size_reported(&self, dims: ModelDims) {
        if let Ok(mut fleet) = self.fleet.write() {
            fleet.queue_reported.insert(dims, Instant::now());
        }
    }

    /// model_metrics derived request metrics from spans for these model dimensions: a scraper leaves its own
    /// equivalents of them out, so that nothing is counted twice.
    pub fn derived_from_spans(&self, dims: &ModelDims) {
        if let Ok(mut fleet) = self.fleet.write() {
            match fleet.from_spans.get_mut(dims) {
                Some(at) => *at = Instant::now(),
                None => {
                    // Bounded by model_metrics' own cardinality limit in practice; an hour-old entry never
                    // matters (scrapers ask about the last minutes), so a full table sheds those first.
                    if fleet.from_spans.len() >= FROM_SPANS_LIMIT {
                        fleet
                            .from_spans
                            .retain(|_, at| at.elapsed() < Duration::from_secs(3600));
                    }
                    if fleet.from_spans.len() < FROM_SPANS_LIMIT {
                        fleet.from_spans.insert(dims.clone(), Instant::now());
                    }
                }
            }
        }
    }

    /// Whether spans gave request metrics for these dimensions within `within`.
    pub fn derives_from_spans(&self, dims: &ModelDims, within: Duration) -> bool {
        self.fleet
            .read()
            .ok()
            .and_then(|f| f.from_spans.get(dims).copied())
            .is_some_and(|t| t.elapsed() < within)
    }

    /// Whether a service reported its own queue size for these dimensions within `within`.
    pub fn reports_queue_size(&self, dims: &ModelDims, within: Duration) -> bool {
        self.fleet
            .read()
            .ok()
            .and_then(|f| f.queue_reported.get(dims).copied())
            .is_some_and(|t| t.elapsed() < within)
    }

    fn observe_process(&self, resource: &[KeyValue]) {
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
        if let Some(view) = data.view() {
            // One clock read per request: the resources of one request arrive at the same moment.
            let now = Instant::now();
            for resource in view.resources() {
                let attributes = resource.attributes();
                let identity = attributes.identity();
                let recent = self
                    .recent
                    .read()
                    .is_ok_and(|r| r.get(&identity).is_some_and(|t| now.duration_since(*t) < RECENT));
                if recent {
                    continue;
                }
                self.observe(&attributes.owned());
                if let Ok(mut r) = self.recent.write() {
                    if r.len() >= MAX_RECENT {
                        r.retain(|_, t| now.duration_since(*t) < RECENT);
                        if r.len() >= MAX_RECENT {
                            r.clear();
                        }
                    }
                    r.insert(identity, now);
                }
            }
            return;
        }
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
    #[test]
    fn long_label_values_are_cut_on_a_character_boundary_with_a_marker() {
        let (short, cut) = truncate_label("llama", 256);
        assert_eq!((short.as_ref(), cut), ("llama", false));
        let long = "é".repeat(300);
        let (value, cut) = truncate_label(&long, 256);
        assert!(cut && value.len() <= 256 && value.ends_with(TRUNCATION_MARKER));
        assert!(value.starts_with("éé"));
    }

    #[test]
    fn replica_lifecycle_starting_active_gone_and_probe_wins() {
        let d = ReplicaDirectory::default();
        let a = [
            kv("service.name", Value::StringValue("llama".into())),
            kv("service.instance.id", Value::StringValue("a".into())),
        ];
        let b = [
            kv("service.name", Value::StringValue("llama".into())),
            kv("service.instance.id", Value::StringValue("b".into())),
        ];
        d.observe(&a);
        d.observe(&b);
        let dims = ("llama".to_string(), "unknown".to_string(), "unknown".to_string());
        assert_eq!(
            d.counts(Duration::from_secs(120)),
            vec![(dims.clone(), ReplicaCounts { active: 0, starting: 2 })]
        );
        d.seen(&a, true);
        d.observe(&a);
        assert_eq!(
            d.counts(Duration::from_secs(120)),
            vec![(dims.clone(), ReplicaCounts { active: 1, starting: 1 })],
            "active stays active"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            d.counts(Duration::from_millis(10)).is_empty(),
            "silent past the ttl: gone"
        );
        d.observe(&a);
        d.probed(&dims);
        assert!(
            d.counts(Duration::from_secs(120)).is_empty(),
            "a probed model is the probe's to report"
        );
    }

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
