use std::io::Write;

use async_trait::async_trait;
use infercol_pipelines::{ComponentError, ComponentId, Data, ExportError, Exporter, Signal};
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};

use super::config::{Compression, HttpEncoding, OtlpHttpExporterConfig};

pub struct OtlpHttpExporter {
    id: ComponentId,
    client: reqwest::Client,
    urls: [String; 3],
    gzip: bool,
    encoding: HttpEncoding,
}

impl OtlpHttpExporter {
    pub fn new(config: &OtlpHttpExporterConfig, id: ComponentId) -> Result<OtlpHttpExporter, ComponentError> {
        let client = crate::http_client(&config.headers, &config.tls, config.timeout)?;
        let base = config.endpoint.trim_end_matches('/');
        let url = |explicit: &Option<String>, path: &str| explicit.clone().unwrap_or_else(|| format!("{base}{path}"));
        Ok(OtlpHttpExporter {
            id,
            client,
            urls: [
                url(&config.traces_endpoint, "/v1/traces"),
                url(&config.metrics_endpoint, "/v1/metrics"),
                url(&config.logs_endpoint, "/v1/logs"),
            ],
            gzip: config.compression == Compression::Gzip,
            encoding: config.encoding,
        })
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

#[async_trait]
impl Exporter for OtlpHttpExporter {
    async fn export(&self, data: Data) -> Result<(), ExportError> {
        let signal: Signal = data.signal();
        let (content_type, body) = match self.encoding {
            HttpEncoding::Proto => ("application/x-protobuf", data.to_protobuf().to_vec()),
            HttpEncoding::Json => ("application/json", data.to_json().into_bytes()),
        };
        let mut request = self
            .client
            .post(&self.urls[signal.index()])
            .header(CONTENT_TYPE, content_type);
        let body = if self.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
            gzip(&body).map_err(|e| ExportError::permanent(format!("gzip: {e}")))?
        } else {
            body
        };
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| ExportError::retryable(format!("sending to {}: {e}", self.urls[signal.index()]), None))?;
        let status = response.status();
        let retry_after = crate::retry_after(response.headers());
        let bytes = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            if self.encoding == HttpEncoding::Proto
                && let Some((rejected, message)) = super::partial_success(signal, &bytes)
            {
                tracing::warn!(exporter = %self.id, rejected, "the server rejected part of the request: {message}");
            }
            return Ok(());
        }
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
        let message = format!("HTTP {status} from {}: {text}", self.urls[signal.index()]);
        match status.as_u16() {
            429 | 502 | 503 | 504 => Err(ExportError::retryable(message, retry_after)),
            _ => Err(ExportError::permanent(message)),
        }
    }
}
