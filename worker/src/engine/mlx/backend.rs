//! The MLX side of the batch loop ([`crate::engine::batch_loop`]): one [`KvCache`] per sequence, kept
//! between requests; a forward pass as the model's batched forwards evaluated together; prefix reuse by
//! sharing a cache's arrays (MLX arrays are immutable, so sharing is free), which is also how a
//! sequence is saved to the prompt store and restored; the reuse rule of the batch-invariant passes.
//!
//! A pass is one model forward over every run (decode tokens and prompt chunks of any length), built
//! lazily and evaluated at once.

use model_input::tokenizer::Tokenizer;
use modelpool::SamplingParams;

use super::model::{KvCache, MlxLlama};
use crate::engine::backend::{Backend, Run};
use crate::engine::logit_shaping::Shaping;
use crate::engine::prefix_cache::ReusePolicy;
use crate::engine::sampling::SeededSampler;
use crate::engine::slot::argmax;

/// Prompt tokens per pass of the batch-invariant shape (the default passes take `--batch-tokens`).
/// There every product uses MLX's quantized kernel, which prefills at about 14 tokens/s on this CPU, so
/// a chunk stalls the decoding slots for about two seconds; a whole long prompt at once would stall them
/// far longer. mlx-lm prefills in steps of the same size in the reference test.
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
        // One model pass for every run: the decode tokens and the prompt chunks share the weight
        // products, each run attends over its own cache.
        let mut caches: Vec<Option<&mut KvCache>> = self.caches.iter_mut().map(Some).collect();
        let mut model_runs = Vec::with_capacity(runs.len());
        for run in runs {
            let cache = caches.get_mut(run.seq).and_then(Option::take).ok_or_else(|| format!("two runs for sequence {}", run.seq))?;
            model_runs.push((run.tokens, cache));
        }
        let logits = self.model.forward_runs(&mut model_runs).map_err(mlx_error)?;
        // One evaluation for the whole pass (and with it the caches' new keys and values).
        logits.eval().map_err(|e| mlx_error(e.to_string()))?;
        let values = logits.as_slice::<f32>();
        let vocab = values.len() / runs.len();
        self.vocab = vocab;
        // Rows in the order of `runs`, for the runs that asked for logits.
        self.logits = runs
            .iter()
            .enumerate()
            .filter(|(_, run)| run.logits)
            .flat_map(|(i, _)| values[i * vocab..(i + 1) * vocab].iter().copied())
            .collect();
        Ok(())
    }

    fn sample(&mut self, sampler: Option<&mut SeededSampler>, row: usize, shaping: Shaping) -> i32 {
        let shaped_row;
        let logits = if shaping.is_none() {
            self.row(row)
        } else {
            shaped_row = shaping.apply(self.row(row));
            &shaped_row[..]
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
