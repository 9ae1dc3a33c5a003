//! One day of a model's ~45 series at a 10 s flush (8,640 flushes of 45 points, and the 10 cumulative series'
//! last values), written as the dashboard writes them: one batch per flush, safe against a SIGKILL once written.
//! Then the whole history read back in key order, as at start. Prints time and bytes for each store.
//!
//! - fjall: a batch per flush, flushed to the OS (`PersistMode::Buffer`): a SIGKILL loses nothing written.
//! - redb: a write transaction per flush; `Durability::Immediate` (an fsync per commit), the least redb offers
//!   that a crash cannot lose (with `None`, commits are lost until a durable one follows).

use std::time::Instant;

const SERIES: u32 = 45;
const FLUSHES: u64 = 8_640;

fn key(id: u32, t: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&id.to_be_bytes());
    k[4..].copy_from_slice(&t.to_be_bytes());
    k
}

fn bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() { bytes(&e.path()) } else { std::os::unix::fs::MetadataExt::blocks(&m) * 512 }
        })
        .sum()
}

fn fjall_run() -> (f64, f64, u64, usize) {
    fjall_with(fjall::PersistMode::Buffer)
}

fn fjall_synced() -> (f64, f64, u64, usize) {
    fjall_with(fjall::PersistMode::SyncAll)
}

fn fjall_with(mode: fjall::PersistMode) -> (f64, f64, u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = fjall::Database::builder(dir.path()).cache_size(4 << 20).worker_threads(1).open().unwrap();
    let points = db.keyspace("points", fjall::KeyspaceCreateOptions::default).unwrap();
    let series = db.keyspace("series", fjall::KeyspaceCreateOptions::default).unwrap();
    let began = Instant::now();
    for f in 0..FLUSHES {
        let t = 1_800_000_000_000 + f * 10_000;
        let mut batch = db.batch();
        for id in 0..SERIES {
            batch.insert(&points, key(id, t), (f as f64).to_le_bytes());
        }
        for id in 0..10u32 {
            batch.insert(&series, id.to_be_bytes(), [0u8; 150]);
        }
        batch.commit().unwrap();
        db.persist(mode).unwrap();
    }
    let write = began.elapsed().as_secs_f64();
    drop((points, series, db));
    let began = Instant::now();
    let db = fjall::Database::builder(dir.path()).open().unwrap();
    let points = db.keyspace("points", fjall::KeyspaceCreateOptions::default).unwrap();
    let n = points.iter().count();
    let read = began.elapsed().as_secs_f64();
    (write, read, bytes(dir.path()), n)
}

fn redb_run() -> (f64, f64, u64, usize) {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const POINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("points");
    const SERIES_T: TableDefinition<u32, &[u8]> = TableDefinition::new("series");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.redb");
    let db = redb::Database::create(&path).unwrap();
    let began = Instant::now();
    for f in 0..FLUSHES {
        let t = 1_800_000_000_000 + f * 10_000;
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(POINTS).unwrap();
            for id in 0..SERIES {
                table.insert(&key(id, t)[..], &(f as f64).to_le_bytes()[..]).unwrap();
            }
            let mut series = tx.open_table(SERIES_T).unwrap();
            for id in 0..10u32 {
                series.insert(id, &[0u8; 150][..]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let write = began.elapsed().as_secs_f64();
    drop(db);
    let began = Instant::now();
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_read().unwrap();
    let n = tx.open_table(POINTS).unwrap().iter().unwrap().count();
    let read = began.elapsed().as_secs_f64();
    (write, read, bytes(dir.path()), n)
}

fn main() {
    println!("| store | write 1 day (8,640 flushes) | per flush | read back | points | bytes on disk |");
    println!("|---|---|---|---|---|---|");
    let runs: [(&str, fn() -> (f64, f64, u64, usize)); 3] = [
        ("fjall 3.1, flushed to the OS (as used)", fjall_run),
        ("fjall 3.1, fsync per flush", fjall_synced),
        ("redb 3, Durability::Immediate", redb_run),
    ];
    for (name, run) in runs {
        let (write, read, bytes, n) = run();
        println!(
            "| {name} | {write:.2} s | {:.0} us | {:.0} ms | {n} | {:.1} MiB |",
            write / FLUSHES as f64 * 1e6,
            read * 1e3,
            bytes as f64 / (1 << 20) as f64
        );
    }
}
