//! `worker`: parse flags, bind, run until Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use worker::{Args, Config};

fn main() -> anyhow::Result<()> {
    // A probe of one llama.cpp CPU module runs before anything else starts (see --cpu-variant).
    use worker::engine::llama::cpu_variant;
    let raw_args: Vec<_> = std::env::args_os().collect();
    if let Some(code) = cpu_variant::probe_from_args(&raw_args) {
        std::process::exit(code);
    }
    // What a copy of this binary needs beside it (deploy/Dockerfile and multi-host runs ship them).
    if raw_args.get(1).is_some_and(|flag| flag == cpu_variant::LIST_RUNTIME_FILES_FLAG) {
        for file in cpu_variant::runtime_files() {
            println!("{}", file.display());
        }
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let args = Args::parse();
    modelpool::telemetry::init(args.log_json);
    let config = Config::try_from(&args)?;
    let listener =
        TcpListener::bind((args.bind.as_str(), args.port)).await.with_context(|| format!("binding {}:{}", args.bind, args.port))?;
    worker::run(config, listener, modelpool::shutdown::shutdown_signal()).await?;
    Ok(())
}
