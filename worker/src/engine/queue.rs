//! What every engine shares around its inference thread: the bounded queue jobs wait in, the load
//! counters the thread updates and the gRPC side reads, and the warm-up that precedes SERVING.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::Instant;

use modelpool::{PoolError, PredictRequest};
use tokio::sync::mpsc;

use super::prompt_store::StoreStats;
use super::{Completion, Delivery, Engine, Job, JobEvent, WorkerLoad, fault};

/// Counters the engine thread updates and the gRPC side reads.
#[derive(Debug, Default)]
pub struct LoadCounters {
    pub slots_in_use: AtomicU32,
    pub queued: AtomicU32,
    pub served: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub kv_cells_used: AtomicU32,
    pub prompt_tokens_computed: AtomicU64,
    pub prompt_tokens_reused: AtomicU64,
    pub prompt_store_entries: AtomicU32,
    pub prompt_store_bytes: AtomicU64,
    pub prompt_store_hits: AtomicU64,
    pub prompt_store_saved: AtomicU64,
    pub prompt_store_evicted: AtomicU64,
    /// Jobs the engine thread has taken from the queue (the warm-up included).
    pub taken: AtomicU64,
}

impl LoadCounters {
    pub fn snapshot(&self) -> WorkerLoad {
        WorkerLoad {
            slots_in_use: self.slots_in_use.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            served: self.served.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            kv_cells_used: self.kv_cells_used.load(Ordering::Relaxed),
            prompt_tokens_computed: self.prompt_tokens_computed.load(Ordering::Relaxed),
            prompt_tokens_reused: self.prompt_tokens_reused.load(Ordering::Relaxed),
            prompt_store_entries: self.prompt_store_entries.load(Ordering::Relaxed),
            prompt_store_bytes: self.prompt_store_bytes.load(Ordering::Relaxed),
            prompt_store_hits: self.prompt_store_hits.load(Ordering::Relaxed),
            prompt_store_saved: self.prompt_store_saved.load(Ordering::Relaxed),
            prompt_store_evicted: self.prompt_store_evicted.load(Ordering::Relaxed),
        }
    }

    /// Publishes what the prompt store holds and has done.
    pub fn record_store(&self, stats: StoreStats) {
        self.prompt_store_entries.store(stats.entries, Ordering::Relaxed);
        self.prompt_store_bytes.store(stats.bytes, Ordering::Relaxed);
        self.prompt_store_hits.store(stats.hits, Ordering::Relaxed);
        self.prompt_store_saved.store(stats.saved, Ordering::Relaxed);
        self.prompt_store_evicted.store(stats.evicted, Ordering::Relaxed);
    }

    /// Counts a prompt of `total` tokens of which `reused` came from the prefix cache.
    pub fn record_prompt(&self, total: usize, reused: usize) {
        self.prompt_tokens_computed.fetch_add((total - reused) as u64, Ordering::Relaxed);
        self.prompt_tokens_reused.fetch_add(reused as u64, Ordering::Relaxed);
    }
}

/// The sending side of an engine's bounded job queue.
pub struct JobQueue {
    jobs: SyncSender<Job>,
    pub counters: Arc<LoadCounters>,
    capacity: u32,
    slots: u32,
    /// False once the engine thread has ended (returned or panicked); see [`EngineThread`].
    alive: Arc<AtomicBool>,
}

/// Held by the engine thread for its whole life: when the thread ends, returning or unwinding from a
/// panic, it marks the queue's engine dead, so the worker can stop saying it serves.
pub struct EngineThread(Arc<AtomicBool>);

impl Drop for EngineThread {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl JobQueue {
    /// A queue holding at most `capacity` jobs that wait for one of `slots`; the receiver goes to the
    /// engine thread, which takes a job only when a slot is free.
    pub fn new(capacity: u32, slots: u32) -> (Self, Receiver<Job>) {
        let (jobs, receiver) = sync_channel(capacity as usize);
        let alive = Arc::new(AtomicBool::new(true));
        (Self { jobs, counters: Arc::new(LoadCounters::default()), capacity, slots, alive }, receiver)
    }

    /// The guard the engine thread holds (see [`EngineThread`]).
    pub fn engine_thread(&self) -> EngineThread {
        EngineThread(Arc::clone(&self.alive))
    }

    /// Whether the engine thread is still running.
    pub fn engine_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Refuses now, before a request is tokenized, when the queue is already full; `submit` still
    /// decides (another request may take the last place in between).
    pub fn refuse_if_full(&self) -> Result<(), PoolError> {
        if self.counters.queued.load(Ordering::Relaxed) >= self.capacity { Err(self.full()) } else { Ok(()) }
    }

    fn full(&self) -> PoolError {
        PoolError::ResourceExhausted(format!("worker queue is full ({} waiting for {} slots)", self.capacity, self.slots))
    }

    /// Queues a job without blocking; a full queue is refused at once.
    pub fn submit(&self, job: Job) -> Result<(), PoolError> {
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                Err(self.full())
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                Err(PoolError::Unavailable("the engine thread has stopped".into()))
            }
        }
    }
}

/// The error for the jobs of a forward pass that failed. Alone, the job failed by itself (INTERNAL).
/// With others, any of them may be the cause: each is told to retry alone (ABORTED) rather than charged
/// with a failure that may be its neighbour's.
pub fn forward_failed(sequences: usize, error: impl std::fmt::Display) -> PoolError {
    if sequences > 1 {
        PoolError::Aborted(format!(
            "the forward pass of a batch of {sequences} sequences failed ({error}); this prompt may not be the cause: retry it alone"
        ))
    } else {
        PoolError::Internal(format!("the forward pass of this prompt failed: {error}"))
    }
}

/// What an engine thread gets when it asks its queue for work. Returned by value and matched at once,
/// never stored, so the size of its job variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum NextJob {
    Job(Job),
    /// Nothing is waiting (only when not blocking).
    Empty,
    /// Every sender is gone: the engine is shutting down.
    Closed,
}

/// The next job whose client is still waiting: blocks for one when `idle` (nothing is running), else
/// takes only what is already queued. A job whose client went away while it waited is counted as
/// cancelled and skipped.
pub fn next_job(queue: &Receiver<Job>, idle: bool, counters: &LoadCounters) -> NextJob {
    loop {
        let job = if idle {
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return NextJob::Closed,
            }
        } else {
            match queue.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty) => return NextJob::Empty,
                Err(TryRecvError::Disconnected) => return NextJob::Closed,
            }
        };
        counters.queued.fetch_sub(1, Ordering::Relaxed);
        let taken = counters.taken.fetch_add(1, Ordering::Relaxed) + 1;
        if fault::panics_taking(taken) {
            panic!("fault injection (MODELPOOL_FAULT_ENGINE_PANIC_AFTER): the engine thread dies taking job {taken}");
        }
        if job.events.is_closed() {
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        return NextJob::Job(job);
    }
}

/// Takes jobs for an engine loop, keeping `alone` jobs (see [`Job::alone`]) alone: one waits, holding
/// the queue's order, until the running sequences have finished, and nothing joins it while it runs.
#[derive(Default)]
pub struct Intake {
    held: Option<Job>,
}

impl Intake {
    /// The next job that may start beside the `running` ones (`running_alone`: one of them runs alone).
    /// Blocks only when nothing runs and nothing is held.
    pub fn next(&mut self, queue: &Receiver<Job>, running: usize, running_alone: bool, counters: &LoadCounters) -> NextJob {
        if running_alone {
            return NextJob::Empty;
        }
        if let Some(job) = self.held.take() {
            if job.events.is_closed() {
                counters.cancelled.fetch_add(1, Ordering::Relaxed);
            } else if running == 0 {
                return NextJob::Job(job);
            } else {
                self.held = Some(job);
                return NextJob::Empty;
            }
        }
        match next_job(queue, running == 0, counters) {
            NextJob::Job(job) if job.alone && running > 0 => {
                self.held = Some(job);
                NextJob::Empty
            }
            other => other,
        }
    }

    /// Whether a job is waiting here for the running ones to finish.
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }
}

/// Generates one token so that the first real request does not pay for first-touch page faults; the
/// warm-up is not counted as served.
pub fn warm_up(engine: &dyn Engine, counters: &LoadCounters) -> Result<(), PoolError> {
    generate_blocking(engine, "warm-up", &PredictRequest::user("Hi", 1))?;
    counters.served.fetch_sub(1, Ordering::Relaxed);
    Ok(())
}

/// Prepares `request`, runs it through the engine's queue and batch loop as the worker serves it (the
/// whole text at the end) and waits for it on this thread, which must not be the async runtime's:
/// the warm-up, and tests that drive an engine without a server. Returns the prompt's tokens too.
pub fn generate_blocking(engine: &dyn Engine, request_id: &str, request: &PredictRequest) -> Result<(Vec<i32>, Completion), PoolError> {
    let prompt = engine.prepare(request)?;
    let tokens = prompt.tokens.clone();
    let (events, mut rx) = mpsc::unbounded_channel();
    engine.submit(Job {
        request_id: request_id.into(),
        prompt,
        sampling: request.sampling.clone(),
        arrived: Instant::now(),
        events,
        delivery: Delivery::Whole,
        alone: false,
        poisoned: false,
    })?;
    while let Some(event) = rx.blocking_recv() {
        match event {
            JobEvent::Text(_) => {}
            JobEvent::Done(completion) => return Ok((tokens, completion)),
            JobEvent::Failed(e) => return Err(e),
        }
    }
    Err(PoolError::Internal(format!("engine thread stopped during {request_id}")))
}
