//! What waiting prompts may cost the coordinator, against a real
//! coordinator and, where the pool's context matters, a real worker: the queue is bounded in bytes as
//! well as in prompts (429 with Retry-After past it), and a prompt whose text alone cannot fit a slot is
//! refused at admission, before it queues, from the bound the workers' tokenizers give.

mod common;

use std::time::{Duration, Instant};

use common::{TestPool, fast_scheduler, host_of, http_get, metric};
use coordinator::{Config, SchedulerConfig};
use lab::local_pool::LocalCoordinator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one chat completion on a connection of its own; the answer is read by `answer`.
async fn send_chat(host: &str, text: &str, max_tokens: u32) -> TcpStream {
    let body = serde_json::json!({"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(host).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// The whole answer on a connection the server closes after it.
async fn answer(mut stream: TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut received)).await.expect("an answer in time").unwrap();
    String::from_utf8_lossy(&received).into_owned()
}

async fn queue_depth(http_url: &str) -> f64 {
    let (_, text) = http_get(&format!("{http_url}/metrics")).await;
    metric(&text, "modelpool_coordinator_queue_depth").expect("the queue depth gauge")
}

/// Two prompts of 800 kB wait (there is no worker yet); a third would pass 2 MiB of queue and is refused
/// at once with 429 and Retry-After, although the prompt count (limit 1024) is far from full. On the
/// old main all three queued: 1024 such prompts were a gigabyte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_full_in_bytes_refuses_with_429_and_retry_after() {
    let scheduler = SchedulerConfig { max_queue_bytes: 2 << 20, no_worker_wait: Duration::from_secs(30), ..SchedulerConfig::default() };
    let coordinator = LocalCoordinator::start(Config::from(scheduler)).await.unwrap();
    let host = host_of(&coordinator.http_url);
    let text = "word ".repeat(160_000);
    let mut waiting = Vec::new();
    for expected in 1..=2 {
        waiting.push(send_chat(&host, &text, 4).await);
        let deadline = Instant::now() + Duration::from_secs(20);
        while queue_depth(&coordinator.http_url).await < f64::from(expected) {
            assert!(Instant::now() < deadline, "prompt {expected} queued");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let started = Instant::now();
    let refused = answer(send_chat(&host, &text, 4).await, Duration::from_secs(10)).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    assert!(refused.contains("--max-queue-mib") && refused.contains("bytes"), "the limit named: {refused}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after a wait");
    // A small prompt still fits beside the two.
    let small = send_chat(&host, "Say hi.", 4).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue_depth(&coordinator.http_url).await < 3.0 {
        assert!(Instant::now() < deadline, "the small prompt queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((waiting, small));
    coordinator.stop().await;
}

/// A chat whose text is more tokens than a slot holds, whatever the tokenizer makes of it, is refused
/// by the coordinator itself (400 naming `messages` and the bound) and never reaches the worker; a chat
/// that fits still runs. On the old main only `max_tokens` was checked at admission, so the chat queued
/// and was refused by the worker after tokenizing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chat_that_cannot_fit_any_slot_is_refused_at_admission() {
    let pool = TestPool::start(1, Config::from(fast_scheduler()), &["--ctx-per-slot", "512"]).await;
    let host = host_of(&pool.http_url());
    let worker = &pool.list().await[0];
    let per_token = worker.info.as_ref().unwrap().max_token_bytes;
    assert!((1..=256).contains(&per_token), "the default model's tokenizer gives a bound: {per_token}");
    let text = "a".repeat(per_token as usize * 600);
    let refused = answer(send_chat(&host, &text, 8).await, Duration::from_secs(30)).await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(refused.contains("\"param\":\"messages\"") && refused.contains("at least 600 tokens"), "the coordinator's bound: {refused}");
    let served = answer(send_chat(&host, "Say hi.", 4).await, Duration::from_secs(60)).await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    // The worker was sent one prompt: the one that fit.
    let worker = &pool.list().await[0];
    assert_eq!((worker.completed, worker.failed_attempts), (1, 0), "{worker:?}");
    pool.shutdown().await;
}
