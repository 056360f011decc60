//! Copying to and running on ssh hosts: the worker binary with llama.cpp's libraries and CPU modules
//! beside it, the MLX library and the model are copied
//! only when the host lacks them or holds other bytes (compared by SHA-256). A copy goes to a `.partial`
//! name, is checked, and only then renamed into place, so an interrupted copy is never used: the next
//! run finds the old bytes (or none) and copies again. Hosts-file fields reach ssh as separate arguments
//! after `--`, and every word of a remote command line is quoted for the remote shell.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::process::Command;

use crate::local_pool::shell_quote;

/// One ssh host: its target (`user@host`) and the ssh client configuration to use, if any.
#[derive(Debug, Clone)]
pub struct SshHost {
    pub target: String,
    pub config: Option<PathBuf>,
}

impl SshHost {
    /// Options for ssh and scp: no prompts, the given configuration.
    fn options(&self) -> Vec<String> {
        let mut options = vec!["-o".to_string(), "BatchMode=yes".to_string()];
        if let Some(config) = &self.config {
            options.extend(["-F".to_string(), config.display().to_string()]);
        }
        options
    }

    /// ssh's arguments up to the remote command; `tty` asks for a terminal, so that closing the
    /// connection stops the remote command.
    pub fn ssh_args(&self, tty: bool) -> Vec<String> {
        let mut args = Vec::new();
        if tty {
            args.push("-tt".to_string());
        }
        args.extend(self.options());
        args.extend(["--".to_string(), self.target.clone()]);
        args
    }

    /// Runs `words` on the host, each quoted for its shell; returns what it printed.
    async fn run(&self, words: &[&str]) -> anyhow::Result<String> {
        let remote = words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ");
        run("ssh", &[self.ssh_args(false), vec![remote]].concat()).await
    }

    /// The SHA-256 the host computes for `path`, or None when it has no such file.
    async fn sha256(&self, path: &str) -> anyhow::Result<Option<String>> {
        let out = self.run(&["sh", "-c", "sha256sum -- \"$1\" 2>/dev/null || true", "sha256", path]).await?;
        Ok(out.split_whitespace().next().map(str::to_string))
    }

    /// Copies `local` (a file, or a directory with `recursive`) to `remote` on the host.
    async fn copy(&self, local: &Path, remote: &str, recursive: bool) -> anyhow::Result<()> {
        let mut args = vec!["-q".to_string()];
        if recursive {
            args.push("-r".to_string());
        }
        args.extend(self.options());
        args.extend(["--".to_string(), local.display().to_string(), format!("{}:{remote}", self.target)]);
        run("scp", &args).await.map(drop)
    }
}

/// Where a host's copies live (under the remote user's ~/.modelpool), and what this run copied there.
pub struct Remote {
    pub worker: String,
    pub model: String,
    pub library_dir: String,
    /// The files copied this time ("worker", "model", "llama.cpp libraries", "mlx library"); empty when
    /// the host had them all.
    pub copied: Vec<String>,
}

async fn run(program: &str, args: &[String]) -> anyhow::Result<String> {
    let output = Command::new(program).args(args).output().await.with_context(|| format!("running {program}"))?;
    anyhow::ensure!(output.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The MLX library directory the worker binary was linked against (from the mlx-cpu wheel), whose
/// layout libmlx needs kept: `mlx/lib/libmlx.so` next to `mlx_cpu.libs/`.
fn wheel_dir() -> anyhow::Result<PathBuf> {
    let dir = model_input::model_cache::cache_dir()?.join("mlx-cpu-0.32.2");
    anyhow::ensure!(dir.join("mlx/lib/libmlx.so").is_file(), "no MLX library under {}; build the worker here first", dir.display());
    Ok(dir)
}

/// SHA-256 of a local file, on a blocking thread (a model is read whole).
async fn local_sha256(path: &Path) -> anyhow::Result<String> {
    let path = path.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || model_input::model_cache::sha256_file(&path)).await??)
}

/// What every ssh host gets, with the checksums its copies are compared against: computed once per
/// run, not once per host (the binary and the model are read whole).
pub struct Payload {
    worker: (PathBuf, String),
    model: (PathBuf, String),
    /// The mlx-cpu wheel's directory, and the checksum of its libmlx.so.
    library: (PathBuf, String),
    /// llama.cpp's shared libraries and CPU modules, which go beside the worker binary
    /// (`worker --list-runtime-files`), each with its checksum.
    runtime: Vec<(PathBuf, String)>,
}

impl Payload {
    pub async fn hash(worker: &Path, model: &Path) -> anyhow::Result<Self> {
        let wheel = wheel_dir()?;
        let library_sha = local_sha256(&wheel.join("mlx/lib/libmlx.so")).await?;
        let listed = run(&worker.display().to_string(), &["--list-runtime-files".to_string()]).await?;
        let mut runtime = Vec::new();
        for file in listed.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let file = PathBuf::from(file);
            let sha = local_sha256(&file).await?;
            runtime.push((file, sha));
        }
        Ok(Self {
            worker: (worker.to_path_buf(), local_sha256(worker).await?),
            model: (model.to_path_buf(), local_sha256(model).await?),
            library: (wheel, library_sha),
            runtime,
        })
    }
}

/// Makes sure `host` has the payload's worker binary, MLX library and model, copying what is missing
/// or differs.
pub async fn provision(host: &SshHost, payload: &Payload) -> anyhow::Result<Remote> {
    let target = &host.target;
    let home = host.run(&["sh", "-c", "mkdir -p ~/.modelpool/bin && echo ~"]).await?.trim().to_string();
    // Paths built on it go into remote command lines (quoted) and scp's remote paths: keep them plain.
    anyhow::ensure!(
        home.starts_with('/') && home.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)),
        "{target}: home directory {home:?} has characters this script does not pass to scp"
    );
    let mut remote = Remote {
        worker: format!("{home}/.modelpool/bin/worker"),
        model: format!("{home}/.modelpool/model.gguf"),
        library_dir: format!("{home}/.modelpool/mlx/mlx/lib"),
        copied: Vec::new(),
    };
    // The libraries and modules keep their file names beside the binary, where it looks for them.
    let runtime = payload.runtime.iter().map(|(local, sha)| {
        let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        (name.clone(), (local.clone(), sha.clone()), format!("{home}/.modelpool/bin/{name}"))
    });
    let files: Vec<(String, (PathBuf, String), String)> = [
        ("worker".to_string(), payload.worker.clone(), remote.worker.clone()),
        ("model".to_string(), payload.model.clone(), remote.model.clone()),
    ]
    .into_iter()
    .chain(runtime)
    .collect();
    for (name, (local, sha), remote_path) in &files {
        let (local, remote_path) = (local.as_path(), remote_path.as_str());
        if host.sha256(remote_path).await?.as_deref() == Some(sha.as_str()) {
            continue;
        }
        eprintln!(
            "== {target}: copying the {name}, {} ({} MiB)",
            local.display(),
            std::fs::metadata(local).map(|m| m.len() >> 20).unwrap_or(0)
        );
        let partial = format!("{remote_path}.partial");
        host.copy(local, &partial, false).await?;
        anyhow::ensure!(host.sha256(&partial).await?.as_deref() == Some(sha.as_str()), "{target}: {partial} differs after copying");
        host.run(&["mv", "-f", "--", &partial, remote_path]).await?;
        // The report names the libraries and modules as one item.
        let item = if name == "worker" || name == "model" { name.as_str() } else { "llama.cpp libraries" };
        if !remote.copied.iter().any(|c| c == item) {
            remote.copied.push(item.to_string());
        }
    }
    let (wheel, library_sha) = &payload.library;
    if host.sha256(&format!("{}/libmlx.so", remote.library_dir)).await?.as_deref() != Some(library_sha.as_str()) {
        eprintln!("== {target}: copying the MLX library");
        let (partial, dir) = (format!("{home}/.modelpool/mlx.partial"), format!("{home}/.modelpool/mlx"));
        host.run(&["rm", "-rf", "--", &partial]).await?;
        host.copy(wheel, &partial, true).await?;
        anyhow::ensure!(
            host.sha256(&format!("{partial}/mlx/lib/libmlx.so")).await?.as_deref() == Some(library_sha.as_str()),
            "{target}: the MLX library differs after copying"
        );
        host.run(&["sh", "-c", "rm -rf -- \"$2\" && mv -- \"$1\" \"$2\"", "swap", &partial, &dir]).await?;
        remote.copied.push("mlx library".to_string());
    }
    Ok(remote)
}
