//! The answer at the end of a report: which configuration to run, and the numbers behind it.

use modelpool::memory::mib;

use crate::summary::ScenarioSummary;

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

/// Among the configurations that lost no request, met the latency targets (if set) for most requests
/// and left memory headroom, the cheapest one whose throughput is within the noise of the fastest (its
/// range reaches the fastest's median, or its median the fastest's range): fewest workers, then least
/// memory, then lowest p95 latency. A faster figure inside the noise buys nothing. When the serial
/// baseline is within the noise, the advice is to keep one worker.
pub fn recommend(summaries: &[ScenarioSummary], slo_set: bool, available_bytes: u64) -> Recommendation {
    let memory_limit = (available_bytes as f64 * MEMORY_HEADROOM) as u64;
    let qualified = summaries
        .iter()
        .filter(|s| s.failed == 0)
        .filter(|s| !slo_set || s.goodput >= MIN_GOODPUT)
        .filter(|s| s.peak_pool_pss_bytes <= memory_limit);
    let qualified: Vec<&ScenarioSummary> = qualified.collect();
    let Some(fastest) = qualified.iter().max_by(|a, b| a.output_tokens_per_s.median.total_cmp(&b.output_tokens_per_s.median)) else {
        return Recommendation {
            name: None,
            text: "no configuration qualified (every one lost requests, missed the latency targets or needed too much memory)".into(),
        };
    };
    let (top, top_low) = (fastest.output_tokens_per_s.median, fastest.output_tokens_per_s.min);
    let best = qualified
        .iter()
        .filter(|s| s.output_tokens_per_s.max >= top || s.output_tokens_per_s.median >= top_low)
        .min_by(|a, b| {
            a.workers
                .cmp(&b.workers)
                .then(a.peak_pool_pss_bytes.cmp(&b.peak_pool_pss_bytes))
                .then(a.latency_ms.p95.total_cmp(&b.latency_ms.p95))
        })
        .copied()
        .unwrap_or(fastest);
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
        // The serial baseline did not qualify (else it would be the cheapest within the noise).
        return Recommendation {
            name: Some(serial.name.clone()),
            text: format!(
                "keep one worker: the best configuration, {numbers}, is inside the serial baseline's range \
                 ({:.1}-{:.1} tok/s); the difference is noise",
                serial.output_tokens_per_s.min, serial.output_tokens_per_s.max
            ),
        };
    }
    // One process serving several prompts at once: the project's own finding, said as the advice.
    let advice = if best.workers == 1 && best.slots_per_worker > 1 { "batch in one process: run" } else { "run" };
    Recommendation { name: Some(best.name.clone()), text: format!("{advice} {numbers}") }
}

#[cfg(test)]
mod tests {
    use crate::record::RequestRecord;
    use crate::report::{Report, ScenarioRun};
    use crate::slo::Slo;

    fn run(name: &str, workers: usize, tokens_per_s: f64, latency_ms: f64, pss_mib: u64) -> ScenarioRun {
        batched(name, workers, 1, tokens_per_s, latency_ms, pss_mib)
    }

    fn batched(name: &str, workers: usize, slots: u32, tokens_per_s: f64, latency_ms: f64, pss_mib: u64) -> ScenarioRun {
        let memory = crate::memory::PoolMemory { peak_pool_pss_bytes: pss_mib << 20, ..Default::default() };
        ScenarioRun {
            cpu_kernels: Vec::new(),
            name: name.into(),
            engine: "llama".into(),
            repeat: 0,
            workers,
            slots_per_worker: slots,
            threads_per_worker: 1,
            concurrency: workers * slots as usize,
            wall_s: 100.0,
            records: vec![RequestRecord {
                ok: true,
                completion_tokens: (tokens_per_s * 100.0) as u32,
                e2e_ms: latency_ms,
                ..Default::default()
            }],
            memory,
            stopped: None,
        }
    }

    #[test]
    fn a_faster_figure_inside_the_noise_does_not_buy_another_worker() {
        // What a run here once recommended: replicas-3 at 46.3 tok/s over replicas-2 at 46.2, with a
        // 51% higher p95 and 70 MiB more memory. Each ran twice; the ranges overlap.
        let runs = vec![
            run("serial", 1, 30.0, 1000.0, 100),
            run("replicas-2", 2, 46.2, 2000.0, 160),
            run("replicas-3", 3, 46.3, 3020.0, 230),
            run("serial", 1, 31.0, 1000.0, 100),
            run("replicas-2", 2, 45.9, 2000.0, 160),
            run("replicas-3", 3, 46.1, 3020.0, 230),
        ];
        let report = Report::new("test", "m".into(), 64, Slo::default(), runs);
        assert_eq!(report.recommendation.name.as_deref(), Some("replicas-2"), "{}", report.recommendation.text);
    }

    #[test]
    fn a_clearly_faster_configuration_is_worth_its_workers() {
        let runs =
            vec![run("serial", 1, 30.0, 1000.0, 100), run("replicas-2", 2, 40.0, 1500.0, 160), run("replicas-3", 3, 55.0, 1600.0, 230)];
        let report = Report::new("test", "m".into(), 64, Slo::default(), runs);
        assert_eq!(report.recommendation.name.as_deref(), Some("replicas-3"), "{}", report.recommendation.text);
        assert!(report.recommendation.text.starts_with("run replicas-3"), "{}", report.recommendation.text);
    }

    #[test]
    fn batching_in_one_process_wins_when_it_is_as_fast_as_more_processes() {
        // The shape of the run of 2026-11-30: four slots in one process as fast as three processes
        // (ranges overlapping) for 140 MiB less; the one-lock app no faster than serial.
        let runs = vec![
            run("serial", 1, 89.5, 440.0, 247),
            run("lock-c3", 1, 85.8, 1250.0, 248),
            run("replicas-2", 2, 93.0, 750.0, 386),
            run("replicas-3", 3, 100.3, 1070.0, 525),
            batched("batched-2", 1, 2, 84.4, 830.0, 293),
            batched("batched-4", 1, 4, 102.4, 1350.0, 385),
            run("serial", 1, 91.0, 440.0, 247),
            run("lock-c3", 1, 87.0, 1250.0, 248),
            run("replicas-2", 2, 95.0, 750.0, 386),
            run("replicas-3", 3, 104.5, 1070.0, 525),
            batched("batched-2", 1, 2, 86.0, 830.0, 293),
            batched("batched-4", 1, 4, 106.0, 1350.0, 385),
        ];
        let report = Report::new("test", "m".into(), 64, Slo::default(), runs);
        assert_eq!(report.recommendation.name.as_deref(), Some("batched-4"), "{}", report.recommendation.text);
        assert!(report.recommendation.text.starts_with("batch in one process: run batched-4"), "{}", report.recommendation.text);
    }
}
