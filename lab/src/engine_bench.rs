//! `engine-bench`: is one worker as fast as llama.cpp itself, and what does batching inside one process
//! buy? Two ratios from one run:
//! - single stream: the decode tokens/s of a `--slots 1` worker against llama.cpp's own `llama-bench`
//!   text-generation figure, same GGUF, same thread count;
//! - batched: aggregate tokens/s of a `--slots B` worker with B requests in flight against a `--slots 1`
//!   worker with the same B requests in flight (they queue behind its one slot);
//! - prompt processing: a `--slots 1` worker's prompt tokens/s on a prompt of 512 tokens (its tokens
//!   over the time to the first token) against llama-bench's pp512.

use std::path::{Path, PathBuf};
use std::process::Command;

use bench_client::report::Spread;
use bench_client::runner::run_closed_loop;
use modelpool::PredictRequest;
use modelpool::auth::AuthChannel;
use modelpool::proto::coordinator_client::CoordinatorClient;

use crate::local_pool::{LocalCoordinator, LocalPool, WorkerSpec};
use crate::{STARTUP_TIMEOUT, STOP_GRACE, llama_build_name, note_cpu_module};
use coordinator::scheduler::SchedulerConfig;

/// A llama.cpp build and the figure it reached.
type BuildFigure = (PathBuf, f64);

#[derive(Debug, clap::Args)]
pub struct EngineBenchArgs {
    /// Threads for the worker and for llama-bench. Default: all cores.
    #[arg(long)]
    pub threads: Option<u32>,
    /// Slots of the batched worker, and requests in flight in the batched comparison.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Tokens generated per request (and llama-bench's -n).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Repetitions of each measurement; medians are reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// llama.cpp's llama-bench binary (scripts/build-llama-tool.sh builds it); give several builds
    /// (portable, native) and each figure is measured with the build fastest at it here, found in a
    /// first pass (a build that fails to run is reported and left out). Without any, the single-stream
    /// and prompt-processing ratios are not computed.
    #[arg(long, env = "MODELPOOL_LLAMA_BENCH")]
    pub llama_bench: Vec<PathBuf>,
    /// llama.cpp's llama-batched-bench binary: its own batch-of-`slots` ÷ batch-of-1 decode ratio, the
    /// yardstick for ours, measured in the same rounds.
    #[arg(long, env = "MODELPOOL_LLAMA_BATCHED_BENCH")]
    pub llama_batched_bench: Option<PathBuf>,
    #[command(flatten)]
    pub files: crate::WorkerFiles,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineBenchResult {
    /// The kernels the workers reported computing with (`worker --cpu-variant`).
    pub worker_kernels: String,
    /// The llama-bench builds the tg and pp figures come from (the fastest at each in the first pass).
    pub llama_bench_tg_build: Option<String>,
    pub llama_bench_pp_build: Option<String>,
    /// llama-bench's pp512 tokens/s, the worker's prompt tokens/s on a prompt of 512 tokens, and
    /// their ratio (worker ÷ llama-bench).
    pub llama_bench_pp: Option<Spread>,
    pub worker_prompt_processing: Spread,
    /// The prompt's tokens in each round, as the worker counted them ([`PROMPT_PROCESSING_TOKENS`]
    /// unless the round number tokenized differently).
    pub worker_prompt_tokens: Vec<u32>,
    pub prompt_processing_ratio: Option<f64>,
    pub threads: u32,
    pub slots: u32,
    pub max_tokens: u32,
    pub repeats: usize,
    pub llama_bench_tg: Option<Spread>,
    pub worker_single_decode: Spread,
    pub single_ratio: Option<f64>,
    pub slots1_aggregate: Spread,
    pub batched_aggregate: Spread,
    pub batched_ratio: f64,
    /// The same with `--kv-layout unified` (one KV buffer for all slots instead of a stream per slot).
    pub unified_aggregate: Spread,
    pub unified_ratio: f64,
    /// llama-batched-bench's text-generation tokens/s with `slots` sequences ÷ with one, per round.
    pub llama_batched_ratio: Option<Spread>,
    /// Our batched ratio ÷ llama-batched-bench's median (target >= 0.95).
    pub batched_vs_llama: Option<f64>,
}

/// Prompt tokens in the prompt-processing comparison (llama-bench's pp512).
const PROMPT_PROCESSING_TOKENS: u32 = 512;

/// A raw prompt for the prompt-processing comparison: a 4-digit round number, so no round reuses
/// another's cached prefix and every round's prompt has the same token count, then sentences up to
/// about 470 tokens with the default model's tokenizer, then `filler_words` words of one token each.
/// One token is generated, so the time to it is the prompt pass.
fn prompt_processing_request(round: usize, filler_words: usize) -> PredictRequest {
    let mut text = format!("{:04}. ", round % 10_000);
    let mut sentence = 0;
    while text.len() < 1_900 {
        text.push_str(&format!("Sentence {sentence} of the passage lists the harbour's boats, nets and sails. "));
        sentence += 1;
    }
    text.push_str(&" and".repeat(filler_words));
    let mut request = PredictRequest::user(String::new(), 1);
    request.prompt = modelpool::request::Prompt::Raw(text);
    request.request_id = format!("pp{round}");
    request
}

/// The filler words that make the prompt-processing prompt exactly [`PROMPT_PROCESSING_TOKENS`] tokens
/// for this worker's tokenizer, as llama-bench's pp512 is: one longer prompt would cost the worker a
/// second, nearly empty pass that llama-bench never makes. Counted by the worker itself on a prompt of
/// a round number no round uses (so nothing of it is reused); the report prints each round's count.
async fn calibrate_prompt_processing(client: &CoordinatorClient<AuthChannel>) -> anyhow::Result<usize> {
    let (records, _) = run_closed_loop(client.clone(), &[prompt_processing_request(9_999, 0)], 1).await;
    let record = records
        .first()
        .filter(|r| r.ok)
        .ok_or_else(|| anyhow::anyhow!("prompt-processing calibration failed: {:?}", records.first().and_then(|r| r.error.clone())))?;
    anyhow::ensure!(
        record.prompt_tokens <= PROMPT_PROCESSING_TOKENS,
        "the prompt-processing prompt is {} tokens before filler with this model's tokenizer; at most {PROMPT_PROCESSING_TOKENS} expected",
        record.prompt_tokens
    );
    Ok((PROMPT_PROCESSING_TOKENS - record.prompt_tokens) as usize)
}

/// A prompt that makes the model write at length, so decode dominates. End-of-sequence is ignored so
/// every request decodes exactly `max_tokens` (as llama-bench's tg test does) and the batch stays full.
fn long_request(max_tokens: u32, i: usize) -> PredictRequest {
    let mut request = PredictRequest::user(format!("Write a long story about a lighthouse keeper named Ana (part {i})."), max_tokens);
    request.request_id = format!("e{i}");
    request.sampling.ignore_eos = true;
    request
}

pub async fn run_engine_bench(args: EngineBenchArgs) -> anyhow::Result<EngineBenchResult> {
    anyhow::ensure!(args.repeats >= 1 && args.slots >= 1 && args.max_tokens >= 2, "--repeats, --slots >= 1 and --max-tokens >= 2");
    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let threads = args.threads.unwrap_or(cores);
    let (worker_bin, model) = args.files.resolve().await?;

    let batch: Vec<PredictRequest> = (0..args.slots as usize).map(|i| long_request(args.max_tokens, i)).collect();
    let variants = [(1, Vec::new()), (args.slots, Vec::new()), (args.slots, vec!["--kv-layout".to_string(), "unified".to_string()])];
    // Every variant runs all the time, each behind its own coordinator, and the measurements take turns
    // round by round, so drift on this shared machine hits all of them alike.
    let mut pools = Vec::new();
    for (slots, extra_args) in variants {
        eprintln!("== starting worker --slots {slots} {} --threads {threads}", extra_args.join(" "));
        let coordinator = LocalCoordinator::start(SchedulerConfig::default()).await?;
        let spec = WorkerSpec {
            binary: worker_bin.clone(),
            model: model.clone(),
            coordinator: coordinator.url.clone(),
            threads,
            slots,
            extra_args,
        };
        let pool = LocalPool::start(&spec, 1, &coordinator.client, STARTUP_TIMEOUT).await.map_err(anyhow::Error::msg)?;
        run_closed_loop(coordinator.client.clone(), &batch, batch.len()).await; // warm-up
        pools.push((coordinator, pool));
    }
    let aggregate = |records: &[bench_client::record::RequestRecord], wall_s: f64| {
        records.iter().filter(|r| r.ok).map(|r| f64::from(r.completion_tokens)).sum::<f64>() / wall_s.max(1e-9)
    };
    let (mut llama, mut single, mut slots1, mut batched, mut unified) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Each llama-bench figure from the build fastest at it on this machine.
    let (mut tg_build, mut pp_build): (Option<BuildFigure>, Option<BuildFigure>) = (None, None);
    for binary in &args.llama_bench {
        match (llama_bench(binary, &model, threads, args.max_tokens), llama_bench_pp(binary, &model, threads)) {
            (Ok(tg), Ok(pp)) => {
                eprintln!(
                    "== llama-bench ({}): tg{} {tg:.1} tok/s, pp{PROMPT_PROCESSING_TOKENS} {pp:.1} tok/s",
                    llama_build_name(binary),
                    args.max_tokens
                );
                if tg_build.as_ref().is_none_or(|(_, best)| tg > *best) {
                    tg_build = Some((binary.clone(), tg));
                }
                if pp_build.as_ref().is_none_or(|(_, best)| pp > *best) {
                    pp_build = Some((binary.clone(), pp));
                }
            }
            (Err(e), _) | (_, Err(e)) => eprintln!("== llama-bench ({}) does not run here, left out: {e}", llama_build_name(binary)),
        }
    }
    anyhow::ensure!(args.llama_bench.is_empty() || tg_build.is_some(), "no llama-bench build runs on this machine");
    let mut llama_batched = Vec::new();
    let (mut llama_pp, mut worker_pp) = (Vec::new(), Vec::new());
    let filler_words = calibrate_prompt_processing(&pools[0].0.client).await?;
    let mut worker_pp_tokens = Vec::new();
    for round in 0..args.repeats {
        eprintln!("== round {}/{}", round + 1, args.repeats);
        if let (Some((tg_binary, _)), Some((pp_binary, _))) = (&tg_build, &pp_build) {
            llama.push(llama_bench(tg_binary, &model, threads, args.max_tokens)?);
            llama_pp.push(llama_bench_pp(pp_binary, &model, threads)?);
        }
        if let Some(binary) = &args.llama_batched_bench {
            llama_batched.push(llama_batched_bench(binary, &model, threads, args.max_tokens, args.slots)?);
        }
        let slots1_client = pools[0].0.client.clone();
        let (records, _) = run_closed_loop(slots1_client.clone(), &[long_request(args.max_tokens, round)], 1).await;
        let record = records
            .first()
            .filter(|r| r.ok)
            .ok_or_else(|| anyhow::anyhow!("single request failed: {:?}", records.first().and_then(|r| r.error.clone())))?;
        single.push(1000.0 / record.tpot_ms.max(1e-9));
        let (records, _) = run_closed_loop(slots1_client.clone(), &[prompt_processing_request(round, filler_words)], 1).await;
        let record = records
            .first()
            .filter(|r| r.ok && r.ttft_ms > 0.0)
            .ok_or_else(|| anyhow::anyhow!("prompt-processing request failed: {:?}", records.first().and_then(|r| r.error.clone())))?;
        worker_pp.push(f64::from(record.prompt_tokens) / (record.ttft_ms / 1000.0));
        worker_pp_tokens.push(record.prompt_tokens);
        for (index, samples) in [&mut slots1, &mut batched, &mut unified].into_iter().enumerate() {
            let (records, wall_s) = run_closed_loop(pools[index].0.client.clone(), &batch, batch.len()).await;
            samples.push(aggregate(&records, wall_s));
        }
    }
    let worker_kernels = pools.first().map(|(_, pool)| pool.cpu_kernels.join(" | ")).unwrap_or_default();
    for (coordinator, pool) in pools {
        pool.stop(STOP_GRACE).await;
        coordinator.stop().await;
    }
    let llama_bench_tg = (!llama.is_empty()).then(|| Spread::of(&llama));
    let llama_bench_pp = (!llama_pp.is_empty()).then(|| Spread::of(&llama_pp));
    let worker_prompt_processing = Spread::of(&worker_pp);
    let llama_batched_ratio = (!llama_batched.is_empty()).then(|| Spread::of(&llama_batched));

    let worker_single_decode = Spread::of(&single);
    let slots1_aggregate = Spread::of(&slots1);
    let batched_aggregate = Spread::of(&batched);
    let unified_aggregate = Spread::of(&unified);
    let result = EngineBenchResult {
        worker_kernels,
        llama_bench_tg_build: tg_build.map(|(binary, _)| llama_build_name(&binary)),
        llama_bench_pp_build: pp_build.map(|(binary, _)| llama_build_name(&binary)),
        prompt_processing_ratio: llama_bench_pp.map(|pp| worker_prompt_processing.median / pp.median),
        llama_bench_pp,
        worker_prompt_processing,
        worker_prompt_tokens: worker_pp_tokens,
        threads,
        slots: args.slots,
        max_tokens: args.max_tokens,
        repeats: args.repeats,
        single_ratio: llama_bench_tg.map(|tg| worker_single_decode.median / tg.median),
        llama_bench_tg,
        worker_single_decode,
        slots1_aggregate,
        batched_ratio: batched_aggregate.median / slots1_aggregate.median,
        batched_aggregate,
        unified_ratio: unified_aggregate.median / slots1_aggregate.median,
        unified_aggregate,
        batched_vs_llama: llama_batched_ratio.map(|l| (batched_aggregate.median / slots1_aggregate.median) / l.median),
        llama_batched_ratio,
    };
    print_result(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(result)
}

/// "142.9 tok/s (median; range 142.3-162.1)".
fn tok_s(s: &Spread) -> String {
    format!("{:.1} tok/s (median; range {:.1}-{:.1})", s.median, s.min, s.max)
}

fn print_result(r: &EngineBenchResult) {
    println!("engine-bench: {} threads, {} tokens per request, {} repeats", r.threads, r.max_tokens, r.repeats);
    println!("  worker kernels: {}", if r.worker_kernels.is_empty() { "not reported" } else { &r.worker_kernels });
    match (&r.llama_bench_tg, r.single_ratio) {
        (Some(tg), Some(ratio)) => {
            println!("  llama-bench tg{} ({}):      {}", r.max_tokens, r.llama_bench_tg_build.as_deref().unwrap_or("?"), tok_s(tg));
            println!("  worker --slots 1 decode:          {}", tok_s(&r.worker_single_decode));
            println!("  single-stream ratio:              {ratio:.3} (target >= 1.00)");
        }
        _ => {
            println!("  worker --slots 1 decode:          {}", tok_s(&r.worker_single_decode));
            println!("  single-stream ratio:              not measured (pass --llama-bench)");
        }
    }
    let tokens = match (r.worker_prompt_tokens.iter().min(), r.worker_prompt_tokens.iter().max()) {
        (Some(low), Some(high)) if low == high => format!("{low} tokens"),
        (Some(low), Some(high)) => format!("{low}-{high} tokens"),
        _ => "no rounds".to_string(),
    };
    println!("  worker prompt pass ({tokens}):     {}", tok_s(&r.worker_prompt_processing));
    match (&r.llama_bench_pp, r.prompt_processing_ratio) {
        (Some(pp), Some(ratio)) => {
            println!(
                "  llama-bench pp{PROMPT_PROCESSING_TOKENS} ({}):      {}",
                r.llama_bench_pp_build.as_deref().unwrap_or("?"),
                tok_s(pp)
            );
            println!("  prompt-processing ratio:          {ratio:.3} (target >= 1.00)");
        }
        _ => println!("  prompt-processing ratio:          not measured (pass --llama-bench)"),
    }
    println!("  --slots 1, {} in flight, aggregate: {}", r.slots, tok_s(&r.slots1_aggregate));
    println!("  --slots {}, {} in flight, aggregate: {}", r.slots, r.slots, tok_s(&r.batched_aggregate));
    println!("  batched ratio:                    {:.3}", r.batched_ratio);
    match (&r.llama_batched_ratio, r.batched_vs_llama) {
        (Some(theirs), Some(versus)) => {
            println!(
                "  llama-batched-bench B={} / B=1:    {:.3} (median; range {:.3}-{:.3})",
                r.slots, theirs.median, theirs.min, theirs.max
            );
            println!("  ours / llama.cpp's batched ratio: {versus:.3} (target >= 0.95)");
        }
        _ => println!("  llama.cpp's own batched ratio:    not measured (pass --llama-batched-bench)"),
    }
    println!("  --slots {} --kv-layout unified:    {} (ratio {:.3})", r.slots, tok_s(&r.unified_aggregate), r.unified_ratio);
}

/// Runs llama-bench's text-generation test (tg`tokens`) once and returns its tokens/s.
fn llama_bench(binary: &Path, model: &Path, threads: u32, tokens: u32) -> anyhow::Result<f64> {
    llama_bench_test(binary, model, threads, 0, tokens)
}

/// Runs llama-bench's prompt-processing test (pp512) once and returns its tokens/s.
fn llama_bench_pp(binary: &Path, model: &Path, threads: u32) -> anyhow::Result<f64> {
    llama_bench_test(binary, model, threads, PROMPT_PROCESSING_TOKENS, 0)
}

/// One llama-bench test of `prompt` prompt tokens and `generated` new tokens; its average tokens/s.
fn llama_bench_test(binary: &Path, model: &Path, threads: u32, prompt: u32, generated: u32) -> anyhow::Result<f64> {
    let output = Command::new(binary)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string(), "-p", &prompt.to_string(), "-n", &generated.to_string(), "-r", "1", "-o", "json"])
        .output()?;
    note_cpu_module(binary, &String::from_utf8_lossy(&output.stderr));
    anyhow::ensure!(output.status.success(), "llama-bench failed: {}", String::from_utf8_lossy(&output.stderr));
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    runs.first()
        .and_then(|r| r.get("avg_ts"))
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| anyhow::anyhow!("llama-bench printed no avg_ts"))
}

/// Runs llama-batched-bench's text generation with one sequence and with `batch`, and returns the
/// batch's tokens/s over the single sequence's.
fn llama_batched_bench(binary: &Path, model: &Path, threads: u32, tokens: u32, batch: u32) -> anyhow::Result<f64> {
    let context = (32 + tokens) * batch.max(1);
    let output = Command::new(binary)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string(), "-tb", &threads.to_string(), "-c", &context.to_string()])
        .args(["-npp", "32", "-ntg", &tokens.to_string(), "-npl", &format!("1,{batch}"), "--output-format", "jsonl"])
        .output()?;
    anyhow::ensure!(output.status.success(), "llama-batched-bench failed: {}", String::from_utf8_lossy(&output.stderr));
    let speed = |lines: &str, pl: u32| {
        lines
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line.trim()).ok())
            .find(|v| v["pl"].as_u64() == Some(u64::from(pl)))
            .and_then(|v| v["speed_tg"].as_f64())
    };
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    match (speed(&text, 1), speed(&text, batch)) {
        (Some(one), Some(many)) if one > 0.0 => Ok(many / one),
        _ => anyhow::bail!("llama-batched-bench printed no speed_tg for pl 1 and {batch}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(request: &PredictRequest) -> &str {
        match &request.prompt {
            modelpool::request::Prompt::Raw(text) => text,
            other => panic!("a raw prompt expected, got {other:?}"),
        }
    }

    #[test]
    fn every_rounds_prompt_differs_at_its_start_and_has_the_same_shape() {
        let (first, later) = (prompt_processing_request(0, 9), prompt_processing_request(1_234, 9));
        assert_ne!(text(&first)[..4], text(&later)[..4], "no round reuses another's prefix");
        assert_eq!(text(&first).len(), text(&later).len(), "a fixed-width round number keeps the token count");
        let bare = prompt_processing_request(0, 0);
        assert_eq!(text(&first).len() - text(&bare).len(), 9 * " and".len());
        assert!(text(&first).ends_with(&" and".repeat(9)) && !text(&bare).ends_with(" and"));
    }
}
