//! The report as CSV: one line per configuration, for spreadsheets.

use std::fmt::Write as _;

use super::Report;

impl Report {
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
}
