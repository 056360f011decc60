//! `coordinator multihost` over real ssh: three network-namespace hosts, each with its own sshd
//! (Debian's openssh-server; host and client keys made for the run; key login only) and its own user,
//! so each host has its own ~/.modelpool. Three runs: a link cut and healed mid-run (the first run
//! copies the binary, the MLX library and the model to every host); a worker killed mid-run (nothing
//! copied: every host has the same bytes); a half-written model and a leftover partial copy on one host
//! (only that model copied again, never used half-written). Every prompt answered exactly once. Needs
//! root, `ip` and sshd: as root or under CI it fails if it cannot set up; elsewhere it says why it did
//! not run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn skip_reason() -> Option<String> {
    for tool in ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen", "/usr/sbin/useradd"] {
        if !Path::new(tool).exists() {
            return Some(format!("no {tool} (scripts/setup.sh installs openssh-server)"));
        }
    }
    common::namespaces_unavailable()
}

/// Stops the servers, removes the users and the namespaces, even if the test fails.
struct Hosts {
    prefix: String,
    dir: PathBuf,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let scripts = common::repository_root().join("scripts/multihost");
        let _ = Command::new(scripts.join("sshd.sh")).args(["down", &self.prefix, "3"]).arg(&self.dir).status();
        let _ = Command::new(scripts.join("netns.sh")).args(["down", &self.prefix]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `coordinator multihost` in the coordinator's namespace; returns its report and its stdout.
fn multihost(hosts: &Hosts, net: &str, extra: &[&str]) -> (serde_json::Value, String) {
    multihost_with_env(hosts, net, extra, &[])
}

fn multihost_with_env(hosts: &Hosts, net: &str, extra: &[&str], env: &[(&str, &str)]) -> (serde_json::Value, String) {
    let json = hosts.dir.join("report.json");
    let output = Command::new("ip")
        .args(["netns", "exec", &format!("{}c", hosts.prefix)])
        .arg(common::coordinator_binary())
        .args(["multihost", "--hosts"])
        .arg(hosts.dir.join("hosts"))
        .arg("--ssh-config")
        .arg(hosts.dir.join("ssh_config"))
        .args([
            "--listen",
            &format!("{net}.1:50050"),
            "--max-tokens",
            "32",
            "--heartbeat-timeout-ms",
            "2000",
            "--token-gap-timeout-secs",
            "5",
        ])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    assert!(output.status.success(), "multihost failed: {}", String::from_utf8_lossy(&output.stderr));
    (serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap(), stdout)
}

/// Runs `run` while a thread reads every process's command line from /proc; returns what `run` gave
/// and the command lines seen holding `secret`.
fn command_lines_holding<T>(secret: &str, run: impl FnOnce() -> T) -> (T, Vec<String>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, secret) = (std::sync::Arc::clone(&done), secret.to_string());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    if let Ok(line) = std::fs::read(entry.path().join("cmdline")) {
                        let line = String::from_utf8_lossy(&line).replace('\0', " ");
                        if line.contains(&secret) {
                            seen.insert(line);
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            seen.into_iter().collect()
        })
    };
    let result = run();
    done.store(true, Ordering::Relaxed);
    (result, watcher.join().unwrap())
}

fn copied(report: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    report["provisioned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["host"].as_str().unwrap().to_string(),
                p["copied"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect(),
            )
        })
        .collect()
}

fn assert_every_prompt_answered_once(report: &serde_json::Value) {
    for phase in report["phases"].as_array().unwrap() {
        assert_eq!(phase["exactly_once"], true, "every prompt answered exactly once: {phase}");
        assert_eq!(phase["answered"], phase["prompts"], "{phase}");
    }
}

#[test]
fn ssh_hosts_are_provisioned_by_checksum_and_serve_through_a_cut_link_and_a_killed_worker() {
    if !common::can_run_as_root(skip_reason()) {
        return;
    }
    let scripts = common::repository_root().join("scripts/multihost");
    let prefix = format!("mps{}", std::process::id() % 100_000);
    let net = "10.233.0";
    let dir = std::env::temp_dir().join(format!("modelpool-ssh-{}", std::process::id()));
    let hosts = Hosts { prefix: prefix.clone(), dir: dir.clone() };
    let script = |name: &str, args: &[&str]| {
        let output = Command::new(scripts.join(name)).args(args).env("MODELPOOL_SIM_NET", net).output().unwrap();
        assert!(output.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    script("netns.sh", &["up", &prefix, "3"]);
    script("sshd.sh", &["up", &prefix, "3", dir.to_str().unwrap()]);
    std::fs::write(dir.join("hosts"), script("sshd.sh", &["hosts", &prefix, "3"])).unwrap();
    let host = |i: usize| format!("{}@{net}.1{i}", script("sshd.sh", &["user", &prefix, &i.to_string()]).trim());

    // Run 1: host 2's link cut 3 s in and restored at 10 s.
    let netns = scripts.join("netns.sh").display().to_string();
    let (cut, heal) = (format!("{netns} cut {prefix} 2"), format!("{netns} heal {prefix} 2"));
    let (first, report_text) =
        multihost(&hosts, net, &["--prompts-per-worker", "12", "--fault-at", "3", "--fault", &cut, "--heal-at", "10", "--heal", &heal]);
    assert_eq!(first["pool_token"], "generated for this run");
    for (name, files) in copied(&first) {
        assert_eq!(files, ["worker", "model", "llama.cpp libraries", "mlx library"], "the first run copies everything to {name}");
    }
    assert_every_prompt_answered_once(&first);
    assert!(first["phases"][0]["retried"].as_u64().unwrap() >= 1, "the cut host's prompt was retried: {}", first["phases"][0]);
    let events = first["membership"].as_array().unwrap();
    let cut_host = host(2);
    assert!(events.iter().any(|e| e["host"] == cut_host.as_str() && e["serving_workers"] == 0), "the cut host was evicted: {events:?}");
    std::fs::write(dir.join("report.txt"), report_text).unwrap();

    // Run 2: host 1's worker killed 2 s in. Every host already has the same bytes: nothing is copied.
    let kill = format!("pkill -KILL -u {} -x worker", script("sshd.sh", &["user", &prefix, "1"]).trim());
    let (second, _) = multihost(&hosts, net, &["--prompts-per-worker", "8", "--fault-at", "2", "--fault", &kill]);
    for (name, files) in copied(&second) {
        assert!(files.is_empty(), "a second run copies nothing to {name}: {files:?}");
    }
    assert_every_prompt_answered_once(&second);

    // Run 3: host 3 holds a half-written model (a copy interrupted the old way, straight into place)
    // and a leftover partial copy. Its model is copied again, checked and moved into place; its worker
    // serves with it; the other hosts get nothing.
    let home3 = dir.join("home3/.modelpool");
    let model = home3.join("model.gguf");
    let size = std::fs::metadata(&model).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&model).unwrap().set_len(size / 2).unwrap();
    let partial = home3.join("model.gguf.partial");
    std::fs::write(&partial, b"leftover of an interrupted copy").unwrap();
    let owner = std::fs::metadata(&model).unwrap();
    let (uid, gid) = (std::os::unix::fs::MetadataExt::uid(&owner), std::os::unix::fs::MetadataExt::gid(&owner));
    std::os::unix::fs::chown(&partial, Some(uid), Some(gid)).unwrap();
    // With the operator's token: no process on this machine, the
    // hosts' sshd sessions and workers included, ever shows it on its command line; the old multihost
    // passed it to every worker as `--token` on the ssh command line.
    let token = "operator-token-0123456789abcdef";
    let ((third, _), exposed) =
        command_lines_holding(token, || multihost_with_env(&hosts, net, &["--prompts-per-worker", "4"], &[("MODELPOOL_TOKEN", token)]));
    assert!(exposed.is_empty(), "the token on a command line: {exposed:?}");
    assert_eq!(third["pool_token"], "MODELPOOL_TOKEN");
    for (name, files) in copied(&third) {
        let expected: &[&str] = if name == host(3) { &["model"] } else { &[] };
        assert_eq!(files, expected, "{name}");
    }
    assert_eq!(std::fs::metadata(&model).unwrap().len(), size, "the model is whole again");
    assert!(!partial.exists(), "the partial copy was replaced and moved into place");
    assert_every_prompt_answered_once(&third);
    let served_by_3 = third["phases"][0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host(3).as_str())
        .map(|h| h["prompts"].as_u64().unwrap());
    assert!(served_by_3.unwrap_or(0) >= 1, "host 3 served with its fresh copy: {}", third["phases"][0]);
    drop(hosts);
}
