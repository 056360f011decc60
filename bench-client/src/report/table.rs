//! The report as the terminal shows it: the table of configurations (medians, ranges, memory, the
//! roofline and the recommendation) and, on request, every prompt's output.

use std::fmt::Write as _;

use modelpool::memory::mib;

use super::Report;

impl Report {
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
        let header = [
            "config", "N", "B", "thr", "conc", "ok", "prompt/s", "tok/s", "range", "mean lat", "p95 lat", "ttft p50", "speedup", "eff",
            "RSS/wkr", "PSS/wkr", "USS/wkr", "pool PSS",
        ];
        let units = ["", "", "", "", "", "", "", "out", "tok/s", "s", "s", "ms", "x", "", "MiB", "MiB", "MiB", "MiB"];
        for row in [header, units] {
            let _ = writeln!(
                out,
                "{:<16} {:>2} {:>2} {:>3} {:>4} {:>7} {:>8} {:>7} {:>12} {:>8} {:>8} {:>8} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8}",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
                row[8],
                row[9],
                row[10],
                row[11],
                row[12],
                row[13],
                row[14],
                row[15],
                row[16],
                row[17]
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
            let _ = writeln!(
                out,
                "failed: {} lost {}/{} prompts; first error: {}",
                s.name,
                s.failed,
                s.prompts,
                first.unwrap_or("(none recorded)")
            );
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
                let _ = writeln!(
                    out,
                    "[{} run {} #{} on {} | {} tokens] {}",
                    run.name,
                    run.repeat,
                    r.index,
                    r.worker_id,
                    r.completion_tokens,
                    body.trim()
                );
            }
        }
        out
    }
}
