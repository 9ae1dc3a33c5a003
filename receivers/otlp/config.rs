use std::time::Duration;

use infercol_pipelines::config::duration;
use infercol_pipelines::server::ConnectionLimits;
use infercol_pipelines::{ComponentConfig, Endpoint};
use serde::{Deserialize, Deserializer};

/// `receivers.otlp`: OTLP over gRPC and HTTP. `otlp:` alone enables both protocols on their default endpoints;
/// a `protocols` section enables only the protocols it names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    pub protocols: Protocols,
    pub auth: AuthConfig,
    /// Bytes of request bodies being received at once, over both protocols (MiB). A body that finds it full is
    /// refused at once with the protocol's retryable answer.
    pub request_buffer_limit_mib: u64,
}

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        OtlpReceiverConfig {
            protocols: Protocols {
                grpc: Some(GrpcConfig::default()),
                http: Some(HttpConfig::default()),
            },
            auth: AuthConfig::default(),
            request_buffer_limit_mib: 64,
        }
    }
}

pub use infercol_pipelines::auth::AuthConfig;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Protocols {
    #[serde(default, deserialize_with = "present_means_enabled")]
    pub grpc: Option<GrpcConfig>,
    #[serde(default, deserialize_with = "present_means_enabled")]
    pub http: Option<HttpConfig>,
}

/// `grpc:` with no body enables the protocol with its defaults; leaving the key out disables it.
fn present_means_enabled<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub endpoint: Endpoint,
    pub tls: Option<infercol_pipelines::tls::ServerTls>,
    /// The largest request accepted, in MiB (the Collector's default, 4).
    pub max_recv_msg_size_mib: u64,
    /// HTTP/2 streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Connections open at once; past it, new ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A request's message must have arrived whole within this time after its headers.
    #[serde(with = "duration")]
    pub read_timeout: Duration,
    pub keepalive: Keepalive,
}

/// `keepalive`, as the Collector's gRPC server settings name it (a zero duration means none).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Keepalive {
    pub server_parameters: KeepaliveServerParameters,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveServerParameters {
    /// A connection that moves no byte either way for this long is closed (server pings, when `time` is set,
    /// count as bytes).
    #[serde(with = "duration")]
    pub max_connection_idle: Duration,
    /// Connections are closed (gracefully) after this age.
    #[serde(with = "duration")]
    pub max_connection_age: Duration,
    /// How long a connection past its age may finish its calls.
    #[serde(with = "duration")]
    pub max_connection_age_grace: Duration,
    /// The server pings a connection that has been quiet for this long...
    #[serde(with = "duration")]
    pub time: Duration,
    /// ...and closes it when the ping is not answered within this time.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for KeepaliveServerParameters {
    fn default() -> Self {
        KeepaliveServerParameters {
            max_connection_idle: Duration::from_secs(60),
            max_connection_age: Duration::ZERO,
            max_connection_age_grace: Duration::ZERO,
            time: Duration::ZERO,
            timeout: Duration::from_secs(20),
        }
    }
}

/// A zero duration as "none", the Collector's convention, for the timers that take one.
pub fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl GrpcConfig {
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            idle_timeout: nonzero(self.keepalive.server_parameters.max_connection_idle)
                .unwrap_or(Duration::from_secs(365 * 24 * 3600)),
            max_concurrent_streams: self.max_concurrent_streams,
            ..ConnectionLimits::default()
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            endpoint: Endpoint::new("127.0.0.1:4317"),
            tls: None,
            max_recv_msg_size_mib: 4,
            max_concurrent_streams: 100,
            max_connections: ConnectionLimits::default().max_connections,
            read_timeout: Duration::from_secs(30),
            keepalive: Keepalive::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub endpoint: Endpoint,
    pub tls: Option<infercol_pipelines::tls::ServerTls>,
    /// The largest request body accepted, in bytes, counted after decompression (default 20 MiB).
    pub max_request_body_size: u64,
    pub traces_url_path: String,
    pub metrics_url_path: String,
    pub logs_url_path: String,
    /// Connections open at once; past it, new ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and may hold a keep-alive connection idle.
    #[serde(with = "duration")]
    pub read_header_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A request's body must have arrived whole within this time after its headers (408 otherwise).
    #[serde(with = "duration")]
    pub read_timeout: Duration,
}

impl HttpConfig {
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            read_header_timeout: self.read_header_timeout,
            idle_timeout: self.idle_timeout,
            ..ConnectionLimits::default()
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            endpoint: Endpoint::new("127.0.0.1:4318"),
            tls: None,
            max_request_body_size: 20 * 1024 * 1024,
            traces_url_path: "/v1/traces".into(),
            metrics_url_path: "/v1/metrics".into(),
            logs_url_path: "/v1/logs".into(),
            max_connections: ConnectionLimits::default().max_connections,
            read_header_timeout: ConnectionLimits::default().read_header_timeout,
            idle_timeout: ConnectionLimits::default().idle_timeout,
            read_timeout: Duration::from_secs(30),
        }
    }
}

impl ComponentConfig for OtlpReceiverConfig {
    fn validate(&self) -> Result<(), String> {
        self.auth.validate("auth.")?;
        let buffer = self.request_buffer_limit_mib.saturating_mul(1024 * 1024);
        if self.protocols.grpc.is_none() && self.protocols.http.is_none() {
            return Err("protocols: enable at least one of grpc, http".into());
        }
        if let Some(g) = &self.protocols.grpc {
            if g.max_recv_msg_size_mib == 0 {
                return Err("protocols.grpc.max_recv_msg_size_mib: must be at least 1".into());
            }
            if g.max_recv_msg_size_mib > self.request_buffer_limit_mib {
                return Err(format!(
                    "request_buffer_limit_mib: {} is less than protocols.grpc.max_recv_msg_size_mib ({}): no \
                     request that large could be received",
                    self.request_buffer_limit_mib, g.max_recv_msg_size_mib
                ));
            }
            if g.read_timeout.is_zero() {
                return Err("protocols.grpc.read_timeout: must be more than 0".into());
            }
            g.connection_limits().validate("protocols.grpc.")?;
            if let Some(tls) = &g.tls {
                tls.validate("protocols.grpc.")?;
            }
        }
        if let Some(tls) = self.protocols.http.as_ref().and_then(|h| h.tls.as_ref()) {
            tls.validate("protocols.http.")?;
        }
        if let Some(h) = &self.protocols.http {
            if h.max_request_body_size == 0 {
                return Err("protocols.http.max_request_body_size: must be at least 1".into());
            }
            if h.max_request_body_size > buffer {
                return Err(format!(
                    "request_buffer_limit_mib: {} MiB is less than protocols.http.max_request_body_size ({} \
                     bytes): no body that large could be received",
                    self.request_buffer_limit_mib, h.max_request_body_size
                ));
            }
            if h.read_timeout.is_zero() {
                return Err("protocols.http.read_timeout: must be more than 0".into());
            }
            h.connection_limits().validate("protocols.http.")?;
            for (key, path) in [
                ("traces_url_path", &h.traces_url_path),
                ("metrics_url_path", &h.metrics_url_path),
                ("logs_url_path", &h.logs_url_path),
            ] {
                if !path.starts_with('/') {
                    return Err(format!("protocols.http.{key}: `{path}` must start with `/`"));
                }
            }
        }
        Ok(())
    }

    fn listen_endpoints(&self) -> Vec<(&'static str, &Endpoint)> {
        let mut out = Vec::new();
        if let Some(g) = &self.protocols.grpc {
            out.push(("protocols.grpc.endpoint", &g.endpoint));
        }
        if let Some(h) = &self.protocols.http {
            out.push(("protocols.http.endpoint", &h.endpoint));
        }
        out
    }
}
