//! Results grouped by host, for pools that span machines: what each host served, how fast, at what
//! latency and memory, and advice when one host is slower per token than another.

use std::collections::BTreeMap;

use crate::record::RequestRecord;
use crate::stats::{Summary, quantile};

/// One host's share of a run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HostSummary {
    pub host: String,
    pub workers: usize,
    pub prompts: usize,
    pub output_tokens: u64,
    /// Output tokens of this host's prompts per second of the whole run's wall time.
    pub output_tokens_per_s: f64,
    /// Median time per output token after the first, the per-token speed of the host's workers.
    pub tpot_ms_p50: f64,
    /// Median of each prompt's end-to-end time divided by its output tokens: per-token speed as the
    /// client sees it, the host's network included.
    pub e2e_ms_per_token_p50: f64,
    pub e2e_ms: Summary,
    pub ttft_ms_p50: f64,
    /// Mean over the host's workers, from their last heartbeat.
    pub rss_bytes_per_worker: u64,
    pub pss_bytes_per_worker: u64,
}

/// What the host-grouped report knows about each worker: its host and last memory figures.
#[derive(Debug, Clone, Default)]
pub struct WorkerPlacement {
    pub host: String,
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    /// Registered now. A worker that was evicted and registered again has a new id: its old id stays
    /// (its answers still belong to its host) but no longer counts as a worker.
    pub current: bool,
}

/// Groups successful records by the host of the worker that answered them. `workers` maps worker ids
/// to placements; hosts with workers but no answered prompt appear with zero prompts.
pub fn summarise_by_host(records: &[RequestRecord], workers: &BTreeMap<String, WorkerPlacement>, wall_s: f64) -> Vec<HostSummary> {
    let mut hosts: BTreeMap<String, (Vec<&RequestRecord>, Vec<&WorkerPlacement>)> = BTreeMap::new();
    for placement in workers.values() {
        let entry = hosts.entry(placement.host.clone()).or_default();
        if placement.current {
            entry.1.push(placement);
        }
    }
    for record in records.iter().filter(|r| r.ok) {
        let host = workers.get(&record.worker_id).map_or_else(|| "(unknown)".to_string(), |p| p.host.clone());
        hosts.entry(host).or_default().0.push(record);
    }
    hosts
        .into_iter()
        .map(|(host, (records, placements))| {
            let output_tokens: u64 = records.iter().map(|r| u64::from(r.completion_tokens)).sum();
            let e2e: Vec<f64> = records.iter().map(|r| r.e2e_ms).collect();
            let tpot: Vec<f64> = records.iter().filter(|r| r.completion_tokens > 1).map(|r| r.tpot_ms).collect();
            let ttft: Vec<f64> = records.iter().map(|r| r.ttft_ms).collect();
            let per_token: Vec<f64> =
                records.iter().filter(|r| r.completion_tokens > 0).map(|r| r.e2e_ms / f64::from(r.completion_tokens)).collect();
            let per_worker = |f: fn(&WorkerPlacement) -> u64| {
                if placements.is_empty() { 0 } else { placements.iter().map(|p| f(p)).sum::<u64>() / placements.len() as u64 }
            };
            HostSummary {
                host,
                workers: placements.len(),
                prompts: records.len(),
                output_tokens,
                output_tokens_per_s: output_tokens as f64 / wall_s.max(1e-9),
                tpot_ms_p50: quantile(&tpot, 0.5).unwrap_or(0.0),
                e2e_ms_per_token_p50: quantile(&per_token, 0.5).unwrap_or(0.0),
                e2e_ms: Summary::of(&e2e),
                ttft_ms_p50: quantile(&ttft, 0.5).unwrap_or(0.0),
                rss_bytes_per_worker: per_worker(|p| p.rss_bytes),
                pss_bytes_per_worker: per_worker(|p| p.pss_bytes),
            }
        })
        .collect()
}

/// Below this ratio of per-token times, hosts count as equally fast (on a shared machine, noise alone
/// moves a host's median by a third).
const SLOWER_THRESHOLD: f64 = 1.5;
/// Hosts that answered fewer prompts are not compared: their median is mostly noise.
const MIN_PROMPTS: usize = 5;

/// One line per host that is clearly slower per token than the fastest (end to end, so a slow link
/// counts as well as a slow CPU): how much, and what the scheduler did about it (it pulls: a slow host
/// takes fewer prompts by itself).
pub fn host_advice(hosts: &[HostSummary]) -> Vec<String> {
    let measured: Vec<&HostSummary> = hosts.iter().filter(|h| h.e2e_ms_per_token_p50 > 0.0 && h.prompts >= MIN_PROMPTS).collect();
    let Some(fastest) = measured.iter().min_by(|a, b| a.e2e_ms_per_token_p50.total_cmp(&b.e2e_ms_per_token_p50)) else {
        return vec!["no host answered enough tokens to compare speeds".into()];
    };
    let total: usize = hosts.iter().map(|h| h.prompts).sum();
    let mut advice: Vec<String> = measured
        .iter()
        .filter(|h| h.e2e_ms_per_token_p50 / fastest.e2e_ms_per_token_p50 >= SLOWER_THRESHOLD)
        .map(|h| {
            format!(
                "{} is {:.1}x slower per token than {} ({:.1} vs {:.1} ms per output token, end to end): give it fewer \
                 prompts; the scheduler already does, since workers pull work: it served {} of {} prompts with {} of the workers",
                h.host,
                h.e2e_ms_per_token_p50 / fastest.e2e_ms_per_token_p50,
                fastest.host,
                h.e2e_ms_per_token_p50,
                fastest.e2e_ms_per_token_p50,
                h.prompts,
                total,
                h.workers,
            )
        })
        .collect();
    if advice.is_empty() {
        advice.push(format!(
            "the hosts that answered at least {MIN_PROMPTS} prompts are equally fast per token within {SLOWER_THRESHOLD}x; spread workers evenly"
        ));
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five answers from one worker, for a host to be compared.
    fn five(worker: &str, tpot_ms: f64) -> Vec<RequestRecord> {
        (0..5).map(|_| record(worker, 10, tpot_ms)).collect()
    }

    fn record(worker: &str, tokens: u32, tpot_ms: f64) -> RequestRecord {
        RequestRecord {
            ok: true,
            worker_id: worker.into(),
            completion_tokens: tokens,
            tpot_ms,
            e2e_ms: tpot_ms * f64::from(tokens),
            ..Default::default()
        }
    }

    fn placements() -> BTreeMap<String, WorkerPlacement> {
        let place = |host: &str, rss| WorkerPlacement { host: host.into(), rss_bytes: rss, pss_bytes: rss / 2, current: true };
        let gone = WorkerPlacement { current: false, ..place("a", 999) };
        BTreeMap::from([
            ("w0".into(), gone),
            ("w1".into(), place("a", 100)),
            ("w2".into(), place("a", 200)),
            ("w3".into(), place("b", 300)),
            ("w4".into(), place("c", 50)),
        ])
    }

    #[test]
    fn records_are_grouped_by_the_host_of_their_worker() {
        let records =
            [record("w0", 10, 20.0), record("w1", 10, 20.0), record("w2", 10, 22.0), record("w3", 10, 44.0), RequestRecord::default()];
        let hosts = summarise_by_host(&records, &placements(), 2.0);
        let a = hosts.iter().find(|h| h.host == "a").unwrap();
        assert_eq!((a.workers, a.prompts, a.output_tokens), (2, 3, 30), "w0's answer counts for a, w0 itself does not");
        assert_eq!(a.output_tokens_per_s, 15.0);
        assert_eq!(a.rss_bytes_per_worker, 150);
        let c = hosts.iter().find(|h| h.host == "c").unwrap();
        assert_eq!((c.workers, c.prompts), (1, 0), "a host that served nothing still shows");
    }

    #[test]
    fn a_host_twice_as_slow_per_token_is_named_with_its_ratio() {
        let records = [five("w1", 20.0), five("w3", 42.0), vec![record("w4", 10, 90.0)]].concat();
        let advice = host_advice(&summarise_by_host(&records, &placements(), 1.0));
        assert_eq!(advice.len(), 1, "c answered one prompt only and is not judged: {advice:?}");
        assert!(advice[0].starts_with("b is 2.1x slower per token than a"), "{}", advice[0]);
        let even = host_advice(&summarise_by_host(&[five("w1", 20.0), five("w3", 26.0)].concat(), &placements(), 1.0));
        assert!(even[0].contains("equally fast"), "{even:?}");
    }
}
