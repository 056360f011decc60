//! A real worker (real model) served in this process on 127.0.0.1:0.

use std::time::Duration;

use modelpool::proto::{self, InfoRequest, worker_client::WorkerClient};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use worker::Config;

async fn start_worker(config: Config) -> (Channel, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        worker::run(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("worker runs");
    });
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    (channel, stop, handle)
}

async fn wait_serving(channel: &Channel) -> Vec<ServingStatus> {
    let mut health = HealthClient::new(channel.clone());
    let mut seen = Vec::new();
    for _ in 0..600 {
        let status = health
            .check(HealthCheckRequest { service: worker::health_service_name().into() })
            .await
            .unwrap()
            .into_inner()
            .status();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status == ServingStatus::Serving {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("worker never became SERVING: {seen:?}");
}

fn chat(text: &str, max_tokens: u32) -> proto::PredictRequest {
    proto::PredictRequest::from(&modelpool::PredictRequest::user(text, max_tokens))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_what_unary_returns_and_reports_itself() {
    let model = tokio::task::spawn_blocking(modelpool::model_cache::ensure_default_model).await.unwrap().unwrap();
    let config = Config { model: Some(model), threads: 1, threads_batch: 1, ..Config::default() };
    let (channel, stop, handle) = start_worker(config).await;
    let seen = wait_serving(&channel).await;
    assert_eq!(seen.last(), Some(&ServingStatus::Serving));

    let mut client = WorkerClient::new(channel.clone());
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

    // Stop words end generation before the stop string, which is not returned.
    let full = unary.text.clone();
    let word = full.split_whitespace().nth(3).expect("a sentence of several words").to_string();
    let cut = full.find(&word).unwrap();
    let mut stopped = chat(prompt, 40);
    stopped.sampling.as_mut().unwrap().stop = vec![word];
    let response = client.predict(stopped).await.unwrap().into_inner();
    assert_eq!(response.text, full[..cut]);
    assert_eq!(response.finish_reason, proto::FinishReason::StopSequence as i32);

    stop.send(()).unwrap();
    handle.await.unwrap();
}
