//! `server-bench`: the pool against llama-server, the server a user would run instead, on the same
//! model, the same cores and the same prompts, both through their OpenAI endpoints (streamed, timed at
//! the client). A small sweep first picks each side's best parallelism on short prompts (llama-server's
//! `-np`, the pool's workers x slots), so neither is handicapped; then every workload runs in
//! interleaved rounds (the order alternates) and each round gives one pool ÷ llama-server ratio.

use std::path::{Path, PathBuf};

use anyhow::Context;

use bench_client::multi_turn::{self, Conversation, run_conversations};
use bench_client::openai_client::OpenAiClient;
use bench_client::record::RequestRecord;
use bench_client::report::Spread;
use bench_client::runner::{Target, run_closed_loop};
use bench_client::stats::quantile;
use bench_client::{fresh, workload};
use modelpool::PredictRequest;
use serde_json::{Value, json};

use crate::local_pool::{LocalCoordinator, LocalPool, WorkerSpec};
use crate::peak_memory::peak_rss_mib;
use crate::peer_server::{LlamaServerSpec, PeerServer, np_name};
use crate::{STARTUP_TIMEOUT, STOP_GRACE, llama_build_name};
use coordinator::scheduler::SchedulerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerWorkload {
    /// Short chats (extraction tasks and questions) of which none repeats within the run.
    Chats,
    /// DSPy ChatAdapter-shaped calls: a 1,000+ token preamble per program, --programs interleaved, each
    /// call on a passage of its own (only the preambles repeat, as in the application).
    Dspy,
    /// Conversations that grow turn by turn, --conversations of them interleaved, each request the
    /// whole conversation so far with the model's own answers.
    MultiTurn,
    /// Fixed shape: 128 prompt tokens, exactly max-tokens generated (`ignore_eos`).
    Synthetic,
    /// The same built-in chats every round: what a whole-prompt cache gains on repeats (no DSPy user
    /// sends the same call twice; DSPy caches repeats on the client).
    Repeats,
}

impl ServerWorkload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ServerWorkload::Chats => "chats",
            ServerWorkload::Dspy => "dspy",
            ServerWorkload::MultiTurn => "multi-turn",
            ServerWorkload::Synthetic => "synthetic",
            ServerWorkload::Repeats => "repeats",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ServerBenchArgs {
    /// The engine the pool's workers run, and so the peer: `llama` against llama-server, `mlx` (with
    /// --model DIR, an mlx-lm folder) against Python mlx-lm's own server, `mlx_lm.server`.
    #[arg(long, value_enum, default_value_t = modelpool::EngineKind::Llama)]
    pub engine: modelpool::EngineKind,
    /// The llama-server binary (scripts/server-bench.sh builds it from the pinned llama.cpp source).
    /// Repeat for several builds (scripts/server-bench.sh passes the portable and the native one): each
    /// is checked to start and answer here, and the fastest that does is compared with. Needed with
    /// --engine llama.
    #[arg(long, env = "MODELPOOL_LLAMA_SERVER", value_delimiter = ',')]
    pub llama_server: Vec<PathBuf>,
    /// --engine mlx: the Python that has mlx-lm (scripts/server-bench.sh --engine mlx passes the pinned
    /// venv of scripts/mlx-fixture.sh).
    #[arg(long, env = "MODELPOOL_MLX_PYTHON")]
    pub mlx_python: Option<PathBuf>,
    /// --engine mlx: more flags for mlx_lm.server, as one string (its defaults otherwise, as its users
    /// run it).
    #[arg(long, allow_hyphen_values = true)]
    pub mlx_lm_server_args: Option<String>,
    /// Cores both sides get: llama-server's threads, the pool's threads over all its workers.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ServerWorkload::Chats, ServerWorkload::Dspy, ServerWorkload::MultiTurn, ServerWorkload::Synthetic])]
    pub workloads: Vec<ServerWorkload>,
    /// Prompts per round and workload (multi-turn: conversations x turns instead).
    #[arg(long, default_value_t = 16)]
    pub prompts: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// Rounds per workload; each gives one ratio.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// llama-server parallelism to sweep (`-np`; 0: llama-server's automatic slot count, its default).
    #[arg(long, value_delimiter = ',', default_values_t = [0, 2, 4, 8])]
    pub np: Vec<u32>,
    /// Pool shapes to sweep, WORKERSxSLOTS (threads are split evenly between workers).
    #[arg(long, value_delimiter = ',', default_values = ["1x4", "1x8", "2x2"])]
    pub pool_shapes: Vec<String>,
    /// Distinct programs interleaved in the dspy workload.
    #[arg(long, default_value_t = 2)]
    pub programs: usize,
    /// Conversations per round in the multi-turn workload, and the user turns of each.
    #[arg(long, default_value_t = 8)]
    pub conversations: usize,
    #[arg(long, default_value_t = 5)]
    pub turns: usize,
    /// Seed of the generated prompts (chats, dspy, multi-turn); each round takes the next ones.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Context per slot on both sides.
    #[arg(long, default_value_t = 2048)]
    pub ctx_per_slot: u32,
    /// Each pool worker's host-memory prompt store in MiB (the worker's --prompt-cache-mib; default:
    /// the worker's). llama-server keeps its own (`--cache-ram`, 8 GiB by default).
    #[arg(long)]
    pub prompt_cache_mib: Option<u32>,
    /// More flags for every pool worker, as one string (e.g. "--kv-layout unified --batch-tokens 1024"):
    /// for measuring the worker's settings against each other.
    #[arg(long, allow_hyphen_values = true)]
    pub worker_args: Option<String>,
    /// More flags for every llama-server, as one string (e.g. "-ctk q8_0 -ctv q8_0"): the peer's side
    /// of --worker-args, so that a setting is compared with the same setting.
    #[arg(long, allow_hyphen_values = true)]
    pub llama_server_args: Option<String>,
    /// Simulated hosts (needs root): N network namespaces on this machine, each with its share of the
    /// cores (CPU affinity). The pool (one coordinator, one worker per host) against N llama-servers,
    /// one per host, behind `--balancer` in the client.
    #[arg(long)]
    pub hosts: Option<usize>,
    /// How the client spreads requests over the N llama-servers with --hosts.
    #[arg(long, value_enum, default_value_t = bench_client::balancer::Policy::RoundRobin)]
    pub balancer: bench_client::balancer::Policy,
    /// Slots of each host's worker with --hosts.
    #[arg(long, default_value_t = 4)]
    pub host_slots: u32,
    /// The script that makes the namespaces (--hosts).
    #[arg(long, default_value = "scripts/multihost/netns.sh")]
    pub netns_script: PathBuf,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub files: crate::WorkerFiles,
}

/// The flags every pool worker gets besides its shape.
pub(crate) fn pool_worker_args(args: &ServerBenchArgs) -> Vec<String> {
    let mut flags = vec!["--ctx-per-slot".into(), args.ctx_per_slot.to_string()];
    if let Some(mib) = args.prompt_cache_mib {
        flags.extend(["--prompt-cache-mib".into(), mib.to_string()]);
    }
    flags.extend(args.worker_args.iter().flat_map(|a| a.split_whitespace().map(String::from)));
    flags
}

/// The flags every llama-server gets besides its model, address, threads, context and slots.
pub(crate) fn llama_server_args(args: &ServerBenchArgs) -> Vec<String> {
    args.llama_server_args.iter().flat_map(|a| a.split_whitespace().map(String::from)).collect()
}

/// A pool shape: workers x slots.
fn parse_shape(shape: &str) -> anyhow::Result<(usize, u32)> {
    let (workers, slots) = shape.split_once('x').with_context(|| format!("--pool-shapes {shape:?}: expected WORKERSxSLOTS"))?;
    let (workers, slots): (usize, u32) = (workers.parse()?, slots.parse()?);
    anyhow::ensure!(workers >= 1 && slots >= 1, "--pool-shapes {shape:?}: at least 1x1");
    Ok((workers, slots))
}

/// One side's figures for one round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Round {
    pub(crate) prompts_per_s: f64,
    output_tokens_per_s: f64,
}

pub(crate) fn round_of(records: &[RequestRecord], wall_s: f64) -> Round {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok).collect();
    Round {
        prompts_per_s: ok.len() as f64 / wall_s.max(1e-9),
        output_tokens_per_s: ok.iter().map(|r| f64::from(r.completion_tokens)).sum::<f64>() / wall_s.max(1e-9),
    }
}

/// One side's figures for one workload over all its rounds.
fn side_summary(rounds: &[Round], records: &[RequestRecord]) -> Value {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok).collect();
    let q = |values: &[f64], p: f64| quantile(values, p).unwrap_or(0.0);
    let ttft: Vec<f64> = ok.iter().map(|r| r.ttft_ms).collect();
    let e2e: Vec<f64> = ok.iter().map(|r| r.e2e_ms).collect();
    let prompt: u64 = ok.iter().map(|r| u64::from(r.prompt_tokens)).sum();
    let cached: u64 = ok.iter().map(|r| u64::from(r.cached_tokens.min(r.prompt_tokens))).sum();
    let spread = |f: fn(&Round) -> f64| {
        let s = Spread::of(&rounds.iter().map(f).collect::<Vec<_>>());
        json!({"median": s.median, "min": s.min, "max": s.max})
    };
    json!({
        "prompts_per_s": spread(|r| r.prompts_per_s),
        "output_tokens_per_s": spread(|r| r.output_tokens_per_s),
        "ttft_ms": {"p50": q(&ttft, 0.5), "p95": q(&ttft, 0.95)},
        "e2e_ms": {"p50": q(&e2e, 0.5), "p95": q(&e2e, 0.95)},
        "ok": ok.len(),
        "failed": records.len() - ok.len(),
        "first_error": records.iter().find_map(|r| r.error.clone()),
        "prompt_cached_share": if prompt > 0 { cached as f64 / prompt as f64 } else { 0.0 },
        "prompt_tokens_per_request": prompt as f64 / ok.len().max(1) as f64,
        "prompt_tokens_computed_per_request": (prompt - cached) as f64 / ok.len().max(1) as f64,
    })
}

/// A pool of `workers` x `slots` behind an in-process coordinator with its HTTP API.
pub(crate) struct Pool {
    pub(crate) coordinator: LocalCoordinator,
    pub(crate) workers: LocalPool,
}

/// What every pool of a comparison is started with; only its shape changes.
#[derive(Clone)]
pub(crate) struct PoolSetup {
    pub(crate) worker_bin: PathBuf,
    pub(crate) model: PathBuf,
    /// Over all its workers.
    pub(crate) threads: u32,
    /// Given to every worker as they are (engine, context, prompt store, --worker-args).
    pub(crate) worker_args: Vec<String>,
    pub(crate) scheduler: SchedulerConfig,
}

impl Pool {
    pub(crate) async fn start(setup: &PoolSetup, (workers, slots): (usize, u32)) -> anyhow::Result<Self> {
        let coordinator = LocalCoordinator::start(setup.scheduler.clone()).await?;
        let spec = WorkerSpec {
            binary: setup.worker_bin.clone(),
            model: setup.model.clone(),
            coordinator: coordinator.url.clone(),
            threads: (setup.threads / workers as u32).max(1),
            slots,
            extra_args: setup.worker_args.clone(),
        };
        let workers = LocalPool::start(&spec, workers, &coordinator.client, STARTUP_TIMEOUT).await.map_err(anyhow::Error::msg)?;
        Ok(Self { coordinator, workers })
    }

    pub(crate) async fn stop(self) {
        self.workers.stop(STOP_GRACE).await;
        self.coordinator.stop().await;
    }

    /// The workers' peak resident memory, summed, MiB (the coordinator runs inside this process and
    /// is not counted; it holds queues, not models).
    pub(crate) fn peak_rss_mib(&self) -> f64 {
        self.workers.workers.iter().map(|w| peak_rss_mib(Some(w.pid))).sum()
    }
}

/// What one round of a workload sends.
pub(crate) enum RoundLoad {
    /// Independent prompts, `--clients` in flight.
    Prompts(Vec<PredictRequest>),
    /// Conversations, `--clients` at once, each sending its turns in order.
    Conversations(Vec<Conversation>),
}

/// Round `round`'s load: the generated workloads take prompts no earlier round sent.
fn load_for(workload: ServerWorkload, args: &ServerBenchArgs, model: &Path, round: usize) -> anyhow::Result<RoundLoad> {
    let offset = (round * args.prompts) as u64;
    Ok(RoundLoad::Prompts(match workload {
        ServerWorkload::Chats => fresh::chats(args.seed, offset, args.prompts, args.max_tokens),
        ServerWorkload::Dspy => fresh::dspy(args.seed, offset, args.prompts, args.programs, args.max_tokens),
        ServerWorkload::MultiTurn => {
            return Ok(RoundLoad::Conversations(multi_turn::conversations(
                args.seed,
                round * args.conversations,
                args.conversations,
                args.turns,
            )));
        }
        ServerWorkload::Synthetic => {
            let format = model_input::prompt_format::PromptFormat::load(model)?;
            workload::synthetic(&format.tokenizer, 128, args.max_tokens, args.prompts)?
        }
        ServerWorkload::Repeats => workload::builtin_workload(args.prompts, args.max_tokens),
    }))
}

async fn measure(url: &str, load: &RoundLoad, clients: usize, max_tokens: u32) -> (Vec<RequestRecord>, f64) {
    measure_target(openai(url), load, clients, max_tokens).await
}

fn openai(url: &str) -> Target {
    Target::OpenAi(OpenAiClient::new(url, None, Some("bench".into())).expect("an http:// URL"))
}

/// Every workload of `args` on a fresh peer (`start_peer`) and a fresh pool of `shape` (one workload's
/// cached prefixes do not help the next), compared round by round, each side's peak memory added.
/// Returns the workloads' part of the report and the kernels the pools computed with.
pub(crate) async fn compare_workloads<F: std::future::Future<Output = anyhow::Result<PeerServer>>>(
    args: &ServerBenchArgs,
    setup: &PoolSetup,
    shape: (usize, u32),
    peer_name: &str,
    start_peer: impl Fn() -> F,
    client: impl Fn(&str) -> Target,
) -> anyhow::Result<(serde_json::Map<String, Value>, Vec<String>)> {
    let mut workloads = serde_json::Map::new();
    let mut kernels: Vec<String> = Vec::new();
    for &workload in &args.workloads {
        let server = start_peer().await?;
        let pool = Pool::start(setup, shape).await?;
        add_kernels(&mut kernels, &pool.workers.cpu_kernels);
        let pool_url = pool.coordinator.http_url.clone();
        let mut summary = compare_rounds(workload, args, &setup.model, peer_name, || client(&pool_url), || client(&server.url)).await?;
        add_peak_memory(&mut summary, pool.peak_rss_mib(), peak_rss_mib(server.pid()));
        pool.stop().await;
        server.stop().await;
        workloads.insert(workload.name().into(), summary);
    }
    Ok((workloads, kernels))
}

/// Every round of one workload against both sides, in alternating order so that drift on the machine
/// hits both alike; each round's load is new to both. Returns the workload's part of the report.
pub(crate) async fn compare_rounds(
    workload: ServerWorkload,
    args: &ServerBenchArgs,
    model: &Path,
    server_name: &str,
    pool: impl Fn() -> Target,
    server: impl Fn() -> Target,
) -> anyhow::Result<Value> {
    let (mut pool_rounds, mut server_rounds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pool_records, mut server_records) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let load = load_for(workload, args, model, round)?;
        let mut measured = [None, None];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let target = if side == 0 { pool() } else { server() };
            let (records, wall) = measure_target(target, &load, args.clients, args.max_tokens).await;
            measured[side] = Some((round_of(&records, wall), records));
        }
        let [Some((pool_round, p)), Some((server_round, s))] = measured else { unreachable!("both sides ran") };
        eprintln!(
            "== {} round {}: pool {:.3} prompts/s, {server_name} {:.3} prompts/s",
            workload.name(),
            round + 1,
            pool_round.prompts_per_s,
            server_round.prompts_per_s
        );
        ratios.push(pool_round.prompts_per_s / server_round.prompts_per_s.max(1e-9));
        pool_rounds.push(pool_round);
        server_rounds.push(server_round);
        pool_records.extend(p);
        server_records.extend(s);
    }
    let ratio = Spread::of(&ratios);
    Ok(json!({
        "pool": side_summary(&pool_rounds, &pool_records),
        "peer": side_summary(&server_rounds, &server_records),
        "ratio_prompts_per_s": {"median": ratio.median, "min": ratio.min, "max": ratio.max},
    }))
}

/// Adds the kernels a pool's workers reported to those seen in the run, each once.
pub(crate) fn add_kernels(seen: &mut Vec<String>, reported: &[String]) {
    *seen = bench_client::report::distinct_kernels(seen.iter().chain(reported).map(String::as_str));
}

/// The report's line for what the pool computed with.
pub(crate) fn pool_build(kernels: &[String]) -> String {
    if kernels.is_empty() { "kernels not reported".to_string() } else { format!("{} kernels", kernels.join(" | ")) }
}

/// One round of `load` against `target`: its records and wall time.
pub(crate) async fn measure_target(target: Target, load: &RoundLoad, clients: usize, max_tokens: u32) -> (Vec<RequestRecord>, f64) {
    match load {
        RoundLoad::Prompts(prompts) => run_closed_loop(target, prompts, clients).await,
        RoundLoad::Conversations(conversations) => run_conversations(target, conversations.clone(), clients, max_tokens).await,
    }
}

/// Each pool shape on the sweep's prompts; the fastest shape and its prompts/s. `target` makes the
/// client for the pool's HTTP URL.
pub(crate) async fn sweep_pool_shapes(
    shapes: &[(usize, u32)],
    setup: &PoolSetup,
    args: &ServerBenchArgs,
    sweep_prompts: &RoundLoad,
    target: impl Fn(&str) -> Target,
) -> anyhow::Result<((usize, u32), f64)> {
    let mut best_shape = (shapes[0], 0.0);
    for &shape in shapes {
        let pool = Pool::start(setup, shape).await?;
        let (records, wall) = measure_target(target(&pool.coordinator.http_url), sweep_prompts, args.clients, args.max_tokens).await;
        pool.stop().await;
        let round = round_of(&records, wall);
        eprintln!("== sweep: pool {}x{}: {:.2} prompts/s", shape.0, shape.1, round.prompts_per_s);
        if round.prompts_per_s > best_shape.1 {
            best_shape = (shape, round.prompts_per_s);
        }
    }
    Ok(best_shape)
}

/// Pool shapes from their `WORKERSxSLOTS` names.
pub(crate) fn pool_shapes(args: &ServerBenchArgs) -> anyhow::Result<Vec<(usize, u32)>> {
    args.pool_shapes.iter().map(|s| parse_shape(s)).collect()
}

/// Adds each side's peak resident memory (MiB) to a workload's summary.
pub(crate) fn add_peak_memory(summary: &mut Value, pool_mib: f64, peer_mib: f64) {
    summary["pool"]["peak_rss_mib"] = json!(pool_mib);
    summary["peer"]["peak_rss_mib"] = json!(peer_mib);
}

pub async fn run_server_bench(args: ServerBenchArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        !args.llama_server.is_empty(),
        "--llama-server: give the llama-server binary to compare with (scripts/server-bench.sh builds it)"
    );
    for binary in &args.llama_server {
        anyhow::ensure!(binary.is_file(), "--llama-server {} does not exist", binary.display());
    }
    anyhow::ensure!(args.rounds >= 1 && args.prompts >= 1 && args.clients >= 1, "--rounds, --prompts and --clients must be at least 1");
    let shapes = pool_shapes(&args)?;
    let (worker_bin, model) = args.files.resolve().await?;

    // The sweep: short chats, one round each, none of them sent again later; the best prompts/s wins
    // on each side. Every llama-server build is tried with every -np; one that cannot run here is
    // reported and left out.
    let sweep_prompts = RoundLoad::Prompts(fresh::chats(args.seed.wrapping_add(1), 0, args.prompts.min(16), args.max_tokens));
    let mut best_server: Option<(&PathBuf, u32, f64)> = None;
    let mut builds_not_run = Vec::new();
    for binary in &args.llama_server {
        for &np in &args.np {
            let extra = llama_server_args(&args);
            let spec = LlamaServerSpec { binary, model: &model, np, threads: args.threads, ctx_per_slot: args.ctx_per_slot, extra: &extra };
            let started = PeerServer::llama_server(&spec).await;
            let server = match started {
                Ok(server) => server,
                Err(error) => {
                    let build = llama_build_name(binary);
                    eprintln!("== sweep: llama-server ({build}) does not run here: {error:#}");
                    builds_not_run.push(json!({"build": build, "binary": binary.display().to_string(), "error": format!("{error:#}")}));
                    break;
                }
            };
            let (records, wall) = measure(&server.url, &sweep_prompts, args.clients, args.max_tokens).await;
            server.stop().await;
            let round = round_of(&records, wall);
            eprintln!("== sweep: llama-server ({}) -np {}: {:.2} prompts/s", llama_build_name(binary), np_name(np), round.prompts_per_s);
            if best_server.is_none_or(|(_, _, best)| round.prompts_per_s > best) {
                best_server = Some((binary, np, round.prompts_per_s));
            }
        }
    }
    let (server_binary, np, server_sweep) = best_server.ok_or_else(|| anyhow::anyhow!("no llama-server build runs on this machine"))?;
    let setup = PoolSetup {
        worker_bin: worker_bin.clone(),
        model: model.clone(),
        threads: args.threads,
        worker_args: pool_worker_args(&args),
        scheduler: SchedulerConfig::default(),
    };
    let best_shape = sweep_pool_shapes(&shapes, &setup, &args, &sweep_prompts, openai).await?;
    let shape = best_shape.0;
    eprintln!(
        "== llama-server ({}) -np {} -t {} against the pool {}x{} ({} thread(s) per worker)",
        llama_build_name(server_binary),
        np_name(np),
        args.threads,
        shape.0,
        shape.1,
        (args.threads / shape.0 as u32).max(1)
    );

    let server_args = llama_server_args(&args);
    let spec = LlamaServerSpec {
        binary: server_binary,
        model: &model,
        np,
        threads: args.threads,
        ctx_per_slot: args.ctx_per_slot,
        extra: &server_args,
    };
    let start_peer = || PeerServer::llama_server(&spec);
    let (workloads, kernels) = compare_workloads(&args, &setup, shape, "llama-server", start_peer, openai).await?;
    let peer = json!({
        "name": "llama-server",
        "describe": format!("llama-server ({}) -np {}", llama_build_name(server_binary), np_name(np)),
        "binary": server_binary.display().to_string(),
        "build": llama_build_name(server_binary),
        "np": np_name(np),
        "sweep_prompts_per_s": server_sweep,
        "builds_not_run": builds_not_run,
        "extra_args": args.llama_server_args.clone().unwrap_or_default(),
    });
    one_host_report(&args, &model, None, peer, best_shape, &kernels, workloads)
}

/// The report of a one-host comparison, whichever the peer: the run's settings, the peer as `peer`
/// describes it, the pool's shape (and its sweep figure) and kernels, the workloads' rounds. Printed,
/// and written as JSON where `--json` asks.
pub(crate) fn one_host_report(
    args: &ServerBenchArgs,
    model: &Path,
    engine: Option<&str>,
    peer: Value,
    (shape, shape_sweep): ((usize, u32), f64),
    kernels: &[String],
    workloads: serde_json::Map<String, Value>,
) -> anyhow::Result<Value> {
    let machine = bench_client::report::Machine::this().with_worker_kernels(kernels);
    let mut result = json!({
        "machine": machine.describe(),
        "model": model.display().to_string(),
        "threads": args.threads,
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "peer": peer,
        "pool_build": pool_build(kernels),
        "pool": {"workers": shape.0, "slots": shape.1, "prompt_cache_mib": args.prompt_cache_mib.unwrap_or(modelpool::DEFAULT_PROMPT_CACHE_MIB), "sweep_prompts_per_s": shape_sweep, "worker_args": args.worker_args.clone().unwrap_or_default()},
        "workloads": workloads,
    });
    if let Some(engine) = engine {
        result["engine"] = json!(engine);
    }
    print_result(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(result)
}

pub(crate) fn print_result(result: &Value) {
    let peer = result["peer"]["name"].as_str().unwrap_or("peer");
    println!("\nmachine: {}", result["machine"].as_str().unwrap_or(""));
    println!(
        "pool {}x{} ({} MiB prompt store per worker; {}) vs {}, {} threads each, {} clients, max_tokens {}, {} rounds",
        result["pool"]["workers"],
        result["pool"]["slots"],
        result["pool"]["prompt_cache_mib"],
        result["pool_build"].as_str().unwrap_or(""),
        result["peer"]["describe"].as_str().unwrap_or(peer),
        result["threads"],
        result["clients"],
        result["max_tokens"],
        result["rounds"]
    );
    // Settings measured against each other are named on the report, not only in the command line.
    for (side, flags) in [("pool workers", &result["pool"]["worker_args"]), (peer, &result["peer"]["extra_args"])] {
        if let Some(flags) = flags.as_str().filter(|f| !f.is_empty()) {
            println!("{side} also got: {flags}");
        }
    }
    println!(
        "{:<14} {:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>6}",
        "workload",
        "server",
        "prompt/s",
        "out tok/s",
        "ttft p50",
        "ttft p95",
        "e2e p50",
        "e2e p95",
        "cached",
        "computed",
        "peak MiB",
        "failed"
    );
    let Some(workloads) = result["workloads"].as_object() else { return };
    for (name, w) in workloads {
        for (side, label) in [("pool", "pool"), ("peer", peer)] {
            let s = &w[side];
            let peak = s["peak_rss_mib"].as_f64().map_or_else(|| "-".to_string(), |m| format!("{m:.0}"));
            println!(
                "{:<14} {:<14} {:>9.3} {:>9.1} {:>8.0}ms {:>8.0}ms {:>8.2}s {:>8.2}s {:>6.0}% {:>9.0} {:>8} {:>6}",
                name,
                label,
                s["prompts_per_s"]["median"].as_f64().unwrap_or(0.0),
                s["output_tokens_per_s"]["median"].as_f64().unwrap_or(0.0),
                s["ttft_ms"]["p50"].as_f64().unwrap_or(0.0),
                s["ttft_ms"]["p95"].as_f64().unwrap_or(0.0),
                s["e2e_ms"]["p50"].as_f64().unwrap_or(0.0) / 1000.0,
                s["e2e_ms"]["p95"].as_f64().unwrap_or(0.0) / 1000.0,
                s["prompt_cached_share"].as_f64().unwrap_or(0.0) * 100.0,
                s["prompt_tokens_computed_per_request"].as_f64().unwrap_or(0.0),
                peak,
                s["failed"],
            );
            if let Some(error) = s["first_error"].as_str() {
                println!("{:<14} {:<14} first error: {error}", "", "");
            }
        }
        let r = &w["ratio_prompts_per_s"];
        println!(
            "{:<14} pool ÷ {peer} prompts/s: {:.2} (range {:.2}-{:.2})",
            name,
            r["median"].as_f64().unwrap_or(0.0),
            r["min"].as_f64().unwrap_or(0.0),
            r["max"].as_f64().unwrap_or(0.0)
        );
        let (pool_mib, peer_mib) = (w["pool"]["peak_rss_mib"].as_f64().unwrap_or(0.0), w["peer"]["peak_rss_mib"].as_f64().unwrap_or(0.0));
        if pool_mib > 0.0 && peer_mib > 0.0 {
            println!("{:<14} pool ÷ {peer} peak memory: {:.2}", name, pool_mib / peer_mib);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_shape("2x2").unwrap(), (2, 2));
        assert!(parse_shape("0x4").is_err());
        assert!(parse_shape("4").is_err());
    }

    #[test]
    fn a_round_counts_only_answered_prompts() {
        let records = vec![
            RequestRecord { ok: true, completion_tokens: 10, ..Default::default() },
            RequestRecord { ok: false, completion_tokens: 99, ..Default::default() },
        ];
        let round = round_of(&records, 2.0);
        assert_eq!((round.prompts_per_s, round.output_tokens_per_s), (0.5, 5.0));
    }
}
