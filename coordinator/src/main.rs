//! `coordinator serve` runs the daemon. The lab's commands (`coordinator run-bench ...`) are handed to
//! the `lab` binary unchanged.

use anyhow::Context;
use clap::Parser;
use coordinator::{Cli, Command};
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if coordinator::cli::lab_forward(&args).is_some() {
        return forward_to_lab(&args);
    }
    let cli = Cli::parse_from(args);
    modelpool::telemetry::init(cli.log_json);
    tokio::runtime::Runtime::new().context("starting the runtime")?.block_on(run(cli.command))
}

/// Replaces this process with `lab` and the same arguments: the `lab` beside this executable (a build
/// or an install puts them together), else the first on PATH.
fn forward_to_lab(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("lab"))).filter(|lab| lab.is_file());
    let lab = beside.unwrap_or_else(|| "lab".into());
    let error = std::process::Command::new(&lab).args(&args[1..]).exec();
    Err(error).with_context(|| format!("running {} (the experiment commands are the lab's: cargo build --release -p lab)", lab.display()))
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
    }
    Ok(())
}
