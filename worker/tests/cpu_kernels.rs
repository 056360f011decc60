//! llama.cpp's CPU kernels chosen at start (engine/llama/cpu_variant.rs), with real processes: the
//! probes are child worker processes running the default model on one module each.
//!
//! This file is its own test process on purpose: the kernels are chosen once per process, and the test
//! that names a module must be the first (and only) llama.cpp engine here.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::TestWorker;
use modelpool::proto::InfoRequest;
use worker::engine::llama::cpu_variant::{self, VariantRequest};

fn worker_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_worker"))
}

fn modules() -> Vec<cpu_variant::CpuModule> {
    let modules = cpu_variant::discover(&cpu_variant::module_dirs());
    assert!(modules.iter().any(|m| m.name == "x64" && m.score > 0), "the build has the baseline module: {modules:?}");
    modules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_module_is_probed_used_and_reported() {
    let mut config = common::config(1).await;
    config.cpu_variant = VariantRequest::Named("x64".into());
    config.cpu_probe_exe = worker_binary();
    let worker = TestWorker::start(config).await;
    let info = worker.client.clone().info(InfoRequest {}).await.unwrap().into_inner();
    assert!(info.cpu_kernels.starts_with("x64 (probed"), "{}", info.cpu_kernels);
    // The baseline kernels still compute the model: a greedy answer comes back in words.
    let reply = worker.client.clone().predict(common::chat("Name three primary colors.", 12)).await.unwrap().into_inner();
    assert!(reply.text.chars().filter(|c| c.is_alphabetic()).count() >= 5, "{:?}", reply.text);
    worker.stop().await;
}

#[test]
fn a_module_whose_probe_crashes_is_skipped_for_the_next_best() {
    let model = model_input::model_cache::ensure_default_model().unwrap();
    let modules = modules();
    let supported: Vec<_> = modules.iter().filter(|m| m.score > 0).collect();
    assert!(supported.len() >= 2, "an x86-64 CPU runs at least x64 and sse42: {modules:?}");
    // A stand-in for kernels this CPU cannot run: a probe program that dies of SIGILL, as the native
    // build did on 2026-12-02. Every other module is probed by the real worker binary.
    let dir = std::env::temp_dir().join(format!("modelpool-sigill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let crashing_probe = dir.join("probe-that-dies-of-sigill");
    std::fs::write(&crashing_probe, "#!/bin/sh\nkill -ILL $$\n").unwrap();
    std::fs::set_permissions(&crashing_probe, std::fs::Permissions::from_mode(0o755)).unwrap();

    let best = supported[0].name.clone();
    let choice = cpu_variant::choose(&VariantRequest::Auto, &modules, |module| {
        let exe = if module.name == best { crashing_probe.clone() } else { worker_binary() };
        cpu_variant::probe_in_child(&exe, &module.path, &model)
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(choice.module.name, supported[1].name, "{}", choice.describe());
    assert_eq!(choice.passed_over.len(), 1);
    assert!(choice.passed_over[0].1.contains("SIGILL"), "{:?}", choice.passed_over);
    assert!(choice.describe().contains(&format!("{best} skipped: killed by signal 4")), "{}", choice.describe());
}

#[test]
fn a_module_that_does_not_load_fails_its_probe_with_the_reason() {
    let model = model_input::model_cache::ensure_default_model().unwrap();
    let dir = std::env::temp_dir().join(format!("modelpool-bad-module-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bogus = dir.join("libggml-cpu-bogus.so");
    std::fs::write(&bogus, b"not an ELF file").unwrap();
    let outcome = cpu_variant::probe_in_child(&worker_binary(), &bogus, &model);
    std::fs::remove_dir_all(&dir).unwrap();
    let why = outcome.unwrap_err();
    assert!(why.starts_with("exit status 1") && why.contains("could not load"), "{why}");
}
