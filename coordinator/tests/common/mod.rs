//! A real pool for integration tests: a coordinator served in this process on 127.0.0.1:0 and worker
//! processes started from the built `worker` binary with the default model.

#![allow(dead_code)]

use std::time::Duration;

use coordinator::{Config, SchedulerConfig};
use lab::local_pool::{LocalCoordinator, LocalPool, WorkerSpec, find_worker_binary};
use modelpool::auth::AuthChannel;
use modelpool::proto::coordinator_client::CoordinatorClient;
use modelpool::proto::{self, ListWorkersRequest};

pub struct TestPool {
    pub client: CoordinatorClient<AuthChannel>,
    pub workers: LocalPool,
    pub spec: WorkerSpec,
    coordinator: LocalCoordinator,
}

/// Heartbeats every 200 ms, eviction after 1 s: faults show up quickly.
pub fn fast_scheduler() -> SchedulerConfig {
    SchedulerConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(1),
        ..SchedulerConfig::default()
    }
}

impl TestPool {
    pub async fn start(workers: usize, scheduler: impl Into<Config>, extra_args: &[&str]) -> Self {
        let model = tokio::task::spawn_blocking(model_input::model_cache::ensure_default_model).await.unwrap().expect("default model");
        let coordinator = LocalCoordinator::start(scheduler).await.unwrap();
        let spec = WorkerSpec {
            binary: find_worker_binary(None).expect("worker binary built alongside the tests"),
            model,
            coordinator: coordinator.url.clone(),
            threads: 1,
            slots: 1,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        let pool = LocalPool::start(&spec, workers, &coordinator.client, Duration::from_secs(120)).await.expect("workers register");
        Self { client: coordinator.client.clone(), workers: pool, spec, coordinator }
    }

    pub fn coordinator_url(&self) -> String {
        self.coordinator.url.clone()
    }

    /// The coordinator's HTTP API (OpenAI-compatible, /metrics, /health, /ready).
    pub fn http_url(&self) -> String {
        self.coordinator.http_url.clone()
    }

    pub async fn list(&self) -> Vec<proto::WorkerStatus> {
        self.client.clone().list_workers(ListWorkersRequest {}).await.unwrap().into_inner().workers
    }

    pub async fn shutdown(self) {
        self.workers.stop(Duration::from_secs(10)).await;
        self.coordinator.stop().await;
    }
}

pub fn chat(text: &str, max_tokens: u32) -> proto::PredictRequest {
    proto::PredictRequest::from(&modelpool::PredictRequest::user(text, max_tokens))
}

#[allow(unused_imports)]
pub use test_support::http_get::http_get;

// Used by the connection-limit tests only; the other test binaries include this module too.
#[allow(unused_imports)]
pub use test_support::closed_within::closed_within;

/// The value of one sample line (`name{labels} value`) in Prometheus text.
/// `HOST:PORT` of a URL such as `http://127.0.0.1:8000/`, for raw TCP clients.
pub fn host_of(url: &str) -> String {
    url.split_once("://").map_or(url, |(_, rest)| rest).trim_end_matches('/').to_string()
}

pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// A throwaway CA and a certificate it signed for 127.0.0.1, written as PEM files.
pub struct TestPki {
    dir: std::path::PathBuf,
    pub ca_pem: String,
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "modelpool test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("modelpool-pki-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Self { dir, ca_pem: ca.pem() }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The repository's root (for its scripts).
pub fn repository_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `coordinator` binary built beside the tests.
pub fn coordinator_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().skip(1).take(2).map(|d| d.join("coordinator")).find(|p| p.is_file()).expect("coordinator built beside the tests")
}

/// Why this machine cannot make network namespaces (it needs root and `ip`), if it cannot.
/// Whether a test that needs root and network namespaces (or more: `missing`) can run here. Where it is
/// meant to run (as root, or wherever `CI` is set: CI runs the tests as root) a missing piece fails the
/// test rather than letting it pass unseen; elsewhere the test prints why and returns.
pub fn can_run_as_root(missing: Option<String>) -> bool {
    let Some(reason) = missing else { return true };
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    assert!(!is_root && std::env::var_os("CI").is_none(), "this test must run here (root or CI), but cannot set up: {reason}");
    println!("not run here (needs root): {reason}");
    false
}

pub fn namespaces_unavailable() -> Option<String> {
    use std::process::Command;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root for network namespaces".into());
    }
    let probe = format!("mpprobe{}", std::process::id() % 100_000);
    let added = Command::new("ip").args(["netns", "add", &probe]).output();
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    match added {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!("cannot create a network namespace: {}", String::from_utf8_lossy(&output.stderr).trim())),
        Err(e) => Some(format!("no `ip` command: {e}")),
    }
}
