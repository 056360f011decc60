//! A real pool for integration tests: a coordinator served in this process on 127.0.0.1:0 and worker
//! processes started from the built `worker` binary with the default model.

#![allow(dead_code)]

use std::time::Duration;

use coordinator::SchedulerConfig;
use coordinator::local_pool::{LocalPool, WorkerSpec, find_worker_binary, wait_for_workers};
use modelpool::proto::coordinator_client::CoordinatorClient;
use modelpool::proto::{self, ListWorkersRequest};
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub struct TestPool {
    pub url: String,
    pub client: CoordinatorClient<Channel>,
    pub workers: LocalPool,
    pub spec: WorkerSpec,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Heartbeats every 200 ms, eviction after 1 s: faults show up quickly.
pub fn fast_scheduler() -> SchedulerConfig {
    SchedulerConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(1),
        attempt_timeout: Duration::from_secs(60),
        ..SchedulerConfig::default()
    }
}

impl TestPool {
    pub async fn start(workers: usize, scheduler: SchedulerConfig, extra_args: &[&str]) -> Self {
        let model = tokio::task::spawn_blocking(modelpool::model_cache::ensure_default_model).await.unwrap().expect("default model");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(coordinator::serve(scheduler, listener, async {
            let _ = stopped.await;
        }));
        let spec = WorkerSpec {
            binary: find_worker_binary(None).expect("worker binary built alongside the tests"),
            model,
            coordinator: url.clone(),
            threads: 1,
            slots: 1,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        let mut pool = LocalPool::spawn(&spec, workers).unwrap();
        let mut client = bench_client::connect(&url).unwrap();
        wait_for_workers(&mut client, workers, Duration::from_secs(120), &mut pool).await.expect("workers register");
        Self { url, client, workers: pool, spec, stop: Some(stop) }
    }

    pub async fn list(&self) -> Vec<proto::WorkerStatus> {
        self.client.clone().list_workers(ListWorkersRequest {}).await.unwrap().into_inner().workers
    }

    pub async fn shutdown(mut self) {
        let pool = std::mem::replace(&mut self.workers, LocalPool { workers: Vec::new() });
        pool.stop(Duration::from_secs(10)).await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn chat(text: &str, max_tokens: u32) -> proto::PredictRequest {
    proto::PredictRequest::from(&modelpool::PredictRequest::user(text, max_tokens))
}
