//! The MLX engine (through mlx-rs): the same GGUF, its quantized weights kept quantized in MLX's own
//! memory (so, unlike llama.cpp's memory map, not shared between worker processes), the Llama forward
//! pass of [`model`], the tokenizer built from the GGUF metadata, and ChatML prompts formatted exactly as
//! llama.cpp formats them. CPU on Linux (MLX's CPU backend), GPU on macOS (Metal).
//!
//! One dedicated thread owns the model and runs the continuous-batching loop ([`batch_loop`]): up to
//! `slots` sequences decoded together.

mod batch_loop;
pub mod model;

use std::path::PathBuf;
use std::sync::Arc;

use modelpool::gguf::GgufFile;
use modelpool::tokenizer::Tokenizer;
use modelpool::{PoolError, PredictRequest, Prompt};

use super::queue::{JobQueue, warm_up};
use super::{Engine, EngineInfo, EngineKind, EngineLoad, Job, PreparedPrompt, check_context_fit};
use model::MlxLlama;

#[derive(Debug, Clone)]
pub struct MlxConfig {
    pub model_path: PathBuf,
    pub slots: u32,
    pub context_per_slot: u32,
    pub queue_capacity: u32,
    /// Keep each slot's keys and values after its request for prompts that share their prefix.
    pub prefix_cache: bool,
}

pub struct MlxEngine {
    info: EngineInfo,
    tokenizer: Arc<Tokenizer>,
    queue: JobQueue,
}

/// The device MLX computes on: Metal on macOS, the CPU backend elsewhere (MLX has no GPU there).
fn device() -> mlx_rs::Device {
    if cfg!(target_os = "macos") { mlx_rs::Device::gpu() } else { mlx_rs::Device::cpu() }
}

/// ChatML, as llama.cpp renders it for this template: each message as `<|im_start|>role\ncontent<|im_end|>\n`,
/// then the assistant's opening. (The GGUF's Jinja template would add a default system prompt; llama.cpp's
/// built-in ChatML does not, and both engines must see the same text.)
pub fn chatml(messages: &[modelpool::ChatMessage]) -> String {
    let mut text = String::new();
    for m in messages {
        text.push_str("<|im_start|>");
        text.push_str(m.role.as_str());
        text.push('\n');
        text.push_str(&m.content);
        text.push_str("<|im_end|>\n");
    }
    text.push_str("<|im_start|>assistant\n");
    text
}

impl MlxEngine {
    /// Loads the model on the engine thread and generates one warm-up token. Blocking.
    pub fn load(config: MlxConfig) -> Result<Self, PoolError> {
        let meta = GgufFile::open(&config.model_path).map_err(|e| PoolError::FailedPrecondition(e.to_string()))?;
        let tokenizer = Arc::new(Tokenizer::from_gguf(&meta).map_err(|e| PoolError::FailedPrecondition(e.to_string()))?);
        let template = meta.str("tokenizer.chat_template").unwrap_or_default();
        if !template.contains("<|im_start|>") {
            return Err(PoolError::FailedPrecondition("the MLX engine formats chats as ChatML; this model's template is not ChatML".into()));
        }
        let model_name = meta.str("general.name").map(String::from).unwrap_or_default();
        if config.slots == 0 || config.queue_capacity == 0 {
            return Err(PoolError::invalid("config", "slots and queue must be at least 1"));
        }
        let (queue, jobs) = JobQueue::new(config.queue_capacity, config.slots);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let path = config.model_path.clone();
        let thread_tokenizer = Arc::clone(&tokenizer);
        let counters = Arc::clone(&queue.counters);
        let slots = config.slots;
        let prefix_cache = config.prefix_cache;
        std::thread::Builder::new()
            .name("mlx-engine".into())
            .spawn(move || {
                mlx_rs::Device::set_default(&device());
                match MlxLlama::load(&path) {
                    Ok(model) => {
                        let _ = started_tx.send(Ok(()));
                        batch_loop::BatchLoop::new(&model, &thread_tokenizer, &counters, slots, prefix_cache).run(jobs);
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
                model_size_bytes: std::fs::metadata(&config.model_path).map(|m| m.len()).unwrap_or(0),
                context_size: config.context_per_slot * config.slots,
                context_per_slot: config.context_per_slot,
                slots: config.slots,
                queue_capacity: config.queue_capacity,
                threads: 1,
                threads_batch: 1,
            },
            tokenizer,
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

    fn stats(&self) -> EngineLoad {
        self.queue.counters.snapshot()
    }

    fn prepare(&self, request: &PredictRequest) -> Result<PreparedPrompt, PoolError> {
        let text = match &request.prompt {
            Prompt::Raw(text) => text.clone(),
            Prompt::Chat(messages) => chatml(messages),
        };
        let tokens: Vec<i32> = self.tokenizer.encode(&text, true).into_iter().map(|t| t as i32).collect();
        check_context_fit(tokens.len(), request.sampling.max_tokens, self.info.context_per_slot)?;
        Ok(PreparedPrompt { tokens })
    }

    fn submit(&self, job: Job) -> Result<(), PoolError> {
        self.queue.submit(job)
    }
}
