//! infercol-sink: an OTLP/gRPC trace endpoint that acknowledges every export without reading it: the same tonic
//! server, listener, HTTP/2 settings and pass-through codec as infercol's `otlp` receiver, and nothing after them. What it
//! costs per span is the floor of any collector built on this transport on this machine (kernel receive, HTTP/2,
//! gRPC framing); `bench/run` measures it beside the collectors.
//!
//!   infercol-sink --endpoint HOST:PORT

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use clap::Parser;
use futures::TryStreamExt;
use infercol_pipelines::RawCodec;
use infercol_pipelines::batched_writes::BatchedWrites;
use infercol_pipelines::server::ConnectionLimits;
use tonic::server::NamedService;

#[derive(Parser)]
#[command(about = "Acknowledges OTLP/gRPC trace exports without reading them (the transport's floor)")]
struct Args {
    #[arg(long)]
    endpoint: String,
}

#[derive(Clone)]
struct Sink;

impl NamedService for Sink {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct Ack;

impl tonic::server::UnaryService<Bytes> for Ack {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        drop(request);
        // An ExportTraceServiceResponse without partial success encodes to zero bytes.
        std::future::ready(Ok(tonic::Response::new(Bytes::new())))
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<B> tower_service::Service<http::Request<B>> for Sink
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec).max_decoding_message_size(4 << 20);
            Ok(grpc.unary(Ack, req).await)
        })
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.endpoint)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", args.endpoint));
    eprintln!("infercol-sink on {}", listener.local_addr().expect("a bound socket"));
    // The receiver's listener: its connection limits, and its responses gathered into one write per pass.
    let incoming = infercol_pipelines::server::incoming(listener, &ConnectionLimits::default(), "infercol-sink".into())
        .map_ok(BatchedWrites::new);
    tonic::transport::Server::builder()
        .add_service(Sink)
        .serve_with_incoming(incoming)
        .await
        .expect("the server runs");
}
