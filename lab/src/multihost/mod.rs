//! `multihost`: one coordinator here, workers on several hosts, one report grouped by host.
//!
//! A hosts file names each host and its workers; workers start over ssh (the binary, the MLX library
//! and the model are copied first when the host lacks them or has other bytes) or, for the local
//! simulation, inside a Linux network namespace (`netns:NAME`). The bench runs through the
//! coordinator; membership is sampled throughout, so evictions and re-registrations show; optional
//! fault and heal commands run at given seconds (to cut a host's link mid-run); after a heal the
//! script waits for every worker and runs a second round, which shows the healed host serving again.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bench_client::hosts::{HostSummary, WorkerPlacement, host_advice, summarise_by_host};
use bench_client::record::RequestRecord;
use bench_client::runner::run_closed_loop;
use bench_client::workload::builtin_workload;
use modelpool::auth::AuthChannel;
use modelpool::memory::mib;
use modelpool::proto::coordinator_client::CoordinatorClient;
use modelpool::proto::{ListWorkersRequest, WorkerState, WorkerStatus};
use tokio::process::Command;

mod hosts;
mod provision;

use crate::local_pool::{LocalCoordinator, WorkerProcess, WorkerSpec};
use coordinator::scheduler::SchedulerConfig;
use hosts::host_of;
pub use hosts::{HostLine, Target, parse_hosts};

#[derive(Debug, clap::Args)]
pub struct MultihostArgs {
    /// One line per host: `TARGET WORKERS ENGINE SLOTS THREADS [ADDRESS]`. TARGET is `ssh:USER@HOST`
    /// (or a bare ssh target) or `netns:NAME`; ADDRESS is where that host's workers listen (default: the
    /// ssh host; required for netns). `#` starts a comment.
    #[arg(long)]
    pub hosts: PathBuf,
    /// Where the coordinator listens.
    #[arg(long, default_value = "0.0.0.0:50050")]
    pub listen: String,
    /// The coordinator's URL as workers reach it. Default: http:// and --listen (which must then not be
    /// 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<String>,
    #[arg(long, default_value_t = 6)]
    pub prompts_per_worker: usize,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u32,
    /// Seconds into the run at which to run --fault (a shell command, e.g. one that cuts a link).
    #[arg(long, requires = "fault")]
    pub fault_at: Option<f64>,
    #[arg(long)]
    pub fault: Option<String>,
    /// Seconds into the run at which to run --heal (e.g. restore the link).
    #[arg(long, requires = "heal")]
    pub heal_at: Option<f64>,
    #[arg(long)]
    pub heal: Option<String>,
    #[arg(long, default_value_t = 3000)]
    pub heartbeat_timeout_ms: u64,
    #[arg(long, default_value_t = 500)]
    pub heartbeat_interval_ms: u64,
    /// Longest a worker may take to its first token before the prompt is retried elsewhere.
    #[arg(long, default_value_t = 20)]
    pub first_token_timeout_secs: u64,
    /// Longest a worker may go without a token once started before the prompt is retried elsewhere.
    #[arg(long, default_value_t = 5)]
    pub token_gap_timeout_secs: u64,
    #[arg(long, default_value_t = 180)]
    pub startup_timeout_secs: u64,
    /// An ssh client configuration for the ssh hosts (passed to ssh and scp as -F): keys, known hosts,
    /// ports, jump hosts.
    #[arg(long)]
    pub ssh_config: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub files: crate::WorkerFiles,
}

/// A membership change seen by sampling ListWorkers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MembershipEvent {
    pub at_s: f64,
    pub host: String,
    pub serving_workers: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    pub name: String,
    pub prompts: usize,
    pub answered: usize,
    pub failed: usize,
    /// Prompts answered after more than one attempt (their worker failed or went silent).
    pub retried: usize,
    /// Every prompt came back exactly once (no loss, no duplicate).
    pub exactly_once: bool,
    pub wall_s: f64,
    pub hosts: Vec<HostSummary>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MultihostReport {
    pub hosts: Vec<String>,
    pub phases: Vec<Phase>,
    pub membership: Vec<MembershipEvent>,
    pub advice: Vec<String>,
    pub fault_at_s: Option<f64>,
    pub heal_at_s: Option<f64>,
    /// Where the pool's token came from: MODELPOOL_TOKEN, or generated for this run.
    pub pool_token: String,
    /// What was copied to each ssh host before its workers started (nothing when it had it all).
    pub provisioned: Vec<Provisioned>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Provisioned {
    pub host: String,
    pub copied: Vec<String>,
}

pub async fn run_multihost(args: MultihostArgs) -> anyhow::Result<MultihostReport> {
    let text = std::fs::read_to_string(&args.hosts).with_context(|| format!("reading {}", args.hosts.display()))?;
    let hosts = parse_hosts(&text).map_err(anyhow::Error::msg)?;
    let advertise = match &args.advertise {
        Some(url) => url.clone(),
        None => {
            anyhow::ensure!(!args.listen.starts_with("0.0.0.0"), "--listen 0.0.0.0 needs --advertise (the URL workers reach)");
            format!("http://{}", args.listen)
        }
    };
    let (worker_bin, model) = args.files.resolve().await?;

    let scheduler = SchedulerConfig {
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
        heartbeat_timeout: Duration::from_millis(args.heartbeat_timeout_ms),
        progress: coordinator::worker_client::ProgressTimeouts {
            first_token: Duration::from_secs(args.first_token_timeout_secs),
            between_tokens: Duration::from_secs(args.token_gap_timeout_secs.max(2)),
        },
        ..SchedulerConfig::default()
    };
    // A pool on a network is closed: every call to the coordinator and to the workers needs the token,
    // MODELPOOL_TOKEN when set, else a random one made for this run and handed to every worker.
    let (secret, pool_token) = match std::env::var("MODELPOOL_TOKEN") {
        Ok(secret) if !secret.is_empty() => (secret, "MODELPOOL_TOKEN".to_string()),
        _ => (modelpool::auth::random_secret().context("reading /dev/urandom for a pool token")?, "generated for this run".to_string()),
    };
    let mut config: coordinator::Config = scheduler.into();
    config.credentials = modelpool::auth::Credentials { token: modelpool::auth::Token::new(Some(secret.clone()))?, ..Default::default() };
    let coordinator = LocalCoordinator::start_on(config, &args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("== coordinator on {} (workers use {advertise}); pool token: {pool_token}", args.listen);

    let mut workers = Vec::new();
    let mut provisioned = Vec::new();
    let files = LocalFiles { binary: &worker_bin, model: &model, ssh_config: args.ssh_config.as_deref() };
    let started = start_workers(&hosts, files, &advertise, &secret, &mut workers, &mut provisioned).await;
    let result = match started {
        Ok(()) => {
            tokio::select! {
                result = measure(&args, &hosts, &coordinator.client, &mut workers) => result,
                () = modelpool::shutdown::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Err(e) => Err(e),
    };
    eprintln!("== stopping {} worker(s)", workers.len());
    futures::future::join_all(workers.into_iter().map(|(_, w)| w.stop(Duration::from_secs(10)))).await;
    coordinator.stop().await;
    let mut report = result?;
    report.pool_token = pool_token;
    report.provisioned = provisioned;
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report)
}

/// What workers start from, resolved on this host: the binary and model, and the ssh configuration for
/// ssh hosts.
#[derive(Clone, Copy)]
struct LocalFiles<'a> {
    binary: &'a Path,
    model: &'a Path,
    ssh_config: Option<&'a Path>,
}

/// How a host's workers are started: in a network namespace here, or over ssh with the host's copies.
enum Launch {
    Netns(Vec<String>),
    Ssh { ssh: Vec<String>, remote_prefix: Vec<String> },
}

/// Starts every host's workers (copying files to ssh hosts first).
async fn start_workers(
    hosts: &[HostLine],
    files: LocalFiles<'_>,
    coordinator: &str,
    token: &str,
    workers: &mut Vec<(String, WorkerProcess)>,
    provisioned: &mut Vec<Provisioned>,
) -> anyhow::Result<()> {
    // Hashed on the first ssh host, then reused for the others.
    let mut payload: Option<provision::Payload> = None;
    for host in hosts {
        let (launch, binary, model) = match &host.target {
            Target::Netns(name) => (
                Launch::Netns(vec!["ip".into(), "netns".into(), "exec".into(), name.clone()]),
                files.binary.to_path_buf(),
                files.model.to_path_buf(),
            ),
            Target::Ssh(target) => {
                let ssh_host = provision::SshHost { target: target.clone(), config: files.ssh_config.map(Path::to_path_buf) };
                let payload = match &mut payload {
                    Some(payload) => payload,
                    None => payload.insert(provision::Payload::hash(files.binary, files.model).await?),
                };
                let remote = provision::provision(&ssh_host, payload).await?;
                provisioned.push(Provisioned { host: host.name().to_string(), copied: remote.copied.clone() });
                // `exec`, so that the worker is the process the closing connection stops.
                let remote_prefix = vec!["exec".into(), "env".into(), format!("LD_LIBRARY_PATH={}", remote.library_dir)];
                (Launch::Ssh { ssh: ssh_host.ssh_args(true), remote_prefix }, PathBuf::from(remote.worker), PathBuf::from(remote.model))
            }
        };
        for _ in 0..host.workers {
            let spec = WorkerSpec {
                binary: binary.clone(),
                model: model.clone(),
                coordinator: coordinator.to_string(),
                threads: host.threads,
                slots: host.slots,
                // Advertised as the hosts file names it (the bound port is added), which is how the
                // report knows each worker's host.
                extra_args: vec![
                    "--bind".into(),
                    host.address.clone(),
                    "--advertise".into(),
                    host.address.clone(),
                    "--engine".into(),
                    host.engine.clone(),
                ],
            };
            // The token never goes on a command line (`ps` shows those to every user of a host): into
            // the worker's environment, over ssh by way of the connection's input.
            let worker = match &launch {
                Launch::Netns(launcher) => WorkerProcess::spawn_with_token(launcher, &spec, token),
                Launch::Ssh { ssh, remote_prefix } => WorkerProcess::spawn_over_ssh(ssh, remote_prefix, &spec, Some(token)),
            }
            .with_context(|| format!("starting a worker on {}", host.name()))?;
            workers.push((host.name().to_string(), worker));
        }
        eprintln!(
            "== {}: {} worker(s) starting ({} x {} slot(s) x {} thread(s))",
            host.name(),
            host.workers,
            host.engine,
            host.slots,
            host.threads
        );
    }
    Ok(())
}

async fn serving_by_host(
    client: &CoordinatorClient<AuthChannel>,
    hosts: &[HostLine],
) -> Option<(BTreeMap<String, usize>, Vec<WorkerStatus>)> {
    let list = client.clone().list_workers(ListWorkersRequest {}).await.ok()?.into_inner().workers;
    let mut counts: BTreeMap<String, usize> = hosts.iter().map(|h| (h.name().to_string(), 0)).collect();
    for status in list.iter().filter(|w| w.state == WorkerState::Serving as i32) {
        if let Some(host) = host_of(hosts, status) {
            *counts.entry(host.name().to_string()).or_default() += 1;
        }
    }
    Some((counts, list))
}

/// Waits until every host has all its workers serving; fails early if one of ours exits.
async fn wait_all_serving(
    client: &CoordinatorClient<AuthChannel>,
    hosts: &[HostLine],
    workers: &mut [(String, WorkerProcess)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((counts, _)) = serving_by_host(client, hosts).await
            && hosts.iter().all(|h| counts.get(h.name()).copied().unwrap_or(0) >= h.workers)
        {
            return Ok(());
        }
        for (host, worker) in workers.iter_mut() {
            if let Some(status) = worker.try_exit_status() {
                anyhow::bail!("a worker on {host} exited ({status}) before serving");
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "not every worker was serving within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn measure(
    args: &MultihostArgs,
    hosts: &[HostLine],
    client: &CoordinatorClient<AuthChannel>,
    workers: &mut [(String, WorkerProcess)],
) -> anyhow::Result<MultihostReport> {
    wait_all_serving(client, hosts, workers, Duration::from_secs(args.startup_timeout_secs)).await?;
    let total_workers: usize = hosts.iter().map(|h| h.workers).sum();
    let total_slots: usize = hosts.iter().map(|h| h.workers * h.slots as usize).sum();
    eprintln!("== all {total_workers} worker(s) serving");

    // Membership, sampled every 200 ms: evictions and re-registrations become events.
    let start = Instant::now();
    let events = Arc::new(Mutex::new(Vec::<MembershipEvent>::new()));
    let placements = Arc::new(Mutex::new(BTreeMap::<String, WorkerPlacement>::new()));
    let sampler = tokio::spawn({
        let (client, hosts, events, placements) = (client.clone(), hosts.to_vec(), Arc::clone(&events), Arc::clone(&placements));
        async move {
            let mut last: BTreeMap<String, usize> = BTreeMap::new();
            loop {
                if let Some((counts, list)) = serving_by_host(&client, &hosts).await {
                    let mut placements = placements.lock().unwrap();
                    for placement in placements.values_mut() {
                        placement.current = false;
                    }
                    for status in &list {
                        if let Some(host) = host_of(&hosts, status) {
                            let memory = status.memory.unwrap_or_default();
                            placements.insert(
                                status.worker_id.clone(),
                                WorkerPlacement {
                                    host: host.name().to_string(),
                                    rss_bytes: memory.rss_bytes,
                                    pss_bytes: memory.pss_bytes,
                                    current: true,
                                },
                            );
                        }
                    }
                    for (host, &count) in &counts {
                        if last.get(host) != Some(&count) {
                            events.lock().unwrap().push(MembershipEvent {
                                at_s: start.elapsed().as_secs_f64(),
                                host: host.clone(),
                                serving_workers: count,
                            });
                        }
                    }
                    last = counts;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    for (at, command) in [(args.fault_at, &args.fault), (args.heal_at, &args.heal)] {
        if let (Some(at), Some(command)) = (at, command.clone()) {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(at)).await;
                eprintln!("== t={at:.1}s: running {command:?}");
                match Command::new("sh").arg("-c").arg(&command).stdin(Stdio::null()).status().await {
                    Ok(status) if status.success() => {}
                    Ok(status) => eprintln!("== {command:?} exited with {status}"),
                    Err(e) => eprintln!("== {command:?} failed to start: {e}"),
                }
            });
        }
    }

    let mut phases = Vec::new();
    let prompts = builtin_workload(total_workers * args.prompts_per_worker, args.max_tokens);
    eprintln!("== run: {} prompts, {total_slots} in flight", prompts.len());
    let (records, wall_s) = run_closed_loop(client.clone(), &prompts, total_slots).await;
    phases.push(phase("run", &records, prompts.len(), wall_s, &placements.lock().unwrap()));

    if let Some(heal_at) = args.heal_at {
        let wait = Duration::from_secs_f64((heal_at - start.elapsed().as_secs_f64()).max(0.0));
        tokio::time::sleep(wait).await;
        eprintln!("== waiting for every worker to serve again");
        wait_all_serving(client, hosts, workers, Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await; // one more sample of placements
        let again = builtin_workload(total_slots * 3, args.max_tokens);
        eprintln!("== after: {} prompts", again.len());
        let (records, wall_s) = run_closed_loop(client.clone(), &again, total_slots).await;
        phases.push(phase("after", &records, again.len(), wall_s, &placements.lock().unwrap()));
    }
    sampler.abort();
    let membership = std::mem::take(&mut *events.lock().unwrap());
    let advice = host_advice(&phases[0].hosts);
    Ok(MultihostReport {
        hosts: hosts.iter().map(|h| h.name().to_string()).collect(),
        phases,
        membership,
        advice,
        fault_at_s: args.fault_at,
        heal_at_s: args.heal_at,
        pool_token: String::new(),
        provisioned: Vec::new(),
    })
}

fn phase(name: &str, records: &[RequestRecord], prompts: usize, wall_s: f64, placements: &BTreeMap<String, WorkerPlacement>) -> Phase {
    let ids: HashSet<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    let answered = records.iter().filter(|r| r.ok).count();
    Phase {
        name: name.into(),
        prompts,
        answered,
        failed: records.len() - answered,
        retried: records.iter().filter(|r| r.ok && r.attempts > 1).count(),
        exactly_once: records.len() == prompts && ids.len() == prompts,
        wall_s,
        hosts: summarise_by_host(records, placements, wall_s),
        errors: records.iter().filter_map(|r| r.error.clone()).collect(),
    }
}

fn print_report(report: &MultihostReport) {
    println!("pool closed: every call needs the token ({})", report.pool_token);
    // Host names (ssh targets) vary in length: the column fits the longest.
    let width = report.hosts.iter().map(String::len).max().unwrap_or(0).max(14);
    for host in &report.provisioned {
        let copied = if host.copied.is_empty() { "nothing (it had the same bytes)".to_string() } else { host.copied.join(", ") };
        println!("copied to {}: {copied}", host.host);
    }
    for phase in &report.phases {
        println!(
            "{}: {} prompts, {} answered ({} after a retry), {} failed, exactly once: {}, {:.1} s",
            phase.name,
            phase.prompts,
            phase.answered,
            phase.retried,
            phase.failed,
            if phase.exactly_once { "yes" } else { "NO" },
            phase.wall_s
        );
        println!(
            "  {:<width$} {:>3} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
            "host", "wkr", "prompts", "tok/s", "ms/tok", "p50 lat", "p95 lat", "ttft p50", "RSS/wkr", "PSS/wkr"
        );
        for h in &phase.hosts {
            println!(
                "  {:<width$} {:>3} {:>7} {:>8.1} {:>9.1} {:>8.2}s {:>8.2}s {:>7.0}ms {:>8} {:>8}",
                h.host,
                h.workers,
                h.prompts,
                h.output_tokens_per_s,
                h.e2e_ms_per_token_p50,
                h.e2e_ms.p50 / 1000.0,
                h.e2e_ms.p95 / 1000.0,
                h.ttft_ms_p50,
                mib(h.rss_bytes_per_worker),
                mib(h.pss_bytes_per_worker),
            );
        }
        for error in phase.errors.iter().take(5) {
            println!("  error: {error}");
        }
    }
    if !report.membership.is_empty() {
        println!("membership (serving workers per host over time):");
        for event in &report.membership {
            println!("  t={:>5.1}s  {:<width$} {}", event.at_s, event.host, event.serving_workers);
        }
    }
    for line in &report.advice {
        println!("advice: {line}");
    }
}
