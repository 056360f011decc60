//! Continuous batching for the MLX engine. Each step: admit queued jobs into free slots, drop abandoned
//! ones, prefill one chunk of the oldest waiting prompt, then decode one token for every slot whose
//! prompt is in, all of them in one forward pass. A finished job leaves at once and frees its slot.
//!
//! Unlike llama.cpp's single batch, a prompt chunk and the decode tokens are two forward passes here:
//! the model's forward takes the same number of new tokens from every sequence it is given.
//!
//! Each slot's cache outlives its request: a prompt sharing a prefix with any slot's cache reuses those
//! keys and values (sliced, or shared from another slot: MLX arrays are immutable, so sharing is free)
//! and computes only the rest ([`PrefixCache`]).

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use modelpool::tokenizer::Tokenizer;

use super::model::{KvCache, MlxLlama};
use crate::engine::prefix_cache::{PrefixCache, Wait, chunk_end};
use crate::engine::queue::{Intake, LoadCounters, NextJob, forward_failed};
use crate::engine::sampling::SeededSampler;
use crate::engine::slot::{Progress, Slot, argmax};
use crate::engine::{Job, JobEvent};

/// Prompt tokens prefilled per step. MLX's CPU backend prefills at about 14 tokens/s here, so a chunk
/// stalls the decoding slots for about two seconds; a whole long prompt at once would stall them far
/// longer.
pub const PREFILL_CHUNK: usize = 32;

/// This engine's [`crate::engine::prefix_cache::ReusePolicy`]: prompts are prefilled as [`chunk_end`]
/// says (the body in chunks covering positions [k·PREFILL_CHUNK, (k+1)·PREFILL_CHUNK), the last token
/// alone), and MLX's CPU kernels round by shape, so reused positions must lie in chunks of the same
/// shape in both prompts' runs: whole chunks, or the chunk where the match ends when both bodies end it
/// at the same place; the cached prompt's last token and its generated tokens are never reused.
fn reusable(matched: usize, cached_prompt_len: usize, prompt_len: usize) -> usize {
    let (cached_body, body) = (cached_prompt_len.saturating_sub(1), prompt_len.saturating_sub(1));
    let matched = matched.min(cached_body).min(body);
    let chunk_start = matched / PREFILL_CHUNK * PREFILL_CHUNK;
    let chunk_of = |len: usize| (chunk_start + PREFILL_CHUNK).min(len);
    if chunk_of(cached_body) == chunk_of(body) && (matched == body || matched == chunk_start) { matched } else { chunk_start }
}

struct Running {
    slot: Slot<SeededSampler>,
    /// Which of the loop's caches is this slot's.
    seq: usize,
}

pub(super) struct BatchLoop<'m> {
    model: &'m MlxLlama,
    tokenizer: &'m Tokenizer,
    counters: &'m LoadCounters,
    /// One per slot, kept between requests.
    caches: Vec<KvCache>,
    prefixes: PrefixCache,
    /// In admission order, so the oldest waiting prompt is prefilled first.
    running: Vec<Running>,
    intake: Intake,
}

impl<'m> BatchLoop<'m> {
    /// `slots` sequences run at once out of `sequences` (the others only keep caches).
    pub fn new(model: &'m MlxLlama, tokenizer: &'m Tokenizer, counters: &'m LoadCounters, slots: u32, sequences: u32, prefix_cache: bool) -> Self {
        Self {
            model,
            tokenizer,
            counters,
            caches: (0..sequences).map(|_| model.new_cache()).collect(),
            prefixes: PrefixCache::new(sequences as usize, slots as usize, prefix_cache, reusable),
            running: Vec::with_capacity(slots as usize),
            intake: Intake::default(),
        }
    }

    /// Runs until every sender of `queue` is gone and the last job has finished.
    pub fn run(mut self, queue: Receiver<Job>) {
        let mut queue_open = true;
        loop {
            queue_open = queue_open && self.admit(&queue);
            if self.running.is_empty() {
                if !queue_open {
                    return;
                }
                continue;
            }
            self.drop_abandoned();
            self.resolve_waiting();
            self.prefill_chunk();
            self.decode_step();
            self.publish_load();
        }
    }

    /// Moves queued jobs into free slots. Blocks only when nothing is running. Returns false once the
    /// queue is closed.
    fn admit(&mut self, queue: &Receiver<Job>) -> bool {
        while self.prefixes.has_free() {
            let running_alone = self.running.iter().any(|r| r.slot.job.alone);
            let job = match self.intake.next(queue, self.running.len(), running_alone, self.counters) {
                NextJob::Job(job) => job,
                NextJob::Empty => return true,
                NextJob::Closed => return false,
            };
            let placement = self.prefixes.place(&job.prompt.tokens).expect("checked a free slot");
            let sampler = SeededSampler::for_params(&job.sampling);
            self.running.push(Running { slot: Slot::new(placement.seq as i32, job, sampler), seq: placement.seq });
            let index = self.running.len() - 1;
            match placement.copy_from {
                Some(source) if placement.wait => self.running[index].slot.waiting_for = Some((source, placement.reuse)),
                source => self.start_prompt(index, placement.reuse, source),
            }
        }
        true
    }

    /// Readies the cache of running slot `index` for its prompt: the first `reuse` positions taken from
    /// `source`'s cache (or its own when `None`); MLX arrays are immutable, so this shares, not copies.
    fn start_prompt(&mut self, index: usize, reuse: usize, source: Option<usize>) {
        let seq = self.running[index].seq;
        let reused = self.caches[source.unwrap_or(seq)].prefix(reuse as i32);
        let (cache, reuse) = match reused {
            Ok(cache) => (cache, reuse),
            Err(error) => {
                tracing::warn!(%error, "reusing a cached prefix failed; computing the whole prompt");
                (self.model.new_cache(), 0)
            }
        };
        self.caches[seq] = cache;
        let slot = &mut self.running[index].slot;
        self.prefixes.stop_waiting(seq, &slot.job.prompt.tokens[..reuse]);
        self.counters.record_prompt(slot.job.prompt.tokens.len(), reuse);
        slot.set_cached_prefix(reuse, if source.is_some() { reuse } else { 0 });
    }

    /// Slots waiting for a prefix another slot computes: take it once it is in; if that slot stopped
    /// short of it, compute the prompt in full.
    fn resolve_waiting(&mut self) {
        for i in 0..self.running.len() {
            let Some((source, reuse)) = self.running[i].slot.waiting_for else { continue };
            match self.prefixes.wait_for(source, &self.running[i].slot.job.prompt.tokens[..reuse]) {
                Wait::Ready => self.start_prompt(i, reuse, Some(source)),
                Wait::Pending => {}
                Wait::GiveUp => self.start_prompt(i, 0, None),
            }
        }
    }

    fn drop_abandoned(&mut self) {
        let before = self.running.len();
        let prefixes = &mut self.prefixes;
        self.running.retain(|r| {
            let keep = !r.slot.is_abandoned();
            if !keep {
                prefixes.release(r.seq);
            }
            keep
        });
        self.counters.cancelled.fetch_add((before - self.running.len()) as u64, Ordering::Relaxed);
    }

    /// Runs the next chunk of the oldest prompt still being prefilled; its last chunk yields its first
    /// token.
    fn prefill_chunk(&mut self) {
        let Some(index) = self.running.iter().position(|r| r.slot.is_prefilling()) else { return };
        let running = &mut self.running[index];
        let prompt = &running.slot.job.prompt.tokens;
        let end = chunk_end(running.slot.prefilled, prompt.len(), PREFILL_CHUNK);
        let chunk = prompt[running.slot.prefilled..end].to_vec();
        let result = eval_logits(self.model.forward(&chunk, chunk.len() as i32, &mut [&mut self.caches[running.seq]]));
        match result {
            Ok(logits) => {
                self.prefixes.extend(running.seq, &chunk);
                running.slot.prefilled = end;
                if !running.slot.is_prefilling() {
                    self.sample_into(&[index], &logits);
                }
            }
            Err(e) => self.fail(&[index], &e),
        }
    }

    /// One token for every slot whose prompt is in, in one forward pass.
    fn decode_step(&mut self) {
        let mut decoding: Vec<usize> = (0..self.running.len()).filter(|&i| self.running[i].slot.next_token.is_some()).collect();
        if decoding.is_empty() {
            return;
        }
        // In cache order, the order in which the caches are handed to the forward pass below.
        decoding.sort_by_key(|&i| self.running[i].seq);
        let seqs: Vec<usize> = decoding.iter().map(|&i| self.running[i].seq).collect();
        let tokens: Vec<i32> = decoding.iter().map(|&i| self.running[i].slot.next_token.take().expect("filtered")).collect();
        let mut caches: Vec<&mut KvCache> =
            self.caches.iter_mut().enumerate().filter(|(seq, _)| seqs.contains(seq)).map(|(_, cache)| cache).collect();
        let poisoned = decoding.iter().any(|&i| self.running[i].slot.job.poisoned);
        let forward = if poisoned { Err("injected fault (MODELPOOL_FAULT_POISON)".to_string()) } else { self.model.forward(&tokens, 1, &mut caches) };
        match eval_logits(forward) {
            Ok(logits) => {
                for (&seq, &token) in seqs.iter().zip(&tokens) {
                    self.prefixes.extend(seq, &[token]);
                }
                self.sample_into(&decoding, &logits)
            }
            Err(e) => self.fail(&decoding, &e),
        }
    }

    /// Samples one token for each slot in `indices` from its row of `logits` and removes the slots that
    /// finished.
    fn sample_into(&mut self, indices: &[usize], logits: &[f32]) {
        let vocab = logits.len() / indices.len();
        let mut finished = Vec::new();
        for (row, &index) in indices.iter().enumerate() {
            let slot = &mut self.running[index].slot;
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            let token = match slot.sampler.as_mut() {
                Some(sampler) => sampler.sample(row_logits),
                None => argmax(row_logits),
            };
            // Only the model's EOS ids end a generation (mlx-lm's rule); another control token is
            // generated like any token, and like llama.cpp's output it adds no text.
            let is_end = self.tokenizer.is_eos(token as u32);
            let bytes = if is_end { Vec::new() } else { self.tokenizer.token_bytes(token as u32, false) };
            if let Progress::Finished(reason) = slot.accept(token, &bytes, is_end) {
                finished.push((index, reason));
            }
        }
        // Highest index first, so the earlier indices stay valid while removing.
        finished.sort_by_key(|&(index, _)| index);
        for (index, reason) in finished.into_iter().rev() {
            let running = self.running.remove(index);
            self.prefixes.release(running.seq);
            // Counted before the reply goes out, so a client that asks right after sees it.
            self.counters.served.fetch_add(1, Ordering::Relaxed);
            running.slot.finish(reason);
        }
    }

    /// A failed forward pass leaves these sequences' caches unknown: fail their jobs.
    fn fail(&mut self, indices: &[usize], error: &str) {
        tracing::warn!(%error, sequences = indices.len(), "MLX forward pass failed; failing its jobs");
        let sequences = indices.len();
        let mut indices = indices.to_vec();
        indices.sort_unstable();
        for &index in indices.iter().rev() {
            let running = self.running.remove(index);
            self.prefixes.forget(running.seq);
            self.prefixes.release(running.seq);
            self.caches[running.seq] = self.model.new_cache();
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            let _ = running.slot.job.events.send(JobEvent::Failed(forward_failed(sequences, format!("MLX: {error}"))));
        }
    }

    fn publish_load(&self) {
        self.counters.slots_in_use.store(self.running.len() as u32, Ordering::Relaxed);
        self.counters.kv_cells_used.store(self.prefixes.cached_tokens() as u32, Ordering::Relaxed);
    }
}

/// Evaluates the lazy logits (and with them the caches' new keys and values) and copies them out.
fn eval_logits(logits: Result<mlx_rs::Array, String>) -> Result<Vec<f32>, String> {
    let logits = logits?;
    logits.eval().map_err(|e| e.to_string())?;
    Ok(logits.as_slice::<f32>().to_vec())
}
