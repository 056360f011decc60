//! What an engine gives the one batch loop ([`super::batch_loop`]): a forward pass over several
//! sequences' new tokens, the per-sequence cache operations (share a prefix, drop a sequence, save and
//! restore a whole sequence for the prompt store), sampling from the pass's logits and the text of a
//! token. Everything else (admission, waiting for a prefix,
//! abandoned jobs, failures, finishing, load counters) is the loop's and is written once.

use modelpool::SamplingParams;

use super::logit_shaping::Shaping;
use super::prefix_cache::ReusePolicy;

/// New tokens of one sequence in a forward pass, at positions `position..position + tokens.len()`.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub seq: usize,
    pub position: usize,
    pub tokens: &'a [i32],
    /// Whether the pass must give the logits of this run's last token (the next token is sampled from
    /// them). The `k`-th run that asks for them is logits row `k` of [`Backend::sample`].
    pub logits: bool,
}

pub trait Backend {
    /// A request's sampler for non-greedy sampling; greedy takes the arg-max of the logits.
    type Sampler;
    /// A copy of one sequence's cache, kept in host memory by the prompt store
    /// ([`super::prompt_store`]) while the sequence takes other prompts.
    type Saved;

    fn sampler_for(&self, params: &SamplingParams) -> Option<Self::Sampler>;

    /// How much of a cached match this engine may reuse when passes are batch-invariant (see
    /// [`ReusePolicy`]): what its kernels compute alike whether or not a prefix was reused.
    fn reuse_policy(&self) -> ReusePolicy;

    /// Computes `runs` (at most one per sequence) in one forward pass, appending their keys and values
    /// to their sequences' caches. On error the sequences' caches are in an unknown state.
    fn forward(&mut self, runs: &[Run]) -> Result<(), String>;

    /// The token for logits row `row` of the last pass, the row shaped first (a request's logit bias and
    /// penalties, its grammar's mask): the sampler's draw, or the arg-max without one.
    fn sample(&mut self, sampler: Option<&mut Self::Sampler>, row: usize, shaping: Shaping) -> i32;

    /// Writes the bytes of `token` into `bytes` (cleared first) and says whether it ends a generation.
    fn token_text(&self, token: i32, bytes: &mut Vec<u8>) -> bool;

    /// Readies `seq` for a new prompt: its cache keeps the first `reuse` positions, taken from
    /// `source`'s cache when given (else its own already holds them), and drops everything after.
    /// Returns the positions actually kept (0 when the engine could not keep them).
    fn start_sequence(&mut self, seq: usize, reuse: usize, source: Option<usize>) -> usize;

    /// Drops everything `seq`'s cache holds.
    fn clear_sequence(&mut self, seq: usize);

    /// A copy of everything `seq`'s cache holds, and its size in bytes; `None` when the engine could
    /// not take one.
    fn save_sequence(&mut self, seq: usize) -> Option<(Self::Saved, usize)>;

    /// Replaces everything `seq`'s cache holds with `saved` (taken from any sequence). False when it
    /// could not; `seq` then holds nothing.
    fn restore_sequence(&mut self, seq: usize, saved: &Self::Saved) -> bool;
}
