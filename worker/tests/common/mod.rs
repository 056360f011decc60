//! A real worker (real model) served in this test process on 127.0.0.1:0.

#![allow(dead_code)]

use std::time::Duration;

use modelpool::proto::{self, InfoRequest, worker_client::WorkerClient};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use worker::Config;

use test_support::http_get;

// Used by the connection-limit tests only; the other test binaries include this module too.
#[allow(unused_imports)]
pub use test_support::closed_within::closed_within;

pub struct TestWorker {
    /// `http://127.0.0.1:PORT`: gRPC, and GET /metrics over HTTP/1.1.
    pub url: String,
    pub channel: Channel,
    pub client: WorkerClient<Channel>,
    /// The health statuses seen while waiting for it, in order.
    pub health_seen: Vec<ServingStatus>,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

/// One thread per worker: tests run side by side on a 2-core machine.
pub async fn config(slots: u32) -> Config {
    let model = tokio::task::spawn_blocking(model_input::model_cache::ensure_default_model).await.unwrap().unwrap();
    Config { model: Some(model), threads: 1, threads_batch: 1, slots, engine: worker::engine::EngineKind::Llama, ..Config::default() }
}

/// The same with batch-invariant passes (`--batch-invariant`): for tests that compare greedy text with
/// and without reuse or batch neighbours, which only those passes make bit-identical.
pub async fn invariant_config(slots: u32) -> Config {
    let mut config = config(slots).await;
    config.shape = worker::engine::batch_loop::PassShape::BatchInvariant;
    config
}

impl TestWorker {
    pub async fn start(config: Config) -> Self {
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
        let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
        let health_seen = wait_serving(&channel).await;
        Self { url, client: WorkerClient::new(channel.clone()), channel, health_seen, stop, handle }
    }

    /// The worker's `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = http_get::http_get(&format!("{}/metrics", self.url)).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn load(&self) -> proto::WorkerLoad {
        self.client.clone().info(InfoRequest {}).await.unwrap().into_inner().load.unwrap()
    }

    /// Polls the worker's load until `done` holds; panics after `limit`.
    pub async fn wait_load(&self, limit: Duration, what: &str, done: impl Fn(&proto::WorkerLoad) -> bool) -> proto::WorkerLoad {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let load = self.load().await;
            if done(&load) {
                return load;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: still {load:?} after {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap();
    }
}

async fn wait_serving(channel: &Channel) -> Vec<ServingStatus> {
    let mut health = HealthClient::new(channel.clone());
    let mut seen = Vec::new();
    for _ in 0..3000 {
        let status =
            health.check(HealthCheckRequest { service: worker::health_service_name().into() }).await.unwrap().into_inner().status();
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

pub fn chat(text: &str, max_tokens: u32) -> proto::PredictRequest {
    proto::PredictRequest::from(&modelpool::PredictRequest::user(text, max_tokens))
}

/// Sends each request alone, one after another, then all of them at once; returns both sets of
/// responses in request order, after checking that the concurrent ones shared the slots (none waited in
/// the queue as long as the shortest took to run).
pub async fn alone_then_together(
    client: &WorkerClient<Channel>,
    requests: &[proto::PredictRequest],
) -> (Vec<proto::PredictResponse>, Vec<proto::PredictResponse>) {
    let mut alone = Vec::new();
    for request in requests {
        alone.push(client.clone().predict(request.clone()).await.unwrap().into_inner());
    }
    let together = futures::future::join_all(requests.iter().map(|request| {
        let mut client = client.clone();
        async move { client.predict(request.clone()).await.unwrap().into_inner() }
    }))
    .await;
    let longest_wait = together.iter().map(|r| r.timings.as_ref().unwrap().queue_ms).fold(0.0, f64::max);
    let shortest_run = together.iter().map(|r| r.timings.as_ref().unwrap().total_ms).fold(f64::MAX, f64::min);
    assert!(longest_wait < shortest_run, "queue wait {longest_wait} ms vs shortest request {shortest_run} ms");
    (alone, together)
}
