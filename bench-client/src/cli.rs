//! The `bench-client` command: scenarios against an already running coordinator and its workers (the
//! multi-host path).

use std::path::PathBuf;

use modelpool::proto::{ListWorkersRequest, WorkerState};

use crate::memory::MemorySampler;
use crate::report::{Report, ScenarioRun};
use crate::runner::{poisson_arrivals, progress_bar, run_closed_loop_with_progress, run_open_loop};
use crate::slo::Slo;
use crate::workload;

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
    /// Prompts from a JSONL file ({"messages": [...]} or {"prompt": "..."} per line); default: the built-in set.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Synthetic prompts instead: IN:OUT tokens (e.g. 128:64); needs the model file on this host.
    #[arg(long, conflicts_with = "prompts")]
    pub synthetic: Option<String>,
    /// Number of built-in prompts per scenario.
    #[arg(long, default_value_t = 15)]
    pub num_prompts: usize,
    /// Tokens generated per prompt at most (JSONL lines may set their own).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// Runs of each scenario; they take turns, so drift on a shared machine hits all alike. Medians are
    /// reported, with the range.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[command(flatten)]
    pub report: ReportArgs,
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
    let mut prompts = match &args.prompts {
        Some(path) => workload::load_jsonl(path, args.max_tokens)?,
        None => workload::builtin_workload(args.num_prompts, args.max_tokens),
    };
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
    if let Some(shape) = &args.synthetic {
        let (input, output) = workload::parse_shape(shape).map_err(anyhow::Error::msg)?;
        let model = std::path::Path::new(&info.model_path);
        anyhow::ensure!(model.is_file(), "--synthetic needs the model file to count tokens; {} is not on this host", info.model_path);
        let tokenizer = modelpool::tokenizer::Tokenizer::from_gguf(&modelpool::gguf::GgufFile::open(model)?)?;
        prompts = workload::synthetic(&tokenizer, input, output, args.num_prompts)?;
    }

    let mut runs = Vec::new();
    for repeat in 0..args.repeats {
        let closed = args.scenario.iter().map(|scenario| match scenario {
            Scenario::Serial => ("serial".to_string(), 1, None),
            Scenario::Parallel => {
                let c = args.concurrency.unwrap_or(total_slots);
                (format!("parallel-c{c}"), c, None)
            }
        });
        let open = args.rate.iter().map(|&rate| (format!("open@{rate}/s"), 0, Some(rate)));
        for (name, concurrency, rate) in closed.chain(open).collect::<Vec<_>>() {
            eprintln!("== {name} (run {}/{}): {} prompts, {concurrency} in flight, {} workers", repeat + 1, args.repeats, prompts.len(), serving.len());
            let sampler = MemorySampler::start(client.clone(), &[]);
            let progress = progress_bar(&name, prompts.len());
            let (records, wall_s) = match rate {
                Some(rate) => run_open_loop(client.clone(), &prompts, &poisson_arrivals(prompts.len(), rate, 42), Some(&progress)).await,
                None => run_closed_loop_with_progress(client.clone(), &prompts, concurrency, Some(&progress)).await,
            };
            progress.finish();
            let memory = sampler.finish().await;
            runs.push(ScenarioRun {
                name,
                repeat,
                workers: serving.len(),
                slots_per_worker: info.slots,
                threads_per_worker: info.threads,
                concurrency,
                wall_s,
                records,
                memory,
                stopped: None,
            });
        }
    }
    let mut report = Report::new("bench-client", info.model_name.clone(), args.max_tokens, args.report.slo(), runs);
    // The roofline needs the model file; workers on this host name a path that is readable here.
    if std::path::Path::new(&info.model_path).is_file()
        && let Err(e) = report.attach_roofline(std::path::Path::new(&info.model_path)) {
            tracing::warn!(error = %e, "no roofline: the model's GGUF metadata could not be read");
        }
    args.report.emit(&report)?;
    Ok(report)
}
