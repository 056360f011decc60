//! `worker`: parse flags, bind, run until Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use worker::{Args, Config};

/// `worker --print-model-path [FILE]`; see `main`.
const PRINT_MODEL_PATH_FLAG: &str = "--print-model-path";

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
    // The model a worker would load (`--model`, else the default model, fetched into the cache if it is
    // not there yet): scripts that mount it into containers ask for its path.
    if raw_args.get(1).is_some_and(|flag| flag == PRINT_MODEL_PATH_FLAG) {
        let explicit = raw_args.get(2).map(std::path::PathBuf::from);
        println!("{}", model_input::model_cache::resolve_model(explicit.as_deref())?.display());
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
