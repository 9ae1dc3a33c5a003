//! A small model service that emits the spans infercol reads (the README's span conventions), with a load
//! generator, so that the metrics and the dashboard fill:
//!
//!   cargo run -p infercol-example-model-service -- --replicas 2 --rate 20
//!
//! Each replica is an HTTP server with its own OpenTelemetry resource (`service.instance.id`): it loads its "model"
//! at start-up (a `model.load` span; readiness answers 503 until then), serves `POST /v1/predict` (a SERVER span with
//! an inner `predict` span, some 4xx and 5xx, and now and then a prediction exception), `POST /v1/generate` (streamed:
//! a `first_token` event and token counts) and `POST /v1/jobs` (async: an `async.enqueue` span now, an `async.queue`
//! span when a worker takes the job). The load generator calls the replicas at `--rate` requests per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use clap::Parser;
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

#[derive(Parser, Clone)]
#[command(about = "A model service emitting infercol's span conventions, with a load generator")]
struct Args {
    /// Where infercol's OTLP/gRPC receiver is.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", default_value = "http://127.0.0.1:4317")]
    otlp: String,
    /// The model's name (service.name).
    #[arg(long, default_value = "llama-3-8b")]
    model: String,
    #[arg(long, default_value = "prod")]
    environment: String,
    #[arg(long, default_value = "v1")]
    deployment: String,
    /// Replicas, on consecutive ports from --port.
    #[arg(long, default_value_t = 2)]
    replicas: u16,
    #[arg(long, default_value_t = 8100)]
    port: u16,
    /// Requests per second the load generator sends (0: none).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds to run (0: until stopped).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
}

struct Replica {
    tracer: SdkTracer,
    ready: AtomicBool,
    counter: AtomicU64,
    jobs: tokio::sync::mpsc::Sender<(String, SystemTime)>,
}

/// A cheap pseudo-random number in [0, 1) from a counter (no dependency for a demo).
fn unit(n: u64) -> f64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

async fn predict(State(r): State<Arc<Replica>>, body: String) -> (StatusCode, String) {
    let n = r.counter.fetch_add(1, Ordering::Relaxed);
    let mut span = r
        .tracer
        .span_builder("POST /v1/predict")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", "/v1/predict"),
            KeyValue::new("http.request.body.size", body.len() as i64),
        ])
        .start(&r.tracer);
    let (status, answer) = if unit(n) < 0.05 {
        (StatusCode::BAD_REQUEST, "bad input".to_string())
    } else {
        let cx = Context::current().with_remote_span_context(span.span_context().clone());
        let mut inner = r.tracer.start_with_context("predict", &cx);
        // Lognormal-ish latency with a rare slow tail.
        let ms = (unit(n ^ 0xabc) * 3.0).exp() * 20.0 * if unit(n ^ 7) < 0.01 { 20.0 } else { 1.0 };
        tokio::time::sleep(Duration::from_micros((ms * 1000.0) as u64)).await;
        if unit(n ^ 0x55) < 0.02 {
            inner.record_error(&std::io::Error::other("CUDA out of memory"));
            inner.set_status(Status::error("prediction failed"));
            inner.end();
            span.add_event(
                "exception",
                vec![KeyValue::new("exception.message", "CUDA out of memory")],
            );
            (StatusCode::INTERNAL_SERVER_ERROR, "prediction failed".to_string())
        } else {
            inner.end();
            (
                StatusCode::OK,
                format!("{{\"label\":\"cat\",\"score\":{:.3}}}", unit(n)),
            )
        }
    };
    span.set_attribute(KeyValue::new("http.response.status_code", status.as_u16() as i64));
    span.set_attribute(KeyValue::new("http.response.body.size", answer.len() as i64));
    span.end();
    (status, answer)
}

async fn generate(State(r): State<Arc<Replica>>, body: String) -> (StatusCode, String) {
    let n = r.counter.fetch_add(1, Ordering::Relaxed);
    let mut span = r
        .tracer
        .span_builder("POST /v1/generate")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.request.body.size", body.len() as i64),
            KeyValue::new("gen_ai.operation.name", "text_completion"),
        ])
        .start(&r.tracer);
    let input = (body.len() / 4 + 1) as i64;
    let output = 16 + (unit(n) * 240.0) as i64;
    tokio::time::sleep(Duration::from_millis(20 + (unit(n ^ 3) * 80.0) as u64)).await;
    span.add_event("first_token", vec![]);
    tokio::time::sleep(Duration::from_millis(output as u64 / 2)).await;
    span.set_attribute(KeyValue::new("gen_ai.usage.input_tokens", input));
    span.set_attribute(KeyValue::new("gen_ai.usage.output_tokens", output));
    span.set_attribute(KeyValue::new("http.response.status_code", 200));
    span.set_attribute(KeyValue::new("http.response.body.size", output * 4));
    span.end();
    (StatusCode::OK, "tokens...".repeat(output as usize / 8))
}

async fn submit(State(r): State<Arc<Replica>>) -> (StatusCode, String) {
    let n = r.counter.fetch_add(1, Ordering::Relaxed);
    let id = format!("job-{}-{n}", std::process::id());
    let mut span = r
        .tracer
        .span_builder("async.enqueue")
        .with_kind(SpanKind::Producer)
        .with_attributes([KeyValue::new("messaging.message.id", id.clone())])
        .start(&r.tracer);
    let accepted = r.jobs.try_send((id.clone(), SystemTime::now())).is_ok();
    span.end();
    if accepted {
        (StatusCode::ACCEPTED, id)
    } else {
        (StatusCode::TOO_MANY_REQUESTS, "queue full".into())
    }
}

async fn ready(State(r): State<Arc<Replica>>) -> StatusCode {
    if r.ready.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Takes jobs off the queue: the `async.queue` span runs from enqueue to dequeue.
async fn worker(tracer: SdkTracer, mut jobs: tokio::sync::mpsc::Receiver<(String, SystemTime)>) {
    while let Some((id, enqueued)) = jobs.recv().await {
        let span = tracer
            .span_builder("async.queue")
            .with_kind(SpanKind::Consumer)
            .with_start_time(enqueued)
            .with_attributes([KeyValue::new("messaging.message.id", id)])
            .start(&tracer);
        drop(span);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn provider(args: &Args, instance: u16) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&args.otlp)
        .build()
        .expect("an OTLP exporter");
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(args.model.clone())
                .with_attributes([
                    KeyValue::new("service.instance.id", format!("{}-{instance}", args.model)),
                    KeyValue::new("service.version", args.deployment.clone()),
                    KeyValue::new("deployment.environment.name", args.environment.clone()),
                    KeyValue::new("host.name", hostname()),
                    KeyValue::new("process.pid", std::process::id() as i64),
                ])
                .build(),
        )
        .build()
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut providers = Vec::new();
    let mut urls = Vec::new();
    for i in 0..args.replicas {
        let provider = provider(&args, i);
        let tracer = provider.tracer("model-service");
        let (tx, rx) = tokio::sync::mpsc::channel(1000);
        tokio::spawn(worker(tracer.clone(), rx));
        let replica = Arc::new(Replica {
            tracer,
            ready: AtomicBool::new(false),
            counter: AtomicU64::new(0),
            jobs: tx,
        });
        let app = axum::Router::new()
            .route("/v1/predict", post(predict))
            .route("/v1/generate", post(generate))
            .route("/v1/jobs", post(submit))
            .route("/health/ready", get(ready))
            .with_state(replica.clone());
        let port = args.port + i;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("a free port");
        tokio::spawn(async move { axum::serve(listener, app).await });
        // Loading the model: readiness turns 200 when the model.load span ends.
        let loader = replica.clone();
        tokio::spawn(async move {
            let span = loader
                .tracer
                .span_builder("model.load")
                .with_kind(SpanKind::Internal)
                .start(&loader.tracer);
            tokio::time::sleep(Duration::from_secs(2 + u64::from(i))).await;
            drop(span);
            loader.ready.store(true, Ordering::Relaxed);
        });
        urls.push(format!("http://127.0.0.1:{port}"));
        providers.push(provider);
        println!("replica {i} on http://127.0.0.1:{port} (ready at /health/ready)");
    }
    if args.rate > 0.0 {
        let client = reqwest::Client::new();
        let every = Duration::from_secs_f64(1.0 / args.rate);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            for n in 0u64.. {
                ticks.tick().await;
                let base = &urls[(n as usize) % urls.len()];
                let (path, body) = match n % 10 {
                    0..=5 => ("/v1/predict", "x".repeat(100 + (unit(n) * 2000.0) as usize)),
                    6..=8 => ("/v1/generate", "a prompt ".repeat(1 + (unit(n) * 50.0) as usize)),
                    _ => ("/v1/jobs", String::new()),
                };
                let request = client.post(format!("{base}{path}")).body(body).send();
                tokio::spawn(async move {
                    let _ = request.await;
                });
            }
        });
    }
    if args.seconds > 0 {
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    for p in providers {
        let _ = p.shutdown();
    }
}
