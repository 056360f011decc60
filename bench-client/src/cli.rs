//! The `bench-client` command: scenarios against an already running coordinator and its workers (the
//! multi-host path).

use std::path::PathBuf;

use modelpool::proto::{ListWorkersRequest, WorkerState};
use modelpool::{PoolError, PredictRequest};

use crate::memory::{MemorySampler, PoolMemory};
use crate::openai_client::OpenAiClient;
use crate::report::{Report, ScenarioRun};
use crate::runner::{Target, poisson_arrivals, progress_bar, run_closed_loop_with_progress, run_open_loop};
use crate::slo::Slo;
use crate::{fresh, shared_prefix, workload};

/// Which prompts to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Short extraction tasks and questions (the built-in set, cycled: prompts repeat).
    Builtin,
    /// Short chats of which none repeats (the built-in set first, then generated ones).
    Chats,
    /// DSPy-shaped calls as `shared-prefix`, each on a passage of its own: only the preambles repeat.
    Dspy,
    /// DSPy ChatAdapter-shaped extraction calls: a 1,000+ token preamble shared by every call of one
    /// program, then a short chunk; `--programs` programs interleaved.
    SharedPrefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One prompt at a time: the baseline.
    Serial,
    /// `--concurrency` prompts in flight at once.
    Parallel,
}

/// Drive serial and parallel scenarios through a running coordinator and report throughput, latency
/// and memory.
#[derive(Debug, clap::Parser)]
#[command(name = "bench-client", version)]
pub struct Args {
    /// The coordinator to send prompts to.
    #[arg(long, env = "MODELPOOL_COORDINATOR", default_value = "http://127.0.0.1:50050")]
    pub coordinator: String,
    /// Bench an OpenAI-compatible endpoint instead of a coordinator (this pool's HTTP API,
    /// llama-server, vLLM, mlx_lm.server, Ollama), e.g. http://127.0.0.1:8080/v1. Every request is
    /// streamed; time to first token and inter-token gaps are measured at the client.
    #[arg(long)]
    pub openai: Option<String>,
    /// Bearer key for --openai (this pool's token, or the server's API key).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The `model` field of --openai requests.
    #[arg(long)]
    pub model: Option<String>,
    /// Which prompts to send (--prompts and --synthetic override it).
    #[arg(long, value_enum, default_value_t = Workload::Builtin)]
    pub workload: Workload,
    /// Distinct programs interleaved in the shared-prefix workload.
    #[arg(long, default_value_t = 1)]
    pub programs: usize,
    /// The pool's shared secret, if the coordinator requires one.
    #[arg(long, env = "MODELPOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the coordinator's TLS certificate, for an https:// coordinator.
    #[arg(long, env = "MODELPOOL_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Scenarios to run, in order (comma-separated). A serial run is the baseline for speedup.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Serial, Scenario::Parallel])]
    pub scenario: Vec<Scenario>,
    /// Open loop as well: prompts arriving as a Poisson process at each of these rates (prompts/s).
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Prompts in flight in the parallel scenario. Default: the pool's total slots.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Number of built-in prompts per scenario.
    #[arg(long, default_value_t = 15)]
    pub num_prompts: usize,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Runs of each scenario; they take turns, so drift on a shared machine hits all alike. Medians are
    /// reported, with the range.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[command(flatten)]
    pub report: ReportArgs,
}

/// Which prompts a bench sends instead of its built-in set, and how long their answers may be. Shared
/// by `bench-client` and `coordinator run-bench`, so both read the same files and shapes.
#[derive(Debug, Clone, clap::Args)]
pub struct PromptArgs {
    /// Prompts from a JSONL file ({"messages": [...]} or {"prompt": "..."} per line) instead of the
    /// built-in set.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Synthetic prompts instead: IN:OUT tokens (e.g. 128:64), exactly IN prompt tokens of the model's
    /// tokenizer and exactly OUT generated, so every run does identical work. Needs the model file on
    /// this host.
    #[arg(long, conflicts_with = "prompts")]
    pub synthetic: Option<String>,
    /// Tokens generated per prompt at most (JSONL lines may set their own).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
}

impl PromptArgs {
    /// The `--prompts` file's prompts if one was given, else `builtin(max_tokens)`.
    pub fn file_or(&self, builtin: impl FnOnce(u32) -> Vec<PredictRequest>) -> Result<Vec<PredictRequest>, PoolError> {
        match &self.prompts {
            Some(path) => workload::load_jsonl(path, self.max_tokens),
            None => Ok(builtin(self.max_tokens)),
        }
    }

    /// `--synthetic`'s (input tokens, output tokens), if given.
    pub fn synthetic_shape(&self) -> anyhow::Result<Option<(usize, u32)>> {
        self.synthetic.as_deref().map(|shape| workload::parse_shape(shape).map_err(anyhow::Error::msg)).transpose()
    }
}

/// How a bench reports: latency targets and where the report goes. Shared by `bench-client` and
/// `coordinator run-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Latency target for the time to first token; goodput counts requests within every target, and
    /// the recommendation only considers configurations where 90% of requests meet them.
    #[arg(long)]
    pub slo_ttft_ms: Option<f64>,
    /// Latency target for the whole request.
    #[arg(long)]
    pub slo_e2e_ms: Option<f64>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write report.json, report.csv and a self-contained report.html (SVG charts) into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print every prompt's generated text.
    #[arg(long)]
    pub show_outputs: bool,
}

impl ReportArgs {
    pub fn slo(&self) -> Slo {
        Slo { ttft_ms: self.slo_ttft_ms, e2e_ms: self.slo_e2e_ms }
    }

    /// Prints the report and writes the files asked for.
    pub fn emit(&self, report: &Report) -> std::io::Result<()> {
        report.print(self.show_outputs, self.json.as_deref(), self.out.as_deref())
    }
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    anyhow::ensure!(args.num_prompts >= 1, "--num-prompts must be at least 1");
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    anyhow::ensure!(args.concurrency != Some(0), "--concurrency must be at least 1");
    anyhow::ensure!(args.rate.iter().all(|r| r.is_finite() && *r > 0.0), "--rate must be positive prompts/s");
    let mut prompts = args.prompt.file_or(|max_tokens| match args.workload {
        Workload::Builtin => workload::builtin_workload(args.num_prompts, max_tokens),
        Workload::Chats => fresh::chats(1, 0, args.num_prompts, max_tokens),
        Workload::Dspy => fresh::dspy(1, 0, args.num_prompts, args.programs, max_tokens),
        Workload::SharedPrefix => shared_prefix::workload(args.num_prompts, args.programs, max_tokens),
    })?;
    if let Some(url) = &args.openai {
        anyhow::ensure!(args.prompt.synthetic.is_none(), "--synthetic needs the pool's model file; with --openai send --prompts instead");
        let client = OpenAiClient::new(url, args.api_key.clone(), args.model.clone()).map_err(anyhow::Error::msg)?;
        let report = run_scenarios(
            &args,
            Target::OpenAi(client),
            &prompts,
            None,
            "openai",
            args.model.as_deref().unwrap_or("openai"),
            1,
            args.concurrency.unwrap_or(4),
            (0, 0),
        )
        .await?;
        args.report.emit(&report)?;
        return Ok(report);
    }
    let credentials = modelpool::auth::Credentials {
        token: modelpool::auth::Token::new(args.token.clone())?,
        tls: modelpool::tls::ClientTls::from_ca_file(args.tls_ca.as_deref())?,
    };
    let mut client = crate::connect(&args.coordinator, &credentials)?;
    let workers = client
        .list_workers(ListWorkersRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("cannot reach the coordinator at {}: {}", args.coordinator, s.message()))?
        .into_inner()
        .workers;
    let serving: Vec<_> = workers.iter().filter(|w| w.state == WorkerState::Serving as i32).collect();
    anyhow::ensure!(!serving.is_empty(), "the coordinator at {} has no serving workers", args.coordinator);
    let total_slots: usize = serving.iter().map(|w| w.info.as_ref().map_or(1, |i| i.slots.max(1) as usize)).sum();
    let info = serving[0].info.clone().unwrap_or_default();
    if let Some((input, output)) = args.prompt.synthetic_shape()? {
        let model = std::path::Path::new(&info.model_path);
        anyhow::ensure!(model.exists(), "--synthetic needs the model to count tokens; {} is not on this host", info.model_path);
        let format = model_input::prompt_format::PromptFormat::load(model)?;
        prompts = workload::synthetic(&format.tokenizer, input, output, args.num_prompts)?;
    }

    let concurrency = args.concurrency.unwrap_or(total_slots);
    let mut report = run_scenarios(
        &args,
        Target::Pool(client.clone()),
        &prompts,
        Some(&client),
        &info.engine,
        &info.model_name,
        serving.len(),
        concurrency,
        (info.slots, info.threads),
    )
    .await?;
    // The roofline needs the model file; workers on this host name a path that is readable here.
    if std::path::Path::new(&info.model_path).is_file()
        && let Err(e) = report.attach_roofline(std::path::Path::new(&info.model_path))
    {
        tracing::warn!(error = %e, "no roofline: the model's GGUF metadata could not be read");
    }
    args.report.emit(&report)?;
    Ok(report)
}

/// Runs every scenario `repeats` times, taking turns, against `target`. `pool` samples the workers'
/// memory when the target is a coordinator.
#[allow(clippy::too_many_arguments)]
async fn run_scenarios(
    args: &Args,
    target: Target,
    prompts: &[modelpool::PredictRequest],
    pool: Option<&modelpool::proto::coordinator_client::CoordinatorClient<modelpool::auth::AuthChannel>>,
    engine: &str,
    model: &str,
    workers: usize,
    concurrency: usize,
    (slots, threads): (u32, u32),
) -> anyhow::Result<Report> {
    let mut runs = Vec::new();
    for repeat in 0..args.repeats {
        let closed = args.scenario.iter().map(|scenario| match scenario {
            Scenario::Serial => ("serial".to_string(), 1, None),
            Scenario::Parallel => (format!("parallel-c{concurrency}"), concurrency, None),
        });
        let open = args.rate.iter().map(|&rate| (format!("open@{rate}/s"), 0, Some(rate)));
        for (name, concurrency, rate) in closed.chain(open).collect::<Vec<_>>() {
            eprintln!("== {name} (run {}/{}): {} prompts, {concurrency} in flight", repeat + 1, args.repeats, prompts.len());
            let sampler = pool.map(|client| MemorySampler::start(client.clone(), &[]));
            let progress = progress_bar(&name, prompts.len());
            let (records, wall_s) = match rate {
                Some(rate) => run_open_loop(target.clone(), prompts, &poisson_arrivals(prompts.len(), rate, 42), Some(&progress)).await,
                None => run_closed_loop_with_progress(target.clone(), prompts, concurrency, Some(&progress)).await,
            };
            progress.finish();
            let memory = match sampler {
                Some(sampler) => sampler.finish().await,
                None => PoolMemory::default(),
            };
            runs.push(ScenarioRun {
                cpu_kernels: Vec::new(),
                name,
                engine: engine.to_string(),
                repeat,
                workers,
                slots_per_worker: slots,
                threads_per_worker: threads,
                concurrency,
                wall_s,
                records,
                memory,
                stopped: None,
            });
        }
    }
    Ok(Report::new("bench-client", model.to_string(), args.prompt.max_tokens, args.report.slo(), runs))
}
