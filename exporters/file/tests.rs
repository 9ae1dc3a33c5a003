//! The `file` exporter's rotation: at the size, whole records, nothing lost, old backups removed; and its keys.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, ComponentId, Config, Data, Exporter, ExporterContext, ExporterFactory,
    Receiver, ReceiverContext, ReceiverFactory, Registry, Signal, Telemetry, config_as,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde::Deserialize;

use super::rotation::backup_path;
use super::{FileExporterConfig, FileExporterFactory, RotationConfig};

const MIB: usize = 1024 * 1024;

/// A request of one span named `r<index>` padded to `bytes` characters: its line is a little longer.
fn record(index: usize, bytes: usize) -> Data {
    let mut name = format!("r{index}:");
    name.push_str(&"x".repeat(bytes.saturating_sub(name.len())));
    Data::traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    name,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

fn line_len(data: &Data) -> usize {
    data.to_json().len() + 1
}

async fn exporter(path: &Path, rotation: Option<RotationConfig>) -> Arc<dyn Exporter> {
    let config: AnyConfig = Box::new(FileExporterConfig {
        path: path.to_path_buf(),
        rotation,
    });
    let exporter = FileExporterFactory
        .create(
            &config,
            ExporterContext {
                id: ComponentId::parse("file").unwrap(),
                telemetry: Telemetry::new(),
            },
        )
        .unwrap();
    exporter.start().await.unwrap();
    exporter
}

/// The files in `dir`, backups by name (oldest first, as their times sort), then the current file.
fn files(dir: &Path, current: &Path) -> Vec<PathBuf> {
    let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != current)
        .collect();
    backups.sort();
    if current.exists() {
        backups.push(current.to_path_buf());
    }
    backups
}

/// The record indices in a file, in order; every line must be a whole export request.
fn indices(path: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{}: ends in a whole line",
        path.display()
    );
    text.lines()
        .map(|line| {
            let request: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: not whole JSON: {e}", path.display()));
            let name = request["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"]
                .as_str()
                .unwrap();
            name[1..name.find(':').unwrap()].parse().unwrap()
        })
        .collect()
}

fn is_backup_name(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_str().unwrap();
    let Some(stamp) = name.strip_prefix("spans-").and_then(|n| n.strip_suffix(".jsonl")) else {
        return false;
    };
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H-%M-%S%.3f").is_ok() && stamp.len() == 23
}

fn one_mib() -> RotationConfig {
    RotationConfig {
        max_megabytes: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn rotates_at_the_size_and_keeps_every_record_whole_and_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans.jsonl");
    let exporter = exporter(&path, Some(one_mib())).await;
    let len = line_len(&record(0, 60_000));
    let per_file = MIB / len;
    let n = per_file * 3 + 5;
    for i in 0..n {
        exporter.export(record(i, 60_000)).await.unwrap();
    }
    exporter.shutdown().await.unwrap();

    let files = files(dir.path(), &path);
    assert_eq!(files.len(), 4, "three full files rotated out, one current: {files:?}");
    let mut seen = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let size = std::fs::metadata(file).unwrap().len() as usize;
        assert!(size <= MIB, "{}: {size} bytes, over the limit", file.display());
        if i < 3 {
            assert!(is_backup_name(file), "lumberjack's name: {}", file.display());
            assert!(
                size + len > MIB,
                "rotated only when the next record would not fit: {size}"
            );
        }
        seen.extend(indices(file));
    }
    assert_eq!(
        seen,
        (0..n).collect::<Vec<_>>(),
        "every record once, in order across the files"
    );
}

#[tokio::test]
async fn a_record_larger_than_the_limit_is_written_whole_into_a_fresh_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans.jsonl");
    let exporter = exporter(&path, Some(one_mib())).await;
    exporter.export(record(0, 100)).await.unwrap();
    exporter.export(record(1, MIB + MIB / 2)).await.unwrap();
    exporter.export(record(2, 100)).await.unwrap();
    exporter.shutdown().await.unwrap();
    let files = files(dir.path(), &path);
    let per_file: Vec<Vec<usize>> = files.iter().map(|f| indices(f)).collect();
    assert_eq!(per_file, vec![vec![0], vec![1], vec![2]], "{files:?}");
}

#[tokio::test]
async fn max_backups_keeps_only_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans.jsonl");
    let rotation = RotationConfig {
        max_backups: 2,
        ..one_mib()
    };
    let exporter = exporter(&path, Some(rotation)).await;
    // Two records a file: five rotations.
    for i in 0..12 {
        exporter.export(record(i, 400_000)).await.unwrap();
    }
    exporter.shutdown().await.unwrap();
    let files = files(dir.path(), &path);
    assert_eq!(files.len(), 3, "two backups and the current file: {files:?}");
    let kept: Vec<usize> = files.iter().flat_map(|f| indices(f)).collect();
    assert_eq!(kept, (6..12).collect::<Vec<_>>(), "the oldest backups went");
}

#[tokio::test]
async fn max_days_removes_old_backups_and_leaves_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans.jsonl");
    let old = backup_path(&path, "2020-01-02T03-04-05.678");
    let yesterday = (chrono::Utc::now() - chrono::TimeDelta::hours(20))
        .format("%Y-%m-%dT%H-%M-%S%.3f")
        .to_string();
    let recent = backup_path(&path, &yesterday);
    let unrelated = [dir.path().join("spans-notes.jsonl"), dir.path().join("other.jsonl")];
    for f in [&old, &recent].into_iter().chain(&unrelated) {
        std::fs::write(f, "{}\n").unwrap();
    }
    let rotation = RotationConfig {
        max_days: 1,
        max_backups: 0,
        ..one_mib()
    };
    let exporter = exporter(&path, Some(rotation)).await;
    exporter.export(record(0, 600_000)).await.unwrap();
    assert!(old.exists(), "removal happens at a rotation");
    exporter.export(record(1, 600_000)).await.unwrap();
    exporter.shutdown().await.unwrap();
    assert!(!old.exists(), "older than max_days: removed");
    assert!(recent.exists(), "within max_days: kept");
    assert!(
        unrelated.iter().all(|f| f.exists()),
        "names that are no backups are left alone"
    );
    let backups = files(dir.path(), &path)
        .into_iter()
        .filter(|f| is_backup_name(f))
        .count();
    assert_eq!(backups, 2, "the recent one and the new one");
}

#[tokio::test]
async fn localtime_names_backups_in_local_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans.jsonl");
    let rotation = RotationConfig {
        localtime: true,
        ..one_mib()
    };
    let exporter = exporter(&path, Some(rotation)).await;
    exporter.export(record(0, 600_000)).await.unwrap();
    exporter.export(record(1, 600_000)).await.unwrap();
    let backup = files(dir.path(), &path).remove(0);
    assert!(is_backup_name(&backup), "{}", backup.display());
    let name = backup.file_name().unwrap().to_str().unwrap();
    let stamp = chrono::NaiveDateTime::parse_from_str(&name[6..29], "%Y-%m-%dT%H-%M-%S%.3f").unwrap();
    let skew = chrono::Local::now().naive_local() - stamp;
    assert!(skew.num_seconds().abs() < 60, "{name} is local time");
}

#[tokio::test]
async fn without_rotation_the_file_only_grows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spans.jsonl");
    let exporter = exporter(&path, None).await;
    for i in 0..6 {
        exporter.export(record(i, 400_000)).await.unwrap();
    }
    exporter.shutdown().await.unwrap();
    assert_eq!(files(dir.path(), &path), vec![path.clone()]);
    assert_eq!(indices(&path), (0..6).collect::<Vec<_>>());
}

// ---- the keys, through the configuration loader ----

#[derive(Debug, Default, Deserialize)]
struct NoConfig {}
impl ComponentConfig for NoConfig {}

struct FakeReceiver;
infercol_pipelines::factory!(FakeReceiver, "fake", NoConfig, &[Signal::Traces]);
impl ReceiverFactory for FakeReceiver {
    fn create(&self, _: &AnyConfig, _: ReceiverContext) -> Result<Box<dyn Receiver>, ComponentError> {
        Err(ComponentError::new("not in this test"))
    }
}

fn parse(exporters: &str) -> Result<Config, infercol_pipelines::ConfigError> {
    let yaml = format!(
        "receivers:\n  fake:\nexporters:\n{exporters}service:\n  pipelines:\n    traces:\n      receivers: [fake]\n      exporters: [file]\n"
    );
    Config::parse(
        &yaml,
        &Registry::default().receiver(FakeReceiver).exporter(FileExporterFactory),
    )
    .map_err(|mut e| e.0.remove(0))
}

fn rotation_of(exporters: &str) -> Option<RotationConfig> {
    let config = parse(exporters).unwrap();
    config_as::<FileExporterConfig>(&config.exporters[0].config)
        .unwrap()
        .rotation
        .clone()
}

#[test]
fn rotation_keys_parse_with_the_collector_defaults() {
    assert_eq!(
        rotation_of("  file:\n    path: spans.jsonl\n"),
        None,
        "absent: no rotation"
    );
    let defaults = RotationConfig {
        max_megabytes: 100,
        max_days: 0,
        max_backups: 100,
        localtime: false,
    };
    assert_eq!(
        rotation_of("  file:\n    path: spans.jsonl\n    rotation: {}\n"),
        Some(defaults.clone())
    );
    assert_eq!(
        rotation_of("  file:\n    path: spans.jsonl\n    rotation:\n"),
        Some(defaults),
        "present without a body: on, with the defaults"
    );
    assert_eq!(
        rotation_of(
            "  file:\n    path: spans.jsonl\n    rotation:\n      max_megabytes: 5\n      max_days: 3\n      max_backups: 0\n      localtime: true\n"
        ),
        Some(RotationConfig {
            max_megabytes: 5,
            max_days: 3,
            max_backups: 0,
            localtime: true,
        })
    );
}

#[test]
fn rotation_rejects_a_zero_size_and_unknown_keys() {
    let e = parse("  file:\n    path: spans.jsonl\n    rotation:\n      max_megabytes: 0\n").unwrap_err();
    assert!(
        e.message.contains("rotation.max_megabytes") && e.message.contains("at least 1"),
        "{e}"
    );
    let e = parse("  file:\n    path: spans.jsonl\n    rotation:\n      max_size: 5\n").unwrap_err();
    assert!(e.message.contains("max_size"), "{e}");
    let e = parse("  file:\n    path: spans.jsonl\n    rotation:\n      max_backups: -1\n").unwrap_err();
    assert!(e.message.contains("max_backups"), "{e}");
}
