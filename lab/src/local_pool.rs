//! Worker processes started on this machine: spawned with the right flags, waited for until they have
//! registered, and stopped (SIGTERM, then SIGKILL) at the end, on error and on Ctrl-C. They are real
//! processes, so tests can kill or freeze one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use modelpool::auth::AuthChannel;
use modelpool::proto::{ListWorkersRequest, WorkerState, coordinator_client::CoordinatorClient};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use coordinator::Config;

/// A coordinator served by this process on 127.0.0.1:0, for run-bench, engine-bench and tests.
pub struct LocalCoordinator {
    pub url: String,
    /// The HTTP API (OpenAI-compatible, /metrics), e.g. http://127.0.0.1:PORT.
    pub http_url: String,
    pub client: CoordinatorClient<AuthChannel>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl LocalCoordinator {
    pub async fn start(config: impl Into<Config>) -> std::io::Result<Self> {
        Self::start_on(config.into(), "127.0.0.1:0").await
    }

    /// On a given address: a coordinator restarted on the address it had is found again by its workers.
    pub async fn start_on(config: Config, address: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let http_scheme = if config.https.is_some() { "https" } else { "http" };
        let http_url = format!("{http_scheme}://{}", http.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let scheme = if config.server_tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr()?);
        let credentials = config.credentials.clone();
        let task = tokio::spawn(coordinator::serve(config, listener, Some(http), async {
            let _ = stopped.await;
        }));
        let client = bench_client::connect(&url, &credentials).map_err(std::io::Error::other)?;
        Ok(Self { url, http_url, client, stop, task })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// How to start each worker of a local pool.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub binary: PathBuf,
    pub model: PathBuf,
    pub coordinator: String,
    pub threads: u32,
    pub slots: u32,
    /// More flags, passed as they are.
    pub extra_args: Vec<String>,
}

/// The worker's command line for `spec`: the binary, then its flags.
fn worker_command(spec: &WorkerSpec) -> Vec<std::ffi::OsString> {
    let mut words: Vec<std::ffi::OsString> =
        vec![spec.binary.clone().into(), "--port".into(), "0".into(), "--model".into(), spec.model.clone().into()];
    for (flag, value) in
        [("--coordinator", spec.coordinator.clone()), ("--threads", spec.threads.to_string()), ("--slots", spec.slots.to_string())]
    {
        words.push(flag.into());
        words.push(value.into());
    }
    words.extend(spec.extra_args.iter().map(Into::into));
    words
}

/// One word for a POSIX shell: single-quoted, with any single quote closed, escaped and reopened.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Finds the worker binary: the explicit path, else `worker` next to the running executable (or one
/// directory up, where test executables in `deps/` find it).
pub fn find_worker_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if path.is_file() { Ok(path.to_path_buf()) } else { Err(format!("worker binary {} does not exist", path.display())) };
    }
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let name = if cfg!(windows) { "worker.exe" } else { "worker" };
    exe.ancestors().skip(1).take(2).map(|dir| dir.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        format!("no worker binary next to {}; build it with `cargo build --release -p worker` or pass --worker-bin", exe.display())
    })
}

/// How a worker process gets the pool token, if it is handed one apart from its flags.
#[derive(Clone, Copy)]
enum Handover<'a> {
    None,
    /// `MODELPOOL_TOKEN` in its environment.
    Environment(&'a str),
    /// One line on its standard input (a remote shell reads it, see [`WorkerProcess::spawn_over_ssh`]).
    StdinLine(&'a str),
}

pub struct WorkerProcess {
    child: Child,
    pub pid: u32,
    /// The write end of its standard input, kept open while it runs when the token went that way
    /// ([`Self::spawn_over_ssh`]): closing it would end the remote side's input.
    _stdin: Option<std::fs::File>,
}

impl WorkerProcess {
    pub fn spawn(spec: &WorkerSpec) -> std::io::Result<Self> {
        Self::spawn_with(&[], spec)
    }

    /// Through a launcher: `launcher` is a command prefix that runs the worker elsewhere (for example
    /// `ip netns exec NS` or `ssh -tt HOST`); empty runs it here.
    pub fn spawn_with(launcher: &[String], spec: &WorkerSpec) -> std::io::Result<Self> {
        Self::start(Self::launched(launcher, spec), Handover::None)
    }

    /// As [`Self::spawn_with`], with the pool token in the worker's environment (`MODELPOOL_TOKEN`) rather
    /// than on its command line: a process's environment is readable by its owner only, its command
    /// line by every user of the machine (`ps`).
    pub fn spawn_with_token(launcher: &[String], spec: &WorkerSpec, token: &str) -> std::io::Result<Self> {
        Self::start(Self::launched(launcher, spec), Handover::Environment(token))
    }

    fn launched(launcher: &[String], spec: &WorkerSpec) -> Command {
        let worker = worker_command(spec);
        match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).args(&worker);
                command
            }
            None => {
                let mut command = Command::new(&worker[0]);
                command.args(&worker[1..]);
                command
            }
        }
    }

    /// On another machine through `ssh` (the ssh arguments, ending with the target): the remote side
    /// gets one command line, `remote_prefix` and the worker's, every word quoted for its shell, so no
    /// path, address or token can be read as shell syntax there. `token` goes over the connection's
    /// standard input, read by the remote shell into the worker's environment: on either command line
    /// (ssh's here, the shell's there) every user of that machine could read it.
    pub fn spawn_over_ssh(ssh: &[String], remote_prefix: &[String], spec: &WorkerSpec, token: Option<&str>) -> std::io::Result<Self> {
        let words: Vec<String> =
            remote_prefix.iter().cloned().chain(worker_command(spec).iter().map(|w| w.to_string_lossy().into_owned())).collect();
        let mut remote = words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ");
        if token.is_some() {
            remote = format!("IFS= read -r MODELPOOL_TOKEN && export MODELPOOL_TOKEN && {remote}");
        }
        let mut command = Command::new("ssh");
        command.args(ssh).arg(remote);
        Self::start(command, token.map_or(Handover::None, Handover::StdinLine))
    }

    /// Starts `command`, handing the token over as `token` says.
    fn start(mut command: Command, token: Handover<'_>) -> std::io::Result<Self> {
        command
            // The pool's secrets come from the spec (extra_args) or the handover, never from this
            // process's environment: an exported MODELPOOL_TOKEN would otherwise close the workers to a
            // coordinator started without it, and every prompt of a bench would be refused.
            .env_remove("MODELPOOL_TOKEN")
            .env_remove("MODELPOOL_TLS_CERT")
            .env_remove("MODELPOOL_TLS_KEY")
            .env_remove("MODELPOOL_TLS_CA")
            .stdin(if matches!(token, Handover::StdinLine(_)) { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::null())
            .stderr(crate::log_file::worker_stderr())
            .kill_on_drop(true);
        if let Handover::Environment(token) = token {
            command.env("MODELPOOL_TOKEN", token);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
        unsafe {
            // If this process dies without cleaning up, the kernel kills the workers too.
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let pid = child.id().unwrap_or(0);
        let stdin = match (token, child.stdin.take()) {
            (Handover::StdinLine(line), Some(stdin)) => {
                // A line of a few dozen bytes fits the pipe's buffer: this write does not block.
                let mut stdin = std::fs::File::from(stdin.into_owned_fd()?);
                std::io::Write::write_all(&mut stdin, format!("{line}\n").as_bytes())?;
                Some(stdin)
            }
            _ => None,
        };
        Ok(Self { child, pid, _stdin: stdin })
    }

    /// Whether it has exited (and how), without waiting.
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(self.pid as i32, signal);
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns the exit status if known.
    pub async fn stop(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                self.child.wait().await.ok()
            }
        }
    }
}

/// Several workers started together.
#[derive(Default)]
pub struct LocalPool {
    pub workers: Vec<WorkerProcess>,
    /// The kernels the serving workers said they compute with (distinct; see `worker --cpu-variant`).
    pub cpu_kernels: Vec<String>,
}

impl LocalPool {
    pub fn spawn(spec: &WorkerSpec, count: usize) -> std::io::Result<Self> {
        let workers = (0..count).map(|_| WorkerProcess::spawn(spec)).collect::<std::io::Result<_>>()?;
        Ok(Self { workers, cpu_kernels: Vec::new() })
    }

    /// Spawns `count` workers and waits until all serve through the coordinator; stops them on failure.
    pub async fn start(
        spec: &WorkerSpec,
        count: usize,
        client: &CoordinatorClient<AuthChannel>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let mut pool = Self::spawn(spec, count).map_err(|e| format!("starting {}: {e}", spec.binary.display()))?;
        match wait_for_workers(&mut client.clone(), count, timeout, &mut pool).await {
            Ok(kernels) => pool.cpu_kernels = kernels,
            Err(e) => {
                pool.stop(Duration::from_secs(5)).await;
                return Err(e);
            }
        }
        Ok(pool)
    }

    pub async fn stop(self, grace: Duration) {
        futures::future::join_all(self.workers.into_iter().map(|w| w.stop(grace))).await;
    }
}

/// Waits until `count` workers serve through the coordinator, failing early if one of ours exits.
/// Returns the kernels they compute with (distinct, in the order first seen).
pub async fn wait_for_workers(
    client: &mut CoordinatorClient<AuthChannel>,
    count: usize,
    timeout: Duration,
    pool: &mut LocalPool,
) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(list) = client.list_workers(ListWorkersRequest {}).await {
            let serving: Vec<_> = list.into_inner().workers.into_iter().filter(|w| w.state == WorkerState::Serving as i32).collect();
            if serving.len() >= count {
                return Ok(bench_client::report::distinct_kernels(
                    serving.iter().filter_map(|w| w.info.as_ref()).map(|info| info.cpu_kernels.as_str()),
                ));
            }
        }
        for worker in &mut pool.workers {
            if let Ok(Some(status)) = worker.child.try_wait() {
                return Err(format!("worker pid {} exited before registering ({status}); see its log above", worker.pid));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{count} workers did not register within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
