//! The answer at the end of a report: which configuration to run, and the numbers behind it.

use modelpool::memory::mib;

use crate::report::ScenarioSummary;

/// Share of the goodput a configuration must reach when latency targets are set.
const MIN_GOODPUT: f64 = 0.9;
/// Share of the memory available at the start that the pool may use.
const MEMORY_HEADROOM: f64 = 0.8;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recommendation {
    /// The configuration to run, if any qualifies.
    pub name: Option<String>,
    pub text: String,
}

/// The highest-throughput configuration that lost no request, met the latency targets (if set) for
/// most requests, and left memory headroom. When it is not clearly faster than the serial baseline
/// (its median inside the baseline's range), the advice is to keep one worker.
pub fn recommend(summaries: &[ScenarioSummary], slo_set: bool, available_bytes: u64) -> Recommendation {
    let memory_limit = (available_bytes as f64 * MEMORY_HEADROOM) as u64;
    let qualified = summaries
        .iter()
        .filter(|s| s.failed == 0)
        .filter(|s| !slo_set || s.goodput >= MIN_GOODPUT)
        .filter(|s| s.peak_pool_pss_bytes <= memory_limit);
    let Some(best) = qualified.max_by(|a, b| a.output_tokens_per_s.median.total_cmp(&b.output_tokens_per_s.median)) else {
        return Recommendation {
            name: None,
            text: "no configuration qualified (every one lost requests, missed the latency targets or needed too much memory)".into(),
        };
    };
    let serial = summaries.iter().find(|s| s.name == "serial");
    let numbers = format!(
        "{} ({} worker(s) x {} slot(s) x {} thread(s)): {:.1} output tok/s (range {:.1}-{:.1}){}, p95 latency {:.2} s, \
         pool memory {} MiB (PSS) of {} MiB available{}",
        best.name,
        best.workers,
        best.slots_per_worker,
        best.threads_per_worker,
        best.output_tokens_per_s.median,
        best.output_tokens_per_s.min,
        best.output_tokens_per_s.max,
        best.speedup.map_or(String::new(), |s| format!(", {s:.2}x serial")),
        best.latency_ms.p95 / 1000.0,
        mib(best.peak_pool_pss_bytes),
        mib(available_bytes),
        if slo_set { format!(", {:.0}% of requests within the targets", best.goodput * 100.0) } else { String::new() },
    );
    if let Some(serial) = serial.filter(|s| s.name != best.name && best.output_tokens_per_s.median <= s.output_tokens_per_s.max) {
        return Recommendation {
            name: Some(serial.name.clone()),
            text: format!(
                "keep one worker: the best configuration, {numbers}, is inside the serial baseline's range \
                 ({:.1}-{:.1} tok/s); the difference is noise",
                serial.output_tokens_per_s.min, serial.output_tokens_per_s.max
            ),
        };
    }
    Recommendation { name: Some(best.name.clone()), text: format!("run {numbers}") }
}
