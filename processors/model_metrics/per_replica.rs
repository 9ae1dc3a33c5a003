//! Requests and end-to-end time replica by replica, for the dashboard's replica table: `model.replica.requests`
//! (a sum) and `model.replica.request.duration` (an exponential histogram of few buckets), with the attributes
//! `service.instance.id` and the replica's model dimensions.
//!
//! The request metrics proper carry no replica dimension: a fleet of replicas would multiply every series by
//! its size. These two are the only series that do, and they are bounded on their own: at most
//! `REPLICA_TABLE_LIMIT` replicas over all models (those past it are counted in the request metrics, not here),
//! each with one sum and one histogram of at most `BUCKETS` buckets.
//!
//! A replica is known here by its resource's identity (a hash, as the recording path already has it); its id and
//! model dimensions are read from the resource once per flush interval and recording shard.

use hashbrown::{HashMap, HashSet};

use infercol_pipelines::histogram::ExpoHistogram;
use infercol_pipelines::replicas::{ModelDims, model_dims, replica_id};
use opentelemetry_proto::tonic::common::v1::KeyValue;

use super::state::REPLICA_TABLE_LIMIT;

/// Buckets of each replica's histogram: a p95 for a table, within 9% (scale 2) over values 16 octaves apart
/// (50 ms to an hour), at 512 bytes per replica, a third of the request histograms'.
pub const BUCKETS: usize = 64;

/// Resources remembered as naming no replica, per state and flush interval.
const MAX_UNNAMED: usize = 10_000;

/// A replica's id and model dimensions.
#[derive(Clone, Debug)]
pub struct Name {
    pub id: String,
    pub dims: ModelDims,
}

/// What one replica's requests recorded.
#[derive(Clone, Debug)]
pub struct Tally {
    pub count: f64,
    pub duration: ExpoHistogram,
    pub start_ns: u64,
    pub last_ns: u64,
    pub dirty: bool,
}

impl Tally {
    fn new(start_ns: u64) -> Tally {
        Tally {
            count: 0.0,
            duration: ExpoHistogram::new(BUCKETS, 20),
            start_ns,
            last_ns: start_ns,
            dirty: false,
        }
    }
}

/// The replicas' tallies of one state (a recording shard, or the state that emits).
#[derive(Default)]
pub struct PerReplica {
    pub names: HashMap<u64, Name>,
    pub tallies: HashMap<u64, Tally>,
    /// Resources that name no replica (or came past the limit), so that they are read once per interval.
    unnamed: HashSet<u64>,
}

impl PerReplica {
    /// The replica a resource is, by its identity, when it names one within the limit: its id and model
    /// dimensions are read from the resource the first time in a flush interval. Requests of other resources
    /// are not tallied.
    pub fn replica_of(&mut self, resource_key: u64, resource: &[KeyValue]) -> Option<u64> {
        if self.names.contains_key(&resource_key) {
            return Some(resource_key);
        }
        if self.unnamed.contains(&resource_key) {
            return None;
        }
        match replica_id(resource) {
            Some(id) if self.names.len() < REPLICA_TABLE_LIMIT => {
                let dims = model_dims(resource);
                self.names.insert(resource_key, Name { id, dims });
                Some(resource_key)
            }
            _ => {
                if self.unnamed.len() < MAX_UNNAMED {
                    self.unnamed.insert(resource_key);
                }
                None
            }
        }
    }

    /// One request of the replica `resource_key`: its adjusted count and end-to-end time, if it has one.
    pub fn record(&mut self, resource_key: u64, weight: f64, weight_int: u64, duration: Option<f64>, now_ns: u64) {
        // A resource known to name no replica takes no slot (a request resolved later comes without its resource).
        if self.unnamed.contains(&resource_key) {
            return;
        }
        let full = self.tallies.len() >= REPLICA_TABLE_LIMIT;
        let tally = match self.tallies.get_mut(&resource_key) {
            Some(t) => t,
            None if full => return,
            None => self.tallies.entry(resource_key).or_insert_with(|| Tally::new(now_ns)),
        };
        tally.count += weight;
        if let Some(d) = duration.filter(|d| d.is_finite() && *d >= 0.0) {
            tally.duration.record(d, weight_int);
        }
        tally.last_ns = now_ns;
        tally.dirty = true;
    }

    /// Moves the shards' names, then their tallies, into this one (the state that emits), within the limit: a
    /// request resolved in one shard may have had its resource named in another.
    pub fn absorb_all(&mut self, shards: Vec<PerReplica>) {
        let mut tallies = Vec::with_capacity(shards.len());
        for shard in shards {
            for (key, name) in shard.names {
                if self.names.len() < REPLICA_TABLE_LIMIT || self.names.contains_key(&key) {
                    self.names.entry(key).or_insert(name);
                }
            }
            tallies.push(shard.tallies);
        }
        for shard in tallies {
            self.absorb_tallies(shard);
        }
    }

    fn absorb_tallies(&mut self, tallies: HashMap<u64, Tally>) {
        for (key, t) in tallies {
            // Tallies of resources that name no replica are not kept: they would take the slots of replicas.
            if !self.names.contains_key(&key) {
                continue;
            }
            let full = self.tallies.len() >= REPLICA_TABLE_LIMIT;
            let into = match self.tallies.get_mut(&key) {
                Some(into) => into,
                None if full => continue,
                None => self.tallies.entry(key).or_insert_with(|| Tally::new(t.start_ns)),
            };
            into.count += t.count;
            into.duration.merge(&t.duration);
            into.start_ns = into.start_ns.min(t.start_ns);
            into.last_ns = into.last_ns.max(t.last_ns);
            into.dirty |= t.dirty;
        }
    }

    /// After a flush: delta tallies start over; replicas silent for `expiration_ns` go.
    pub fn flushed(&mut self, delta: bool, now_ns: u64, expiration_ns: u64) {
        for t in self.tallies.values_mut() {
            if delta {
                *t = Tally {
                    last_ns: t.last_ns,
                    ..Tally::new(now_ns)
                };
            }
            t.dirty = false;
        }
        self.tallies
            .retain(|_, t| now_ns.saturating_sub(t.last_ns) < expiration_ns);
        let tallies = &self.tallies;
        self.names.retain(|key, _| tallies.contains_key(key));
        self.unnamed.clear();
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

impl PerReplica {
    /// `model.replica.requests` and `model.replica.request.duration` for the replicas that have a name (and, with
    /// delta temporality, recorded something since the last flush).
    pub fn metrics(&self, delta: bool, now_ns: u64) -> Vec<opentelemetry_proto::tonic::metrics::v1::Metric> {
        use opentelemetry_proto::tonic::metrics::v1::{
            AggregationTemporality, ExponentialHistogram, Metric, NumberDataPoint, Sum, metric::Data, number_data_point,
        };
        let temporality = if delta {
            AggregationTemporality::Delta
        } else {
            AggregationTemporality::Cumulative
        } as i32;
        let mut rows: Vec<(&Name, &Tally)> = self
            .tallies
            .iter()
            .filter(|(_, t)| t.dirty || !delta)
            .filter_map(|(key, t)| Some((self.names.get(key)?, t)))
            .collect();
        rows.sort_by(|a, b| (&a.0.dims, &a.0.id).cmp(&(&b.0.dims, &b.0.id)));
        if rows.is_empty() {
            return Vec::new();
        }
        let attributes = |n: &Name| {
            vec![
                kv("model", &n.dims.0),
                kv("deployment", &n.dims.1),
                kv("environment", &n.dims.2),
                kv("service.instance.id", &n.id),
            ]
        };
        let counts = rows
            .iter()
            .map(|(n, t)| NumberDataPoint {
                attributes: attributes(n),
                start_time_unix_nano: t.start_ns,
                time_unix_nano: now_ns,
                value: Some(number_data_point::Value::AsDouble(t.count)),
                ..Default::default()
            })
            .collect();
        let durations = rows
            .iter()
            .filter(|(_, t)| t.duration.count() > 0)
            .map(|(n, t)| t.duration.to_otlp(attributes(n), t.start_ns, now_ns))
            .collect();
        vec![
            Metric {
                name: "model.replica.requests".into(),
                description: "Requests each replica served (its resource's request spans).".into(),
                unit: "{request}".into(),
                data: Some(Data::Sum(Sum {
                    data_points: counts,
                    aggregation_temporality: temporality,
                    is_monotonic: true,
                })),
                ..Default::default()
            },
            Metric {
                name: "model.replica.request.duration".into(),
                description: "End-to-end time of each replica's requests, in few buckets (for a p95 per replica)."
                    .into(),
                unit: "s".into(),
                data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: durations,
                    aggregation_temporality: temporality,
                })),
                ..Default::default()
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(id: &str) -> Vec<KeyValue> {
        vec![kv("service.name", "chat"), kv("service.instance.id", id)]
    }

    /// Two shards' tallies absorbed: each replica's count and durations add up; past the limit nothing is kept.
    #[test]
    fn shards_add_up_per_replica_within_the_limit() {
        let mut emitting = PerReplica::default();
        for durations in [[0.1, 0.2], [0.3, 0.4]] {
            let mut shard = PerReplica::default();
            for (key, id) in [(1, "a"), (2, "b")] {
                assert_eq!(shard.replica_of(key, &resource(id)), Some(key));
                for d in durations {
                    shard.record(key, 1.0, 1, Some(d), 10);
                }
            }
            emitting.absorb_all(vec![shard]);
        }
        let metrics = emitting.metrics(false, 20);
        let opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum) = metrics[0].data.clone().unwrap() else {
            panic!("a sum")
        };
        let values: Vec<f64> = sum
            .data_points
            .iter()
            .map(|p| match p.value {
                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(v)) => v,
                _ => f64::NAN,
            })
            .collect();
        assert_eq!(values, vec![4.0, 4.0]);
        // The 95th of 0.1, 0.2, 0.3, 0.4 by rank (floor(0.95 * 3) = 2): 0.3, within the buckets' bound.
        let p95 = emitting.tallies[&1].duration.quantile(0.95).unwrap();
        assert!((p95 - 0.3).abs() / 0.3 < 0.1, "{p95}");

        // A resource that names no replica is not tallied, in the shard nor where it is absorbed.
        let mut shard = PerReplica::default();
        let nameless = vec![kv("service.name", "chat")];
        assert_eq!(shard.replica_of(9, &nameless), None);
        shard.record(9, 1.0, 1, Some(0.1), 10);
        assert!(shard.tallies.is_empty());
        let mut other = PerReplica::default();
        other.record(8, 1.0, 1, Some(0.1), 10);
        emitting.absorb_all(vec![other]);
        assert!(!emitting.tallies.contains_key(&8));
        // A request resolved in one shard, its resource named in another: kept.
        let (mut resolved, mut named) = (PerReplica::default(), PerReplica::default());
        resolved.record(7, 1.0, 1, Some(0.1), 10);
        named.replica_of(7, &resource("c"));
        emitting.absorb_all(vec![resolved, named]);
        assert_eq!(emitting.tallies[&7].count, 1.0);

        let mut full = PerReplica::default();
        for key in 0..(REPLICA_TABLE_LIMIT as u64 + 5) {
            full.record(key, 1.0, 1, Some(0.1), 10);
        }
        assert_eq!(full.tallies.len(), REPLICA_TABLE_LIMIT);
        // Delta tallies start over at each flush, and silent ones go.
        full.flushed(true, 20, 5);
        assert!(full.tallies.is_empty());
    }
}
