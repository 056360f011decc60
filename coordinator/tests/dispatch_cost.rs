//! What unauthenticated readers and a long queue cost the scheduler,
//! against a real coordinator and, for the window, a real worker: `/ready` and `/metrics` are answered
//! without a dispatch pass, and one pass puts a bounded window from the front of the queue before the
//! routing policy. Both are read from the coordinator's own counters, so the test does not race a clock.

mod common;

use std::time::{Duration, Instant};

use common::{TestPool, chat, fast_scheduler, http_get, metric};
use coordinator::{Config, SchedulerConfig};
use lab::local_pool::LocalCoordinator;
use modelpool::proto;

/// The dispatch window (`scheduler::DISPATCH_WINDOW`): a change there must be a change here.
const WINDOW: f64 = 512.0;

struct Counters {
    queue_depth: f64,
    passes: f64,
    examined: f64,
}

async fn counters(http_url: &str) -> Counters {
    let (status, text) = http_get(&format!("{http_url}/metrics")).await;
    assert_eq!(status, 200, "{text}");
    let read = |series| metric(&text, series).unwrap_or_else(|| panic!("{series} in /metrics"));
    Counters {
        queue_depth: read("modelpool_coordinator_queue_depth"),
        passes: read("modelpool_coordinator_dispatch_passes_total"),
        examined: read("modelpool_coordinator_dispatch_prompts_examined_total"),
    }
}

/// Three prompts wait for a worker; 200 probes of `/ready` and 50 scrapes of `/metrics` then cost the
/// scheduler no pass over them. On the old main every one of them ran a dispatch pass over the whole
/// queue (and `/ready` queued behind heartbeats in the scheduler's inbox to get its answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics_cost_no_dispatch_pass() {
    // A long heartbeat timeout: the scheduler's own timer (a quarter of it) ticks at most once here.
    let scheduler = SchedulerConfig {
        no_worker_wait: Duration::from_secs(60),
        heartbeat_timeout: Duration::from_secs(60),
        ..SchedulerConfig::default()
    };
    let coordinator = LocalCoordinator::start(Config::from(scheduler)).await.unwrap();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let mut client = coordinator.client.clone();
            tokio::spawn(async move { client.predict(chat("Say hi.", 4)).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while counters(&coordinator.http_url).await.queue_depth < 3.0 {
        assert!(Instant::now() < deadline, "three prompts queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = counters(&coordinator.http_url).await;
    for _ in 0..200 {
        let (status, body) = http_get(&format!("{}/ready", coordinator.http_url)).await;
        assert_eq!(status, 503, "no worker serves yet: {body}");
        assert!(body.contains("\"workers_serving\":0"), "{body}");
    }
    for _ in 0..50 {
        counters(&coordinator.http_url).await;
    }
    let after = counters(&coordinator.http_url).await;
    assert_eq!(after.queue_depth, 3.0, "the prompts still wait");
    assert!(after.passes - before.passes <= 2.0, "250 readers cost {} passes (the timer's at most 2)", after.passes - before.passes);
    for task in waiting {
        task.abort();
    }
    coordinator.stop().await;
}

/// 700 prompts queue at once before a one-slot worker; each pass that finds the slot free looks at the
/// first 512 of them, not all 700, so the prompts examined stay a multiple of 512 while at least 512
/// wait (a pass with no free slot looks at none). Without the window, the first pass alone looked at 700.
/// `/ready` answers 200 from what the scheduler published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatch_pass_looks_at_a_bounded_window_of_the_queue() {
    let pool = TestPool::start(1, Config::from(fast_scheduler()), &[]).await;
    let (status, body) = http_get(&format!("{}/ready", pool.http_url())).await;
    assert_eq!((status, body.contains("\"workers_serving\":1")), (200, true), "{body}");
    let requests = (0..700).map(|i| chat(&format!("Say the number {i}."), 1)).collect();
    let mut client = pool.client.clone();
    let batch = tokio::spawn(async move { client.predict_batch(proto::PredictBatchRequest { requests }).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    let queued = loop {
        let now = counters(&pool.http_url()).await;
        if now.queue_depth >= 600.0 && now.examined > 0.0 {
            break now;
        }
        assert!(Instant::now() < deadline, "the batch queued and a pass looked at it");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        queued.examined % WINDOW == 0.0,
        "{} prompts examined over {} passes: not whole windows of {WINDOW}",
        queued.examined,
        queued.passes
    );
    batch.abort();
    pool.shutdown().await;
}
