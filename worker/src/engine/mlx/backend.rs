//! The MLX side of the batch loop ([`crate::engine::batch_loop`]): one [`KvCache`] per sequence, kept
//! between requests; a forward pass as the model's batched forwards evaluated together; prefix reuse by
//! sharing a cache's arrays (MLX arrays are immutable, so sharing is free), which is also how a
//! sequence is saved to the prompt store and restored; the reuse rule of the batch-invariant passes.
//!
//! The model's forward takes the same number of new tokens from every sequence it is given, so a pass
//! is one forward for all decode tokens plus one per prompt chunk, built lazily and evaluated at once.

use mlx_rs::Array;
use model_input::tokenizer::Tokenizer;
use modelpool::SamplingParams;
use toktrie::SimpleVob;

use super::model::{KvCache, MlxLlama};
use crate::engine::backend::{Backend, Run};
use crate::engine::constraint::masked;
use crate::engine::prefix_cache::ReusePolicy;
use crate::engine::sampling::SeededSampler;
use crate::engine::slot::argmax;

/// Prompt tokens prefilled per step. MLX's CPU backend prefills at about 14 tokens/s here, so a chunk
/// stalls the decoding slots for about two seconds; a whole long prompt at once would stall them far
/// longer.
pub const PREFILL_CHUNK: usize = 32;

/// This engine's [`ReusePolicy`]: batch-invariant prompts are prefilled as
/// [`crate::engine::prefix_cache::chunk_end`] says (the body in chunks covering positions
/// [k·PREFILL_CHUNK, (k+1)·PREFILL_CHUNK), the last token alone), and MLX's CPU kernels round by shape,
/// so reused positions must lie in chunks of the same shape in both prompts' runs: whole chunks, or the
/// chunk where the match ends when both bodies end it at the same place; the cached prompt's last token
/// and its generated tokens are never reused.
fn reusable(matched: usize, cached_prompt_len: usize, prompt_len: usize) -> usize {
    let (cached_body, body) = (cached_prompt_len.saturating_sub(1), prompt_len.saturating_sub(1));
    let matched = matched.min(cached_body).min(body);
    let chunk_start = matched / PREFILL_CHUNK * PREFILL_CHUNK;
    let chunk_of = |len: usize| (chunk_start + PREFILL_CHUNK).min(len);
    if chunk_of(cached_body) == chunk_of(body) && (matched == body || matched == chunk_start) { matched } else { chunk_start }
}

pub(super) struct MlxBackend<'m> {
    model: &'m MlxLlama,
    tokenizer: &'m Tokenizer,
    /// One per sequence, kept between requests.
    caches: Vec<KvCache>,
    /// The last pass's logits rows, one per run that asked for them, `vocab` floats each.
    logits: Vec<f32>,
    vocab: usize,
}

impl<'m> MlxBackend<'m> {
    pub fn new(model: &'m MlxLlama, tokenizer: &'m Tokenizer, sequences: usize) -> Self {
        Self { model, tokenizer, caches: (0..sequences).map(|_| model.new_cache()).collect(), logits: Vec::new(), vocab: 0 }
    }

    fn row(&self, row: usize) -> &[f32] {
        &self.logits[row * self.vocab..(row + 1) * self.vocab]
    }
}

impl Backend for MlxBackend<'_> {
    type Sampler = SeededSampler;
    type Saved = KvCache;

    fn sampler_for(&self, params: &SamplingParams) -> Option<SeededSampler> {
        SeededSampler::for_params(params)
    }

    fn reuse_policy(&self) -> ReusePolicy {
        reusable
    }

    fn forward(&mut self, runs: &[Run]) -> Result<(), String> {
        // Decode tokens (one per sequence) share one forward, in sequence order (the order in which
        // their caches are handed to it); each longer run has one of its own.
        let mut decoding: Vec<&Run> = runs.iter().filter(|r| r.tokens.len() == 1).collect();
        decoding.sort_by_key(|r| r.seq);
        let mut outputs: Vec<(Array, Vec<&Run>)> = Vec::new();
        if !decoding.is_empty() {
            let seqs: Vec<usize> = decoding.iter().map(|r| r.seq).collect();
            let tokens: Vec<i32> = decoding.iter().map(|r| r.tokens[0]).collect();
            let mut caches: Vec<&mut KvCache> =
                self.caches.iter_mut().enumerate().filter(|(seq, _)| seqs.contains(seq)).map(|(_, cache)| cache).collect();
            outputs.push((self.model.forward(&tokens, 1, &mut caches).map_err(mlx_error)?, decoding));
        }
        for run in runs.iter().filter(|r| r.tokens.len() > 1) {
            let cache = &mut self.caches[run.seq];
            outputs.push((self.model.forward(run.tokens, run.tokens.len() as i32, &mut [cache]).map_err(mlx_error)?, vec![run]));
        }
        // One evaluation for the whole pass (and with it the caches' new keys and values).
        mlx_rs::transforms::eval(outputs.iter().map(|(logits, _)| logits)).map_err(|e| mlx_error(e.to_string()))?;
        // Rows in the order of `runs`, for the runs that asked for logits.
        let mut rows: Vec<(usize, Vec<f32>)> = Vec::new();
        for (logits, members) in &outputs {
            let values = logits.as_slice::<f32>();
            let vocab = values.len() / members.len();
            self.vocab = vocab;
            for (i, run) in members.iter().enumerate() {
                if run.logits {
                    let order = runs.iter().position(|r| r.seq == run.seq).expect("a run of this pass");
                    rows.push((order, values[i * vocab..(i + 1) * vocab].to_vec()));
                }
            }
        }
        rows.sort_by_key(|(order, _)| *order);
        self.logits = rows.into_iter().flat_map(|(_, row)| row).collect();
        Ok(())
    }

    fn sample(&mut self, sampler: Option<&mut SeededSampler>, row: usize, allowed: Option<&SimpleVob>) -> i32 {
        let masked_row;
        let logits = match allowed {
            Some(allowed) => {
                masked_row = masked(self.row(row), allowed);
                &masked_row[..]
            }
            None => self.row(row),
        };
        match sampler {
            // The sampler leaves out tokens whose logit is not finite.
            Some(sampler) => sampler.sample(logits),
            None => argmax(logits),
        }
    }

    fn token_text(&self, token: i32, bytes: &mut Vec<u8>) -> bool {
        // Only the model's EOS ids end a generation (mlx-lm's rule); another control token is generated
        // like any token, and like llama.cpp's output it adds no text.
        let is_end = self.tokenizer.is_eos(token as u32);
        bytes.clear();
        if !is_end {
            bytes.extend_from_slice(&self.tokenizer.token_bytes(token as u32, false));
        }
        is_end
    }

    fn start_sequence(&mut self, seq: usize, reuse: usize, source: Option<usize>) -> usize {
        match self.caches[source.unwrap_or(seq)].prefix(reuse as i32) {
            Ok(cache) => {
                self.caches[seq] = cache;
                reuse
            }
            Err(error) => {
                tracing::warn!(%error, "reusing a cached prefix failed; computing the whole prompt");
                self.caches[seq] = self.model.new_cache();
                0
            }
        }
    }

    fn clear_sequence(&mut self, seq: usize) {
        self.caches[seq] = self.model.new_cache();
    }

    fn save_sequence(&mut self, seq: usize) -> Option<(KvCache, usize)> {
        // A new handle on the same immutable arrays: nothing is copied, and the sequence's later
        // appends make new arrays that the saved cache never sees.
        let saved = self.caches[seq].clone();
        let bytes = saved.nbytes();
        Some((saved, bytes))
    }

    fn restore_sequence(&mut self, seq: usize, saved: &KvCache) -> bool {
        self.caches[seq] = saved.clone();
        true
    }
}

fn mlx_error(error: String) -> String {
    format!("MLX: {error}")
}
