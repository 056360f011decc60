//! The pool's secret and TLS flags, shared by both daemons (and what they become: [`Credentials`] for
//! outgoing calls, a [`ServerTlsConfig`] for serving).

use std::path::PathBuf;

use tonic::transport::ServerTlsConfig;

use crate::PoolError;
use crate::auth::{Credentials, Token};
use crate::tls::{ClientTls, server_config};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// The pool's shared secret (at least 16 visible ASCII characters): required on every call to this
    /// daemon and sent on its calls to the others. Prefer the environment variable: command lines are
    /// visible to every user of the machine.
    #[arg(long, env = "MODELPOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve TLS with this certificate (PEM); needs --tls-key. A worker then advertises https://.
    #[arg(long, env = "MODELPOOL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "MODELPOOL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) to trust when dialling an https:// address (a worker's or the coordinator's).
    #[arg(long, env = "MODELPOOL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// A refused security flag: which one (without its dashes) and why.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub reason: String,
}

impl From<PoolError> for FlagError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::InvalidArgument { field, reason } => {
                let flag = ["tls-cert", "tls-key", "tls-ca"].into_iter().find(|f| *f == field).unwrap_or("token");
                FlagError { flag, reason }
            }
            other => FlagError { flag: "token", reason: other.to_string() },
        }
    }
}

impl SecurityArgs {
    /// The token and CA for outgoing calls.
    pub fn credentials(&self) -> Result<Credentials, FlagError> {
        let mut tls = ClientTls::from_ca_file(self.tls_ca.as_deref())?;
        // Its own certificate doubles as its client certificate, for servers that check them.
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.with_identity(cert, key)?;
        }
        Ok(Credentials { token: Token::new(self.token.clone())?, tls })
    }

    /// The same identity for an HTTPS server, if a certificate was given.
    pub fn https(&self) -> Result<Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>, FlagError> {
        Ok(crate::tls::https_config(self.tls_cert.as_deref(), self.tls_key.as_deref())?)
    }

    /// The identity to serve TLS with, if a certificate was given.
    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>, FlagError> {
        Ok(server_config(self.tls_cert.as_deref(), self.tls_key.as_deref())?)
    }
}
