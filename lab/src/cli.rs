//! The lab's command line: one subcommand per experiment, each of which owns its flags.

use clap::{Parser, Subcommand};

use crate::engine_bench::EngineBenchArgs;
use crate::fault_drill::FaultDrillArgs;
use crate::mlx_bench::MlxBenchArgs;
use crate::multihost::MultihostArgs;
use crate::overload_bench::OverloadBenchArgs;
use crate::run_bench::RunBenchArgs;
use crate::server_bench::ServerBenchArgs;

/// The modelpool lab: experiments that start workers and a coordinator, drive load through them and
/// report (the one-command experiment is `run-bench`).
#[derive(Debug, Parser)]
#[command(name = "lab", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// Log more (-v info, -vv debug; default warn; RUST_LOG sets it exactly).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The file the logs (and the workers' stderr) go to. Default: a new `modelpool-COMMAND-TIME.log`
    /// in the temporary directory, named at the start and the end.
    #[arg(long, global = true)]
    pub log_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start local workers, run the serial baseline and the parallel configurations, print the table.
    RunBench(RunBenchArgs),
    /// Compare one worker's decode speed with llama.cpp's llama-bench, and --slots B against --slots 1.
    EngineBench(EngineBenchArgs),
    /// Offer many times the pool's capacity and report what was admitted, refused, how long admitted
    /// requests took and the coordinator's memory.
    OverloadBench(OverloadBenchArgs),
    /// Run a coordinator here and workers on the hosts of a hosts file (ssh or network namespaces),
    /// bench through it and report by host.
    Multihost(MultihostArgs),
    /// The pool against llama-server on the same model, cores and prompts, through both OpenAI
    /// endpoints; prints pool ÷ llama-server per workload.
    ServerBench(ServerBenchArgs),
    /// The MLX engine against Python mlx-lm on the same model folder, interleaved: prefill, decode,
    /// end-to-end output tokens/s, TTFT and memory (scripts/mlx-bench.sh sets it up).
    MlxBench(MlxBenchArgs),
    /// Faults and abuse against a real pool, one scenario each (killed, frozen, draining and stuck
    /// workers, a dead engine thread, a poison prompt, a restarted coordinator, 10x overload, an
    /// oversized prompt, a client that never reads, over HTTP/1 or HTTP/2, a queue full of bytes, idle
    /// sockets, a takeover attempt): requests, answered, failed with a clear error, retried, lost,
    /// slowest. Exits non-zero if any prompt was lost.
    FaultDrill(FaultDrillArgs),
}

impl Command {
    /// The command's name (its log file is named for it).
    pub fn name(&self) -> &'static str {
        match self {
            Self::RunBench(_) => "run-bench",
            Self::EngineBench(_) => "engine-bench",
            Self::OverloadBench(_) => "overload-bench",
            Self::Multihost(_) => "multihost",
            Self::ServerBench(_) => "server-bench",
            Self::MlxBench(_) => "mlx-bench",
            Self::FaultDrill(_) => "fault-drill",
        }
    }
}

/// Runs one experiment to its end.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::RunBench(args) => {
            let config = crate::run_bench::RunBenchConfig::try_from(args)?;
            crate::run_bench::run_bench(config, modelpool::shutdown::shutdown_signal()).await?;
        }
        Command::EngineBench(args) => {
            crate::engine_bench::run_engine_bench(args).await?;
        }
        Command::OverloadBench(args) => {
            crate::overload_bench::run_overload_bench(args).await?;
        }
        Command::MlxBench(args) => {
            crate::mlx_bench::run_mlx_bench(args).await?;
        }
        Command::ServerBench(args) => {
            match (args.engine, args.hosts) {
                (modelpool::EngineKind::Mlx, _) => crate::mlx_lm_server::run_mlx_server_bench(args).await?,
                (_, Some(hosts)) => crate::across_hosts::run_across_hosts(args, hosts).await?,
                (_, None) => crate::server_bench::run_server_bench(args).await?,
            };
        }
        Command::Multihost(args) => {
            crate::multihost::run_multihost(args).await?;
        }
        Command::FaultDrill(args) => {
            crate::fault_drill::run_fault_drill(args).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_coordinator_forwards_every_command_here() {
        let names: Vec<String> = Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
        assert_eq!(names, coordinator::cli::LAB_COMMANDS, "coordinator::cli::LAB_COMMANDS lists the lab's commands, in order");
    }
}
