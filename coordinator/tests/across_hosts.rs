//! `server-bench --hosts 2` on a small workload, for real: two network namespaces with a core each, a
//! coordinator and a worker per host against a llama-server per host behind round-robin, both sides in
//! one report. Needs root (namespaces) and a llama-server build (`MODELPOOL_LLAMA_SERVER`, which
//! scripts/test.sh builds when it runs as root). Where it is meant to run (as root) it fails rather
//! than skips when it cannot set up.

mod common;

use std::process::Command;

#[test]
fn two_simulated_hosts_report_the_pool_and_two_balanced_llama_servers() {
    if !common::can_run_as_root(common::namespaces_unavailable()) {
        return;
    }
    let server = std::env::var("MODELPOOL_LLAMA_SERVER")
        .expect("MODELPOOL_LLAMA_SERVER: a llama-server build (scripts/build-llama-tool.sh llama-server; scripts/test.sh sets it)");
    let root = common::repository_root();
    let dir = std::env::temp_dir().join(format!("modelpool-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let output = Command::new(common::coordinator_binary())
        .current_dir(&root)
        .args(["server-bench", "--hosts", "2", "--llama-server", &server, "--workloads", "dspy,multi-turn"])
        .args(["--prompts", "4", "--clients", "4", "--rounds", "1", "--max-tokens", "8", "--conversations", "2", "--turns", "2"])
        .arg("--json")
        .arg(&json)
        .env("MODELPOOL_SIM_NET", "10.234.0")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "server-bench --hosts 2 failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report["hosts"], 2);
    assert_eq!(report["balancer"], "round-robin");
    assert_eq!(report["cpus_per_host"].as_array().map(Vec::len), Some(2), "{report}");
    for (workload, requests) in [("dspy", 4), ("multi-turn", 4)] {
        let w = &report["workloads"][workload];
        // The peer's side: the llama-servers behind the balancer.
        for side in ["pool", "peer"] {
            assert_eq!(w[side]["ok"], requests, "{workload} {side}: {w}");
            assert_eq!(w[side]["failed"], 0, "{workload} {side}: {w}");
            assert!(w[side]["prompts_per_s"]["median"].as_f64().unwrap() > 0.0, "{workload} {side}: {w}");
        }
        assert!(w["ratio_prompts_per_s"]["median"].as_f64().unwrap() > 0.0, "{w}");
    }
    assert_eq!(report["peer"]["name"], "llama-server", "{report}");
    assert!(stdout.contains("simulated hosts") && stdout.contains("llama-server"), "{stdout}");
    // The namespaces are gone.
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&left.stdout).contains("mpsb"), "namespaces left behind");
}
