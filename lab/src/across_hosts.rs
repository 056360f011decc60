//! `server-bench --hosts N`: the pool across hosts against what people scale llama-server with, several
//! of them behind a load balancer. The hosts are simulated on this machine (needs root): network
//! namespaces made by `scripts/multihost/netns.sh` (a bridge in `PREFIXc`, host I in `PREFIXhI` at
//! NET.1I), each host's processes pinned to its own share of the cores (`taskset`), so that N hosts of
//! one core each do not share one. The pool is one coordinator (in `PREFIXc`, beside the bench) and one
//! worker per host; the other side is one llama-server per host, its defaults, behind a balancer in the
//! client (round-robin or least-connections: `bench_client::balancer`), which costs the servers nothing.
//!
//! The bench runs itself again inside `PREFIXc` (where the bridge is), and removes the namespaces after.

use std::path::Path;
use std::process::Command as StdCommand;
use std::time::Duration;

use anyhow::Context;
use bench_client::balancer::Balancer;
use bench_client::openai_client::OpenAiClient;
use bench_client::runner::Target;
use serde_json::{Value, json};

use crate::local_pool::{LocalCoordinator, LocalPool, WorkerProcess, WorkerSpec, wait_for_workers};
use crate::peer_server::{LlamaServerSpec, PeerServer, np_name};
use crate::server_bench::{
    RoundLoad, ServerBenchArgs, add_kernels, compare_rounds, llama_server_args, measure_target, pool_build, pool_worker_args, print_result,
    round_of,
};
use crate::{STARTUP_TIMEOUT, STOP_GRACE, llama_build_name};
use coordinator::scheduler::SchedulerConfig;

/// Set (to "PREFIX NET") in the run inside the namespaces.
const INSIDE: &str = "MODELPOOL_SERVER_BENCH_NETNS";
/// llama-server's port on each host (each host is a namespace of its own, so it is free).
const SERVER_PORT: u16 = 8080;

/// One simulated host.
struct Host {
    /// `ip netns exec PREFIXhI taskset -c CPUS`.
    launcher: Vec<String>,
    address: String,
    cpus: String,
}

pub async fn run_across_hosts(args: ServerBenchArgs, hosts: usize) -> anyhow::Result<Value> {
    match std::env::var(INSIDE) {
        Ok(inside) => {
            let (prefix, net) = inside.split_once(' ').context("MODELPOOL_SERVER_BENCH_NETNS: expected \"PREFIX NET\"")?;
            run_inside(&args, hosts, prefix, net).await
        }
        Err(_) => run_outside(&args, hosts),
    }
}

/// Removes the namespaces when the run ends, however it ends.
struct Namespaces<'a> {
    script: &'a Path,
    prefix: String,
}

impl Drop for Namespaces<'_> {
    fn drop(&mut self) {
        let _ = StdCommand::new(self.script).args(["down", &self.prefix]).status();
    }
}

/// Makes the namespaces and runs this same command inside the bridge's namespace.
fn run_outside(args: &ServerBenchArgs, hosts: usize) -> anyhow::Result<Value> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    anyhow::ensure!(hosts >= 1 && hosts <= cores, "--hosts {hosts}: between 1 and this machine's {cores} cores (each host gets its own)");
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(unsafe { libc::geteuid() } == 0, "--hosts needs root: the hosts are network namespaces (ip netns)");
    anyhow::ensure!(args.netns_script.is_file(), "--netns-script {} does not exist (run from the repository)", args.netns_script.display());
    let prefix = format!("mpsb{}", std::process::id() % 100_000);
    let net = std::env::var("MODELPOOL_SIM_NET").unwrap_or_else(|_| "10.233.0".into());
    let namespaces = Namespaces { script: &args.netns_script, prefix: prefix.clone() };
    let status = StdCommand::new(namespaces.script)
        .args(["up", &prefix, &hosts.to_string()])
        .env("MODELPOOL_SIM_NET", &net)
        .status()
        .context("running the namespace script")?;
    anyhow::ensure!(status.success(), "{} up {prefix} {hosts} failed", args.netns_script.display());
    let exe = std::env::current_exe()?;
    let status = StdCommand::new("ip")
        .args(["netns", "exec", &format!("{prefix}c")])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, format!("{prefix} {net}"))
        .status()
        .context("running the bench inside the namespaces")?;
    drop(namespaces);
    anyhow::ensure!(status.success(), "the bench inside the namespaces failed ({status})");
    match &args.json {
        Some(path) => Ok(serde_json::from_slice(&std::fs::read(path)?)?),
        None => Ok(Value::Null),
    }
}

fn hosts_of(hosts: usize, prefix: &str, net: &str) -> Vec<Host> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let per_host = (cores / hosts).max(1);
    (1..=hosts)
        .map(|i| {
            let first = (i - 1) * per_host;
            let cpus = if per_host == 1 { first.to_string() } else { format!("{first}-{}", first + per_host - 1) };
            let launcher = ["ip", "netns", "exec", &format!("{prefix}h{i}"), "taskset", "-c", &cpus].map(String::from).to_vec();
            Host { launcher, address: format!("{net}.1{i}"), cpus }
        })
        .collect()
}

/// One llama-server per host.
async fn start_servers(
    hosts: &[Host],
    binary: &Path,
    model: &Path,
    threads: u32,
    ctx_per_slot: u32,
    extra: &[String],
) -> anyhow::Result<Vec<PeerServer>> {
    let mut servers = Vec::new();
    for host in hosts {
        let spec = LlamaServerSpec { binary, model, np: 0, threads, ctx_per_slot, extra };
        match PeerServer::llama_server_at(&host.launcher, &host.address, SERVER_PORT, &spec).await {
            Ok(server) => servers.push(server),
            Err(error) => {
                for server in servers {
                    server.stop().await;
                }
                return Err(error.context(format!("llama-server on {}", host.address)));
            }
        }
    }
    Ok(servers)
}

async fn stop_servers(servers: Vec<PeerServer>) {
    for server in servers {
        server.stop().await;
    }
}

fn balanced(servers: &[PeerServer], policy: bench_client::balancer::Policy) -> Target {
    let endpoints = servers.iter().map(|s| OpenAiClient::new(&s.url, None, Some("bench".into())).expect("an http:// URL")).collect();
    Target::Balanced(Balancer::new(endpoints, policy).expect("at least one server"))
}

/// The pool: a coordinator on the bridge and one worker per host, each on its host's address and cores.
struct HostPool {
    coordinator: LocalCoordinator,
    workers: LocalPool,
}

impl HostPool {
    async fn start(
        args: &ServerBenchArgs,
        hosts: &[Host],
        net: &str,
        worker_bin: &Path,
        model: &Path,
        threads: u32,
    ) -> anyhow::Result<Self> {
        let coordinator = LocalCoordinator::start_on(SchedulerConfig::default().into(), &format!("{net}.1:0")).await?;
        let mut workers = LocalPool::default();
        for host in hosts {
            let mut extra_args = vec!["--bind".into(), host.address.clone(), "--advertise".into(), host.address.clone()];
            extra_args.extend(pool_worker_args(args));
            let spec = WorkerSpec {
                binary: worker_bin.to_path_buf(),
                model: model.to_path_buf(),
                coordinator: coordinator.url.clone(),
                threads,
                slots: args.host_slots,
                extra_args,
            };
            workers.workers.push(WorkerProcess::spawn_with(&host.launcher, &spec)?);
        }
        match wait_for_workers(&mut coordinator.client.clone(), hosts.len(), STARTUP_TIMEOUT, &mut workers).await {
            Ok(kernels) => workers.cpu_kernels = kernels,
            Err(e) => {
                workers.stop(Duration::from_secs(5)).await;
                coordinator.stop().await;
                anyhow::bail!(e);
            }
        }
        Ok(Self { coordinator, workers })
    }

    fn target(&self) -> Target {
        Target::OpenAi(OpenAiClient::new(&self.coordinator.http_url, None, Some("bench".into())).expect("an http:// URL"))
    }

    async fn stop(self) {
        self.workers.stop(STOP_GRACE).await;
        self.coordinator.stop().await;
    }
}

async fn run_inside(args: &ServerBenchArgs, count: usize, prefix: &str, net: &str) -> anyhow::Result<Value> {
    for binary in &args.llama_server {
        anyhow::ensure!(binary.is_file(), "--llama-server {} does not exist", binary.display());
    }
    anyhow::ensure!(args.rounds >= 1 && args.prompts >= 1 && args.clients >= 1, "--rounds, --prompts and --clients must be at least 1");
    let (worker_bin, model) = args.files.resolve().await?;
    let hosts = hosts_of(count, prefix, net);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = ((cores / count).max(1)) as u32;

    // Which llama-server build: the fastest that runs here, at its defaults, on a short sweep.
    let sweep = RoundLoad::Prompts(bench_client::fresh::chats(args.seed.wrapping_add(1), 0, args.prompts.min(16), args.max_tokens));
    let mut best: Option<(&Path, f64)> = None;
    let mut builds_not_run = Vec::new();
    for binary in &args.llama_server {
        let servers = match start_servers(&hosts, binary, &model, threads, args.ctx_per_slot, &llama_server_args(args)).await {
            Ok(servers) => servers,
            Err(error) => {
                eprintln!("== sweep: llama-server ({}) does not run here: {error:#}", llama_build_name(binary));
                builds_not_run.push(json!({"build": llama_build_name(binary), "error": format!("{error:#}")}));
                continue;
            }
        };
        let (records, wall) = measure_target(balanced(&servers, args.balancer), &sweep, args.clients, args.max_tokens).await;
        stop_servers(servers).await;
        let round = round_of(&records, wall);
        eprintln!(
            "== sweep: {count} x llama-server ({}) {}: {:.2} prompts/s",
            llama_build_name(binary),
            args.balancer.name(),
            round.prompts_per_s
        );
        if best.is_none_or(|(_, fastest)| round.prompts_per_s > fastest) {
            best = Some((binary, round.prompts_per_s));
        }
    }
    let (server_binary, server_sweep) = best.ok_or_else(|| anyhow::anyhow!("no llama-server build runs on this machine"))?;

    let mut workloads = serde_json::Map::new();
    let mut kernels: Vec<String> = Vec::new();
    for &workload in &args.workloads {
        // Fresh servers and pool per workload: one workload's caches do not help the next.
        let servers = start_servers(&hosts, server_binary, &model, threads, args.ctx_per_slot, &llama_server_args(args)).await?;
        let pool = HostPool::start(args, &hosts, net, &worker_bin, &model, threads).await?;
        add_kernels(&mut kernels, &pool.workers.cpu_kernels);
        let server_name = format!("{count} llama-servers");
        let summary = compare_rounds(workload, args, &model, &server_name, || pool.target(), || balanced(&servers, args.balancer)).await;
        pool.stop().await;
        stop_servers(servers).await;
        workloads.insert(workload.name().into(), summary?);
    }
    let machine = bench_client::report::Machine::this().with_worker_kernels(&kernels);
    let result = json!({
        "machine": machine.describe(),
        "model": model.display().to_string(),
        "hosts": count,
        "cpus_per_host": hosts.iter().map(|h| h.cpus.clone()).collect::<Vec<_>>(),
        "balancer": args.balancer.name(),
        "threads": threads,
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "peer": {
            "name": "llama-server",
            "describe": format!(
                "{count} llama-servers ({}) -np {} each, behind {} in the client",
                llama_build_name(server_binary),
                np_name(0),
                args.balancer.name()
            ),
            "binary": server_binary.display().to_string(),
            "build": llama_build_name(server_binary),
            "np": format!("{} on each of {count} hosts, behind {} in the client", np_name(0), args.balancer.name()),
            "sweep_prompts_per_s": server_sweep,
            "builds_not_run": builds_not_run,
            "extra_args": args.llama_server_args.clone().unwrap_or_default(),
        },
        "pool_build": pool_build(&kernels),
        "pool": {"workers": count, "slots": args.host_slots, "prompt_cache_mib": args.prompt_cache_mib.unwrap_or(modelpool::DEFAULT_PROMPT_CACHE_MIB), "worker_args": args.worker_args.clone().unwrap_or_default()},
        "workloads": workloads,
    });
    println!(
        "\n{count} simulated hosts (cores {}), the pool routes; the llama-servers get {}",
        hosts.iter().map(|h| h.cpus.as_str()).collect::<Vec<_>>().join(" | "),
        args.balancer.name()
    );
    print_result(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(result)
}
