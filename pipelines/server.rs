//! The listeners every server of the collector shares (the OTLP receiver's gRPC and HTTP sides, the Prometheus and
//! dashboard endpoints, the collector's own metrics): a bound on open connections, accept errors backed off instead
//! of retried hot, a connection closed after it has moved no byte for the idle timeout (or sent none within the
//! header timeout), HTTP/1.1 headers that must arrive within a time, a bounded number of HTTP/2 streams, optional
//! bearer authentication, and a graceful stop that waits for the connections it spawned (keep-alive ones
//! included) for a while and then closes them.
//!
//! Written here rather than taken whole from a crate because no server crate bounds connections, idleness and
//! header time together for both hyper (axum) and tonic; each piece is hyper's, hyper-util's or tokio's.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::auth::BearerAuth;

/// Connection limits of one listener. The same keys on every server that takes them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Connections open at once on this listener; past it, new ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long an HTTP/1.1 client may take to send a request's headers, and may keep an idle keep-alive
    /// connection waiting for the next request (hyper applies the same timer to both).
    #[serde(with = "crate::config::duration")]
    pub read_header_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed (HTTP/1.1 and HTTP/2).
    #[serde(with = "crate::config::duration")]
    pub idle_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            read_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_concurrent_streams: 100,
        }
    }
}

impl ConnectionLimits {
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err(format!("{prefix}max_connections: must be at least 1"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(format!("{prefix}max_concurrent_streams: must be at least 1"));
        }
        for (key, d) in [
            ("read_header_timeout", self.read_header_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{prefix}{key}: must be more than 0"));
            }
        }
        Ok(())
    }

    /// The connection limit this process can honour: at most an eighth of its file descriptors per listener, so
    /// that one listener full of hostile sockets leaves descriptors for the others, the queues and the files.
    pub fn effective_max_connections(&self) -> usize {
        self.max_connections.min((open_files_limit() / 8).max(32) as usize)
    }
}

/// The soft limit on open files, raised to the hard limit once (as the Go runtime does for the Collector).
pub fn open_files_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024),
    })
}

/// A connection of a bounded listener: closed once it has moved no byte for the idle timeout, and holding its
/// place under the listener's connection limit until dropped.
pub struct Conn<T> {
    inner: T,
    idle: Duration,
    /// Until the client has sent its first byte the idle timeout is this shorter one (the header timeout): a
    /// socket that connects and says nothing is cut as soon as a slow header would be.
    first: Option<Duration>,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<T> Conn<T> {
    fn new(inner: T, idle: Duration, first: Duration, slot: OwnedSemaphorePermit) -> Conn<T> {
        let now = Instant::now();
        let first = first.min(idle);
        Conn {
            inner,
            idle,
            first: Some(first),
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + first)),
            _slot: slot,
        }
    }

    /// Ready with an error once the connection has been idle for the idle timeout. The timer is re-armed only
    /// when it fires, so activity costs a clock read, not a timer update.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last_activity + self.first.unwrap_or(self.idle);
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle past its idle timeout",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Conn<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.last_activity = Instant::now();
                    self.first = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl<T> Conn<T> {
    /// A write's outcome, noting activity, or the idle error while the write waits.
    fn wrote(&mut self, cx: &mut Context<'_>, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Conn<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Errors of one connection that do not concern the listener (the peer gave up before it was accepted).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// The connections of `listener`, at most `limits.max_connections` open at once. An accept error such as running
/// out of file descriptors is logged and backed off (5 ms doubling to 1 s, as Go's net/http does), never retried
/// in a hot loop.
pub fn incoming(
    listener: TcpListener,
    limits: &ConnectionLimits,
    what: String,
) -> impl Stream<Item = io::Result<Conn<TcpStream>>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(limits.effective_max_connections()));
    let (idle, first) = (limits.idle_timeout, limits.read_header_timeout);
    futures::stream::unfold((listener, slots, what), move |(listener, slots, what)| async move {
        let mut backoff = Duration::from_millis(5);
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return None;
            };
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((Ok(Conn::new(tcp, idle, first, slot)), (listener, slots, what)));
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!("{what}: cannot accept a connection ({e}); retrying in {backoff:?}");
                    drop(slot);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    })
}

/// How an HTTP server serves: TLS, connection limits, and bearer authentication in front of every route.
#[derive(Clone, Default)]
pub struct HttpServing {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub limits: ConnectionLimits,
    pub auth: Option<BearerAuth>,
}

/// How long a stopping server lets its open connections finish their requests; then they are closed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `stopped`, then lets open connections finish (up to `STOP_GRACE`) and
/// closes the rest. `what` names the server in logs.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    serving: HttpServing,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    what: String,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = incoming(listener, &serving.limits, what.clone());
    futures::pin_mut!(connections);
    let acceptor = serving.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let conn = tokio::select! {
            next = connections.next() => match next {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => break,
            },
            _ = &mut stopped => break,
        };
        // Finished connections leave the set as new ones come.
        while tasks.try_join_next().is_some() {}
        let watcher = graceful.watcher();
        let (router, auth, limits, acceptor) = (
            router.clone(),
            serving.auth.clone(),
            serving.limits.clone(),
            acceptor.clone(),
        );
        tasks.spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    // A handshake gets the header time: a client that opens a socket and sends nothing is cut.
                    let handshake = tokio::time::timeout(limits.read_header_timeout, acceptor.accept(conn)).await;
                    if let Ok(Ok(stream)) = handshake {
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        serve_connection(stream, h2, router, auth, &limits, watcher).await;
                    }
                }
                None => serve_connection(conn, false, router, auth, &limits, watcher).await,
            }
        });
    }
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("{what}: connections still open {STOP_GRACE:?} after the stop; closing them");
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Serves one connection: HTTP/2 when TLS negotiated it, else HTTP/1.1, whose header timer then runs from the
/// first byte (hyper's protocol detection, used for cleartext HTTP/2, has no timer of its own).
async fn serve_connection<S>(
    stream: S,
    h2: bool,
    router: axum::Router,
    auth: Option<BearerAuth>,
    limits: &ConnectionLimits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        let refused = auth.as_ref().and_then(|a| a.refusal(request.headers()));
        async move {
            match refused {
                Some(response) => Ok(response),
                None => router.oneshot(request.map(axum::body::Body::new)).await,
            }
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut builder = if h2 { builder.http2_only() } else { builder.http1_only() };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams);
    let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
    let _ = watcher.watch(connection).await;
}

/// Logs a warning for an endpoint that listens on every interface: it is reachable from other machines.
pub fn warn_if_exposed(what: &str, address: &std::net::SocketAddr, authenticated: bool) {
    if address.ip().is_unspecified() {
        if authenticated {
            tracing::warn!("{what} listens on every interface ({address}); it requires a bearer token");
        } else {
            tracing::warn!(
                "{what} listens on every interface ({address}) without authentication: anyone who can reach this \
                 machine can use it (set `auth.bearer_token`, or listen on 127.0.0.1)"
            );
        }
    }
}
