//! Which inference engine a worker runs, and the defaults both daemons must agree on. One definition:
//! the worker's `--engine` and the coordinator's `run-bench --engine` parse the same enum.

/// Context (prompt plus generated tokens) each slot of a worker holds unless `--ctx-per-slot` says
/// otherwise. run-bench's memory fit check sizes the KV cache with it.
pub const DEFAULT_CONTEXT_PER_SLOT: u32 = 2048;

/// A worker's host-memory prompt store unless `--prompt-cache-mib` says otherwise: about 22,000 tokens
/// of the default model's keys and values, some 17 DSPy preambles. Benchmarks report it.
pub const DEFAULT_PROMPT_CACHE_MIB: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// llama.cpp through llama-cpp-2: the GGUF is memory-mapped and shared between worker processes.
    Llama,
    /// MLX through mlx-rs: Metal on Apple Silicon, MLX's (slow) CPU backend elsewhere.
    Mlx,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Llama => "llama",
            EngineKind::Mlx => "mlx",
        }
    }

    /// MLX where it has its GPU backend (macOS), llama.cpp elsewhere.
    pub fn platform_default() -> Self {
        if cfg!(target_os = "macos") { EngineKind::Mlx } else { EngineKind::Llama }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
