//! The async queue's size from spans: requests enqueued (`async.enqueue`, by message id) and not yet dequeued
//! (`async.queue` with the same id). Robust to spans that arrive out of order (a dequeue before its enqueue is
//! remembered), twice (ids are idempotent) or never (an entry older than `queue_entry_ttl` is dropped and counted).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use infercol_pipelines::ModelDims;

use super::state::Dims;

/// A finished entry is kept this long at most, to recognise a late duplicate of its enqueue.
const COMPLETED_RETENTION: Duration = Duration::from_secs(300);
/// Entries kept at most (a bound against a flood of never-dequeued ids); past it new ids are counted as dropped.
const MAX_ENTRIES: usize = 1_000_000;

struct Entry {
    /// Set by the enqueue span: whose queue it is.
    queue: Option<(Dims, ModelDims)>,
    dequeued: bool,
    touched: Instant,
}

#[derive(Default)]
pub struct QueueTracker {
    entries: HashMap<String, Entry>,
    /// Every queue seen, with the model dimensions it reports under and when it last changed.
    queues: HashMap<Dims, (ModelDims, Instant)>,
}

/// What expiry removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Enqueued requests whose dequeue never came within the ttl.
    pub lost: u64,
}

impl QueueTracker {
    pub fn enqueue(&mut self, id: &str, dims: &Dims, model: ModelDims, now: Instant) -> bool {
        if !self.entries.contains_key(id) && self.entries.len() >= MAX_ENTRIES {
            return false;
        }
        let entry = self.entries.entry(id.to_string()).or_insert(Entry {
            queue: None,
            dequeued: false,
            touched: now,
        });
        if entry.queue.is_none() {
            entry.queue = Some((dims.clone(), model.clone()));
        }
        entry.touched = now;
        self.queues.insert(dims.clone(), (model, now));
        true
    }

    pub fn dequeue(&mut self, id: &str, now: Instant) -> bool {
        if !self.entries.contains_key(id) && self.entries.len() >= MAX_ENTRIES {
            return false;
        }
        let entry = self.entries.entry(id.to_string()).or_insert(Entry {
            queue: None,
            dequeued: false,
            touched: now,
        });
        entry.dequeued = true;
        entry.touched = now;
        if let Some((dims, _)) = &entry.queue
            && let Some(q) = self.queues.get_mut(dims)
        {
            q.1 = now;
        }
        true
    }

    /// Requests waiting, per queue (every queue seen, zero when drained).
    pub fn sizes(&self) -> Vec<(Dims, ModelDims, u64)> {
        let mut counts: HashMap<&Dims, u64> = HashMap::new();
        for e in self.entries.values() {
            if let (Some((dims, _)), false) = (&e.queue, e.dequeued) {
                *counts.entry(dims).or_default() += 1;
            }
        }
        let mut out: Vec<_> = self
            .queues
            .iter()
            .map(|(dims, (model, _))| (dims.clone(), model.clone(), counts.get(dims).copied().unwrap_or(0)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Drops pending entries older than `ttl` (counted as lost), finished ones after a short retention, and
    /// queues idle for `queue_expiration` with nothing waiting.
    pub fn expire(&mut self, now: Instant, ttl: Duration, queue_expiration: Duration) -> Expired {
        let mut lost = 0;
        let completed = ttl.min(COMPLETED_RETENTION);
        self.entries.retain(|_, e| {
            let age = now.duration_since(e.touched);
            let pending = e.queue.is_some() && !e.dequeued;
            let keep = if pending { age < ttl } else { age < completed };
            if !keep && pending {
                lost += 1;
            }
            keep
        });
        let waiting: std::collections::HashSet<&Dims> = self
            .entries
            .values()
            .filter(|e| !e.dequeued)
            .filter_map(|e| e.queue.as_ref().map(|(d, _)| d))
            .collect();
        let idle: Vec<Dims> = self
            .queues
            .iter()
            .filter(|(d, (_, t))| !waiting.contains(d) && now.duration_since(*t) >= queue_expiration)
            .map(|(d, _)| d.clone())
            .collect();
        for d in idle {
            self.queues.remove(&d);
        }
        Expired { lost }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> Dims {
        vec!["m".to_string(), "d".into(), "e".into()].into()
    }
    fn model() -> ModelDims {
        ("m".into(), "d".into(), "e".into())
    }
    fn size(q: &QueueTracker) -> u64 {
        q.sizes().iter().map(|(_, _, n)| n).sum()
    }

    #[test]
    fn in_order_the_queue_fills_and_drains_to_zero() {
        let mut q = QueueTracker::default();
        let now = Instant::now();
        for i in 0..5 {
            q.enqueue(&format!("m{i}"), &dims(), model(), now);
        }
        assert_eq!(size(&q), 5);
        for i in 0..5 {
            q.dequeue(&format!("m{i}"), now);
        }
        assert_eq!(q.sizes(), vec![(dims(), model(), 0)], "a drained queue reports 0");
    }

    #[test]
    fn out_of_order_and_duplicates() {
        let mut q = QueueTracker::default();
        let now = Instant::now();
        q.dequeue("a", now);
        q.enqueue("a", &dims(), model(), now);
        assert_eq!(size(&q), 0, "a dequeue seen before its enqueue still counts");
        q.enqueue("b", &dims(), model(), now);
        q.enqueue("b", &dims(), model(), now);
        assert_eq!(size(&q), 1, "an enqueue sent twice counts once");
        q.dequeue("b", now);
        q.dequeue("b", now);
        q.enqueue("b", &dims(), model(), now);
        assert_eq!(size(&q), 0, "late duplicates change nothing");
    }

    #[test]
    fn lost_dequeues_expire_and_are_counted() {
        let mut q = QueueTracker::default();
        let t0 = Instant::now();
        q.enqueue("never-dequeued", &dims(), model(), t0);
        q.enqueue("done", &dims(), model(), t0);
        q.dequeue("done", t0);
        assert_eq!(size(&q), 1);
        let e = q.expire(
            t0 + Duration::from_secs(30),
            Duration::from_secs(3600),
            Duration::from_secs(300),
        );
        assert_eq!(e.lost, 0);
        let e = q.expire(
            t0 + Duration::from_secs(3601),
            Duration::from_secs(3600),
            Duration::from_secs(300),
        );
        assert_eq!(e, Expired { lost: 1 });
        assert_eq!(q.len(), 0, "nothing kept past the ttl");
        assert_eq!(size(&q), 0);
    }
}
