//! The multi-host experiment on simulated hosts: three network namespaces joined by a bridge, one
//! worker in each, the coordinator in a fourth; one host's link is cut mid-run and restored. Needs root
//! (network namespaces): as root or under CI it fails if it cannot set up; elsewhere it says why it did
//! not run.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// Removes the namespaces even if the test fails.
struct Namespaces {
    script: PathBuf,
    prefix: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).args(["down", &self.prefix]).status();
    }
}

#[test]
fn three_namespaced_hosts_one_link_cut_every_prompt_answered_once_and_the_host_rejoins() {
    if !common::can_run_as_root(common::namespaces_unavailable()) {
        return;
    }
    let script = common::repository_root().join("scripts/multihost/netns.sh");
    let prefix = format!("mpt{}", std::process::id() % 100_000);
    let net = "10.232.0";
    let namespaces = Namespaces { script: script.clone(), prefix: prefix.clone() };
    let status = Command::new(&script).args(["up", &prefix, "3"]).env("MODELPOOL_SIM_NET", net).status().unwrap();
    assert!(status.success(), "setting up the namespaces");
    let hosts_output = Command::new(&script).args(["hosts", &prefix, "3"]).env("MODELPOOL_SIM_NET", net).output().unwrap();
    let dir = std::env::temp_dir().join(format!("modelpool-netns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, &hosts_output.stdout).unwrap();
    let json = dir.join("report.json");
    let cut = format!("{} cut {prefix} 2", script.display());
    let heal = format!("{} heal {prefix} 2", script.display());

    let output = Command::new("ip")
        .args(["netns", "exec", &format!("{prefix}c")])
        .arg(common::coordinator_binary())
        .args(["multihost", "--hosts"])
        .arg(&hosts)
        .args(["--listen", &format!("{net}.1:50050"), "--prompts-per-worker", "12", "--max-tokens", "48"])
        .args(["--fault-at", "3", "--fault", &cut, "--heal-at", "10", "--heal", &heal])
        .args(["--heartbeat-timeout-ms", "2000", "--token-gap-timeout-secs", "5", "--json"])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "multihost failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();

    // Closed by default: a token made for the run, which every worker was given
    // (a worker without it could not have registered with this coordinator).
    assert_eq!(report["pool_token"], "generated for this run", "{report}");

    let cut_host = format!("{prefix}h2");
    let run = &report["phases"][0];
    assert_eq!(run["exactly_once"], true, "every prompt answered exactly once: {run}");
    assert_eq!(run["answered"], run["prompts"]);
    assert!(run["retried"].as_u64().unwrap() >= 1, "the prompt in flight on the cut host was retried elsewhere: {run}");

    // The cut host was evicted after the cut, and registered again after the link came back.
    let events = report["membership"].as_array().unwrap();
    let of_cut = |serving: u64| {
        events
            .iter()
            .filter(|e| e["host"] == cut_host.as_str() && e["serving_workers"] == serving)
            .map(|e| e["at_s"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let evicted = of_cut(0);
    assert!(evicted.iter().any(|&t| t > 3.0), "evicted after the cut: {events:?}");
    let rejoined = of_cut(1);
    assert!(rejoined.iter().any(|&t| t > 10.0), "serving again after the heal: {events:?}");

    // And it served again.
    let after = &report["phases"][1];
    assert_eq!(after["exactly_once"], true);
    let served_after =
        after["hosts"].as_array().unwrap().iter().find(|h| h["host"] == cut_host.as_str()).map(|h| h["prompts"].as_u64().unwrap());
    assert!(served_after.unwrap_or(0) >= 1, "the healed host served prompts: {after}");
    drop(namespaces);
    let _ = std::fs::remove_dir_all(&dir);
}
