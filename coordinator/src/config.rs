//! The daemon's flags (`coordinator serve`) and the validated configuration they become.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use modelpool::auth::Credentials;
use modelpool::security_args::{FlagError, SecurityArgs};
use tokio_rustls::rustls;
use tonic::transport::ServerTlsConfig;

use crate::access::Access;
use crate::http_server::HttpLimits;
use crate::model_names::ModelNames;
use modelpool::auth::ApiKeys;

use crate::routing::Routing;
use crate::scheduler::SchedulerConfig;
use crate::worker_client::ProgressTimeouts;

/// Scheduler settings shared by `serve` and `run-bench`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// How often workers are asked to heartbeat.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_interval_ms: u64,
    /// A worker not heard from for this long is evicted and gets no more prompts.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_timeout_ms: u64,
    /// Prompts that may wait for a worker; beyond that, RESOURCE_EXHAUSTED at once.
    #[arg(long, default_value_t = 1024)]
    pub max_queue: usize,
    /// Bytes of prompt text (and what comes with it) that may wait for a worker, in MiB; beyond that,
    /// RESOURCE_EXHAUSTED (HTTP 429 with Retry-After) at once. Bounds the queue's memory whatever the
    /// prompts' sizes: 1024 prompts of 1 MiB would otherwise be a gigabyte.
    #[arg(long, default_value_t = 64)]
    pub max_queue_mib: u64,
    /// Workers one prompt is tried on before it fails.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Longest a worker may take to its first token (its queue and the prompt's prefill) before the
    /// attempt is retried elsewhere. Bounds progress, not the whole generation.
    #[arg(long, default_value_t = 120)]
    pub first_token_timeout_secs: u64,
    /// Longest a worker may go without generating a token once it has started; then the attempt is
    /// retried elsewhere (unless text already went to a streaming caller).
    #[arg(long, default_value_t = 30)]
    pub token_gap_timeout_secs: u64,
    /// prefix: send a prompt to the worker most likely to hold its prefix in its cache (while it has a
    /// free slot); least-loaded: to the least-loaded worker with a free slot.
    #[arg(long, value_enum, default_value_t = Routing::Prefix)]
    pub routing: Routing,
    /// With prefix routing: how long a prompt may wait for the busy worker holding its prefix while
    /// another worker has a free slot (a miss recomputes the whole prefix). 0: never wait.
    #[arg(long, default_value_t = 3000)]
    pub affinity_wait_ms: u64,
    /// How long admitted prompts wait for a worker when none is live (all restarting, or frozen past
    /// the heartbeat timeout) before they fail with UNAVAILABLE (HTTP 503 with Retry-After). 0 refuses
    /// at once.
    #[arg(long, default_value_t = 10)]
    pub no_worker_wait_secs: u64,
}

/// A flag and why its value was refused.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

fn refuse<T>(flag: &'static str, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError { flag, reason: reason.into() })
}

impl TryFrom<&SchedulerArgs> for SchedulerConfig {
    type Error = ConfigError;

    fn try_from(args: &SchedulerArgs) -> Result<Self, ConfigError> {
        if args.heartbeat_interval_ms < 10 {
            return refuse("heartbeat-interval-ms", "must be at least 10");
        }
        if args.heartbeat_timeout_ms <= args.heartbeat_interval_ms {
            return refuse("heartbeat-timeout-ms", "must be longer than --heartbeat-interval-ms");
        }
        if args.max_queue < 1 {
            return refuse("max-queue", "must be at least 1");
        }
        // Room for the largest prompt a request may carry, so that every valid prompt can queue.
        if !(2..=1 << 20).contains(&args.max_queue_mib) {
            return refuse("max-queue-mib", "must be 2 to 1048576 (one prompt may be 1 MiB of text)");
        }
        if args.max_attempts < 1 {
            return refuse("max-attempts", "must be at least 1");
        }
        if args.first_token_timeout_secs < 1 {
            return refuse("first-token-timeout-secs", "must be at least 1");
        }
        // The worker reports progress at least once a second (see worker_client::PROGRESS_INTERVAL).
        if args.token_gap_timeout_secs < 2 {
            return refuse("token-gap-timeout-secs", "must be at least 2 (workers report progress once a second)");
        }
        Ok(SchedulerConfig {
            heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(args.heartbeat_timeout_ms),
            max_queue: args.max_queue,
            max_queue_bytes: args.max_queue_mib << 20,
            max_attempts: args.max_attempts,
            progress: ProgressTimeouts {
                first_token: Duration::from_secs(args.first_token_timeout_secs),
                between_tokens: Duration::from_secs(args.token_gap_timeout_secs),
            },
            routing: args.routing,
            affinity_wait: Duration::from_millis(args.affinity_wait_ms),
            no_worker_wait: Duration::from_secs(args.no_worker_wait_secs),
        })
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "MODELPOOL_COORDINATOR_PORT", default_value_t = 50050)]
    pub port: u16,
    /// Address to bind. Loopback unless you mean to serve other hosts.
    #[arg(long, env = "MODELPOOL_COORDINATOR_BIND", default_value = "127.0.0.1")]
    pub bind: String,
    /// Port of the HTTP API (OpenAI-compatible /v1/..., /metrics, /health, /ready), on the same
    /// address (0 picks a free one).
    #[arg(long, env = "MODELPOOL_HTTP_PORT", default_value_t = 8000)]
    pub http_port: u16,
    /// Serve gRPC only.
    #[arg(long)]
    pub no_http: bool,
    /// Longest an HTTP API request may take before it fails with 504.
    #[arg(long, default_value_t = 300)]
    pub http_timeout_secs: u64,
    /// Longest an HTTP client may take to send a request's headers, and from connecting to its first
    /// request's headers (TLS handshake included; HTTP/1 and HTTP/2 alike).
    #[arg(long, default_value_t = 10)]
    pub http_header_timeout_secs: u64,
    /// Longest an HTTP client may take to send a request's body once its headers are in (408 after).
    #[arg(long, default_value_t = 30)]
    pub http_body_timeout_secs: u64,
    /// Longest an HTTP connection may stay open with no request in flight after its last one.
    #[arg(long, default_value_t = 60)]
    pub http_idle_timeout_secs: u64,
    /// Open HTTP connections at most. At the limit a new one takes the place of the one idle the
    /// longest; only when every one has a request in flight is it answered 503 and closed.
    #[arg(long, default_value_t = 512)]
    pub http_max_connections: usize,
    /// Open gRPC connections at most (workers' and applications'); past it a new one is closed at once.
    /// Each must send its first bytes within 10 s of connecting, and finish a TLS handshake within 10 s.
    #[arg(long, default_value_t = modelpool::grpc_incoming::COORDINATOR_MAX_CONNECTIONS)]
    pub grpc_max_connections: usize,
    /// Longest the HTTP API waits for a client that accepts no data (a stream it stopped reading);
    /// then the connection is dropped and its prompt cancelled.
    #[arg(long, default_value_t = 30)]
    pub http_write_timeout_secs: u64,
    /// Serve the HTTP API in plaintext on a non-loopback address although a token is set (the token then
    /// crosses the network in the clear). Without it that combination is refused: give --tls-cert and
    /// --tls-key (the API is then HTTPS) or --no-http.
    #[arg(long)]
    pub allow_plaintext_http: bool,
    /// Refuse a prompt whose length plus max_tokens does not fit a slot's context (400 naming the
    /// field), on both doors. Without it a prompt that fits is served and generation stops where the
    /// context ends (finish reason "length"), as llama-server does with DSPy's default max_tokens 4000.
    #[arg(long)]
    pub strict_max_tokens: bool,
    /// Another name for the pool's model in the HTTP API (repeatable): listed by /v1/models before the
    /// model's file or folder name and accepted in requests' `model`.
    #[arg(long = "model-alias", value_name = "NAME")]
    pub model_aliases: Vec<String>,
    /// Refuse (404 model_not_found) an HTTP request whose `model` is none of the model's names (its
    /// file or folder name, with or without extension, its own name, an alias). Without it any name is
    /// served: the pool serves one model.
    #[arg(long)]
    pub strict_model: bool,
    /// Applications' API keys, one per line (`#` comments and blank lines skipped; each at least 16
    /// visible ASCII characters). With it, the client API (Predict, PredictBatch, ListWorkers, the HTTP
    /// API) takes only these keys and the pool token only lets workers join; without it the token opens
    /// both.
    #[arg(long, env = "MODELPOOL_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Mutual TLS for workers: membership calls (Register, Heartbeat, Deregister) must present a client
    /// certificate signed by this CA (PEM); needs --tls-cert. Workers present their own --tls-cert.
    #[arg(long, env = "MODELPOOL_TLS_WORKER_CA")]
    pub tls_worker_ca: Option<PathBuf>,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
}

/// Longest an HTTP API request may take from admission to its last token before it fails with 504.
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The daemon's validated configuration: how it schedules, the credentials it requires from callers and
/// sends to workers, how it serves TLS, and the HTTP API's request limit.
#[derive(Debug, Clone)]
pub struct Config {
    pub scheduler: SchedulerConfig,
    /// The pool's token (required from every caller, sent to workers) and the CA to trust for workers'
    /// https:// addresses.
    pub credentials: Credentials,
    /// Serve gRPC over TLS with this identity.
    pub server_tls: Option<ServerTlsConfig>,
    /// The same identity for the HTTP API (HTTPS).
    pub https: Option<Arc<rustls::ServerConfig>>,
    /// The applications' keys; None: the pool token opens the client API too.
    pub api_keys: Option<ApiKeys>,
    /// Membership calls need a client certificate (the CA is in `server_tls`).
    pub worker_certificates: bool,
    pub http_request_timeout: Duration,
    pub http_limits: HttpLimits,
    /// Open gRPC connections at most.
    pub grpc_max_connections: usize,
    /// How long a new gRPC connection may stay silent (see `modelpool::grpc_incoming`).
    pub grpc_first_bytes_timeout: Duration,
    /// Every admitted prompt is strict about max_tokens (see `SamplingParams::strict_max_tokens`).
    pub strict_max_tokens: bool,
    /// The names the HTTP API lists and accepts for the model.
    pub model_names: ModelNames,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheduler: SchedulerConfig::default(),
            credentials: Credentials::default(),
            server_tls: None,
            https: None,
            api_keys: None,
            worker_certificates: false,
            http_request_timeout: DEFAULT_HTTP_REQUEST_TIMEOUT,
            http_limits: HttpLimits::default(),
            grpc_max_connections: modelpool::grpc_incoming::COORDINATOR_MAX_CONNECTIONS,
            grpc_first_bytes_timeout: modelpool::grpc_incoming::FIRST_BYTES_TIMEOUT,
            strict_max_tokens: false,
            model_names: ModelNames::default(),
        }
    }
}

impl Config {
    /// Who may call what (see `access`).
    pub fn access(&self) -> Access {
        Access::new(self.credentials.token.clone(), self.api_keys.clone(), self.worker_certificates)
    }
}

impl From<SchedulerConfig> for Config {
    fn from(scheduler: SchedulerConfig) -> Self {
        Self { scheduler, ..Self::default() }
    }
}

impl TryFrom<&ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: &ServeArgs) -> Result<Self, ConfigError> {
        let security_error = |e: FlagError| ConfigError { flag: e.flag, reason: e.reason };
        for (flag, value) in [
            ("http-timeout-secs", args.http_timeout_secs),
            ("http-header-timeout-secs", args.http_header_timeout_secs),
            ("http-body-timeout-secs", args.http_body_timeout_secs),
            ("http-idle-timeout-secs", args.http_idle_timeout_secs),
            ("http-write-timeout-secs", args.http_write_timeout_secs),
            ("http-max-connections", args.http_max_connections as u64),
            ("grpc-max-connections", args.grpc_max_connections as u64),
        ] {
            if value < 1 {
                return refuse(flag, "must be at least 1");
            }
        }
        let credentials = args.security.credentials().map_err(security_error)?;
        let https = args.security.https().map_err(security_error)?;
        // Keys close the client API; without a worker secret membership would stay open to anyone who
        // reaches the gRPC port, who could then register an address and be sent the applications' prompts.
        if args.api_keys_file.is_some() && !credentials.token.is_set() && args.tls_worker_ca.is_none() {
            return refuse(
                "api-keys-file",
                "needs a secret for workers too: --token (MODELPOOL_TOKEN) or --tls-worker-ca; without one anyone who \
                 reaches the gRPC port can join as a worker and receive the applications' prompts",
            );
        }
        let secrets = if args.api_keys_file.is_some() { "API keys are" } else { "a token is" };
        if !args.no_http
            && https.is_none()
            && (credentials.token.is_set() || args.api_keys_file.is_some())
            && !is_loopback(&args.bind)
            && !args.allow_plaintext_http
        {
            return refuse(
                "bind",
                format!(
                    "{} is not a loopback address and {secrets} set, but the HTTP API would be plaintext and send \
                     them in the clear: give --tls-cert and --tls-key (the API is then HTTPS), --no-http, or \
                     --allow-plaintext-http",
                    args.bind
                ),
            );
        }
        let mut server_tls = args.security.server_tls().map_err(security_error)?;
        if let Some(ca) = &args.tls_worker_ca {
            let Some(tls) = server_tls else {
                return refuse("tls-worker-ca", "needs --tls-cert and --tls-key (client certificates ride on TLS)");
            };
            server_tls = Some(
                modelpool::tls::with_client_ca(tls, ca, "tls-worker-ca")
                    .map_err(|e| ConfigError { flag: "tls-worker-ca", reason: e.to_string() })?,
            );
        }
        let api_keys = match &args.api_keys_file {
            Some(path) => Some(ApiKeys::load(path).map_err(|e| ConfigError { flag: "api-keys-file", reason: e.to_string() })?),
            None => None,
        };
        Ok(Self {
            scheduler: SchedulerConfig::try_from(&args.scheduler)?,
            credentials,
            server_tls,
            https,
            api_keys,
            worker_certificates: args.tls_worker_ca.is_some(),
            http_request_timeout: Duration::from_secs(args.http_timeout_secs),
            http_limits: HttpLimits {
                header_read_timeout: Duration::from_secs(args.http_header_timeout_secs),
                body_read_timeout: Duration::from_secs(args.http_body_timeout_secs),
                idle_timeout: Duration::from_secs(args.http_idle_timeout_secs),
                max_connections: args.http_max_connections,
                write_timeout: Duration::from_secs(args.http_write_timeout_secs),
            },
            grpc_max_connections: args.grpc_max_connections,
            grpc_first_bytes_timeout: modelpool::grpc_incoming::FIRST_BYTES_TIMEOUT,
            strict_max_tokens: args.strict_max_tokens,
            model_names: ModelNames { aliases: args.model_aliases.clone(), strict: args.strict_model },
        })
    }
}

/// Whether `bind` only reaches this machine.
fn is_loopback(bind: &str) -> bool {
    bind == "localhost" || bind.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
