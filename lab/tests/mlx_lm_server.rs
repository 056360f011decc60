//! bench-client against a real `mlx_lm.server` (Python mlx-lm's own server, the pinned version of
//! scripts/mlx-fixture.sh) and against the pool's MLX worker, both on the smallest fixture folder (a
//! random 4-bit Qwen2): DSPy-shaped calls that share a preamble, sent one after the other, and both
//! reports count the prompt tokens each side reused from its cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coordinator::SchedulerConfig;
use lab::local_pool::{LocalCoordinator, LocalPool, WorkerSpec, find_worker_binary};
use lab::mlx_lm_server::MLX_LM_MODEL;
use lab::peer_server::PeerServer;

/// `bench-client` beside the worker binary this test runs with (the same target directory).
fn bench_client() -> PathBuf {
    let worker = find_worker_binary(None).expect("the worker binary (cargo build --release --workspace --bins)");
    worker.with_file_name("bench-client")
}

/// Runs bench-client against an OpenAI endpoint and returns its report (JSON).
fn bench(url: &str, report: &Path) -> serde_json::Value {
    let output = std::process::Command::new(bench_client())
        .args(["--openai", url, "--model", MLX_LM_MODEL, "--workload", "dspy", "--programs", "1", "--num-prompts", "4"])
        .args(["--scenario", "serial", "--repeats", "1", "--max-tokens", "8", "--json"])
        .arg(report)
        .output()
        .expect("running bench-client");
    assert!(output.status.success(), "bench-client failed:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
}

/// The serial run's share of prompt tokens the server reused, and how many of its requests failed.
fn cached_share(report: &serde_json::Value) -> (f64, u64) {
    let serial = report["summaries"].as_array().unwrap().iter().find(|s| s["name"] == "serial").expect("a serial summary");
    (serial["prompt_cached_share"].as_f64().unwrap(), serial["failed"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_client_counts_cached_tokens_of_mlx_lm_server_and_of_the_pool() {
    let folder = test_support::mlx_fixtures::fixtures().join("qwen2-tiny-q4");
    let python = test_support::mlx_fixtures::python();
    let dir = std::env::temp_dir().join(format!("modelpool-mlx-lm-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let server = PeerServer::mlx_lm_server(&python, &folder, &[]).await.expect("mlx_lm.server starts on the fixture folder");
    let theirs = tokio::task::spawn_blocking({
        let (url, report) = (server.url.clone(), dir.join("mlx_lm_server.json"));
        move || bench(&url, &report)
    })
    .await
    .unwrap();
    server.stop().await;

    let coordinator = LocalCoordinator::start(SchedulerConfig::default()).await.unwrap();
    let spec = WorkerSpec {
        binary: find_worker_binary(None).unwrap(),
        model: folder.clone(),
        coordinator: coordinator.url.clone(),
        threads: 1,
        slots: 2,
        extra_args: vec!["--engine".into(), "mlx".into()],
    };
    let pool = LocalPool::start(&spec, 1, &coordinator.client, Duration::from_secs(180)).await.unwrap();
    let ours = tokio::task::spawn_blocking({
        let (url, report) = (coordinator.http_url.clone(), dir.join("pool.json"));
        move || bench(&url, &report)
    })
    .await
    .unwrap();
    pool.stop(Duration::from_secs(10)).await;
    coordinator.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();

    // Four calls on one preamble, one after the other: every call after the first finds the preamble
    // in the server's cache, so well over half the prompt tokens are reused on both sides.
    for (side, report) in [("mlx_lm.server", &theirs), ("pool", &ours)] {
        let (share, failed) = cached_share(report);
        assert_eq!(failed, 0, "{side}: every request answered");
        assert!(share > 0.4, "{side}: {:.0}% of prompt tokens reused", share * 100.0);
    }
}
