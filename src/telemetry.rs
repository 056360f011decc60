//! Logging set-up shared by the daemons: human-readable text or JSON lines, filtered by `RUST_LOG`.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// The libraries' chatter stays at warn whatever the level.
const QUIET_LIBRARIES: &str = "llama_cpp_2=warn,llama-cpp-2=warn,h2=warn,tower=warn";

/// `RUST_LOG` if set, else `level` for our crates.
fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{level},{QUIET_LIBRARIES}")))
}

/// Installs the global subscriber. Logs go to stderr so that stdout stays free for reports.
/// `json` selects one JSON object per line. Calling it twice is harmless (the second call does nothing).
pub fn init(json: bool) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter("info")).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Installs the global subscriber writing to the end of `path` (created if missing), without colour
/// escapes, at `level` (`warn`, `info`, `debug`; `RUST_LOG` overrides it): for commands whose terminal
/// belongs to their report, as the bench commands' does.
pub fn init_to_file(json: bool, path: &Path, level: &str) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter(level)).with_ansi(false).with_writer(Mutex::new(file));
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
    Ok(())
}
