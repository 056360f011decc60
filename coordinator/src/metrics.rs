//! What the coordinator counts for `GET /metrics`: requests by outcome (gRPC and HTTP alike), latency
//! histograms, tokens generated; and, read from the scheduler at scrape time, the registered workers
//! with their in-flight, queued and memory figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use modelpool::PoolError;
use modelpool::metrics::{Exposition, Histogram, Outcome, Outcomes};
use modelpool::proto::{self, WorkerState};

#[derive(Debug)]
pub struct CoordinatorMetrics {
    pub requests: Outcomes,
    /// Time in the coordinator's queue before a worker took the prompt.
    pub queue_wait: Histogram,
    /// Queue wait plus the worker's time to first token.
    pub ttft: Histogram,
    /// Admission to result, as the coordinator saw it.
    pub e2e: Histogram,
    pub generated_tokens: AtomicU64,
}

impl Default for CoordinatorMetrics {
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

impl CoordinatorMetrics {
    /// Records how one prompt ended; `started` is when the coordinator received it.
    pub fn record(&self, result: Result<&proto::PredictResponse, &PoolError>, started: Instant) {
        match result {
            Ok(response) => {
                self.requests.record(Outcome::Ok);
                self.e2e.observe(started.elapsed().as_secs_f64());
                self.generated_tokens.fetch_add(u64::from(response.completion_tokens), Ordering::Relaxed);
                if let Some(t) = &response.timings {
                    self.queue_wait.observe_ms(t.coordinator_queue_ms);
                    self.ttft.observe_ms(t.coordinator_queue_ms + t.ttft_ms);
                }
            }
            Err(error) => self.requests.record(Outcome::of_error(error)),
        }
    }

    pub fn render(&self, workers: &[proto::WorkerStatus]) -> String {
        let mut out = Exposition::new();
        self.requests.render(&mut out, "modelpool_coordinator_requests_total", "Prompts by how they ended (gRPC and HTTP).");
        out.histogram("modelpool_coordinator_queue_wait_seconds", "Time a prompt waited in the coordinator's queue.", &self.queue_wait);
        out.histogram("modelpool_coordinator_time_to_first_token_seconds", "Coordinator queue wait plus the worker's time to first token.", &self.ttft);
        out.histogram("modelpool_coordinator_request_duration_seconds", "Admission to result at the coordinator.", &self.e2e);
        out.counter("modelpool_coordinator_generated_tokens_total", "Tokens generated for answered prompts.", self.generated_tokens.load(Ordering::Relaxed));
        let serving = workers.iter().filter(|w| w.state == WorkerState::Serving as i32).count();
        out.gauge("modelpool_coordinator_workers", "Registered workers.", workers.len() as f64);
        out.gauge("modelpool_coordinator_workers_serving", "Registered workers that take prompts.", serving as f64);

        type Figure = fn(&proto::WorkerStatus) -> f64;
        let per_worker: [(&str, &str, Figure); 6] = [
            ("modelpool_worker_in_flight", "Prompts the coordinator has sent to the worker and not had back.", |w| f64::from(w.in_flight)),
            ("modelpool_worker_queued", "Requests waiting in the worker's own queue (last heartbeat).", |w| w.load.map_or(0.0, |l| f64::from(l.queued))),
            ("modelpool_worker_slots_in_use", "The worker's busy slots (last heartbeat).", |w| w.load.map_or(0.0, |l| f64::from(l.slots_in_use))),
            ("modelpool_worker_rss_bytes", "The worker's resident memory (last heartbeat).", |w| w.memory.map_or(0.0, |m| m.rss_bytes as f64)),
            ("modelpool_worker_pss_bytes", "The worker's proportional memory: shared pages split among their users.", |w| w.memory.map_or(0.0, |m| m.pss_bytes as f64)),
            ("modelpool_worker_completed", "Prompts the worker answered through this coordinator since it registered.", |w| w.completed as f64),
        ];
        for (name, help, figure) in per_worker {
            out.describe(name, "gauge", help);
            for w in workers {
                let address = w.info.as_ref().map(|i| i.address.as_str()).unwrap_or("");
                out.sample(name, &[("worker_id", &w.worker_id), ("address", address)], figure(w));
            }
        }
        out.finish()
    }
}
