use std::time::Duration;

use async_trait::async_trait;
use infercol_pipelines::{ComponentError, ComponentId, Data, ExportError, Exporter, RawCodec, Signal};
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::config::{Compression, OtlpExporterConfig};

pub struct OtlpGrpcExporter {
    id: ComponentId,
    channel: Channel,
    compression: Option<CompressionEncoding>,
    metadata: MetadataMap,
}

impl OtlpGrpcExporter {
    pub fn new(config: &OtlpExporterConfig, id: ComponentId) -> Result<OtlpGrpcExporter, ComponentError> {
        let url = config.url();
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| ComponentError::new(format!("endpoint: `{url}` is not a valid address: {e}")))?
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = &config.tls.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| ComponentError::new(format!("tls.ca_file: cannot read {}: {e}", ca.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = config.tls.identity().map_err(ComponentError::new)? {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ComponentError::new(format!("tls: {e}")))?;
        }
        let mut metadata = MetadataMap::new();
        for (k, v) in &config.headers {
            let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|e| ComponentError::new(format!("headers: `{k}`: {e}")))?;
            let value =
                MetadataValue::try_from(v.as_str()).map_err(|e| ComponentError::new(format!("headers.{k}: {e}")))?;
            metadata.insert(key, value);
        }
        Ok(OtlpGrpcExporter {
            id,
            // Connects on first use and reconnects by itself, so a peer that starts later is fine.
            channel: endpoint.connect_lazy(),
            compression: match config.compression {
                Compression::Gzip => Some(CompressionEncoding::Gzip),
                Compression::Zstd => Some(CompressionEncoding::Zstd),
                Compression::None => None,
            },
            metadata,
        })
    }
}

fn path(signal: Signal) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    })
}

/// Which failures the OTLP specification lets a client retry, and after how long the server asked.
fn classify(status: &Status) -> ExportError {
    let retry_after: Option<Duration> = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let retryable = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => retry_after.is_some(),
        _ => false,
    };
    let message = format!("{:?}: {}", status.code(), status.message());
    ExportError {
        message,
        retryable,
        retry_after,
    }
}

#[async_trait]
impl Exporter for OtlpGrpcExporter {
    async fn export(&self, data: Data) -> Result<(), ExportError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        if let Some(c) = self.compression {
            grpc = grpc.send_compressed(c);
        }
        grpc = grpc
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(usize::MAX);
        grpc.ready()
            .await
            .map_err(|e| ExportError::retryable(format!("connecting: {e}"), None))?;
        let signal = data.signal();
        let mut request = tonic::Request::new(data.to_protobuf());
        *request.metadata_mut() = self.metadata.clone();
        match grpc.unary::<_, bytes::Bytes, _>(request, path(signal), RawCodec).await {
            Ok(response) => {
                if let Some((rejected, message)) = super::partial_success(signal, response.get_ref()) {
                    tracing::warn!(exporter = %self.id, rejected, "the server rejected part of the request: {message}");
                }
                Ok(())
            }
            Err(status) => Err(classify(&status)),
        }
    }
}
