//! Where a bench command's logs go: one file per run (named at the start and in the summary), so that
//! the terminal shows the report and its progress lines, not the daemons' log lines between a table's
//! rows. The in-process coordinator logs there at warn unless `-v` asks for more, and the workers the
//! harness starts write their stderr (warnings, a panic's message) to the same file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The file of this process's bench run, once [`BenchLog::start`] has opened it.
static RUN_LOG: OnceLock<PathBuf> = OnceLock::new();

pub struct BenchLog {
    pub path: PathBuf,
    pub level: &'static str,
}

impl BenchLog {
    /// Opens `path` (default: `modelpool-COMMAND-UNIXTIME.log` in the temporary directory) and sends this
    /// process's logs there; `verbosity` 0 is warn, 1 info, 2 or more debug.
    pub fn start(command: &str, path: Option<PathBuf>, verbosity: u8, json: bool) -> std::io::Result<Self> {
        let path = path.unwrap_or_else(|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            std::env::temp_dir().join(format!("modelpool-{command}-{now}-{}.log", std::process::id()))
        });
        let level = match verbosity {
            0 => "warn",
            1 => "info",
            _ => "debug",
        };
        modelpool::telemetry::init_to_file(json, &path, level)?;
        let _ = RUN_LOG.set(path.clone());
        Ok(Self { path, level })
    }

    /// The last `lines` lines of the file, for a failed run's message.
    pub fn tail(&self, lines: usize) -> String {
        tail_of(&self.path, lines)
    }
}

/// Where a worker process the harness starts writes its stderr: the run's log file, or this process's
/// stderr outside a bench run (tests, a library caller).
pub fn worker_stderr() -> Stdio {
    let file = RUN_LOG.get().and_then(|path| std::fs::OpenOptions::new().append(true).open(path).ok());
    file.map_or_else(Stdio::inherit, Stdio::from)
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_lines_in_order() {
        let path = std::env::temp_dir().join(format!("modelpool-log-tail-{}.log", std::process::id()));
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail_of(&path, 2), "two\nthree");
        assert_eq!(tail_of(&path, 10), "one\ntwo\nthree");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(tail_of(&path, 2), "", "a missing file has no tail");
    }
}
