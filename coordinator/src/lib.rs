//! The coordinator daemon: workers register and heartbeat; prompts are queued and handed to workers with
//! free slots; `run-bench` runs the whole experiment on local worker processes.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests start a real coordinator on
//! `127.0.0.1:0`.

pub mod bench;
pub mod config;
pub mod engine_bench;
pub mod local_pool;
pub mod overload_bench;
pub mod registry;
pub mod scheduler;
pub mod service;

use std::future::Future;

use modelpool::proto::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::info;

pub use config::{Cli, Command, ServeArgs};
pub use scheduler::{Scheduler, SchedulerConfig};
use service::CoordinatorService;

const SERVICE_NAME: &str = "modelpool.v1.Coordinator";

/// Serves the Coordinator service (and gRPC health) until `shutdown` resolves.
pub async fn serve(
    config: SchedulerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let token = config.credentials.token.clone();
    let mut builder = Server::builder();
    if let Some(tls) = config.server_tls.clone() {
        builder = builder.tls_config(tls)?;
    }
    let scheduler = Scheduler::start(config);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
    info!(%address, "coordinator listening");
    builder
        .add_service(health_service)
        .add_service(CoordinatorServer::with_interceptor(CoordinatorService::new(scheduler), token.require()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
