//! End to end: OTLP over TLS with client certificates (mutual TLS), from infercol's own `otlp` and `otlphttp`
//! exporters to its receivers; clients without a certificate, or with one from another CA, are turned away.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Collector, read_jsonl_until, spans_of};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(dir: &Path, name: &str, sans: &[&str], issuer: &CertifiedIssuer<'static, KeyPair>) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn pki(dir: &Path) -> Pki {
    let authority = ca("infercol test CA");
    let other = ca("someone else");
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, authority.pem()).unwrap();
    let (server_cert, server_key) = leaf(dir, "server", &["127.0.0.1", "localhost"], &authority);
    let (client_cert, client_key) = leaf(dir, "client", &["agent"], &authority);
    let (rogue_cert, rogue_key) = leaf(dir, "rogue", &["agent"], &other);
    Pki {
        ca: ca_path,
        server_cert,
        server_key,
        client_cert,
        client_key,
        rogue_cert,
        rogue_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_from_exporters_to_receivers_and_strangers_turned_away() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let tls = format!(
        "tls: {{ cert_file: \"{}\", key_file: \"{}\", client_ca_file: \"{}\" }}",
        p.server_cert.display(),
        p.server_key.display(),
        p.ca.display()
    );
    let server = Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0", {tls} }}
      http: {{ endpoint: "127.0.0.1:0", {tls} }}
exporters:
  file: {{ path: "{{dir}}/out.jsonl" }}
  prometheus:
    endpoint: "127.0.0.1:0"
    tls: {{ cert_file: "{cert}", key_file: "{key}" }}
  dashboard:
    endpoint: "127.0.0.1:0"
    tls: {{ cert_file: "{cert}", key_file: "{key}" }}
service:
  telemetry:
    metrics: {{ level: none }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [file] }}
    logs: {{ receivers: [otlp], exporters: [file] }}
    metrics: {{ receivers: [otlp], exporters: [prometheus, dashboard] }}
"#,
        cert = p.server_cert.display(),
        key = p.server_key.display()
    ));
    let grpc = server.address("OTLP/gRPC");
    let https = server.address("OTLP/HTTP");
    let client_tls = format!(
        "tls: {{ ca_file: \"{}\", cert_file: \"{}\", key_file: \"{}\" }}",
        p.ca.display(),
        p.client_cert.display(),
        p.client_key.display()
    );
    let agent = Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:0" }}
exporters:
  otlp:
    endpoint: "https://{grpc}"
    {client_tls}
  otlphttp:
    endpoint: "https://{https}"
    {client_tls}
service:
  telemetry:
    metrics: {{ level: none }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [otlp] }}
    logs: {{ receivers: [otlp], exporters: [otlphttp] }}
"#
    ));
    let http = reqwest::Client::new();
    let span = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"tls","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
    let log = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"1","body":{"stringValue":"over mTLS"}}]}]}]}"#;
    for (path, body) in [("/v1/traces", span), ("/v1/logs", log)] {
        let r = http
            .post(format!("{}{path}", agent.http()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let lines = read_jsonl_until(&server.path("out.jsonl"), Duration::from_secs(30), |l| {
        spans_of(l).len() == 1 && l.iter().any(|x| x.get("resourceLogs").is_some())
    });
    assert_eq!(spans_of(&lines)[0].1["name"], "tls", "gRPC over mutual TLS");

    // Strangers: no client certificate, or one from another CA, get no answer.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&p.ca).unwrap()).unwrap();
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    assert!(
        anonymous
            .post(format!("https://{https}/v1/traces"))
            .body("x")
            .send()
            .await
            .is_err()
    );
    let pem = [
        std::fs::read(&p.rogue_cert).unwrap(),
        std::fs::read(&p.rogue_key).unwrap(),
    ]
    .concat();
    let rogue = reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    assert!(
        rogue
            .post(format!("https://{https}/v1/traces"))
            .body("x")
            .send()
            .await
            .is_err()
    );
    let rogue_grpc = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&p.ca).unwrap()))
                .identity(tonic::transport::Identity::from_pem(
                    std::fs::read(&p.rogue_cert).unwrap(),
                    std::fs::read(&p.rogue_key).unwrap(),
                )),
        )
        .unwrap()
        .connect()
        .await;
    let refused = match rogue_grpc {
        Err(_) => true,
        Ok(channel) => {
            opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::new(channel)
                .export(opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::default())
                .await
                .is_err()
        }
    };
    assert!(refused, "a client certificate from another CA is refused over gRPC");

    // The Prometheus endpoint over TLS.
    let scrape = server.address("Prometheus metrics");
    assert!(scrape.starts_with("https://"), "{scrape}");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&p.ca).unwrap()).unwrap();
    let scraper = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    assert_eq!(scraper.get(&scrape).send().await.unwrap().status(), 200);
    let plain = reqwest::get(scrape.replace("https://", "http://")).await;
    assert!(
        !plain.is_ok_and(|r| r.status().is_success()),
        "no plain HTTP on a TLS endpoint"
    );

    // The dashboard over TLS.
    let page = server.address("dashboard");
    assert!(page.starts_with("https://"), "{page}");
    let body = scraper.get(&page).send().await.unwrap().text().await.unwrap();
    assert!(body.contains("infercol · Metrics"));
    let plain = reqwest::get(page.replace("https://", "http://")).await;
    assert!(
        !plain.is_ok_and(|r| r.status().is_success()),
        "no plain HTTP on the TLS dashboard"
    );
}

/// Shutdown does not wait for HTTPS clients that keep their connection open: an idle keep-alive connection, and
/// one that finished its TLS handshake but never sent a request, are closed, and the collector exits cleanly (a
/// stall would run into the 30 s shutdown deadline, which exits with a failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_keep_alive_connections_do_not_hold_the_shutdown() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let mut server = Collector::start(&format!(
        r#"
receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:0", tls: {{ cert_file: "{cert}", key_file: "{key}" }} }}
exporters:
  debug:
service:
  telemetry:
    metrics: {{ level: none }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [debug] }}
"#,
        cert = p.server_cert.display(),
        key = p.server_key.display()
    ));
    let https = server.address("OTLP/HTTP");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&p.ca).unwrap()).unwrap();
    // One client keeps its connection in its pool after an answered request.
    let client = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .http1_only()
        .pool_idle_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let span = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"kept","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
    let answer = client
        .post(format!("https://{https}/v1/traces"))
        .header("content-type", "application/json")
        .body(span)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // Another shakes hands and says nothing.
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&p.ca).unwrap();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).unwrap();
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(&https).await.unwrap();
    let silent = connector
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("the TLS handshake completes");
    let (status, log) = tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
    assert!(status.success(), "a clean exit:\n{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    drop((client, silent));
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}
