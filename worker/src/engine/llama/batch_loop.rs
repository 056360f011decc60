//! Continuous batching on one llama.cpp context. Each step: admit queued jobs into free slots, drop
//! abandoned ones, decode the next token of every decoding slot in one call, then prefill a bounded
//! amount of prompt, one call per prompt chunk, and sample one token for each slot that got logits. A
//! job that finishes leaves at once and its slot (sequence id and KV cells) takes the next job.
//!
//! A finished sequence keeps its keys and values: the next prompt sharing a prefix with it (or with any
//! other sequence, whose prefix is then copied over) computes only the rest ([`PrefixCache`]).
//!
//! Why prompt chunks are decoded alone and cover fixed position ranges: llama.cpp's CPU attention picks
//! its kernel by the number of a sequence's tokens in a micro-batch (a tiled kernel from
//! [`ATTENTION_TILE`] query tokens up, a row-by-row one below), and the two round differently. A
//! chunk mixed with other sequences' tokens is split by llama.cpp into micro-batches with an equal
//! number of tokens per sequence, so its tokens would be computed by whichever kernel its neighbours'
//! counts select. Alone, and over the same ranges whether or not a prefix was reused (see
//! [`aligned_reuse`]), every prompt token is computed by the same kernel in every run, and greedy text
//! does not depend on the cache or on the neighbours (tested).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tracing::warn;

use super::sampler::sampler_for;
use crate::engine::prefix_cache::{PrefixCache, Wait, chunk_end};
use crate::engine::queue::{Intake, LoadCounters, NextJob, forward_failed};
use crate::engine::slot::{Progress, Slot, argmax};
use crate::engine::{Job, JobEvent};

/// Tokens in one decode call (llama.cpp's n_batch and n_ubatch).
pub(super) const BATCH_TOKENS: u32 = 512;
/// Prompts are computed in chunks covering positions [k·PREFILL_CHUNK, (k+1)·PREFILL_CHUNK) (and the
/// last token alone, see [`chunk_end`]): a long prompt is prefilled over several steps, so the slots
/// already decoding keep getting a token every step instead of waiting for the whole prompt.
const PREFILL_CHUNK: usize = 256;
/// Prompt tokens prefilled per step at most, over all slots (at least one chunk runs).
const PREFILL_PER_STEP: usize = 256;
/// llama.cpp's CPU flash attention uses its tiled kernel for micro-batches of at least this many query
/// tokens of one sequence (GGML_FA_TILE_Q in ggml-cpu).
pub(super) const ATTENTION_TILE: usize = 64;

/// This engine's [`crate::engine::prefix_cache::ReusePolicy`]: how much of a cached match can be reused
/// with every token's keys and values exactly as a run without reuse computes them. Prompts are computed
/// as [`chunk_end`] says: the body in aligned chunks, the last token alone. A reused position must have
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
    if matched == start || end - start < ATTENTION_TILE || end - matched >= ATTENTION_TILE {
        matched
    } else {
        end - ATTENTION_TILE
    }
}

pub(super) struct BatchLoop<'m> {
    model: &'m LlamaModel,
    context: LlamaContext<'m>,
    /// Running slots, kept in increasing sequence id order (see `build_batch`).
    slots: Vec<Slot<LlamaSampler>>,
    cache: PrefixCache,
    batch: LlamaBatch<'static>,
    counters: Arc<LoadCounters>,
    piece: Vec<u8>,
    intake: Intake,
}

impl<'m> BatchLoop<'m> {
    /// `slots` sequences run at once out of `sequences` (the others only keep caches).
    pub fn new(model: &'m LlamaModel, context: LlamaContext<'m>, slots: u32, sequences: u32, prefix_cache: bool, counters: Arc<LoadCounters>) -> Self {
        Self {
            model,
            context,
            slots: Vec::with_capacity(slots as usize),
            cache: PrefixCache::new(sequences as usize, slots as usize, prefix_cache, reusable),
            batch: LlamaBatch::new(BATCH_TOKENS as usize, 1),
            counters,
            piece: Vec::with_capacity(32),
            intake: Intake::default(),
        }
    }

    /// Runs until every sender of `queue` is gone and the last job has finished.
    pub fn run(mut self, queue: Receiver<Job>) {
        let mut queue_open = true;
        loop {
            queue_open = queue_open && self.admit(&queue);
            if self.slots.is_empty() {
                if !queue_open {
                    return;
                }
                continue;
            }
            self.drop_abandoned();
            self.resolve_waiting();
            self.decode_step();
            self.prefill_step();
            self.publish_load();
        }
    }

    /// Moves queued jobs into free slots. Blocks only when nothing is running. Returns false once the
    /// queue is closed (the engine is shutting down).
    fn admit(&mut self, queue: &Receiver<Job>) -> bool {
        while self.cache.has_free() {
            let running_alone = self.slots.iter().any(|s| s.job.alone);
            let job = match self.intake.next(queue, self.slots.len(), running_alone, &self.counters) {
                NextJob::Job(job) => job,
                NextJob::Empty => return true,
                NextJob::Closed => return false,
            };
            let placement = self.cache.place(&job.prompt.tokens).expect("checked a free sequence");
            let seq = placement.seq as i32;
            let sampler = sampler_for(&job.sampling);
            let at = self.slots.partition_point(|s| s.seq < seq);
            self.slots.insert(at, Slot::new(seq, job, sampler));
            match placement.copy_from {
                Some(source) if placement.wait => self.slots[at].waiting_for = Some((source, placement.reuse)),
                source => self.start_prompt(at, placement.reuse, source),
            }
        }
        true
    }

    /// Readies the sequence of slot `index` for its prompt: the first `reuse` tokens' keys and values
    /// copied from `source` (or already in the sequence when `None`), everything after them dropped.
    fn start_prompt(&mut self, index: usize, reuse: usize, source: Option<usize>) {
        let seq = self.slots[index].seq;
        let mut reuse = reuse;
        if let Some(source) = source {
            // Across KV streams llama.cpp copies the whole buffer (at the next decode); the part past
            // the shared prefix is dropped just below.
            let _ = self.context.clear_kv_cache_seq(Some(seq as u32), None, None);
            let _ = self.context.copy_kv_cache_seq(source as i32, seq, None, None);
        }
        // Whatever this sequence held past the reused prefix must not leak into the new job.
        if !matches!(self.context.clear_kv_cache_seq(Some(seq as u32), Some(reuse as u32), None), Ok(true)) {
            let _ = self.context.clear_kv_cache_seq(Some(seq as u32), None, None);
            reuse = 0;
        }
        let slot = &mut self.slots[index];
        self.cache.stop_waiting(seq as usize, &slot.job.prompt.tokens[..reuse]);
        let copied = if source.is_some() { reuse } else { 0 };
        self.counters.record_prompt(slot.job.prompt.tokens.len(), reuse);
        slot.set_cached_prefix(reuse, copied);
    }

    /// Slots waiting for a prefix another sequence computes: copy it once it is in; if that sequence
    /// stopped short of it (its client left, it failed), compute the prompt in full.
    fn resolve_waiting(&mut self) {
        for i in 0..self.slots.len() {
            let Some((source, reuse)) = self.slots[i].waiting_for else { continue };
            match self.cache.wait_for(source, &self.slots[i].job.prompt.tokens[..reuse]) {
                Wait::Ready => self.start_prompt(i, reuse, Some(source)),
                Wait::Pending => {}
                Wait::GiveUp => self.start_prompt(i, 0, None),
            }
        }
    }

    fn drop_abandoned(&mut self) {
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].is_abandoned() {
                let slot = self.slots.remove(i);
                self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                self.release(slot.seq);
            } else {
                i += 1;
            }
        }
    }

    /// One token for every decoding slot, in one call. Tokens go in increasing sequence id order: with
    /// one KV stream per sequence (non-unified cache) llama.cpp puts sequences into one micro-batch only
    /// while their ids are consecutive and increasing in the batch.
    fn decode_step(&mut self) {
        self.batch.clear();
        let mut members = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(token) = slot.next_token.take() {
                self.batch.add(LlamaToken(token), slot.position, &[slot.seq], true).expect("room for one token per slot");
                slot.position += 1;
                members.push((i, self.batch.n_tokens() - 1, vec![token]));
            }
        }
        if !members.is_empty() {
            self.decode_and_sample(members, true);
        }
    }

    /// Prefills prompt chunks, oldest slot first, up to [`PREFILL_PER_STEP`] tokens; each chunk is one
    /// call of its own (see the module's comment). A prompt's last chunk yields its first token.
    fn prefill_step(&mut self) {
        let mut budget = PREFILL_PER_STEP;
        let mut i = 0;
        while i < self.slots.len() && budget > 0 {
            let slot = &mut self.slots[i];
            if !slot.is_prefilling() {
                i += 1;
                continue;
            }
            let prompt = &slot.job.prompt.tokens;
            let chunk_end = chunk_end(slot.prefilled, prompt.len(), PREFILL_CHUNK);
            let chunk = prompt[slot.prefilled..chunk_end].to_vec();
            self.batch.clear();
            for (offset, &token) in chunk.iter().enumerate() {
                let last_of_prompt = slot.prefilled + offset + 1 == prompt.len();
                self.batch.add(LlamaToken(token), slot.position, &[slot.seq], last_of_prompt).expect("a chunk fits the batch");
                slot.position += 1;
            }
            slot.prefilled = chunk_end;
            budget = budget.saturating_sub(chunk.len());
            let logits = (!slot.is_prefilling()).then(|| self.batch.n_tokens() - 1);
            let before = self.slots.len();
            self.decode_and_sample(vec![(i, logits.unwrap_or(-1), chunk)], false);
            // A slot that finished or failed left the list; the next one moved into its place.
            if self.slots.len() == before {
                i += 1;
            }
        }
    }

    /// Decodes the batch built for `members` (slot index, index of its logits in the batch or -1, the
    /// tokens it added) and samples a token for each member that has logits.
    /// `generating`: a decode step of generated tokens (not a prompt chunk).
    fn decode_and_sample(&mut self, members: Vec<(usize, i32, Vec<i32>)>, generating: bool) {
        let decoded = if generating && members.iter().any(|&(index, _, _)| self.slots[index].job.poisoned) {
            Err("injected fault (MODELPOOL_FAULT_POISON)".to_string())
        } else {
            self.context.decode(&mut self.batch).map_err(|e| format!("llama.cpp decode: {e}"))
        };
        if let Err(e) = decoded {
            // A failed decode leaves the sequences' KV state unknown: fail their jobs rather than
            // produce text from a corrupt cache.
            warn!(error = %e, sequences = members.len(), "llama.cpp decode failed; failing the jobs in the batch");
            let error = forward_failed(members.len(), &e);
            for &(index, _, _) in members.iter().rev() {
                let slot = self.slots.remove(index);
                let _ = slot.job.events.send(JobEvent::Failed(error.clone()));
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let _ = self.context.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
                self.cache.forget(slot.seq as usize);
                self.release(slot.seq);
            }
            return;
        }
        let vocab = self.model.vocab();
        let mut finished = Vec::new();
        for (index, logits_index, tokens) in members {
            let slot = &mut self.slots[index];
            self.cache.extend(slot.seq as usize, &tokens);
            if logits_index < 0 {
                continue;
            }
            let token = match slot.sampler.as_mut() {
                Some(sampler) => sampler.sample(&self.context, logits_index),
                None => LlamaToken(argmax(self.context.get_logits_ith(logits_index))),
            };
            let is_end = vocab.is_eog(token);
            self.piece.clear();
            if !is_end {
                vocab.token_to_piece_into(token, &mut self.piece, false, None);
            }
            if let Progress::Finished(reason) = slot.accept(token.0, &self.piece, is_end) {
                finished.push((index, reason));
            }
        }
        // Highest index first, so the earlier indices stay valid while removing.
        for (index, reason) in finished.into_iter().rev() {
            let slot = self.slots.remove(index);
            // Counted before the reply goes out, so a client that asks right after sees it.
            self.counters.served.fetch_add(1, Ordering::Relaxed);
            self.release(slot.seq);
            slot.finish(reason);
        }
    }

    /// Frees the slot; its keys and values stay for a later prompt with the same prefix.
    fn release(&mut self, seq: i32) {
        self.cache.release(seq as usize);
        self.publish_load();
    }

    fn publish_load(&self) {
        self.counters.slots_in_use.store(self.slots.len() as u32, Ordering::Relaxed);
        self.counters.kv_cells_used.store(self.cache.cached_tokens() as u32, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
