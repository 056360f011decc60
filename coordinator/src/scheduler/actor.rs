//! The scheduler's task: owns the registry, the queue and the prefix index, and carries out one command
//! at a time (membership, submissions, finished attempts); after each that may have freed or filled a
//! slot it hands waiting prompts to workers with room, as the routing policy matches them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use modelpool::PoolError;
use modelpool::auth::Credentials;
use modelpool::context_fit::ContextFit;
use modelpool::membership::Registered;
use modelpool::response::PredictResponse;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::attempt::{WorkerLink, attempt};
use super::{Command, DISPATCH_WINDOW, Gauges, Job, SchedulerConfig, Submission, queued_bytes, stopped};
use crate::prefix_index::{PrefixIndex, capacity_for, prefix_key};
use crate::registry::Registry;
use crate::retry::{self, Decision, Tries};
use crate::routing::{self, Candidate, Waiting};
use crate::worker_client;

pub(super) struct Actor {
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
    pub(super) fn new(config: SchedulerConfig, credentials: Credentials, commands: mpsc::WeakSender<Command>, gauges: Arc<Gauges>) -> Self {
        Self {
            config,
            credentials,
            registry: Registry::default(),
            index: PrefixIndex::default(),
            channels: HashMap::new(),
            queue: VecDeque::new(),
            commands,
            workerless_since: None,
            gauges,
        }
    }

    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
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
