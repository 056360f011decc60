//! Continuous batching, admission and cancellation on a real worker with the real model.

mod common;

use std::time::Duration;

use common::{TestWorker, alone_then_together, chat, config, invariant_config};
use tonic::Code;

const PROMPTS: [&str; 4] = [
    "What is the capital of France?",
    "Write a short poem about rain.",
    "List three animals that live in the sea.",
    "Explain what a CPU does in two sentences.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_concurrent_greedy_requests_return_what_each_returns_alone() {
    // The default per-slot KV streams make this hold; with --kv-unified near-ties flip (measured).
    let worker = TestWorker::start(invariant_config(4).await).await;
    let requests: Vec<_> = PROMPTS.iter().map(|prompt| chat(prompt, 48)).collect();
    // (It also checks that they really shared the batch: none waited for another to finish.)
    let (alone, together) = alone_then_together(&worker.client, &requests).await;
    for (a, t) in alone.iter().zip(&together) {
        assert_eq!(a.text, t.text, "batched greedy output equals the output alone");
        assert_eq!(a.completion_tokens, t.completion_tokens);
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_request_frees_its_slot_for_the_next() {
    let worker = TestWorker::start(config(1).await).await;
    // A generation of 1500 tokens takes half a minute here; cancelling must end it within a step.
    let mut stream = worker.client.clone().predict_stream(chat("Tell me a very long story.", 1500)).await.unwrap().into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().expect("text arrives");
    }
    drop(stream);
    worker.wait_load(Duration::from_secs(10), "slot freed after disconnect", |l| l.slots_in_use == 0 && l.cancelled == 1).await;
    let next = worker.client.clone().predict(chat("Say hi.", 8)).await.unwrap().into_inner();
    assert!(next.completion_tokens > 0);

    // A deadline that passes mid-generation also stops it.
    let mut request = tonic::Request::new(chat("Tell me a very long story.", 1500));
    request.set_timeout(Duration::from_millis(500));
    let status = worker.client.clone().predict(request).await.unwrap_err();
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    let load = worker.wait_load(Duration::from_secs(10), "slot freed after deadline", |l| l.slots_in_use == 0 && l.cancelled == 2).await;
    assert_eq!(load.served, 1, "only the completed request counts as served");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_refuses_at_once_and_over_context_is_invalid() {
    let mut config = config(1).await;
    config.queue = 1;
    config.context_per_slot = 256;
    let worker = TestWorker::start(config).await;

    let mut running = worker.client.clone().predict_stream(chat("Tell me a long story.", 200)).await.unwrap().into_inner();
    running.message().await.unwrap().expect("the first request is generating");
    let queued = tokio::spawn({
        let mut client = worker.client.clone();
        async move { client.predict(chat("Say hi.", 4)).await }
    });
    worker.wait_load(Duration::from_secs(10), "second request queued", |l| l.queued == 1).await;
    let refused = worker.client.clone().predict(chat("Say hello.", 4)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("queue"), "{}", refused.message());
    drop(running);
    assert!(queued.await.unwrap().is_ok(), "the queued request is served once the slot frees");

    let mut strict = chat(&"word ".repeat(200), 100);
    strict.sampling.as_mut().unwrap().strict_max_tokens = Some(true);
    let status = worker.client.clone().predict(strict).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("256"), "names the context per slot: {}", status.message());
    let status = worker.client.clone().predict(chat(&"word ".repeat(300), 100)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("no room to generate"), "a prompt filling the slot: {}", status.message());
    // A megabyte that can never fit is refused from the tokenizer's bound
    // on bytes per token, before the tokenizer runs; the old worker tokenized it first (its refusal
    // gave the exact token count).
    let status = worker.client.clone().predict(chat(&"a".repeat(1_000_000), 8)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("no token covers more than"), "the cheap bound refused it: {}", status.message());
    worker.stop().await;
}
