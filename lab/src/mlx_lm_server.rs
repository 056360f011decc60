//! The MLX peer: Python mlx-lm's own OpenAI-compatible server, as its users run it
//! (`python -m mlx_lm.server --model DIR`, its defaults: continuous batching, its LRU prompt cache),
//! and `server-bench --engine mlx`, which measures the pool's MLX workers against it on the same
//! folder, the same prompts and the same machine.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use bench_client::openai_client::OpenAiClient;
use bench_client::runner::Target;
use coordinator::SchedulerConfig;
use coordinator::worker_client::ProgressTimeouts;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::peer_server::PeerServer;
use crate::server_bench::{
    PoolSetup, RoundLoad, ServerBenchArgs, compare_workloads, one_host_report, pool_shapes, pool_worker_args, sweep_pool_shapes,
};

/// The model name mlx_lm.server gives the folder it was started with; any other name makes it try to
/// load that model (from the Hugging Face hub). The pool answers to any name.
pub const MLX_LM_MODEL: &str = "default_model";

/// mlx_lm.server on a free port of 127.0.0.1.
impl PeerServer {
    /// Starts `python -m mlx_lm.server` on `model` (an mlx-lm folder) and waits for its `/health`.
    /// Offline: the hub is never asked (HF_HUB_OFFLINE).
    pub async fn mlx_lm_server(python: &Path, model: &Path, extra: &[String]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(python)
            .args(["-m", "mlx_lm.server", "--model"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .env("HF_HUB_OFFLINE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(crate::log_file::worker_stderr())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} -m mlx_lm.server", python.display()))?;
        // Its stderr is in the run's log.
        Self::started(child, format!("http://127.0.0.1:{port}"), "mlx_lm.server").await
    }
}

/// The version of mlx-lm `python` has.
pub fn mlx_lm_version(python: &Path) -> String {
    std::process::Command::new(python)
        .args(["-c", "import importlib.metadata as m; print(m.version('mlx-lm'))"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The pool's coordinator for MLX on a CPU: where the worker has no OpenBLAS, every product takes MLX's
/// quantized kernel and one engine step (a slot's prompt tokens beside the others' tokens) can take
/// longer than the default 30 s without a new token, which would fail a prompt that is only slow;
/// mlx_lm.server has no such timeout, so the pool gets 10 minutes between tokens here.
fn slow_engine_scheduler() -> SchedulerConfig {
    let progress = ProgressTimeouts { first_token: Duration::from_secs(3600), between_tokens: Duration::from_secs(600) };
    SchedulerConfig { progress, ..SchedulerConfig::default() }
}

/// An OpenAI client for `url` that names the model as mlx_lm.server knows it.
fn client(url: &str) -> Target {
    Target::OpenAi(OpenAiClient::new(url, None, Some(MLX_LM_MODEL.into())).expect("an http:// URL"))
}

/// `server-bench --engine mlx`: the pool's MLX workers against mlx_lm.server. The pool's shape is
/// swept as against llama-server; mlx_lm.server runs with its defaults. Fresh servers per workload,
/// rounds in alternating order, each side's peak memory beside its throughput.
pub async fn run_mlx_server_bench(args: ServerBenchArgs) -> anyhow::Result<Value> {
    let python: PathBuf = args
        .mlx_python
        .clone()
        .context("--engine mlx needs --mlx-python, the Python with mlx-lm (scripts/server-bench.sh --engine mlx passes it)")?;
    let folder = args.files.model.clone().context("--engine mlx needs --model DIR, an mlx-lm model folder")?;
    anyhow::ensure!(folder.is_dir(), "--model {}: --engine mlx compares on an mlx-lm folder", folder.display());
    anyhow::ensure!(args.rounds >= 1 && args.prompts >= 1 && args.clients >= 1, "--rounds, --prompts and --clients must be at least 1");
    let shapes = pool_shapes(&args)?;
    let (worker_bin, model) = args.files.resolve().await?;
    let peer_args: Vec<String> = args.mlx_lm_server_args.iter().flat_map(|a| a.split_whitespace().map(String::from)).collect();
    let mut worker_args = vec!["--engine".to_string(), "mlx".to_string()];
    worker_args.extend(pool_worker_args(&args));
    let version = mlx_lm_version(&python);

    let sweep_prompts = RoundLoad::Prompts(bench_client::fresh::chats(args.seed.wrapping_add(1), 0, args.prompts.min(16), args.max_tokens));
    let setup = PoolSetup { worker_bin, model: model.clone(), threads: args.threads, worker_args, scheduler: slow_engine_scheduler() };
    let best_shape = sweep_pool_shapes(&shapes, &setup, &args, &sweep_prompts, client).await?;
    let shape = best_shape.0;
    eprintln!("== mlx_lm.server (mlx-lm {version}, its defaults) against the pool {}x{} of MLX workers", shape.0, shape.1);

    let start_peer = || PeerServer::mlx_lm_server(&python, &model, &peer_args);
    let (workloads, kernels) = compare_workloads(&args, &setup, shape, "mlx_lm.server", start_peer, client).await?;
    let peer = json!({
        "name": "mlx_lm.server",
        "describe": format!("mlx_lm.server (mlx-lm {version}, its defaults)"),
        "version": version,
        "extra_args": args.mlx_lm_server_args.clone().unwrap_or_default(),
    });
    one_host_report(&args, &model, Some("mlx"), peer, best_shape, &kernels, workloads)
}
