//! `run-bench`: the one-command experiment. Starts a coordinator in this process, then for each
//! configuration starts local worker processes, measures through the coordinator with the bench-client
//! library (the same path production requests take), stops the workers and moves on; prints the table
//! and writes JSON.

use std::future::Future;
use std::time::Duration;

use bench_client::memory::MemorySampler;
use bench_client::report::{Report, ScenarioRun};
use bench_client::runner::{poisson_arrivals, progress_bar, run_closed_loop, run_closed_loop_with_progress, run_open_loop};
use bench_client::workload;
use clap::Args;
use modelpool::auth::AuthChannel;
use modelpool::proto::coordinator_client::CoordinatorClient;
use modelpool::{EngineKind, PredictRequest};
use tracing::info;

use crate::local_pool::{LocalCoordinator, LocalPool, WorkerProcess, WorkerSpec, wait_for_workers};
use crate::{STARTUP_TIMEOUT, STOP_GRACE, WorkerFiles};
use coordinator::scheduler::SchedulerConfig;

/// Named groups of configurations for run-bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// 1 worker, 1 slot, 1 request at a time: the original baseline.
    Serial,
    /// 1 worker, 1 slot, max-workers concurrent clients: the app today, waiting behind one lock.
    Lock,
    /// 2..=max-workers workers with 1 slot each, as many requests in flight.
    Replicas,
    /// 1 worker with 2..=max-slots slots, as many requests in flight.
    Batched,
    /// Every workers x slots combination (and serial and lock).
    Grid,
}

#[derive(Debug, Args)]
pub struct RunBenchArgs {
    /// Quick check: 3 prompts on 1 worker (the serial baseline only, one run).
    #[arg(long)]
    pub sanity: bool,
    /// What to measure (comma-separated). The default answers the question whole: serial, the one-lock
    /// app, 2..N processes and 2..B slots in one process, so the recommendation can pick batching.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [Scenario::Serial, Scenario::Lock, Scenario::Replicas, Scenario::Batched]
    )]
    pub scenario: Vec<Scenario>,
    /// Engines to measure (comma-separated; both side by side with `llama,mlx`). Default: the worker's
    /// platform default (mlx on macOS, llama elsewhere).
    #[arg(long, value_delimiter = ',')]
    pub engine: Vec<EngineKind>,
    /// Open loop: prompts arrive as a Poisson process at this rate (prompts/s) instead of a fixed number
    /// in flight. Several (comma-separated) make a rate sweep: every configuration runs at every rate.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Replicas use 2..=N worker processes (MAX_PROCESSES in the original plan).
    #[arg(long, default_value_t = 3)]
    pub max_workers: usize,
    /// Batched runs use 2..=B slots in one worker.
    #[arg(long, default_value_t = 4)]
    pub max_slots: u32,
    /// Runs of each configuration; they take turns so drift hits all alike. Medians and ranges are shown.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Every configuration runs max-workers × this many prompts (PROMPTS_PER_PROCESS in the original plan).
    #[arg(long, default_value_t = 5)]
    pub prompts_per_worker: usize,
    #[command(flatten)]
    pub prompt: bench_client::cli::PromptArgs,
    /// Threads per worker. Default: cores / workers (at least 1), so the pool does not oversubscribe the CPU.
    #[arg(long)]
    pub threads: Option<u32>,
    #[command(flatten)]
    pub report: bench_client::cli::ReportArgs,
    #[command(flatten)]
    pub files: WorkerFiles,
    /// Start each configuration's workers one after another (each loaded and registered before the
    /// next starts) instead of all at once; the memory timeline shows the difference.
    #[arg(long)]
    pub start_one_by_one: bool,
}

/// One configuration to measure: `workers` processes with `slots` slots each, `concurrency` in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Configuration {
    pub name: String,
    pub engine: EngineKind,
    /// Open loop at this many prompts/s; closed loop (`concurrency` in flight) when None.
    pub rate: Option<f64>,
    pub workers: usize,
    pub slots: u32,
    pub concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct RunBenchConfig {
    pub configurations: Vec<Configuration>,
    pub repeats: usize,
    pub prompts: Vec<PredictRequest>,
    /// Replace `prompts` with this many synthetic (input tokens, output tokens) prompts once the model is known.
    pub synthetic: Option<(usize, u32, usize)>,
    pub max_tokens: u32,
    pub files: WorkerFiles,
    pub threads: Option<u32>,
    pub report: bench_client::cli::ReportArgs,
    /// Start workers one after another (each registered before the next starts) instead of all at once.
    pub start_one_by_one: bool,
}

/// The configurations the scenarios name, serial first, each once.
pub fn configurations(scenarios: &[Scenario], max_workers: usize, max_slots: u32) -> Vec<Configuration> {
    let config = |name: String, workers: usize, slots: u32, concurrency: usize| Configuration {
        name,
        engine: EngineKind::platform_default(),
        rate: None,
        workers,
        slots,
        concurrency,
    };
    let mut all = vec![];
    for scenario in scenarios {
        match scenario {
            Scenario::Serial => all.push(config("serial".into(), 1, 1, 1)),
            Scenario::Lock => all.push(config(format!("lock-c{max_workers}"), 1, 1, max_workers)),
            Scenario::Replicas => all.extend((2..=max_workers).map(|n| config(format!("replicas-{n}"), n, 1, n))),
            Scenario::Batched => all.extend((2..=max_slots).map(|b| config(format!("batched-{b}"), 1, b, b as usize))),
            Scenario::Grid => {
                all.push(config("serial".into(), 1, 1, 1));
                all.push(config(format!("lock-c{max_workers}"), 1, 1, max_workers));
                for n in 1..=max_workers {
                    for b in 1..=max_slots {
                        all.push(config(format!("n{n}xb{b}"), n, b, n * b as usize));
                    }
                }
            }
        }
    }
    let mut unique: Vec<Configuration> = Vec::new();
    for c in all {
        if !unique.iter().any(|u| (u.workers, u.slots, u.concurrency) == (c.workers, c.slots, c.concurrency)) {
            unique.push(c);
        }
    }
    // The baseline runs first in every round.
    unique.sort_by_key(|c| c.name != "serial");
    unique
}

/// Every shape for every engine; with more than one engine, names carry the engine (`mlx/serial`), and
/// each engine's serial run is the baseline of its own rows.
pub fn with_engines(shapes: Vec<Configuration>, engines: &[EngineKind]) -> Vec<Configuration> {
    let engines = if engines.is_empty() { vec![EngineKind::platform_default()] } else { engines.to_vec() };
    let mut out = Vec::new();
    for engine in &engines {
        for shape in &shapes {
            let name = if engines.len() > 1 { format!("{}/{}", engine.as_str(), shape.name) } else { shape.name.clone() };
            out.push(Configuration { name, engine: *engine, ..shape.clone() });
        }
    }
    out
}

/// Every shape at every open-loop rate (`replicas-2@4/s`); closed loop when no rate is given.
pub fn with_rates(shapes: Vec<Configuration>, rates: &[f64]) -> Vec<Configuration> {
    if rates.is_empty() {
        return shapes;
    }
    shapes
        .into_iter()
        .flat_map(|shape| {
            rates.iter().map(move |&rate| Configuration { name: format!("{}@{rate}/s", shape.name), rate: Some(rate), ..shape.clone() })
        })
        .collect()
}

impl TryFrom<RunBenchArgs> for RunBenchConfig {
    type Error = anyhow::Error;

    fn try_from(args: RunBenchArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(args.max_workers >= 1, "--max-workers must be at least 1");
        anyhow::ensure!(args.prompts_per_worker >= 1, "--prompts-per-worker must be at least 1");
        anyhow::ensure!(args.prompt.max_tokens >= 1, "--max-tokens must be at least 1");
        anyhow::ensure!(args.max_slots >= 1 && args.max_slots <= 64, "--max-slots must be 1 to 64");
        anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
        anyhow::ensure!(args.rate.iter().all(|r| r.is_finite() && *r > 0.0), "--rate must be positive prompts/s");
        let count = if args.sanity { 3 } else { args.max_workers * args.prompts_per_worker };
        let prompts = args.prompt.file_or(|max_tokens| workload::builtin_workload(count, max_tokens))?;
        let synthetic = args.prompt.synthetic_shape()?.map(|(input, output)| (input, output, count));
        Ok(Self {
            synthetic,
            configurations: {
                let shapes = if args.sanity {
                    configurations(&[Scenario::Serial], 1, 1)
                } else {
                    configurations(&args.scenario, args.max_workers, args.max_slots)
                };
                with_rates(with_engines(shapes, &args.engine), &args.rate)
            },
            repeats: if args.sanity { 1 } else { args.repeats },
            prompts,
            max_tokens: args.prompt.max_tokens,
            files: args.files,
            threads: args.threads,
            report: args.report,
            start_one_by_one: args.start_one_by_one,
        })
    }
}

/// Runs every configuration; stops early (workers stopped) when `interrupt` resolves.
pub async fn run_bench(config: RunBenchConfig, interrupt: impl Future<Output = ()>) -> anyhow::Result<Report> {
    let (worker_bin, model) = config.files.resolve().await?;
    if model_input::model_folder::is_folder(&model) && config.configurations.iter().any(|c| c.engine == EngineKind::Llama) {
        anyhow::bail!("{} is an mlx-lm model folder: llama.cpp needs a GGUF file; run it with --engine mlx", model.display());
    }
    let mut config = config;
    if let Some((input, output, count)) = config.synthetic {
        let format = model_input::prompt_format::PromptFormat::load(&model)?;
        config.prompts = workload::synthetic(&format.tokenizer, input, output, count)?;
        config.max_tokens = output;
    }

    let scheduler =
        SchedulerConfig { heartbeat_interval: Duration::from_millis(500), heartbeat_timeout: Duration::from_secs(3), ..Default::default() };
    let coordinator = LocalCoordinator::start(scheduler).await?;
    let client = coordinator.client.clone();
    let coordinator_url = coordinator.url.clone();

    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let measure = async {
        let mut runs = Vec::new();
        let mut skipped = Vec::new();
        for (repeat, index) in interleaved(config.configurations.len(), config.repeats) {
            let configuration = &config.configurations[index];
            if let Some(reason) = fit_check(&model, configuration) {
                if repeat == 0 {
                    eprintln!("-- skipping {}: {reason}", configuration.name);
                    skipped.push(format!("{}: {reason}", configuration.name));
                }
                continue;
            }
            let threads = config.threads.unwrap_or((cores / configuration.workers as u32).max(1));
            if threads * configuration.workers as u32 > cores {
                tracing::warn!(
                    workers = configuration.workers,
                    threads,
                    cores,
                    "{} workers x {threads} threads oversubscribe {cores} cores: they will slow each other down",
                    configuration.workers
                );
            }
            let spec = WorkerSpec {
                binary: worker_bin.clone(),
                model: model.clone(),
                coordinator: coordinator_url.clone(),
                threads,
                slots: configuration.slots,
                extra_args: vec!["--engine".into(), configuration.engine.as_str().into()],
            };
            eprintln!("-- run {}/{}", repeat + 1, config.repeats);
            runs.push(measure_configuration(&client, &spec, configuration, repeat, &config.prompts, config.start_one_by_one).await?);
        }
        anyhow::Ok((runs, skipped))
    };
    let outcome = tokio::select! {
        runs = measure => runs,
        () = interrupt => Err(anyhow::anyhow!("interrupted; workers stopped")),
    };
    coordinator.stop().await;
    let (runs, skipped) = outcome?;

    let model_name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut report = Report::new("coordinator run-bench", model_name, config.max_tokens, config.report.slo(), runs);
    report.skipped = skipped;
    report.worker_binary_sha256 = model_input::model_cache::sha256_file(&worker_bin).ok();
    // The roofline reads a GGUF's tensor table; a folder's safetensors are not read for it.
    if !model_input::model_folder::is_folder(&model)
        && let Err(e) = report.attach_roofline(&model)
    {
        tracing::warn!(error = %e, "no roofline: the model's GGUF metadata could not be read");
    }
    config.report.emit(&report)?;
    Ok(report)
}

async fn measure_configuration(
    client: &CoordinatorClient<AuthChannel>,
    spec: &WorkerSpec,
    configuration: &Configuration,
    repeat: usize,
    prompts: &[PredictRequest],
    one_by_one: bool,
) -> anyhow::Result<ScenarioRun> {
    info!(config = %configuration.name, workers = configuration.workers, threads = spec.threads, "starting workers");
    eprintln!(
        "== {} ({}): {} worker(s) x {} slot(s) x {} thread(s), {} prompts, {} in flight",
        configuration.name,
        configuration.engine.as_str(),
        configuration.workers,
        configuration.slots,
        spec.threads,
        prompts.len(),
        configuration.concurrency
    );
    // Memory is sampled from the moment each worker exists, so the report shows loading too.
    let sampler = MemorySampler::start(client.clone(), &[]);
    let mut pool = LocalPool::default();
    let waves: Vec<usize> = if one_by_one { vec![1; configuration.workers] } else { vec![configuration.workers] };
    for wave in waves {
        for _ in 0..wave {
            let worker = WorkerProcess::spawn(spec)?;
            sampler.add_pid(worker.pid);
            pool.workers.push(worker);
        }
        let expected = pool.workers.len();
        match wait_for_workers(&mut client.clone(), expected, STARTUP_TIMEOUT, &mut pool).await {
            Ok(kernels) => pool.cpu_kernels = kernels,
            Err(e) => {
                pool.stop(STOP_GRACE).await;
                anyhow::bail!(e);
            }
        }
    }
    // One short request per slot first, so first-touch page faults are not measured.
    let warm_up: Vec<PredictRequest> = prompts
        .iter()
        .cycle()
        .take(configuration.concurrency)
        .map(|p| {
            let mut p = p.clone();
            p.sampling.max_tokens = p.sampling.max_tokens.min(4);
            p
        })
        .collect();
    run_closed_loop(client.clone(), &warm_up, configuration.concurrency).await;

    let progress = progress_bar(&configuration.name, prompts.len());
    let run = async {
        match configuration.rate {
            // The same arrival schedule for every configuration and repeat: only the pool differs.
            Some(rate) => run_open_loop(client.clone(), prompts, &poisson_arrivals(prompts.len(), rate, 42), Some(&progress)).await,
            None => run_closed_loop_with_progress(client.clone(), prompts, configuration.concurrency, Some(&progress)).await,
        }
    };
    // A run that makes the machine swap measures the disk, not the pool: stop it and say so.
    let (records, wall_s, stopped) = tokio::select! {
        (records, wall_s) = run => (records, wall_s, None),
        () = sampler.swapping() => (Vec::new(), 0.0, Some("the machine started swapping; results discarded".to_string())),
    };
    progress.finish();
    let memory = sampler.finish().await;
    let cpu_kernels = std::mem::take(&mut pool.cpu_kernels);
    pool.stop(STOP_GRACE).await;
    wait_until_empty(client).await;
    Ok(ScenarioRun {
        cpu_kernels,
        name: configuration.name.clone(),
        engine: configuration.engine.as_str().to_string(),
        repeat,
        workers: configuration.workers,
        slots_per_worker: spec.slots,
        threads_per_worker: spec.threads,
        concurrency: configuration.concurrency,
        wall_s,
        records,
        memory,
        stopped,
    })
}

/// The order runs happen in: round after round, every configuration once per round, so that drift on
/// the machine (other tenants, thermal state) falls on all configurations alike rather than on the
/// ones measured last. Yields (repeat, configuration index).
pub fn interleaved(configurations: usize, repeats: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..repeats).flat_map(move |repeat| (0..configurations).map(move |index| (repeat, index)))
}

/// Memory a worker needs beyond weights and KV cache (runtime, buffers), measured here at about 30 MiB.
const WORKER_OVERHEAD: u64 = 48 << 20;

/// Whether a configuration fits in the memory available now; the reason when it does not. llama.cpp
/// workers share one memory-mapped copy of the weights; MLX workers each hold their own.
pub fn fit_check(model: &std::path::Path, configuration: &Configuration) -> Option<String> {
    let weights = model_input::model_folder::model_bytes(model);
    let kv_per_token = bench_client::roofline::ModelTraffic::from_gguf(model).map(|t| t.kv_bytes_per_context_token).unwrap_or(0);
    let private = kv_per_token * u64::from(modelpool::DEFAULT_CONTEXT_PER_SLOT) * u64::from(configuration.slots) + WORKER_OVERHEAD;
    let workers = configuration.workers as u64;
    let needed = match configuration.engine {
        EngineKind::Llama => weights + workers * private,
        EngineKind::Mlx => workers * (weights + private),
    };
    let available = modelpool::memory::SystemMemory::read().available_bytes;
    // Leave a tenth for everything else, so that the measurement never makes the machine swap.
    (needed > available / 10 * 9)
        .then(|| format!("needs about {} MiB ({} workers), {} MiB available: it would swap", needed >> 20, workers, available >> 20))
}

/// Stopped workers deregister; wait for that so the next configuration starts from an empty pool.
async fn wait_until_empty(client: &CoordinatorClient<AuthChannel>) {
    let mut client = client.clone();
    for _ in 0..100 {
        match client.list_workers(modelpool::proto::ListWorkersRequest {}).await {
            Ok(list) if list.get_ref().workers.is_empty() => return,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_and_replicas_are_the_baseline_then_two_to_n_processes() {
        let shapes: Vec<_> = configurations(&[Scenario::Serial, Scenario::Replicas], 3, 4)
            .into_iter()
            .map(|c| (c.name, c.workers, c.slots, c.concurrency))
            .collect();
        assert_eq!(shapes, vec![("serial".into(), 1, 1, 1), ("replicas-2".into(), 2, 1, 2), ("replicas-3".into(), 3, 1, 3)]);
    }

    #[test]
    fn the_grid_holds_every_shape_once_with_serial_first() {
        let grid = configurations(&[Scenario::Batched, Scenario::Grid], 2, 4);
        assert_eq!(grid[0].name, "serial");
        // serial, lock-c2, then 2 workers x 4 slot counts minus n1xb1 (= serial); batched-b = n1xb{b}
        assert_eq!(grid.len(), 2 + 8 - 1);
        assert!(grid.iter().any(|c| c.name == "batched-4" && (c.workers, c.slots, c.concurrency) == (1, 4, 4)));
        assert!(grid.iter().any(|c| c.name == "lock-c2" && (c.workers, c.slots, c.concurrency) == (1, 1, 2)));
        assert!(grid.iter().any(|c| (c.workers, c.slots, c.concurrency) == (2, 4, 8)));
        assert!(!grid.iter().any(|c| c.name == "n1xb4"), "a shape already named is not repeated");
    }

    #[test]
    fn two_engines_run_side_by_side_with_their_own_baselines() {
        let shapes = configurations(&[Scenario::Serial, Scenario::Batched], 2, 2);
        let both = with_engines(shapes, &[EngineKind::Llama, EngineKind::Mlx]);
        let names: Vec<_> = both.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["llama/serial", "llama/batched-2", "mlx/serial", "mlx/batched-2"]);
        assert!(both.iter().all(|c| c.name.starts_with(c.engine.as_str())));
    }

    #[test]
    fn a_configuration_that_would_swap_is_refused_with_the_numbers() {
        let model = model_input::model_cache::ensure_default_model().unwrap();
        let shape = |engine, workers| Configuration { name: "x".into(), engine, rate: None, workers, slots: 1, concurrency: workers };
        assert_eq!(fit_check(&model, &shape(EngineKind::Llama, 1)), None);
        let reason = fit_check(&model, &shape(EngineKind::Mlx, 100_000)).expect("100k private copies cannot fit");
        assert!(reason.contains("would swap") && reason.contains("100000 workers"), "{reason}");
    }

    #[test]
    fn a_rate_sweep_runs_every_shape_at_every_rate() {
        let swept = with_rates(configurations(&[Scenario::Serial, Scenario::Replicas], 2, 1), &[1.0, 2.5]);
        let names: Vec<_> = swept.iter().map(|c| (c.name.as_str(), c.rate)).collect();
        assert_eq!(
            names,
            vec![("serial@1/s", Some(1.0)), ("serial@2.5/s", Some(2.5)), ("replicas-2@1/s", Some(1.0)), ("replicas-2@2.5/s", Some(2.5))]
        );
        assert_eq!(with_rates(configurations(&[Scenario::Serial], 1, 1), &[]).len(), 1);
    }

    #[test]
    fn runs_take_turns_round_by_round() {
        let order: Vec<_> = interleaved(3, 2).collect();
        assert_eq!(order, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
        assert_eq!(interleaved(0, 3).count(), 0);
    }
}
