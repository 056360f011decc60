//! `coordinator serve` runs the daemon; `coordinator run-bench` runs the experiment on local workers.

use anyhow::Context;
use clap::Parser;
use coordinator::{Cli, Command};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    modelpool::telemetry::init(cli.log_json);
    match cli.command {
        Command::Serve(args) => {
            let listener = TcpListener::bind((args.bind.as_str(), args.port))
                .await
                .with_context(|| format!("binding {}:{}", args.bind, args.port))?;
            coordinator::serve(args.scheduler_config()?, listener, modelpool::shutdown::shutdown_signal()).await?;
        }
        Command::RunBench(args) => {
            let config = coordinator::bench::RunBenchConfig::try_from(args)?;
            coordinator::bench::run_bench(config, modelpool::shutdown::shutdown_signal()).await?;
        }
        Command::EngineBench(args) => {
            coordinator::engine_bench::run_engine_bench(args).await?;
        }
        Command::OverloadBench(args) => {
            coordinator::overload_bench::run_overload_bench(args).await?;
        }
    }
    Ok(())
}
