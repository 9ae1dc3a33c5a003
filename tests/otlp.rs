//! End to end: the real binary receives OTLP from the OpenTelemetry Rust SDK (gRPC and HTTP), from raw OTLP/JSON,
//! and from another infercol; everything arrives whole in the `file` exporter; bad input gets the protocol's
//! answer and the process keeps serving.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Collector, attr, otlp_to_file, read_jsonl_until, spans_of};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Value, json};

/// What the SDK side knows of a span it ended.
#[derive(Debug, Clone)]
struct Sent {
    trace_id: String,
    span_id: String,
    parent_id: String,
    name: String,
    n: i64,
}

/// Emits 40 request spans, each with a `predict` child, through an SDK tracer provider, and flushes.
fn emit_spans(exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static) -> Vec<Sent> {
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("llama-7b")
                .with_attributes([
                    KeyValue::new("deployment.environment.name", "prod"),
                    KeyValue::new("service.version", "v3"),
                ])
                .build(),
        )
        .build();
    let tracer = provider.tracer("e2e");
    let mut sent = Vec::new();
    for n in 0..40i64 {
        let mut request = tracer
            .span_builder("POST /v1/predict")
            .with_kind(SpanKind::Server)
            .with_attributes(vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.response.status_code", if n % 10 == 0 { 503 } else { 200 }),
                KeyValue::new("http.request.body.size", 1000 + n),
                KeyValue::new("sample.ratio", 0.25),
                KeyValue::new("streaming", n % 2 == 0),
                KeyValue::new("request.n", n),
            ])
            .start(&tracer);
        request.add_event("first_token", vec![KeyValue::new("tokens", 1i64)]);
        let request_cx = request.span_context().clone();
        let cx = opentelemetry::Context::current_with_span(request);
        let mut predict = tracer
            .span_builder("predict")
            .with_kind(SpanKind::Internal)
            .with_attributes(vec![KeyValue::new("request.n", n)])
            .start_with_context(&tracer, &cx);
        if n % 10 == 0 {
            predict.set_status(Status::error("CUDA out of memory"));
        }
        let predict_cx = predict.span_context().clone();
        predict.end();
        cx.span().end();
        sent.push(Sent {
            trace_id: request_cx.trace_id().to_string(),
            span_id: request_cx.span_id().to_string(),
            parent_id: String::new(),
            name: "POST /v1/predict".into(),
            n,
        });
        sent.push(Sent {
            trace_id: predict_cx.trace_id().to_string(),
            span_id: predict_cx.span_id().to_string(),
            parent_id: request_cx.span_id().to_string(),
            name: "predict".into(),
            n,
        });
    }
    provider.force_flush().expect("flush");
    provider.shutdown().expect("shutdown");
    sent
}

/// Every sent span is in the file exactly once, with its ids, parent, name, attributes and resource intact.
fn assert_arrived_whole(c: &Collector, sent: &[Sent]) {
    let lines = read_jsonl_until(&c.path("out.jsonl"), Duration::from_secs(30), |l| {
        spans_of(l).len() >= sent.len()
    });
    let got = spans_of(&lines);
    assert_eq!(got.len(), sent.len(), "every span once, no more");
    let by_id: BTreeMap<String, (Value, Value)> = got
        .into_iter()
        .map(|(r, s)| (s["spanId"].as_str().unwrap().to_string(), (r, s)))
        .collect();
    for s in sent {
        let (resource, span) = by_id
            .get(&s.span_id)
            .unwrap_or_else(|| panic!("span {} missing", s.span_id));
        assert_eq!(span["traceId"], s.trace_id.as_str());
        assert_eq!(span["parentSpanId"].as_str().unwrap_or(""), s.parent_id);
        assert_eq!(span["name"], s.name.as_str());
        assert_eq!(
            attr(&span["attributes"], "request.n"),
            Some(&json!({"intValue": s.n.to_string()}))
        );
        assert_eq!(
            attr(&resource["attributes"], "service.name"),
            Some(&json!({"stringValue": "llama-7b"}))
        );
        assert_eq!(
            attr(&resource["attributes"], "deployment.environment.name"),
            Some(&json!({"stringValue": "prod"}))
        );
        if s.name == "predict" {
            if s.n % 10 == 0 {
                assert_eq!(span["status"]["code"], 2, "ERROR status kept");
                assert_eq!(span["status"]["message"], "CUDA out of memory");
            }
            continue;
        }
        assert_eq!(span["kind"], 2, "SERVER kind");
        let code = if s.n % 10 == 0 { "503" } else { "200" };
        assert_eq!(
            attr(&span["attributes"], "http.response.status_code"),
            Some(&json!({"intValue": code}))
        );
        assert_eq!(
            attr(&span["attributes"], "http.request.body.size"),
            Some(&json!({"intValue": (1000 + s.n).to_string()}))
        );
        assert_eq!(
            attr(&span["attributes"], "sample.ratio"),
            Some(&json!({"doubleValue": 0.25}))
        );
        assert_eq!(
            attr(&span["attributes"], "streaming"),
            Some(&json!({"boolValue": s.n % 2 == 0}))
        );
        assert_eq!(
            attr(&span["attributes"], "http.request.method"),
            Some(&json!({"stringValue": "POST"}))
        );
        assert_eq!(span["events"][0]["name"], "first_token");
        let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(
            start > 1_600_000_000_000_000_000 && end >= start,
            "times are kept as 64-bit strings"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_over_grpc_arrive_whole() {
    let c = Collector::start(&otlp_to_file(""));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(c.grpc())
        .build()
        .unwrap();
    let sent = tokio::task::spawn_blocking(move || emit_spans(exporter)).await.unwrap();
    assert_arrived_whole(&c, &sent);
}

#[test]
fn sdk_spans_over_http_protobuf_arrive_whole() {
    common::install_crypto();
    let c = Collector::start(&otlp_to_file(""));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", c.http()))
        .build()
        .unwrap();
    let sent = emit_spans(exporter);
    assert_arrived_whole(&c, &sent);
}

const JSON_TRACES: &str = r#"{"resourceSpans":[{"resource":{"attributes":[
  {"key":"service.name","value":{"stringValue":"whisper"}},
  {"key":"deployment.id","value":{"stringValue":"dep-42"}}]},
 "scopeSpans":[{"scope":{"name":"fastapi","version":"1.2"},"spans":[
  {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"",
   "name":"POST /transcribe","kind":2,
   "startTimeUnixNano":"1764300000000000000","endTimeUnixNano":"1764300000250000000",
   "attributes":[{"key":"http.response.status_code","value":{"intValue":"200"}},
                 {"key":"big","value":{"intValue":"9007199254740993"}},
                 {"key":"tags","value":{"arrayValue":{"values":[{"stringValue":"a"},{"intValue":"2"}]}}}],
   "events":[{"timeUnixNano":"1764300000100000000","name":"first_byte"}],
   "status":{"code":1}},
  {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"0102030405060708","parentSpanId":"eee19b7ec3c1b174",
   "name":"predict","kind":1,
   "startTimeUnixNano":"1764300000010000000","endTimeUnixNano":"1764300000200000000"}]}]}]}"#;

const JSON_METRICS: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"whisper"}}]},
 "scopeMetrics":[{"metrics":[{"name":"queue.depth","unit":"{request}","gauge":{"dataPoints":[
   {"timeUnixNano":"1764300000000000000","asInt":"7"}]}}]}]}]}"#;

const JSON_LOGS: &str = r#"{"resourceLogs":[{"resource":{},"scopeLogs":[{"logRecords":[
   {"timeUnixNano":"1764300000000000000","severityText":"ERROR","body":{"stringValue":"prediction failed"},
    "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}"#;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn raw_otlp_json_over_http_arrives_whole() {
    common::install_crypto();
    let c = Collector::start(&otlp_to_file(""));
    let http = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>, gzipped: bool| {
        let mut r = http
            .post(format!("{}{path}", c.http()))
            .header("content-type", "application/json");
        if gzipped {
            r = r.header("content-encoding", "gzip");
        }
        r.body(body).send()
    };
    let r = post("/v1/traces", JSON_TRACES.as_bytes().to_vec(), false)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), "{}");
    let r = post("/v1/metrics", gzip(JSON_METRICS.as_bytes()), true).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = post("/v1/logs", JSON_LOGS.as_bytes().to_vec(), false).await.unwrap();
    assert_eq!(r.status(), 200);

    let lines = read_jsonl_until(&c.path("out.jsonl"), Duration::from_secs(20), |l| l.len() >= 3);
    let sent: Value = serde_json::from_str(JSON_TRACES).unwrap();
    let traces = lines
        .iter()
        .find(|l| l.get("resourceSpans").is_some())
        .expect("traces line");
    let got = spans_of(std::slice::from_ref(traces));
    let want = spans_of(std::slice::from_ref(&sent));
    assert_eq!(got.len(), 2);
    for ((_, g), (_, w)) in got.iter().zip(&want) {
        for key in [
            "traceId",
            "spanId",
            "name",
            "kind",
            "startTimeUnixNano",
            "endTimeUnixNano",
        ] {
            assert_eq!(g[key], w[key], "{key}");
        }
        assert_eq!(
            g["parentSpanId"].as_str().unwrap_or(""),
            w["parentSpanId"].as_str().unwrap_or("")
        );
    }
    let request = &got[0].1;
    assert_eq!(
        attr(&request["attributes"], "big"),
        Some(&json!({"intValue": "9007199254740993"})),
        "64-bit ints exact"
    );
    assert_eq!(
        attr(&request["attributes"], "tags"),
        Some(&json!({"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}}))
    );
    assert_eq!(request["events"][0]["name"], "first_byte");
    assert_eq!(request["status"]["code"], 1);
    assert_eq!(
        attr(&got[0].0["attributes"], "deployment.id"),
        Some(&json!({"stringValue": "dep-42"}))
    );
    assert_eq!(traces["resourceSpans"][0]["scopeSpans"][0]["scope"]["name"], "fastapi");

    let metrics = lines
        .iter()
        .find(|l| l.get("resourceMetrics").is_some())
        .expect("metrics line");
    let point = &metrics["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0];
    assert_eq!(point["name"], "queue.depth");
    assert_eq!(point["gauge"]["dataPoints"][0]["asInt"], "7");
    let logs = lines
        .iter()
        .find(|l| l.get("resourceLogs").is_some())
        .expect("logs line");
    let record = &logs["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
    assert_eq!(record["body"]["stringValue"], "prediction failed");
    assert_eq!(record["traceId"], "5b8efff798038103d269b633813fc60c");
}

#[tokio::test]
async fn bad_input_gets_the_protocol_answer_and_the_process_keeps_serving() {
    use prost::Message;
    common::install_crypto();
    let c = Collector::start(&otlp_to_file(""));
    let http = reqwest::Client::new();
    let url = format!("{}/v1/traces", c.http());

    // Malformed protobuf: 400 with a google.rpc.Status in protobuf.
    let r = http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(vec![0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let status = tonic_types::Status::decode(r.bytes().await.unwrap()).expect("google.rpc.Status body");
    assert_eq!(status.code, 3);
    assert!(status.message.contains("malformed"), "{}", status.message);

    // Malformed JSON: 400 with a JSON Status naming the problem.
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"resourceSpans": [{"scopeSpans": "nope"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(body["message"].as_str().unwrap().contains("OTLP/JSON"), "{body}");

    // A JSON span id that is not hex.
    let bad_id = JSON_TRACES.replace("eee19b7ec3c1b174", "not-hex-at-all!!");
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .body(bad_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Wrong content type: 415. Wrong method: 405. Bad gzip: 400.
    let r = http
        .post(&url)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body("not gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Malformed protobuf over gRPC: INVALID_ARGUMENT.
    let channel = tonic::transport::Endpoint::from_shared(c.grpc())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
    let err = grpc
        .unary::<_, bytes::Bytes, _>(
            tonic::Request::new(bytes::Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff])),
            path,
            infercol_pipelines::RawCodec,
        )
        .await
        .expect_err("malformed request must fail");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Still serving: a valid request over both transports goes through.
    let mut client =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::new(channel);
    let request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
        serde_json::from_str(JSON_TRACES).unwrap();
    client.export(request).await.expect("valid gRPC export accepted");
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .body(JSON_TRACES)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    read_jsonl_until(&c.path("out.jsonl"), Duration::from_secs(20), |l| {
        spans_of(l).len() >= 4
    });
}

#[tokio::test]
async fn the_default_configuration_receives_spans_and_writes_only_the_dashboard_history() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(common::BIN)
        .current_dir(dir.path())
        .env("INFERCOL_OTLP_GRPC_ENDPOINT", "127.0.0.1:0")
        .env("INFERCOL_OTLP_HTTP_ENDPOINT", "127.0.0.1:0")
        .env("INFERCOL_TELEMETRY_ENDPOINT", "127.0.0.1:0")
        .env("INFERCOL_PROMETHEUS_ENDPOINT", "127.0.0.1:0")
        .env("INFERCOL_DASHBOARD_ENDPOINT", "127.0.0.1:0")
        .env("INFERCOL_HEALTH_CHECK_ENDPOINT", "127.0.0.1:0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = Collector::watch(child, dir);
    let health = c.address("health check");
    assert_eq!(
        reqwest::get(&health).await.unwrap().status(),
        200,
        "the health check answers while it runs"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/traces", c.http()))
        .header("content-type", "application/json")
        .body(JSON_TRACES)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    c.wait_for_log("debug: traces: 2 spans in 1 resources", Duration::from_secs(10));
    // The dashboard is part of the default: its page answers.
    let page = reqwest::get(c.address("dashboard"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("infercol · Metrics"), "{page}");
    let (status, log) = c.stop();
    assert!(status.success(), "{log}");
    // A collector left running must not fill the disk: the default writes only the dashboard's history (bounded
    // by its retention and max_series), under INFERCOL_DATA_DIR, by default ./infercol-data.
    let written: Vec<_> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        written,
        ["infercol-data"],
        "the default configuration wrote {written:?}"
    );
    let inside: Vec<_> = std::fs::read_dir(c.dir.path().join("infercol-data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(inside, ["dashboard"]);
}
