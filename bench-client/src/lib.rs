//! The bench client: drives serial and parallel scenarios through a coordinator and reports throughput,
//! latency and memory. `coordinator run-bench` uses this same code, so there is one measuring path.

pub mod balancer;
pub mod cli;
pub mod fresh;
pub mod hosts;
pub mod memory;
pub mod multi_turn;
pub mod openai_client;
pub mod recommend;
pub mod record;
pub mod report;
pub mod roofline;
pub mod runner;
pub mod shared_prefix;
pub mod slo;
pub mod stats;
pub mod summary;
pub mod workload;

use std::time::Duration;

use modelpool::PoolError;
use modelpool::auth::{AuthChannel, Credentials};
use modelpool::proto::coordinator_client::CoordinatorClient;

/// A client for a coordinator at `url` (e.g. http://127.0.0.1:50050, or https:// with a CA in
/// `credentials`), connecting lazily; every call carries the pool's token if one is set.
pub fn connect(url: &str, credentials: &Credentials) -> Result<CoordinatorClient<AuthChannel>, PoolError> {
    let channel = credentials.endpoint(url)?.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true).connect_lazy();
    // Large batches and long outputs exceed tonic's 4 MiB default.
    Ok(CoordinatorClient::with_interceptor(channel, credentials.attach()).max_decoding_message_size(64 << 20))
}
