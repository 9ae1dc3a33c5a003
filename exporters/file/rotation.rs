//! Rotation of the `file` exporter's file, as the Collector's file exporter does it (through lumberjack): at a
//! size the file is renamed to `<stem>-<time><.ext>` beside it and a fresh one is started; old backups are removed
//! by count and by age.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer};

/// lumberjack's backup time format (Go's `2006-01-02T15-04-05.000`): no colons, so it is a valid name everywhere.
const BACKUP_TIME: &str = "%Y-%m-%dT%H-%M-%S%.3f";

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// The size in MiB the file may reach; a record that would take it past this goes to a fresh file.
    pub max_megabytes: u64,
    /// Backups older than this many days (by the time in their name) are removed; 0 keeps them regardless of age.
    pub max_days: u64,
    /// The most backups kept, the newest; 0 keeps all.
    pub max_backups: usize,
    /// Backup names in the machine's local time instead of UTC.
    pub localtime: bool,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            max_megabytes: 100,
            max_days: 0,
            max_backups: 100,
            localtime: false,
        }
    }
}

impl RotationConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.max_megabytes == 0 {
            return Err(
                "rotation.max_megabytes: must be at least 1 (the size in MiB at which the file rotates)".into(),
            );
        }
        Ok(())
    }
}

/// `rotation` present turns rotation on, with the defaults when it has no body: `rotation:` (null) as `{}`.
pub(super) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RotationConfig>, D::Error> {
    Ok(Some(Option::<RotationConfig>::deserialize(d)?.unwrap_or_default()))
}

/// The rotation settings in the form the exporter uses them.
#[derive(Debug)]
pub(super) struct Rotation {
    max_bytes: u64,
    max_age: Option<Duration>,
    max_backups: usize,
    localtime: bool,
    /// The time of the last backup name given, in milliseconds since the epoch.
    last_ms: AtomicI64,
}

impl Rotation {
    pub(super) fn new(config: &RotationConfig) -> Rotation {
        Rotation {
            max_bytes: config.max_megabytes.saturating_mul(MIB),
            max_age: (config.max_days > 0).then(|| Duration::from_secs(config.max_days.saturating_mul(86_400))),
            max_backups: config.max_backups,
            localtime: config.localtime,
            last_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Whether a record of `len` bytes must start a fresh file. An empty file takes any record, however large, so
    /// that a record is never split and never refused.
    pub(super) fn is_due(&self, size: u64, len: u64) -> bool {
        size > 0 && size.saturating_add(len) > self.max_bytes
    }

    /// Renames the file at `path` to a backup and opens a fresh one there; then removes backups past the limits
    /// (a failure there is only logged: the data is safe either way).
    pub(super) fn rotate(&self, path: &Path) -> io::Result<File> {
        let backup = self.free_backup_name(path)?;
        match std::fs::rename(path, &backup) {
            Ok(()) => {}
            // Moved or removed already (a retry after a failed open, or someone else): start the fresh file.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("renaming to {}: {e}", backup.display()),
                ));
            }
        }
        let fresh = OpenOptions::new().create(true).append(true).open(path)?;
        if let Err(e) = self.prune(path) {
            tracing::warn!("file exporter: removing old backups of {}: {e}", path.display());
        }
        Ok(fresh)
    }

    /// The backup name for now, later than the last one given (rotations within a millisecond), and free: a rename
    /// never replaces an earlier backup, and the names order the backups as they were made, which pruning relies on.
    fn free_backup_name(&self, path: &Path) -> io::Result<PathBuf> {
        let mut ms = Utc::now()
            .timestamp_millis()
            .max(self.last_ms.load(Ordering::Relaxed).saturating_add(1));
        loop {
            let candidate = backup_path(path, &self.time_text(ms));
            if !candidate.try_exists()? {
                self.last_ms.store(ms, Ordering::Relaxed);
                return Ok(candidate);
            }
            ms += 1;
        }
    }

    fn time_text(&self, ms: i64) -> String {
        let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        if self.localtime {
            at.with_timezone(&Local).format(BACKUP_TIME).to_string()
        } else {
            at.format(BACKUP_TIME).to_string()
        }
    }

    /// Removes the backups beyond `max_backups` (the oldest) and those older than `max_age`.
    fn prune(&self, path: &Path) -> io::Result<()> {
        if self.max_backups == 0 && self.max_age.is_none() {
            return Ok(());
        }
        let mut backups = self.backups(path)?;
        // Newest first, by the time in the name as lumberjack orders them.
        backups.sort_by_key(|b| std::cmp::Reverse(b.0));
        let cutoff = self.max_age.and_then(|age| SystemTime::now().checked_sub(age));
        for (i, (at, backup)) in backups.iter().enumerate() {
            let too_many = self.max_backups > 0 && i >= self.max_backups;
            let too_old = cutoff.is_some_and(|cutoff| *at < cutoff);
            if too_many || too_old {
                std::fs::remove_file(backup)
                    .or_else(|e| {
                        if e.kind() == io::ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", backup.display())))?;
            }
        }
        Ok(())
    }

    /// The backups of `path` beside it, with the time in their names; files of other names are left alone.
    fn backups(&self, path: &Path) -> io::Result<Vec<(SystemTime, PathBuf)>> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let (prefix, ext) = name_parts(path);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(stamp) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix.as_str()))
                .and_then(|n| n.strip_suffix(ext.as_str()))
            else {
                continue;
            };
            if let Some(at) = self.parse_time(stamp) {
                out.push((at, entry.path()));
            }
        }
        Ok(out)
    }

    /// The time a backup name stands for, read in the zone it was written in.
    fn parse_time(&self, stamp: &str) -> Option<SystemTime> {
        let naive = NaiveDateTime::parse_from_str(stamp, BACKUP_TIME).ok()?;
        let local = self
            .localtime
            .then(|| Local.from_local_datetime(&naive).earliest())
            .flatten();
        Some(match local {
            Some(at) => at.into(),
            // UTC names, and a local time that does not exist (in a DST gap): read as UTC.
            None => naive.and_utc().into(),
        })
    }
}

/// `<stem>-` and `<.ext>` of the file's name (`spans.jsonl`: `spans-` and `.jsonl`; no extension: empty).
fn name_parts(path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (format!("{stem}-"), ext)
}

pub(super) fn backup_path(path: &Path, time: &str) -> PathBuf {
    let (prefix, ext) = name_parts(path);
    path.with_file_name(format!("{prefix}{time}{ext}"))
}
