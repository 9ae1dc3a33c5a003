//! End to end with another language's SDK: the Python example service (OpenTelemetry Python SDK) sends its spans
//! to the real binary, and the derived metrics follow the contract: status classes, inference time, time to first
//! token, tokens, the async queue back at 0, and an active replica.

mod common;

use std::time::Duration;

use common::Collector;

fn sample(page: &str, prefix: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_service_yields_the_contract_metrics() {
    let c = Collector::start(common::MODEL_METRICS_TO_PROMETHEUS);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/model_service.py");
    let endpoint = c.grpc();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args(["--otlp", &endpoint, "--seconds", "4", "--rate", "100"])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs (bash tests/run installs the OpenTelemetry Python SDK)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sent: f64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("the script says how many requests it sent");
    // Requests are every kind but the queued jobs (1 in 10).
    let requests = sent - (sent / 10.0).floor();
    let url = c.address("Prometheus metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if sample(&page, "model_requests_total{") == requests && page.contains("model_async_queue_size{") {
            break page;
        }
        assert!(std::time::Instant::now() < deadline, "requests {requests}:\n{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let model = "model=\"whisper-large\"";
    for class in ["2xx", "4xx", "5xx"] {
        let series = format!("status_class=\"{class}\"");
        assert!(
            page.lines()
                .any(|l| l.starts_with("model_requests_total{") && l.contains(model) && l.contains(&series)),
            "{class} requests:\n{page}"
        );
    }
    assert!(
        page.contains("status_code=\"unset\""),
        "a prediction exception without a code is a 5xx with code unset"
    );
    for family in [
        "model_inference_duration_seconds_count{",
        "model_time_to_first_byte_seconds_window{",
        "model_input_tokens_count{",
        "model_output_tokens_window{",
        "model_async_queue_duration_seconds_count{",
    ] {
        assert!(sample(&page, family) > 0.0, "{family} missing:\n{page}");
    }
    assert_eq!(sample(&page, "model_async_queue_size{"), 0.0, "every job was dequeued");
    assert_eq!(
        sample(
            &page,
            "model_replicas{deployment=\"v3\",environment=\"prod\",model=\"whisper-large\",state=\"active\"}"
        ),
        1.0
    );
}
