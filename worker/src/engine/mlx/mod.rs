//! The MLX engine (through mlx-rs): an mlx-lm model folder ([`weights`], [`architecture`]) or a GGUF,
//! its weights kept as stored (quantized ones quantized) in MLX's own memory (so, unlike llama.cpp's
//! memory map, not shared between worker processes), the Llama-family forward pass of [`model`], and the
//! model's own tokenizer and chat template ([`modelpool::prompt_format`]). CPU on Linux (MLX's CPU
//! backend), GPU on macOS (Metal).
//!
//! One dedicated thread owns the model and runs the continuous-batching loop ([`batch_loop`]): up to
//! `slots` sequences decoded together.

pub mod architecture;
mod batch_loop;
pub use batch_loop::PREFILL_CHUNK;
pub mod model;
pub mod weights;

use std::path::PathBuf;
use std::sync::Arc;

use modelpool::prompt_format::PromptFormat;
use modelpool::{PoolError, PredictRequest};

use super::queue::{JobQueue, warm_up};
use super::{Engine, EngineInfo, EngineKind, Job, PreparedPrompt, WorkerLoad, check_context_fit};
use model::MlxLlama;

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
    /// Caches beyond the slots that only keep finished prompts (see `engine::prefix_cache`).
    pub cached_prompts: u32,
    /// Dequantize quantized weights to float32 at load (dense products through BLAS).
    pub dense: bool,
}

pub struct MlxEngine {
    info: EngineInfo,
    format: Arc<PromptFormat>,
    queue: JobQueue,
}

/// The device MLX computes on: Metal on macOS, the CPU backend elsewhere (MLX has no GPU there).
fn device() -> mlx_rs::Device {
    if cfg!(target_os = "macos") { mlx_rs::Device::gpu() } else { mlx_rs::Device::cpu() }
}

impl MlxEngine {
    /// Loads the model on the engine thread and generates one warm-up token. Blocking.
    pub fn load(config: MlxConfig) -> Result<Self, PoolError> {
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
        let slots = config.slots;
        let sequences = config.slots + config.cached_prompts;
        let prefix_cache = config.prefix_cache;
        let dense = config.dense;
        let thread_alive = queue.engine_thread();
        std::thread::Builder::new()
            .name("mlx-engine".into())
            .spawn(move || {
                let _alive = thread_alive;
                mlx_rs::Device::set_default(&device());
                match MlxLlama::load_with(&path, dense) {
                    Ok(model) => {
                        let _ = started_tx.send(Ok(()));
                        batch_loop::BatchLoop::new(&model, &thread_format.tokenizer, &counters, slots, sequences, prefix_cache).run(jobs);
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(PoolError::FailedPrecondition(format!("loading with MLX: {e}"))));
                    }
                }
            })
            .map_err(|e| PoolError::Internal(format!("spawning the engine thread: {e}")))?;
        started_rx.recv().map_err(|_| PoolError::Internal("engine thread died while starting".into()))??;
        let engine = Self {
            info: EngineInfo {
                engine: EngineKind::Mlx,
                model_name,
                model_path: config.model_path.display().to_string(),
                model_size_bytes: modelpool::model_folder::model_bytes(&config.model_path),
                context_size: config.context_per_slot * sequences,
                context_per_slot: config.context_per_slot,
                slots: config.slots,
                queue_capacity: config.queue_capacity,
                threads: 1,
                threads_batch: 1,
            },
            format,
            queue,
        };
        warm_up(&engine, &engine.queue.counters)?;
        Ok(engine)
    }
}

impl Engine for MlxEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn stats(&self) -> WorkerLoad {
        self.queue.counters.snapshot()
    }

    fn prepare(&self, request: &PredictRequest) -> Result<PreparedPrompt, PoolError> {
        let tokens: Vec<i32> = self.format.encode(&request.prompt)?.into_iter().map(|t| t as i32).collect();
        check_context_fit(tokens.len(), request.sampling.max_tokens, self.info.context_per_slot)?;
        Ok(PreparedPrompt { tokens })
    }

    fn submit(&self, job: Job) -> Result<(), PoolError> {
        self.queue.submit(job)
    }

    fn is_alive(&self) -> bool {
        self.queue.engine_alive()
    }
}

