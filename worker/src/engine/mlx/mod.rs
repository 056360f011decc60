//! The MLX engine (through mlx-rs): the same GGUF, its quantized weights kept quantized in MLX's own
//! memory (so, unlike llama.cpp's memory map, not shared between worker processes), the Llama forward
//! pass of [`model`], the tokenizer built from the GGUF metadata, and ChatML prompts formatted exactly as
//! llama.cpp formats them. CPU on Linux (MLX's CPU backend), GPU on macOS (Metal).
//!
//! One dedicated thread owns the model and runs one request at a time; `--slots` above 1 is refused
//! for this engine until batched decoding lands here.

pub mod model;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use modelpool::gguf::GgufFile;
use modelpool::tokenizer::Tokenizer;
use modelpool::{PoolError, PredictRequest, Prompt};

use super::queue::{JobQueue, LoadCounters, warm_up};
use super::sampling::SeededSampler;
use super::slot::{Progress, Slot, argmax};
use super::{Engine, EngineInfo, EngineKind, EngineLoad, Job, JobEvent, PreparedPrompt, check_context_fit};
use model::LlamaModel;

#[derive(Debug, Clone)]
pub struct MlxConfig {
    pub model_path: PathBuf,
    pub context_per_slot: u32,
    pub queue_capacity: u32,
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
        let (queue, jobs) = JobQueue::new(config.queue_capacity, 1);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let path = config.model_path.clone();
        let thread_tokenizer = Arc::clone(&tokenizer);
        let counters = Arc::clone(&queue.counters);
        std::thread::Builder::new()
            .name("mlx-engine".into())
            .spawn(move || {
                mlx_rs::Device::set_default(&device());
                match LlamaModel::load(&path) {
                    Ok(model) => {
                        let _ = started_tx.send(Ok(()));
                        run(&model, &thread_tokenizer, &counters, jobs);
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
                context_size: config.context_per_slot,
                context_per_slot: config.context_per_slot,
                slots: 1,
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

    fn load(&self) -> EngineLoad {
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

/// The engine thread: one job at a time, prefill in one pass, then a token per step.
fn run(model: &LlamaModel, tokenizer: &Tokenizer, counters: &LoadCounters, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        counters.queued.fetch_sub(1, Ordering::Relaxed);
        if job.events.is_closed() {
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        counters.slots_in_use.store(1, Ordering::Relaxed);
        let sampler = SeededSampler::for_params(&job.sampling);
        generate(model, tokenizer, counters, Slot::new(0, job, sampler));
        counters.slots_in_use.store(0, Ordering::Relaxed);
        counters.kv_cells_used.store(0, Ordering::Relaxed);
    }
}

/// Runs one job to its end: finished, cancelled, or failed (reported to its client).
fn generate(model: &LlamaModel, tokenizer: &Tokenizer, counters: &LoadCounters, mut slot: Slot<SeededSampler>) {
    let mut cache = model.new_cache();
    let prompt = slot.job.prompt.tokens.clone();
    slot.prefilled = prompt.len();
    let mut input = prompt;
    loop {
        if slot.is_abandoned() {
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let logits = match model.forward(&input, 1, &mut cache).and_then(|l| l.eval().map(|()| l).map_err(|e| e.to_string())) {
            Ok(logits) => logits,
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                let _ = slot.job.events.send(JobEvent::Failed(PoolError::Internal(format!("MLX: {e}"))));
                return;
            }
        };
        counters.kv_cells_used.store(cache.len as u32, Ordering::Relaxed);
        let logits = logits.as_slice::<f32>();
        let token = match slot.sampler.as_mut() {
            Some(sampler) => sampler.sample(logits),
            None => argmax(logits),
        };
        let is_end = tokenizer.is_special(token as u32) || tokenizer.eos == Some(token as u32);
        let bytes = if is_end { Vec::new() } else { tokenizer.token_bytes(token as u32, false) };
        match slot.accept(token, &bytes, is_end) {
            Progress::Continue => input = vec![token],
            Progress::Finished(reason) => {
                counters.served.fetch_add(1, Ordering::Relaxed);
                slot.finish(reason);
                return;
            }
        }
    }
}
