//! The MLX engine (through mlx-rs): an mlx-lm model folder ([`weights`], [`architecture`]) or a GGUF,
//! its weights kept as stored (quantized ones quantized) in MLX's own memory (so, unlike llama.cpp's
//! memory map, not shared between worker processes), the Llama-family forward pass of [`model`], and the
//! model's own tokenizer and chat template ([`model_input::prompt_format`]). CPU on Linux (MLX's CPU
//! backend), GPU on macOS (Metal).
//!
//! One dedicated thread owns the model and runs the continuous-batching loop
//! ([`crate::engine::batch_loop`]) over this engine's [`backend`]: up to `slots` sequences decoded
//! together.

pub mod architecture;
mod backend;
pub mod blas;
pub use backend::PREFILL_CHUNK;
pub mod model;
pub mod weights;

use std::path::PathBuf;
use std::sync::Arc;

use model_input::prompt_format::PromptFormat;
use modelpool::PoolError;

use super::batch_loop::{BatchLoop, LoopSettings, PassShape, StepBudget};
use super::queue::JobQueue;
use super::served::ServedEngine;
use super::{EngineInfo, EngineKind};
use model::{MlxLlama, QuantizedProducts};

/// What the MLX modules return: errors are messages naming what failed (mlx-rs's exceptions carry
/// nothing else this engine uses).
pub type MlxResult<T> = Result<T, String>;

#[derive(Debug, Clone)]
pub struct MlxConfig {
    pub model_path: PathBuf,
    pub slots: u32,
    pub context_per_slot: u32,
    pub queue_capacity: u32,
    /// Keep each slot's keys and values after its request for prompts that share their prefix.
    pub prefix_cache: bool,
    /// Host memory for saved sequences (the prompt store; 0: off).
    pub prompt_store_bytes: u64,
    /// Dequantize quantized weights to float32 at load (dense products through BLAS).
    pub dense: bool,
    /// How the batch loop shapes its forward passes.
    pub shape: PassShape,
    /// Mixed passes: prompt tokens per step at most.
    pub batch_tokens: u32,
    /// Threads of the BLAS behind MLX's float32 products (OpenBLAS; MLX's own CPU kernels use one).
    pub threads: u32,
}

/// Rows from which a quantized product is computed densely in the default (mixed) passes when an
/// optimized BLAS is in use. Measured with OpenBLAS here (1536×576, 4-bit): one row 0.8 ms quantized
/// against 1.7 dequantized, two about even, three 2.4 against 1.7.
const DEQUANTIZE_FROM_ROWS: i32 = 3;

/// How the layers' quantized products are computed: densely for passes of several rows where an
/// optimized BLAS makes that pay and the passes need not be batch-invariant; MLX's quantized kernel
/// (mlx-lm's arithmetic) otherwise.
fn quantized_products(shape: PassShape, blas: &blas::Blas) -> QuantizedProducts {
    match shape {
        PassShape::Mixed if blas.is_fast() => QuantizedProducts::DequantizedFrom { rows: DEQUANTIZE_FROM_ROWS },
        _ => QuantizedProducts::Kernel,
    }
}

/// The device MLX computes on: Metal on macOS, the CPU backend elsewhere (MLX has no GPU there).
fn device() -> mlx_rs::Device {
    if cfg!(target_os = "macos") { mlx_rs::Device::gpu() } else { mlx_rs::Device::cpu() }
}

/// Loads the model on the engine thread and generates one warm-up token. Blocking.
pub fn load(config: MlxConfig) -> Result<ServedEngine, PoolError> {
    let format = Arc::new(PromptFormat::load(&config.model_path).map_err(|e| PoolError::FailedPrecondition(e.to_string()))?);
    let model_name = format.model_name.clone();
    if config.slots == 0 || config.queue_capacity == 0 {
        return Err(PoolError::invalid("config", "slots and queue must be at least 1"));
    }
    let (queue, jobs) = JobQueue::new(config.queue_capacity, config.slots);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let path = config.model_path.clone();
    let thread_format = Arc::clone(&format);
    let counters = Arc::clone(&queue.counters);
    let slots = config.slots as usize;
    let prefix_cache = config.prefix_cache;
    let dense = config.dense;
    let shape = config.shape;
    let batch_tokens = config.batch_tokens as usize;
    let prompt_store_bytes = config.prompt_store_bytes as usize;
    let blas = blas::in_use();
    blas::set_threads(config.threads);
    let products = quantized_products(shape, blas);
    tracing::info!(blas = %blas.describe(), ?products, threads = config.threads, "MLX CPU products");
    let thread_alive = queue.engine_thread();
    std::thread::Builder::new()
        .name("mlx-engine".into())
        .spawn(move || {
            let _alive = thread_alive;
            mlx_rs::Device::set_default(&device());
            match MlxLlama::load_with(&path, dense) {
                Ok(mut model) => {
                    model.products = products;
                    let _ = started_tx.send(Ok(model.kv_bytes_per_token()));
                    let passes = backend::MlxBackend::new(&model, &thread_format.tokenizer, slots);
                    let tokens = match shape {
                        PassShape::Mixed => batch_tokens,
                        PassShape::BatchInvariant => PREFILL_CHUNK,
                    };
                    let budget = StepBudget { tokens, chunk: PREFILL_CHUNK };
                    let settings = LoopSettings { slots, prefix_cache, shape, budget, prompt_store_bytes };
                    BatchLoop::new(passes, &counters, settings).run(jobs);
                }
                Err(e) => {
                    let _ = started_tx.send(Err(PoolError::FailedPrecondition(format!("loading with MLX: {e}"))));
                }
            }
        })
        .map_err(|e| PoolError::Internal(format!("spawning the engine thread: {e}")))?;
    let kv_bytes_per_token = started_rx.recv().map_err(|_| PoolError::Internal("engine thread died while starting".into()))??;
    let info = EngineInfo {
        engine: EngineKind::Mlx,
        model_name,
        model_path: config.model_path.display().to_string(),
        model_size_bytes: model_input::model_folder::model_bytes(&config.model_path),
        context_size: config.context_per_slot * config.slots,
        context_per_slot: config.context_per_slot,
        slots: config.slots,
        queue_capacity: config.queue_capacity,
        threads: config.threads,
        threads_batch: config.threads,
        prompt_store_capacity_bytes: config.prompt_store_bytes,
        prompt_store_tokens: config.prompt_store_bytes / kv_bytes_per_token.max(1) as u64,
        cpu_kernels: super::mlx_kernels(blas),
        max_token_bytes: 0, // ServedEngine::start reads it from the tokenizer
    };
    ServedEngine::start(info, format, queue)
}
