//! TLS and mutual TLS for the servers the collector runs (the OTLP receiver's HTTP side, the Prometheus endpoint):
//! a certificate and key, and optionally the CA whose client certificates are required (rustls).

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

/// `tls` of a protocol: serve over TLS; with `client_ca_file`, require client certificates it signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

/// PEM contents: certificate chain, key, and the client CA when one is required.
pub type Pems = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

fn read(key: &str, path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("tls.{key}: cannot read {}: {e}", path.display()))
}

impl ServerTls {
    pub fn validate(&self, protocol: &str) -> Result<(), String> {
        self.rustls()
            .map(|_| ())
            .map_err(|e| format!("protocols.{protocol}.{e}"))
    }

    /// The PEM files, as (certificate chain, key, client CA).
    pub fn pem(&self) -> Result<Pems, String> {
        Ok((
            read("cert_file", &self.cert_file)?,
            read("key_file", &self.key_file)?,
            self.client_ca_file
                .as_ref()
                .map(|p| read("client_ca_file", p))
                .transpose()?,
        ))
    }

    /// A rustls server configuration for the HTTP server (HTTP/1.1 and HTTP/2 by ALPN).
    pub fn rustls(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key, ca) = self.pem()?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls.cert_file: {}: {e}", self.cert_file.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "tls.cert_file: {} holds no certificate",
                self.cert_file.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| format!("tls.key_file: {}: {e}", self.key_file.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let builder = match ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&ca) {
                    let c = c.map_err(|e| format!("tls.client_ca_file: {e}"))?;
                    roots.add(c).map_err(|e| format!("tls.client_ca_file: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("tls.client_ca_file: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("tls: certificate and key do not fit: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
