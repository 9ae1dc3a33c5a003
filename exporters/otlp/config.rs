use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use infercol_pipelines::config::duration;
use infercol_pipelines::{ComponentConfig, RetryOnFailure, SendingQueue};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Plaintext: no TLS at all.
    pub insecure: bool,
    /// A PEM file of the CA that signed the server's certificate; the system's web roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that require mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A client certificate and its key, PEM.
pub type Identity = (Vec<u8>, Vec<u8>);

impl TlsConfig {
    /// The client certificate and key, when both are set.
    pub fn identity(&self) -> Result<Option<Identity>, String> {
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Ok(Some((
                std::fs::read(c).map_err(|e| format!("tls.cert_file: cannot read {}: {e}", c.display()))?,
                std::fs::read(k).map_err(|e| format!("tls.key_file: cannot read {}: {e}", k.display()))?,
            ))),
            (None, None) => Ok(None),
            _ => Err("tls: cert_file and key_file go together".into()),
        }
    }
}

/// `exporters.otlp`: OTLP/gRPC to another infercol, an OpenTelemetry Collector or any OTLP backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpExporterConfig {
    /// `host:port` (TLS unless `tls.insecure`), or a URL with `http://` or `https://`.
    pub endpoint: String,
    pub tls: TlsConfig,
    pub compression: Compression,
    pub headers: BTreeMap<String, String>,
    #[serde(with = "duration")]
    pub timeout: Duration,
    pub sending_queue: SendingQueue,
    pub retry_on_failure: RetryOnFailure,
}

impl Default for OtlpExporterConfig {
    fn default() -> Self {
        OtlpExporterConfig {
            endpoint: String::new(),
            tls: TlsConfig::default(),
            compression: Compression::Gzip,
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(5),
            sending_queue: SendingQueue::default(),
            retry_on_failure: RetryOnFailure::default(),
        }
    }
}

impl ComponentConfig for OtlpExporterConfig {
    fn validate(&self) -> Result<(), String> {
        if self.endpoint.is_empty() {
            return Err("endpoint: required, e.g. `127.0.0.1:4317`".into());
        }
        validate_headers(&self.headers)?;
        if self.timeout.is_zero() {
            return Err("timeout: must be more than 0".into());
        }
        self.sending_queue.validate()?;
        self.retry_on_failure.validate()
    }

    fn delivery(&self) -> Option<(SendingQueue, RetryOnFailure)> {
        Some((self.sending_queue.clone(), self.retry_on_failure.clone()))
    }
}

impl OtlpExporterConfig {
    /// The URL to connect to: an explicit scheme wins; otherwise `http://` when `tls.insecure`, else `https://`.
    pub fn url(&self) -> String {
        if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else if self.tls.insecure {
            format!("http://{}", self.endpoint)
        } else {
            format!("https://{}", self.endpoint)
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum HttpEncoding {
    #[default]
    Proto,
    Json,
}

/// `exporters.otlphttp`: OTLP/HTTP (`/v1/traces`, `/v1/metrics`, `/v1/logs` under `endpoint`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpHttpExporterConfig {
    /// The base URL, e.g. `http://127.0.0.1:4318`; the signal's path is appended.
    pub endpoint: String,
    pub traces_endpoint: Option<String>,
    pub metrics_endpoint: Option<String>,
    pub logs_endpoint: Option<String>,
    pub tls: TlsConfig,
    pub compression: Compression,
    pub encoding: HttpEncoding,
    pub headers: BTreeMap<String, String>,
    #[serde(with = "duration")]
    pub timeout: Duration,
    pub sending_queue: SendingQueue,
    pub retry_on_failure: RetryOnFailure,
}

impl Default for OtlpHttpExporterConfig {
    fn default() -> Self {
        OtlpHttpExporterConfig {
            endpoint: String::new(),
            traces_endpoint: None,
            metrics_endpoint: None,
            logs_endpoint: None,
            tls: TlsConfig::default(),
            compression: Compression::Gzip,
            encoding: HttpEncoding::Proto,
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(30),
            sending_queue: SendingQueue::default(),
            retry_on_failure: RetryOnFailure::default(),
        }
    }
}

impl ComponentConfig for OtlpHttpExporterConfig {
    fn validate(&self) -> Result<(), String> {
        let any_signal =
            self.traces_endpoint.is_some() || self.metrics_endpoint.is_some() || self.logs_endpoint.is_some();
        if self.endpoint.is_empty() && !any_signal {
            return Err("endpoint: required, e.g. `http://127.0.0.1:4318`".into());
        }
        for (key, url) in [
            ("endpoint", Some(&self.endpoint)),
            ("traces_endpoint", self.traces_endpoint.as_ref()),
            ("metrics_endpoint", self.metrics_endpoint.as_ref()),
            ("logs_endpoint", self.logs_endpoint.as_ref()),
        ] {
            if let Some(url) = url
                && !url.is_empty()
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(format!(
                    "{key}: `{url}` must be a URL starting with http:// or https://"
                ));
            }
        }
        if self.compression == Compression::Zstd {
            return Err("compression: otlphttp supports gzip or none".into());
        }
        validate_headers(&self.headers)?;
        if self.timeout.is_zero() {
            return Err("timeout: must be more than 0".into());
        }
        self.sending_queue.validate()?;
        self.retry_on_failure.validate()
    }

    fn delivery(&self) -> Option<(SendingQueue, RetryOnFailure)> {
        Some((self.sending_queue.clone(), self.retry_on_failure.clone()))
    }
}

fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(format!("headers: `{k}` is not a valid header name"));
        }
        if http::HeaderValue::from_str(v).is_err() {
            return Err(format!("headers.{k}: not a valid header value"));
        }
    }
    Ok(())
}
