//! The llama.cpp side of the batch loop ([`crate::engine::batch_loop`]): one context whose sequences
//! are the loop's, a forward pass as one `llama_decode` of a batch, the KV cache operations, and the
//! reuse rule of the batch-invariant passes.
//!
//! Why batch-invariant prompt chunks are decoded alone and cover fixed position ranges: llama.cpp's CPU
//! attention picks its kernel by the number of a sequence's tokens in a micro-batch (a tiled kernel from
//! [`ATTENTION_TILE`] query tokens up, a row-by-row one below), and the two round differently. A chunk
//! mixed with other sequences' tokens is split by llama.cpp into micro-batches with an equal number of
//! tokens per sequence (one KV stream per sequence), so its tokens would be computed by whichever kernel
//! its neighbours' counts select. Alone, and over the same ranges whether or not a prefix was reused
//! (see [`aligned_reuse`]), every prompt token is computed by the same kernel in every run, and greedy
//! text does not depend on the cache or on the neighbours (tested).

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::{LlamaStateSeqFlags, SeqState};
use modelpool::SamplingParams;

use super::sampler::sampler_for;
use crate::engine::backend::{Backend, Run};
use crate::engine::logit_shaping::Shaping;
use crate::engine::prefix_cache::ReusePolicy;
use crate::engine::slot::argmax;

/// Tokens in one batch-invariant decode call (llama.cpp's n_batch), and the largest micro-batch (n_ubatch).
pub(super) const BATCH_TOKENS: u32 = 512;
/// Prompts are computed in chunks covering positions [k·PREFILL_CHUNK, (k+1)·PREFILL_CHUNK) (and the
/// last token alone, see [`chunk_end`](crate::engine::prefix_cache::chunk_end)): a long prompt is prefilled over several steps, so the slots
/// already decoding keep getting a token every step instead of waiting for the whole prompt.
pub(super) const PREFILL_CHUNK: usize = 256;
/// Prompt tokens prefilled per step at most in batch-invariant passes, over all slots (at least one
/// chunk runs).
pub(super) const PREFILL_PER_STEP: usize = 256;
/// llama.cpp's CPU flash attention uses its tiled kernel for micro-batches of at least this many query
/// tokens of one sequence (GGML_FA_TILE_Q in ggml-cpu).
pub(super) const ATTENTION_TILE: usize = 64;

/// This engine's [`crate::engine::prefix_cache::ReusePolicy`]: how much of a cached match can be reused
/// with every token's keys and values exactly as a run without reuse computes them. Prompts are computed
/// as [`chunk_end`](crate::engine::prefix_cache::chunk_end) says: the body in aligned chunks, the last token alone. A reused position must have
/// been computed by the kernel the new prompt's own run would use: the cached prompt's last token (alone)
/// and its generated tokens (one at a time) are never reused, and in the chunk where the match ends the
/// two bodies' chunks must pick the same kernel; the rest must be computed by it too ([`aligned_reuse`]).
pub fn reusable(matched: usize, cached_prompt_len: usize, prompt_len: usize) -> usize {
    let (cached_body, body) = (cached_prompt_len.saturating_sub(1), prompt_len.saturating_sub(1));
    let matched = matched.min(cached_body).min(body);
    let chunk_start = matched / PREFILL_CHUNK * PREFILL_CHUNK;
    let tiled = |len: usize| len.min(PREFILL_CHUNK) >= ATTENTION_TILE;
    let same_kernel = tiled(cached_body - chunk_start) == tiled(body - chunk_start);
    aligned_reuse(if same_kernel { matched } else { chunk_start }, body)
}

/// The reuse point at or below `matched` that leaves every remaining body token (of a body of `body`
/// tokens) to be computed by the same attention kernel as in a run without reuse: the chunk the reuse
/// point falls in is computed from there to its end, which must stay at least [`ATTENTION_TILE`] tokens
/// long when the whole chunk is. A whole body reused leaves only the last token, computed alone anyway.
pub fn aligned_reuse(matched: usize, body: usize) -> usize {
    if matched >= body {
        return body;
    }
    let start = matched / PREFILL_CHUNK * PREFILL_CHUNK;
    let end = (start + PREFILL_CHUNK).min(body);
    if matched == start || end - start < ATTENTION_TILE || end - matched >= ATTENTION_TILE { matched } else { end - ATTENTION_TILE }
}

pub(super) struct LlamaBackend<'m> {
    model: &'m LlamaModel,
    context: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    /// The batch index of each logits row of the last pass.
    rows: Vec<i32>,
    /// The attention window of the model's sliding-window layers, if it has them and names it.
    sliding_window: Option<u32>,
}

impl<'m> LlamaBackend<'m> {
    /// `batch_tokens`: the most tokens one pass holds (llama.cpp's n_batch).
    pub fn new(model: &'m LlamaModel, context: LlamaContext<'m>, batch_tokens: usize, sliding_window: Option<u32>) -> Self {
        Self { model, context, batch: LlamaBatch::new(batch_tokens, 1), rows: Vec::new(), sliding_window }
    }
}

/// Whether a kept prefix of `reuse` positions, whose oldest cached position is `oldest` (-1: none;
/// llama.cpp's `seq_pos_min`, which for a model with sliding-window layers is their cache's), still
/// holds every key and value a token after it attends to. All of them when nothing was dropped. A
/// window-sized cache overwrites positions that fell out of the window; the next token at `reuse`
/// reads the positions after `reuse - window`, so those must all be there (llama-server's test, which
/// keeps one more). With no
/// window known, nothing dropped is the only safe answer.
pub fn kept_prefix_serves(oldest: i32, reuse: usize, sliding_window: Option<u32>) -> bool {
    match (oldest, sliding_window) {
        (0, _) => true,
        (oldest, Some(window)) if oldest > 0 => i64::from(oldest) <= reuse as i64 - i64::from(window),
        _ => false,
    }
}

impl Backend for LlamaBackend<'_> {
    type Sampler = LlamaSampler;
    type Saved = SeqState;

    fn sampler_for(&self, params: &SamplingParams) -> Option<LlamaSampler> {
        sampler_for(params)
    }

    fn reuse_policy(&self) -> ReusePolicy {
        reusable
    }

    fn forward(&mut self, runs: &[Run]) -> Result<(), String> {
        self.batch.clear();
        self.rows.clear();
        for run in runs {
            for (offset, &token) in run.tokens.iter().enumerate() {
                let logits = run.logits && offset + 1 == run.tokens.len();
                let position = (run.position + offset) as i32;
                self.batch.add(LlamaToken(token), position, &[run.seq as i32], logits).map_err(|e| format!("building the batch: {e}"))?;
                if logits {
                    self.rows.push(self.batch.n_tokens() - 1);
                }
            }
        }
        self.context.decode(&mut self.batch).map_err(|e| format!("llama.cpp decode: {e}"))
    }

    fn sample(&mut self, sampler: Option<&mut LlamaSampler>, row: usize, shaping: Shaping) -> i32 {
        let index = self.rows[row];
        if shaping.is_none() {
            return match sampler {
                Some(sampler) => sampler.sample(&self.context, index).0,
                None => argmax(self.context.get_logits_ith(index)),
            };
        }
        let logits = shaping.apply(self.context.get_logits_ith(index));
        let Some(sampler) = sampler else {
            return argmax(&logits);
        };
        // The request's sampler chain over the shaped logits, the tokens taken out left out.
        let candidates = logits
            .iter()
            .enumerate()
            .filter(|(_, logit)| logit.is_finite())
            .map(|(id, &logit)| LlamaTokenData::new(LlamaToken(id as i32), logit, 0.0));
        let mut candidates = LlamaTokenDataArray::from_iter(candidates, false);
        candidates.apply_sampler(sampler);
        let token = candidates.selected_token().unwrap_or_else(|| LlamaToken(argmax(&logits)));
        sampler.accept(token);
        token.0
    }

    fn token_text(&self, token: i32, bytes: &mut Vec<u8>) -> bool {
        let vocab = self.model.vocab();
        let token = LlamaToken(token);
        bytes.clear();
        let is_end = vocab.is_eog(token);
        if !is_end {
            vocab.token_to_piece_into(token, bytes, false, None);
        }
        is_end
    }

    fn start_sequence(&mut self, seq: usize, reuse: usize, source: Option<usize>) -> usize {
        let seq = seq as i32;
        if let Some(source) = source {
            // Across KV streams llama.cpp copies the whole buffer (at the next decode); the part past
            // the shared prefix is dropped just below.
            let _ = self.context.clear_kv_cache_seq(Some(seq as u32), None, None);
            let _ = self.context.copy_kv_cache_seq(source as i32, seq, None, None);
        }
        // Whatever this sequence held past the reused prefix must not leak into the new job. A kept
        // prefix must also hold what the new prompt's attention reads: a sliding window kept at its
        // own size (`--sliding-window-cache window`) overwrites positions as a longer request goes
        // on, and reusing what is left would silently change the text.
        let kept = matches!(self.context.clear_kv_cache_seq(Some(seq as u32), Some(reuse as u32), None), Ok(true));
        if kept && (reuse == 0 || kept_prefix_serves(self.context.kv_cache_seq_pos_min(seq), reuse, self.sliding_window)) {
            reuse
        } else {
            let _ = self.context.clear_kv_cache_seq(Some(seq as u32), None, None);
            0
        }
    }

    fn clear_sequence(&mut self, seq: usize) {
        let _ = self.context.clear_kv_cache_seq(Some(seq as u32), None, None);
    }

    fn save_sequence(&mut self, seq: usize) -> Option<(SeqState, usize)> {
        // llama-server's --cache-ram does the same: the sequence's cells serialized to host memory.
        match self.context.state_seq_get(seq as i32, LlamaStateSeqFlags::empty()) {
            Ok(state) => {
                let bytes = state.byte_len();
                Some((state, bytes))
            }
            Err(error) => {
                tracing::warn!(%error, seq, "saving a sequence for the prompt store failed");
                None
            }
        }
    }

    fn restore_sequence(&mut self, seq: usize, saved: &SeqState) -> bool {
        // llama.cpp clears the sequence first and places the saved cells in one free run of cells.
        match self.context.state_seq_set(saved, seq as i32) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, seq, "restoring a stored prompt failed; computing it");
                self.clear_sequence(seq);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_prefix_is_reused_only_if_the_next_tokens_window_is_still_cached() {
        assert!(kept_prefix_serves(0, 900, None), "nothing dropped");
        assert!(kept_prefix_serves(0, 900, Some(32)));
        assert!(kept_prefix_serves(500, 900, Some(32)), "the token at 900 reads positions 869..=900");
        assert!(kept_prefix_serves(868, 900, Some(32)));
        assert!(!kept_prefix_serves(869, 900, Some(32)), "llama-server's bound, with one position to spare");
        assert!(!kept_prefix_serves(880, 900, Some(32)), "positions 869..880 are gone");
        assert!(!kept_prefix_serves(500, 900, None), "dropped positions and no window known");
        assert!(!kept_prefix_serves(-1, 900, Some(32)), "the window's cache holds nothing of the prefix");
    }

    #[test]
    fn a_reuse_point_keeps_the_rest_of_its_chunk_on_the_same_kernel() {
        // On a chunk boundary, or with a whole tile left in the chunk: as matched.
        assert_eq!(aligned_reuse(256, 1000), 256);
        assert_eq!(aligned_reuse(300, 1000), 300);
        assert_eq!(aligned_reuse(512 - 64, 1000), 512 - 64);
        // Closer to the chunk's end than a tile: moved back to leave one tile.
        assert_eq!(aligned_reuse(500, 1000), 512 - 64);
        assert_eq!(aligned_reuse(980, 999), 999 - 64);
        // The whole body: only the last token is left, and it is always computed alone.
        assert_eq!(aligned_reuse(999, 999), 999);
        assert_eq!(aligned_reuse(1040, 1050), 1040, "the last chunk is shorter than a tile: one kernel either way");
        assert_eq!(aligned_reuse(0, 10), 0);
    }

    #[test]
    fn reused_tokens_come_from_chunks_computed_by_the_same_kernel() {
        // A repeated prompt: everything but its last token.
        assert_eq!(reusable(1299, 1300, 1300), 1299);
        // A 55-token prompt's body was computed row by row; a 67-token one's is tiled: nothing of the
        // first chunk can be shared.
        assert_eq!(reusable(54, 55, 67), 0);
        // Both long: the match, less what the last tile needs.
        assert_eq!(reusable(1230, 1300, 1310), 1280 - 64);
        assert_eq!(reusable(300, 1300, 1310), 300);
        // Generated tokens and the cached prompt's last token are never reused.
        assert_eq!(reusable(140, 100, 400), 99);
        // Full chunks are tiled in both; the partial one differs: stop at its start.
        assert_eq!(reusable(530, 540, 900), 512);
    }
}
