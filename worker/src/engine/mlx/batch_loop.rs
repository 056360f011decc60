//! Continuous batching for the MLX engine. Each step: admit queued jobs into free slots, drop abandoned
//! ones, prefill one chunk of the oldest waiting prompt, then decode one token for every slot whose
//! prompt is in, all of them in one forward pass. A finished job leaves at once and frees its slot.
//!
//! Unlike llama.cpp's single batch, a prompt chunk and the decode tokens are two forward passes here:
//! the model's forward takes the same number of new tokens from every sequence it is given.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use modelpool::PoolError;
use modelpool::tokenizer::Tokenizer;

use super::model::{KvCache, LlamaModel};
use crate::engine::queue::{LoadCounters, NextJob, next_job};
use crate::engine::sampling::SeededSampler;
use crate::engine::slot::{Progress, Slot, argmax};
use crate::engine::{Job, JobEvent};

/// Prompt tokens prefilled per step. MLX's CPU backend prefills at about 14 tokens/s here, so a chunk
/// stalls the decoding slots for about two seconds; a whole long prompt at once would stall them far
/// longer.
const PREFILL_CHUNK: usize = 32;

struct Running {
    slot: Slot<SeededSampler>,
    cache: KvCache,
}

pub(super) struct BatchLoop<'m> {
    model: &'m LlamaModel,
    tokenizer: &'m Tokenizer,
    counters: &'m LoadCounters,
    capacity: usize,
    /// In admission order, so the oldest waiting prompt is prefilled first.
    running: Vec<Running>,
}

impl<'m> BatchLoop<'m> {
    pub fn new(model: &'m LlamaModel, tokenizer: &'m Tokenizer, counters: &'m LoadCounters, slots: u32) -> Self {
        Self { model, tokenizer, counters, capacity: slots as usize, running: Vec::with_capacity(slots as usize) }
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
            self.prefill_chunk();
            self.decode_step();
            self.publish_load();
        }
    }

    /// Moves queued jobs into free slots. Blocks only when nothing is running. Returns false once the
    /// queue is closed.
    fn admit(&mut self, queue: &Receiver<Job>) -> bool {
        while self.running.len() < self.capacity {
            let job = match next_job(queue, self.running.is_empty(), self.counters) {
                NextJob::Job(job) => job,
                NextJob::Empty => return true,
                NextJob::Closed => return false,
            };
            let sampler = SeededSampler::for_params(&job.sampling);
            let seq = self.running.len() as i32;
            self.running.push(Running { slot: Slot::new(seq, job, sampler), cache: self.model.new_cache() });
        }
        true
    }

    fn drop_abandoned(&mut self) {
        let before = self.running.len();
        self.running.retain(|r| !r.slot.is_abandoned());
        self.counters.cancelled.fetch_add((before - self.running.len()) as u64, Ordering::Relaxed);
    }

    /// Runs the next chunk of the oldest prompt still being prefilled; its last chunk yields its first
    /// token.
    fn prefill_chunk(&mut self) {
        let Some(index) = self.running.iter().position(|r| r.slot.is_prefilling()) else { return };
        let running = &mut self.running[index];
        let prompt = &running.slot.job.prompt.tokens;
        let end = (running.slot.prefilled + PREFILL_CHUNK).min(prompt.len());
        let chunk = prompt[running.slot.prefilled..end].to_vec();
        let result = eval_logits(self.model.forward(&chunk, chunk.len() as i32, &mut [&mut running.cache]));
        match result {
            Ok(logits) => {
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
        let decoding: Vec<usize> = (0..self.running.len()).filter(|&i| self.running[i].slot.next_token.is_some()).collect();
        if decoding.is_empty() {
            return;
        }
        let tokens: Vec<i32> = decoding.iter().map(|&i| self.running[i].slot.next_token.take().expect("filtered")).collect();
        let mut caches: Vec<&mut KvCache> =
            self.running.iter_mut().enumerate().filter(|(i, _)| decoding.contains(i)).map(|(_, r)| &mut r.cache).collect();
        match eval_logits(self.model.forward(&tokens, 1, &mut caches)) {
            Ok(logits) => self.sample_into(&decoding, &logits),
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
            let is_end = self.tokenizer.is_special(token as u32) || self.tokenizer.eos == Some(token as u32);
            let bytes = if is_end { Vec::new() } else { self.tokenizer.token_bytes(token as u32, false) };
            if let Progress::Finished(reason) = slot.accept(token, &bytes, is_end) {
                finished.push((index, reason));
            }
        }
        // Highest index first, so the earlier indices stay valid while removing.
        for (index, reason) in finished.into_iter().rev() {
            let running = self.running.remove(index);
            // Counted before the reply goes out, so a client that asks right after sees it.
            self.counters.served.fetch_add(1, Ordering::Relaxed);
            running.slot.finish(reason);
        }
    }

    /// A failed forward pass leaves these sequences' caches unknown: fail their jobs.
    fn fail(&mut self, indices: &[usize], error: &str) {
        tracing::warn!(%error, sequences = indices.len(), "MLX forward pass failed; failing its jobs");
        for &index in indices.iter().rev() {
            let running = self.running.remove(index);
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            let _ = running.slot.job.events.send(JobEvent::Failed(PoolError::Internal(format!("MLX: {error}"))));
        }
    }

    fn publish_load(&self) {
        self.counters.slots_in_use.store(self.running.len() as u32, Ordering::Relaxed);
        let cells: i32 = self.running.iter().map(|r| r.cache.len).sum();
        self.counters.kv_cells_used.store(cells as u32, Ordering::Relaxed);
    }
}

/// Evaluates the lazy logits (and with them the caches' new keys and values) and copies them out.
fn eval_logits(logits: Result<mlx_rs::Array, String>) -> Result<Vec<f32>, String> {
    let logits = logits?;
    logits.eval().map_err(|e| e.to_string())?;
    Ok(logits.as_slice::<f32>().to_vec())
}
