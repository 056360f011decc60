//! A real pool for integration tests: a coordinator served in this process on 127.0.0.1:0 and worker
//! processes started from the built `worker` binary with the default model.

#![allow(dead_code)]

use std::time::Duration;

use coordinator::SchedulerConfig;
use coordinator::local_pool::{LocalCoordinator, LocalPool, WorkerSpec, find_worker_binary};
use modelpool::proto::coordinator_client::CoordinatorClient;
use modelpool::proto::{self, ListWorkersRequest};
use modelpool::auth::AuthChannel;

pub struct TestPool {
    pub client: CoordinatorClient<AuthChannel>,
    pub workers: LocalPool,
    pub spec: WorkerSpec,
    coordinator: LocalCoordinator,
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
        let coordinator = LocalCoordinator::start(scheduler).await.unwrap();
        let spec = WorkerSpec {
            binary: find_worker_binary(None).expect("worker binary built alongside the tests"),
            model,
            coordinator: coordinator.url.clone(),
            threads: 1,
            slots: 1,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        let pool = LocalPool::start(&spec, workers, &coordinator.client, Duration::from_secs(120)).await.expect("workers register");
        Self { client: coordinator.client.clone(), workers: pool, spec, coordinator }
    }

    pub fn coordinator_url(&self) -> String {
        self.coordinator.url.clone()
    }

    pub async fn list(&self) -> Vec<proto::WorkerStatus> {
        self.client.clone().list_workers(ListWorkersRequest {}).await.unwrap().into_inner().workers
    }

    pub async fn shutdown(self) {
        self.workers.stop(Duration::from_secs(10)).await;
        self.coordinator.stop().await;
    }
}

pub fn chat(text: &str, max_tokens: u32) -> proto::PredictRequest {
    proto::PredictRequest::from(&modelpool::PredictRequest::user(text, max_tokens))
}
