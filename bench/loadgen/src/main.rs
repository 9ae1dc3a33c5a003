//! infercol-loadgen: realistic model-service spans over OTLP/gRPC, pre-encoded so that the generator is never the
//! bottleneck.
//!
//!   infercol-loadgen --endpoint HOST:PORT --duration SECONDS [--rate SPANS_PER_SEC] [--batch SPANS] [--concurrency N]
//!
//! Each request holds `--batch` spans over several resources (models, deployments, environments): half SERVER
//! request spans with the contract's attributes (HTTP status mix, body sizes, tokens, a first-token event) and half
//! their `predict` children. Without `--rate` it sends as fast as the collector acknowledges. It ends with one line
//! of JSON: `sent`, `acknowledged`, `refused` (spans), `requests` (request spans acknowledged) and `spans_per_sec`.
//!
//! For the other measurements of `bench/run`: `--models N` spreads the spans over N model names (many series),
//! `--heavy-tail` gives every span one resource and heavy-tailed request durations (lognormal with 2% outliers 10 to
//! 100 times longer), and `--once` sends each pre-encoded request exactly once; the JSON line then also holds the
//! exact quantiles of the request spans' durations (`duration_quantiles`, seconds), to compare collectors' answers with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use infercol_pipelines::RawCodec;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Event};
use prost::Message;

#[derive(Parser)]
#[command(about = "Sends model-service spans over OTLP/gRPC and reports what was acknowledged")]
struct Args {
    /// The collector's OTLP/gRPC endpoint, HOST:PORT.
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    duration: f64,
    /// Spans per second in all; without it, as fast as acknowledged.
    #[arg(long)]
    rate: Option<f64>,
    /// Spans per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the requests in flight are spread over (several let a many-core collector read on
    /// several threads at once).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Distinct pre-encoded requests to cycle through.
    #[arg(long, default_value_t = 64)]
    variants: usize,
    /// Distinct model names (`service.name`) the spans are spread over.
    #[arg(long, default_value_t = 4)]
    models: usize,
    /// One resource, heavy-tailed request durations.
    #[arg(long)]
    heavy_tail: bool,
    /// Send every pre-encoded request once, then stop (`--duration` still caps the run).
    #[arg(long)]
    once: bool,
}

/// How the spans of a request are shaped.
struct Shape {
    batch: usize,
    models: usize,
    heavy_tail: bool,
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn unit(n: u64) -> f64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// One pre-encoded request: its bytes, its spans, its request spans and their durations.
struct Variant {
    body: Bytes,
    spans: u64,
    requests: u64,
    durations: Vec<f64>,
}

/// The default four models, or `model-0` .. `model-{n-1}`.
fn model_name(i: usize, models: usize) -> String {
    const NAMES: [&str; 4] = ["llama-3-8b", "whisper-large", "sdxl", "bert-base"];
    if models <= NAMES.len() {
        NAMES[i % models].to_string()
    } else {
        format!("model-{}", i % models)
    }
}

/// Seconds of a request: log-uniform over 0.05..2.7 s, or (heavy tail) lognormal around 80 ms with 2% outliers.
fn seconds(n: u64, heavy_tail: bool) -> f64 {
    if !heavy_tail {
        return (unit(n) * 4.0 - 3.0).exp();
    }
    // Box-Muller from two uniforms.
    let (u1, u2) = (unit(n ^ 11).max(1e-12), unit(n ^ 12));
    let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let base = (0.08f64.ln() + 0.9 * normal).exp();
    if unit(n ^ 13) < 0.02 {
        base * (10.0 + 90.0 * unit(n ^ 14))
    } else {
        base
    }
}

/// One request of `batch` spans (half request spans).
fn request(variant: u64, shape: &Shape, now: u64) -> Variant {
    let batch = shape.batch;
    let per_resource = if shape.heavy_tail {
        batch
    } else {
        (batch / 4).max(2) & !1
    };
    let mut durations = Vec::new();
    let mut resource_spans = Vec::new();
    let mut requests = 0;
    let mut n = variant * batch as u64;
    let mut left = batch;
    let mut r = 0;
    while left > 0 {
        let count = per_resource.min(left);
        let model = model_name(variant as usize * 4 + r, shape.models);
        let mut spans = Vec::with_capacity(count);
        for i in 0..count {
            n += 1;
            let is_request = i % 2 == 0;
            let seconds = seconds(n, shape.heavy_tail);
            let end = now - (unit(n ^ 9) * 5e9) as u64;
            let start = end - (seconds * 1e9) as u64;
            // Never all zero: an all-zero id is invalid and the collector would reject the span.
            let trace = [(n / 2 + 1).to_be_bytes(), (variant + 1).to_be_bytes()].concat();
            let span = if is_request {
                requests += 1;
                durations.push(((seconds * 1e9) as u64) as f64 / 1e9);
                let code = match n % 40 {
                    0 => 500,
                    1 | 2 => 429,
                    3 => 404,
                    _ => 200,
                };
                Span {
                    trace_id: trace,
                    span_id: (n | 1 << 63).to_be_bytes().to_vec(),
                    name: "POST /v1/predict".into(),
                    kind: 2,
                    start_time_unix_nano: start,
                    end_time_unix_nano: end,
                    attributes: vec![
                        kv("http.request.method", Value::StringValue("POST".into())),
                        kv("http.route", Value::StringValue("/v1/predict".into())),
                        kv("http.response.status_code", Value::IntValue(code)),
                        kv("http.request.body.size", Value::IntValue((unit(n ^ 1) * 4096.0) as i64)),
                        kv(
                            "http.response.body.size",
                            Value::IntValue((unit(n ^ 2) * 65536.0) as i64),
                        ),
                        kv(
                            "gen_ai.usage.input_tokens",
                            Value::IntValue((unit(n ^ 3) * 512.0) as i64),
                        ),
                        kv(
                            "gen_ai.usage.output_tokens",
                            Value::IntValue((unit(n ^ 4) * 256.0) as i64),
                        ),
                        kv("server.address", Value::StringValue("10.0.0.7".into())),
                    ],
                    events: vec![Event {
                        name: "first_token".into(),
                        time_unix_nano: start + (seconds * 2e8) as u64,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            } else {
                Span {
                    trace_id: trace,
                    span_id: n.to_be_bytes().to_vec(),
                    parent_span_id: ((n - 1) | 1 << 63).to_be_bytes().to_vec(),
                    name: "predict".into(),
                    kind: 1,
                    start_time_unix_nano: start,
                    end_time_unix_nano: start + (seconds * 0.7e9) as u64,
                    ..Default::default()
                }
            };
            spans.push(span);
        }
        resource_spans.push(ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue(model.clone())),
                    kv("service.version", Value::StringValue(format!("v{}", r % 3))),
                    kv(
                        "deployment.environment.name",
                        Value::StringValue(if r % 2 == 0 { "prod" } else { "staging" }.into()),
                    ),
                    kv("service.instance.id", Value::StringValue(format!("{model}-{r}"))),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        });
        left -= count;
        r += 1;
    }
    Variant {
        body: Bytes::from(ExportTraceServiceRequest { resource_spans }.encode_to_vec()),
        spans: batch as u64,
        requests,
        durations,
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The requests being sent now.
type Live = Arc<RwLock<Arc<Vec<Variant>>>>;

fn current(live: &Live) -> Arc<Vec<Variant>> {
    live.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// How often the requests are made anew.
const REFRESH: Duration = Duration::from_secs(2);

/// Makes the requests anew every `REFRESH`, on a thread of its own, with the clock's time: their spans then end a
/// few seconds before they are sent, as an SDK's do. Made once, their end times would age with the run, and a
/// collector that keeps its quantile windows by end time would see ever older traffic (none of it in a 60 s window
/// after a minute), which is neither what it meets nor what it costs. The request spans' durations stay the same.
fn refresh(live: Live, shape: Shape, make: impl Fn(&Shape) -> Arc<Vec<Variant>> + Send + 'static) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(REFRESH);
            let fresh = make(&shape);
            *live.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        }
    });
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let shape = Shape {
        batch: args.batch.max(2),
        models: args.models.max(1),
        heavy_tail: args.heavy_tail,
    };
    let count = args.variants.max(1) as u64;
    let make = move |shape: &Shape| -> Arc<Vec<Variant>> {
        Arc::new((0..count).map(|v| request(v, shape, now_ns())).collect())
    };
    let variants = Arc::new(RwLock::new(make(&shape)));
    if !args.once {
        refresh(variants.clone(), shape, make);
    }
    let endpoint = if args.endpoint.contains("://") {
        args.endpoint.clone()
    } else {
        format!("http://{}", args.endpoint)
    };
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint)
        .expect("a valid endpoint")
        .tcp_nodelay(true);
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(endpoint.connect().await.expect("the collector accepts connections"));
    }
    let (sent, acked, refused, requests) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    // With a rate, each worker sends its share on a fixed schedule.
    let per_worker_interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.batch as f64 * args.concurrency as f64 / rate.max(1.0)));
    let mut tasks = Vec::new();
    let (once, workers) = (args.once, args.concurrency.max(1));
    for w in 0..workers {
        let (live, channel) = (variants.clone(), channels[w % channels.len()].clone());
        let (sent, acked, refused, requests) = (sent.clone(), acked.clone(), refused.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            let path =
                http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
            let mut ticks = per_worker_interval.map(tokio::time::interval);
            let mut i = w;
            loop {
                let variants = current(&live);
                if Instant::now() >= deadline || (once && i >= variants.len()) {
                    break;
                }
                if let Some(t) = &mut ticks {
                    t.tick().await;
                }
                let variant = &variants[i % variants.len()];
                i += workers;
                let spans = variant.spans;
                sent.fetch_add(spans, Ordering::Relaxed);
                if grpc.ready().await.is_err() {
                    refused.fetch_add(spans, Ordering::Relaxed);
                    continue;
                }
                let result = grpc
                    .unary::<_, Bytes, _>(tonic::Request::new(variant.body.clone()), path.clone(), RawCodec)
                    .await;
                match result {
                    Ok(response) => {
                        // Spans the collector rejected through partial success are not acknowledged.
                        let rejected =
                            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(
                                response.into_inner(),
                            )
                            .ok()
                            .and_then(|r| r.partial_success)
                            .map(|p| p.rejected_spans.max(0) as u64)
                            .unwrap_or(0);
                        acked.fetch_add(spans - rejected.min(spans), Ordering::Relaxed);
                        refused.fetch_add(rejected.min(spans), Ordering::Relaxed);
                        if rejected == 0 {
                            requests.fetch_add(variant.requests, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        refused.fetch_add(spans, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acknowledged = acked.load(Ordering::Relaxed);
    let mut line = serde_json::json!({
            "sent": sent.load(Ordering::Relaxed),
            "acknowledged": acknowledged,
            "refused": refused.load(Ordering::Relaxed),
            "requests": requests.load(Ordering::Relaxed),
            "spans_per_sec": (acknowledged as f64 / elapsed).round(),
            "seconds": (elapsed * 1000.0).round() / 1000.0,
    });
    if args.once {
        let mut all: Vec<f64> = current(&variants)
            .iter()
            .flat_map(|v| v.durations.iter().copied())
            .collect();
        all.sort_by(f64::total_cmp);
        // The nearest-rank quantile, as a collector that kept every value would report it.
        let rank = |q: f64| all[((q * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1];
        line["duration_quantiles"] = serde_json::json!({
            "0.5": rank(0.5), "0.9": rank(0.9), "0.95": rank(0.95), "0.99": rank(0.99),
        });
    }
    println!("{line}");
}
