//! The coordinator daemon: workers register and heartbeat; prompts are queued and handed to workers with
//! free slots. The daemon is [`serve`] and the modules beside it; the experiments (`run-bench`, ...)
//! are the `lab` crate's, which uses this library as any embedder would.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests start a real coordinator on
//! `127.0.0.1:0`.

pub mod access;
pub mod activity;
pub mod admission;
pub mod cli;
pub mod config;
pub mod http;
pub mod http_connections;
pub mod http_server;
pub mod metrics;
pub mod model_names;
pub mod openai;
pub mod prefix_index;
pub mod registry;
pub mod request_body;
pub mod retry;
pub mod routing;
pub mod scheduler;
pub mod service;
pub mod status_page;
pub mod unserved_fields;
pub mod worker_client;

use std::future::Future;
use std::sync::Arc;

use modelpool::grpc_incoming::LimitedIncoming;
use modelpool::proto::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::info;

use admission::Admission;
pub use cli::{Cli, Command};
pub use config::{Config, ServeArgs};
use http::HttpState;
use metrics::CoordinatorMetrics;
pub use scheduler::{Scheduler, SchedulerConfig};
use service::CoordinatorService;

const SERVICE_NAME: &str = "modelpool.v1.Coordinator";

/// Serves the Coordinator service (with gRPC health and reflection) on `listener`, and the HTTP API
/// (OpenAI-compatible, /metrics, /health, /ready) on `http` if given, until `shutdown` resolves.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let access = config.access();
    let mut builder = Server::builder();
    if let Some(tls) = config.server_tls.clone() {
        builder = builder.tls_config(tls)?;
    }
    let (request_timeout, http_limits, https) = (config.http_request_timeout, config.http_limits, config.https.clone());
    let incoming = LimitedIncoming::new(listener, config.grpc_max_connections, config.grpc_first_bytes_timeout);
    let scheduler = Scheduler::start(config.scheduler, config.credentials);
    let metrics = Arc::new(CoordinatorMetrics::default());
    let admission = Arc::new(Admission::new(Arc::clone(&metrics), config.strict_max_tokens));
    // Stops with this function, however it returns.
    let _sampler = AbortOnDrop(tokio::spawn(sample_activity(Arc::clone(&metrics))));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(modelpool::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1 for current grpcurl, v1alpha for older tools.
    let (reflection, reflection_alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    // The HTTP server runs on its own task; it stops when the gRPC server's shutdown fires.
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_http.send(true);
    };
    let http_task = match http {
        Some(http) => {
            let http_address = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
            info!(%http_address, https = https.is_some(), "coordinator HTTP API listening");
            let state = HttpState {
                scheduler: scheduler.clone(),
                metrics: Arc::clone(&metrics),
                admission: Arc::clone(&admission),
                access: access.clone(),
                request_timeout,
                stall_timeout: http_limits.write_timeout,
                model_names: config.model_names.clone(),
            };
            let app = http::router(Arc::new(state));
            let mut stopped = http_stopped;
            let stop = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            Some(tokio::spawn(http_server::serve(http, app, https, http_limits, stop)))
        }
        None => None,
    };
    info!(%address, "coordinator listening");
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(CoordinatorServer::new(CoordinatorService::new(access, scheduler, metrics, admission)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    if let Some(task) = http_task {
        task.await??;
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The status page's throughput series: one sample per interval while the coordinator runs.
async fn sample_activity(metrics: Arc<CoordinatorMetrics>) {
    let mut every = tokio::time::interval(activity::SAMPLE_EVERY);
    loop {
        every.tick().await;
        metrics.sample_activity();
    }
}
