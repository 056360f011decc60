//! Continuous batching on one llama.cpp context. Each step: admit queued jobs into free slots, drop
//! abandoned ones, build one batch holding the next token of every decoding slot plus a bounded chunk of
//! prompt for prefilling slots, decode it, and sample one token for each slot that got logits. A job that
//! finishes leaves at once and its slot (sequence id and KV cells) takes the next job at the next step.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use modelpool::PoolError;
use tracing::warn;

use crate::engine::queue::{LoadCounters, NextJob, next_job};
use llama_cpp_2::sampling::LlamaSampler;

use super::sampler::sampler_for;
use crate::engine::slot::{Progress, Slot, argmax};
use crate::engine::{Job, JobEvent};

/// Tokens in one decode call (llama.cpp's n_batch and n_ubatch).
pub(super) const BATCH_TOKENS: u32 = 512;
/// Prompt tokens one slot may add to a step: a long prompt is prefilled over several steps, so the
/// slots already decoding keep getting a token every step instead of waiting for the whole prompt.
const PREFILL_CHUNK: usize = 256;

pub(super) struct BatchLoop<'m> {
    model: &'m LlamaModel,
    context: LlamaContext<'m>,
    /// Running slots, kept in increasing sequence id order (see `build_batch`).
    slots: Vec<Slot<LlamaSampler>>,
    free_seqs: BTreeSet<i32>,
    batch: LlamaBatch<'static>,
    counters: Arc<LoadCounters>,
    piece: Vec<u8>,
}

impl<'m> BatchLoop<'m> {
    pub fn new(model: &'m LlamaModel, context: LlamaContext<'m>, slots: u32, counters: Arc<LoadCounters>) -> Self {
        Self {
            model,
            context,
            slots: Vec::with_capacity(slots as usize),
            free_seqs: (0..slots as i32).collect(),
            batch: LlamaBatch::new(BATCH_TOKENS as usize, 1),
            counters,
            piece: Vec::with_capacity(32),
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
            if self.build_batch() {
                self.decode_and_sample();
            }
            self.publish_load();
        }
    }

    /// Moves queued jobs into free slots. Blocks only when nothing is running. Returns false once the
    /// queue is closed (the engine is shutting down).
    fn admit(&mut self, queue: &Receiver<Job>) -> bool {
        while !self.free_seqs.is_empty() {
            let job = match next_job(queue, self.slots.is_empty(), &self.counters) {
                NextJob::Job(job) => job,
                NextJob::Empty => return true,
                NextJob::Closed => return false,
            };
            // The lowest free id, so the running ids stay as contiguous as possible (see `build_batch`).
            let seq = self.free_seqs.pop_first().expect("checked non-empty");
            // Whatever an earlier job left in this sequence must not leak into the new one.
            let _ = self.context.clear_kv_cache_seq(Some(seq as u32), None, None);
            let sampler = sampler_for(&job.sampling);
            let at = self.slots.partition_point(|s| s.seq < seq);
            self.slots.insert(at, Slot::new(seq, job, sampler));
        }
        true
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

    /// Fills the batch: decode tokens first (one per decoding slot), then prompt chunks. Returns false
    /// when there is nothing to run. Tokens go in increasing sequence id order: with one KV stream per
    /// sequence (non-unified cache) llama.cpp puts sequences into one micro-batch only while their ids
    /// are consecutive and increasing in the batch, and splits the rest into further micro-batches.
    fn build_batch(&mut self) -> bool {
        self.batch.clear();
        let mut room = BATCH_TOKENS as usize;
        for slot in &mut self.slots {
            slot.logits_index = None;
            if let Some(token) = slot.next_token.take() {
                let index = self.batch.n_tokens();
                self.batch.add(LlamaToken(token), slot.position, &[slot.seq], true).expect("room for one token per slot");
                slot.position += 1;
                slot.logits_index = Some(index);
                room -= 1;
            }
        }
        for slot in &mut self.slots {
            if room == 0 {
                break;
            }
            if !slot.is_prefilling() {
                continue;
            }
            let prompt = &slot.job.prompt.tokens;
            let take = (prompt.len() - slot.prefilled).min(PREFILL_CHUNK).min(room);
            let end = slot.prefilled + take;
            for (offset, &token) in prompt[slot.prefilled..end].iter().enumerate() {
                let last_of_prompt = slot.prefilled + offset + 1 == prompt.len();
                let index = self.batch.n_tokens();
                self.batch.add(LlamaToken(token), slot.position, &[slot.seq], last_of_prompt).expect("room was counted");
                slot.position += 1;
                if last_of_prompt {
                    slot.logits_index = Some(index);
                }
            }
            slot.prefilled = end;
            room -= take;
        }
        self.batch.n_tokens() > 0
    }

    fn decode_and_sample(&mut self) {
        if let Err(e) = self.context.decode(&mut self.batch) {
            // A failed decode leaves the sequences' KV state unknown: fail every job in the batch rather
            // than produce text from a corrupt cache.
            warn!(error = %e, slots = self.slots.len(), "llama.cpp decode failed; failing the running jobs");
            for slot in std::mem::take(&mut self.slots) {
                let _ = slot.job.events.send(JobEvent::Failed(PoolError::Internal(format!("decode failed: {e}"))));
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.release(slot.seq);
            }
            return;
        }
        let vocab = self.model.vocab();
        let mut i = 0;
        while i < self.slots.len() {
            let Some(index) = self.slots[i].logits_index else {
                i += 1;
                continue;
            };
            let slot = &mut self.slots[i];
            let token = match slot.sampler.as_mut() {
                Some(sampler) => sampler.sample(&self.context, index),
                None => LlamaToken(argmax(self.context.get_logits_ith(index))),
            };
            let is_end = vocab.is_eog(token);
            self.piece.clear();
            if !is_end {
                vocab.token_to_piece_into(token, &mut self.piece, false, None);
            }
            match slot.accept(token.0, &self.piece, is_end) {
                Progress::Continue => i += 1,
                Progress::Finished(reason) => {
                    let slot = self.slots.remove(i);
                    let seq = slot.seq;
                    // Counted before the reply goes out, so a client that asks right after sees it.
                    self.counters.served.fetch_add(1, Ordering::Relaxed);
                    self.release(seq);
                    slot.finish(reason);
                }
            }
        }
    }

    fn release(&mut self, seq: i32) {
        let _ = self.context.clear_kv_cache_seq(Some(seq as u32), None, None);
        self.free_seqs.insert(seq);
        self.publish_load();
    }

    fn publish_load(&self) {
        self.counters.slots_in_use.store(self.slots.len() as u32, Ordering::Relaxed);
        let cells: i32 = self.slots.iter().map(|s| s.position).sum();
        self.counters.kv_cells_used.store(cells as u32, Ordering::Relaxed);
    }
}
