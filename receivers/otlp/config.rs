use infercol_pipelines::{ComponentConfig, Endpoint};
use serde::{Deserialize, Deserializer};

/// `receivers.otlp`: OTLP over gRPC and HTTP. `otlp:` alone enables both protocols on their default endpoints;
/// a `protocols` section enables only the protocols it names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    pub protocols: Protocols,
    pub auth: AuthConfig,
}

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        OtlpReceiverConfig {
            protocols: Protocols {
                grpc: Some(GrpcConfig::default()),
                http: Some(HttpConfig::default()),
            },
            auth: AuthConfig::default(),
        }
    }
}

/// `auth`: clients must send `Authorization: Bearer <token>` (gRPC metadata or HTTP header).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Usually from the environment: `bearer_token: ${env:INFERCOL_TOKEN}`.
    pub bearer_token: Option<String>,
}

impl AuthConfig {
    /// Whether an `authorization` header value carries the token (compared in constant time).
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(token) = &self.bearer_token else { return true };
        let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        else {
            return false;
        };
        let (a, b) = (given.trim().as_bytes(), token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

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
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            endpoint: Endpoint::new("127.0.0.1:4317"),
            tls: None,
            max_recv_msg_size_mib: 4,
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
        }
    }
}

impl ComponentConfig for OtlpReceiverConfig {
    fn validate(&self) -> Result<(), String> {
        if self.auth.bearer_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err("auth.bearer_token: empty (is the environment variable set?)".into());
        }
        if self.protocols.grpc.is_none() && self.protocols.http.is_none() {
            return Err("protocols: enable at least one of grpc, http".into());
        }
        if let Some(g) = &self.protocols.grpc {
            if g.max_recv_msg_size_mib == 0 {
                return Err("protocols.grpc.max_recv_msg_size_mib: must be at least 1".into());
            }
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
