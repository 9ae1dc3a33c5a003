//! Exporter `file`: one OTLP/JSON export request per line, as the OpenTelemetry Collector's file exporter writes,
//! each line written and flushed before the export is acknowledged so that a reader sees it. With `rotation` the
//! file is rolled over at a size into dated backups, as the Collector's does.

mod rotation;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use infercol_pipelines::{
    AnyConfig, ComponentConfig, ComponentError, Data, ExportError, Exporter, ExporterContext, ExporterFactory, Signal,
    config_as,
};
use serde::Deserialize;

use rotation::Rotation;
pub use rotation::RotationConfig;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FileExporterConfig {
    /// The file to append to; created when missing.
    pub path: PathBuf,
    /// Roll the file over at a size, keeping dated backups beside it. Absent: the file only grows; present, even
    /// with no body (`rotation:`), rotation is on with the defaults.
    #[serde(deserialize_with = "rotation::present")]
    pub rotation: Option<RotationConfig>,
}

impl ComponentConfig for FileExporterConfig {
    fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("path: required, the file to write to".into());
        }
        self.rotation.as_ref().map_or(Ok(()), RotationConfig::validate)
    }
}

pub struct FileExporterFactory;

infercol_pipelines::factory!(
    FileExporterFactory,
    "file",
    FileExporterConfig,
    &[Signal::Traces, Signal::Metrics, Signal::Logs]
);

impl ExporterFactory for FileExporterFactory {
    fn create(&self, config: &AnyConfig, _ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
        let config = config_as::<FileExporterConfig>(config)?;
        Ok(Arc::new(FileExporter {
            path: config.path.clone(),
            rotation: config.rotation.as_ref().map(Rotation::new),
            file: Mutex::new(None),
        }))
    }
}

pub struct FileExporter {
    path: PathBuf,
    rotation: Option<Rotation>,
    file: Mutex<Option<File>>,
}

#[async_trait]
impl Exporter for FileExporter {
    async fn start(&self) -> Result<(), ComponentError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| ComponentError::new(format!("path: cannot open {}: {e}", self.path.display())))?;
        *self.file.lock().map_err(|_| ComponentError::new("poisoned lock"))? = Some(file);
        Ok(())
    }

    async fn export(&self, data: Data) -> Result<(), ExportError> {
        let mut line = data.to_json();
        line.push('\n');
        let mut guard = self
            .file
            .lock()
            .map_err(|_| ExportError::permanent("file exporter lock poisoned"))?;
        let file = guard
            .as_mut()
            .ok_or_else(|| ExportError::permanent("file exporter is not started"))?;
        self.rotate_if_due(file, line.len())
            .map_err(|e| ExportError::retryable(format!("rotating {}: {e}", self.path.display()), None))?;
        write_record(file, line.as_bytes())
            .map_err(|e| ExportError::retryable(format!("writing {}: {e}", self.path.display()), None))
    }

    async fn shutdown(&self) -> Result<(), ComponentError> {
        if let Ok(mut guard) = self.file.lock()
            && let Some(file) = guard.take()
        {
            file.sync_all()
                .map_err(|e| ComponentError::new(format!("syncing {}: {e}", self.path.display())))?;
        }
        Ok(())
    }
}

impl FileExporter {
    /// Before a record of `len` bytes: when it would take the file past the rotation size, the file becomes a
    /// backup and `file` a fresh one, so that every record lies whole in one file.
    fn rotate_if_due(&self, file: &mut File, len: usize) -> std::io::Result<()> {
        let Some(rotation) = &self.rotation else {
            return Ok(());
        };
        if rotation.is_due(file.metadata()?.len(), len as u64) {
            *file = rotation.rotate(&self.path)?;
        }
        Ok(())
    }
}

/// Appends one whole record or nothing. With O_APPEND a reader never sees half of another line; a write that fails
/// part-way (a full disk) is cut back to where the record began, so the retry, which writes the whole record
/// again, leaves no broken line before it. The cut is made only when the file holds exactly what this write left
/// (nothing else appended or truncated it meanwhile), so it never removes another writer's lines.
fn write_record(file: &mut File, record: &[u8]) -> std::io::Result<()> {
    let start = file.metadata()?.len();
    let mut written = 0usize;
    let failure = loop {
        if written == record.len() {
            match file.flush() {
                Ok(()) => return Ok(()),
                Err(e) => break e,
            }
        }
        match file.write(&record[written..]) {
            Ok(0) => break std::io::Error::new(std::io::ErrorKind::WriteZero, "wrote nothing"),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break e,
        }
    };
    let untouched = file.metadata().map(|m| m.len()).ok() == Some(start + written as u64);
    if written > 0
        && untouched
        && let Err(cut) = file.set_len(start)
    {
        return Err(std::io::Error::new(
            failure.kind(),
            format!("{failure}; and cutting the partial record back failed: {cut}"),
        ));
    }
    Err(failure)
}
