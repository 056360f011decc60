//! Optional TLS (rustls) for every gRPC link: a daemon given `--tls-cert` and `--tls-key` serves TLS, and
//! a client given `--tls-ca` trusts the certificates that CA signed when it dials an `https://` address.
//! Without them everything is plaintext, which is fine on 127.0.0.1 and nowhere else.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::PoolError;

/// Longest a client may take over its TLS handshake on a gRPC port.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, PoolError> {
    std::fs::read(path).map_err(|e| PoolError::invalid(flag, format!("reading {}: {e}", path.display())))
}

/// The server side: `None` without a certificate. A certificate without its key (or the reverse) is an
/// error, not a silent fallback to plaintext.
pub fn server_config(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerTlsConfig>, PoolError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            let identity = Identity::from_pem(read(cert, "tls-cert")?, read(key, "tls-key")?);
            Ok(Some(ServerTlsConfig::new().identity(identity).timeout(HANDSHAKE_TIMEOUT)))
        }
        (Some(_), None) => Err(PoolError::invalid("tls-key", "missing: --tls-cert needs --tls-key")),
        (None, Some(_)) => Err(PoolError::invalid("tls-cert", "missing: --tls-key needs --tls-cert")),
    }
}

/// The same identity for an HTTPS server (the coordinator's HTTP API): `None` without a certificate.
/// Offers HTTP/1.1 and HTTP/2 by ALPN.
pub fn https_config(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Arc<rustls::ServerConfig>>, PoolError> {
    let (Some(cert), Some(key)) = (cert, key) else {
        // A lone certificate or key is refused by `server_config`, which every daemon calls too.
        return server_config(cert, key).map(|_| None);
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert, "tls-cert")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PoolError::invalid("tls-cert", format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(PoolError::invalid("tls-cert", format!("{}: no certificate in the file", cert.display())));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&read(key, "tls-key")?)
        .map_err(|e| PoolError::invalid("tls-key", format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PoolError::invalid("tls-cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| PoolError::invalid("tls-key", format!("does not match --tls-cert or is unsupported: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The client side: the CA that signed the pool's certificates, if any, and this daemon's own
/// certificate and key, presented when a server asks for one (a coordinator that checks its workers'
/// certificates, `--tls-worker-ca`).
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
}

impl ClientTls {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn from_ca_file(ca: Option<&Path>) -> Result<Self, PoolError> {
        Ok(Self { ca: ca.map(|path| read(path, "tls-ca")).transpose()?.map(Certificate::from_pem), identity: None })
    }

    pub fn from_ca_pem(pem: impl AsRef<[u8]>) -> Self {
        Self { ca: Some(Certificate::from_pem(pem)), identity: None }
    }

    /// Presents this certificate and key (PEM files) to servers that ask for a client certificate.
    pub fn with_identity(mut self, cert: &Path, key: &Path) -> Result<Self, PoolError> {
        self.identity = Some(Identity::from_pem(read(cert, "tls-cert")?, read(key, "tls-key")?));
        Ok(self)
    }

    /// The same, from PEM text.
    pub fn with_identity_pem(mut self, cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        self.identity = Some(Identity::from_pem(cert, key));
        self
    }

    /// An endpoint for `url`: TLS for `https://` (which needs the CA), plaintext for `http://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, PoolError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| PoolError::invalid("address", format!("{url:?} is not a valid URI: {e}")))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let ca = self.ca.clone().ok_or_else(|| {
            PoolError::invalid("tls-ca", format!("{url} is https: give the CA that signed its certificate with --tls-ca"))
        })?;
        let mut config = ClientTlsConfig::new().ca_certificate(ca);
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        endpoint.tls_config(config).map_err(|e| PoolError::invalid("tls-ca", format!("TLS settings for {url}: {e}")))
    }
}

/// Adds client-certificate checking to a TLS server: a client may present a certificate, which must be
/// signed by the CA in `ca` (PEM file); whether a call needs one is the service's decision (the
/// coordinator requires it for membership calls with `--tls-worker-ca`).
pub fn with_client_ca(server: ServerTlsConfig, ca: &Path, flag: &str) -> Result<ServerTlsConfig, PoolError> {
    Ok(server.client_ca_root(Certificate::from_pem(read(ca, flag)?)).client_auth_optional(true))
}
