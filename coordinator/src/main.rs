//! `coordinator serve` runs the daemon; `coordinator run-bench` runs the experiment on local workers.

use anyhow::Context;
use clap::Parser;
use coordinator::bench::log_file::BenchLog;
use coordinator::{Cli, Command};
use tokio::net::TcpListener;

/// Lines of a failed bench's log shown with its error.
const FAILURE_LOG_LINES: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The daemon logs to stderr; a bench command's terminal is its report's, its logs go to a file.
    let bench_log = match cli.command.bench_name() {
        Some(name) => {
            let log = BenchLog::start(name, cli.log_file.clone(), cli.verbose, cli.log_json).context("opening the bench's log file")?;
            eprintln!("-- logs ({} and above; -v for more): {}", log.level, log.path.display());
            Some(log)
        }
        None => {
            modelpool::telemetry::init(cli.log_json);
            None
        }
    };
    let result = run(cli.command).await;
    if let Some(log) = bench_log {
        let tail = if result.is_err() { log.tail(FAILURE_LOG_LINES) } else { String::new() };
        if tail.is_empty() {
            eprintln!("-- logs: {}", log.path.display());
        } else {
            eprintln!("-- the last lines of {}:\n{tail}", log.path.display());
        }
    }
    result
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let config = coordinator::Config::try_from(&args)?;
            let listener =
                TcpListener::bind((args.bind.as_str(), args.port)).await.with_context(|| format!("binding {}:{}", args.bind, args.port))?;
            let http = if args.no_http {
                None
            } else {
                Some(
                    TcpListener::bind((args.bind.as_str(), args.http_port))
                        .await
                        .with_context(|| format!("binding the HTTP API on {}:{}", args.bind, args.http_port))?,
                )
            };
            // Machine-readable, for scripts and tests that start the coordinator on port 0.
            let scheme = if config.server_tls.is_some() { "https" } else { "http" };
            let http_scheme = if config.https.is_some() { "https" } else { "http" };
            let http_url =
                http.as_ref().and_then(|h| h.local_addr().ok()).map(|a| format!(" http={http_scheme}://{a}")).unwrap_or_default();
            println!("MODELPOOL_COORDINATOR_LISTENING grpc={scheme}://{}{http_url}", listener.local_addr()?);
            coordinator::serve(config, listener, http, modelpool::shutdown::shutdown_signal()).await?;
        }
        Command::RunBench(args) => {
            let config = coordinator::bench::run_bench::RunBenchConfig::try_from(args)?;
            coordinator::bench::run_bench::run_bench(config, modelpool::shutdown::shutdown_signal()).await?;
        }
        Command::EngineBench(args) => {
            coordinator::bench::engine_bench::run_engine_bench(args).await?;
        }
        Command::OverloadBench(args) => {
            coordinator::bench::overload_bench::run_overload_bench(args).await?;
        }
        Command::MlxBench(args) => {
            coordinator::bench::mlx_bench::run_mlx_bench(args).await?;
        }
        Command::ServerBench(args) => {
            match args.hosts {
                Some(hosts) => coordinator::bench::across_hosts::run_across_hosts(args, hosts).await?,
                None => coordinator::bench::server_bench::run_server_bench(args).await?,
            };
        }
        Command::Multihost(args) => {
            coordinator::bench::multihost::run_multihost(args).await?;
        }
        Command::FaultDrill(args) => {
            coordinator::bench::fault_drill::run_fault_drill(args).await?;
        }
    }
    Ok(())
}
