//! The pool's membership: which workers exist, what they serve, how loaded they are, and when they were
//! last heard from. Plain data owned by the scheduler task; no locks, no I/O, so it is tested directly.

use std::collections::HashMap;
use std::time::Duration;

// Tokio's clock, as the scheduler's (tests can pause it).
use tokio::time::Instant;

use modelpool::PoolError;
use modelpool::auth::constant_time_eq;
use modelpool::membership::{Heartbeat, WorkerDescription, WorkerLoad, WorkerPhase, WorkerReport, WorkerStatus};
use modelpool::memory::ProcessMemory;
use modelpool::request::limits;

use crate::routing::Candidate;

/// One registered worker as the coordinator sees it.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    pub id: String,
    /// The secret its heartbeats and deregistration must carry (see `RegisterResponse.lease`).
    lease: String,
    pub description: WorkerDescription,
    pub phase: WorkerPhase,
    /// Its figures from its last heartbeat (from registration until the first).
    pub load: WorkerLoad,
    pub memory: ProcessMemory,
    pub last_seen: Instant,
    /// Prompts sent to this worker that have not come back.
    pub in_flight: u32,
    /// A call to it just failed at the transport level; no new work until it heartbeats again.
    pub suspect: bool,
    pub completed: u64,
    pub tokens_generated: u64,
    pub failed_attempts: u64,
    /// Prefix keys of prompts that finished here since the last dispatch to it: the slots they freed
    /// hold those prefixes (see `routing`).
    pub freed: Vec<Vec<u64>>,
}

impl WorkerEntry {
    /// How many prompts it may hold at once: one per slot, so that waiting happens in the coordinator's
    /// queue, where any worker that frees up can take the next prompt.
    pub fn capacity(&self) -> u32 {
        self.description.slots.max(1)
    }

    pub fn is_live(&self) -> bool {
        self.phase == WorkerPhase::Serving && !self.suspect
    }

    pub fn status(&self, now: Instant) -> WorkerStatus {
        WorkerStatus {
            worker_id: self.id.clone(),
            report: WorkerReport { description: self.description.clone(), load: self.load, memory: self.memory },
            phase: self.phase,
            in_flight: self.in_flight,
            last_heartbeat_age: now.saturating_duration_since(self.last_seen),
            completed: self.completed,
            tokens_generated: self.tokens_generated,
            failed_attempts: self.failed_attempts,
        }
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    workers: HashMap<String, WorkerEntry>,
    next_id: u64,
}

impl Registry {
    /// Adds a worker and returns its id. Refused: a claim on a registered worker's address, by another
    /// instance or by the same one (until that registration is deregistered or evicted: a live one is
    /// never replaced), one instance under a second address, and a worker serving a different model
    /// from the rest of the pool (results would silently depend on where a prompt went).
    pub fn register(&mut self, report: WorkerReport, lease: String, now: Instant) -> Result<String, PoolError> {
        // Refusals name the fields of the Register call (`info.*`) that a worker operator would fix.
        let WorkerReport { description: info, load, memory } = report;
        if info.address.is_empty() {
            return Err(PoolError::invalid("info.address", "empty: the worker must say where it listens"));
        }
        if !(info.address.starts_with("http://") || info.address.starts_with("https://")) {
            return Err(PoolError::invalid("info.address", format!("{:?} is not an http:// or https:// URL", info.address)));
        }
        // Bounded by what a worker can have: a registration claiming more would draw nearly every
        // prompt (the pick is by in-flight / slots), or, with a tiny context, fail them all at admission.
        if info.slots == 0 || info.slots > limits::MAX_SLOTS_PER_WORKER {
            return Err(PoolError::invalid(
                "info.slots",
                format!("{}; a worker has 1 to {} slots", info.slots, limits::MAX_SLOTS_PER_WORKER),
            ));
        }
        // The prefix index sizes a worker's entries by its context.
        if !(limits::MIN_CONTEXT_PER_SLOT..=limits::MAX_CONTEXT_PER_SLOT).contains(&info.context_per_slot) {
            return Err(PoolError::invalid(
                "info.context_per_slot",
                format!(
                    "{}; a worker has {} to {} tokens per slot",
                    info.context_per_slot,
                    limits::MIN_CONTEXT_PER_SLOT,
                    limits::MAX_CONTEXT_PER_SLOT
                ),
            ));
        }
        if info.instance_id.is_empty() {
            return Err(PoolError::invalid("info.instance_id", "empty: a worker names the run of the process that registers"));
        }
        let same_instance = |w: &WorkerEntry| w.description.instance_id == info.instance_id;
        if let Some(holder) = self.workers.values().find(|w| w.description.address == info.address) {
            // A live registration is acted on only with its lease (heartbeat, deregister), never replaced:
            // address and instance are public (ListWorkers, Info), so a replacement would let any token
            // holder take a worker over, and the old entry's attempts and index entries would be orphaned.
            // A worker whose Register answer was lost registers once its entry has missed its heartbeats.
            return Err(PoolError::AlreadyExists(if same_instance(holder) {
                format!(
                    "info.instance_id: instance {:?} is registered as worker {} already; only its lease acts on it, and it \
                     may register again once that registration is deregistered or misses its heartbeats",
                    info.instance_id, holder.id
                )
            } else {
                format!(
                    "info.address: {} is registered to worker {} (instance {:?}); a second process cannot claim it until that one deregisters or misses its heartbeats",
                    info.address, holder.id, holder.description.instance_id
                )
            }));
        }
        if let Some(first) = self.workers.values().find(|w| same_instance(w)) {
            return Err(PoolError::AlreadyExists(format!(
                "info.instance_id: instance {:?} is already registered as worker {} at {}; one process serves one address",
                info.instance_id, first.id, first.description.address
            )));
        }
        if let Some(other) = self
            .workers
            .values()
            .find(|w| w.description.model_name != info.model_name || w.description.model_size_bytes != info.model_size_bytes)
        {
            return Err(PoolError::FailedPrecondition(format!(
                "info.model_name: worker serves {:?} ({} bytes) but the pool serves {:?} ({} bytes)",
                info.model_name, info.model_size_bytes, other.description.model_name, other.description.model_size_bytes
            )));
        }
        self.next_id += 1;
        let id = format!("w{}-{}", self.next_id, info.pid);
        let entry = WorkerEntry {
            id: id.clone(),
            lease,
            load,
            memory,
            description: info,
            phase: WorkerPhase::Serving,
            last_seen: now,
            in_flight: 0,
            suspect: false,
            completed: 0,
            tokens_generated: 0,
            failed_attempts: 0,
            freed: Vec::new(),
        };
        self.workers.insert(id.clone(), entry);
        Ok(id)
    }

    /// The entry of `worker_id` if `lease` is the one it registered with.
    fn leased(&mut self, worker_id: &str, lease: &str) -> Result<&mut WorkerEntry, PoolError> {
        let entry = self
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| PoolError::NotFound(format!("worker_id {worker_id:?} is not registered; call Register")))?;
        if !constant_time_eq(lease.as_bytes(), entry.lease.as_bytes()) {
            return Err(PoolError::PermissionDenied(format!(
                "lease: worker {worker_id} is held by the instance that registered it; only that one may heartbeat or deregister it"
            )));
        }
        Ok(entry)
    }

    pub fn heartbeat(&mut self, beat: Heartbeat, now: Instant) -> Result<(), PoolError> {
        let entry = self.leased(&beat.worker_id, &beat.lease)?;
        entry.last_seen = now;
        entry.suspect = false;
        entry.phase = beat.phase;
        if let Some(load) = beat.load {
            entry.load = load;
        }
        if let Some(memory) = beat.memory {
            entry.memory = memory;
        }
        Ok(())
    }

    pub fn deregister(&mut self, worker_id: &str, lease: &str) -> Result<WorkerEntry, PoolError> {
        self.leased(worker_id, lease)?;
        Ok(self.workers.remove(worker_id).expect("checked just above"))
    }

    /// Removes workers not heard from within `timeout`; returns their ids.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<String> {
        let dead: Vec<String> =
            self.workers.values().filter(|w| now.saturating_duration_since(w.last_seen) > timeout).map(|w| w.id.clone()).collect();
        for id in &dead {
            self.workers.remove(id);
        }
        dead
    }

    pub fn get_mut(&mut self, worker_id: &str) -> Option<&mut WorkerEntry> {
        self.workers.get_mut(worker_id)
    }

    pub fn get(&self, worker_id: &str) -> Option<&WorkerEntry> {
        self.workers.get(worker_id)
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Workers that could take work now or soon (serving, not suspect).
    pub fn live_count(&self) -> usize {
        self.workers.values().filter(|w| w.is_live()).count()
    }

    /// Workers serving prompts, suspect ones included (a missed beat is not a departure): readiness.
    pub fn serving_count(&self) -> usize {
        self.workers.values().filter(|w| w.phase == WorkerPhase::Serving).count()
    }

    /// The smallest per-slot context in the pool: the longest request every worker can take.
    pub fn min_context_per_slot(&self) -> Option<u32> {
        self.workers.values().map(|w| w.description.context_per_slot).filter(|&c| c > 0).min()
    }

    /// The most bytes of text one token covers, over every worker (the loosest bound, so that no worker
    /// would have taken a prompt it refuses); `None` unless every worker reports one.
    pub fn max_token_bytes(&self) -> Option<u32> {
        let claims: Vec<u32> = self.workers.values().map(|w| w.description.max_token_bytes).collect();
        if claims.is_empty() || claims.contains(&0) { None } else { claims.into_iter().max() }
    }

    /// The live workers, as routing sees them.
    pub fn candidates(&self) -> Vec<Candidate> {
        let mut live: Vec<Candidate> = self
            .workers
            .values()
            .filter(|w| w.is_live())
            .map(|w| Candidate { id: w.id.clone(), in_flight: w.in_flight, capacity: w.capacity(), freed: w.freed.clone() })
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        live
    }

    pub fn statuses(&self, now: Instant) -> Vec<WorkerStatus> {
        let mut statuses: Vec<_> = self.workers.values().map(|w| w.status(now)).collect();
        statuses.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        statuses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix_index::PrefixIndex;
    use crate::routing::{self, Routing, Waiting};

    /// Where least-loaded routing sends one prompt that failed on the workers in `tried`.
    fn pick(registry: &Registry, tried: &[String]) -> Option<String> {
        let waiting = [Waiting { key: &[], tried, may_wait: false }];
        routing::assign(Routing::LeastLoaded, &mut registry.candidates(), &PrefixIndex::default(), &waiting).pop().map(|(_, id)| id)
    }

    fn info(port: u16, slots: u32) -> WorkerReport {
        let description = WorkerDescription {
            address: format!("http://127.0.0.1:{port}"),
            slots,
            model_name: "m".into(),
            model_size_bytes: 10,
            context_per_slot: 512,
            instance_id: format!("instance-{port}"),
            ..Default::default()
        };
        WorkerReport { description, ..Default::default() }
    }

    fn beat(worker_id: &str, phase: WorkerPhase, lease: &str) -> Heartbeat {
        Heartbeat { worker_id: worker_id.into(), lease: lease.into(), phase, load: None, memory: None }
    }

    #[test]
    fn picks_the_least_loaded_worker_with_room() {
        let now = Instant::now();
        let mut registry = Registry::default();
        let a = registry.register(info(1, 1), String::new(), now).unwrap();
        let b = registry.register(info(2, 4), String::new(), now).unwrap();
        registry.get_mut(&a).unwrap().in_flight = 1;
        assert_eq!(pick(&registry, &[]), Some(b.clone()));
        registry.get_mut(&b).unwrap().in_flight = 4;
        assert_eq!(pick(&registry, &[]), None, "both full");
        registry.get_mut(&b).unwrap().in_flight = 1; // 1/4 loaded beats 1/1
        registry.get_mut(&a).unwrap().in_flight = 0;
        assert_eq!(pick(&registry, &[]), Some(a.clone()), "0/1 beats 1/4");
    }

    #[test]
    fn retries_prefer_untried_workers_and_reuse_only_when_all_were_tried() {
        let now = Instant::now();
        let mut registry = Registry::default();
        let a = registry.register(info(1, 1), String::new(), now).unwrap();
        let b = registry.register(info(2, 1), String::new(), now).unwrap();
        assert_eq!(pick(&registry, std::slice::from_ref(&a)), Some(b.clone()));
        registry.get_mut(&b).unwrap().in_flight = 1;
        assert_eq!(pick(&registry, std::slice::from_ref(&a)), None, "b is busy but untried: wait for it");
        assert_eq!(pick(&registry, &[a.clone(), b.clone()]), Some(a));
    }

    #[test]
    fn suspect_and_draining_workers_get_no_work_until_they_heartbeat_serving() {
        let now = Instant::now();
        let mut registry = Registry::default();
        let a = registry.register(info(1, 1), String::new(), now).unwrap();
        registry.get_mut(&a).unwrap().suspect = true;
        assert_eq!(pick(&registry, &[]), None);
        registry.heartbeat(beat(&a, WorkerPhase::Serving, ""), now).unwrap();
        assert_eq!(pick(&registry, &[]), Some(a.clone()));
        registry.heartbeat(beat(&a, WorkerPhase::Draining, ""), now).unwrap();
        assert_eq!(pick(&registry, &[]), None);
    }

    #[test]
    fn silent_workers_expire_and_unknown_heartbeats_are_not_found() {
        let start = Instant::now();
        let mut registry = Registry::default();
        let a = registry.register(info(1, 1), String::new(), start).unwrap();
        let b = registry.register(info(2, 1), String::new(), start).unwrap();
        let later = start + Duration::from_millis(1500);
        registry.heartbeat(beat(&b, WorkerPhase::Serving, ""), later).unwrap();
        assert_eq!(registry.expire(later, Duration::from_secs(1)), vec![a.clone()]);
        let error = registry.heartbeat(beat(&a, WorkerPhase::Serving, ""), later).unwrap_err();
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert!(error.to_string().contains(&a));
    }

    #[test]
    fn other_models_and_nameless_workers_are_refused() {
        let now = Instant::now();
        let mut registry = Registry::default();
        registry.register(info(1, 1), String::new(), now).unwrap();
        let mut other = info(2, 1);
        other.description.model_name = "another".into();
        assert_eq!(registry.register(other, String::new(), now).unwrap_err().code(), tonic::Code::FailedPrecondition);
        let mut nowhere = info(3, 1);
        nowhere.description.address = String::new();
        assert!(registry.register(nowhere, String::new(), now).unwrap_err().to_string().contains("info.address"));
        let mut anonymous = info(4, 1);
        anonymous.description.instance_id = String::new();
        assert!(registry.register(anonymous, String::new(), now).unwrap_err().to_string().contains("info.instance_id"));
    }

    #[test]
    fn an_address_belongs_to_one_instance_and_an_instance_to_one_address() {
        let now = Instant::now();
        let mut registry = Registry::default();
        let with_instance = |port, instance: &str| {
            let mut report = info(port, 1);
            report.description.instance_id = instance.into();
            report
        };
        let first = registry.register(with_instance(1, "a"), "lease-a".into(), now).unwrap();
        // The same instance again, from anyone who read its address and instance: never a replacement.
        let again = registry.register(with_instance(1, "a"), String::new(), now).unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists);
        assert!(again.to_string().contains("info.instance_id") && again.to_string().contains(&first), "{again}");
        assert_eq!(registry.get(&first).map(|w| w.lease.as_str()), Some("lease-a"));
        // Another process claiming that address is refused while the first is registered.
        let claim = registry.register(with_instance(1, "b"), String::new(), now).unwrap_err();
        assert_eq!(claim.code(), tonic::Code::AlreadyExists);
        assert!(claim.to_string().contains("info.address"), "{claim}");
        // The first instance under a second address is refused too.
        let moved = registry.register(with_instance(2, "a"), String::new(), now).unwrap_err();
        assert_eq!(moved.code(), tonic::Code::AlreadyExists);
        assert!(moved.to_string().contains("info.instance_id"), "{moved}");
        // Once the first has left, the address is free.
        registry.deregister(&first, "lease-a").unwrap();
        registry.register(with_instance(1, "b"), String::new(), now).unwrap();
    }

    #[test]
    fn only_the_lease_holder_heartbeats_or_deregisters_and_claims_are_bounded() {
        let now = Instant::now();
        let mut registry = Registry::default();
        let id = registry.register(info(1, 1), "lease-a".into(), now).unwrap();
        let beat = |lease: &str| beat(&id, WorkerPhase::Serving, lease);
        assert_eq!(registry.heartbeat(beat("lease-b"), now).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(registry.deregister(&id, "").unwrap_err().code(), tonic::Code::PermissionDenied);
        registry.heartbeat(beat("lease-a"), now).unwrap();
        let greedy = registry.register(info(2, u32::MAX), String::new(), now).unwrap_err();
        assert!(greedy.to_string().contains("info.slots"), "{greedy}");
        let mut tiny = info(3, 1);
        tiny.description.context_per_slot = 1;
        let tiny = registry.register(tiny, String::new(), now).unwrap_err();
        assert!(tiny.to_string().contains("info.context_per_slot"), "{tiny}");
        let mut vast = info(4, 1);
        vast.description.context_per_slot = u32::MAX;
        let vast = registry.register(vast, String::new(), now).unwrap_err();
        assert!(vast.to_string().contains("info.context_per_slot"), "{vast}");
        registry.deregister(&id, "lease-a").unwrap();
        assert!(registry.is_empty());
    }
}
