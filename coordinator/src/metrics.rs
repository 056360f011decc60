//! What the coordinator counts for `GET /metrics`: requests by outcome (gRPC and HTTP alike), latency
//! histograms, tokens generated; and, read from the scheduler at scrape time, the registered workers
//! with their in-flight, queued and memory figures.

use std::time::Instant;

use modelpool::PoolError;
use modelpool::membership::WorkerStatus;
use modelpool::metrics::{Exposition, RequestHelp, RequestMetrics};
use modelpool::response::PredictResponse;

use crate::activity::Activity;
use crate::scheduler::SchedulerGauges;

const HELP: RequestHelp = RequestHelp {
    requests: "Prompts by how they ended (gRPC and HTTP).",
    queue_wait: "Time a prompt waited in the coordinator's queue.",
    ttft: "Coordinator queue wait plus the worker's time to first token.",
    duration: "Admission to result at the coordinator.",
    tokens: "Tokens generated for answered prompts.",
};

#[derive(Debug, Default)]
pub struct CoordinatorMetrics {
    requests: RequestMetrics,
    /// The last errors and the throughput series, for the status page.
    pub activity: Activity,
}

impl CoordinatorMetrics {
    /// Records how one prompt ended; `started` is when the coordinator received it.
    pub fn record(&self, result: Result<&PredictResponse, &PoolError>, started: Instant) {
        match result {
            Ok(response) => {
                let stages = response.timings.as_ref().map(|t| (t.coordinator_queue_ms, t.coordinator_queue_ms + t.ttft_ms));
                self.requests.record_answer(stages, started.elapsed().as_secs_f64(), response.completion_tokens);
            }
            Err(error) => {
                self.requests.record_error(error);
                self.activity.record_error(error);
            }
        }
    }

    /// Requests by how they ended.
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        self.requests.outcomes()
    }

    /// Adds the last interval to the throughput series ([`crate::activity::SAMPLE_EVERY`]).
    pub fn sample_activity(&self) {
        let (answered, tokens) = self.requests.answered_and_tokens();
        self.activity.sample(answered, tokens);
    }

    pub fn render(&self, workers: &[WorkerStatus], scheduler: SchedulerGauges) -> String {
        let mut out = Exposition::new();
        self.requests.render(&mut out, "modelpool_coordinator", &HELP);
        out.gauge("modelpool_coordinator_workers", "Registered workers.", workers.len() as f64);
        out.gauge("modelpool_coordinator_workers_serving", "Registered workers that take prompts.", scheduler.serving_workers as f64);
        out.gauge(
            "modelpool_coordinator_queue_depth",
            "Prompts waiting in the coordinator's queue for a worker (scale workers on it).",
            scheduler.queue_depth as f64,
        );
        out.counter(
            "modelpool_coordinator_dispatch_passes_total",
            "Times the scheduler went over its queue to hand prompts to workers.",
            scheduler.dispatch_passes,
        );
        out.counter(
            "modelpool_coordinator_dispatch_prompts_examined_total",
            "Queued prompts those passes put before the routing policy (a bounded window from the front).",
            scheduler.prompts_examined,
        );

        type Figure = fn(&WorkerStatus) -> f64;
        let per_worker: [(&str, &str, Figure); 6] = [
            ("modelpool_worker_in_flight", "Prompts the coordinator has sent to the worker and not had back.", |w| f64::from(w.in_flight)),
            ("modelpool_worker_queued", "Requests waiting in the worker's own queue (last heartbeat).", |w| {
                f64::from(w.report.load.queued)
            }),
            ("modelpool_worker_slots_in_use", "The worker's busy slots (last heartbeat).", |w| f64::from(w.report.load.slots_in_use)),
            ("modelpool_worker_rss_bytes", "The worker's resident memory (last heartbeat).", |w| w.report.memory.rss_bytes as f64),
            ("modelpool_worker_pss_bytes", "The worker's proportional memory: shared pages split among their users.", |w| {
                w.report.memory.pss_bytes as f64
            }),
            ("modelpool_worker_completed", "Prompts the worker answered through this coordinator since it registered.", |w| {
                w.completed as f64
            }),
        ];
        for (name, help, figure) in per_worker {
            out.describe(name, "gauge", help);
            for w in workers {
                out.sample(name, &[("worker_id", &w.worker_id), ("address", &w.report.description.address)], figure(w));
            }
        }
        out.finish()
    }
}
