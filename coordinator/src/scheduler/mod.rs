//! The scheduler: one task owns the registry and the queue of waiting prompts; everything else talks to
//! it through commands. Workers pull work in effect: a prompt is sent to a worker only when that worker
//! has a free slot, so a slow worker simply takes fewer prompts and never holds up a batch. A prompt whose
//! attempt fails for a reason another worker might not share is put back at the head of the queue and
//! tried elsewhere, a bounded number of times; every accepted prompt gets exactly one reply.
//!
//! Here: the handle the services hold and the messages it sends; the task itself is `actor`, one try
//! of one prompt on one worker is `attempt`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use modelpool::auth::Credentials;
use modelpool::membership::{Heartbeat, Registered, WorkerReport, WorkerStatus};
use modelpool::request::Prompt;
use modelpool::response::PredictResponse;
use modelpool::{PoolError, PredictRequest};
use tokio::sync::{mpsc, oneshot};
// Tokio's clock, so that tests can pause it where the scheduler waits (no-worker waits, heartbeats);
// the same as the system's monotonic clock otherwise.
use tokio::time::Instant;

use crate::routing::Routing;
use crate::worker_client::ProgressTimeouts;

mod actor;
mod attempt;

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
        let actor = actor::Actor::new(config, credentials, commands.downgrade(), Arc::clone(&gauges));
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

/// About what a queued prompt holds in memory: its text, its stop strings, id, output schema and logit
/// bias, and a little per message and per prompt for the structures around them.
fn queued_bytes(request: &PredictRequest) -> u64 {
    const PER_PROMPT: usize = 512;
    const PER_MESSAGE: usize = 64;
    let text = match &request.prompt {
        Prompt::Chat(messages) => messages.iter().map(|m| m.content.len() + PER_MESSAGE).sum(),
        Prompt::Raw(text) => text.len(),
    };
    let stop: usize = request.sampling.stop.iter().map(String::len).sum();
    let schema = request.sampling.response_format.approximate_bytes();
    let bias = request.sampling.logit_bias.len() * std::mem::size_of::<(u32, f32)>();
    (PER_PROMPT + text + stop + schema + bias + request.request_id.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn a_queued_prompt_counts_its_logit_bias_bytes() {
        let plain = PredictRequest::user("hello", 4);
        let mut biased = plain.clone();
        biased.sampling.logit_bias = (0..1024).map(|token| (token, 1.0)).collect();
        assert_eq!(queued_bytes(&biased) - queued_bytes(&plain), 1024 * 8);
    }

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
