//! Faults with real processes and the real model: a frozen worker, a restarted coordinator, a pool whose
//! last worker died, and a worker told to stop while it is generating. (A worker killed mid-batch is in
//! pool.rs.) In every case each accepted prompt ends with exactly one result, and nothing hangs.

mod common;

use std::time::{Duration, Instant};

use common::{TestPool, chat, fast_scheduler};
use coordinator::SchedulerConfig;
use lab::local_pool::{LocalCoordinator, LocalPool};
use modelpool::proto::{self, WorkerState, predict_result::Outcome};
use tonic::Code;

/// Polls `what` every 50 ms until it gives a value; fails the test after `within`.
async fn eventually<T, F, Fut>(within: Duration, description: &str, mut what: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = what().await {
            return value;
        }
        assert!(start.elapsed() < within, "{description}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn serving(workers: &[proto::WorkerStatus], pid: u32) -> Option<String> {
    workers
        .iter()
        .find(|w| w.state == WorkerState::Serving as i32 && w.info.as_ref().is_some_and(|i| i.pid == pid))
        .map(|w| w.worker_id.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_worker_is_evicted_its_prompt_retried_and_it_rejoins_when_resumed() {
    let scheduler = fast_scheduler();
    let (timeout, gap_timeout) = (scheduler.heartbeat_timeout, scheduler.progress.between_tokens);
    let pool = TestPool::start(2, scheduler, &[]).await;
    let mut client = pool.client.clone();
    let requests: Vec<_> = (0..6).map(|i| chat(&format!("Write a short story about the number {i}."), 40)).collect();
    let batch = tokio::spawn(async move { client.predict_batch(proto::PredictBatchRequest { requests }).await });

    let victim = &pool.workers.workers[0];
    let victim_id = eventually(Duration::from_secs(30), "the victim is generating", || async {
        let busy = pool.list().await.into_iter().find(|w| w.info.as_ref().is_some_and(|i| i.pid == victim.pid) && w.in_flight > 0);
        busy.map(|w| w.worker_id)
    })
    .await;
    victim.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();

    // Its heartbeats stop: evicted within the timeout (plus one expiry tick of slack).
    eventually(timeout + timeout / 2 + Duration::from_millis(500), "the frozen worker is evicted", || async {
        (!pool.list().await.iter().any(|w| w.worker_id == victim_id)).then_some(())
    })
    .await;

    // Its prompt is retried when it is evicted (its attempt is cancelled then, not left to run out its
    // deadline on a host that may be gone); every prompt has exactly one answer.
    let results = batch.await.unwrap().unwrap().into_inner().results;
    assert_eq!(results.len(), 6);
    let mut retried = 0;
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.index as usize, i);
        let Some(Outcome::Response(response)) = &result.outcome else { panic!("prompt {i} was lost: {result:?}") };
        if response.attempts > 1 {
            retried += 1;
            assert_ne!(response.worker_id, victim_id, "the retry ran on the other worker");
        }
    }
    assert!(retried >= 1, "the frozen worker's prompt was retried");
    assert!(frozen_at.elapsed() < gap_timeout, "retried at eviction, before the token-gap deadline ({:?})", frozen_at.elapsed());

    // Resumed, it notices that the coordinator forgot it, registers again and serves again.
    victim.signal(libc::SIGCONT);
    let rejoined =
        eventually(Duration::from_secs(10), "the resumed worker registers again", || async { serving(&pool.list().await, victim.pid) })
            .await;
    assert_ne!(rejoined, victim_id, "a new registration");
    let answers = futures::future::join_all((0..4).map(|i| {
        let mut client = pool.client.clone();
        async move { client.predict(chat(&format!("Count to {i}."), 16)).await.unwrap().into_inner() }
    }))
    .await;
    assert!(
        answers.iter().any(|a| a.worker_id == rejoined),
        "the rejoined worker served: {:?}",
        answers.iter().map(|a| &a.worker_id).collect::<Vec<_>>()
    );
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_rejoin_a_restarted_coordinator_and_clients_get_unavailable_meanwhile() {
    let model = tokio::task::spawn_blocking(model_input::model_cache::ensure_default_model).await.unwrap().unwrap();
    let coordinator = LocalCoordinator::start(fast_scheduler()).await.unwrap();
    let address = coordinator.url.trim_start_matches("http://").to_string();
    let spec = lab::local_pool::WorkerSpec {
        binary: lab::local_pool::find_worker_binary(None).unwrap(),
        model,
        coordinator: coordinator.url.clone(),
        threads: 1,
        slots: 1,
        extra_args: Vec::new(),
    };
    let workers = LocalPool::start(&spec, 1, &coordinator.client, Duration::from_secs(120)).await.unwrap();
    let pid = workers.workers[0].pid;
    let mut client = coordinator.client.clone();
    assert!(!client.predict(chat("Say hi.", 4)).await.unwrap().into_inner().text.is_empty());

    coordinator.stop().await;
    // Down: a client is told so at once instead of hanging.
    let asked = Instant::now();
    let status = client.predict(chat("Say hi.", 4)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(asked.elapsed() < Duration::from_secs(3), "refused in {:?}", asked.elapsed());

    // Back on the same address: the same worker process registers again by itself.
    let coordinator = LocalCoordinator::start_on(fast_scheduler().into(), &address).await.unwrap();
    eventually(Duration::from_secs(10), "the worker registers with the new coordinator", || async {
        let list = coordinator.client.clone().list_workers(proto::ListWorkersRequest {}).await;
        list.ok().and_then(|l| serving(&l.into_inner().workers, pid))
    })
    .await;
    let answer = client.predict(chat("Say hi.", 4)).await.expect("the old client reconnects").into_inner();
    assert!(!answer.text.is_empty());
    workers.stop(Duration::from_secs(10)).await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_worker_gone_and_no_wait_requests_fail_fast_with_unavailable() {
    // --no-worker-wait-secs 0: no waiting for a worker to come back (the default waits, tested below).
    let scheduler = SchedulerConfig { no_worker_wait: Duration::ZERO, ..fast_scheduler() };
    let timeout = scheduler.heartbeat_timeout;
    let pool = TestPool::start(1, scheduler, &[]).await;
    let mut client = pool.client.clone();
    let running = tokio::spawn(async move { client.predict(chat("Tell me a very long story.", 1000)).await });
    eventually(Duration::from_secs(30), "the prompt is running", || async {
        pool.list().await.iter().any(|w| w.in_flight > 0).then_some(())
    })
    .await;
    pool.workers.workers[0].signal(libc::SIGKILL);
    let killed_at = Instant::now();

    // The prompt that was running cannot be retried anywhere: a clear failure once the worker is evicted.
    let status = running.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no workers"), "{}", status.message());
    assert!(killed_at.elapsed() < timeout * 3, "failed after {:?}", killed_at.elapsed());

    // A new prompt is refused at once.
    let asked = Instant::now();
    let status = pool.client.clone().predict(chat("Say hi.", 4)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("no workers"), "{}", status.message());
    assert!(asked.elapsed() < Duration::from_secs(1), "refused in {:?}", asked.elapsed());
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_the_running_prompt_deregisters_and_exits_zero() {
    let mut pool = TestPool::start(1, SchedulerConfig { heartbeat_timeout: Duration::from_secs(30), ..fast_scheduler() }, &[]).await;
    let mut client = pool.client.clone();
    let running = tokio::spawn(async move { client.predict(chat("Write a poem about the sea.", 120)).await });
    // Running on the worker, as its heartbeat says (dispatched is not enough: the call may still be on
    // its way, and a draining worker refuses new calls).
    eventually(Duration::from_secs(30), "the prompt is running on the worker", || async {
        pool.list().await.iter().any(|w| w.load.is_some_and(|l| l.slots_in_use > 0)).then_some(())
    })
    .await;

    let worker = pool.workers.workers.remove(0);
    let stopped = tokio::spawn(worker.stop(Duration::from_secs(60)));
    // Finished where it was, not retried elsewhere (there is nowhere else).
    let answer = running.await.unwrap().expect("the running prompt completes").into_inner();
    assert_eq!(answer.attempts, 1);
    assert!(answer.completion_tokens > 0);
    let status = stopped.await.unwrap().expect("an exit status");
    assert!(status.success(), "exit status {status}");
    // Gone because it said so: the heartbeat timeout (30 s) has not passed.
    assert!(pool.list().await.is_empty(), "deregistered");
    pool.shutdown().await;
}

/// A moment without a live worker refused everything at once. Now
/// an admitted prompt waits (bounded by --no-worker-wait-secs) for a worker to join: the only worker is
/// killed mid-prompt, a replacement starts, and both the running prompt and one sent while the pool was
/// empty are answered; with nobody coming, a prompt fails after the wait, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prompts_wait_a_bounded_time_for_a_worker_to_join() {
    use lab::local_pool::WorkerProcess;
    let wait = Duration::from_secs(8);
    let scheduler = SchedulerConfig { no_worker_wait: wait, ..fast_scheduler() };
    let pool = TestPool::start(1, scheduler, &[]).await;
    let mut client = pool.client.clone();
    let running = tokio::spawn(async move { client.predict(chat("Tell me a long story.", 200)).await });
    eventually(Duration::from_secs(30), "the prompt is running", || async {
        pool.list().await.iter().any(|w| w.in_flight > 0).then_some(())
    })
    .await;
    pool.workers.workers[0].signal(libc::SIGKILL);
    eventually(Duration::from_secs(5), "the killed worker is evicted", || async { pool.list().await.is_empty().then_some(()) }).await;

    // Sent while the pool is empty: admitted, waiting.
    let mut client = pool.client.clone();
    let sent_while_empty = tokio::spawn(async move { client.predict(chat("Say hi.", 4)).await });
    let replacement = WorkerProcess::spawn(&pool.spec).unwrap();
    let answer = sent_while_empty.await.unwrap().expect("answered once the replacement joined").into_inner();
    assert!(answer.completion_tokens > 0);
    let retried = running.await.unwrap().expect("the running prompt is retried on the replacement").into_inner();
    assert!(retried.attempts >= 2, "{retried:?}");

    // Nobody comes: the prompt fails after the wait, not before, with the reason.
    replacement.signal(libc::SIGKILL);
    let _ = replacement.stop(Duration::from_secs(1)).await;
    eventually(Duration::from_secs(5), "the replacement is evicted", || async { pool.list().await.is_empty().then_some(()) }).await;
    let asked = Instant::now();
    let status = pool.client.clone().predict(chat("Say hi.", 4)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no live worker joined"), "{}", status.message());
    assert!(asked.elapsed() >= wait && asked.elapsed() < wait * 2, "failed after {:?}", asked.elapsed());
    pool.shutdown().await;
}
