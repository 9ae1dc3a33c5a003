//! What model_metrics reads of a resource, worked out once per distinct resource and shared by every request that
//! carries it. A replica sends the same resource with every request; working it out each time (the owned pairs, the
//! dimension values, the resource's identity, its replica id: a prost decode, a hash and several allocations per
//! pair) cost more than the spans of a 10-span request.

use std::sync::{Arc, RwLock};

use opentelemetry_proto::tonic::common::v1::KeyValue;

use super::classify::{self, Rejection, Val};
use super::config::Source;
use super::state::Dims;

/// Resources kept: past it, the cache starts over.
pub const MAX_CACHED_RESOURCES: usize = 10_000;

/// One resource's facts.
pub struct ResourceFacts {
    /// Which process the resource is (see `resource_identity`).
    pub key: u64,
    /// The dimension values the resource gives (span attributes aside).
    pub dims: Dims,
    /// How many of those values were cut at `max_label_value_length` (counted with every request, as if worked
    /// out each time).
    pub truncated: usize,
    /// The resource-sourced dimensions the resource lacks (indices into `dimensions`): a span may carry them.
    pub missing: Vec<usize>,
    /// The replica the resource names, when it names one.
    pub replica: Option<String>,
}

impl ResourceFacts {
    /// Works out the facts of `attributes` under the processor's dimensions.
    pub fn new(
        attributes: &[KeyValue],
        dims: impl FnOnce(&[KeyValue], &mut Vec<Rejection>) -> Dims,
        dimensions: &[super::config::Dimension],
    ) -> ResourceFacts {
        let mut cut = Vec::new();
        let dims = dims(attributes, &mut cut);
        let missing = dimensions
            .iter()
            .enumerate()
            .filter(|(_, d)| d.source == Source::Resource && classify::find(attributes, &d.from).is_none())
            .map(|(i, _)| i)
            .collect();
        ResourceFacts {
            key: resource_identity(attributes),
            replica: infercol_pipelines::replicas::replica_id(attributes),
            truncated: cut.len(),
            dims,
            missing,
        }
    }
}

/// A resource of the cache: its pairs as encoded (what the key hashes), in the owned form, and its facts.
pub struct Cached {
    encoded: Vec<u8>,
    pub attributes: Vec<KeyValue>,
    pub facts: ResourceFacts,
}

/// Resources by `KeyValues::identity`. A hit is checked against the encoded pairs, so that a hash collision
/// cannot mix two resources.
#[derive(Default)]
pub struct ResourceCache {
    entries: RwLock<hashbrown::HashMap<u64, Arc<Cached>>>,
}

impl ResourceCache {
    /// The resource with these encoded attributes; its facts from `work_out` the first time.
    pub fn get_or_insert(
        &self,
        attributes: &infercol_pipelines::lite::KeyValues<'_>,
        work_out: impl FnOnce(&[KeyValue]) -> ResourceFacts,
    ) -> Arc<Cached> {
        let identity = attributes.identity();
        if let Ok(cache) = self.entries.read()
            && let Some(cached) = cache.get(&identity)
            && attributes.is_encoded(&cached.encoded)
        {
            return cached.clone();
        }
        let owned = attributes.owned();
        let cached = Arc::new(Cached {
            encoded: attributes.encoded(),
            facts: work_out(&owned),
            attributes: owned,
        });
        if let Ok(mut cache) = self.entries.write() {
            if cache.len() >= MAX_CACHED_RESOURCES {
                cache.clear();
            }
            cache.insert(identity, cached.clone());
        }
        cached
    }
}

/// Which process a resource is: a hash of its attributes, stable within this process.
pub fn resource_identity(resource: &[KeyValue]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for kv in resource {
        kv.key.hash(&mut h);
        match kv.value.as_ref().map(Val::from) {
            Some(Val::Str(s)) => s.hash(&mut h),
            Some(Val::Int(i)) => i.hash(&mut h),
            Some(Val::Double(d)) => d.to_bits().hash(&mut h),
            Some(Val::Bool(b)) => b.hash(&mut h),
            // Arrays, maps and bytes are rare on resources: their debug form is enough to tell them apart.
            _ => format!("{:?}", kv.value).hash(&mut h),
        }
    }
    h.finish()
}
