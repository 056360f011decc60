//! Turning runs into the numbers the user asked for: throughput, latency, speedup and efficiency against
//! the serial baseline, and memory per worker and for the pool, as a table and as JSON.

use std::fmt::Write as _;

use modelpool::memory::{SystemMemory, mib};

use crate::memory::PoolMemory;
use crate::recommend::{Recommendation, recommend};
use crate::slo::Slo;
use crate::roofline::{ModelTraffic, Roofline, measure_bandwidth};
use crate::runner::RequestRecord;
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
}

impl ScenarioRun {
    fn output_tokens_per_s(&self) -> f64 {
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

/// The machine a report came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub os: String,
    pub hostname: String,
}

impl Machine {
    pub fn this() -> Self {
        let mut system = sysinfo::System::new();
        system.refresh_cpu_all();
        let memory = SystemMemory::read();
        Self {
            cpu: system.cpus().first().map(|c| c.brand().trim().to_string()).unwrap_or_default(),
            cores: system.cpus().len(),
            memory_total_bytes: memory.total_bytes,
            memory_available_bytes: memory.available_bytes,
            os: sysinfo::System::long_os_version().unwrap_or_default(),
            hostname: sysinfo::System::host_name().unwrap_or_default(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({} cores), {} GiB RAM, {}",
            self.cpu,
            self.cores,
            self.memory_total_bytes / (1 << 30),
            self.os
        )
    }
}

/// Everything a bench run produced; written as JSON with `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub tool: String,
    pub machine: Machine,
    pub model: String,
    /// SHA-256 of the model file, when it was readable here: which exact weights were measured.
    pub model_sha256: Option<String>,
    /// Version of the tool that measured (the workspace version).
    pub version: String,
    /// SHA-256 of the worker binary that served (engines included), when the bench started the workers.
    pub worker_binary_sha256: Option<String>,
    pub max_tokens: u32,
    pub summaries: Vec<ScenarioSummary>,
    /// Configurations not run, with the reason (they would not fit in memory).
    pub skipped: Vec<String>,
    pub slo: Slo,
    pub recommendation: Recommendation,
    /// Measured configurations against the memory-bandwidth ceiling (when the model file is readable here).
    pub roofline: Option<Roofline>,
    pub runs: Vec<ScenarioRun>,
}

impl Report {
    /// Summarises runs by configuration name, in the order configurations first ran; the configuration
    /// named "serial" is the baseline for speedup and efficiency.
    pub fn new(tool: &str, model: String, max_tokens: u32, slo: Slo, runs: Vec<ScenarioRun>) -> Self {
        let mut names: Vec<&str> = Vec::new();
        for run in &runs {
            if !names.contains(&run.name.as_str()) {
                names.push(&run.name);
            }
        }
        let group = |name: &str| runs.iter().filter(|r| r.name == name).collect::<Vec<_>>();
        // Each configuration is compared with the serial run of its own engine: "serial" or "mlx/serial".
        let baseline_of = |name: &str| {
            let serial = match name.split_once('/') {
                Some((engine, _)) => format!("{engine}/serial"),
                None => "serial".to_string(),
            };
            let runs = group(&serial);
            (!runs.is_empty()).then(|| Spread::of(&runs.iter().map(|r| r.output_tokens_per_s()).collect::<Vec<_>>()).median)
        };
        let summaries: Vec<_> = names.iter().map(|n| ScenarioSummary::of(&group(n), baseline_of(n), &slo)).collect();
        let machine = Machine::this();
        let recommendation = recommend(&summaries, slo.is_set(), machine.memory_available_bytes);
        Self {
            tool: tool.into(),
            machine,
            model,
            model_sha256: None,
            version: env!("CARGO_PKG_VERSION").into(),
            worker_binary_sha256: None,
            max_tokens,
            summaries,
            skipped: Vec::new(),
            slo,
            recommendation,
            roofline: None,
            runs,
        }
    }

    /// Adds the roofline: the model's traffic per token from its GGUF, the bandwidth measured now, and
    /// each configuration's median output tokens/s against its ceiling.
    pub fn attach_roofline(&mut self, model: &std::path::Path) -> Result<(), modelpool::gguf::GgufError> {
        self.model_sha256 = modelpool::model_cache::sha256_file(model).ok();
        let traffic = ModelTraffic::from_gguf(model)?;
        let bandwidth = measure_bandwidth(self.machine.cores.max(1), 256);
        let ok: Vec<&RequestRecord> = self.runs.iter().flat_map(|r| &r.records).filter(|r| r.ok).collect();
        let context = ok.iter().map(|r| u64::from(r.prompt_tokens) + u64::from(r.completion_tokens) / 2).sum::<u64>()
            / ok.len().max(1) as u64;
        let configs: Vec<_> = self
            .summaries
            .iter()
            .map(|s| (s.name.clone(), s.workers, s.slots_per_worker, s.output_tokens_per_s.median))
            .collect();
        self.roofline = Some(Roofline::new(traffic, bandwidth, context, &configs));
        Ok(())
    }

    /// The terminal table: medians over repetitions, the output tokens/s range beside them, and a `!`
    /// where that range is wider than a fifth of the median.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let repeats = self.summaries.iter().map(|s| s.repeats).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "model: {}   max_tokens: {}   repeats: {repeats}   machine: {}",
            self.model,
            self.max_tokens,
            self.machine.describe()
        );
        let header = ["config", "N", "B", "thr", "conc", "ok", "prompt/s", "tok/s", "range", "mean lat", "p95 lat", "ttft p50", "speedup", "eff", "RSS/wkr", "PSS/wkr", "USS/wkr", "pool PSS"];
        let units = ["", "", "", "", "", "", "", "out", "tok/s", "s", "s", "ms", "x", "", "MiB", "MiB", "MiB", "MiB"];
        for row in [header, units] {
            let _ = writeln!(
                out,
                "{:<16} {:>2} {:>2} {:>3} {:>4} {:>7} {:>8} {:>7} {:>12} {:>8} {:>8} {:>8} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8}",
                row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11], row[12], row[13], row[14], row[15], row[16], row[17]
            );
        }
        for s in &self.summaries {
            let t = s.output_tokens_per_s;
            let _ = writeln!(
                out,
                "{:<16} {:>2} {:>2} {:>3} {:>4} {:>7} {:>8.2} {:>7.1} {:>12} {:>8.2} {:>8.2} {:>8.0} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8}",
                s.name,
                s.workers,
                s.slots_per_worker,
                s.threads_per_worker,
                s.concurrency,
                format!("{}/{}", s.ok, s.prompts),
                s.prompts_per_s.median,
                t.median,
                format!("{:.0}-{:.0}{}", t.min, t.max, if s.noisy { "!" } else { "" }),
                s.latency_ms.mean / 1000.0,
                s.latency_ms.p95 / 1000.0,
                s.ttft_ms.p50,
                s.speedup.map_or("-".into(), |v| format!("{v:.2}")),
                s.efficiency.map_or("-".into(), |v| format!("{v:.2}")),
                mib(s.peak_rss_per_worker_bytes),
                mib(s.peak_pss_per_worker_bytes),
                mib(s.peak_uss_per_worker_bytes),
                mib(s.peak_pool_pss_bytes),
            );
        }
        let itl: Vec<String> = self.summaries.iter().map(|s| format!("{} {:.0}/{:.0}", s.name, s.itl_ms.p50, s.itl_ms.p99)).collect();
        let _ = writeln!(out, "inter-token latency, ms p50/p99: {}", itl.join(", "));
        let reuse: Vec<String> = self
            .summaries
            .iter()
            .map(|s| format!("{} {:.0}% ({:.0} computed/request)", s.name, s.prompt_cached_share * 100.0, s.prefill_tokens_per_request))
            .collect();
        let _ = writeln!(out, "prompt tokens reused from prefix caches: {}", reuse.join(", "));
        let engines: Vec<String> = self.summaries.iter().map(|s| format!("{} {}", s.name, s.engine)).collect();
        let _ = writeln!(out, "served by: {}", engines.join(", "));
        if self.slo.is_set() {
            let targets = [("ttft", self.slo.ttft_ms), ("e2e", self.slo.e2e_ms)]
                .iter()
                .filter_map(|(n, v)| v.map(|v| format!("{n} <= {v:.0} ms")))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(out, "goodput ({targets}):");
            for s in &self.summaries {
                let _ = writeln!(out, "  {:<12} {:>5.1}% of requests within the targets", s.name, s.goodput * 100.0);
            }
        }
        // A configuration that lost prompts says why, not only how many.
        for s in self.summaries.iter().filter(|s| s.failed > 0) {
            let first = self.runs.iter().filter(|r| r.name == s.name).flat_map(|r| &r.records).find_map(|r| r.error.as_deref());
            let _ = writeln!(out, "failed: {} lost {}/{} prompts; first error: {}", s.name, s.failed, s.prompts, first.unwrap_or("(none recorded)"));
        }
        for run in self.runs.iter().filter(|r| r.stopped.is_some()) {
            let _ = writeln!(out, "stopped: {} run {}: {}", run.name, run.repeat, run.stopped.as_deref().unwrap_or_default());
        }
        for run in self.runs.iter().filter(|r| r.memory.swapped()) {
            let _ = writeln!(
                out,
                "swapping: {} run {} pushed swap from {} to {} MiB; its figures include paging",
                run.name,
                run.repeat,
                mib(run.memory.system_before.swap_used_bytes),
                mib(run.memory.max_swap_used_bytes)
            );
        }
        if let Some(tightest) = self.runs.iter().min_by_key(|r| r.memory.min_available_bytes) {
            let _ = writeln!(
                out,
                "system memory: {} MiB available before the first run, {} MiB at the tightest moment ({} run {})",
                mib(self.runs[0].memory.system_before.available_bytes),
                mib(tightest.memory.min_available_bytes),
                tightest.name,
                tightest.repeat
            );
        }
        for skipped in &self.skipped {
            let _ = writeln!(out, "skipped {skipped}");
        }
        if self.summaries.iter().any(|s| s.noisy) {
            let _ = writeln!(out, "! the tok/s range across repeats is wider than 20% of the median: the machine was noisy");
        }
        if let Some(roofline) = &self.roofline {
            let t = roofline.traffic;
            let _ = writeln!(
                out,
                "\nroofline: {} MiB of weights read per decode step, {:.1} KiB of KV per token of context ({} tokens on average); \
                 memory bandwidth {:.1} GB/s ({} threads)",
                mib(t.weight_bytes),
                t.kv_bytes_per_context_token as f64 / 1024.0,
                roofline.context_tokens,
                roofline.bandwidth_bytes_per_s / 1e9,
                self.machine.cores
            );
            for p in &roofline.points {
                let _ = writeln!(
                    out,
                    "  {:<12} {:>7.1} tok/s of a {:>7.1} tok/s ceiling ({:>3.0}%)",
                    p.name,
                    p.achieved_tokens_per_s,
                    p.ceiling_tokens_per_s,
                    p.utilisation * 100.0
                );
            }
            let _ = writeln!(out, "verdict: {}", roofline.verdict);
        }
        let _ = writeln!(out, "\nrecommendation: {}", self.recommendation.text);
        out
    }

    /// Prints the table (after every output, if asked) and writes the JSON report if a path is given.
    pub fn print(&self, show_outputs: bool, json: Option<&std::path::Path>, out_dir: Option<&std::path::Path>) -> std::io::Result<()> {
        if show_outputs {
            println!("{}", self.outputs());
        }
        println!("{}", self.table());
        if let Some(path) = json {
            std::fs::write(path, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            println!("JSON report written to {}", path.display());
        }
        if let Some(dir) = out_dir {
            self.write_dir(dir)?;
            println!("report.json, report.csv and report.html written to {}", dir.display());
        }
        Ok(())
    }

    /// One line per configuration, for spreadsheets.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "config,workers,slots,threads,concurrency,repeats,prompts,ok,failed,prompts_per_s,output_tokens_per_s,\
             output_tokens_per_s_min,output_tokens_per_s_max,noisy,latency_p50_ms,latency_p90_ms,latency_p95_ms,latency_p99_ms,\
             ttft_p50_ms,ttft_p95_ms,tpot_p50_ms,itl_p50_ms,itl_p99_ms,speedup,efficiency,goodput,peak_rss_per_worker_bytes,peak_pss_per_worker_bytes,\
             peak_uss_per_worker_bytes,peak_pool_pss_bytes,peak_pool_rss_bytes,engine,prompt_cached_share,prefill_tokens_per_request\n",
        );
        for s in &self.summaries {
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.2},{:.2},{:.2},{},{},{:.4},{},{},{},{},{},{},{:.4},{:.1}",
                s.name.replace(',', ";"),
                s.workers,
                s.slots_per_worker,
                s.threads_per_worker,
                s.concurrency,
                s.repeats,
                s.prompts,
                s.ok,
                s.failed,
                s.prompts_per_s.median,
                s.output_tokens_per_s.median,
                s.output_tokens_per_s.min,
                s.output_tokens_per_s.max,
                s.noisy,
                s.latency_ms.p50,
                s.latency_ms.p90,
                s.latency_ms.p95,
                s.latency_ms.p99,
                s.ttft_ms.p50,
                s.ttft_ms.p95,
                s.tpot_ms.p50,
                s.itl_ms.p50,
                s.itl_ms.p99,
                opt(s.speedup),
                opt(s.efficiency),
                s.goodput,
                s.peak_rss_per_worker_bytes,
                s.peak_pss_per_worker_bytes,
                s.peak_uss_per_worker_bytes,
                s.peak_pool_pss_bytes,
                s.peak_pool_rss_bytes,
                s.engine,
                s.prompt_cached_share,
                s.prefill_tokens_per_request,
            );
        }
        out
    }

    /// Writes report.json, report.csv and report.html into `dir` (created if missing).
    pub fn write_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::write(dir.join("report.csv"), self.csv())?;
        std::fs::write(dir.join("report.html"), crate::html::render(self))?;
        Ok(())
    }

    /// Each prompt and its generated text, for `--show-outputs`.
    pub fn outputs(&self) -> String {
        let mut out = String::new();
        for run in &self.runs {
            for r in &run.records {
                let body = match (&r.error, r.ok) {
                    (_, true) => r.text.clone(),
                    (Some(e), false) => format!("ERROR {e}"),
                    (None, false) => "ERROR".into(),
                };
                let _ = writeln!(out, "[{} run {} #{} on {} | {} tokens] {}", run.name, run.repeat, r.index, r.worker_id, r.completion_tokens, body.trim());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, repeat: usize, workers: usize, wall_s: f64, tokens: &[u32]) -> ScenarioRun {
        ScenarioRun {
            name: name.into(),
            engine: "llama".into(),
            repeat,
            workers,
            slots_per_worker: 1,
            threads_per_worker: 1,
            concurrency: workers,
            wall_s,
            records: tokens
                .iter()
                .enumerate()
                .map(|(index, &completion_tokens)| RequestRecord { index, ok: completion_tokens > 0, completion_tokens, e2e_ms: 100.0, ..Default::default() })
                .collect(),
            memory: PoolMemory::default(),
            stopped: None,
        }
    }

    #[test]
    fn a_configuration_that_lost_prompts_prints_its_first_error() {
        let mut lossy = run("serial", 0, 1, 1.0, &[0, 50, 0]);
        lossy.records[0].error = Some("UNAUTHENTICATED: missing or wrong pool token".into());
        lossy.records[2].error = Some("later error".into());
        let report = Report::new("test", "m".into(), 8, Slo::default(), vec![lossy, run("replicas-2", 0, 2, 1.0, &[50, 50])]);
        let table = report.table();
        assert!(table.contains("failed: serial lost 2/3 prompts; first error: UNAUTHENTICATED: missing or wrong pool token"), "{table}");
        assert!(!table.contains("failed: replicas-2"), "{table}");
    }

    #[test]
    fn speedup_and_efficiency_are_against_the_median_serial_throughput() {
        let report = Report::new(
            "test",
            "m".into(),
            8,
            Slo::default(),
            vec![
                run("serial", 0, 1, 10.0, &[50, 50]),
                run("replicas-2", 0, 2, 4.0, &[50, 50]),
                run("serial", 1, 1, 5.0, &[50, 50]),
                run("replicas-2", 1, 2, 5.0, &[50, 50]),
                run("serial", 2, 1, 20.0, &[50, 50]),
                run("replicas-2", 2, 2, 2.0, &[50, 0]),
            ],
        );
        let [serial, two] = &report.summaries[..] else { panic!("two configurations") };
        // serial runs: 10, 20 and 5 tok/s; median 10
        assert_eq!(serial.output_tokens_per_s, Spread { median: 10.0, min: 5.0, max: 20.0 });
        assert!(serial.noisy);
        assert_eq!(serial.speedup, Some(1.0));
        // replicas-2 runs: 25, 20, 25 tok/s; median 25
        assert_eq!(two.output_tokens_per_s.median, 25.0);
        assert_eq!(two.speedup, Some(2.5));
        assert_eq!(two.efficiency, Some(1.25));
        assert_eq!((two.repeats, two.prompts, two.ok, two.failed), (3, 6, 5, 1));
        assert_eq!(two.prompts_per_s.min, 0.4, "failed prompts do not count as throughput");
        let table = report.table();
        assert!(table.contains("replicas-2") && table.contains("5-20!"), "{table}");
        // replicas-2 lost a prompt, so the recommendation is the serial baseline
        assert_eq!(report.recommendation.name.as_deref(), Some("serial"), "{:?}", report.recommendation);
    }

    #[test]
    fn the_recommendation_takes_the_fastest_clean_configuration_within_targets() {
        let runs = || {
            vec![
                run("serial", 0, 1, 10.0, &[50, 50]),
                run("serial", 1, 1, 11.0, &[50, 50]),
                run("replicas-2", 0, 2, 5.0, &[50, 50]),
                run("replicas-2", 1, 2, 5.5, &[50, 50]),
            ]
        };
        let report = Report::new("test", "m".into(), 8, Slo::default(), runs());
        assert_eq!(report.recommendation.name.as_deref(), Some("replicas-2"), "{:?}", report.recommendation);
        assert!(report.recommendation.text.contains("2.00x serial"), "says the speed-up: {}", report.recommendation.text);

        // every request took 100 ms: a 50 ms target disqualifies everything
        let strict = Slo { ttft_ms: None, e2e_ms: Some(50.0) };
        let report = Report::new("test", "m".into(), 8, strict, runs());
        assert_eq!(report.recommendation.name, None);
        assert_eq!(report.summaries[0].goodput, 0.0);
        assert!(report.table().contains("goodput (e2e <= 50 ms)"));
        let csv = report.csv();
        assert_eq!(csv.lines().count(), 3, "a header and one line per configuration");
        assert!(csv.lines().nth(2).unwrap().starts_with("replicas-2,2,1,1,2,2,4,4,0,"), "{csv}");
    }
}
