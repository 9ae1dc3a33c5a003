//! The processor as a whole: spans in, derived metrics out; and the accuracy of its quantiles.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use infercol_pipelines::{
    AnyConfig, ComponentId, Connector, ConnectorContext, ConnectorFactory, ConsumeError, Consumer, Data, Payload,
    Shared, Telemetry,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric::Data as MetricData, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::config::{ModelMetricsConfig, Temporality};
use super::window::{QuantileWindow, WINDOW_MAX_BUCKETS, WINDOW_SCALE};
use super::{ModelMetricsFactory, now_ns};
use infercol_pipelines::histogram::ExpoHistogram;

/// A deterministic generator (splitmix64) with uniform and normal draws.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + self.uniform() * (hi.ln() - lo.ln())).exp()
    }
}

/// The exact quantile by the definition the sketch promises: rank floor(q·(n-1)) of the sorted values.
fn exact(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

const QUANTILES: [f64; 8] = [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999];

fn assert_within_one_percent(name: &str, values: &[f64], estimate: impl Fn(f64) -> f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    for q in QUANTILES {
        let want = exact(&sorted, q);
        let got = estimate(q);
        let error = if want == 0.0 {
            got.abs()
        } else {
            ((got - want) / want).abs()
        };
        assert!(
            error <= 0.01,
            "{name}: p{q} = {got}, exact {want}, relative error {:.4}%",
            error * 100.0
        );
    }
}

/// Heavy tails: lognormal latencies with rare 10-100x outliers; values from 1 us to hours; sizes from bytes to
/// gigabytes; small samples; integer token counts with many ties.
fn distributions() -> Vec<(&'static str, Vec<f64>)> {
    let mut rng = Rng(42);
    let mut out = Vec::new();
    let lognormal_with_outliers: Vec<f64> = (0..50_000)
        .map(|_| {
            let v = (0.2f64.ln() + 0.8 * rng.normal()).exp();
            if rng.uniform() < 0.005 {
                v * (10.0 + 90.0 * rng.uniform())
            } else {
                v
            }
        })
        .collect();
    out.push((
        "lognormal latency with 0.5% outliers of 10-100x",
        lognormal_with_outliers,
    ));
    let two_percent: Vec<f64> = (0..20_000)
        .map(|_| {
            let v = (0.05f64.ln() + 0.5 * rng.normal()).exp();
            if rng.uniform() < 0.02 {
                v * (10.0 + 90.0 * rng.uniform())
            } else {
                v
            }
        })
        .collect();
    out.push(("lognormal latency with 2% outliers", two_percent));
    out.push((
        "microseconds to hours",
        (0..30_000).map(|_| rng.log_uniform(1e-6, 3.0 * 3600.0)).collect(),
    ));
    out.push((
        "bytes to gigabytes",
        (0..30_000).map(|_| rng.log_uniform(1.0, 4e9).round()).collect(),
    ));
    out.push((
        "tokens with ties",
        (0..10_000).map(|_| (rng.uniform() * 300.0).floor() + 1.0).collect(),
    ));
    out.push(("seven values", (0..7).map(|_| rng.log_uniform(0.01, 10.0)).collect()));
    out.push(("one value", vec![0.1234]));
    out.push((
        "zeros and sizes",
        (0..1000)
            .map(|i| if i % 3 == 0 { 0.0 } else { rng.log_uniform(10.0, 1e6) })
            .collect(),
    ));
    out
}

#[test]
fn window_quantiles_are_within_one_percent_of_exact() {
    let now = 1_000_000 * 1_000_000_000u64;
    for (name, values) in distributions() {
        let mut window = QuantileWindow::new(Duration::from_secs(60));
        for (i, v) in values.iter().enumerate() {
            // Spread over the last 50 seconds, several slices.
            let end = now - (i as u64 % 50) * 1_000_000_000;
            assert!(window.record(end, now, *v, 1));
        }
        let merged = window.snapshot(now).unwrap();
        assert_eq!(merged.count(), values.len() as u64);
        assert_eq!(merged.scale(), WINDOW_SCALE, "{name}: no coarsening needed");
        assert_within_one_percent(name, &values, |q| merged.quantile(q).unwrap());
        // Bounded memory: the buckets never exceed the cap.
        assert!(merged.bucket_counts().len() <= WINDOW_MAX_BUCKETS);
    }
}

#[test]
fn merged_sketches_from_many_agents_keep_the_bound() {
    let (_, values) = distributions().remove(0);
    let mut agents: Vec<ExpoHistogram<u32>> = (0..4)
        .map(|_| ExpoHistogram::new(WINDOW_MAX_BUCKETS, WINDOW_SCALE))
        .collect();
    for (i, v) in values.iter().enumerate() {
        agents[i % 4].record(*v, 1);
    }
    let mut gateway: ExpoHistogram = ExpoHistogram::new(WINDOW_MAX_BUCKETS, WINDOW_SCALE);
    for a in &agents {
        gateway.merge(a);
    }
    assert_within_one_percent("merged", &values, |q| gateway.quantile(q).unwrap());
}

// ---- the processor end to end (in process) ----

#[derive(Default)]
struct Collect(tokio::sync::Mutex<Vec<Data>>);

#[async_trait]
impl Consumer for Collect {
    async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
        self.0.lock().await.push(data);
        Ok(())
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn resource(service: &str, env: Option<&str>) -> Resource {
    let mut attributes = vec![kv("service.name", Value::StringValue(service.into()))];
    if let Some(e) = env {
        attributes.push(kv("deployment.environment.name", Value::StringValue(e.into())));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

fn request_span(id: u64, end_ns: u64, seconds: f64, code: i64) -> Span {
    Span {
        trace_id: [id.to_be_bytes(), [1; 8]].concat(),
        span_id: id.to_be_bytes().to_vec(),
        name: "POST /predict".into(),
        kind: 2,
        start_time_unix_nano: end_ns - (seconds * 1e9) as u64,
        end_time_unix_nano: end_ns,
        attributes: vec![
            kv("http.response.status_code", Value::IntValue(code)),
            kv("http.response.body.size", Value::IntValue(1000 + id as i64)),
        ],
        ..Default::default()
    }
}

fn traces(resource: Resource, spans: Vec<Span>) -> Data {
    Data::traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

fn processor(config: ModelMetricsConfig, telemetry: Telemetry) -> (Arc<dyn Connector>, Arc<Collect>) {
    processor_in(config, telemetry, Shared::default())
}

/// The connector, its metrics collected.
fn processor_in(
    config: ModelMetricsConfig,
    telemetry: Telemetry,
    shared: Shared,
) -> (Arc<dyn Connector>, Arc<Collect>) {
    let out = Arc::new(Collect(Default::default()));
    (processor_into(config, telemetry, shared, out.clone()), out)
}

/// A connector whose derived metrics go to `out`.
fn processor_into(
    config: ModelMetricsConfig,
    telemetry: Telemetry,
    shared: Shared,
    out: Arc<dyn Consumer>,
) -> Arc<dyn Connector> {
    let config: AnyConfig = Box::new(config);
    ModelMetricsFactory
        .create(
            &config,
            ConnectorContext {
                id: ComponentId::parse("model_metrics").unwrap(),
                from: infercol_pipelines::Signal::Traces,
                to: infercol_pipelines::Signal::Metrics,
                next: out,
                telemetry,
                shared,
            },
        )
        .unwrap()
}

fn metrics_of(data: &Data) -> &ExportMetricsServiceRequest {
    match data.payload() {
        Payload::Metrics(m) => m,
        _ => panic!("metrics expected"),
    }
}

fn metric<'a>(m: &'a ExportMetricsServiceRequest, name: &str) -> Option<&'a Metric> {
    m.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|x| x.name == name)
}

fn label<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

/// (model, status_class) -> count, from the model.requests points.
fn request_counts(m: &ExportMetricsServiceRequest) -> std::collections::BTreeMap<(String, String), f64> {
    let mut out = std::collections::BTreeMap::new();
    let Some(MetricData::Sum(sum)) = metric(m, "model.requests").and_then(|x| x.data.as_ref()) else {
        return out;
    };
    for p in &sum.data_points {
        let model = label(&p.attributes, "model").unwrap_or("overflow").to_string();
        let class = label(&p.attributes, "status_class").unwrap_or("-").to_string();
        let Some(number_data_point::Value::AsDouble(v)) = p.value else {
            panic!("double counts")
        };
        *out.entry((model, class)).or_default() += v;
    }
    out
}

#[tokio::test]
async fn counts_by_status_class_quantiles_and_passing_spans_on() {
    let (p, out) = processor(ModelMetricsConfig::default(), Telemetry::new());
    let now = now_ns();
    let mut rng = Rng(7);
    let mut durations = Vec::new();
    for batch in 0..10u64 {
        let spans = (0..100u64)
            .map(|i| {
                let id = batch * 100 + i;
                let seconds = (0.1f64.ln() + 0.7 * rng.normal()).exp();
                durations.push(seconds);
                let code = match id % 20 {
                    0 => 503,
                    1 | 2 => 404,
                    _ => 200,
                };
                request_span(id + 1, now - (id % 30) * 1_000_000_000, seconds, code)
            })
            .collect();
        p.consume(traces(resource("llama", Some("prod")), spans)).await.unwrap();
    }
    // A prediction exception and a span without resource attributes.
    let mut failed = request_span(5000, now, 0.5, 0);
    failed.attributes.clear();
    failed.status = Some(opentelemetry_proto::tonic::trace::v1::Status {
        code: 2,
        message: "OOM".into(),
    });
    p.consume(traces(Resource::default(), vec![failed])).await.unwrap();
    p.shutdown().await.unwrap();

    let emitted = out.0.lock().await;
    assert_eq!(emitted.len(), 1, "shutdown flushes once");
    let m = metrics_of(&emitted[0]);
    let counts = request_counts(m);
    assert_eq!(counts[&("llama".into(), "2xx".into())], 850.0);
    assert_eq!(counts[&("llama".into(), "4xx".into())], 100.0);
    assert_eq!(counts[&("llama".into(), "5xx".into())], 50.0);
    assert_eq!(
        counts[&("unknown_service".into(), "5xx".into())],
        1.0,
        "missing resource: defaults, and the exception is 5xx"
    );

    let Some(MetricData::Summary(summary)) =
        metric(m, "model.request.duration_seconds_window").and_then(|x| x.data.as_ref())
    else {
        panic!("summary missing")
    };
    let point = summary
        .data_points
        .iter()
        .find(|p| label(&p.attributes, "model") == Some("llama"))
        .unwrap();
    assert_eq!(label(&point.attributes, "environment"), Some("prod"));
    assert_eq!(label(&point.attributes, "deployment"), Some("unknown"));
    assert_eq!(point.count, 1000);
    let mut sorted = durations.clone();
    sorted.sort_by(f64::total_cmp);
    for qv in &point.quantile_values {
        let want = exact(&sorted, qv.quantile);
        assert!(
            ((qv.value - want) / want).abs() <= 0.01,
            "p{}: {} vs {want}",
            qv.quantile,
            qv.value
        );
    }
    assert_eq!(point.quantile_values.len(), 4);

    let Some(MetricData::ExponentialHistogram(h)) = metric(m, "model.request.duration").and_then(|x| x.data.as_ref())
    else {
        panic!("exponential histogram missing")
    };
    assert_eq!(h.aggregation_temporality, 2, "cumulative by default");
    let point = h
        .data_points
        .iter()
        .find(|p| label(&p.attributes, "model") == Some("llama"))
        .unwrap();
    assert_eq!(point.count, 1000);
    let buckets = point.positive.as_ref().unwrap();
    assert!(buckets.bucket_counts.len() <= 160);
    assert_eq!(buckets.bucket_counts.iter().sum::<u64>() + point.zero_count, 1000);
    assert!(!point.exemplars.is_empty(), "exemplars link to traces");
    let slowest = point.exemplars.iter().map(|e| match e.value {
        Some(opentelemetry_proto::tonic::metrics::v1::exemplar::Value::AsDouble(v)) => v,
        _ => 0.0,
    });
    let max = sorted.last().copied().unwrap();
    assert!(
        slowest.clone().any(|v| ((v - max) / max).abs() < 1e-6),
        "the slowest request is an exemplar"
    );
    assert!(metric(m, "model.response.size").is_some());
    assert!(metric(m, "model.response.size_bytes_window").is_some());
    assert!(metric(m, "model.time_to_first_byte").is_some());
    assert!(metric(m, "model.input_tokens").is_none(), "no span carried tokens");
}

/// The test on the runtime `#[tokio::test]` gives (one thread: one recording shard) and on four threads (four
/// shards, absorbed at the flush).
macro_rules! on_one_and_four_threads {
    ($one:ident, $four:ident, $body:ident) => {
        #[tokio::test]
        async fn $one() {
            $body().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $four() {
            $body().await
        }
    };
}

on_one_and_four_threads!(
    cardinality_limit_sends_the_rest_to_one_overflow_series_and_counts_it,
    cardinality_limit_holds_across_recording_shards,
    cardinality_limit
);

/// A processor that keeps three series per metric, its output, and its telemetry.
fn three_series() -> (Arc<dyn Connector>, Arc<Collect>, Telemetry) {
    let telemetry = Telemetry::new();
    let config = ModelMetricsConfig {
        cardinality_limit: 3,
        ..Default::default()
    };
    let (p, out) = processor(config, telemetry.clone());
    (p, out, telemetry)
}

async fn cardinality_limit() {
    let (p, out, telemetry) = three_series();
    let now = now_ns();
    for model in 0..10 {
        p.consume(traces(
            resource(&format!("m{model}"), None),
            vec![request_span(model + 1, now, 0.1, 200)],
        ))
        .await
        .unwrap();
    }
    p.shutdown().await.unwrap();
    let emitted = out.0.lock().await;
    let counts = request_counts(metrics_of(&emitted[0]));
    assert_eq!(counts.len(), 4, "three series and the overflow series: {counts:?}");
    assert_eq!(counts[&("overflow".into(), "-".into())], 7.0);
    let Some(MetricData::Sum(sum)) = metric(metrics_of(&emitted[0]), "model.requests").and_then(|x| x.data.as_ref())
    else {
        panic!()
    };
    let overflow = sum
        .data_points
        .iter()
        .find(|p| label(&p.attributes, "otel_metric_overflow") == Some("true"));
    assert_eq!(
        overflow.unwrap().attributes.len(),
        1,
        "the overflow series carries only its marker"
    );
    let own = telemetry.render();
    assert!(
        own.contains(
            "infercol_model_metrics_overflow_points_total{processor=\"model_metrics\",metric=\"model.requests\"} 7"
        ),
        "{own}"
    );
}

on_one_and_four_threads!(
    series_admitted_before_keep_their_points_in_a_burst_of_new_ones,
    series_admitted_before_keep_their_points_across_shards,
    admitted_series_keep_their_points
);

async fn admitted_series_keep_their_points() {
    let (p, out, telemetry) = three_series();
    let now = now_ns();
    let mut id = 0;
    let mut send = |model: &str, sampled: bool| {
        id += 1;
        let mut span = request_span(id, now, 0.1, 200);
        if sampled {
            span.trace_state = "ot=th:c".into(); // each stands for 4
        }
        traces(resource(model, None), vec![span])
    };
    for model in ["a", "b", "c"] {
        p.consume(send(model, false)).await.unwrap();
    }
    p.shutdown().await.unwrap();
    // The next interval: twelve new models, sampled, then one of the three again. Whichever shards they land
    // in, the twelve go to the overflow series and `a` to its own.
    for x in 0..12 {
        p.consume(send(&format!("x{x}"), true)).await.unwrap();
    }
    p.consume(send("a", false)).await.unwrap();
    p.shutdown().await.unwrap();
    let emitted = out.0.lock().await;
    let counts = request_counts(metrics_of(&emitted[1]));
    assert_eq!(counts[&("a".into(), "2xx".into())], 2.0, "{counts:?}");
    assert_eq!(counts[&("overflow".into(), "-".into())], 48.0, "{counts:?}");
    assert_eq!(counts.len(), 4, "{counts:?}");
    let own = telemetry.render();
    assert!(
        own.contains(
            "infercol_model_metrics_overflow_points_total{processor=\"model_metrics\",metric=\"model.requests\"} 12"
        ),
        "points, not their weight: {own}"
    );
}

#[tokio::test]
async fn bad_values_are_rejected_and_counted() {
    let telemetry = Telemetry::new();
    let (p, out) = processor(ModelMetricsConfig::default(), telemetry.clone());
    let now = now_ns();
    let mut backwards = request_span(1, now, 0.1, 200);
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 5;
    let mut negative = request_span(2, now, 0.1, 200);
    negative.attributes[1] = kv("http.response.body.size", Value::IntValue(-1));
    let mut nan = request_span(3, now, 0.1, 200);
    nan.attributes[1] = kv("http.response.body.size", Value::DoubleValue(f64::NAN));
    p.consume(traces(resource("m", None), vec![backwards, negative, nan]))
        .await
        .unwrap();
    p.shutdown().await.unwrap();
    let own = telemetry.render();
    assert!(own.contains("reason=\"end_before_start\"} 1"), "{own}");
    assert!(own.contains("reason=\"invalid_size\"} 2"), "{own}");
    let emitted = out.0.lock().await;
    let m = metrics_of(&emitted[0]);
    assert_eq!(
        request_counts(m)[&("m".into(), "2xx".into())],
        3.0,
        "the requests still count"
    );
    let Some(MetricData::ExponentialHistogram(h)) = metric(m, "model.request.duration").and_then(|x| x.data.as_ref())
    else {
        panic!()
    };
    assert_eq!(h.data_points[0].count, 2, "the backwards span has no duration");
    let Some(MetricData::ExponentialHistogram(h)) = metric(m, "model.response.size").and_then(|x| x.data.as_ref())
    else {
        panic!()
    };
    assert_eq!(h.data_points[0].count, 1, "negative and NaN sizes are not recorded");
}

on_one_and_four_threads!(
    delta_temporality_starts_each_interval_anew,
    delta_temporality_across_recording_shards,
    delta_temporality
);

async fn delta_temporality() {
    let config = ModelMetricsConfig {
        aggregation_temporality: Temporality::Delta,
        flush_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let (p, out) = processor(config, Telemetry::new());
    p.start().await.unwrap();
    let now = now_ns();
    p.consume(traces(
        resource("m", None),
        vec![request_span(1, now, 0.1, 200), request_span(2, now, 0.2, 200)],
    ))
    .await
    .unwrap();
    // Flush once by hand through shutdown of a twin is not possible; use the shutdown flush twice instead.
    p.shutdown().await.unwrap();
    p.consume(traces(resource("m", None), vec![request_span(3, now, 0.3, 200)]))
        .await
        .unwrap();
    p.shutdown().await.unwrap();
    let emitted = out.0.lock().await;
    assert_eq!(emitted.len(), 2);
    let first = metrics_of(&emitted[0]);
    let second = metrics_of(&emitted[1]);
    assert_eq!(request_counts(first)[&("m".into(), "2xx".into())], 2.0);
    assert_eq!(
        request_counts(second)[&("m".into(), "2xx".into())],
        1.0,
        "delta: only the new request"
    );
    let sum = |m: &ExportMetricsServiceRequest| match metric(m, "model.requests").and_then(|x| x.data.clone()) {
        Some(MetricData::Sum(s)) => s,
        _ => panic!(),
    };
    let (a, b) = (sum(first), sum(second));
    assert_eq!(a.aggregation_temporality, 1);
    assert_eq!(
        b.data_points[0].start_time_unix_nano, a.data_points[0].time_unix_nano,
        "intervals abut"
    );
}

/// An output whose first call waits until released (a full exporter queue), then collects.
#[derive(Default)]
struct Held {
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
    first: std::sync::atomic::AtomicBool,
    got: Collect,
}

#[async_trait]
impl Consumer for Held {
    async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
        if !self.first.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        self.got.consume(data).await
    }
}

#[tokio::test]
async fn shutdown_lets_a_timed_flush_in_progress_deliver_its_delta_counts() {
    let config = ModelMetricsConfig {
        aggregation_temporality: Temporality::Delta,
        flush_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let out = Arc::new(Held::default());
    let p = processor_into(config, Telemetry::new(), Shared::default(), out.clone());
    p.start().await.unwrap();
    let now = now_ns();
    p.consume(traces(
        resource("m", None),
        vec![request_span(1, now, 0.1, 200), request_span(2, now, 0.2, 200)],
    ))
    .await
    .unwrap();
    // The timed flush has taken the two counts (delta: reset) and waits on the output.
    out.entered.notified().await;
    p.consume(traces(resource("m", None), vec![request_span(3, now, 0.3, 200)]))
        .await
        .unwrap();
    let stopping = tokio::spawn({
        let p = p.clone();
        async move { p.shutdown().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waited = !stopping.is_finished();
    out.release.notify_one();
    stopping.await.unwrap().unwrap();
    let emitted = out.got.0.lock().await;
    let total: f64 = emitted
        .iter()
        .filter_map(|d| request_counts(metrics_of(d)).get(&("m".into(), "2xx".into())).copied())
        .sum();
    assert_eq!(
        total, 3.0,
        "every request recorded before shutdown is counted in some flush"
    );
    assert!(waited, "shutdown waited for the flush in progress");
}

#[tokio::test]
async fn sampled_spans_count_by_their_adjusted_count() {
    let (p, out) = processor(ModelMetricsConfig::default(), Telemetry::new());
    let now = now_ns();
    let spans = (0..10)
        .map(|i| {
            let mut s = request_span(i + 1, now, 0.1, 200);
            s.trace_state = "ot=th:c".into(); // 25% sampling: each stands for 4
            s
        })
        .collect();
    p.consume(traces(resource("m", None), spans)).await.unwrap();
    p.shutdown().await.unwrap();
    let emitted = out.0.lock().await;
    assert_eq!(
        request_counts(metrics_of(&emitted[0]))[&("m".into(), "2xx".into())],
        40.0
    );
}

#[tokio::test]
async fn idle_series_expire() {
    let config = ModelMetricsConfig {
        metrics_expiration: Duration::from_millis(1),
        ..Default::default()
    };
    let (p, out) = processor(config, Telemetry::new());
    let now = now_ns();
    p.consume(traces(resource("m", None), vec![request_span(1, now, 0.1, 200)]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    p.shutdown().await.unwrap();
    p.shutdown().await.unwrap();
    let emitted = out.0.lock().await;
    assert_eq!(emitted.len(), 1, "after expiry nothing is left to emit");
}

#[test]
fn memory_per_series_is_bounded_and_reported() {
    use super::state::{HistogramMetric, Observation, State};
    let config = Arc::new(ModelMetricsConfig::default());
    let now = now_ns();
    let mut state = State::new(config, now);
    let mut rng = Rng(3);
    let dims: super::state::Dims = vec!["m".to_string(), "d".into(), "e".into()].into();
    for i in 0..100_000u64 {
        let v = (0.2f64.ln() + 0.8 * rng.normal()).exp() * if i % 200 == 0 { 50.0 } else { 1.0 };
        let obs = Observation {
            value: v,
            weight: 1,
            end_ns: now - (i % 60) * 1_000_000_000,
            trace_id: &[1; 16],
            span_id: &[2; 8],
        };
        let id = state.intern(dims.clone());
        state.record(HistogramMetric::RequestDuration, id, obs, now);
    }
    let bytes = state.heap_bytes();
    eprintln!("one latency series after 100k heavy-tailed values over 60 s: {bytes} bytes");
    assert!(bytes < 40_000, "a heavy-tailed latency series stays small: {bytes}");
}

#[tokio::test]
async fn explicit_buckets_and_a_dimension_from_span_attributes() {
    use super::config::{Dimension, ExplicitConfig, Source, default_dimensions};
    let mut dimensions = default_dimensions();
    dimensions.push(Dimension {
        name: "route".into(),
        from: vec!["http.route".into()],
        source: Source::Span,
        default: "none".into(),
    });
    let mut config = ModelMetricsConfig {
        dimensions,
        ..Default::default()
    };
    config.histogram.explicit = Some(ExplicitConfig {
        buckets: vec![0.05, 0.1, 0.5, 1.0],
        ..Default::default()
    });
    let (p, out) = processor(config, Telemetry::new());
    let now = now_ns();
    let mut a = request_span(1, now, 0.07, 200);
    a.attributes
        .push(kv("http.route", Value::StringValue("/v1/chat".into())));
    let b = request_span(2, now, 0.7, 200);
    let c = request_span(3, now, 3.0, 200);
    p.consume(traces(resource("m", None), vec![a, b, c])).await.unwrap();
    p.shutdown().await.unwrap();
    let emitted = out.0.lock().await;
    let m = metrics_of(&emitted[0]);
    let Some(MetricData::Histogram(h)) = metric(m, "model.request.duration").and_then(|x| x.data.as_ref()) else {
        panic!("explicit histogram expected")
    };
    let chat = h
        .data_points
        .iter()
        .find(|p| label(&p.attributes, "route") == Some("/v1/chat"))
        .unwrap();
    assert_eq!(chat.explicit_bounds, vec![0.05, 0.1, 0.5, 1.0]);
    assert_eq!(chat.bucket_counts, vec![0, 1, 0, 0, 0]);
    let other = h
        .data_points
        .iter()
        .find(|p| label(&p.attributes, "route") == Some("none"))
        .unwrap();
    assert_eq!(
        other.bucket_counts,
        vec![0, 0, 0, 1, 1],
        "0.7 s in (0.5, 1], 3 s beyond the last bound"
    );
    let Some(MetricData::Histogram(sizes)) = metric(m, "model.response.size").and_then(|x| x.data.as_ref()) else {
        panic!("sizes get default byte bounds")
    };
    assert_eq!(sizes.data_points[0].explicit_bounds.first(), Some(&64.0));
}

fn processor_with(
    config: ModelMetricsConfig,
    replicas: infercol_pipelines::ReplicaDirectory,
) -> (Arc<dyn Connector>, Arc<Collect>) {
    let shared = Shared::default();
    shared.provide(replicas);
    processor_in(config, Telemetry::new(), shared)
}

fn gauge_value(m: &ExportMetricsServiceRequest, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let Some(MetricData::Gauge(g)) = metric(m, name).and_then(|x| x.data.as_ref()) else {
        return None;
    };
    g.data_points
        .iter()
        .find(|p| labels.iter().all(|(k, v)| label(&p.attributes, k) == Some(*v)))
        .and_then(|p| match p.value {
            Some(number_data_point::Value::AsDouble(v)) => Some(v),
            _ => None,
        })
}

#[tokio::test]
async fn replicas_from_telemetry_starting_then_active_on_model_load() {
    let replicas = infercol_pipelines::ReplicaDirectory::default();
    let (p, out) = processor_with(ModelMetricsConfig::default(), replicas.clone());
    let mut res = resource("llm", Some("prod"));
    res.attributes
        .push(kv("service.instance.id", Value::StringValue("llm-0".into())));
    // First telemetry of any signal (the receiver records it): starting.
    replicas.observe(&res.attributes);
    p.shutdown().await.unwrap();
    // The end of model.load makes it active.
    let now = now_ns();
    let load = Span {
        name: "model.load".into(),
        kind: 1,
        start_time_unix_nano: now - 1_000_000_000,
        end_time_unix_nano: now,
        ..Default::default()
    };
    p.consume(traces(res, vec![load])).await.unwrap();
    p.shutdown().await.unwrap();
    let emitted = out.0.lock().await;
    let dims = [("model", "llm"), ("environment", "prod")];
    let first = metrics_of(&emitted[0]);
    assert_eq!(
        gauge_value(first, "model.replicas", &[dims[0], dims[1], ("state", "starting")]),
        Some(1.0)
    );
    assert_eq!(
        gauge_value(first, "model.replicas", &[dims[0], dims[1], ("state", "active")]),
        Some(0.0)
    );
    let second = metrics_of(&emitted[1]);
    assert_eq!(
        gauge_value(second, "model.replicas", &[dims[0], ("state", "active")]),
        Some(1.0)
    );
    assert_eq!(
        gauge_value(second, "model.replicas", &[dims[0], ("state", "starting")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_service_reporting_its_own_queue_size_wins() {
    let replicas = infercol_pipelines::ReplicaDirectory::default();
    let (p, out) = processor_with(ModelMetricsConfig::default(), replicas.clone());
    let now = now_ns();
    let enqueue = |service: &str, id: &str| {
        let span = Span {
            name: "async.enqueue".into(),
            kind: 4,
            start_time_unix_nano: now - 1000,
            end_time_unix_nano: now,
            attributes: vec![kv("messaging.message.id", Value::StringValue(id.into()))],
            ..Default::default()
        };
        traces(resource(service, None), vec![span])
    };
    p.consume(enqueue("self-reporting", "a")).await.unwrap();
    p.consume(enqueue("derived", "b")).await.unwrap();
    replicas.queue_size_reported(("self-reporting".into(), "unknown".into(), "unknown".into()));
    p.shutdown().await.unwrap();
    let emitted = out.0.lock().await;
    let m = metrics_of(&emitted[0]);
    assert_eq!(
        gauge_value(m, "model.async_queue.size", &[("model", "derived")]),
        Some(1.0)
    );
    assert_eq!(
        gauge_value(m, "model.async_queue.size", &[("model", "self-reporting")]),
        None,
        "its own gauge wins"
    );
}

/// Series are keyed by handles on interned dimension values; a handle freed by expiry is reused by new values,
/// and what is emitted carries the new values only.
#[test]
fn expired_dimension_handles_are_reused_with_the_right_labels() {
    use super::state::{HistogramMetric, Observation, State};
    let config = Arc::new(ModelMetricsConfig {
        metrics_expiration: Duration::from_secs(60),
        ..Default::default()
    });
    let replicas = infercol_pipelines::replicas::ReplicaDirectory::default();
    let now = now_ns();
    let mut state = State::new(config, now);
    let record = |state: &mut State, model: &str, at: u64| {
        let id = state.intern(vec![model.to_string(), "d".into(), "e".into()].into());
        let obs = Observation {
            value: 0.5,
            weight: 1,
            end_ns: at,
            trace_id: &[],
            span_id: &[],
        };
        state.record(HistogramMetric::RequestDuration, id, obs, at);
        id
    };
    let old = record(&mut state, "old-model", now);
    let models = |state: &mut State, at: u64| -> Vec<String> {
        let (request, _) = state.flush(at, &replicas, &mut Default::default());
        let mut out: Vec<String> = request
            .into_iter()
            .flat_map(|r| r.resource_metrics)
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .filter(|m| m.name == "model.request.duration")
            .flat_map(|m| match m.data {
                Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::ExponentialHistogram(h)) => h.data_points,
                _ => Vec::new(),
            })
            .flat_map(|p| p.attributes)
            .filter(|kv| kv.key == "model")
            .map(|kv| format!("{:?}", kv.value.and_then(|v| v.value)))
            .collect();
        out.sort();
        out
    };
    assert_eq!(models(&mut state, now + 1), vec!["Some(StringValue(\"old-model\"))"]);
    // Two minutes later the old series has expired and its handle is free again.
    let later = now + 120_000_000_000;
    models(&mut state, later);
    let new = record(&mut state, "new-model", later);
    assert_eq!(new, old, "the freed handle is reused");
    assert_eq!(state.dims(new)[0], "new-model");
    assert_eq!(models(&mut state, later + 1), vec!["Some(StringValue(\"new-model\"))"]);
}

/// A request that arrived as protobuf is read through its borrowed view; the metrics are the same as from the
/// owned form, for every kind of span the contract names.
#[tokio::test]
async fn the_borrowed_view_and_the_owned_form_give_the_same_metrics() {
    use prost::Message;
    let now = now_ns();
    let mut spans = Vec::new();
    for i in 0..200u64 {
        let mut s = request_span(
            i + 1,
            now - i * 1_000_000,
            0.01 + (i % 17) as f64 * 0.013,
            [200, 404, 500][i as usize % 3],
        );
        match i % 5 {
            1 => {
                s.attributes = vec![
                    kv("rpc.system", Value::StringValue("grpc".into())),
                    kv("rpc.grpc.status_code", Value::IntValue((i % 17) as i64)),
                ]
            }
            2 => s.attributes = vec![kv("websocket.close_code", Value::IntValue(1011))],
            3 => {
                s.attributes = vec![kv(
                    "rpc.status_code",
                    Value::StringValue("StatusCode.UNAVAILABLE".into()),
                )];
                s.status = Some(opentelemetry_proto::tonic::trace::v1::Status {
                    code: 2,
                    ..Default::default()
                });
            }
            _ => {
                s.attributes
                    .push(kv("gen_ai.usage.input_tokens", Value::IntValue(i as i64)));
                s.attributes
                    .push(kv("gen_ai.usage.output_tokens", Value::DoubleValue(i as f64 * 2.0)));
                s.attributes
                    .push(kv("http.request.body.size", Value::StringValue(format!("{}", 10 * i))));
                s.events.push(opentelemetry_proto::tonic::trace::v1::span::Event {
                    name: "first_token".into(),
                    time_unix_nano: s.start_time_unix_nano + 1_000_000,
                    ..Default::default()
                });
            }
        }
        if i % 7 == 0 {
            s.trace_state = "ot=th:8".into();
        }
        spans.push(s);
        let mut child = request_span(10_000 + i, now, 0.005, 200);
        child.kind = 1;
        child.name = ["predict", "async.queue", "async.enqueue", "model.load"][i as usize % 4].into();
        child.attributes = vec![kv("messaging.message.id", Value::StringValue(format!("m{}", i / 4)))];
        spans.push(child);
    }
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource("llm", Some("prod"))),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let viewed = Data::decode(infercol_pipelines::Signal::Traces, request.encode_to_vec().into()).unwrap();
    assert!(viewed.view().is_some(), "a well-formed request travels as its view");
    let mut emitted = Vec::new();
    for data in [Data::traces(request), viewed] {
        let (p, out) = processor(ModelMetricsConfig::default(), Telemetry::new());
        p.consume(data).await.unwrap();
        p.shutdown().await.unwrap();
        // Times and exemplars (a random pick) aside, the metrics are identical.
        let mut json: serde_json::Value = serde_json::from_str(&out.0.lock().await[0].to_json()).unwrap();
        fn strip(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    map.retain(|k, _| !k.ends_with("TimeUnixNano") && k != "timeUnixNano" && k != "exemplars");
                    map.values_mut().for_each(strip);
                }
                serde_json::Value::Array(list) => list.iter_mut().for_each(strip),
                _ => {}
            }
        }
        strip(&mut json);
        emitted.push(json);
    }
    assert!(emitted[0].to_string().contains("model.async_queue.duration"));
    assert_eq!(emitted[0], emitted[1]);
}

/// Four threads recording concurrently, each into a shard of its own, emit exactly what one thread recording the
/// same requests emits: counts, histogram buckets, window quantiles, queue sizes (an enqueue and its dequeue in
/// different requests, so in different shards). Times, exemplars (random picks) and the last digits of sums (added
/// in another order) aside.
#[test]
fn recording_shards_emit_what_one_state_emits() {
    let now = now_ns();
    let requests: Vec<Data> = (0..64u64)
        .map(|r| {
            let spans = (0..50u64)
                .map(|i| {
                    let id = r * 50 + i + 1;
                    let mut s = request_span(
                        id,
                        now - (id % 40) * 1_000_000_000,
                        0.001 * (1 + id % 997) as f64,
                        [200, 200, 200, 404, 503][id as usize % 5],
                    );
                    if i % 10 == 9 {
                        s.kind = 1;
                        s.name = if r % 2 == 0 { "async.enqueue" } else { "async.queue" }.into();
                        s.attributes = vec![kv(
                            "messaging.message.id",
                            Value::StringValue(format!("q{}-{i}", r / 2)),
                        )];
                    }
                    s
                })
                .collect();
            traces(resource(&format!("model-{}", r % 5), Some("prod")), spans)
        })
        .collect();

    fn normalise(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.retain(|k, _| !k.ends_with("TimeUnixNano") && k != "timeUnixNano" && k != "exemplars");
                map.values_mut().for_each(normalise);
            }
            serde_json::Value::Array(list) => list.iter_mut().for_each(normalise),
            serde_json::Value::Number(n) if n.is_f64() => {
                *v = serde_json::Value::String(format!("{:.9e}", n.as_f64().unwrap()));
            }
            _ => {}
        }
    }
    let emitted = |runtime: tokio::runtime::Runtime, concurrent: bool| -> serde_json::Value {
        runtime.block_on(async {
            let (p, out) = processor(ModelMetricsConfig::default(), Telemetry::new());
            if concurrent {
                let mut tasks = tokio::task::JoinSet::new();
                for chunk in requests.chunks(8) {
                    let (p, chunk) = (p.clone(), chunk.to_vec());
                    tasks.spawn(async move {
                        for data in chunk {
                            p.consume(data).await.unwrap();
                        }
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done.unwrap();
                }
            } else {
                for data in requests.iter().cloned() {
                    p.consume(data).await.unwrap();
                }
            }
            p.shutdown().await.unwrap();
            let out = out.0.lock().await;
            assert_eq!(out.len(), 1);
            let mut json: serde_json::Value = serde_json::from_str(&out[0].to_json()).unwrap();
            normalise(&mut json);
            json
        })
    };
    let one = emitted(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        false,
    );
    let four = emitted(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap(),
        true,
    );
    let text = one.to_string();
    assert!(text.contains("model.async_queue.size") && text.contains("model.request.duration_seconds_window"));
    assert!(text.contains("model-4"), "every model has its series");
    assert_eq!(one, four);
}

/// `dimensions[].from` names the resource's attributes first, then the span's: a resource without
/// `service.name` takes the model from the request span.
#[tokio::test]
async fn the_model_comes_from_the_span_when_the_resource_has_none() {
    let mut config = ModelMetricsConfig::default();
    config.dimensions[0].from = vec!["service.name".into(), "gen_ai.request.model".into()];
    let (p, out) = processor(config, Telemetry::new());
    let now = now_ns();
    let mut a = request_span(1, now, 0.2, 200);
    a.attributes
        .push(kv("gen_ai.request.model", Value::StringValue("llama-3-8b".into())));
    let b = request_span(2, now, 0.3, 200);
    let bare = Resource {
        attributes: vec![kv("deployment.environment.name", Value::StringValue("prod".into()))],
        ..Default::default()
    };
    p.consume(traces(bare, vec![a.clone(), b])).await.unwrap();
    // With a service.name on the resource, the resource wins.
    p.consume(traces(
        resource("svc", None),
        vec![request_span(3, now, 0.1, 200), {
            let mut c = a;
            c.span_id = 9u64.to_be_bytes().to_vec();
            c
        }],
    ))
    .await
    .unwrap();
    p.shutdown().await.unwrap();
    let emitted = out.0.lock().await;
    let counts = request_counts(metrics_of(&emitted[0]));
    assert_eq!(
        counts.get(&("llama-3-8b".into(), "2xx".into())),
        Some(&1.0),
        "{counts:?}"
    );
    assert_eq!(
        counts.get(&("unknown_service".into(), "2xx".into())),
        Some(&1.0),
        "{counts:?}"
    );
    assert_eq!(counts.get(&("svc".into(), "2xx".into())), Some(&2.0), "{counts:?}");
}

/// One request, counted once: a SERVER span under a local parent (is-remote bits say so, or its parent shows up
/// in the same trace and resource) is a stage; under a remote parent it is a request.
#[tokio::test]
async fn server_spans_under_a_local_parent_are_no_requests() {
    let (p, out) = processor(ModelMetricsConfig::default(), Telemetry::new());
    let now = now_ns();
    let root = request_span(1, now, 0.5, 200);
    let child = |id: u64, flags: u32| {
        let mut s = request_span(id, now - 1_000_000, 0.3, 200);
        s.trace_id = root.trace_id.clone();
        s.parent_span_id = root.span_id.clone();
        s.flags = flags;
        s
    };
    // Known local (0x100), known remote (0x300), unknown with its parent in another export request.
    let local = child(2, 0x100);
    let remote = child(3, 0x300);
    let unknown = child(4, 0);
    p.consume(traces(resource("m", None), vec![local, remote, unknown]))
        .await
        .unwrap();
    p.consume(traces(resource("m", None), vec![root])).await.unwrap();
    // An unknown-locality span whose parent never comes is a request once the wait is over (here: shutdown).
    let mut orphan = request_span(5, now, 0.2, 200);
    orphan.parent_span_id = 77u64.to_be_bytes().to_vec();
    p.consume(traces(resource("m", None), vec![orphan])).await.unwrap();
    p.shutdown().await.unwrap();
    let emitted = out.0.lock().await;
    let counts = request_counts(metrics_of(&emitted[0]));
    assert_eq!(
        counts.get(&("m".into(), "2xx".into())),
        Some(&3.0),
        "root, remote child, orphan: {counts:?}"
    );
}

/// A resource met again is read from the cache of worked-out resources (the view's path): its requests go to the
/// same series, a value cut at `max_label_value_length` is counted with every request, a dimension the resource
/// lacks is still taken from the span, and a resource that differs in one attribute is a resource of its own.
#[tokio::test]
async fn a_resource_met_again_counts_as_it_did_the_first_time() {
    use prost::Message;
    let telemetry = Telemetry::new();
    let config = ModelMetricsConfig {
        max_label_value_length: 16,
        ..Default::default()
    };
    let (p, out) = processor(config, telemetry.clone());
    let now = now_ns();
    let long = "a-model-name-longer-than-sixteen-bytes";
    let viewed = |resource: Resource, span: Span| {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let data = Data::decode(infercol_pipelines::Signal::Traces, request.encode_to_vec().into()).unwrap();
        assert!(data.view().is_some(), "the view's path");
        data
    };
    for id in 1..=3 {
        p.consume(viewed(resource(long, Some("prod")), request_span(id, now, 0.1, 200)))
            .await
            .unwrap();
    }
    let mut blue = request_span(4, now, 0.1, 200);
    blue.attributes
        .push(kv("deployment.name", Value::StringValue("blue".into())));
    p.consume(viewed(resource(long, Some("prod")), blue)).await.unwrap();
    p.consume(viewed(resource(long, Some("staging")), request_span(5, now, 0.1, 200)))
        .await
        .unwrap();
    p.shutdown().await.unwrap();
    assert!(
        telemetry.render().contains("reason=\"label_truncated\"} 6"),
        "one cut per request, and one more where the span's own dimensions are worked out: {}",
        telemetry.render()
    );
    let emitted = out.0.lock().await;
    let m = metrics_of(&emitted[0]);
    let cut = infercol_pipelines::replicas::truncate_label(long, 16).0.into_owned();
    let Some(MetricData::Sum(sum)) = metric(m, "model.requests").and_then(|x| x.data.as_ref()) else {
        panic!("no request counts")
    };
    let mut series: Vec<(String, String, String, f64)> = sum
        .data_points
        .iter()
        .map(|p| {
            let Some(number_data_point::Value::AsDouble(v)) = p.value else {
                panic!("double counts")
            };
            let l = |k| label(&p.attributes, k).unwrap_or("-").to_string();
            (l("model"), l("deployment"), l("environment"), v)
        })
        .collect();
    series.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let want = |d: &str, e: &str, v: f64| (cut.clone(), d.to_string(), e.to_string(), v);
    assert_eq!(
        series,
        vec![
            want("blue", "prod", 1.0),
            want("unknown", "prod", 3.0),
            want("unknown", "staging", 1.0)
        ]
    );
}
