//! Copying to and running on ssh hosts: the worker binary, the MLX library and the model are copied
//! only when the host lacks them or holds other bytes (compared by SHA-256).

use std::path::Path;

use anyhow::Context;
use tokio::process::Command;

/// Where a host's copies live (under the remote user's ~/.modelpool).
pub struct Remote {
    pub worker: String,
    pub model: String,
    pub library_dir: String,
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program).args(args).output().await.with_context(|| format!("running {program}"))?;
    anyhow::ensure!(output.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The MLX library directory the worker binary was linked against (from the mlx-cpu wheel), whose
/// layout libmlx needs kept: `mlx/lib/libmlx.so` next to `mlx_cpu.libs/`.
fn wheel_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = modelpool::model_cache::cache_dir()?.join("mlx-cpu-0.32.2");
    anyhow::ensure!(dir.join("mlx/lib/libmlx.so").is_file(), "no MLX library under {}; build the worker here first", dir.display());
    Ok(dir)
}

/// Makes sure `target` has this worker binary, the MLX library and the model, copying what is
/// missing or differs (compared by SHA-256).
pub async fn provision(target: &str, worker: &Path, model: &Path) -> anyhow::Result<Remote> {
    let ssh = |command: String| {
        let target = target.to_string();
        async move { run("ssh", &["-o", "BatchMode=yes", &target, &command]).await }
    };
    let home = ssh("mkdir -p ~/.modelpool/bin && echo ~".into()).await?.trim().to_string();
    let remote = Remote {
        worker: format!("{home}/.modelpool/bin/worker"),
        model: format!("{home}/.modelpool/model.gguf"),
        library_dir: format!("{home}/.modelpool/mlx/mlx/lib"),
    };
    for (local, remote_path) in [(worker, &remote.worker), (model, &remote.model)] {
        // Hashing a model reads all of it: on a blocking thread, not the runtime's.
        let path = local.to_path_buf();
        let local_sha = tokio::task::spawn_blocking(move || modelpool::model_cache::sha256_file(&path)).await??;
        let remote_sha = ssh(format!("sha256sum {remote_path} 2>/dev/null || true")).await?;
        if remote_sha.split_whitespace().next() != Some(local_sha.as_str()) {
            eprintln!("== {target}: copying {} ({} MiB)", local.display(), std::fs::metadata(local).map(|m| m.len() >> 20).unwrap_or(0));
            run("scp", &["-q", "-o", "BatchMode=yes", &local.display().to_string(), &format!("{target}:{remote_path}")]).await?;
            let copied = ssh(format!("sha256sum {remote_path}")).await?;
            anyhow::ensure!(copied.split_whitespace().next() == Some(local_sha.as_str()), "{target}: {remote_path} differs after copying");
        }
    }
    if ssh(format!("test -f {}/libmlx.so && echo yes || true", remote.library_dir)).await?.trim() != "yes" {
        let wheel = wheel_dir()?;
        eprintln!("== {target}: copying the MLX library");
        run("scp", &["-q", "-r", "-o", "BatchMode=yes", &wheel.display().to_string(), &format!("{target}:{home}/.modelpool/mlx")]).await?;
    }
    Ok(remote)
}
