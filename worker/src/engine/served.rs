//! An engine as the worker serves it, whichever library computes: the model's facts, its prompt format
//! (chat template and tokenizer) and the bounded queue into its batch loop's thread. Both engines load
//! into this one type ([`super::llama::load`], [`super::mlx::load`]).

use std::sync::Arc;

use model_input::prompt_format::PromptFormat;
use modelpool::context_fit::ContextFit;
use modelpool::{PoolError, PredictRequest};

use super::constraint::Constraints;
use super::logit_shaping::check_vocabulary;
use super::queue::{JobQueue, warm_up};
use super::{Engine, EngineInfo, Job, PreparedPrompt, WorkerLoad, generation_limit};

pub struct ServedEngine {
    info: EngineInfo,
    format: Arc<PromptFormat>,
    queue: JobQueue,
    constraints: Constraints,
}

impl ServedEngine {
    /// The engine whose batch loop reads `queue`, after one warm-up token.
    pub fn start(mut info: EngineInfo, format: Arc<PromptFormat>, queue: JobQueue) -> Result<Self, PoolError> {
        info.max_token_bytes = format.tokenizer.longest_token_bytes().unwrap_or(0);
        let engine = Self { info, format, queue, constraints: Constraints::default() };
        warm_up(&engine, &engine.queue.counters)?;
        Ok(engine)
    }
}

impl Engine for ServedEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn stats(&self) -> WorkerLoad {
        self.queue.counters.snapshot()
    }

    fn prepare(&self, request: &PredictRequest) -> Result<PreparedPrompt, PoolError> {
        // The cheap checks first: a megabyte of text that cannot fit, or a full queue, costs no tokenizer pass.
        let bound = ContextFit { context: self.info.context_per_slot, max_token_bytes: Some(self.info.max_token_bytes) };
        if let Some(error) = bound.refusal(request, "") {
            return Err(error);
        }
        self.queue.refuse_if_full()?;
        let tokens: Vec<i32> = self.format.encode(&request.prompt)?.into_iter().map(|t| t as i32).collect();
        let max_tokens = generation_limit(tokens.len(), &request.sampling, self.info.context_per_slot)?;
        check_vocabulary(&request.sampling, self.format.tokenizer.vocab_size())?;
        let constraint = self.constraints.for_format(&request.sampling.response_format, &self.format.tokenizer)?;
        Ok(PreparedPrompt { tokens, max_tokens, constraint })
    }

    fn submit(&self, job: Job) -> Result<(), PoolError> {
        self.queue.submit(job)
    }

    fn is_alive(&self) -> bool {
        self.queue.engine_alive()
    }
}
