//! End-to-end: a coordinator and real worker processes with the real model, over gRPC on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::{TestPool, chat, fast_scheduler};
use modelpool::proto::{self, predict_result::Outcome, worker_client::WorkerClient};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_comes_back_in_order_and_the_model_knows_paris() {
    let pool = TestPool::start(2, fast_scheduler(), &[]).await;
    let mut client = pool.client.clone();

    // The question carries its answer: the 135M model's unprompted answer is a near-tie that the CPU
    // module's rounding decides (AVX2 kernels said Paris, AVX-512 ones "Le Grand Château"), and this
    // test is about the batch and the routes, not the model's knowledge.
    let questions = [
        "Paris is the capital of France. Which city is the capital of France?",
        "Name a color.",
        "Say hello.",
        "What is 2+2?",
        "Name a fruit.",
        "Say goodbye.",
    ];
    let requests: Vec<_> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let mut r = chat(q, 24);
            r.request_id = format!("q{i}");
            r
        })
        .collect();
    let results = client.predict_batch(proto::PredictBatchRequest { requests }).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 6);
    let mut workers_used = std::collections::BTreeSet::new();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.index as usize, i);
        let Some(Outcome::Response(response)) = &result.outcome else { panic!("prompt {i} failed: {result:?}") };
        assert_eq!(response.request_id, format!("q{i}"), "results are in input order");
        assert!(response.completion_tokens > 0 && !response.text.is_empty());
        workers_used.insert(response.worker_id.clone());
    }
    assert_eq!(workers_used.len(), 2, "the batch was shared between both workers");
    let Some(Outcome::Response(first)) = &results[0].outcome else { unreachable!() };
    assert!(first.text.contains("Paris"), "greedy answer: {:?}", first.text);

    let single =
        client.predict(chat("Paris is the capital of France. Which city is the capital of France?", 24)).await.unwrap().into_inner();
    assert!(single.text.contains("Paris"), "{:?}", single.text);
    assert_eq!(single.text, first.text, "greedy output does not depend on the route");
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_survives_a_worker_killed_mid_run_and_the_dead_worker_is_evicted() {
    let scheduler = fast_scheduler();
    let timeout = scheduler.heartbeat_timeout;
    let pool = TestPool::start(2, scheduler, &[]).await;
    let mut client = pool.client.clone();
    let requests: Vec<_> = (0..8).map(|i| chat(&format!("Write a short story about the number {i}."), 48)).collect();
    let batch = tokio::spawn(async move { client.predict_batch(proto::PredictBatchRequest { requests }).await });

    // Kill a worker while it is generating, not before.
    let victim = &pool.workers.workers[0];
    let victim_id = loop {
        let busy = pool.list().await.into_iter().find(|w| w.info.as_ref().is_some_and(|i| i.pid == victim.pid) && w.in_flight > 0);
        if let Some(w) = busy {
            break w.worker_id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    victim.signal(libc::SIGKILL);
    let killed_at = Instant::now();

    let results = batch.await.unwrap().unwrap().into_inner().results;
    assert_eq!(results.len(), 8);
    let mut retried = 0;
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.index as usize, i);
        let Some(Outcome::Response(response)) = &result.outcome else { panic!("prompt {i} was lost: {result:?}") };
        assert!(!response.text.is_empty());
        if response.attempts > 1 {
            retried += 1;
            assert_ne!(response.worker_id, victim_id, "a retried prompt finished on the surviving worker");
        }
    }
    assert!(retried >= 1, "the prompt in flight on the killed worker was retried");

    // Eviction: gone within the heartbeat timeout (plus one expiry tick of slack).
    loop {
        if !pool.list().await.iter().any(|w| w.worker_id == victim_id) {
            break;
        }
        assert!(killed_at.elapsed() < timeout + timeout / 2, "dead worker still registered after {:?}", killed_at.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.list().await.len(), 1);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_are_refused_by_both_daemons_naming_the_field() {
    let pool = TestPool::start(1, fast_scheduler(), &[]).await;
    let worker_address = pool.list().await[0].info.as_ref().unwrap().address.clone();
    let mut worker = WorkerClient::connect(worker_address).await.unwrap();
    let mut coordinator = pool.client.clone();

    let mut empty = chat("", 8);
    empty.input = Some(proto::predict_request::Input::Prompt(Vec::new()));
    let mut zero = chat("hi", 8);
    zero.sampling.as_mut().unwrap().max_tokens = Some(0);
    let mut huge = chat("hi", 8);
    huge.sampling.as_mut().unwrap().max_tokens = Some(1_000_000);
    huge.sampling.as_mut().unwrap().strict_max_tokens = Some(true);
    let mut cold = chat("hi", 8);
    cold.sampling.as_mut().unwrap().temperature = Some(-0.5);
    let mut no_messages = chat("hi", 8);
    no_messages.input = Some(proto::predict_request::Input::Chat(proto::ChatMessages { messages: Vec::new() }));
    let mut stranger = chat("hi", 8);
    stranger.input = Some(proto::predict_request::Input::Chat(proto::ChatMessages {
        messages: vec![proto::ChatMessage { role: "wizard".into(), content: "hi".into() }],
    }));
    let mut wide = chat("hi", 8);
    wide.sampling.as_mut().unwrap().top_p = Some(1.5);
    let mut stops = chat("hi", 8);
    stops.sampling.as_mut().unwrap().stop = (0..9).map(|i| format!("stop{i}")).collect();
    let mut not_utf8 = chat("", 8);
    not_utf8.input = Some(proto::predict_request::Input::Prompt(vec![b'h', b'i', 0xff, 0xfe]));
    // Ids are logged, and a newline in one forged log lines.
    let mut forged_id = chat("hi", 8);
    forged_id.request_id = "r1\n{\"level\":\"ERROR\"}".into();
    let cases = [
        (forged_id, "request_id"),
        (empty, "prompt"),
        (zero, "sampling.max_tokens"),
        (huge, "sampling.max_tokens"),
        (cold, "sampling.temperature"),
        (no_messages, "chat.messages"),
        (stranger, "chat.messages[0].role"),
        (wide, "sampling.top_p"),
        (stops, "sampling.stop"),
        (not_utf8, "UTF-8"),
    ];

    for (request, field) in cases {
        let from_worker = worker.predict(request.clone()).await.unwrap_err();
        let from_coordinator = coordinator.predict(request).await.unwrap_err();
        for (daemon, status) in [("worker", from_worker), ("coordinator", from_coordinator)] {
            assert_eq!(status.code(), Code::InvalidArgument, "{daemon}: {status:?}");
            assert!(status.message().contains(field), "{daemon} message {:?} names {field}", status.message());
        }
    }
    // Strict about max_tokens, the worker checks prompt plus max_tokens against its context and says
    // the numbers.
    let long_prompt = "word ".repeat(1900);
    let strict = || {
        let mut request = chat(&long_prompt, 500);
        request.sampling.as_mut().unwrap().strict_max_tokens = Some(true);
        request
    };
    let status = worker.predict(strict()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("2048"), "{}", status.message());
    let status = coordinator.predict(strict()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "passed through, not retried: {status:?}");
    // Not strict (the default), the same request is served and stops where the context ends.
    let mut lenient = chat(&long_prompt, 500);
    lenient.sampling.as_mut().unwrap().ignore_eos = Some(true);
    let served = coordinator.predict(lenient).await.unwrap().into_inner();
    assert_eq!(served.finish_reason(), proto::FinishReason::Length);
    assert!(served.completion_tokens > 0 && served.completion_tokens < 500, "{served:?}");
    assert_eq!(served.prompt_tokens + served.completion_tokens, 2048, "generated up to the context's end: {served:?}");
    // A prompt that leaves no room at all is refused, naming the prompt.
    let status = worker.predict(chat(&"word ".repeat(2100), 8)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("prompt") && status.message().contains("2048"), "{}", status.message());

    // Over the gRPC message limit (4 MiB): refused by the transport with the limit in the message.
    let mut oversized = chat("", 8);
    oversized.input = Some(proto::predict_request::Input::Prompt(vec![b'a'; 5 << 20]));
    for (daemon, status) in [
        ("worker", worker.predict(oversized.clone()).await.unwrap_err()),
        ("coordinator", coordinator.predict(oversized).await.unwrap_err()),
    ] {
        assert_eq!(status.code(), Code::OutOfRange, "{daemon}: {status:?}");
        assert!(status.message().contains("4194304"), "{daemon}: {}", status.message());
    }

    // Nothing crashed: both still serve.
    assert!(!coordinator.predict(chat("Say hi.", 4)).await.unwrap().into_inner().text.is_empty());
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mlx_worker_knows_paris_through_the_coordinator() {
    let pool = TestPool::start(1, fast_scheduler(), &["--engine", "mlx"]).await;
    assert_eq!(pool.list().await[0].info.as_ref().unwrap().engine, "mlx");
    let answer = pool
        .client
        .clone()
        .predict(chat("Paris is the capital of France. Which city is the capital of France?", 16))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn llama_workers_share_the_mapped_weights_so_pss_counts_them_once() {
    use modelpool::memory::ProcessMemory;
    let pool = TestPool::start(2, fast_scheduler(), &[]).await;
    // Touch every weight page in both workers.
    let mut client = pool.client.clone();
    let requests = (0..2).map(|_| chat("Say hello.", 4)).collect();
    client.predict_batch(proto::PredictBatchRequest { requests }).await.unwrap();
    let memory: Vec<ProcessMemory> = pool.workers.workers.iter().map(|w| ProcessMemory::of_pid(w.pid).expect("worker alive")).collect();
    let pool_pss: u64 = memory.iter().map(|m| m.pss_bytes).sum();
    let one_rss = memory[0].rss_bytes;
    assert!(pool_pss < 2 * one_rss, "pool PSS {pool_pss} should count the 94 MiB of mapped weights once (one worker's RSS {one_rss})");
    assert!(memory.iter().all(|m| m.uss_bytes < m.rss_bytes), "shared pages are not unique to either worker: {memory:?}");
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_membership_calls_are_refused_with_the_field_named() {
    let pool = TestPool::start(1, fast_scheduler(), &[]).await;
    let mut coordinator = pool.client.clone();
    let real = pool.list().await[0].info.clone().unwrap();
    let register = |info: proto::WorkerInfo| proto::RegisterRequest {
        info: Some(info),
        protocol_version: proto::ProtocolVersion::ProtocolVersion1 as i32,
    };

    // A heartbeat from a worker id the coordinator never issued.
    let status = coordinator.heartbeat(proto::HeartbeatRequest { worker_id: "w999-1".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("worker_id"), "{}", status.message());

    // Another process claiming the registered worker's address.
    let claim = proto::WorkerInfo { instance_id: "someone-else".into(), pid: 1, ..real.clone() };
    let status = coordinator.register(register(claim)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("info.address"), "{}", status.message());

    // The registered instance registering again under a second address.
    let moved = proto::WorkerInfo { address: "http://127.0.0.1:1".into(), ..real.clone() };
    let status = coordinator.register(register(moved)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("info.instance_id"), "{}", status.message());

    // A worker serving another model than the pool.
    let other_model = proto::WorkerInfo {
        address: "http://127.0.0.1:2".into(),
        instance_id: "other-model".into(),
        model_name: "SomethingElse-7B".into(),
        ..real.clone()
    };
    let status = coordinator.register(register(other_model)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("info.model_name"), "{}", status.message());

    // None of them changed the pool, and it still serves.
    let workers = pool.list().await;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].info.as_ref().unwrap().address, real.address);
    assert!(coordinator.predict(chat("Say hi.", 4)).await.unwrap().into_inner().completion_tokens > 0);
    pool.shutdown().await;
}
