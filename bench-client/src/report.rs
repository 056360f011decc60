//! Turning runs into the numbers the user asked for: throughput, latency, speedup and efficiency against
//! the serial baseline, and memory per worker and for the pool, as a table and as JSON.

use std::fmt::Write as _;

use modelpool::memory::{SystemMemory, mib};

use crate::memory::PoolMemory;
use crate::runner::RequestRecord;
use crate::stats::Summary;

/// One configuration's run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioRun {
    pub name: String,
    pub workers: usize,
    pub slots_per_worker: u32,
    pub threads_per_worker: u32,
    pub concurrency: usize,
    pub wall_s: f64,
    pub records: Vec<RequestRecord>,
    pub memory: PoolMemory,
}

/// The aggregate figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioSummary {
    pub name: String,
    pub workers: usize,
    pub slots_per_worker: u32,
    pub threads_per_worker: u32,
    pub concurrency: usize,
    pub prompts: usize,
    pub ok: usize,
    pub failed: usize,
    pub wall_s: f64,
    pub prompts_per_s: f64,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
    pub latency_ms: Summary,
    pub ttft_ms: Summary,
    pub tpot_ms: Summary,
    /// Output tokens/s divided by the serial baseline's (None when there is no baseline in the report).
    pub speedup: Option<f64>,
    /// Speedup divided by the number of workers: 1.0 means each extra process added a full copy's worth.
    pub efficiency: Option<f64>,
    pub peak_rss_per_worker_bytes: u64,
    pub peak_pss_per_worker_bytes: u64,
    pub peak_uss_per_worker_bytes: u64,
    pub peak_pool_pss_bytes: u64,
    pub peak_pool_rss_bytes: u64,
}

impl ScenarioSummary {
    pub fn of(run: &ScenarioRun, baseline_tokens_per_s: Option<f64>) -> Self {
        let ok: Vec<&RequestRecord> = run.records.iter().filter(|r| r.ok).collect();
        let output_tokens: u64 = ok.iter().map(|r| u64::from(r.completion_tokens)).sum();
        let prompt_tokens: u64 = ok.iter().map(|r| u64::from(r.prompt_tokens)).sum();
        let wall = run.wall_s.max(1e-9);
        let output_tokens_per_s = output_tokens as f64 / wall;
        let speedup = baseline_tokens_per_s.filter(|b| *b > 0.0).map(|b| output_tokens_per_s / b);
        let workers = run.memory.workers.values();
        let count = run.memory.workers.len().max(1) as u64;
        let per_worker = |f: fn(&crate::memory::WorkerMemory) -> u64| workers.clone().map(f).sum::<u64>() / count;
        let latencies: Vec<f64> = ok.iter().map(|r| r.e2e_ms).collect();
        let ttfts: Vec<f64> = ok.iter().map(|r| r.ttft_ms).collect();
        let tpots: Vec<f64> = ok.iter().filter(|r| r.completion_tokens > 1).map(|r| r.tpot_ms).collect();
        Self {
            name: run.name.clone(),
            workers: run.workers,
            slots_per_worker: run.slots_per_worker,
            threads_per_worker: run.threads_per_worker,
            concurrency: run.concurrency,
            prompts: run.records.len(),
            ok: ok.len(),
            failed: run.records.len() - ok.len(),
            wall_s: run.wall_s,
            prompts_per_s: ok.len() as f64 / wall,
            output_tokens_per_s,
            total_tokens_per_s: (output_tokens + prompt_tokens) as f64 / wall,
            latency_ms: Summary::of(&latencies),
            ttft_ms: Summary::of(&ttfts),
            tpot_ms: Summary::of(&tpots),
            speedup,
            efficiency: speedup.map(|s| s / run.workers.max(1) as f64),
            peak_rss_per_worker_bytes: per_worker(|w| w.peak.rss_bytes),
            peak_pss_per_worker_bytes: per_worker(|w| w.peak.pss_bytes),
            peak_uss_per_worker_bytes: per_worker(|w| w.peak.uss_bytes),
            peak_pool_pss_bytes: run.memory.peak_pool_pss_bytes,
            peak_pool_rss_bytes: run.memory.peak_pool_rss_bytes,
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
    pub max_tokens: u32,
    pub summaries: Vec<ScenarioSummary>,
    pub runs: Vec<ScenarioRun>,
}

impl Report {
    /// Summarises runs; the run named "serial" is the baseline for speedup and efficiency.
    pub fn new(tool: &str, model: String, max_tokens: u32, runs: Vec<ScenarioRun>) -> Self {
        let baseline = runs.iter().find(|r| r.name == "serial").map(|r| ScenarioSummary::of(r, None).output_tokens_per_s);
        let summaries = runs.iter().map(|r| ScenarioSummary::of(r, baseline)).collect();
        Self { tool: tool.into(), machine: Machine::this(), model, max_tokens, summaries, runs }
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "model: {}   max_tokens: {}   machine: {}", self.model, self.max_tokens, self.machine.describe());
        let _ = writeln!(
            out,
            "{:<12} {:>3} {:>4} {:>4} {:>7} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7} {:>6} {:>9} {:>9} {:>9}",
            "config", "N", "thr", "conc", "ok", "prompt/s", "tok/s", "mean lat", "p95 lat", "ttft p50", "speedup", "eff", "RSS/wkr", "PSS/wkr", "pool PSS"
        );
        let _ = writeln!(
            out,
            "{:<12} {:>3} {:>4} {:>4} {:>7} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7} {:>6} {:>9} {:>9} {:>9}",
            "", "", "", "", "", "", "out", "s", "s", "ms", "x", "", "MiB", "MiB", "MiB"
        );
        for s in &self.summaries {
            let _ = writeln!(
                out,
                "{:<12} {:>3} {:>4} {:>4} {:>7} {:>8.2} {:>8.1} {:>9.2} {:>9.2} {:>8.0} {:>7} {:>6} {:>9} {:>9} {:>9}",
                s.name,
                s.workers,
                s.threads_per_worker,
                s.concurrency,
                format!("{}/{}", s.ok, s.prompts),
                s.prompts_per_s,
                s.output_tokens_per_s,
                s.latency_ms.mean / 1000.0,
                s.latency_ms.p95 / 1000.0,
                s.ttft_ms.p50,
                s.speedup.map_or("-".into(), |v| format!("{v:.2}")),
                s.efficiency.map_or("-".into(), |v| format!("{v:.2}")),
                mib(s.peak_rss_per_worker_bytes),
                mib(s.peak_pss_per_worker_bytes),
                mib(s.peak_pool_pss_bytes),
            );
        }
        out
    }

    /// Prints the table (after every output, if asked) and writes the JSON report if a path is given.
    pub fn print(&self, show_outputs: bool, json: Option<&std::path::Path>) -> std::io::Result<()> {
        if show_outputs {
            println!("{}", self.outputs());
        }
        println!("{}", self.table());
        if let Some(path) = json {
            std::fs::write(path, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            println!("JSON report written to {}", path.display());
        }
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
                let _ = writeln!(out, "[{} #{} on {} | {} tokens] {}", run.name, r.index, r.worker_id, r.completion_tokens, body.trim());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, workers: usize, wall_s: f64, tokens: &[u32]) -> ScenarioRun {
        ScenarioRun {
            name: name.into(),
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
        }
    }

    #[test]
    fn speedup_and_efficiency_are_against_serial_throughput() {
        let report = Report::new(
            "test",
            "m".into(),
            8,
            vec![run("serial", 1, 10.0, &[50, 50]), run("parallel-2", 2, 4.0, &[50, 50]), run("parallel-3", 3, 5.0, &[50, 0])],
        );
        let [serial, two, three] = &report.summaries[..] else { panic!("three summaries") };
        assert_eq!(serial.output_tokens_per_s, 10.0);
        assert_eq!(serial.speedup, Some(1.0));
        assert_eq!(two.output_tokens_per_s, 25.0);
        assert_eq!(two.speedup, Some(2.5));
        assert_eq!(two.efficiency, Some(1.25));
        assert_eq!((three.ok, three.failed), (1, 1));
        assert_eq!(three.prompts_per_s, 0.2, "failed prompts do not count as throughput");
        assert!(report.table().contains("parallel-2"));
    }
}
