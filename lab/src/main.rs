//! `lab COMMAND`: runs one experiment. Its terminal is the report's; its logs go to a file.

use anyhow::Context;
use clap::Parser;
use lab::cli::Cli;
use lab::log_file::BenchLog;

/// Lines of a failed experiment's log shown with its error.
const FAILURE_LOG_LINES: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log = BenchLog::start(cli.command.name(), cli.log_file.clone(), cli.verbose, cli.log_json).context("opening the log file")?;
    eprintln!("-- logs ({} and above; -v for more): {}", log.level, log.path.display());
    let result = lab::cli::run(cli.command).await;
    let tail = if result.is_err() { log.tail(FAILURE_LOG_LINES) } else { String::new() };
    if tail.is_empty() {
        eprintln!("-- logs: {}", log.path.display());
    } else {
        eprintln!("-- the last lines of {}:\n{tail}", log.path.display());
    }
    result
}
