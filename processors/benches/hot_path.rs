//! Micro-benchmarks of the hot path, for regression tracking: decoding a 1,000-span request, classifying its spans,
//! and recording them in model_metrics (numbers per request of 1,000 spans); and the per-request path as SDKs'
//! small batches take it: one request of 12 or 48 spans over four resources, decoded (the receiver's view, with the
//! replica directory's look at its resources) and recorded. `cargo bench -p infercol-processors`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infercol_pipelines::{Data, Signal};
use infercol_processors::model_metrics::classify::Classifier;
use infercol_processors::model_metrics::config::SpanRules;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

#[path = "../tests/support/spans.rs"]
mod spans;

fn hot_path(c: &mut Criterion) {
    let request = spans::request(250);
    let bytes = bytes::Bytes::from(request.encode_to_vec());
    let mut group = c.benchmark_group("per_1000_spans");
    group.throughput(Throughput::Elements(1000));

    group.bench_function("decode", |b| {
        b.iter(|| Data::decode(Signal::Traces, bytes.clone()).unwrap())
    });

    let classifier = Classifier::new(SpanRules::default());
    let spans: Vec<&Span> = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    group.bench_function("classify", |b| {
        b.iter(|| {
            let mut rejected = Vec::new();
            spans
                .iter()
                .copied()
                .filter(|s| classifier.is_request(*s))
                .map(|s| classifier.request(s, &mut rejected).status.class)
                .count()
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let processor = spans::processor();
    // As the receivers pass it on: the borrowed view of the protobuf bytes.
    let data = Data::decode(Signal::Traces, bytes.clone()).unwrap();
    assert!(data.view().is_some());
    group.bench_function("record (model_metrics)", |b| {
        b.iter(|| runtime.block_on(processor.consume(data.clone())).unwrap())
    });
    group.finish();
}

/// One small request, from its bytes to recorded: what the receiver and model_metrics do per request.
fn per_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let processor = spans::processor();
    let replicas = infercol_pipelines::ReplicaDirectory::default();
    let mut group = c.benchmark_group("per_request");
    for per_resource in [3u64, 12] {
        let bytes = bytes::Bytes::from(spans::request(per_resource).encode_to_vec());
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{} spans", per_resource * 4), |b| {
            b.iter(|| {
                let data = Data::decode(Signal::Traces, bytes.clone()).unwrap();
                replicas.observe_data(&data);
                runtime.block_on(processor.consume(data)).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hot_path, per_request);
criterion_main!(benches);
