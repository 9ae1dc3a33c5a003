//! Exporters `otlp` (gRPC) and `otlphttp`: forward OTLP to another infercol, an OpenTelemetry Collector or any
//! OTLP backend. Requests that arrived as protobuf and were not changed are sent as the very bytes received.

mod config;
mod grpc;
mod http;

use std::sync::Arc;

use infercol_pipelines::{AnyConfig, ComponentError, Exporter, ExporterContext, ExporterFactory, Signal, config_as};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

pub use config::{Compression, HttpEncoding, OtlpExporterConfig, OtlpHttpExporterConfig, TlsConfig};

pub struct OtlpExporterFactory;

infercol_pipelines::factory!(
    OtlpExporterFactory,
    "otlp",
    OtlpExporterConfig,
    &[Signal::Traces, Signal::Metrics, Signal::Logs]
);

impl ExporterFactory for OtlpExporterFactory {
    fn create(&self, config: &AnyConfig, ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
        Ok(Arc::new(grpc::OtlpGrpcExporter::new(
            config_as::<OtlpExporterConfig>(config)?,
            ctx.id,
        )?))
    }
}

pub struct OtlpHttpExporterFactory;

infercol_pipelines::factory!(
    OtlpHttpExporterFactory,
    "otlphttp",
    OtlpHttpExporterConfig,
    &[Signal::Traces, Signal::Metrics, Signal::Logs]
);

impl ExporterFactory for OtlpHttpExporterFactory {
    fn create(&self, config: &AnyConfig, ctx: ExporterContext) -> Result<Arc<dyn Exporter>, ComponentError> {
        Ok(Arc::new(http::OtlpHttpExporter::new(
            config_as::<OtlpHttpExporterConfig>(config)?,
            ctx.id,
        )?))
    }
}

/// The items a server rejected through OTLP partial success, with its message; `None` when all were accepted.
fn partial_success(signal: Signal, response: &[u8]) -> Option<(i64, String)> {
    let (rejected, message) = match signal {
        Signal::Traces => ExportTraceServiceResponse::decode(response)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_spans, p.error_message))?,
        Signal::Metrics => ExportMetricsServiceResponse::decode(response)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_data_points, p.error_message))?,
        Signal::Logs => ExportLogsServiceResponse::decode(response)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_log_records, p.error_message))?,
    };
    (rejected > 0 || !message.is_empty()).then_some((rejected, message))
}
