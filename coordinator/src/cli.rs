//! The coordinator's command line: the daemon (`serve`) and the experiment harness's commands, each
//! of which owns its flags.

use clap::{Parser, Subcommand};

use crate::bench::engine_bench::EngineBenchArgs;
use crate::bench::fault_drill::FaultDrillArgs;
use crate::bench::mlx_bench::MlxBenchArgs;
use crate::bench::multihost::MultihostArgs;
use crate::bench::overload_bench::OverloadBenchArgs;
use crate::bench::run_bench::RunBenchArgs;
use crate::bench::server_bench::ServerBenchArgs;
use crate::config::ServeArgs;
/// The modelpool coordinator: a registry of workers, a scheduler that shards prompts across them, and
/// the one-command experiment (run-bench).
#[derive(Debug, Parser)]
#[command(name = "coordinator", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// Bench commands: log more (-v info, -vv debug; default warn). `serve` logs at info (RUST_LOG
    /// sets either).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Bench commands: the file their logs (and their workers' stderr) go to. Default: a new
    /// `modelpool-COMMAND-TIME.log` in the temporary directory, named at the start and the end.
    #[arg(long, global = true)]
    pub log_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator daemon: workers register with it, applications send prompts to it.
    Serve(ServeArgs),
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
    /// The bench command's name (its logs go to a file), `None` for the daemon.
    pub fn bench_name(&self) -> Option<&'static str> {
        Some(match self {
            Self::Serve(_) => return None,
            Self::RunBench(_) => "run-bench",
            Self::EngineBench(_) => "engine-bench",
            Self::OverloadBench(_) => "overload-bench",
            Self::Multihost(_) => "multihost",
            Self::ServerBench(_) => "server-bench",
            Self::MlxBench(_) => "mlx-bench",
            Self::FaultDrill(_) => "fault-drill",
        })
    }
}
