//! A real worker (real model) served in this process on 127.0.0.1:0.

mod common;

use common::{TestWorker, chat, closed_within, config};
use modelpool::proto::{self, InfoRequest};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_what_unary_returns_and_reports_itself() {
    let worker = TestWorker::start(config(1).await).await;
    assert_eq!(worker.health_seen.last(), Some(&ServingStatus::Serving));
    let mut client = worker.client.clone();
    let prompt = "Write one sentence about the sea.";
    let unary = client.predict(chat(prompt, 40)).await.unwrap().into_inner();
    assert!(unary.completion_tokens > 0 && unary.completion_tokens <= 40);
    let timings = unary.timings.unwrap();
    assert!(timings.ttft_ms > 0.0 && timings.total_ms >= timings.ttft_ms);

    let mut stream = client.predict_stream(chat(prompt, 40)).await.unwrap().into_inner();
    let mut pieces = Vec::new();
    let mut done = None;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(done.is_none(), "nothing follows the final message");
        if let Some(final_message) = chunk.done {
            done = Some(final_message);
        } else {
            pieces.push(chunk.text);
        }
    }
    let done = done.expect("a final message with the accounting");
    assert!(pieces.len() > 1, "text arrived in several pieces");
    assert_eq!(pieces.concat(), unary.text, "streamed pieces concatenate to the unary text");
    assert_eq!(done.text, unary.text);
    assert_eq!(done.completion_tokens, unary.completion_tokens);

    let info = client.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.engine, "llama");
    assert_eq!((info.slots, info.threads, info.context_per_slot), (1, 1, 2048));
    assert!(info.model_size_bytes > 90_000_000 && info.load_ms > 0.0);
    assert!(info.memory.unwrap().rss_bytes > 0);
    assert_eq!(info.load.unwrap().served, 2, "the warm-up is not counted as served");
    // It reports the llama.cpp CPU module it chose: on x86-64 Linux the best this CPU's flags allow
    // (unless that one failed its probe, which the description then says).
    let modules = worker::engine::llama::cpu_variant::discover(&worker::engine::llama::cpu_variant::module_dirs());
    match modules.iter().find(|m| m.score > 0) {
        Some(best) if !info.cpu_kernels.contains("skipped") => {
            assert!(info.cpu_kernels.starts_with(&format!("{} (probed; best of ", best.name)), "{} vs {modules:?}", info.cpu_kernels)
        }
        Some(_) => assert!(info.cpu_kernels.contains(" (probed; "), "{}", info.cpu_kernels),
        None => assert!(!worker::engine::llama::cpu_variant::LOADABLE_MODULES && info.cpu_kernels == "built in", "{}", info.cpu_kernels),
    }

    // Stop words end generation before the stop string, which is not returned.
    let full = unary.text.clone();
    let word = full.split_whitespace().nth(3).expect("a sentence of several words").to_string();
    let cut = full.find(&word).unwrap();
    let mut stopped = chat(prompt, 40);
    stopped.sampling.as_mut().unwrap().stop = vec![word];
    let response = client.predict(stopped).await.unwrap().into_inner();
    assert_eq!(response.text, full[..cut]);
    assert_eq!(response.finish_reason, proto::FinishReason::StopSequence as i32);

    // ignore_eos: exactly max_tokens tokens, however early the model would have stopped.
    let mut fixed = chat("Say hi.", 40);
    fixed.sampling.as_mut().unwrap().ignore_eos = Some(true);
    let response = client.predict(fixed).await.unwrap().into_inner();
    assert_eq!(response.completion_tokens, 40);
    let gaps = &response.timings.as_ref().unwrap().inter_token_ms;
    assert_eq!(gaps.len(), 39, "one gap between each pair of tokens");
    assert!(gaps.iter().all(|&g| g > 0.0));
    assert_eq!(response.finish_reason, proto::FinishReason::Length as i32);

    worker.stop().await;
}

/// The worker's port bounds its connections (`--max-connections`), in
/// number (past the limit a new one is closed at once) and in silence (one that sends nothing is closed
/// after the first-bytes deadline); the coordinator's connection, which speaks, keeps working. On the
/// old main idle sockets stayed open for as long as their clients liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_bounded_in_number_and_in_time() {
    let mut config = config(1).await;
    config.max_connections = 3;
    config.first_bytes_timeout = std::time::Duration::from_secs(1);
    let worker = TestWorker::start(config).await;
    let address = worker.url.trim_start_matches("http://").to_string();
    let idle = [tokio::net::TcpStream::connect(&address).await.unwrap(), tokio::net::TcpStream::connect(&address).await.unwrap()];
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut over = tokio::net::TcpStream::connect(&address).await.unwrap();
    assert!(closed_within(&mut over, std::time::Duration::from_millis(800)).await, "the fourth connection is closed at once");
    for mut stream in idle {
        assert!(closed_within(&mut stream, std::time::Duration::from_secs(5)).await, "a silent connection is closed at its deadline");
    }
    let answer = worker.client.clone().predict(chat("Say hi.", 4)).await.unwrap().into_inner();
    assert!(answer.completion_tokens > 0);
    worker.stop().await;
}
