//! `worker`: parse flags, bind, run until Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use worker::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    modelpool::telemetry::init(args.log_json);
    let config = Config::try_from(&args)?;
    let listener = TcpListener::bind((args.bind.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.bind, args.port))?;
    worker::run(config, listener, modelpool::shutdown::shutdown_signal()).await?;
    Ok(())
}
