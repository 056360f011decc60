//! The scheduler: one task owns the registry and the queue of waiting prompts; everything else talks to
//! it through commands. Workers pull work in effect: a prompt is sent to a worker only when that worker
//! has a free slot, so a slow worker simply takes fewer prompts and never holds up a batch. A prompt whose
//! attempt fails for a reason another worker might not share is put back at the head of the queue and
//! tried elsewhere, a bounded number of times; every accepted prompt gets exactly one reply.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use modelpool::auth::{AuthChannel, Credentials};
use modelpool::context_fit::ContextFit;
use modelpool::membership::{Heartbeat, Registered, WorkerReport, WorkerStatus};
use modelpool::proto::worker_client::WorkerClient;
use modelpool::request::Prompt;
use modelpool::response::PredictResponse;
use modelpool::{PoolError, PredictRequest};
use tokio::sync::{mpsc, oneshot, watch};
// Tokio's clock, so that tests can pause it where the scheduler waits (no-worker waits, heartbeats);
// the same as the system's monotonic clock otherwise.
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::prefix_index::{PrefixIndex, capacity_for, prefix_key};
use crate::registry::Registry;
use crate::retry::{self, Decision, Tries};
use crate::routing::{self, Candidate, Routing, Waiting};
use crate::worker_client::{self, ProgressTimeouts};

/// How the scheduler behaves; see the `serve` flags for what each means.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub max_queue: usize,
    /// What the waiting prompts may hold in all, in bytes (see [`queued_bytes`]).
    pub max_queue_bytes: u64,
    pub max_attempts: u32,
    /// How long an attempt may go without progress before it is retried elsewhere.
    pub progress: ProgressTimeouts,
    pub routing: Routing,
    /// How long a prompt may wait for the busy worker holding its prefix while another has room.
    pub affinity_wait: Duration,
    /// How long admitted prompts wait for a live worker when there is none, before failing; zero fails
    /// them (and refuses new ones) at once.
    pub no_worker_wait: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            max_queue: 1024,
            max_queue_bytes: 64 << 20,
            max_attempts: 3,
            progress: ProgressTimeouts::default(),
            routing: Routing::default(),
            affinity_wait: Duration::from_millis(3000),
            no_worker_wait: Duration::from_secs(10),
        }
    }
}

pub type Reply = oneshot::Sender<Result<PredictResponse, PoolError>>;

/// One prompt handed to the scheduler: the request, where the result goes, and where its text goes as
/// it is generated if streamed.
struct Submission {
    request: PredictRequest,
    reply: Reply,
    pieces: Option<Pieces>,
    /// How the caller names this prompt in errors: "" for a single prompt, "requests[3]." in a batch.
    field: String,
}

pub use crate::worker_client::Pieces;

/// A prompt accepted by the coordinator, waiting or running.
struct Job {
    request: PredictRequest,
    /// Ask the worker to run it with no other sequence beside it (see `retry::after_failure`).
    run_alone: bool,
    /// The prompt's prefix key for routing (see `prefix_index`).
    key: Vec<u64>,
    /// What it holds while it waits, counted against `max_queue_bytes`.
    bytes: u64,
    reply: Reply,
    /// Set for streamed prompts: the text goes here piece by piece, and `reply` gets the final response.
    pieces: Option<Pieces>,
    /// Some text already went to the caller: a retry would repeat it, so a failure now is final.
    streamed: bool,
    attempts: u32,
    /// Attempts that ended in an internal error (see `retry::after_failure`).
    internal_errors: u32,
    tried: Vec<String>,
    accepted: Instant,
    last_error: Option<PoolError>,
}

// Commands move through the actor's channel one at a time; boxing the large ones would add an
// allocation to every attempt for no saving.
#[allow(clippy::large_enum_variant)]
enum Command {
    Register {
        report: WorkerReport,
        reply: oneshot::Sender<Result<Registered, PoolError>>,
    },
    Heartbeat {
        beat: Heartbeat,
        reply: oneshot::Sender<Result<(), PoolError>>,
    },
    Deregister {
        worker_id: String,
        lease: String,
        reply: oneshot::Sender<Result<(), PoolError>>,
    },
    List {
        reply: oneshot::Sender<Vec<WorkerStatus>>,
    },
    /// Several prompts admitted together or not at all.
    Submit {
        jobs: Vec<Submission>,
        admitted: oneshot::Sender<Result<(), PoolError>>,
    },
    AttemptDone {
        worker_id: String,
        job: Job,
        dispatched: Instant,
        result: Result<PredictResponse, tonic::Status>,
    },
}

/// A handle to the scheduler task; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    commands: mpsc::Sender<Command>,
    gauges: Arc<Gauges>,
}

/// What the actor publishes after every command, for readers that must not queue behind it: readiness
/// probes and /metrics are unauthenticated, so answering them costs the actor nothing.
#[derive(Default)]
struct Gauges {
    /// Prompts waiting in the queue (for /metrics and autoscalers).
    queue_depth: AtomicUsize,
    /// Workers registered and serving (suspect or not): what readiness means.
    serving_workers: AtomicUsize,
    /// Times the actor went over a non-empty queue to hand prompts out.
    dispatch_passes: AtomicU64,
    /// Queued prompts those passes put before the routing policy (at most `DISPATCH_WINDOW` each).
    prompts_examined: AtomicU64,
}

/// The scheduler's published counters, as one reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchedulerGauges {
    pub queue_depth: usize,
    pub serving_workers: usize,
    pub dispatch_passes: u64,
    pub prompts_examined: u64,
}

/// Queued prompts one dispatch pass considers, from the front. Routing costs each prompt a look at every
/// worker's prefix index, and a pass follows every command that could free or fill a slot; past the
/// window a prompt waits for those ahead of it to leave, as it would in a queue served in order.
const DISPATCH_WINDOW: usize = 512;

/// The one answer to a caller whose prompt the coordinator can no longer run because it is stopping.
pub fn stopped() -> PoolError {
    PoolError::Unavailable("the coordinator is shutting down".into())
}

impl Scheduler {
    /// Starts the scheduler task; it stops when every handle is dropped. `credentials` go on every call
    /// to a worker.
    pub fn start(config: SchedulerConfig, credentials: Credentials) -> Self {
        let (commands, inbox) = mpsc::channel(1024);
        let gauges = Arc::new(Gauges::default());
        let actor = Actor {
            gauges: Arc::clone(&gauges),
            config,
            credentials,
            registry: Registry::default(),
            index: PrefixIndex::default(),
            channels: HashMap::new(),
            queue: VecDeque::new(),
            commands: commands.downgrade(),
            workerless_since: None,
        };
        tokio::spawn(actor.run(inbox));
        Self { commands, gauges }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, PoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    pub async fn register(&self, report: WorkerReport) -> Result<Registered, PoolError> {
        self.ask(|reply| Command::Register { report, reply }).await?
    }

    pub async fn heartbeat(&self, beat: Heartbeat) -> Result<(), PoolError> {
        self.ask(|reply| Command::Heartbeat { beat, reply }).await?
    }

    /// Removes a worker that is leaving; `lease` must be the one it registered with.
    pub async fn deregister(&self, worker_id: String, lease: String) -> Result<(), PoolError> {
        self.ask(|reply| Command::Deregister { worker_id, lease, reply }).await?
    }

    /// The counters as the actor last left them; never waits for the actor.
    pub fn gauges(&self) -> SchedulerGauges {
        let gauges = &self.gauges;
        SchedulerGauges {
            queue_depth: gauges.queue_depth.load(Ordering::Relaxed),
            serving_workers: gauges.serving_workers.load(Ordering::Relaxed),
            dispatch_passes: gauges.dispatch_passes.load(Ordering::Relaxed),
            prompts_examined: gauges.prompts_examined.load(Ordering::Relaxed),
        }
    }

    pub async fn workers(&self) -> Result<Vec<WorkerStatus>, PoolError> {
        self.ask(|reply| Command::List { reply }).await
    }

    /// Queues prompts, each with the name the caller knows it by in errors (its index in a batch), and
    /// returns one receiver per prompt, in order. A prompt that can never run (it does not fit the
    /// pool's context) fails alone, on its own receiver; the others run.
    pub async fn submit(
        &self,
        requests: Vec<(PredictRequest, usize)>,
    ) -> Result<Vec<oneshot::Receiver<Result<PredictResponse, PoolError>>>, PoolError> {
        let mut jobs = Vec::with_capacity(requests.len());
        let mut receivers = Vec::with_capacity(requests.len());
        let batch = requests.len() > 1;
        for (request, index) in requests {
            let (reply, receiver) = oneshot::channel();
            let field = if batch { format!("requests[{index}].") } else { String::new() };
            jobs.push(Submission { request, reply, pieces: None, field });
            receivers.push(receiver);
        }
        self.ask(|admitted| Command::Submit { jobs, admitted }).await??;
        Ok(receivers)
    }

    /// Runs one prompt streamed: its text arrives on the returned receiver piece by piece as the worker
    /// generates it, then the final response (counts, finish reason, timings) on the oneshot. A worker
    /// that fails before the first piece is retried elsewhere; after it, the failure is final (a retry
    /// would send the text again). Dropping either receiver cancels the prompt.
    pub async fn predict_stream(
        &self,
        request: PredictRequest,
    ) -> Result<(mpsc::UnboundedReceiver<String>, oneshot::Receiver<Result<PredictResponse, PoolError>>), PoolError> {
        let (reply, receiver) = oneshot::channel();
        let (pieces, piece_receiver) = mpsc::unbounded_channel();
        let jobs = vec![Submission { request, reply, pieces: Some(pieces), field: String::new() }];
        self.ask(|admitted| Command::Submit { jobs, admitted }).await??;
        Ok((piece_receiver, receiver))
    }

    /// Runs one prompt through the pool and waits for its result.
    pub async fn predict(&self, request: PredictRequest) -> Result<PredictResponse, PoolError> {
        let receiver = self.submit(vec![(request, 0)]).await?.pop().expect("one receiver per prompt");
        receiver.await.map_err(|_| stopped())?
    }
}

/// About what a queued prompt holds in memory: its text, its stop strings, id and output schema, and a
/// little per message and per prompt for the structures around them.
fn queued_bytes(request: &PredictRequest) -> u64 {
    const PER_PROMPT: usize = 512;
    const PER_MESSAGE: usize = 64;
    let text = match &request.prompt {
        Prompt::Chat(messages) => messages.iter().map(|m| m.content.len() + PER_MESSAGE).sum(),
        Prompt::Raw(text) => text.len(),
    };
    let stop: usize = request.sampling.stop.iter().map(String::len).sum();
    let schema = request.sampling.response_format.approximate_bytes();
    (PER_PROMPT + text + stop + schema + request.request_id.len()) as u64
}

struct Actor {
    config: SchedulerConfig,
    credentials: Credentials,
    registry: Registry,
    /// Which prefixes each worker was sent, for prefix routing.
    index: PrefixIndex,
    /// One connection per worker, reused by every attempt sent to it.
    channels: HashMap<String, WorkerLink>,
    queue: VecDeque<Job>,
    /// For attempt tasks to report back; weak so that the task ends when all handles are gone.
    commands: mpsc::WeakSender<Command>,
    /// When the pool last found itself without a live worker (None while it has one).
    workerless_since: Option<Instant>,
    gauges: Arc<Gauges>,
}

impl Actor {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        let mut expiry = tokio::time::interval(self.config.heartbeat_timeout / 4);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let may_dispatch = tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                // Affinity waits run out and callers give up between commands.
                _ = expiry.tick() => {
                    self.expire();
                    true
                }
            };
            if may_dispatch {
                self.dispatch();
            }
            self.gauges.queue_depth.store(self.queue.len(), Ordering::Relaxed);
            self.gauges.serving_workers.store(self.registry.serving_count(), Ordering::Relaxed);
        }
        for job in self.queue.drain(..) {
            let _ = job.reply.send(Err(stopped()));
        }
    }

    /// Carries out one command; true when it may have freed a slot or queued a prompt, so that a dispatch
    /// pass could hand something out. A listing or a departure cannot, and costs no pass.
    fn handle(&mut self, command: Command) -> bool {
        let now = Instant::now();
        match command {
            Command::Register { report, reply } => {
                let address = report.description.address.clone();
                let lease = modelpool::auth::random_secret().map_err(|e| PoolError::Internal(format!("making a lease: {e}")));
                let result = lease.and_then(|lease| {
                    let channel = worker_client::channel_for(&self.credentials, &address)?;
                    self.registry.register(report, lease.clone(), now).map(|worker_id| {
                        info!(%worker_id, %address, "worker registered");
                        self.channels.insert(worker_id.clone(), WorkerLink::new(channel));
                        Registered { worker_id, heartbeat_interval: self.config.heartbeat_interval, lease }
                    })
                });
                let joined = result.is_ok();
                let _ = reply.send(result);
                joined
            }
            // A beat can bring a suspect or draining worker back to serving.
            Command::Heartbeat { beat, reply } => {
                let result = self.registry.heartbeat(beat, now);
                let known = result.is_ok();
                let _ = reply.send(result);
                known
            }
            Command::Deregister { worker_id, lease, reply } => {
                let result = self.registry.deregister(&worker_id, &lease).map(|entry| {
                    self.channels.remove(&worker_id);
                    self.index.remove_worker(&worker_id);
                    info!(%worker_id, in_flight = entry.in_flight, "worker deregistered");
                });
                let _ = reply.send(result);
                self.fail_queue_if_no_workers();
                false
            }
            Command::List { reply } => {
                let _ = reply.send(self.registry.statuses(now));
                false
            }
            Command::Submit { jobs, admitted } => {
                let result = self.enqueue(jobs, now);
                let queued = result.is_ok();
                let _ = admitted.send(result);
                queued
            }
            Command::AttemptDone { worker_id, job, dispatched, result } => {
                self.attempt_done(worker_id, job, dispatched, result);
                true
            }
        }
    }

    fn enqueue(&mut self, jobs: Vec<Submission>, now: Instant) -> Result<(), PoolError> {
        // With no live worker, prompts wait (bounded, see `expire`) for one to join or come back, as a
        // restart or a frozen host's return takes seconds; only with no wait configured are they refused.
        if self.registry.live_count() == 0 && self.config.no_worker_wait.is_zero() {
            return Err(PoolError::Unavailable("no workers registered with the coordinator".into()));
        }
        if self.queue.len() + jobs.len() > self.config.max_queue {
            return Err(PoolError::ResourceExhausted(format!(
                "coordinator queue: {} waiting + {} new exceeds the limit of {}",
                self.queue.len(),
                jobs.len(),
                self.config.max_queue
            )));
        }
        let sizes: Vec<u64> = jobs.iter().map(|job| queued_bytes(&job.request)).collect();
        let waiting_bytes: u64 = self.queue.iter().map(|job| job.bytes).sum();
        let new_bytes: u64 = sizes.iter().sum();
        if waiting_bytes + new_bytes > self.config.max_queue_bytes {
            return Err(PoolError::ResourceExhausted(format!(
                "coordinator queue: {waiting_bytes} bytes waiting + {new_bytes} new exceeds the limit of {} bytes (--max-queue-mib)",
                self.config.max_queue_bytes
            )));
        }
        // The smallest slot in the pool, and the loosest tokenizer bound among the workers.
        let fit =
            self.registry.min_context_per_slot().map(|context| ContextFit { context, max_token_bytes: self.registry.max_token_bytes() });
        let refusal = |job: &Submission| fit.and_then(|fit| fit.refusal(&job.request, &job.field));
        // A single prompt that cannot run is refused outright; in a batch it fails alone.
        if jobs.len() == 1
            && let Some(error) = refusal(&jobs[0])
        {
            return Err(error);
        }
        for (job, bytes) in jobs.into_iter().zip(sizes) {
            if let Some(error) = refusal(&job) {
                let _ = job.reply.send(Err(error));
                continue;
            }
            let Submission { request, reply, pieces, .. } = job;
            let key = prefix_key(&request);
            self.queue.push_back(Job {
                request,
                run_alone: false,
                key,
                bytes,
                reply,
                pieces,
                streamed: false,
                attempts: 0,
                internal_errors: 0,
                tried: Vec::new(),
                accepted: now,
                last_error: None,
            });
        }
        Ok(())
    }

    /// Hands queued prompts to workers with free slots, as the routing policy matches them.
    fn dispatch(&mut self) {
        // Callers that gave up while their prompt waited: nobody is left to answer, nothing to run.
        self.queue.retain(|job| !job.reply.is_closed());
        if self.queue.is_empty() {
            return;
        }
        self.gauges.dispatch_passes.fetch_add(1, Ordering::Relaxed);
        let mut candidates = self.registry.candidates();
        if !candidates.iter().any(Candidate::has_room) {
            return;
        }
        let now = Instant::now();
        let affinity_wait = self.config.affinity_wait;
        let waiting: Vec<Waiting> = self
            .queue
            .iter()
            .take(DISPATCH_WINDOW)
            .map(|job| Waiting { key: &job.key, tried: &job.tried, may_wait: now.saturating_duration_since(job.accepted) < affinity_wait })
            .collect();
        self.gauges.prompts_examined.fetch_add(waiting.len() as u64, Ordering::Relaxed);
        let assigned = routing::assign(self.config.routing, &mut candidates, &self.index, &waiting);
        drop(waiting);
        // Highest position first, so the lower positions stay valid while removing.
        let mut jobs: Vec<(Job, String)> = assigned
            .into_iter()
            .rev()
            .map(|(position, worker_id)| (self.queue.remove(position).expect("position in range"), worker_id))
            .collect();
        jobs.reverse();
        for (mut job, worker_id) in jobs {
            let (Some(entry), Some(link)) = (self.registry.get_mut(&worker_id), self.channels.get(&worker_id)) else {
                self.queue.push_front(job);
                continue;
            };
            entry.in_flight += 1;
            entry.freed.clear();
            let capacity = capacity_for(entry.description.cached_tokens_capacity());
            self.index.record(&worker_id, &job.key, capacity);
            job.attempts += 1;
            job.tried.push(worker_id.clone());
            let client = worker_client::client(link.channel.clone(), &self.credentials);
            let gone = link.gone();
            let Some(commands) = self.commands.upgrade() else { return };
            tokio::spawn(attempt(client, worker_id, job, self.config.progress, gone, commands));
        }
    }

    fn attempt_done(&mut self, worker_id: String, job: Job, dispatched: Instant, result: Result<PredictResponse, tonic::Status>) {
        let entry = self.registry.get_mut(&worker_id);
        match result {
            Ok(mut response) => {
                if let Some(entry) = entry {
                    entry.in_flight = entry.in_flight.saturating_sub(1);
                    entry.completed += 1;
                    entry.tokens_generated += u64::from(response.completion_tokens);
                    if entry.freed.len() < entry.capacity() as usize {
                        entry.freed.push(job.key.clone());
                    }
                }
                response.worker_id = worker_id;
                response.attempts = job.attempts;
                if let Some(t) = response.timings.as_mut() {
                    t.coordinator_queue_ms = dispatched.saturating_duration_since(job.accepted).as_secs_f64() * 1000.0;
                }
                let _ = job.reply.send(Ok(response));
            }
            Err(status) => {
                let worker_gone = retry::means_worker_may_be_dead(status.code());
                if let Some(entry) = entry {
                    entry.in_flight = entry.in_flight.saturating_sub(1);
                    entry.failed_attempts += 1;
                    // Send it nothing until it heartbeats again.
                    if worker_gone {
                        entry.suspect = true;
                    }
                }
                self.retry_or_fail(job, &worker_id, status);
            }
        }
    }

    fn retry_or_fail(&mut self, mut job: Job, worker_id: &str, status: tonic::Status) {
        let error = PoolError::from_status(&status);
        let tries = Tries { attempts: job.attempts, internal_errors: job.internal_errors, streamed: job.streamed };
        if status.code() == tonic::Code::Internal {
            job.internal_errors += 1;
        }
        if job.reply.is_closed() {
            return;
        }
        match retry::decide(status.code(), error.clone(), tries, self.config.max_attempts) {
            Decision::Fail(final_error) => {
                let _ = job.reply.send(Err(final_error));
            }
            Decision::OutOfAttempts(final_error) => {
                warn!(request_id = %job.request.request_id, attempts = job.attempts, %error, "prompt failed on every attempt");
                let _ = job.reply.send(Err(final_error));
            }
            Decision::Requeue { alone } => {
                debug!(request_id = %job.request.request_id, %worker_id, %error, alone, "attempt failed; requeueing");
                job.run_alone |= alone;
                job.last_error = Some(error);
                if self.registry.live_count() == 0 && self.registry.is_empty() && self.config.no_worker_wait.is_zero() {
                    let _ = job.reply.send(Err(no_workers_left(job.last_error.as_ref())));
                    return;
                }
                self.queue.push_front(job);
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.fail_prompts_waiting_too_long_for_a_worker(now);
        let evicted = self.registry.expire(now, self.config.heartbeat_timeout);
        for worker_id in &evicted {
            if let Some(link) = self.channels.remove(worker_id) {
                link.evict();
            }
            self.index.remove_worker(worker_id);
            warn!(%worker_id, timeout_ms = self.config.heartbeat_timeout.as_millis() as u64, "worker missed its heartbeats; evicted");
        }
        if !evicted.is_empty() {
            self.fail_queue_if_no_workers();
        }
    }

    /// While no worker is live, a queued prompt waits at most `no_worker_wait` (counted from when it was
    /// accepted or from when the pool lost its last live worker, whichever is later), then fails with a
    /// clear reason.
    fn fail_prompts_waiting_too_long_for_a_worker(&mut self, now: Instant) {
        // Without a wait, the empty pool refuses and fails prompts itself (enqueue, fail_queue_if_no_workers).
        if self.registry.live_count() > 0 || self.config.no_worker_wait.is_zero() {
            self.workerless_since = None;
            return;
        }
        let since = *self.workerless_since.get_or_insert(now);
        let wait = self.config.no_worker_wait;
        let (expired, waiting): (Vec<Job>, Vec<Job>) =
            self.queue.drain(..).partition(|job| now.saturating_duration_since(job.accepted.max(since)) >= wait);
        self.queue.extend(waiting);
        for job in expired {
            let reason = format!("no live worker joined or came back within {} s", wait.as_secs_f64());
            let error = match &job.last_error {
                Some(e) => PoolError::Unavailable(format!("{reason}; last error: {e}")),
                None => PoolError::Unavailable(reason),
            };
            let _ = job.reply.send(Err(error));
        }
    }

    /// With no worker left at all and no wait configured, waiting prompts can only time out: fail them
    /// now with a clear reason.
    fn fail_queue_if_no_workers(&mut self) {
        if !self.registry.is_empty() || !self.config.no_worker_wait.is_zero() {
            return;
        }
        for job in self.queue.drain(..) {
            let _ = job.reply.send(Err(no_workers_left(job.last_error.as_ref())));
        }
    }
}

fn no_workers_left(last_error: Option<&PoolError>) -> PoolError {
    match last_error {
        Some(e) => PoolError::Unavailable(format!("no workers left in the pool; last error: {e}")),
        None => PoolError::Unavailable("no workers left in the pool".into()),
    }
}

/// One try of one prompt on one worker, reported back to the scheduler. Ends early if the caller goes
/// away, which cancels the call on the worker and frees its slot.
/// The channel to a worker, and a signal its attempts watch: when the worker is evicted (it missed its
/// heartbeats: frozen, or a host that lost power), its in-flight attempts end at once and are retried
/// elsewhere instead of waiting out the attempt timeout. A worker that deregisters has drained first, so
/// its attempts are left to finish.
struct WorkerLink {
    channel: Channel,
    evicted: watch::Sender<bool>,
}

impl WorkerLink {
    fn new(channel: Channel) -> Self {
        Self { channel, evicted: watch::channel(false).0 }
    }

    fn evict(&self) {
        self.evicted.send_replace(true);
    }

    /// Resolves when the worker is evicted; never, once the link is dropped without eviction.
    fn gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut evicted = self.evicted.subscribe();
        async move {
            loop {
                if *evicted.borrow_and_update() {
                    return;
                }
                if evicted.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

async fn attempt(
    client: WorkerClient<AuthChannel>,
    worker_id: String,
    mut job: Job,
    timeouts: ProgressTimeouts,
    gone: impl std::future::Future<Output = ()>,
    commands: mpsc::Sender<Command>,
) {
    let dispatched = Instant::now();
    let result = {
        let wire = worker_client::wire_request(&job.request, job.run_alone);
        let call = worker_client::call(client, &worker_id, wire, job.pieces.as_ref(), &mut job.streamed, timeouts);
        tokio::select! {
            result = call => result,
            () = job.reply.closed() => Err(tonic::Status::cancelled("the caller went away")),
            () = gone => Err(tonic::Status::unavailable(format!("worker {worker_id} was evicted (missed its heartbeats) during the attempt"))),
        }
    };
    let _ = commands.send(Command::AttemptDone { worker_id, job, dispatched, result }).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[tokio::test]
    async fn a_malformed_address_is_refused_not_a_crash() {
        let scheduler = Scheduler::start(SchedulerConfig::default(), Credentials::default());
        let mut report = WorkerReport::default();
        report.description.address = "http://bad host:1".into();
        report.description.slots = 1;
        let error = scheduler.register(report).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.to_string().contains("info.address"), "{error}");
        // The scheduler is still there.
        assert!(scheduler.workers().await.unwrap().is_empty());
    }
}
