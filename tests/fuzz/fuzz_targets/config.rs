//! The configuration loader on arbitrary text: an error with a message, never a panic.
#![no_main]

use infercol_pipelines::{Config, Registry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    let registry = Registry::default()
        .receiver(infercol_receivers::otlp::OtlpReceiverFactory)
        .receiver(infercol_receivers::hostmetrics::HostMetricsReceiverFactory)
        .connector(infercol_processors::model_metrics::ModelMetricsFactory)
        .processor(infercol_processors::batch::BatchProcessorFactory)
        .exporter(infercol_exporters::file::FileExporterFactory)
        .exporter(infercol_exporters::prometheus::PrometheusExporterFactory);
    if let Err(errors) = Config::parse(text, &registry) {
        assert!(!errors.0.is_empty());
        assert!(errors.0.iter().all(|e| !e.message.is_empty()));
    }
});
