//! Who may call what on the coordinator. Two doors: workers join (Register, Heartbeat, Deregister) with
//! the pool token, and, with `--tls-worker-ca`, a client certificate that CA signed; applications
//! (Predict, PredictBatch, ListWorkers, the HTTP API) call with an API key from `--api-keys-file`. Without
//! a keys file the pool token opens both doors: one secret, for a pool with one operator. A key never
//! opens the workers' door, so an application cannot join the pool and draw its prompts.

use modelpool::PoolError;
use modelpool::auth::{ApiKeys, Token};
use tonic::Request;

#[derive(Clone, Debug, Default)]
pub struct Access {
    pool_token: Token,
    api_keys: Option<ApiKeys>,
    /// Membership calls need a client certificate signed by the workers' CA (checked in the handshake).
    worker_certificates: bool,
}

impl Access {
    pub fn new(pool_token: Token, api_keys: Option<ApiKeys>, worker_certificates: bool) -> Self {
        Self { pool_token, api_keys, worker_certificates }
    }

    /// A membership call: the pool token, and the certificate when required.
    pub fn worker<T>(&self, request: &Request<T>) -> Result<(), PoolError> {
        if !self.pool_token.admits(request.metadata()) {
            return Err(PoolError::Unauthenticated(
                "missing or wrong pool token: workers join with `authorization: Bearer <token>` (--token); API keys do not open membership calls".into(),
            ));
        }
        if self.worker_certificates && request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(PoolError::Unauthenticated(
                "a worker must present a client certificate signed by the coordinator's --tls-worker-ca".into(),
            ));
        }
        Ok(())
    }

    /// An application's call over gRPC.
    pub fn client<T>(&self, request: &Request<T>) -> Result<(), PoolError> {
        let authorization = request.metadata().get("authorization").map(|v| v.as_bytes());
        if self.admits_client(authorization) { Ok(()) } else { Err(self.client_refusal()) }
    }

    /// Whether an `authorization` value (gRPC metadata or an HTTP header) opens the client API.
    pub fn admits_client(&self, authorization: Option<&[u8]>) -> bool {
        match &self.api_keys {
            Some(keys) => keys.admit_authorization(authorization),
            None => self.pool_token.admits_authorization(authorization),
        }
    }

    pub fn client_refusal(&self) -> PoolError {
        PoolError::Unauthenticated(match self.api_keys {
            Some(_) => "missing or unknown API key: send `authorization: Bearer <key>` with a key from the coordinator's --api-keys-file (the OpenAI client's api_key)".into(),
            None => "missing or wrong pool token: send `authorization: Bearer <token>` (the OpenAI client's api_key)".into(),
        })
    }
}
