//! The durable sending queue (`sending_queue.storage`): exports waiting on disk, so that a restart or a crash
//! loses nothing that was acknowledged to a client. Delivery is at least once.
//!
//! Layout: segment files `<n>.seg` of records `[len u32][crc32 u32][signal u8][OTLP protobuf]`, appended and
//! fsynced before the write is acknowledged (fsync policy: every record). A `cursor` file holds the position of
//! the first record not yet delivered; it is rewritten (write, rename) as deliveries complete, without fsync: after
//! a crash the records from the last saved cursor are delivered again. On start, the segments are scanned from the
//! cursor; a record cut short by a crash (bad length or checksum) ends the scan and is truncated away. Segments
//! behind the cursor are deleted.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::data::{Data, Signal};

const SEGMENT_BYTES: u64 = 16 << 20;
const HEADER: usize = 9;

/// Where a record is: (segment, offset).
pub type RecordId = (u64, u64);

struct Inner {
    writer: File,
    write_segment: u64,
    write_offset: u64,
    /// Records not yet handed to a consumer.
    pending: VecDeque<(RecordId, u32)>,
    /// Records handed out and not yet done.
    inflight: BTreeSet<RecordId>,
    closed: bool,
    saved_cursor: RecordId,
}

pub struct DiskQueue {
    dir: PathBuf,
    capacity: usize,
    inner: Mutex<Inner>,
    items: Notify,
    room: Notify,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:010}.seg"))
}

fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    out.sort();
    Ok(out)
}

fn read_cursor(dir: &Path) -> RecordId {
    std::fs::read_to_string(dir.join("cursor"))
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((0, 0))
}

fn signal_byte(s: Signal) -> u8 {
    s as u8
}

fn byte_signal(b: u8) -> Option<Signal> {
    Signal::ALL.get(b as usize).copied()
}

impl DiskQueue {
    /// Opens (or creates) the queue in `dir`, recovering what a previous run left.
    pub fn open(dir: &Path, capacity: usize) -> std::io::Result<DiskQueue> {
        std::fs::create_dir_all(dir)?;
        let cursor = read_cursor(dir);
        let mut pending = VecDeque::new();
        let mut last = (cursor.0, 0u64);
        for n in segments(dir)? {
            if n < cursor.0 {
                std::fs::remove_file(segment_path(dir, n))?;
                continue;
            }
            let path = segment_path(dir, n);
            let mut file = File::open(&path)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            let mut offset = if n == cursor.0 { cursor.1 as usize } else { 0 };
            let mut valid_end = offset;
            while offset + HEADER <= bytes.len() {
                // `len` counts the signal byte and the body.
                let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap_or([0; 4])) as usize;
                let crc = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap_or([0; 4]));
                let end = offset + 8 + len;
                if len == 0 || end > bytes.len() || crc32fast::hash(&bytes[offset + 8..end]) != crc {
                    break;
                }
                pending.push_back(((n, offset as u64), (len - 1) as u32));
                offset = end;
                valid_end = end;
            }
            if valid_end < bytes.len() {
                // A record cut short by a crash: cut it away so that appends start clean.
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(valid_end as u64)?;
                f.sync_all()?;
                tracing::warn!(
                    "sending queue {}: dropped a torn record at the end of {}",
                    dir.display(),
                    path.display()
                );
            }
            last = (n, valid_end as u64);
        }
        let (write_segment, write_offset) = last;
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, write_segment))?;
        writer.seek(SeekFrom::End(0))?;
        let write_offset = write_offset.max(writer.metadata()?.len());
        if !pending.is_empty() {
            tracing::info!(
                "sending queue {}: {} requests from before the restart",
                dir.display(),
                pending.len()
            );
        }
        Ok(DiskQueue {
            dir: dir.to_path_buf(),
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                writer,
                write_segment,
                write_offset,
                pending,
                inflight: BTreeSet::new(),
                closed: false,
                saved_cursor: cursor,
            }),
            items: Notify::new(),
            room: Notify::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.pending.len() + i.inflight.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a request and syncs it to disk; waits while the queue is full (or returns `Ok(false)` at once when
    /// `drop_when_full`).
    pub async fn push(&self, data: &Data, drop_when_full: bool) -> std::io::Result<bool> {
        let (signal, body) = data.to_record();
        loop {
            let room = self.room.notified();
            {
                let mut inner = self
                    .inner
                    .lock()
                    .map_err(|_| std::io::Error::other("queue lock poisoned"))?;
                if inner.closed {
                    return Err(std::io::Error::other("sending queue closed"));
                }
                if inner.pending.len() + inner.inflight.len() < self.capacity {
                    self.append(&mut inner, signal, &body)?;
                    drop(inner);
                    self.items.notify_one();
                    return Ok(true);
                }
            }
            if drop_when_full {
                return Ok(false);
            }
            room.await;
        }
    }

    fn append(&self, inner: &mut Inner, signal: Signal, body: &Bytes) -> std::io::Result<()> {
        if inner.write_offset >= SEGMENT_BYTES {
            inner.write_segment += 1;
            inner.write_offset = 0;
            inner.writer = OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment_path(&self.dir, inner.write_segment))?;
        }
        let len = body.len() + 1;
        let mut record = Vec::with_capacity(HEADER + body.len());
        record.extend_from_slice(&(len as u32).to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[signal_byte(signal)]);
        hasher.update(body);
        record.extend_from_slice(&hasher.finalize().to_le_bytes());
        record.push(signal_byte(signal));
        record.extend_from_slice(body);
        inner.writer.write_all(&record)?;
        inner.writer.sync_data()?;
        let id = (inner.write_segment, inner.write_offset);
        inner.write_offset += record.len() as u64;
        inner.pending.push_back((id, len as u32 - 1));
        Ok(())
    }

    /// The next request to deliver; `None` once the queue is closed (what is left stays on disk).
    pub async fn pop(&self) -> Option<(RecordId, Data)> {
        loop {
            let items = self.items.notified();
            {
                let mut inner = self.inner.lock().ok()?;
                if inner.closed {
                    return None;
                }
                if let Some((id, len)) = inner.pending.pop_front() {
                    inner.inflight.insert(id);
                    drop(inner);
                    match self.read(id, len) {
                        Ok(data) => return Some((id, data)),
                        Err(e) => {
                            tracing::error!(
                                "sending queue {}: unreadable record {id:?}, skipped: {e}",
                                self.dir.display()
                            );
                            self.done(id);
                            continue;
                        }
                    }
                }
            }
            items.await;
        }
    }

    fn read(&self, (segment, offset): RecordId, len: u32) -> std::io::Result<Data> {
        let mut file = File::open(segment_path(&self.dir, segment))?;
        file.seek(SeekFrom::Start(offset + HEADER as u64 - 1))?;
        let mut buf = vec![0u8; len as usize + 1];
        file.read_exact(&mut buf)?;
        let signal = byte_signal(buf[0]).ok_or_else(|| std::io::Error::other("unknown signal"))?;
        let body = Bytes::from(buf).slice(1..);
        Data::decode(signal, body).map_err(std::io::Error::other)
    }

    /// A record was delivered (or given up for good): the cursor moves past everything done.
    pub fn done(&self, id: RecordId) {
        let Ok(mut inner) = self.inner.lock() else { return };
        inner.inflight.remove(&id);
        let first_open = inner
            .inflight
            .iter()
            .next()
            .copied()
            .into_iter()
            .chain(inner.pending.front().map(|(id, _)| *id))
            .min()
            .unwrap_or((inner.write_segment, inner.write_offset));
        if first_open != inner.saved_cursor {
            let tmp = self.dir.join("cursor.tmp");
            let saved = std::fs::write(&tmp, format!("{} {}\n", first_open.0, first_open.1))
                .and_then(|()| std::fs::rename(&tmp, self.dir.join("cursor")));
            if saved.is_ok() {
                for n in inner.saved_cursor.0..first_open.0 {
                    let _ = std::fs::remove_file(segment_path(&self.dir, n));
                }
                inner.saved_cursor = first_open;
            }
        }
        drop(inner);
        self.room.notify_one();
    }

    /// Stops handing out records; what is on disk stays for the next start.
    pub fn close(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.closed = true;
        }
        self.items.notify_waiters();
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn data(name: &str) -> Data {
        Data::traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: name.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    fn name(d: &Data) -> String {
        match d.payload() {
            crate::Payload::Traces(t) => t.resource_spans[0].scope_spans[0].spans[0].name.clone(),
            _ => String::new(),
        }
    }

    #[tokio::test]
    async fn survives_a_restart_and_a_torn_write_delivering_at_least_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = DiskQueue::open(dir.path(), 100).unwrap();
            for i in 0..5 {
                assert!(q.push(&data(&format!("r{i}")), false).await.unwrap());
            }
            let (id, first) = q.pop().await.unwrap();
            assert_eq!(name(&first), "r0");
            q.done(id);
            let (_, second) = q.pop().await.unwrap();
            assert_eq!(name(&second), "r1");
            // Crash: r1 was handed out but not done, r2..r4 still queued.
        }
        // A torn record at the end, as a crash in the middle of a write leaves it.
        let seg = segment_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let q = DiskQueue::open(dir.path(), 100).unwrap();
        assert_eq!(q.len(), 4, "r1 (not done) and r2..r4 come back; r0 (done) does not");
        let mut names = Vec::new();
        for _ in 0..4 {
            let (id, d) = q.pop().await.unwrap();
            names.push(name(&d));
            q.done(id);
        }
        assert_eq!(names, ["r1", "r2", "r3", "r4"]);
        assert!(
            q.push(&data("after"), false).await.unwrap(),
            "appends after the cut tail"
        );
        let (_, d) = q.pop().await.unwrap();
        assert_eq!(name(&d), "after");
    }

    #[tokio::test]
    async fn a_full_queue_waits_or_drops() {
        let dir = tempfile::tempdir().unwrap();
        let q = std::sync::Arc::new(DiskQueue::open(dir.path(), 2).unwrap());
        assert!(q.push(&data("a"), false).await.unwrap());
        assert!(q.push(&data("b"), false).await.unwrap());
        assert!(
            !q.push(&data("c"), true).await.unwrap(),
            "full: dropped when asked to drop"
        );
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.push(&data("d"), false).await.unwrap() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "full: waits");
        let (id, _) = q.pop().await.unwrap();
        q.done(id);
        assert!(waiter.await.unwrap());
    }
}
