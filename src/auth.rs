//! The pool's secrets. The token: when one is set, every call to a worker and the coordinator's
//! membership calls (Register, Heartbeat, Deregister) must carry it as `authorization: Bearer <token>`;
//! so must the coordinator's client calls unless applications were given API keys ([`ApiKeys`], see the
//! coordinator's `access`). Servers compare in constant time. Health checks stay open so that
//! supervisors can probe liveness.

use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::PoolError;

/// Shortest secret accepted: anything shorter is guessable.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The shared secret, or none (an open pool, fine on 127.0.0.1).
#[derive(Clone, Default)]
pub struct Token(Option<Arc<str>>);

impl std::fmt::Debug for Token {
    // Never print the secret itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Token(set)" } else { "Token(none)" })
    }
}

impl Token {
    pub fn none() -> Self {
        Self(None)
    }

    /// Checks a secret given on the command line or in the environment: at least 16 bytes of visible
    /// ASCII, as HTTP/2 metadata carries it.
    pub fn new(secret: Option<String>) -> Result<Self, PoolError> {
        let Some(secret) = secret else { return Ok(Self(None)) };
        if secret.len() < MIN_TOKEN_BYTES {
            return Err(PoolError::invalid("token", format!("{} bytes; use at least {MIN_TOKEN_BYTES}", secret.len())));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(PoolError::invalid("token", "use visible ASCII characters only (no spaces)"));
        }
        Ok(Self(Some(secret.into())))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Whether `metadata` carries this token (always true when none is set).
    pub fn admits(&self, metadata: &MetadataMap) -> bool {
        self.admits_authorization(metadata.get("authorization").map(|v| v.as_bytes()))
    }

    /// Whether an `authorization` value (gRPC metadata or an HTTP header) is `Bearer <this token>` (the
    /// scheme's case is free, as HTTP's schemes are: `bearer` works too).
    pub fn admits_authorization(&self, value: Option<&[u8]>) -> bool {
        let Some(expected) = &self.0 else { return true };
        let given = value.and_then(bearer_credential);
        // Compared even when absent, against an empty value, so that timing says nothing either way.
        constant_time_eq(given.unwrap_or(b""), expected.as_bytes())
    }

    /// Server side: refuses calls without the token.
    pub fn require(&self) -> RequireToken {
        RequireToken(self.clone())
    }

    /// Client side: adds the token to every call.
    pub fn attach(&self) -> AttachToken {
        AttachToken(self.0.as_ref().map(|t| format!("Bearer {t}").parse().expect("checked visible ASCII")))
    }
}

/// A fresh random secret (128 bits from the kernel, as hex): a pool token made for one run, or the lease
/// a worker's registration is held by.
pub fn random_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The applications' API keys (`--api-keys-file`): one per line, blank lines and `#` comments skipped,
/// each held to the token's rules. Apart from the pool token, so that a key opens the client API only
/// and never lets its holder join the pool as a worker.
#[derive(Clone)]
pub struct ApiKeys(Arc<Vec<Token>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl ApiKeys {
    pub fn load(path: &std::path::Path) -> Result<Self, PoolError> {
        let field = "api-keys-file";
        let text = std::fs::read_to_string(path).map_err(|e| PoolError::invalid(field, format!("reading {}: {e}", path.display())))?;
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = Token::new(Some(line.to_string())).map_err(|e| {
                PoolError::invalid(
                    field,
                    format!("{} line {}: {}", path.display(), number + 1, e.to_string().trim_start_matches("invalid token: ")),
                )
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(PoolError::invalid(field, format!("{}: no keys in the file", path.display())));
        }
        Ok(Self(Arc::new(keys)))
    }

    /// Whether an `authorization` value carries one of the keys. Every key is compared, so that the
    /// time taken says nothing about which one matched.
    pub fn admit_authorization(&self, value: Option<&[u8]>) -> bool {
        self.0.iter().fold(false, |any, key| key.admits_authorization(value) | any)
    }
}

/// Equal length and equal bytes, in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, &expected) in b.iter().enumerate() {
        let given = a.get(i).copied().unwrap_or(0);
        difference |= usize::from(given ^ expected);
    }
    difference == 0
}

#[derive(Clone, Debug)]
pub struct RequireToken(Token);

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.0.admits(request.metadata()) {
            Ok(request)
        } else {
            Err(PoolError::Unauthenticated("missing or wrong pool token: send `authorization: Bearer <token>` (--token)".into())
                .to_status())
        }
    }
}

#[derive(Clone, Debug)]
pub struct AttachToken(Option<AsciiMetadataValue>);

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the pool's token.
pub type AuthChannel = InterceptedService<Channel, AttachToken>;

/// What a client presents to the pool's members and needs to reach them: the token, and the CA for
/// `https://` addresses.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token: Token,
    pub tls: crate::tls::ClientTls,
}

impl Credentials {
    /// A lazily connecting channel to `url` whose calls carry the token.
    pub fn endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint, PoolError> {
        self.tls.endpoint(url)
    }

    pub fn attach(&self) -> AttachToken {
        self.token.attach()
    }
}

/// The credential of an `authorization` value with the `Bearer` scheme, whatever the scheme's case
/// (RFC 9110: schemes are case-insensitive).
pub fn bearer_credential(value: &[u8]) -> Option<&[u8]> {
    let (scheme, credential) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert("authorization", value.parse().unwrap());
        map
    }

    #[test]
    fn only_the_exact_token_is_admitted() {
        let token = Token::new(Some("0123456789abcdef-secret".into())).unwrap();
        assert!(token.admits(&metadata("Bearer 0123456789abcdef-secret")));
        assert!(!token.admits(&metadata("Bearer 0123456789abcdef-secreT")));
        assert!(!token.admits(&metadata("Bearer 0123456789abcdef-secret2")));
        assert!(!token.admits(&metadata("0123456789abcdef-secret")), "the Bearer scheme is required");
        assert!(token.admits(&metadata("bearer 0123456789abcdef-secret")), "the scheme's case is free (RFC 9110)");
        assert!(token.admits(&metadata("BEARER 0123456789abcdef-secret")));
        assert!(!token.admits(&metadata("Bearer  0123456789abcdef-secret")), "the credential is taken as sent");
        assert!(!token.admits(&metadata("Basic 0123456789abcdef-secret")));
        assert!(!token.admits(&MetadataMap::new()));
        assert!(Token::none().admits(&MetadataMap::new()), "an open pool admits everyone");
    }

    #[test]
    fn weak_or_unprintable_secrets_are_refused_and_never_printed() {
        assert!(Token::new(Some("short".into())).unwrap_err().to_string().contains("token"));
        assert!(Token::new(Some("has a space in it, long enough".into())).is_err());
        let token = Token::new(Some("0123456789abcdef-secret".into())).unwrap();
        assert!(!format!("{token:?}").contains("secret"));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }
}
