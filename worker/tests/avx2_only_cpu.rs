//! The worker built here runs on a CPU without AVX-512: the binary is built for the x86-64 baseline and
//! its llama.cpp kernels are chosen when it starts. No such machine is at hand (the development VMs are
//! AVX-512 ones on most days), so the CPU is emulated: QEMU's user-mode emulator with its `Haswell`
//! model (AVX2, FMA, F16C, BMI2; no AVX-512), whose CPUID is what the worker and ggml read and whose
//! decoder raises SIGILL on any instruction that CPU lacks.
//!
//! Real processes under emulation: the worker itself, which must pick the `haswell` module and answer a
//! chat; the worker on its MLX engine (the mlx-cpu wheel's libmlx and the system's OpenBLAS, which must
//! pick its Haswell kernels), which must answer too; and probes, as the worker runs them, of an AVX-512
//! module (refused there: ggml will not load a module whose instructions the CPU's flags lack, so it
//! never runs) and of the `haswell` one (passes).
//! The worker's own probe child is not emulated (QEMU runs a program the guest starts natively), so
//! the probes are run here under the emulator directly. A module that the flags admit but the CPU
//! cannot run (the native build that died of SIGILL on 2026-12-02) cannot be made under QEMU, whose
//! emulated CPU has no AVX-512 to misreport; worker/tests/cpu_kernels.rs covers it with a stand-in.
//!
//! Needs `qemu-x86_64` (Debian's qemu-user; scripts/setup.sh installs it). Where the tests are meant to
//! run (root or CI) a missing emulator fails the test.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use modelpool::proto::InfoRequest;
use modelpool::proto::worker_client::WorkerClient;
use worker::engine::llama::cpu_variant;

/// QEMU's model of an AVX2-only CPU.
const CPU_MODEL: &str = "Haswell";

fn emulator() -> Option<PathBuf> {
    let found = ["/usr/bin/qemu-x86_64", "/usr/bin/qemu-x86_64-static"].into_iter().map(PathBuf::from).find(|p| p.is_file());
    if found.is_none() {
        // SAFETY: geteuid has no preconditions.
        let meant_to_run = unsafe { libc::geteuid() } == 0 || std::env::var_os("CI").is_some();
        assert!(!meant_to_run, "qemu-x86_64 is missing (scripts/setup.sh installs qemu-user)");
        println!("not run here: no qemu-x86_64 (scripts/setup.sh installs qemu-user)");
    }
    found
}

fn worker_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_worker"))
}

/// Kills the emulated worker when the test ends, however it ends.
struct Emulated(Child);

impl Drop for Emulated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the worker binary under the emulated CPU with `engine_args`, waits until its model is loaded
/// and warmed up (a forward pass has run), and returns it with its `Info::cpu_kernels` and a client.
async fn start_emulated_worker(qemu: &Path, engine_args: &[&str]) -> (Emulated, WorkerClient<tonic::transport::Channel>, String) {
    let model = tokio::task::spawn_blocking(model_input::model_cache::ensure_default_model).await.unwrap().unwrap();
    let mut child = Command::new(qemu)
        .args(["-cpu", CPU_MODEL])
        .arg(worker_binary())
        .args(["--port", "0", "--threads", "2", "--slots", "1"])
        .args(engine_args)
        .arg("--model")
        .arg(&model)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the worker under qemu-x86_64");
    let stdout = child.stdout.take().unwrap();
    let worker = Emulated(child);
    let url = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("MODELPOOL_WORKER_LISTENING ").map(str::to_string))
    })
    .await
    .unwrap()
    .expect("the emulated worker printed its address");
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut client = WorkerClient::new(channel);
    // Loading and warming up under emulation takes some 20-25 s on 2 cores (more while the other
    // emulated worker of this file runs).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let kernels = loop {
        let info = client.info(InfoRequest {}).await.unwrap().into_inner();
        if !info.cpu_kernels.is_empty() {
            break info.cpu_kernels;
        }
        assert!(tokio::time::Instant::now() < deadline, "the emulated worker did not load its model in 300 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    (worker, client, kernels)
}

/// A short chat through the emulated worker: real text, within its token limit.
async fn answers_a_chat(client: &mut WorkerClient<tonic::transport::Channel>) {
    let reply = tokio::time::timeout(Duration::from_secs(300), client.predict(common::chat("Name three primary colors.", 6)))
        .await
        .expect("answered within 300 s under emulation")
        .unwrap()
        .into_inner();
    assert!(reply.text.chars().filter(|c| c.is_alphabetic()).count() >= 3, "{:?}", reply.text);
    assert!((1..=6).contains(&reply.completion_tokens), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_avx2_only_cpu_the_worker_picks_haswell_kernels_and_answers() {
    let Some(qemu) = emulator() else { return };
    let (worker, mut client, kernels) = start_emulated_worker(&qemu, &["--engine", "llama"]).await;
    assert!(kernels.starts_with("haswell (probed"), "an AVX2-only CPU gets the haswell module: {kernels}");
    answers_a_chat(&mut client).await;
    drop(worker);
}

/// The MLX engine has no kernels of its own to choose: libmlx is the mlx-cpu wheel's build, and its
/// float32 products go to the system's OpenBLAS, which picks its kernels from CPUID at load. Both must
/// run on the emulated CPU without an instruction it lacks, and OpenBLAS must pick its Haswell ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_avx2_only_cpu_the_mlx_engine_runs_with_haswell_blas_kernels_and_answers() {
    let Some(qemu) = emulator() else { return };
    let (worker, mut client, kernels) = start_emulated_worker(&qemu, &["--engine", "mlx"]).await;
    assert!(kernels.starts_with("MLX CPU"), "{kernels}");
    assert!(kernels.contains("OpenBLAS") && kernels.contains("Haswell"), "OpenBLAS picks its Haswell kernels: {kernels}");
    answers_a_chat(&mut client).await;
    drop(worker);
}

#[test]
fn on_an_avx2_only_cpu_an_avx512_module_fails_its_probe_and_haswell_passes() {
    let Some(qemu) = emulator() else { return };
    let model = model_input::model_cache::ensure_default_model().unwrap();
    let modules = cpu_variant::discover(&cpu_variant::module_dirs());
    let module = |name: &str| modules.iter().find(|m| m.name == name).map(|m| m.path.clone()).expect(name);
    let dir = std::env::temp_dir().join(format!("modelpool-avx2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The probe program: the real worker, under the emulated CPU.
    let emulated_worker = dir.join("worker-on-haswell");
    let script = format!("#!/bin/sh\nexec {} -cpu {CPU_MODEL} {} \"$@\"\n", qemu.display(), worker_binary().display());
    std::fs::write(&emulated_worker, script).unwrap();
    std::fs::set_permissions(&emulated_worker, std::fs::Permissions::from_mode(0o755)).unwrap();

    let avx512 = cpu_variant::probe_in_child(&emulated_worker, &module("skylakex"), &model);
    let avx2 = cpu_variant::probe_in_child(&emulated_worker, &module("haswell"), &model);
    std::fs::remove_dir_all(&dir).unwrap();
    let why = avx512.expect_err("AVX-512 kernels cannot run on a Haswell");
    assert!(why.contains("could not load") || why.contains("SIGILL"), "refused, or killed trying: {why}");
    avx2.expect("the haswell module runs on a Haswell");
    assert!(Path::new(&module("x64")).is_file());
}
