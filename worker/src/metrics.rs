//! What a worker counts for `GET /metrics` (served on its gRPC port over HTTP/1.1): requests by
//! outcome, latency histograms and tokens generated; and, read at scrape time, its engine's load
//! and its own memory.

use std::sync::atomic::{AtomicU64, Ordering};

use modelpool::PoolError;
use modelpool::memory::ProcessMemory;
use modelpool::metrics::{Exposition, Histogram, Outcome, Outcomes};

use crate::engine::{Completion, EngineLoad};

#[derive(Debug)]
pub struct WorkerMetrics {
    pub requests: Outcomes,
    pub queue_wait: Histogram,
    pub ttft: Histogram,
    pub e2e: Histogram,
    pub generated_tokens: AtomicU64,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self {
            requests: Outcomes::default(),
            queue_wait: Histogram::latency(),
            ttft: Histogram::latency(),
            e2e: Histogram::latency(),
            generated_tokens: AtomicU64::new(0),
        }
    }
}

impl WorkerMetrics {
    pub fn record(&self, result: Result<&Completion, &PoolError>) {
        match result {
            Ok(completion) => {
                self.requests.record(Outcome::Ok);
                self.queue_wait.observe_ms(completion.timings.queue_ms);
                self.ttft.observe_ms(completion.timings.ttft_ms);
                self.e2e.observe_ms(completion.timings.total_ms);
                self.generated_tokens.fetch_add(u64::from(completion.completion_tokens), Ordering::Relaxed);
            }
            Err(error) => self.requests.record(Outcome::of_error(error)),
        }
    }

    pub fn render(&self, load: Option<EngineLoad>, slots: u32, memory: ProcessMemory) -> String {
        let mut out = Exposition::new();
        self.requests.render(&mut out, "modelpool_worker_requests_total", "Requests by how they ended.");
        out.histogram("modelpool_worker_queue_wait_seconds", "Time a request waited for a free slot.", &self.queue_wait);
        out.histogram("modelpool_worker_time_to_first_token_seconds", "Arrival to the first generated token.", &self.ttft);
        out.histogram("modelpool_worker_request_duration_seconds", "Arrival to the last generated token.", &self.e2e);
        out.counter("modelpool_worker_generated_tokens_total", "Tokens generated for completed requests.", self.generated_tokens.load(Ordering::Relaxed));
        let load = load.unwrap_or_default();
        out.gauge("modelpool_worker_slots", "Slots (sequences decoded together).", f64::from(slots));
        out.gauge("modelpool_worker_slots_in_use", "Slots generating now.", f64::from(load.slots_in_use));
        out.gauge("modelpool_worker_queued", "Requests waiting for a slot.", f64::from(load.queued));
        out.gauge("modelpool_worker_kv_cells_used", "KV cache cells in use across slots.", f64::from(load.kv_cells_used));
        out.gauge("modelpool_worker_rss_bytes", "Resident memory of this process.", memory.rss_bytes as f64);
        out.gauge("modelpool_worker_pss_bytes", "Proportional memory: shared pages split among their users.", memory.pss_bytes as f64);
        out.gauge("modelpool_worker_uss_bytes", "Memory only this process uses.", memory.uss_bytes as f64);
        out.finish()
    }
}
