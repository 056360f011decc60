//! One configuration's runs and what they sum up to: throughput and latency (median and spread over
//! repetitions), speedup and efficiency against the serial baseline, goodput, memory per worker and for
//! the pool. The data every rendering and the recommendation read.

use crate::memory::PoolMemory;
use crate::record::RequestRecord;
use crate::slo::Slo;
use crate::stats::Summary;

/// One run of one configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioRun {
    pub name: String,
    /// What served it: a worker engine (`llama`, `mlx`), or `openai` for an OpenAI-compatible endpoint
    /// whose engine the bench cannot see.
    pub engine: String,
    /// Which repetition of the configuration this is (0-based).
    pub repeat: usize,
    pub workers: usize,
    pub slots_per_worker: u32,
    pub threads_per_worker: u32,
    pub concurrency: usize,
    pub wall_s: f64,
    pub records: Vec<RequestRecord>,
    pub memory: PoolMemory,
    /// Why the run was cut short, if it was (the machine started swapping).
    pub stopped: Option<String>,
    /// The kernels its workers reported computing with (empty where the bench cannot see them).
    pub cpu_kernels: Vec<String>,
}

impl ScenarioRun {
    /// Output tokens per second of wall time over the run.
    pub fn output_tokens_per_s(&self) -> f64 {
        let tokens: u64 = self.records.iter().filter(|r| r.ok).map(|r| u64::from(r.completion_tokens)).sum();
        tokens as f64 / self.wall_s.max(1e-9)
    }
}

/// A median over repetitions, with the range it came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let s = Summary::of(values);
        Self { median: s.p50, min: s.min, max: s.max }
    }

    /// The range is wider than a fifth of the median: the machine was too noisy to trust one figure.
    pub fn is_noisy(&self) -> bool {
        self.median > 0.0 && (self.max - self.min) / self.median > 0.2
    }
}

/// The aggregate figures of one configuration over its repetitions: throughput as the median of the
/// runs' figures (with their range); latencies over every request of every run; memory at its peak.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioSummary {
    pub name: String,
    /// What served it (see [`ScenarioRun::engine`]).
    pub engine: String,
    pub repeats: usize,
    pub workers: usize,
    pub slots_per_worker: u32,
    pub threads_per_worker: u32,
    pub concurrency: usize,
    pub prompts: usize,
    pub ok: usize,
    pub failed: usize,
    pub prompts_per_s: Spread,
    pub output_tokens_per_s: Spread,
    pub total_tokens_per_s: Spread,
    pub noisy: bool,
    /// Share of requests that succeeded within the latency targets (1.0 of successes when none are set).
    pub goodput: f64,
    pub latency_ms: Summary,
    pub ttft_ms: Summary,
    pub tpot_ms: Summary,
    /// Inter-token latency over every gap between tokens of every request.
    pub itl_ms: Summary,
    /// Median output tokens/s divided by the serial baseline's (None when there is no baseline).
    pub speedup: Option<f64>,
    /// Speedup divided by the number of workers: 1.0 means each extra process added a full copy's worth.
    pub efficiency: Option<f64>,
    pub peak_rss_per_worker_bytes: u64,
    pub peak_pss_per_worker_bytes: u64,
    pub peak_uss_per_worker_bytes: u64,
    pub peak_pool_pss_bytes: u64,
    pub peak_pool_rss_bytes: u64,
    /// Share of the prompt tokens the servers reused from their prefix caches instead of computing.
    pub prompt_cached_share: f64,
    /// Prompt tokens computed (not reused) per successful request, on average.
    pub prefill_tokens_per_request: f64,
}

impl ScenarioSummary {
    /// Summarises the runs of one configuration (all with the same name and shape).
    pub fn of(runs: &[&ScenarioRun], baseline_tokens_per_s: Option<f64>, slo: &Slo) -> Self {
        let first = runs[0];
        let records: Vec<&RequestRecord> = runs.iter().flat_map(|r| &r.records).collect();
        let ok: Vec<&&RequestRecord> = records.iter().filter(|r| r.ok).collect();
        let per_run = |f: &dyn Fn(&ScenarioRun) -> f64| Spread::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        let output_tokens_per_s = per_run(&|r| r.output_tokens_per_s());
        let prompts_per_s = per_run(&|r| r.records.iter().filter(|x| x.ok).count() as f64 / r.wall_s.max(1e-9));
        let total_tokens_per_s = per_run(&|r| {
            r.records.iter().filter(|x| x.ok).map(|x| f64::from(x.completion_tokens + x.prompt_tokens)).sum::<f64>() / r.wall_s.max(1e-9)
        });
        let speedup = baseline_tokens_per_s.filter(|b| *b > 0.0).map(|b| output_tokens_per_s.median / b);
        let workers: Vec<_> = runs.iter().flat_map(|r| r.memory.workers.values()).collect();
        let peak = |f: fn(&crate::memory::WorkerMemory) -> u64| workers.iter().map(|w| f(w)).max().unwrap_or(0);
        let latencies: Vec<f64> = ok.iter().map(|r| r.e2e_ms).collect();
        let ttfts: Vec<f64> = ok.iter().map(|r| r.ttft_ms).collect();
        let tpots: Vec<f64> = ok.iter().filter(|r| r.completion_tokens > 1).map(|r| r.tpot_ms).collect();
        let gaps: Vec<f64> = ok.iter().flat_map(|r| r.inter_token_ms.iter().map(|&g| f64::from(g))).collect();
        let prompt_tokens: u64 = ok.iter().map(|r| u64::from(r.prompt_tokens)).sum();
        let cached_tokens: u64 = ok.iter().map(|r| u64::from(r.cached_tokens.min(r.prompt_tokens))).sum();
        Self {
            name: first.name.clone(),
            engine: first.engine.clone(),
            repeats: runs.len(),
            workers: first.workers,
            slots_per_worker: first.slots_per_worker,
            threads_per_worker: first.threads_per_worker,
            concurrency: first.concurrency,
            prompts: records.len(),
            ok: ok.len(),
            failed: records.len() - ok.len(),
            noisy: output_tokens_per_s.is_noisy(),
            goodput: slo.goodput(records.iter().copied()),
            prompts_per_s,
            output_tokens_per_s,
            total_tokens_per_s,
            latency_ms: Summary::of(&latencies),
            ttft_ms: Summary::of(&ttfts),
            tpot_ms: Summary::of(&tpots),
            itl_ms: Summary::of(&gaps),
            speedup,
            efficiency: speedup.map(|s| s / first.workers.max(1) as f64),
            peak_rss_per_worker_bytes: peak(|w| w.peak.rss_bytes),
            peak_pss_per_worker_bytes: peak(|w| w.peak.pss_bytes),
            peak_uss_per_worker_bytes: peak(|w| w.peak.uss_bytes),
            peak_pool_pss_bytes: runs.iter().map(|r| r.memory.peak_pool_pss_bytes).max().unwrap_or(0),
            peak_pool_rss_bytes: runs.iter().map(|r| r.memory.peak_pool_rss_bytes).max().unwrap_or(0),
            prompt_cached_share: if prompt_tokens > 0 { cached_tokens as f64 / prompt_tokens as f64 } else { 0.0 },
            prefill_tokens_per_request: (prompt_tokens - cached_tokens) as f64 / ok.len().max(1) as f64,
        }
    }
}
