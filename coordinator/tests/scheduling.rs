//! The fast tier: the scheduler's retries, evictions, waits and routing against fake workers (the real
//! gRPC `Worker` service on 127.0.0.1:0, answering as each test scripts, no model; see
//! `test_support::fake_worker`). Where the scheduler only waits, the clock is paused and the wait
//! passes at once. The whole file runs in about a second: `cargo test -p coordinator --test scheduling`.

use std::time::Duration;

use coordinator::routing::Routing;
use coordinator::scheduler::{Scheduler, SchedulerConfig};
use modelpool::auth::Credentials;
use modelpool::membership::{Heartbeat, Registered, WorkerPhase};
use modelpool::{PoolError, PredictRequest};
use test_support::fake_worker::{FakeWorker, Reply};
use tonic::Code;

/// Heartbeats every 20 ms and a 10 s timeout unless a test shortens it: no worker is evicted by
/// accident on a loaded machine.
fn config() -> SchedulerConfig {
    SchedulerConfig {
        heartbeat_interval: Duration::from_millis(20),
        heartbeat_timeout: Duration::from_secs(10),
        no_worker_wait: Duration::from_secs(10),
        ..SchedulerConfig::default()
    }
}

fn prompt(text: &str) -> PredictRequest {
    PredictRequest::user(text, 8)
}

async fn join(scheduler: &Scheduler, worker: &FakeWorker, slots: u32) -> Registered {
    scheduler.register(worker.report(slots)).await.expect("a fake worker registers")
}

/// Heartbeats for a registration every 20 ms until the test ends (a live worker).
fn keep_alive(scheduler: &Scheduler, registered: &Registered) -> tokio::task::JoinHandle<()> {
    let (scheduler, worker_id, lease) = (scheduler.clone(), registered.worker_id.clone(), registered.lease.clone());
    tokio::spawn(async move {
        loop {
            let beat =
                Heartbeat { worker_id: worker_id.clone(), lease: lease.clone(), phase: WorkerPhase::Serving, load: None, memory: None };
            let _ = scheduler.heartbeat(beat).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Waits (real time, at most 10 s: a test must fail, not hang) until `done`.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_prompt_whose_worker_fails_is_retried_on_another_and_answered() {
    let scheduler = Scheduler::start(config(), Credentials::default());
    let failing = FakeWorker::start(|_| Reply::Fail(Code::Unavailable, "engine restarting".into()));
    let healthy = FakeWorker::start(|_| Reply::text("from the healthy one"));
    join(&scheduler, &failing, 1).await;
    let pending = tokio::spawn({
        let scheduler = scheduler.clone();
        async move { scheduler.predict(prompt("hello")).await }
    });
    // The only worker fails it; the prompt waits (the failed worker gets nothing until it beats again)
    // and goes to the next worker that joins.
    until("the worker took the prompt", || failing.calls() > 0).await;
    let joined = join(&scheduler, &healthy, 1).await;
    let answer = pending.await.unwrap().expect("answered by the second worker");
    assert_eq!(answer.text, "from the healthy one");
    assert_eq!(answer.worker_id, joined.worker_id);
    assert_eq!(answer.attempts, 2);
    assert_eq!((failing.calls(), healthy.calls()), (1, 1));
}

#[tokio::test]
async fn a_worker_that_hangs_up_mid_answer_has_its_prompt_run_again_elsewhere() {
    let scheduler = Scheduler::start(config(), Credentials::default());
    let dying = FakeWorker::start(|_| Reply::HangUp);
    let healthy = FakeWorker::start(|_| Reply::text("whole"));
    join(&scheduler, &dying, 1).await;
    let pending = tokio::spawn({
        let scheduler = scheduler.clone();
        async move { scheduler.predict(prompt("hello")).await }
    });
    until("the worker took the prompt", || dying.calls() > 0).await;
    join(&scheduler, &healthy, 1).await;
    let answer = pending.await.unwrap().expect("answered");
    assert_eq!(answer.text, "whole", "the partial text of the first attempt is not part of the answer");
    assert_eq!(answer.attempts, 2);
}

#[tokio::test]
async fn a_streamed_answer_cut_short_by_its_worker_fails_plainly_and_is_never_sent_twice() {
    let scheduler = Scheduler::start(config(), Credentials::default());
    let dying = FakeWorker::start(|_| Reply::HangUp);
    let healthy = FakeWorker::start(|_| Reply::text("whole"));
    join(&scheduler, &dying, 1).await;
    let (mut pieces, answer) = scheduler.predict_stream(prompt("hello")).await.unwrap();
    assert_eq!(pieces.recv().await.as_deref(), Some("partial"), "the first piece reached the caller");
    join(&scheduler, &healthy, 1).await;
    let error = answer.await.unwrap().unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(error.to_string().contains("the answer is incomplete"), "{error}");
    assert_eq!(healthy.calls(), 0, "another worker would send the first piece again");
}

#[tokio::test]
async fn a_prompt_failing_on_every_worker_ends_with_a_clear_error_after_its_attempts() {
    let scheduler = Scheduler::start(SchedulerConfig { max_attempts: 3, ..config() }, Credentials::default());
    let workers: Vec<FakeWorker> =
        (0..4).map(|_| FakeWorker::start(|_| Reply::Fail(Code::Unavailable, "engine restarting".into()))).collect();
    for worker in &workers {
        join(&scheduler, worker, 1).await;
    }
    let error = scheduler.predict(prompt("hello")).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    let message = error.to_string();
    assert!(message.contains("after 3 attempts") && message.contains("engine restarting"), "{message}");
    let calls: Vec<usize> = workers.iter().map(FakeWorker::calls).collect();
    assert_eq!(calls.iter().sum::<usize>(), 3, "three attempts, no more: {calls:?}");
    assert!(calls.iter().all(|&c| c <= 1), "each attempt on a different worker: {calls:?}");
}

#[tokio::test]
async fn a_refusal_of_the_prompt_itself_is_final_and_not_retried() {
    let scheduler = Scheduler::start(config(), Credentials::default());
    let script = |_: &_| Reply::Fail(Code::InvalidArgument, "invalid prompt: 5000 tokens leave no room to generate".into());
    let (first, second) = (FakeWorker::start(script), FakeWorker::start(script));
    join(&scheduler, &first, 1).await;
    join(&scheduler, &second, 1).await;
    let error = scheduler.predict(prompt("too long")).await.unwrap_err();
    assert!(matches!(&error, PoolError::InvalidArgument { field, .. } if field == "prompt"), "{error:?}");
    assert_eq!(first.calls() + second.calls(), 1, "another worker would refuse it alike");
}

#[tokio::test]
async fn a_failed_batch_member_is_tried_again_alone() {
    let scheduler = Scheduler::start(config(), Credentials::default());
    // Aborted: the prompt's batch failed; alone, it runs.
    let worker = FakeWorker::start(|request| {
        if request.run_alone { Reply::text("alone") } else { Reply::Fail(Code::Aborted, "the batch's forward pass failed".into()) }
    });
    let joined = join(&scheduler, &worker, 1).await;
    let _alive = keep_alive(&scheduler, &joined);
    let answer = scheduler.predict(prompt("hello")).await.expect("answered alone");
    assert_eq!(answer.text, "alone");
    let runs: Vec<bool> = worker.prompts().iter().map(|p| p.run_alone).collect();
    assert_eq!(runs, [false, true]);
}

#[tokio::test]
async fn a_worker_that_misses_its_heartbeats_is_evicted_and_its_prompt_runs_elsewhere() {
    let timeout = Duration::from_millis(300);
    let scheduler = Scheduler::start(SchedulerConfig { heartbeat_timeout: timeout, ..config() }, Credentials::default());
    // Frozen: it took the prompt and says nothing, and its heartbeats stop.
    let frozen = FakeWorker::start(|_| Reply::Silent);
    let healthy = FakeWorker::start(|_| Reply::text("answered"));
    let frozen_id = join(&scheduler, &frozen, 1).await.worker_id;
    let started = std::time::Instant::now();
    let pending = tokio::spawn({
        let scheduler = scheduler.clone();
        async move { scheduler.predict(prompt("hello")).await }
    });
    until("the worker took the prompt", || frozen.calls() > 0).await;
    let healthy_id = join(&scheduler, &healthy, 1).await;
    let _alive = keep_alive(&scheduler, &healthy_id);
    let answer = pending.await.unwrap().expect("answered after the eviction");
    assert_eq!(answer.worker_id, healthy_id.worker_id);
    assert_eq!(answer.attempts, 2);
    // Ended by the eviction, not by the attempt's own 120 s progress timeout.
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    let listed: Vec<String> = scheduler.workers().await.unwrap().into_iter().map(|w| w.worker_id).collect();
    assert!(!listed.contains(&frozen_id), "the frozen worker is gone from the pool: {listed:?}");
    // Its open call was closed when it was evicted, which frees its slot if it ever wakes.
    until("the worker's call was closed", || frozen.cancelled() > 0).await;
}

#[tokio::test]
async fn a_killed_worker_has_its_prompt_retried_on_another() {
    let scheduler = Scheduler::start(config(), Credentials::default());
    let mut killed = FakeWorker::start(|_| Reply::Silent);
    let healthy = FakeWorker::start(|_| Reply::text("answered"));
    join(&scheduler, &killed, 1).await;
    let pending = tokio::spawn({
        let scheduler = scheduler.clone();
        async move { scheduler.predict(prompt("hello")).await }
    });
    until("the worker took the prompt", || killed.calls() > 0).await;
    join(&scheduler, &healthy, 1).await;
    killed.kill();
    let answer = pending.await.unwrap().expect("answered by the other worker");
    assert_eq!(answer.text, "answered");
    assert_eq!(answer.attempts, 2);
}

#[tokio::test]
async fn a_caller_that_goes_away_cancels_its_prompt_on_the_worker() {
    let scheduler = Scheduler::start(config(), Credentials::default());
    let worker = FakeWorker::start(|_| Reply::Silent);
    let joined = join(&scheduler, &worker, 1).await;
    let _alive = keep_alive(&scheduler, &joined);
    let receiver = scheduler.submit(vec![(prompt("hello"), 0)]).await.unwrap();
    until("the worker took the prompt", || worker.calls() > 0).await;
    drop(receiver);
    until("the worker's call was closed", || worker.cancelled() > 0).await;
    // And its slot is free again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while scheduler.workers().await.unwrap()[0].in_flight != 0 {
        assert!(std::time::Instant::now() < deadline, "the slot was not freed within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn prompts_sharing_a_preamble_follow_the_worker_that_computed_it() {
    let scheduler = Scheduler::start(SchedulerConfig { routing: Routing::Prefix, ..config() }, Credentials::default());
    let delay = Duration::from_millis(10);
    let workers = [
        FakeWorker::start(move |_| Reply::Text { text: "a".into(), delay }),
        FakeWorker::start(move |_| Reply::Text { text: "b".into(), delay }),
    ];
    let mut alive = Vec::new();
    for worker in &workers {
        let joined = join(&scheduler, worker, 1).await;
        alive.push(keep_alive(&scheduler, &joined));
    }
    let preamble = "You are a knowledge-graph extractor. ".repeat(40);
    let mut served_by = Vec::new();
    for chunk in 0..6 {
        let answer = scheduler.predict(prompt(&format!("{preamble}Chunk {chunk}."))).await.unwrap();
        served_by.push(answer.worker_id);
    }
    assert!(served_by.iter().all(|w| *w == served_by[0]), "one worker holds the preamble and gets its calls: {served_by:?}");
    drop(alive);
}

#[tokio::test(start_paused = true)]
async fn with_no_worker_a_prompt_waits_its_time_and_then_fails_clearly() {
    let scheduler = Scheduler::start(config(), Credentials::default());
    let started = tokio::time::Instant::now();
    let error = scheduler.predict(prompt("hello")).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(error.to_string().contains("no live worker joined or came back within 10 s"), "{error}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(10) && waited < Duration::from_secs(12), "waited {waited:?} of the paused clock");
}

#[tokio::test(start_paused = true)]
async fn prompts_whose_only_worker_failed_wait_their_time_for_another_and_then_fail_clearly() {
    let scheduler = Scheduler::start(SchedulerConfig { heartbeat_timeout: Duration::from_secs(5), ..config() }, Credentials::default());
    // A registration whose address refuses connections (nothing listens on 127.0.0.1's port 9) and
    // which never beats: the first attempt fails, the worker is suspect, then evicted after 5 s.
    let mut report = FakeWorker::start(|_| Reply::text("never asked")).report(1);
    report.description.address = "http://127.0.0.1:9".into();
    scheduler.register(report).await.unwrap();
    let started = tokio::time::Instant::now();
    let results = futures::future::join_all((0..3).map(|i| scheduler.predict(prompt(&format!("prompt {i}"))))).await;
    let waited = started.elapsed();
    for result in &results {
        let error = result.as_ref().unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error}");
        assert!(error.to_string().contains("no live worker joined or came back within 10 s"), "{error}");
    }
    // The wait counts from when the pool had no live worker left: the failed attempt, at once.
    assert!(waited >= Duration::from_secs(10) && waited < Duration::from_secs(12), "waited {waited:?} of the paused clock");
    assert!(scheduler.workers().await.unwrap().is_empty(), "evicted after its 5 s without a heartbeat");
}
