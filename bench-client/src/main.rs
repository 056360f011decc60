//! `bench-client`: serial and parallel scenarios against a running coordinator.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = bench_client::cli::Args::parse();
    modelpool::telemetry::init(false);
    bench_client::cli::run(args).await?;
    Ok(())
}
