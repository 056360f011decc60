//! What a worker counts for `GET /metrics` (served on its gRPC port over HTTP/1.1): requests by
//! outcome, latency histograms and tokens generated; and, read at scrape time, its engine's load
//! and its own memory.

use modelpool::PoolError;
use modelpool::memory::ProcessMemory;
use modelpool::metrics::{Exposition, RequestHelp, RequestMetrics};

use crate::engine::{Completion, WorkerLoad};

const HELP: RequestHelp = RequestHelp {
    requests: "Requests by how they ended.",
    queue_wait: "Time a request waited for a free slot.",
    ttft: "Arrival to the first generated token.",
    duration: "Arrival to the last generated token.",
    tokens: "Tokens generated for completed requests.",
};

#[derive(Debug, Default)]
pub struct WorkerMetrics {
    requests: RequestMetrics,
}

impl WorkerMetrics {
    pub fn record(&self, result: Result<&Completion, &PoolError>) {
        match result {
            Ok(completion) => {
                let t = &completion.timings;
                self.requests.record_answer(Some((t.queue_ms, t.ttft_ms)), t.total_ms / 1000.0, completion.completion_tokens);
            }
            Err(error) => self.requests.record_error(error),
        }
    }

    /// `slots` and `store_capacity_bytes`: the engine's (0 before it has loaded).
    pub fn render(&self, load: Option<WorkerLoad>, slots: u32, store_capacity_bytes: u64, memory: ProcessMemory) -> String {
        let mut out = Exposition::new();
        self.requests.render(&mut out, "modelpool_worker", &HELP);
        let load = load.unwrap_or_default();
        out.gauge("modelpool_worker_slots", "Slots (sequences decoded together).", f64::from(slots));
        out.gauge("modelpool_worker_slots_in_use", "Slots generating now.", f64::from(load.slots_in_use));
        out.gauge("modelpool_worker_queued", "Requests waiting for a slot.", f64::from(load.queued));
        out.gauge(
            "modelpool_worker_kv_cells_used",
            "KV cache cells in use across slots, idle slots' cached prefixes included.",
            f64::from(load.kv_cells_used),
        );
        out.counter("modelpool_worker_prompt_tokens_computed_total", "Prompt tokens the model evaluated.", load.prompt_tokens_computed);
        out.counter(
            "modelpool_worker_prompt_tokens_reused_total",
            "Prompt tokens whose keys and values came from the prefix cache instead.",
            load.prompt_tokens_reused,
        );
        out.gauge(
            "modelpool_worker_prompt_store_entries",
            "Finished prompts held in the host-memory prompt store.",
            f64::from(load.prompt_store_entries),
        );
        out.gauge("modelpool_worker_prompt_store_bytes", "Bytes the prompt store holds.", load.prompt_store_bytes as f64);
        out.gauge(
            "modelpool_worker_prompt_store_capacity_bytes",
            "The prompt store's bound in bytes (--prompt-cache-mib).",
            store_capacity_bytes as f64,
        );
        out.counter("modelpool_worker_prompt_store_hits_total", "Prompts restored from the prompt store.", load.prompt_store_hits);
        out.counter("modelpool_worker_prompt_store_saved_total", "Sequence states saved into the prompt store.", load.prompt_store_saved);
        out.counter("modelpool_worker_prompt_store_evicted_total", "Entries evicted from the prompt store.", load.prompt_store_evicted);
        out.gauge("modelpool_worker_rss_bytes", "Resident memory of this process.", memory.rss_bytes as f64);
        out.gauge("modelpool_worker_pss_bytes", "Proportional memory: shared pages split among their users.", memory.pss_bytes as f64);
        out.gauge("modelpool_worker_uss_bytes", "Memory only this process uses.", memory.uss_bytes as f64);
        out.finish()
    }
}
