//! The `prometheus` receiver against the real binary: it scrapes pages served by a test server, emits every
//! family as OTLP metrics with `up` per target, and a target that is down, slow, too large or malformed changes
//! its own `up` (logged once per change, counted by reason) while the others go on.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Collector, read_jsonl_until};
use serde_json::Value;

/// A page in the shape prometheus_client renders vLLM's families, whose counter advances by 3 a scrape and goes
/// back to the start once (a restart) after `restart_at` scrapes.
fn vllm_page(scrape: u64, restart_at: u64) -> String {
    let n = if scrape >= restart_at {
        scrape - restart_at
    } else {
        scrape
    } * 3;
    format!(
        "# HELP vllm:request_success_total Count of successfully processed requests.\n\
         # TYPE vllm:request_success_total counter\n\
         vllm:request_success_total{{finished_reason=\"stop\",model_name=\"llama\"}} {n}.0\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"llama\"}} 4.0\n\
         # HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.\n\
         # TYPE vllm:e2e_request_latency_seconds histogram\n\
         vllm:e2e_request_latency_seconds_bucket{{le=\"0.3\",model_name=\"llama\"}} {a}.0\n\
         vllm:e2e_request_latency_seconds_bucket{{le=\"1.0\",model_name=\"llama\"}} {b}.0\n\
         vllm:e2e_request_latency_seconds_bucket{{le=\"+Inf\",model_name=\"llama\"}} {n}.0\n\
         vllm:e2e_request_latency_seconds_count{{model_name=\"llama\"}} {n}.0\n\
         vllm:e2e_request_latency_seconds_sum{{model_name=\"llama\"}} {sum}\n",
        a = n / 3,
        b = 2 * n / 3,
        sum = n as f64 * 0.5
    )
}

/// A page of a million series (about 17 MB), built once.
fn million_series() -> &'static str {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| {
        let mut page = String::from("# TYPE requests counter\n");
        for i in 0..1_000_000 {
            page += &format!("requests_total{{i=\"{i}\"}} 1\n");
        }
        page
    })
}

/// Serves the test pages.
fn serve(scrapes: Arc<AtomicU64>) -> String {
    common::pages::serve(move |path| page(path, &scrapes))
}

fn page(path: &str, scrapes: &AtomicU64) -> common::pages::Page {
    match path {
        "/vllm" => {
            let n = scrapes.fetch_add(1, Ordering::SeqCst);
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", vllm_page(n, 4))
        }
        "/openmetrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "# TYPE tokens counter\ntokens_total{kind=\"prompt\"} 42 # {trace_id=\"ab\"} 1\n# EOF\n".to_string(),
        ),
        "/million" => ("200 OK", "text/plain; version=0.0.4", million_series().to_string()),
        "/tgi/llama" | "/tgi/other" | "/tgi/restarting" => {
            // TGI 3.3.7's page (the fixture), its success counter 2 higher at every scrape; the restarting one
            // goes back to the fixture's 8 every fifth scrape, as a restarted server's does.
            let k = scrapes.fetch_add(1, Ordering::SeqCst);
            let n = 8 + 2 * if path == "/tgi/restarting" { k % 5 } else { k };
            let page = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/scrape/tgi/page.txt"
            ))
            .unwrap();
            (
                "200 OK",
                "text/plain; version=0.0.4",
                page.replace("\ntgi_request_success 8\n", &format!("\ntgi_request_success {n}\n")),
            )
        }
        "/vllm-latencies" => {
            // Nothing on the first scrape, then every value at once: the window holds exactly `LATENCIES`.
            let n = scrapes.fetch_add(1, Ordering::SeqCst);
            let values = if n == 0 { Vec::new() } else { latencies() };
            ("200 OK", "text/plain; version=0.0.4", latency_page(&values))
        }
        "/missing" => ("404 Not Found", "text/plain", "no such page\n".to_string()),
        "/broken" => (
            "200 OK",
            "text/plain",
            "vllm:num_requests_waiting{model_name=\"llama\" 4\n".to_string(),
        ),
        "/huge" => ("200 OK", "text/plain", format!("# {}\n", "x".repeat(3 << 20))),
        "/slow" => {
            std::thread::sleep(Duration::from_secs(2));
            ("200 OK", "text/plain", "late 1\n".to_string())
        }
        _ => ("404 Not Found", "text/plain", String::new()),
    }
}

/// The last value of `name` in the metrics of the resource whose `url.full` ends with `path`.
fn last_point(lines: &[Value], path: &str, name: &str) -> Option<Value> {
    lines
        .iter()
        .rev()
        .flat_map(|l| l["resourceMetrics"].as_array().cloned().unwrap_or_default())
        .filter(|rm| {
            rm["resource"]["attributes"].as_array().is_some_and(|a| {
                a.iter().any(|kv| {
                    kv["key"] == "url.full" && kv["value"]["stringValue"].as_str().is_some_and(|u| u.ends_with(path))
                })
            })
        })
        .flat_map(|rm| rm["scopeMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
        .find(|m| m["name"] == name)
}

/// The answer to `GET url` (plain HTTP).
fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    common::http_exchange(host, &format!("GET {path}"), "text/plain", "")
}

fn gauge_value(metric: &Value) -> f64 {
    metric["gauge"]["dataPoints"][0]["asDouble"].as_f64().unwrap()
}

#[test]
fn scraped_families_become_otlp_metrics_and_a_broken_target_changes_only_its_own_up() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let site = serve(scrapes.clone());
    let targets: String = ["vllm", "openmetrics", "missing", "broken", "huge", "slow"]
        .iter()
        .map(|p| format!("      - {{ url: \"http://{site}/{p}\", model: llama, deployment: v1, environment: test }}\n"))
        .collect();
    let c = Collector::start(&format!(
        "receivers:\n  prometheus:\n    interval: 300ms\n    timeout: 250ms\n    body_size_limit_mib: 1\n    targets:\n{targets}exporters:\n  file: {{ path: \"{{dir}}/metrics.jsonl\" }}\nservice:\n  telemetry: {{ metrics: {{ address: \"127.0.0.1:0\" }} }}\n  pipelines:\n    metrics: {{ receivers: [prometheus], exporters: [file] }}\n"
    ));
    // Until the vLLM page has been scraped past its restart.
    let lines = read_jsonl_until(&c.path("metrics.jsonl"), Duration::from_secs(30), |l| {
        scrapes.load(Ordering::SeqCst) >= 7 && last_point(l, "/slow", "up").is_some()
    });
    assert_eq!(gauge_value(&last_point(&lines, "/vllm", "up").unwrap()), 1.0);
    for broken in ["/missing", "/broken", "/huge", "/slow"] {
        assert_eq!(gauge_value(&last_point(&lines, broken, "up").unwrap()), 0.0, "{broken}");
        assert!(last_point(&lines, broken, "vllm:num_requests_waiting").is_none());
    }
    let waiting = last_point(&lines, "/vllm", "vllm:num_requests_waiting").unwrap();
    assert_eq!(gauge_value(&waiting), 4.0);
    let histogram = last_point(&lines, "/vllm", "vllm:e2e_request_latency_seconds").unwrap();
    let point = &histogram["histogram"]["dataPoints"][0];
    assert_eq!(point["explicitBounds"], serde_json::json!([0.3, 1.0]));
    assert_eq!(histogram["histogram"]["aggregationTemporality"], 2, "cumulative");
    // The counter restarted: its start time moved forward to the scrape that saw it go back.
    let counters: Vec<(u64, f64)> = lines
        .iter()
        .flat_map(|l| l["resourceMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|rm| rm["scopeMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["name"] == "vllm:request_success_total")
        .map(|m| {
            let p = &m["sum"]["dataPoints"][0];
            (
                p["startTimeUnixNano"].as_str().unwrap().parse().unwrap(),
                p["asDouble"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(counters.len() >= 6, "{counters:?}");
    assert_eq!(counters[1].0, counters[0].0, "the same start while it grows");
    let restart = counters
        .iter()
        .position(|c| c.1 == 0.0 && c != &counters[0])
        .expect("the restart's point");
    assert!(
        counters[restart].0 > counters[0].0,
        "a reset starts the series again: {counters:?}"
    );
    let tokens = last_point(&lines, "/openmetrics", "tokens_total").unwrap();
    assert_eq!(
        tokens["sum"]["dataPoints"][0]["asDouble"], 42.0,
        "OpenMetrics, with its exemplar left aside"
    );
    // Each failure is logged when the state changes, not at every scrape, and counted by reason.
    let log = c.log();
    for (path, reason) in [
        ("/missing", "http_status"),
        ("/broken", "malformed"),
        ("/huge", "body_too_large"),
        ("/slow", "timeout"),
    ] {
        let logged = log
            .lines()
            .filter(|l| l.contains("scrape failed") && l.contains(&format!("{site}{path}")))
            .count();
        assert_eq!(logged, 1, "{path} logged once:\n{log}");
        assert!(
            log.contains(&format!("reason=\"{reason}\"")) || log.contains(&format!("reason={reason}")),
            "{reason}:\n{log}"
        );
    }
    let own = http_get(&c.address("own metrics"));
    assert!(
        own.lines()
            .any(|l| l.starts_with("infercol_prometheus_scrape_failures_total")
                && l.contains("reason=\"body_too_large\"")),
        "{own}"
    );
}

/// `model.requests` points from the scrape (scope `infercol/prometheus`) for `model`: (status_code, value).
fn scraped_requests(line: &Value, model: &str) -> Vec<(String, f64)> {
    let attr = |p: &Value, k: &str| {
        p["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|kv| kv["key"] == k))
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .map(str::to_string)
    };
    line["resourceMetrics"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rm| rm["scopeMetrics"].as_array().cloned().unwrap_or_default())
        .filter(|sm| sm["scope"]["name"] == "infercol/prometheus")
        .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["name"] == "model.requests")
        .flat_map(|m| m["sum"]["dataPoints"].as_array().cloned().unwrap_or_default())
        .filter(|p| attr(p, "model").as_deref() == Some(model))
        .map(|p| (attr(&p, "status_code").unwrap(), p["asDouble"].as_f64().unwrap()))
        .collect()
}

/// The mapped 2xx count of a TGI target, point by point: (start, time, value).
fn mapped_2xx(lines: &[Value]) -> Vec<(u64, u64, f64)> {
    let number = |v: &Value| v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    lines
        .iter()
        .flat_map(|l| l["resourceMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|rm| rm["scopeMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["name"] == "model.requests")
        .flat_map(|m| m["sum"]["dataPoints"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["attributes"].to_string().contains("\"2xx\""))
        .map(|p| {
            (
                number(&p["startTimeUnixNano"]),
                number(&p["timeUnixNano"]),
                p["asDouble"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// A server that restarts: the mapped `model.requests` starts again just after the scrape before the restart, so
/// a rate counts the restarted server's requests in full, as Prometheus' `rate()` does; its first point is a
/// baseline (it starts where it is seen).
#[test]
fn a_restarted_server_starts_its_mapped_counts_again() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let site = serve(scrapes.clone());
    let c = Collector::start(&format!(
        "receivers:\n  prometheus:\n    interval: 200ms\n    timeout: 150ms\n    targets:\n      - {{ url: \"http://{site}/tgi/restarting\", model: llama }}\nexporters:\n  file: {{ path: \"{{dir}}/metrics.jsonl\" }}\nservice:\n  telemetry: {{ metrics: {{ level: none }} }}\n  pipelines:\n    metrics: {{ receivers: [prometheus], exporters: [file] }}\n"
    ));
    let lines = read_jsonl_until(&c.path("metrics.jsonl"), Duration::from_secs(30), |l| {
        mapped_2xx(l).len() >= 12
    });
    let points = mapped_2xx(&lines);
    assert_eq!(
        points[0].0, points[0].1,
        "the first point starts where it is seen: {points:?}"
    );
    let values: Vec<f64> = points.iter().map(|p| p.2).collect();
    assert_eq!(
        values[..7],
        [8.0, 10.0, 12.0, 14.0, 16.0, 8.0, 10.0],
        "the fixture's 8, 2 more a scrape"
    );
    for i in 1..points.len() {
        let (start, time, value) = points[i];
        if value < points[i - 1].2 {
            assert!(
                start > points[i - 1].1 && start <= time,
                "a restart starts after the scrape before it: {:?} then {:?}",
                points[i - 1],
                points[i]
            );
        } else {
            assert_eq!(start, points[i - 1].0, "the same start while it grows: {points:?}");
        }
    }
}

/// A page of a million series is refused at the sample limit (100,000 by default) without holding it: `up` 0,
/// one log line with the reason, the collector's memory bounded by the body limit, and the target beside it
/// scraped as before.
#[test]
fn a_page_of_a_million_series_is_refused_at_the_sample_limit() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let site = serve(scrapes.clone());
    million_series();
    let c = Collector::start(&format!(
        "receivers:\n  prometheus:\n    interval: 1s\n    timeout: 900ms\n    body_size_limit_mib: 64\n    targets:\n      - {{ url: \"http://{site}/million\", model: big }}\n      - {{ url: \"http://{site}/tgi/llama\", model: llama }}\nexporters:\n  file: {{ path: \"{{dir}}/metrics.jsonl\" }}\nservice:\n  telemetry: {{ metrics: {{ level: none }} }}\n  pipelines:\n    metrics: {{ receivers: [prometheus], exporters: [file] }}\n"
    ));
    let ups = |lines: &[Value], path: &str| -> Vec<f64> {
        lines
            .iter()
            .filter_map(|l| last_point(std::slice::from_ref(l), path, "up"))
            .map(|m| gauge_value(&m))
            .collect()
    };
    let lines = read_jsonl_until(&c.path("metrics.jsonl"), Duration::from_secs(60), |l| {
        ups(l, "/million").len() >= 4
    });
    let big = ups(&lines, "/million");
    assert!(big.iter().all(|u| *u == 0.0), "{big:?}");
    assert_eq!(ups(&lines, "/tgi/llama").last(), Some(&1.0));
    assert!(
        last_point(&lines, "/million", "requests_total").is_none(),
        "nothing of the page is passed on"
    );
    let log = c.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("scrape failed") && l.contains("/million"))
        .collect();
    assert_eq!(refused.len(), 1, "logged once:\n{log}");
    assert!(refused[0].contains("sample_limit"), "{}", refused[0]);
    let peak = common::peak_rss(c.child.id());
    eprintln!("peak memory after a million-series page: {} MiB", peak >> 20);
    assert!(peak < 256 << 20, "peak memory {} MiB", peak >> 20);
}

/// A TGI page maps onto the contract with exact counts by status class; once spans give a model's metrics, its
/// scraped equivalents stop (nothing is counted twice) while another model's go on.
#[test]
fn a_scraped_tgi_counts_exactly_and_spans_of_the_same_model_win() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let site = serve(scrapes.clone());
    let c = Collector::start(&format!(
        r#"receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:0" }}
  prometheus:
    interval: 300ms
    timeout: 250ms
    targets:
      - {{ url: "http://{site}/tgi/llama", model: llama, deployment: v1, environment: prod }}
      - {{ url: "http://{site}/tgi/other", model: other, deployment: v1, environment: prod }}
connectors:
  model_metrics: {{ flush_interval: 300ms }}
exporters:
  file: {{ path: "{{dir}}/metrics.jsonl" }}
service:
  telemetry: {{ metrics: {{ level: none }} }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [model_metrics] }}
    metrics: {{ receivers: [prometheus, model_metrics], exporters: [file] }}
"#
    ));
    let lines = read_jsonl_until(&c.path("metrics.jsonl"), Duration::from_secs(30), |l| {
        l.iter().any(|line| !scraped_requests(line, "llama").is_empty())
    });
    let first = lines
        .iter()
        .map(|l| scraped_requests(l, "llama"))
        .find(|r| !r.is_empty())
        .unwrap();
    let value = |code: &str| first.iter().find(|(c, _)| c == code).map(|(_, v)| *v);
    // The fixture's failures: one validation (422), one dropped (499), one failed generation (counted 500).
    assert_eq!(
        (value("422"), value("499"), value("500")),
        (Some(1.0), Some(1.0), Some(1.0)),
        "{first:?}"
    );
    let ok = value("200").unwrap();
    assert!(ok >= 8.0 && (ok - 8.0) % 2.0 == 0.0, "exactly the page's counter: {ok}");

    // Spans for llama, with the same dimensions.
    let span = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"llama"}},{"key":"deployment.name","value":{"stringValue":"v1"}},{"key":"deployment.environment.name","value":{"stringValue":"prod"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"POST /generate","kind":2,"startTimeUnixNano":"1764300000000000000","endTimeUnixNano":"1764300000250000000"}]}]}]}"#;
    let otlp = c.address("OTLP/HTTP");
    common::post_json_traces(&otlp, span);
    c.wait_for_log("spans give this model's metrics", Duration::from_secs(20));
    let marked = read_jsonl_until(&c.path("metrics.jsonl"), Duration::from_secs(5), |_| true).len();
    // Later scrapes: llama's scraped request counts are gone; other's go on.
    let lines = read_jsonl_until(&c.path("metrics.jsonl"), Duration::from_secs(20), |l| {
        l.len() > marked + 4
            && l[marked..]
                .iter()
                .filter(|line| !scraped_requests(line, "other").is_empty())
                .count()
                >= 2
    });
    assert!(
        lines[marked..]
            .iter()
            .all(|line| scraped_requests(line, "llama").is_empty()),
        "llama counted twice"
    );
    let log = c.log();
    assert_eq!(
        log.matches("spans give this model's metrics").count(),
        1,
        "logged once:\n{log}"
    );
}

/// vLLM 0.33.0's `vllm:e2e_request_latency_seconds` bounds (`vllm/v1/metrics/loggers.py`, from the fixture).
const VLLM_E2E_BOUNDS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];

/// A deterministic spread of request latencies from 0.1 s to about 60 s.
fn latencies() -> Vec<f64> {
    (0..500).map(|i| 0.1 * (1.0125f64).powi(i)).collect()
}

/// The e2e histogram of vLLM's page holding `values`, with the request counter of the same requests.
fn latency_page(values: &[f64]) -> String {
    let mut page = String::from(
        "# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.\n# TYPE vllm:e2e_request_latency_seconds histogram\n",
    );
    for bound in VLLM_E2E_BOUNDS
        .iter()
        .map(|b| format!("{b:?}"))
        .chain(["+Inf".to_string()])
    {
        let limit: f64 = if bound == "+Inf" {
            f64::INFINITY
        } else {
            bound.parse().unwrap()
        };
        let count = values.iter().filter(|v| **v <= limit).count();
        page += &format!(
            "vllm:e2e_request_latency_seconds_bucket{{engine=\"0\",le=\"{bound}\",model_name=\"m\"}} {count}.0\n"
        );
    }
    page += &format!(
        "vllm:e2e_request_latency_seconds_count{{engine=\"0\",model_name=\"m\"}} {}.0\nvllm:e2e_request_latency_seconds_sum{{engine=\"0\",model_name=\"m\"}} {}\n",
        values.len(),
        values.iter().sum::<f64>()
    );
    page
}

/// The window quantiles from a vLLM page's buckets fall in the bucket of the true quantile: the error is the
/// layout's, and no more.
#[test]
fn window_quantiles_from_a_vllm_page_fall_in_the_bucket_of_the_truth() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let site = serve(scrapes.clone());
    let c = Collector::start(&format!(
        "receivers:\n  prometheus:\n    interval: 300ms\n    timeout: 250ms\n    quantile_window: 60s\n    targets:\n      - {{ url: \"http://{site}/vllm-latencies\", model: m }}\nexporters:\n  file: {{ path: \"{{dir}}/metrics.jsonl\" }}\nservice:\n  telemetry: {{ metrics: {{ level: none }} }}\n  pipelines:\n    metrics: {{ receivers: [prometheus], exporters: [file] }}\n"
    ));
    let lines = read_jsonl_until(&c.path("metrics.jsonl"), Duration::from_secs(30), |l| {
        last_point(l, "/vllm-latencies", "model.request.duration_seconds_window")
            .is_some_and(|m| m["summary"]["dataPoints"][0]["count"].as_str() == Some("500"))
    });
    let summary = last_point(&lines, "/vllm-latencies", "model.request.duration_seconds_window").unwrap();
    let mut truth = latencies();
    truth.sort_by(f64::total_cmp);
    let quantiles = summary["summary"]["dataPoints"][0]["quantileValues"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(quantiles.len(), 4, "{summary}");
    for q in quantiles {
        let (p, reported) = (q["quantile"].as_f64().unwrap(), q["value"].as_f64().unwrap());
        let exact = truth[((p * truth.len() as f64).ceil() as usize).clamp(1, truth.len()) - 1];
        let upper = VLLM_E2E_BOUNDS.iter().copied().find(|b| exact <= *b).unwrap();
        let lower = VLLM_E2E_BOUNDS
            .iter()
            .copied()
            .rev()
            .find(|b| *b < exact)
            .unwrap_or(0.0);
        assert!(
            lower <= reported && reported <= upper,
            "p{p}: {reported} outside the bucket ({lower}, {upper}] of the exact {exact}"
        );
    }
}

/// A real Prometheus scraping infercol's `prometheus` exporter sees the mapped series of a scraped TGI under the
/// contract's names, and answers `histogram_quantile` over their buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_the_mapped_series() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let site = serve(scrapes.clone());
    let c = Collector::start(&format!(
        "receivers:\n  prometheus:\n    interval: 300ms\n    timeout: 250ms\n    targets:\n      - {{ url: \"http://{site}/tgi/other\", model: other, deployment: v1, environment: prod }}\nexporters:\n  prometheus: {{ endpoint: \"127.0.0.1:0\" }}\nservice:\n  telemetry: {{ metrics: {{ level: none }} }}\n  pipelines:\n    metrics: {{ receivers: [prometheus], exporters: [prometheus] }}\n"
    ));
    let target = c
        .address("Prometheus metrics")
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let prometheus = common::prometheus::Prometheus::start(&target, &[]).await;
    // The fixture's 4xx: one validation error (422) and one client that went away (499).
    let q = r#"sum(model_requests_total{model="other",status_class="4xx"})"#;
    assert_eq!(prometheus.wait_for(q, |v| v == 2.0).await, 2.0);
    let ok = prometheus
        .wait_for(r#"sum(model_requests_total{model="other",status_class="2xx"})"#, |v| {
            v >= 8.0
        })
        .await;
    assert!(ok >= 8.0);
    prometheus
        .wait_for(r#"model_queue_size{model="other"}"#, |v| v == 0.0)
        .await;
    let p50 = prometheus
        .wait_for(
            r#"histogram_quantile(0.5, sum by (le) (model_request_duration_seconds_bucket{model="other"}))"#,
            |v| v.is_finite() && v > 0.0,
        )
        .await;
    assert!(p50 < 145.7, "within TGI's highest finite bound: {p50}");
}
