//! The worker daemon: one process loads one model and serves the gRPC `Worker` service.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests start real workers on `127.0.0.1:0`.

pub mod config;
pub mod engine;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod service;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use modelpool::grpc_incoming::LimitedIncoming;
use modelpool::proto::worker_server::WorkerServer;
use modelpool::{PoolError, proto};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

pub use config::{Args, Config};
use engine::llama::LlamaConfig;
use engine::mlx::MlxConfig;
use engine::{Engine, EngineKind};
use membership::Membership;
use service::WorkerService;
use state::SharedState;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("model: {0}")]
    Model(#[from] model_input::model_cache::ModelCacheError),
    #[error("engine: {0}")]
    Engine(#[from] PoolError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("the engine thread died (see the log above); the worker stopped serving")]
    EngineDied,
}

const SERVICE_NAME: &str = "modelpool.v1.Worker";

/// Serves until `shutdown` resolves, then drains: stops taking new requests, tells the coordinator,
/// finishes what is in flight (at most `config.drain_timeout`), deregisters and returns.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let bound = listener.local_addr()?;
    // Injected faults (drills only) are read and announced now, not on the engine thread.
    engine::fault::faults();
    let scheme = if config.server_tls.is_some() { "https" } else { "http" };
    let address = advertised_address(config.advertise.as_deref(), scheme, bound);
    let state = SharedState::new(address.clone());

    // Liveness comes from the server answering at all; readiness is the health status, NOT_SERVING
    // until the model is loaded and has produced a token.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::NotServing).await;
    health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;

    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    // HTTP/1.1 is accepted too, for /metrics, /health and /ready on the same port.
    let mut builder = Server::builder().accept_http1(true);
    if let Some(tls) = config.server_tls.clone() {
        builder = builder.tls_config(tls)?;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(modelpool::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error = |e: tonic_reflection::server::Error| PoolError::Internal(format!("gRPC reflection: {e}"));
    // v1 for current grpcurl, v1alpha for older tools.
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let token = config.credentials.token.clone();
    let routes = Routes::from(http::router(Arc::clone(&state), token.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_alpha)
        .add_service(WorkerServer::with_interceptor(WorkerService::new(Arc::clone(&state)), token.require()));
    let incoming = LimitedIncoming::new(listener, config.max_connections, config.first_bytes_timeout);
    let server = tokio::spawn(builder.add_routes(routes).serve_with_incoming_shutdown(incoming, async {
        let _ = server_stopped.await;
    }));
    info!(%address, "worker listening; loading the model");
    // Machine-readable, for scripts that start workers on port 0.
    println!("MODELPOOL_WORKER_LISTENING {address}");

    let started = Instant::now();
    let engine = match load_engine(&config).await {
        Ok(engine) => engine,
        Err(e) => {
            let _ = stop_server.send(());
            let _ = server.await;
            return Err(e);
        }
    };
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    state.set_engine(engine, load_ms);
    health.set_service_status("", ServingStatus::Serving).await;
    health.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
    info!(load_ms = format!("{load_ms:.0}"), "model loaded and warmed up; serving");

    let membership = match &config.coordinator {
        Some(url) => Some(Membership::start(url, &config.credentials, Arc::clone(&state))?),
        None => None,
    };

    // A dead engine thread (a panic in inference) is not a worker that serves: say so, leave the pool,
    // and exit non-zero so a supervisor restarts the process.
    let engine_died = tokio::select! {
        () = shutdown => false,
        () = engine_death(&state) => true,
    };
    if engine_died {
        error!(in_flight = state.in_flight(), "the engine thread died; not serving, leaving the pool");
        state.start_draining();
        health.set_service_status("", ServingStatus::NotServing).await;
        health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
        if let Some(membership) = membership {
            membership.leave().await;
        }
        let _ = stop_server.send(());
        let _ = server.await;
        return Err(WorkerError::EngineDied);
    }
    info!(in_flight = state.in_flight(), "shutting down: draining");
    state.start_draining();
    health.set_service_status("", ServingStatus::NotServing).await;
    health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
    if !state.drained(config.drain_timeout).await {
        warn!(in_flight = state.in_flight(), "drain time limit reached; abandoning the rest");
    }
    if let Some(membership) = membership {
        membership.leave().await;
    }
    let _ = stop_server.send(());
    match server.await {
        Ok(result) => result?,
        Err(e) => warn!(error = %e, "server task failed"),
    }
    Ok(())
}

/// Resolves when the engine's inference thread has ended.
async fn engine_death(state: &SharedState) {
    loop {
        if state.engine().is_some_and(|engine| !engine.is_alive()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn load_engine(config: &Config) -> Result<Arc<dyn Engine>, WorkerError> {
    let explicit = config.model.clone();
    let model_path = tokio::task::spawn_blocking(move || model_input::model_cache::resolve_model(explicit.as_deref()))
        .await
        .map_err(|e| PoolError::Internal(e.to_string()))??;
    let engine: Arc<dyn Engine> = match config.engine {
        EngineKind::Llama => {
            let llama = LlamaConfig {
                model_path,
                slots: config.slots,
                context_per_slot: config.context_per_slot,
                queue_capacity: config.queue,
                threads: config.threads,
                threads_batch: config.threads_batch,
                kv_unified: config.kv_unified,
                flash_attention: config.flash_attention,
                kv_cache_type: config.kv_cache_type,
                sliding_window_cache: config.sliding_window_cache,
                prefix_cache: config.prefix_cache,
                prompt_store_bytes: config.prompt_store_bytes,
                shape: config.shape,
                batch_tokens: config.batch_tokens,
                cpu_variant: config.cpu_variant.clone(),
                cpu_probe_exe: config.cpu_probe_exe.clone(),
            };
            Arc::new(
                tokio::task::spawn_blocking(move || engine::llama::load(llama)).await.map_err(|e| PoolError::Internal(e.to_string()))??,
            )
        }
        EngineKind::Mlx => {
            let mlx = MlxConfig {
                model_path,
                slots: config.slots,
                context_per_slot: config.context_per_slot,
                queue_capacity: config.queue,
                prefix_cache: config.prefix_cache,
                prompt_store_bytes: config.prompt_store_bytes,
                shape: config.shape,
                dense: config.mlx_dense,
                batch_tokens: config.batch_tokens,
                threads: config.threads,
            };
            Arc::new(tokio::task::spawn_blocking(move || engine::mlx::load(mlx)).await.map_err(|e| PoolError::Internal(e.to_string()))??)
        }
    };
    Ok(engine)
}

/// For clients that want to wait until a worker is ready.
pub fn health_service_name() -> &'static str {
    SERVICE_NAME
}

/// Re-exported so that tests and tools build requests without naming the proto module path.
pub use proto::worker_client::WorkerClient;

/// The address to register: `--advertise` as a URL is taken as it is; `HOST:PORT` gets the scheme this
/// worker serves; a bare `HOST` also gets the port actually bound (so `--port 0` works behind a name).
fn advertised_address(advertise: Option<&str>, scheme: &str, bound: std::net::SocketAddr) -> String {
    match advertise {
        Some(url) if url.contains("://") => url.to_string(),
        Some(host_port) if host_port.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) => {
            format!("{scheme}://{host_port}")
        }
        Some(host) => format!("{scheme}://{host}:{}", bound.port()),
        // Nobody can dial 0.0.0.0: the host's name is the best guess (in a container, its name on the
        // container network).
        None if bound.ip().is_unspecified() => match host_name() {
            Some(host) => format!("{scheme}://{host}:{}", bound.port()),
            None => format!("{scheme}://{bound}"),
        },
        None => format!("{scheme}://{bound}"),
    }
}

/// This machine's host name, as the kernel has it.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|name| name.trim().to_string()).filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::advertised_address;

    #[test]
    fn the_advertised_address_takes_what_it_is_not_told_from_the_bound_socket() {
        let bound = "10.0.0.5:41234".parse().unwrap();
        assert_eq!(advertised_address(None, "http", bound), "http://10.0.0.5:41234");
        assert_eq!(advertised_address(Some("gpu1"), "https", bound), "https://gpu1:41234");
        assert_eq!(advertised_address(Some("gpu1:50051"), "http", bound), "http://gpu1:50051");
        assert_eq!(advertised_address(Some("http://lb:80"), "https", bound), "http://lb:80");
        let everywhere = "0.0.0.0:50051".parse().unwrap();
        let host = super::host_name().expect("a host name");
        assert_eq!(advertised_address(None, "http", everywhere), format!("http://{host}:50051"), "never 0.0.0.0");
    }
}
