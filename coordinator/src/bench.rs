//! `run-bench`: the one-command experiment. Starts a coordinator in this process, then for each
//! configuration starts local worker processes, measures through the coordinator with the bench-client
//! library (the same path production requests take), stops the workers and moves on; prints the table
//! and writes JSON.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bench_client::memory::MemorySampler;
use bench_client::report::{Report, ScenarioRun};
use bench_client::runner::run_closed_loop;
use bench_client::workload;
use modelpool::PredictRequest;
use modelpool::proto::coordinator_client::CoordinatorClient;
use tonic::transport::Channel;
use tracing::info;

use crate::config::RunBenchArgs;
use crate::local_pool::{LocalCoordinator, LocalPool, WorkerSpec, find_worker_binary};
use crate::scheduler::SchedulerConfig;

/// Workers have this long to load the model and register.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// One configuration to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Configuration {
    pub name: String,
    pub workers: usize,
    pub concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct RunBenchConfig {
    pub configurations: Vec<Configuration>,
    pub prompts: Vec<PredictRequest>,
    pub max_tokens: u32,
    pub model: Option<PathBuf>,
    pub threads: Option<u32>,
    pub json: Option<PathBuf>,
    pub show_outputs: bool,
    pub worker_bin: Option<PathBuf>,
}

/// The serial baseline (one worker, one prompt at a time), then 2..=max_workers workers with as many
/// prompts in flight as workers.
pub fn configurations(max_workers: usize, sanity: bool) -> Vec<Configuration> {
    let mut configurations = vec![Configuration { name: "serial".into(), workers: 1, concurrency: 1 }];
    if !sanity {
        for n in 2..=max_workers {
            configurations.push(Configuration { name: format!("parallel-{n}"), workers: n, concurrency: n });
        }
    }
    configurations
}

impl TryFrom<RunBenchArgs> for RunBenchConfig {
    type Error = anyhow::Error;

    fn try_from(args: RunBenchArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(args.max_workers >= 1, "--max-workers must be at least 1");
        anyhow::ensure!(args.prompts_per_worker >= 1, "--prompts-per-worker must be at least 1");
        anyhow::ensure!(args.max_tokens >= 1, "--max-tokens must be at least 1");
        let count = if args.sanity { 3 } else { args.max_workers * args.prompts_per_worker };
        let prompts = match &args.prompts {
            Some(path) => workload::load_jsonl(path, args.max_tokens)?,
            None => workload::builtin_workload(count, args.max_tokens),
        };
        Ok(Self {
            configurations: configurations(args.max_workers, args.sanity),
            prompts,
            max_tokens: args.max_tokens,
            model: args.model,
            threads: args.threads,
            json: args.json,
            show_outputs: args.show_outputs,
            worker_bin: args.worker_bin,
        })
    }
}

/// Runs every configuration; stops early (workers stopped) when `interrupt` resolves.
pub async fn run_bench(config: RunBenchConfig, interrupt: impl Future<Output = ()>) -> anyhow::Result<Report> {
    let worker_bin = find_worker_binary(config.worker_bin.as_deref()).map_err(anyhow::Error::msg)?;
    let explicit = config.model.clone();
    let model = tokio::task::spawn_blocking(move || modelpool::model_cache::resolve_model(explicit.as_deref())).await??;

    let scheduler = SchedulerConfig { heartbeat_interval: Duration::from_millis(500), heartbeat_timeout: Duration::from_secs(3), ..Default::default() };
    let coordinator = LocalCoordinator::start(scheduler).await?;
    let client = coordinator.client.clone();
    let coordinator_url = coordinator.url.clone();

    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let measure = async {
        let mut runs = Vec::new();
        for configuration in &config.configurations {
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
                slots: 1,
                extra_args: Vec::new(),
            };
            runs.push(measure_configuration(&client, &spec, configuration, &config.prompts).await?);
        }
        anyhow::Ok(runs)
    };
    let outcome = tokio::select! {
        runs = measure => runs,
        () = interrupt => Err(anyhow::anyhow!("interrupted; workers stopped")),
    };
    coordinator.stop().await;
    let runs = outcome?;

    let model_name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let report = Report::new("coordinator run-bench", model_name, config.max_tokens, runs);
    report.print(config.show_outputs, config.json.as_deref())?;
    Ok(report)
}

async fn measure_configuration(
    client: &CoordinatorClient<Channel>,
    spec: &WorkerSpec,
    configuration: &Configuration,
    prompts: &[PredictRequest],
) -> anyhow::Result<ScenarioRun> {
    info!(config = %configuration.name, workers = configuration.workers, threads = spec.threads, "starting workers");
    eprintln!(
        "== {}: {} worker(s) x {} thread(s), {} prompts, {} in flight",
        configuration.name,
        configuration.workers,
        spec.threads,
        prompts.len(),
        configuration.concurrency
    );
    let pool = LocalPool::start(spec, configuration.workers, client, STARTUP_TIMEOUT).await.map_err(anyhow::Error::msg)?;
    // One short request per worker first, so first-touch page faults are not measured.
    let warm_up: Vec<PredictRequest> = prompts.iter().take(configuration.workers).map(|p| {
        let mut p = p.clone();
        p.sampling.max_tokens = p.sampling.max_tokens.min(4);
        p
    }).collect();
    run_closed_loop(client.clone(), &warm_up, configuration.workers).await;

    let sampler = MemorySampler::start(client.clone());
    let (records, wall_s) = run_closed_loop(client.clone(), prompts, configuration.concurrency).await;
    let memory = sampler.finish().await;
    pool.stop(STOP_GRACE).await;
    wait_until_empty(client).await;
    Ok(ScenarioRun {
        name: configuration.name.clone(),
        workers: configuration.workers,
        slots_per_worker: spec.slots,
        threads_per_worker: spec.threads,
        concurrency: configuration.concurrency,
        wall_s,
        records,
        memory,
    })
}

/// Stopped workers deregister; wait for that so the next configuration starts from an empty pool.
async fn wait_until_empty(client: &CoordinatorClient<Channel>) {
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
    fn serial_first_then_two_to_n_workers() {
        let names: Vec<_> = configurations(3, false).into_iter().map(|c| (c.name, c.workers, c.concurrency)).collect();
        assert_eq!(names, vec![("serial".into(), 1, 1), ("parallel-2".into(), 2, 2), ("parallel-3".into(), 3, 3)]);
        assert_eq!(configurations(3, true).len(), 1);
    }
}
