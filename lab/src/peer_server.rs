//! The servers the lab compares the pool with (llama-server here, mlx_lm.server in `mlx_lm_server`):
//! a process started on a port, ready once it answers `GET /health`, killed when dropped.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::STARTUP_TIMEOUT;

/// llama-server's slot count when `-np` is not given (`n_parallel` auto).
pub(crate) const AUTO_SLOTS: u32 = 4;

/// How a llama-server run was configured, as the report names it.
pub(crate) fn np_name(np: u32) -> String {
    if np == 0 { format!("auto ({AUTO_SLOTS}, unified KV)") } else { np.to_string() }
}

/// A peer server a comparison runs against (llama-server, mlx_lm.server): its process, killed when
/// dropped, and where it answers.
pub struct PeerServer {
    child: Child,
    pub url: String,
}

impl PeerServer {
    /// A peer server just spawned as `child` (`name` in messages), once it answers `GET /health` at `url`
    /// with 200, within [`STARTUP_TIMEOUT`]; fails at once if it exits meanwhile.
    pub(crate) async fn started(mut child: Child, url: String, name: &str) -> anyhow::Result<Self> {
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        let address = url.trim_start_matches("http://").to_string();
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{name} exited while starting: {status}");
            }
            if let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let request = format!("GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
                let mut response = Vec::new();
                // The status line: HTTP/1.1 (llama-server) or HTTP/1.0 (Python's http.server).
                if stream.write_all(request.as_bytes()).await.is_ok()
                    && stream.read_to_end(&mut response).await.is_ok()
                    && response.starts_with(b"HTTP/1.")
                    && response.get(8..13) == Some(b" 200 ".as_slice())
                {
                    return Ok(Self { child, url });
                }
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "{name} did not become ready within {STARTUP_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// What a llama-server runs: its binary, the model and its flags.
pub(crate) struct LlamaServerSpec<'a> {
    pub binary: &'a Path,
    pub model: &'a Path,
    /// `-np`; 0 leaves the slot count to llama-server (4 slots, one unified KV buffer), with the context
    /// of 4 slots.
    pub np: u32,
    /// `-t` and `-tb`.
    pub threads: u32,
    pub ctx_per_slot: u32,
    /// Given as they are, after the flags above.
    pub extra: &'a [String],
}

/// llama-server on a free port of 127.0.0.1, or wherever [`PeerServer::llama_server_at`] puts it.
impl PeerServer {
    pub(crate) async fn llama_server(spec: &LlamaServerSpec<'_>) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::llama_server_at(&[], "127.0.0.1", port, spec).await
    }

    /// Started through `launcher` (e.g. `ip netns exec NS taskset -c 0`), listening on `host:port`.
    pub(crate) async fn llama_server_at(launcher: &[String], host: &str, port: u16, spec: &LlamaServerSpec<'_>) -> anyhow::Result<Self> {
        let LlamaServerSpec { binary, model, np, threads, ctx_per_slot, extra } = *spec;
        let mut command = match launcher.split_first() {
            Some((program, words)) => {
                let mut command = Command::new(program);
                command.args(words).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .args(["-m", &model.display().to_string(), "--host", host, "--port", &port.to_string()])
            .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
            .args(["-c", &(ctx_per_slot * np.max(AUTO_SLOTS)).to_string()]);
        if np > 0 {
            command.args(["-np", &np.to_string()]);
        }
        command.args(extra);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        // A build with kernels this CPU lacks dies at its warm-up (SIGILL): said at once.
        Self::started(child, format!("http://{host}:{port}"), "llama-server").await
    }
}
