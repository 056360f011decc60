//! The engine boundary: one loaded model that turns prepared prompts into tokens. An engine owns its own
//! inference threads; callers hand it jobs through [`Engine::submit`] and read the job's events from a
//! channel, so the async runtime only moves messages.

pub mod backend;
pub mod batch_loop;
pub mod constraint;
pub mod fault;
pub mod llama;
pub mod logit_shaping;
pub mod mlx;
pub mod prefix_cache;
pub mod prompt_store;
pub mod queue;
pub mod sampling;
pub mod served;
pub mod slot;

use std::time::{Duration, Instant};

use modelpool::{PoolError, PredictRequest, SamplingParams};
use tokio::sync::mpsc;

pub use modelpool::EngineKind;

/// A prompt ready to run: its tokens, counted and checked against the slot's context.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    pub tokens: Vec<i32>,
    /// Tokens to generate at most: the request's max_tokens, or fewer where the slot's context ends
    /// (a request that is not strict about it, see [`generation_limit`]).
    pub max_tokens: u32,
    /// The grammar its text must follow (structured outputs); `None` for free text.
    pub constraint: Option<constraint::Constraint>,
}

/// One generation handed to an engine.
pub struct Job {
    pub request_id: String,
    pub prompt: PreparedPrompt,
    pub sampling: SamplingParams,
    /// When the worker received the request; queue wait and time to first token count from here.
    pub arrived: Instant,
    /// Where the engine reports progress. When the receiver is dropped (the client went away or its
    /// deadline passed) the engine stops the job at the next decode step and frees its slot.
    pub events: mpsc::UnboundedSender<JobEvent>,
    /// How the text reaches the caller while it is generated.
    pub delivery: Delivery,
    /// Run with no other sequence beside it (the request's `run_alone`, see [`queue::Intake`]).
    pub alone: bool,
    /// Fault injection only (see [`fault::is_poisoned`]): every batched decode step that includes this
    /// job fails, as a kernel bug that one sequence's state triggers would.
    pub poisoned: bool,
}

/// How a job's text reaches its caller while it is generated; `Done` always carries the whole text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Only in `Done` (unary calls): no runtime wake-up per token on cores the decode threads need.
    Whole,
    /// Text as it is generated, whole UTF-8 characters per piece. Tokens that add no text for
    /// [`PROGRESS_EVERY`] send an empty piece, so the caller still sees the generation move.
    Pieces,
    /// Text gathered and sent at the first token and then at most once per interval: for a caller that
    /// only watches progress (the coordinator's attempts for unary prompts) at one wake-up per interval.
    Every(Duration),
}

/// The longest a streamed generation stays silent while it makes progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub enum JobEvent {
    /// Newly generated text, whole UTF-8 characters only.
    Text(String),
    Done(Completion),
    Failed(PoolError),
}

/// The accounting of a finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The generated token ids (what `completion_tokens` counts).
    pub token_ids: Vec<u32>,
    /// Prompt tokens reused from the prefix cache (not computed for this request).
    pub cached_tokens: u32,
    /// Of the reused tokens, those copied from another slot's cache.
    pub copied_tokens: u32,
    pub finish_reason: modelpool::response::FinishReason,
    pub timings: modelpool::response::Timings,
}

/// Static facts about a loaded engine.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub engine: EngineKind,
    pub model_name: String,
    pub model_path: String,
    pub model_size_bytes: u64,
    pub context_size: u32,
    pub context_per_slot: u32,
    pub slots: u32,
    pub queue_capacity: u32,
    pub threads: u32,
    pub threads_batch: u32,
    /// The prompt store's bound in bytes (0: off), and about how many tokens that holds.
    pub prompt_store_capacity_bytes: u64,
    pub prompt_store_tokens: u64,
    /// The kernels the engine computes with, e.g. `zen4 (probed; best of 12 this CPU supports)`.
    pub cpu_kernels: String,
    /// The most bytes of text one token covers (0: no bound; see `Tokenizer::longest_token_bytes`).
    pub max_token_bytes: u32,
}

/// What MLX computes with: its own kernels (no run-time choice to report).
pub fn mlx_kernels(blas: &mlx::blas::Blas) -> String {
    if cfg!(target_os = "macos") {
        "MLX (Metal GPU)".into()
    } else {
        format!("MLX CPU (the mlx-cpu wheel's build), float32 products on {}", blas.describe())
    }
}

/// What an engine is doing now: the worker's load as it reports it to the pool.
pub use modelpool::membership::WorkerLoad;

pub trait Engine: Send + Sync + 'static {
    fn info(&self) -> &EngineInfo;
    /// What the engine is doing now and has done: slots in use, queue, counters.
    fn stats(&self) -> WorkerLoad;
    /// Formats and tokenizes a request and decides how many tokens it may generate in one slot's
    /// context ([`generation_limit`]).
    /// CPU work: call it from a blocking thread, not from the async runtime.
    fn prepare(&self, request: &PredictRequest) -> Result<PreparedPrompt, PoolError>;
    /// Queues a job without blocking. A full queue is refused at once with `ResourceExhausted`.
    fn submit(&self, job: Job) -> Result<(), PoolError>;
    /// Whether the thread that runs inference is still running. A worker whose engine died must stop
    /// saying it serves (see `lib::run`).
    fn is_alive(&self) -> bool;
}

/// How many tokens a prompt of `prompt_tokens` may generate in one slot's context. A prompt is never
/// truncated: one that leaves no room is refused with the numbers. Strict about max_tokens, prompt plus
/// max_tokens must fit; otherwise generation stops where the context ends (finish reason length), as
/// llama-server and other local servers treat a max_tokens larger than the context.
pub fn generation_limit(prompt_tokens: usize, sampling: &SamplingParams, context_per_slot: u32) -> Result<u32, PoolError> {
    if prompt_tokens == 0 {
        return Err(PoolError::invalid("prompt", "tokenizes to no tokens"));
    }
    let max_tokens = sampling.max_tokens;
    let room = u64::from(context_per_slot).saturating_sub(prompt_tokens as u64);
    if !sampling.strict_max_tokens {
        if room == 0 {
            return Err(PoolError::invalid(
                "prompt",
                format!("{prompt_tokens} tokens leave no room to generate in the context of {context_per_slot} tokens per slot"),
            ));
        }
        return Ok(max_tokens.min(room as u32));
    }
    let needed = prompt_tokens as u64 + u64::from(max_tokens);
    if needed > u64::from(context_per_slot) {
        let field = if u64::from(max_tokens) >= u64::from(context_per_slot) { "sampling.max_tokens" } else { "prompt" };
        return Err(PoolError::invalid(
            field,
            format!(
                "prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} is {needed} tokens, \
                 more than the context of {context_per_slot} tokens per slot"
            ),
        ));
    }
    Ok(max_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(max_tokens: u32, strict_max_tokens: bool) -> SamplingParams {
        SamplingParams { max_tokens, strict_max_tokens, ..SamplingParams::default() }
    }

    #[test]
    fn a_strict_request_must_fit_whole_and_the_refusal_names_the_numbers() {
        assert_eq!(generation_limit(10, &sampling(20, true), 30).unwrap(), 20);
        let e = generation_limit(10, &sampling(21, true), 30).unwrap_err().to_string();
        assert!(e.contains("prompt") && e.contains("31") && e.contains("30"), "{e}");
        let e = generation_limit(10, &sampling(5000, true), 2048).unwrap_err().to_string();
        assert!(e.contains("sampling.max_tokens") && e.contains("2048"), "{e}");
        assert!(generation_limit(0, &sampling(1, true), 30).is_err());
    }

    #[test]
    fn a_lenient_request_generates_up_to_where_the_context_ends() {
        assert_eq!(generation_limit(10, &sampling(20, false), 30).unwrap(), 20);
        assert_eq!(generation_limit(10, &sampling(4000, false), 30).unwrap(), 20);
        assert_eq!(generation_limit(29, &sampling(4000, false), 30).unwrap(), 1);
        let e = generation_limit(30, &sampling(4000, false), 30).unwrap_err().to_string();
        assert!(e.contains("prompt") && e.contains("no room") && e.contains("30"), "{e}");
        assert!(generation_limit(0, &sampling(1, false), 30).is_err());
    }
}
