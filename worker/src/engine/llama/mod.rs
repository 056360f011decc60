//! The llama.cpp engine (through llama-cpp-2). The GGUF is memory-mapped, so several worker processes
//! share the weights' pages. One dedicated thread owns the llama.cpp context and runs the
//! continuous-batching loop ([`crate::engine::batch_loop`]) over this engine's [`backend`]; up to
//! `slots` sequences are decoded together in it.

mod backend;
pub mod cpu_variant;
mod sampler;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use model_input::gguf::GgufFile;
use model_input::prompt_format::PromptFormat;
use modelpool::PoolError;

use super::batch_loop::{BatchLoop, LoopSettings, PassShape, StepBudget};
use super::queue::JobQueue;
use super::served::ServedEngine;
use super::{EngineInfo, EngineKind};

/// How a llama.cpp engine is set up.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub model_path: PathBuf,
    pub slots: u32,
    pub context_per_slot: u32,
    pub queue_capacity: u32,
    pub threads: u32,
    pub threads_batch: u32,
    /// One KV buffer for all slots instead of one stream per slot; see the context parameters in `load`.
    pub kv_unified: bool,
    /// See [`base_context_params`].
    pub flash_attention: bool,
    /// The cached keys' and values' type (float16 unless asked).
    pub kv_cache_type: KvCacheType,
    /// See [`SlidingWindowCache`].
    pub sliding_window_cache: SlidingWindowCache,
    /// Keep each slot's keys and values after its request for prompts that share their prefix.
    pub prefix_cache: bool,
    /// Host memory for saved sequences (the prompt store; 0: off).
    pub prompt_store_bytes: u64,
    /// How the batch loop shapes its forward passes.
    pub shape: PassShape,
    /// Mixed passes: prompt tokens per step at most (beside one decode token per slot).
    pub batch_tokens: u32,
    /// Which CPU module to run, and the executable that probes it (see [`cpu_variant`]).
    pub cpu_variant: cpu_variant::VariantRequest,
    pub cpu_probe_exe: PathBuf,
}

/// What a slot keeps of a sliding-window attention layer (`--sliding-window-cache`; models without
/// such layers are not affected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SlidingWindowCache {
    /// Every position, as in the other layers (llama.cpp's `swa_full`, its library default).
    Full,
    /// The window and one batch's worth (llama-server's default): positions that fall out of every
    /// later token's window are overwritten.
    Window,
}

/// The type of llama.cpp's cached keys and values (`--kv-cache-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCacheType {
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

impl KvCacheType {
    /// Bytes per block of elements and elements per block (ggml's block formats).
    fn bytes_per_elements(self) -> (u64, u64) {
        match self {
            Self::F16 => (2, 1),
            Self::Q8_0 => (34, 32),
            Self::Q4_0 => (18, 32),
        }
    }

    fn ggml(self) -> llama_cpp_2::context::params::KvCacheType {
        use llama_cpp_2::context::params::KvCacheType as Ggml;
        match self {
            Self::F16 => Ggml::F16,
            Self::Q8_0 => Ggml::Q8_0,
            Self::Q4_0 => Ggml::Q4_0,
        }
    }
}

/// The context settings every llama.cpp context here starts from. Flash attention is llama.cpp's
/// default (on where the backend has it): measured here it decodes about 20% faster. On the CPU it
/// rounds queries, keys and values to float16, which decides near-ties: with it, "Name three primary
/// colors." has its top two tokens 0.026 apart in the opposite order from float32 attention (llama.cpp
/// without flash attention, and the MLX engine). `--no-flash-attention` gives float32 attention.
///
/// Sliding-window layers keep every position (`swa_full`, llama.cpp's library default; llama-server
/// turns it off to save memory; `--sliding-window-cache window` does too): a reused prefix then holds
/// all the keys and values a new prompt's window needs. With a window-sized cache, positions older
/// than the window are overwritten as a longer request goes on, and a prefix kept for reuse can lack
/// them: [`backend`]'s `start_sequence` checks before reusing one.
pub fn base_context_params(flash_attention: bool) -> LlamaContextParams {
    let params = LlamaContextParams::default().with_swa_full(true);
    if flash_attention { params } else { params.with_flash_attention_policy(0) }
}

/// The attention window of the model's sliding-window layers, when its GGUF names one
/// (`ARCH.attention.sliding_window`).
fn sliding_window(model: &LlamaModel) -> Option<u32> {
    let architecture = model.meta_val_str("general.architecture").ok()?;
    model.meta_val_str(&format!("{architecture}.attention.sliding_window")).ok()?.parse().ok().filter(|&w| w > 0)
}

/// Bytes one token's keys and values take in the KV cache, over all layers, in `kind`.
fn kv_bytes_per_token(model: &LlamaModel, kind: KvCacheType) -> u64 {
    let head_dim = u64::from(model.n_embd() as u32 / model.n_head().max(1));
    let (bytes, elements) = kind.bytes_per_elements();
    (2 * u64::from(model.n_layer()) * u64::from(model.n_head_kv()) * head_dim * bytes).div_ceil(elements)
}

/// llama.cpp's backend initialises once per process, with the CPU kernels chosen then (the first
/// engine's request decides; see [`cpu_variant`]). Returns it and the kernels' description.
pub fn backend(
    kernels: &cpu_variant::VariantRequest,
    probe_exe: &Path,
    model: &Path,
) -> Result<(&'static LlamaBackend, &'static str), PoolError> {
    static BACKEND: OnceLock<(LlamaBackend, String)> = OnceLock::new();
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some((backend, kernels)) = BACKEND.get() {
        return Ok((backend, kernels));
    }
    // Two engines loading at once (tests do) must not both initialise it: the second would fail.
    let _init = INIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((backend, kernels)) = BACKEND.get() {
        return Ok((backend, kernels));
    }
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let described = if cpu_variant::LOADABLE_MODULES {
        let modules = cpu_variant::discover(&cpu_variant::module_dirs());
        let choice = cpu_variant::choose(kernels, &modules, |module| cpu_variant::probe_in_child(probe_exe, &module.path, model))
            .map_err(|e| PoolError::FailedPrecondition(format!("llama.cpp CPU kernels: {e}")))?;
        cpu_variant::load_module(&choice.module.path).map_err(|e| PoolError::Internal(format!("llama.cpp CPU kernels: {e}")))?;
        choice.describe()
    } else {
        "built in".to_string()
    };
    tracing::info!(cpu_kernels = %described, "llama.cpp CPU kernels");
    let backend = LlamaBackend::init().map_err(|e| PoolError::Internal(format!("llama.cpp backend: {e}")))?;
    let (backend, kernels) = BACKEND.get_or_init(|| (backend, described));
    Ok((backend, kernels))
}

/// The backend with the default kernel choice (`--cpu-variant auto`, probed with `model` by the worker
/// binary beside this executable): for code that uses llama.cpp directly, such as tests.
pub fn default_backend(model: &Path) -> Result<&'static LlamaBackend, PoolError> {
    backend(&cpu_variant::VariantRequest::Auto, &cpu_variant::default_probe_exe(), model).map(|(backend, _)| backend)
}

/// Loads the model, starts the engine thread and generates one warm-up token. Blocking.
pub fn load(config: LlamaConfig) -> Result<ServedEngine, PoolError> {
    if config.slots == 0 || config.queue_capacity == 0 || config.context_per_slot < 16 {
        return Err(PoolError::invalid("config", "slots and queue must be at least 1, context per slot at least 16"));
    }
    if !config.model_path.is_file() {
        return Err(PoolError::FailedPrecondition(format!("model file {} does not exist", config.model_path.display())));
    }
    let (backend, cpu_kernels) = backend(&config.cpu_variant, &config.cpu_probe_exe, &config.model_path)?;
    let model = LlamaModel::load_from_file(backend, &config.model_path, &LlamaModelParams::default())
        .map_err(|e| PoolError::FailedPrecondition(format!("loading {}: {e}", config.model_path.display())))?;
    let model = Arc::new(model);
    // Chats are rendered by the GGUF's Jinja template and tokenized by our tokenizer (the same
    // tokens as llama.cpp's, tested), so that special tokens are parsed only where the template
    // writes them and both engines see the same ids for the same conversation.
    let format = PromptFormat::from_gguf(&GgufFile::open(&config.model_path).map_err(|e| PoolError::FailedPrecondition(e.to_string()))?)
        .map_err(|e| PoolError::FailedPrecondition(e.to_string()))?;
    let model_size_bytes = std::fs::metadata(&config.model_path).map(|m| m.len()).unwrap_or(0);
    let model_name = model
        .meta_val_str("general.name")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| config.model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());

    // Each slot has context_per_slot of KV cache (its own stream, or its share of the unified buffer).
    let context_size = config.context_per_slot * config.slots;
    // A mixed pass holds every slot's decode token and prompt tokens up to --batch-tokens in all (at
    // least one prompt token beside the decode tokens).
    let (budget, pass_tokens) = match config.shape {
        PassShape::Mixed => {
            let tokens = (config.batch_tokens as usize).max(config.slots as usize + 1);
            (StepBudget { tokens, chunk: backend::PREFILL_CHUNK }, tokens)
        }
        PassShape::BatchInvariant => {
            (StepBudget { tokens: backend::PREFILL_PER_STEP, chunk: backend::PREFILL_CHUNK }, backend::BATCH_TOKENS as usize)
        }
    };
    let context_params = base_context_params(config.flash_attention)
        .with_n_ctx(NonZeroU32::new(context_size))
        .with_n_seq_max(config.slots)
        .with_n_batch(pass_tokens as u32)
        .with_n_ubatch((pass_tokens as u32).min(backend::BATCH_TOKENS))
        .with_n_threads(config.threads as i32)
        .with_n_threads_batch(config.threads_batch as i32)
        // Per slot (the default): each sequence's attention runs over its own cells only, laid out as
        // if it ran alone (so batch-invariant passes give greedy output that does not depend on the
        // neighbours, tested), at the price of llama.cpp splitting a mixed batch into micro-batches
        // with the same token count per sequence. Unified: one buffer, a mixed batch is one
        // micro-batch, but every token attends over (masked) cells of every sequence: slower once
        // prompts are long (measured; see --kv-layout).
        .with_kv_unified(config.kv_unified)
        .with_type_k(config.kv_cache_type.ggml())
        .with_type_v(config.kv_cache_type.ggml())
        .with_swa_full(config.sliding_window_cache == SlidingWindowCache::Full);

    let (queue, jobs) = JobQueue::new(config.queue_capacity, config.slots);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let loop_model = Arc::clone(&model);
    let loop_counters = Arc::clone(&queue.counters);
    let settings = LoopSettings {
        slots: config.slots as usize,
        prefix_cache: config.prefix_cache,
        shape: config.shape,
        budget,
        prompt_store_bytes: config.prompt_store_bytes as usize,
    };
    let thread_alive = queue.engine_thread();
    std::thread::Builder::new()
        .name("llama-engine".into())
        .spawn(move || {
            let _alive = thread_alive;
            let context = match loop_model.new_context(backend, context_params) {
                Ok(context) => context,
                Err(e) => {
                    let _ = started_tx.send(Err(PoolError::Internal(format!("creating the llama.cpp context: {e}"))));
                    return;
                }
            };
            let _ = started_tx.send(Ok(()));
            let passes = backend::LlamaBackend::new(&loop_model, context, pass_tokens, sliding_window(&loop_model));
            BatchLoop::new(passes, &loop_counters, settings).run(jobs);
        })
        .map_err(|e| PoolError::Internal(format!("spawning the engine thread: {e}")))?;
    started_rx.recv().map_err(|_| PoolError::Internal("engine thread died while starting".into()))??;

    let info = EngineInfo {
        engine: EngineKind::Llama,
        model_name,
        model_path: config.model_path.display().to_string(),
        model_size_bytes,
        context_size,
        context_per_slot: config.context_per_slot,
        slots: config.slots,
        queue_capacity: config.queue_capacity,
        threads: config.threads,
        threads_batch: config.threads_batch,
        prompt_store_capacity_bytes: config.prompt_store_bytes,
        prompt_store_tokens: config.prompt_store_bytes / kv_bytes_per_token(&model, config.kv_cache_type).max(1),
        cpu_kernels: cpu_kernels.to_string(),
        max_token_bytes: 0, // ServedEngine::start reads it from the tokenizer
    };
    ServedEngine::start(info, Arc::new(format), queue)
}
