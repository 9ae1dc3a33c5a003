//! The dashboard's history on disk (`storage`): every point the store keeps, written at each export, so that a
//! restart shows the history up to the last flush.
//!
//! Kept in [fjall](https://docs.rs/fjall), an embedded log-structured (LSM) key-value store: the workload is
//! append-mostly and time-ordered (a few thousand small points at each flush, read back in key order once, at
//! start), which an LSM tree writes sequentially to its journal; the journal's batches carry checksums, and a torn
//! or corrupt last batch (a crash in the middle of a write) is detected and cut at recovery, never served. The
//! README gives the figures against the alternative measured (`bench/storage`).
//!
//! Two keyspaces: `series` (a series id -> its name, labels, kind, origin and last cumulative value, as JSON) and
//! `points` (id and time, big-endian so that keys sort by series then time -> the value, 8 bytes).
//!
//! Writes are flushed to the operating system at every export (a SIGKILL loses nothing written; a power cut loses
//! what the OS had not written, at most a few seconds), and synced to the disk at shutdown. When a write fails
//! (disk full) the store stops writing, logs once, counts the points it could not write, and tries again after
//! [`RETRY_AFTER`]; the collector and its other exporters go on, and the page keeps serving from memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize};

use infercol_pipelines::histogram::ExpoHistogram;

use super::histograms::decode;
use super::store::{Kind, Origin, Point};

/// How long writing pauses after a failure before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What a series is, as written in `series`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesRecord {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub kind: Kind,
    pub origin: Origin,
    pub relative_error: Option<f64>,
    /// A cumulative sum's last (start time, value): after a restart, the next point's increase is still right.
    pub last_cumulative: Option<(u64, f64)>,
}

/// What changed in the store since the last write.
#[derive(Debug, Default)]
pub struct Changes {
    pub series: Vec<(u32, SeriesRecord)>,
    pub points: Vec<(u32, Point)>,
    /// Points gone: expired, or merged into a coarser one.
    pub removed: Vec<(u32, i64)>,
    /// Series gone with all their points (expired).
    pub dropped_series: Vec<u32>,
    /// Histogram steps (encoded), new or merged.
    pub steps: Vec<(u32, i64, Vec<u8>)>,
    pub removed_steps: Vec<(u32, i64)>,
    /// A cumulative histogram's last point: its start time (8 bytes) and the histogram, encoded.
    pub lasts: Vec<(u32, Vec<u8>)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
            && self.points.is_empty()
            && self.removed.is_empty()
            && self.dropped_series.is_empty()
            && self.steps.is_empty()
            && self.removed_steps.is_empty()
            && self.lasts.is_empty()
    }
}

/// A histogram series read back: id, record, steps, and its last cumulative point.
pub type LoadedHistogram = (
    u32,
    SeriesRecord,
    Vec<(i64, ExpoHistogram<u32>)>,
    Option<(u64, ExpoHistogram<u64>)>,
);

/// Everything read back at start.
#[derive(Default)]
pub struct History {
    pub points: Loaded,
    pub histograms: Vec<LoadedHistogram>,
}

pub struct Disk {
    dir: PathBuf,
    db: Database,
    series: Keyspace,
    points: Keyspace,
    steps: Keyspace,
    lasts: Keyspace,
    /// Since when writing fails, to try again after [`RETRY_AFTER`].
    failing_since: Option<Instant>,
    /// Points not written because writing failed.
    pub dropped_points: u64,
}

fn point_key(id: u32, t: i64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&id.to_be_bytes());
    key[4..].copy_from_slice(&(t.max(0) as u64).to_be_bytes());
    key
}

/// Everything read back at start: each series with its id, record and points in time order.
pub type Loaded = Vec<(u32, SeriesRecord, Vec<Point>)>;

impl Disk {
    /// Opens (or creates) the store in `dir`. Another collector holding it, a directory that cannot be created or
    /// written, or a store that cannot be read is an error that names the key.
    pub fn open(dir: &Path) -> Result<Disk, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("storage: cannot create `{}`: {e}", dir.display()))?;
        let probe = dir.join(".writable");
        std::fs::write(&probe, b"").map_err(|e| format!("storage: `{}` is not writable: {e}", dir.display()))?;
        let _ = std::fs::remove_file(probe);
        let db = Database::builder(dir)
            // A small footprint: the store is read once, at start; the page answers from memory.
            .cache_size(4 << 20)
            .max_journaling_size(64 << 20)
            .worker_threads(1)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => format!(
                    "storage: `{}` is in use by another collector (each collector needs a storage directory of its own)",
                    dir.display()
                ),
                e => format!("storage: cannot open `{}`: {e}", dir.display()),
            })?;
        let open = |name: &str| {
            db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(4 << 20))
                .map_err(|e| format!("storage: cannot open `{}`: {e}", dir.display()))
        };
        let (series, points) = (open("series")?, open("points")?);
        let (steps, lasts) = (open("steps")?, open("lasts")?);
        Ok(Disk {
            dir: dir.to_path_buf(),
            db,
            series,
            points,
            steps,
            lasts,
            failing_since: None,
            dropped_points: 0,
        })
    }

    /// Every series and its points, in key order. A record that cannot be read is an error: the store was written
    /// by something else.
    pub fn load(&self) -> Result<History, String> {
        let bad = |e: &dyn std::fmt::Display| format!("storage: reading `{}`: {e}", self.dir.display());
        let mut history = History::default();
        let (mut points_of, mut histograms_of) = (HashMap::new(), HashMap::new());
        for kv in self.series.iter() {
            let (k, v) = kv.into_inner().map_err(|e| bad(&e))?;
            let id = u32::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| bad(&"a series key of the wrong size"))?,
            );
            let record: SeriesRecord = serde_json::from_slice(&v).map_err(|e| bad(&e))?;
            if record.kind == Kind::Histogram {
                histograms_of.insert(id, history.histograms.len());
                history.histograms.push((id, record, Vec::new(), None));
            } else {
                points_of.insert(id, history.points.len());
                history.points.push((id, record, Vec::new()));
            }
        }
        // Points of a series whose record is gone (dropped between two writes) are left out.
        for (id, t, v) in self.entries(&self.points)? {
            let value = v
                .as_slice()
                .try_into()
                .map(f64::from_le_bytes)
                .map_err(|_| bad(&"a point of the wrong size"))?;
            if let Some(&i) = points_of.get(&id) {
                history.points[i].2.push(Point { t, v: value });
            }
        }
        for (id, t, v) in self.entries(&self.steps)? {
            let step = decode(&v).ok_or_else(|| bad(&"a histogram step that cannot be read"))?;
            if let Some(&i) = histograms_of.get(&id) {
                history.histograms[i].2.push((t, step));
            }
        }
        for kv in self.lasts.iter() {
            let (k, v) = kv.into_inner().map_err(|e| bad(&e))?;
            let id = k
                .as_ref()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| bad(&"a key of the wrong size"))?;
            let start = v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
            let last = v.get(8..).and_then(decode);
            if let (Some(&i), Some(start), Some(last)) = (histograms_of.get(&id), start, last) {
                history.histograms[i].3 = Some((start, last));
            }
        }
        Ok(history)
    }

    /// The (series id, time, value) entries of a keyspace keyed by series and time, in order.
    fn entries(&self, keyspace: &Keyspace) -> Result<Vec<(u32, i64, Vec<u8>)>, String> {
        let mut out = Vec::new();
        for kv in keyspace.iter() {
            let (k, v) = kv
                .into_inner()
                .map_err(|e| format!("storage: reading `{}`: {e}", self.dir.display()))?;
            let (Ok(id), Ok(t)) = (
                k.get(..4).unwrap_or_default().try_into().map(u32::from_be_bytes),
                k.get(4..12).unwrap_or_default().try_into().map(u64::from_be_bytes),
            ) else {
                return Err(format!(
                    "storage: reading `{}`: a key of the wrong size",
                    self.dir.display()
                ));
            };
            out.push((id, t as i64, v.to_vec()));
        }
        Ok(out)
    }

    /// Writes `changes` in one batch, flushed to the operating system. Returns whether they were written.
    pub fn write(&mut self, changes: Changes) -> bool {
        if changes.is_empty() {
            return true;
        }
        if self.failing_since.is_some_and(|since| since.elapsed() < RETRY_AFTER) {
            self.dropped_points += (changes.points.len() + changes.steps.len()) as u64;
            return false;
        }
        let points = (changes.points.len() + changes.steps.len()) as u64;
        match self.try_write(changes) {
            Ok(()) => {
                if self.failing_since.take().is_some() {
                    tracing::info!(storage = %self.dir.display(), "dashboard: writing history to storage again");
                }
                true
            }
            Err(e) => {
                if self.failing_since.is_none() {
                    tracing::warn!(storage = %self.dir.display(),
                        "dashboard: cannot write history to storage ({e}); the page keeps serving from memory, and writing is tried again every {}s",
                        RETRY_AFTER.as_secs());
                }
                self.failing_since = Some(Instant::now());
                self.dropped_points += points;
                false
            }
        }
    }

    fn try_write(&self, changes: Changes) -> fjall::Result<()> {
        let mut batch = self.db.batch();
        for id in &changes.dropped_series {
            batch.remove(&self.series, id.to_be_bytes());
            batch.remove(&self.lasts, id.to_be_bytes());
            for keyspace in [&self.points, &self.steps] {
                for kv in keyspace.prefix(id.to_be_bytes()) {
                    batch.remove(keyspace, kv.key()?);
                }
            }
        }
        for (id, record) in &changes.series {
            let value = serde_json::to_vec(record).unwrap_or_default();
            batch.insert(&self.series, id.to_be_bytes(), value);
        }
        for (id, t) in &changes.removed {
            batch.remove(&self.points, point_key(*id, *t));
        }
        for (id, p) in &changes.points {
            batch.insert(&self.points, point_key(*id, p.t), p.v.to_le_bytes());
        }
        for (id, t) in &changes.removed_steps {
            batch.remove(&self.steps, point_key(*id, *t));
        }
        for (id, t, step) in changes.steps {
            batch.insert(&self.steps, point_key(id, t), step);
        }
        // Only the newest of a series' last points matters.
        let mut lasts = HashMap::new();
        for (id, last) in changes.lasts {
            lasts.insert(id, last);
        }
        for (id, last) in lasts {
            batch.insert(&self.lasts, id.to_be_bytes(), last);
        }
        batch.commit()?;
        self.db.persist(PersistMode::Buffer)
    }

    /// Syncs what was written to the disk (at shutdown).
    pub fn sync(&self) {
        if let Err(e) = self.db.persist(PersistMode::SyncAll) {
            tracing::warn!(storage = %self.dir.display(), "dashboard: syncing history to storage: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::tests::{kv, request};
    use super::super::store::{Store, TIERS};
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, Gauge, Metric, NumberDataPoint, Sum, metric::Data, number_data_point,
    };

    const DAY_MS: i64 = 86_400_000;

    /// A request counter (cumulative) and a queue gauge of model `m`, at `t_ms`.
    fn flush(t_ms: i64, total: f64, queue: f64) -> Vec<Metric> {
        let point = |v: f64, start: u64| NumberDataPoint {
            attributes: vec![kv("model", "m")],
            start_time_unix_nano: start,
            time_unix_nano: t_ms as u64 * 1_000_000,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        vec![
            Metric {
                name: "model.requests".into(),
                data: Some(Data::Sum(Sum {
                    data_points: vec![point(total, 1)],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            },
            Metric {
                name: "model.async_queue.size".into(),
                data: Some(Data::Gauge(Gauge {
                    data_points: vec![point(queue, 0)],
                })),
                ..Default::default()
            },
        ]
    }

    fn snapshot(store: &Store) -> Vec<(String, Vec<Point>)> {
        let mut out: Vec<_> = store
            .series
            .iter()
            .map(|(k, s)| (k.0.clone(), s.points.iter().copied().collect::<Vec<_>>()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Seven days at a 10 s flush, written as they come: the store rolls the older points up (counts kept,
    /// gauges' last), what is on disk is what is in memory, and a reopened store reads it all back.
    #[test]
    fn seven_days_roll_up_and_read_back_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let start = 1_800_000_000_000i64;
        let end = start + 7 * DAY_MS;
        let mut store = Store::new(Duration::from_secs(7 * 86_400), 100);
        store.keep_changes();
        let mut disk = Disk::open(dir.path()).unwrap();
        let (mut t, mut total) = (start, 0.0);
        while t <= end {
            total += 3.0;
            store.ingest(&request(flush(t, total, (t / 10_000 % 7) as f64)));
            if t % 600_000 == 0 {
                store.expire(t);
                assert!(disk.write(store.take_changes()));
            }
            t += 10_000;
        }
        store.expire(end);
        assert!(disk.write(store.take_changes()));
        let requests = &store.series.iter().find(|(k, _)| k.0 == "model.requests").unwrap().1;
        // Each flush adds 3; the first point is a baseline (its series started long before it).
        let counted: f64 = requests.points.iter().map(|p| p.v).sum();
        assert_eq!(counted, total - 3.0, "rolling up keeps every count");
        let raw = TIERS[0].0 / 10_000;
        let minutes = (TIERS[1].0 - TIERS[0].0) / 60_000;
        let tens = (7 * DAY_MS - TIERS[1].0) / 600_000;
        let n = requests.points.len() as i64;
        assert!(
            (n - (raw + minutes + tens)).abs() <= 3,
            "{n} points, about {}",
            raw + minutes + tens
        );
        let before = snapshot(&store);
        drop(disk);
        let reopened = Disk::open(dir.path()).unwrap();
        let mut again = Store::new(Duration::from_secs(7 * 86_400), 100);
        again.restore(reopened.load().unwrap());
        assert_eq!(snapshot(&again), before, "the disk holds what memory held");
    }

    /// A second collector on the same directory is refused with what to do.
    #[test]
    fn a_directory_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Disk::open(dir.path()).unwrap();
        let second = Disk::open(dir.path()).err().expect("refused");
        assert!(
            second.contains("storage:") && second.contains("in use by another collector"),
            "{second}"
        );
    }

    /// A torn last write (garbage after the last whole batch of the journal) is cut at reopening: the batches
    /// before it are served, nothing of it.
    #[test]
    fn a_torn_journal_tail_is_cut_and_the_rest_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::new(Duration::from_secs(86_400), 100);
        store.keep_changes();
        let mut disk = Disk::open(dir.path()).unwrap();
        for i in 0..5i64 {
            store.ingest(&request(flush(1_800_000_000_000 + i * 10_000, i as f64 + 1.0, 1.0)));
            assert!(disk.write(store.take_changes()));
        }
        drop(disk);
        let journal = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
            .max()
            .expect("a journal file");
        let mut bytes = std::fs::read(&journal).unwrap();
        bytes.extend_from_slice(&[0xA5; 100]);
        std::fs::write(&journal, bytes).unwrap();
        let loaded = Disk::open(dir.path()).unwrap().load().unwrap();
        let mut again = Store::new(Duration::from_secs(86_400), 100);
        again.restore(loaded);
        assert_eq!(snapshot(&again), snapshot(&store));
    }
}
