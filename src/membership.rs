//! Pool membership as the daemons work with it: what a worker says about itself when it joins and on
//! every heartbeat, and what the coordinator knows about each worker. The wire messages convert to and
//! from these types here and nowhere else, so the registry and the scheduler never see a proto type.

use std::time::Duration;

use crate::memory::ProcessMemory;
use crate::proto;

/// What a worker is and serves: fixed for its lifetime.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerDescription {
    /// Where it takes Predict calls (`http://host:port` or `https://…`).
    pub address: String,
    /// Random per process: tells a restarted worker on the same address from a second process.
    pub instance_id: String,
    pub pid: u32,
    /// The engine's name (`llama`, `mlx`), as the worker reports it.
    pub engine: String,
    pub model_path: String,
    pub model_name: String,
    pub model_size_bytes: u64,
    pub context_size: u32,
    pub context_per_slot: u32,
    pub slots: u32,
    pub queue_capacity: u32,
    pub threads: u32,
    pub threads_batch: u32,
    /// How long loading and warming the model took.
    pub load_ms: f64,
    /// The host-memory prompt store's bound in bytes and about how many tokens that holds (0: off).
    pub prompt_store_capacity_bytes: u64,
    pub prompt_store_tokens: u64,
    /// The kernels its engine computes with (for llama.cpp, the CPU module chosen at start).
    pub cpu_kernels: String,
    /// The most bytes of text one token covers (0: the tokenizer gives no such bound).
    pub max_token_bytes: u32,
}

impl WorkerDescription {
    /// About how many tokens' keys and values the worker keeps for reuse: its slots' contexts and what
    /// its prompt store holds. Read from its claim, so bounded by what a worker can have.
    pub fn cached_tokens_capacity(&self) -> u64 {
        let slots = u64::from(self.slots.clamp(1, crate::request::limits::MAX_SLOTS_PER_WORKER))
            * u64::from(self.context_per_slot.min(crate::request::limits::MAX_CONTEXT_PER_SLOT));
        slots + self.prompt_store_tokens.min(crate::request::limits::MAX_PROMPT_STORE_TOKENS)
    }
}

/// What a worker's engine is doing now and has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    pub slots_in_use: u32,
    pub queued: u32,
    pub served: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub kv_cells_used: u32,
    /// Prompt tokens evaluated by the model, and prompt tokens whose keys and values were reused.
    pub prompt_tokens_computed: u64,
    pub prompt_tokens_reused: u64,
    /// The host-memory prompt store: entries and bytes held now; since start, prompts restored from it,
    /// states saved into it and entries evicted.
    pub prompt_store_entries: u32,
    pub prompt_store_bytes: u64,
    pub prompt_store_hits: u64,
    pub prompt_store_saved: u64,
    pub prompt_store_evicted: u64,
}

/// A worker's full account of itself (its Info, and what it registers with): the description plus its
/// figures at that moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerReport {
    pub description: WorkerDescription,
    pub load: WorkerLoad,
    pub memory: ProcessMemory,
}

/// Whether a registered worker takes new prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerPhase {
    Serving,
    /// Shutting down: finishes what it has, takes nothing new.
    Draining,
}

/// A worker's periodic "still here", carrying its current figures when it has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub worker_id: String,
    /// The secret Register handed this worker; only its holder may heartbeat or deregister.
    pub lease: String,
    pub phase: WorkerPhase,
    pub load: Option<WorkerLoad>,
    pub memory: Option<ProcessMemory>,
}

/// The coordinator's answer to a registration.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub worker_id: String,
    pub heartbeat_interval: Duration,
    pub lease: String,
}

/// One registered worker as the coordinator lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    pub worker_id: String,
    /// The description it registered with, and its figures from its last heartbeat.
    pub report: WorkerReport,
    pub phase: WorkerPhase,
    /// Prompts the coordinator sent it that have not come back.
    pub in_flight: u32,
    pub last_heartbeat_age: Duration,
    pub completed: u64,
    /// Tokens generated for the prompts it answered through this coordinator.
    pub tokens_generated: u64,
    pub failed_attempts: u64,
}

impl From<proto::WorkerLoad> for WorkerLoad {
    fn from(l: proto::WorkerLoad) -> Self {
        Self {
            slots_in_use: l.slots_in_use,
            queued: l.queued,
            served: l.served,
            failed: l.failed,
            cancelled: l.cancelled,
            kv_cells_used: l.kv_cells_used,
            prompt_tokens_computed: l.prompt_tokens_computed,
            prompt_tokens_reused: l.prompt_tokens_reused,
            prompt_store_entries: l.prompt_store_entries,
            prompt_store_bytes: l.prompt_store_bytes,
            prompt_store_hits: l.prompt_store_hits,
            prompt_store_saved: l.prompt_store_saved,
            prompt_store_evicted: l.prompt_store_evicted,
        }
    }
}

impl From<WorkerLoad> for proto::WorkerLoad {
    fn from(l: WorkerLoad) -> Self {
        Self {
            slots_in_use: l.slots_in_use,
            queued: l.queued,
            served: l.served,
            failed: l.failed,
            cancelled: l.cancelled,
            kv_cells_used: l.kv_cells_used,
            prompt_tokens_computed: l.prompt_tokens_computed,
            prompt_tokens_reused: l.prompt_tokens_reused,
            prompt_store_entries: l.prompt_store_entries,
            prompt_store_bytes: l.prompt_store_bytes,
            prompt_store_hits: l.prompt_store_hits,
            prompt_store_saved: l.prompt_store_saved,
            prompt_store_evicted: l.prompt_store_evicted,
        }
    }
}

impl From<proto::WorkerInfo> for WorkerReport {
    fn from(info: proto::WorkerInfo) -> Self {
        Self {
            load: info.load.map(Into::into).unwrap_or_default(),
            memory: info.memory.map(Into::into).unwrap_or_default(),
            description: WorkerDescription {
                address: info.address,
                instance_id: info.instance_id,
                pid: info.pid,
                engine: info.engine,
                model_path: info.model_path,
                model_name: info.model_name,
                model_size_bytes: info.model_size_bytes,
                context_size: info.context_size,
                context_per_slot: info.context_per_slot,
                slots: info.slots,
                queue_capacity: info.queue_capacity,
                threads: info.threads,
                threads_batch: info.threads_batch,
                load_ms: info.load_ms,
                prompt_store_capacity_bytes: info.prompt_store_capacity_bytes,
                prompt_store_tokens: info.prompt_store_tokens,
                cpu_kernels: info.cpu_kernels,
                max_token_bytes: info.max_token_bytes,
            },
        }
    }
}

impl From<&WorkerReport> for proto::WorkerInfo {
    fn from(report: &WorkerReport) -> Self {
        let d = &report.description;
        Self {
            engine: d.engine.clone(),
            model_path: d.model_path.clone(),
            model_name: d.model_name.clone(),
            context_size: d.context_size,
            slots: d.slots,
            threads: d.threads,
            load_ms: d.load_ms,
            memory: Some(report.memory.into()),
            pid: d.pid,
            load: Some(report.load.into()),
            context_per_slot: d.context_per_slot,
            address: d.address.clone(),
            model_size_bytes: d.model_size_bytes,
            threads_batch: d.threads_batch,
            queue_capacity: d.queue_capacity,
            instance_id: d.instance_id.clone(),
            prompt_store_capacity_bytes: d.prompt_store_capacity_bytes,
            prompt_store_tokens: d.prompt_store_tokens,
            cpu_kernels: d.cpu_kernels.clone(),
            max_token_bytes: d.max_token_bytes,
        }
    }
}

impl WorkerPhase {
    /// An unspecified (or unknown) state reads as serving: a worker that says nothing is taking prompts.
    pub fn from_wire(state: i32) -> Self {
        match proto::WorkerState::try_from(state) {
            Ok(proto::WorkerState::Draining) => WorkerPhase::Draining,
            _ => WorkerPhase::Serving,
        }
    }
}

impl From<WorkerPhase> for proto::WorkerState {
    fn from(phase: WorkerPhase) -> Self {
        match phase {
            WorkerPhase::Serving => proto::WorkerState::Serving,
            WorkerPhase::Draining => proto::WorkerState::Draining,
        }
    }
}

impl From<proto::HeartbeatRequest> for Heartbeat {
    fn from(beat: proto::HeartbeatRequest) -> Self {
        Self {
            worker_id: beat.worker_id,
            lease: beat.lease,
            phase: WorkerPhase::from_wire(beat.state),
            load: beat.load.map(Into::into),
            memory: beat.memory.map(Into::into),
        }
    }
}

impl From<&Heartbeat> for proto::HeartbeatRequest {
    fn from(beat: &Heartbeat) -> Self {
        Self {
            worker_id: beat.worker_id.clone(),
            state: proto::WorkerState::from(beat.phase) as i32,
            load: beat.load.map(Into::into),
            memory: beat.memory.map(Into::into),
            lease: beat.lease.clone(),
        }
    }
}

impl From<Registered> for proto::RegisterResponse {
    fn from(r: Registered) -> Self {
        Self { worker_id: r.worker_id, heartbeat_interval_ms: r.heartbeat_interval.as_millis() as u32, lease: r.lease }
    }
}

impl From<&WorkerStatus> for proto::WorkerStatus {
    fn from(s: &WorkerStatus) -> Self {
        Self {
            worker_id: s.worker_id.clone(),
            info: Some((&s.report).into()),
            state: proto::WorkerState::from(s.phase) as i32,
            load: Some(s.report.load.into()),
            memory: Some(s.report.memory.into()),
            in_flight: s.in_flight,
            last_heartbeat_age_ms: s.last_heartbeat_age.as_secs_f64() * 1000.0,
            completed: s.completed,
            tokens_generated: s.tokens_generated,
            failed_attempts: s.failed_attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_and_a_heartbeat_round_trip_through_the_wire() {
        let report = WorkerReport {
            description: WorkerDescription {
                address: "http://127.0.0.1:7000".into(),
                instance_id: "i-1".into(),
                pid: 42,
                engine: "llama".into(),
                model_name: "m".into(),
                model_size_bytes: 10,
                context_per_slot: 512,
                slots: 2,
                load_ms: 1.5,
                prompt_store_capacity_bytes: 1 << 20,
                prompt_store_tokens: 45,
                cpu_kernels: "zen4 (probed)".into(),
                ..Default::default()
            },
            load: WorkerLoad {
                slots_in_use: 1,
                served: 3,
                prompt_tokens_reused: 9,
                prompt_store_hits: 4,
                prompt_store_bytes: 8,
                ..Default::default()
            },
            memory: ProcessMemory { rss_bytes: 7, pss_bytes: 5, uss_bytes: 3 },
        };
        assert_eq!(WorkerReport::from(proto::WorkerInfo::from(&report)), report);

        let beat =
            Heartbeat { worker_id: "w1".into(), lease: "l".into(), phase: WorkerPhase::Draining, load: None, memory: Some(report.memory) };
        assert_eq!(Heartbeat::from(proto::HeartbeatRequest::from(&beat)), beat);
    }

    #[test]
    fn the_cached_tokens_are_the_slots_and_the_store_bounded_like_any_claim() {
        let stored = WorkerDescription { slots: 2, context_per_slot: 512, prompt_store_tokens: 10_000, ..Default::default() };
        assert_eq!(stored.cached_tokens_capacity(), 1024 + 10_000);
        let greedy = WorkerDescription { slots: 1, context_per_slot: 64, prompt_store_tokens: u64::MAX, ..Default::default() };
        assert_eq!(greedy.cached_tokens_capacity(), 64 + crate::request::limits::MAX_PROMPT_STORE_TOKENS);
        let unsaid = WorkerDescription { slots: 3, ..Default::default() };
        assert_eq!(unsaid.cached_tokens_capacity(), 0);
    }

    #[test]
    fn a_missing_or_unknown_state_reads_as_serving() {
        assert_eq!(WorkerPhase::from_wire(proto::WorkerState::Unspecified as i32), WorkerPhase::Serving);
        assert_eq!(WorkerPhase::from_wire(99), WorkerPhase::Serving);
        assert_eq!(WorkerPhase::from_wire(proto::WorkerState::Draining as i32), WorkerPhase::Draining);
    }
}
