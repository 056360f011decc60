//! `mlx-bench`: the MLX engine against Python mlx-lm, the tool MLX users run, on the same model folder
//! on the same machine. One worker (`--engine mlx --slots 1`) behind a local coordinator, and one mlx-lm
//! process (`scripts/mlx/mlx_lm_runner.py` in the pinned venv) that keeps the model loaded; the built-in
//! prompts go to each in turn, prompt by prompt, round by round, so drift on a shared machine hits both
//! alike. Both decode exactly `--max-tokens` (EOS ignored). Per engine: prefill tokens/s (prompt tokens
//! ÷ time to first token), decode tokens/s, end-to-end output tokens/s, TTFT, and peak resident memory
//! of the process.

use std::path::PathBuf;
use std::process::Stdio;

use bench_client::report::Spread;
use bench_client::runner::run_closed_loop;
use modelpool::{ChatMessage, PredictRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::local_pool::{LocalCoordinator, LocalPool, WorkerSpec};
use crate::peak_memory::peak_rss_mib;
use crate::{STARTUP_TIMEOUT, STOP_GRACE};
use coordinator::scheduler::SchedulerConfig;

#[derive(Debug, clap::Args)]
pub struct MlxBenchArgs {
    /// Python with mlx-lm (scripts/mlx-fixture.sh --python prints the pinned venv's).
    #[arg(long, env = "MODELPOOL_MLX_PYTHON")]
    pub python: PathBuf,
    /// The mlx-lm side: scripts/mlx/mlx_lm_runner.py.
    #[arg(long)]
    pub runner: PathBuf,
    /// Built-in prompts per round.
    #[arg(long, default_value_t = 8)]
    pub prompts: usize,
    /// Tokens generated per prompt, exactly (EOS ignored on both sides).
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u32,
    /// Rounds; medians and ranges over every prompt of every round.
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// Let the worker reuse cached prompt prefixes (the built-in prompts share the template's system
    /// message). Off by default: both engines then compute every prompt in full, which is what the
    /// prefill figure compares.
    #[arg(long)]
    pub prefix_cache: bool,
    /// Dequantize mlx-lm's model after loading (its own dequantize_model): the float32 products the
    /// worker's --mlx-dense computes, for an engine-to-engine comparison of that path.
    #[arg(long)]
    pub mlx_lm_dense: bool,
    /// More worker flags for the MLX side, as they are (e.g. "--mlx-dense").
    #[arg(long, allow_hyphen_values = true)]
    pub worker_flag: Vec<String>,
    #[command(flatten)]
    pub files: crate::WorkerFiles,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One generation's timings, from either engine.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub ttft_ms: f64,
    pub total_ms: f64,
}

impl Sample {
    fn prefill_tokens_per_s(&self) -> f64 {
        f64::from(self.prompt_tokens) * 1000.0 / self.ttft_ms.max(1e-9)
    }
    fn decode_tokens_per_s(&self) -> f64 {
        f64::from(self.completion_tokens.saturating_sub(1)) * 1000.0 / (self.total_ms - self.ttft_ms).max(1e-9)
    }
    fn output_tokens_per_s(&self) -> f64 {
        f64::from(self.completion_tokens) * 1000.0 / self.total_ms.max(1e-9)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineFigures {
    pub prefill_tokens_per_s: Spread,
    pub decode_tokens_per_s: Spread,
    pub output_tokens_per_s: Spread,
    pub ttft_ms: Spread,
    pub peak_rss_mib: f64,
}

impl EngineFigures {
    fn of(samples: &[Sample], peak_rss_mib: f64) -> Self {
        let spread = |f: fn(&Sample) -> f64| Spread::of(&samples.iter().map(f).collect::<Vec<_>>());
        Self {
            prefill_tokens_per_s: spread(Sample::prefill_tokens_per_s),
            decode_tokens_per_s: spread(Sample::decode_tokens_per_s),
            output_tokens_per_s: spread(Sample::output_tokens_per_s),
            ttft_ms: spread(|s| s.ttft_ms),
            peak_rss_mib,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MlxBenchResult {
    pub model: String,
    pub prompts: usize,
    pub repeats: usize,
    pub max_tokens: u32,
    pub worker_flags: Vec<String>,
    pub prefix_cache: bool,
    pub mlx_lm_dense: bool,
    /// LD_PRELOAD of both processes (an optimized BLAS), if any.
    pub preload: Option<String>,
    pub ours: EngineFigures,
    pub mlx_lm: EngineFigures,
    /// Ours ÷ mlx-lm, medians (TTFT: mlx-lm's ÷ ours, so above 1 is better for us everywhere).
    pub prefill_ratio: f64,
    pub decode_ratio: f64,
    pub output_ratio: f64,
    pub ttft_ratio: f64,
}

/// The mlx-lm process: one JSON request per line in, one JSON result per line out.
struct MlxLm {
    child: tokio::process::Child,
    input: tokio::process::ChildStdin,
    output: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl MlxLm {
    async fn start(python: &PathBuf, runner: &PathBuf, model: &std::path::Path, dense: bool) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(python)
            .arg(runner)
            .arg(model)
            .args(dense.then_some("dense"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {} {}: {e}", python.display(), runner.display()))?;
        let input = child.stdin.take().expect("piped");
        let mut output = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = output.next_line().await?.ok_or_else(|| anyhow::anyhow!("mlx-lm exited while loading the model"))?;
        anyhow::ensure!(ready.contains("\"ready\""), "mlx-lm did not start: {ready}");
        Ok(Self { child, input, output })
    }

    async fn generate(&mut self, messages: &[ChatMessage], max_tokens: u32) -> anyhow::Result<Sample> {
        let messages: Vec<serde_json::Value> =
            messages.iter().map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content})).collect();
        let request = serde_json::json!({"messages": messages, "max_tokens": max_tokens});
        self.input.write_all(format!("{request}\n").as_bytes()).await?;
        let line = self.output.next_line().await?.ok_or_else(|| anyhow::anyhow!("mlx-lm exited"))?;
        let result: serde_json::Value = serde_json::from_str(&line)?;
        let number = |key: &str| result[key].as_f64().ok_or_else(|| anyhow::anyhow!("mlx-lm's answer has no {key}: {line}"));
        Ok(Sample {
            prompt_tokens: number("prompt_tokens")? as u32,
            completion_tokens: number("completion_tokens")? as u32,
            ttft_ms: number("ttft_ms")?,
            total_ms: number("total_ms")?,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

pub async fn run_mlx_bench(args: MlxBenchArgs) -> anyhow::Result<MlxBenchResult> {
    anyhow::ensure!(args.repeats >= 1 && args.prompts >= 1 && args.max_tokens >= 2, "--repeats, --prompts >= 1 and --max-tokens >= 2");
    let (worker_bin, model) = args.files.resolve().await?;
    let prompts: Vec<Vec<ChatMessage>> = bench_client::workload::builtin_prompts().into_iter().cycle().take(args.prompts).collect();

    eprintln!("== starting the MLX worker and mlx-lm on {}", model.display());
    let coordinator = LocalCoordinator::start(SchedulerConfig::default()).await?;
    let mut extra_args = vec!["--engine".to_string(), "mlx".to_string()];
    if !args.prefix_cache {
        extra_args.push("--no-prefix-cache".into());
    }
    extra_args.extend(args.worker_flag.iter().cloned());
    let spec =
        WorkerSpec { binary: worker_bin, model: model.clone(), coordinator: coordinator.url.clone(), threads: 1, slots: 1, extra_args };
    let pool = LocalPool::start(&spec, 1, &coordinator.client, STARTUP_TIMEOUT).await.map_err(anyhow::Error::msg)?;
    let mut mlx_lm = MlxLm::start(&args.python, &args.runner, &model, args.mlx_lm_dense).await?;

    let request = |messages: &[ChatMessage], i: usize| {
        let mut request = PredictRequest::user("", args.max_tokens);
        request.prompt = modelpool::Prompt::Chat(messages.to_vec());
        request.request_id = format!("m{i}");
        request.sampling.ignore_eos = true;
        request
    };
    // Warm-up, not measured: the first call of each pays one-time costs.
    run_closed_loop(coordinator.client.clone(), &[request(&prompts[0], 0)], 1).await;
    mlx_lm.generate(&prompts[0], args.max_tokens).await?;

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..args.repeats {
        eprintln!("== round {}/{}", round + 1, args.repeats);
        for (i, messages) in prompts.iter().enumerate() {
            let (records, _) = run_closed_loop(coordinator.client.clone(), &[request(messages, i)], 1).await;
            let record = records.into_iter().next().filter(|r| r.ok).ok_or_else(|| anyhow::anyhow!("the worker failed prompt {i}"))?;
            ours.push(Sample {
                prompt_tokens: record.prompt_tokens,
                completion_tokens: record.completion_tokens,
                ttft_ms: record.ttft_ms,
                total_ms: record.e2e_ms,
            });
            theirs.push(mlx_lm.generate(messages, args.max_tokens).await?);
        }
    }
    let worker_pid = pool.workers.first().map(|w| w.pid);
    let ours = EngineFigures::of(&ours, peak_rss_mib(worker_pid));
    let mlx_lm_figures = EngineFigures::of(&theirs, peak_rss_mib(mlx_lm.pid()));
    drop(mlx_lm);
    pool.stop(STOP_GRACE).await;
    coordinator.stop().await;

    let result = MlxBenchResult {
        model: model.display().to_string(),
        prompts: args.prompts,
        repeats: args.repeats,
        max_tokens: args.max_tokens,
        worker_flags: args.worker_flag.clone(),
        prefix_cache: args.prefix_cache,
        mlx_lm_dense: args.mlx_lm_dense,
        preload: std::env::var("LD_PRELOAD").ok().filter(|p| !p.is_empty()),
        prefill_ratio: ours.prefill_tokens_per_s.median / mlx_lm_figures.prefill_tokens_per_s.median,
        decode_ratio: ours.decode_tokens_per_s.median / mlx_lm_figures.decode_tokens_per_s.median,
        output_ratio: ours.output_tokens_per_s.median / mlx_lm_figures.output_tokens_per_s.median,
        ttft_ratio: mlx_lm_figures.ttft_ms.median / ours.ttft_ms.median,
        ours,
        mlx_lm: mlx_lm_figures,
    };
    print_result(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(result)
}

fn print_result(r: &MlxBenchResult) {
    let cell = |s: &Spread| format!("{:.1} ({:.1}-{:.1})", s.median, s.min, s.max);
    println!(
        "mlx-bench: {}, {} prompts x {} rounds, {} tokens each (EOS ignored), interleaved; worker prefix cache {}{}{}{}",
        r.model,
        r.prompts,
        r.repeats,
        r.max_tokens,
        if r.prefix_cache { "on" } else { "off" },
        if r.worker_flags.is_empty() { String::new() } else { format!("; worker {}", r.worker_flags.join(" ")) },
        r.preload.as_ref().map(|p| format!("; LD_PRELOAD={p} (both)")).unwrap_or_default(),
        if r.mlx_lm_dense { "; mlx-lm dequantized" } else { "" },
    );
    println!("  {:<26} {:>24} {:>24} {:>8}", "median (min-max)", "modelpool MLX", "Python mlx-lm", "ratio");
    let rows = [
        ("prefill tok/s", &r.ours.prefill_tokens_per_s, &r.mlx_lm.prefill_tokens_per_s, r.prefill_ratio),
        ("decode tok/s", &r.ours.decode_tokens_per_s, &r.mlx_lm.decode_tokens_per_s, r.decode_ratio),
        ("end-to-end output tok/s", &r.ours.output_tokens_per_s, &r.mlx_lm.output_tokens_per_s, r.output_ratio),
        ("TTFT ms (ratio: theirs/ours)", &r.ours.ttft_ms, &r.mlx_lm.ttft_ms, r.ttft_ratio),
    ];
    for (name, ours, theirs, ratio) in rows {
        println!("  {name:<26} {:>24} {:>24} {ratio:>7.2}x", cell(ours), cell(theirs));
    }
    println!("  {:<26} {:>24.0} {:>24.0}", "peak RSS MiB (process)", r.ours.peak_rss_mib, r.mlx_lm.peak_rss_mib);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_timings() {
        let sample = Sample { prompt_tokens: 40, completion_tokens: 33, ttft_ms: 2000.0, total_ms: 6000.0 };
        assert!((sample.prefill_tokens_per_s() - 20.0).abs() < 1e-9);
        assert!((sample.decode_tokens_per_s() - 8.0).abs() < 1e-9);
        assert!((sample.output_tokens_per_s() - 5.5).abs() < 1e-9);
    }
}
