//! The experiment harness: commands that start local (or remote) workers and a coordinator, drive load
//! through them and report. Apart from the daemon's modules, which it uses as any client would.

pub mod engine_bench;
pub mod local_pool;
pub mod multihost;
pub mod overload_bench;
pub mod run_bench;
pub mod server_bench;

use std::time::Duration;

/// Workers have this long to load the model and register.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// Workers stopped with SIGTERM have this long to drain before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);
