//! Continuous batching, written once for every engine ([`Backend`]). Each step: admit queued jobs into
//! free sequences (placed by the [`PrefixCache`] where the most of their prompt is already computed),
//! drop abandoned jobs, start the ones whose shared prefix has arrived, then run forward passes and
//! sample one token for every sequence that got logits. A job that finishes leaves at once and its
//! sequence takes the next job; its cache stays for later prompts with the same prefix. When a
//! sequence is given a prompt it does not share, what it held is first saved in the host-memory
//! [`PromptStore`]; a prompt whose longest cached prefix is there is restored from it.
//!
//! Two ways to shape a step's passes ([`PassShape`]):
//! - Mixed (the default): one pass per step holding every decoding sequence's token and as many pending
//!   prompt tokens as the budget allows, oldest prompt first, as llama-server's step does. Fastest; a
//!   token's floating-point rounding then depends on what it was batched with.
//! - Batch-invariant: the decode tokens in one pass, then each prompt chunk in a pass of its own over
//!   fixed position ranges (the body in chunks of [`PassLimits::chunk`], the last token alone), with the
//!   reuse rule of [`Backend::reuse_policy`], so that greedy text does not depend on the cache or on the
//!   neighbours (tested).

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use modelpool::PoolError;

use super::backend::{Backend, Run};
use super::logit_shaping::{LogitBias, Shaping};
use super::prefix_cache::{Displaced, MIN_USEFUL_PREFIX, PrefixCache, ReusePolicy, Wait, chunk_end, reuse_all};
use super::prompt_store::PromptStore;
use super::queue::{Intake, LoadCounters, NextJob, forward_failed};
use super::slot::{Progress, Slot};
use super::{Job, JobEvent};

/// How a step's forward passes are shaped (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassShape {
    Mixed,
    BatchInvariant,
}

/// Tokens computed per step and the chunk of the batch-invariant shape.
#[derive(Debug, Clone, Copy)]
pub struct StepBudget {
    /// Mixed: tokens per pass at most, the decode tokens included (llama-server's n_batch), so a full
    /// pass is one micro-batch. Batch-invariant: prompt tokens per step. At least one prompt token runs.
    pub tokens: usize,
    /// Batch-invariant shape only: prompts are computed in chunks covering positions
    /// [k·chunk, (k+1)·chunk) and their last token alone ([`chunk_end`]).
    pub chunk: usize,
}

/// How a batch loop runs, the same for every engine.
#[derive(Debug, Clone, Copy)]
pub struct LoopSettings {
    /// Sequences run at once, each with its own cache.
    pub slots: usize,
    /// Reuse cached prefixes (off: every prompt is computed in full).
    pub prefix_cache: bool,
    pub shape: PassShape,
    pub budget: StepBudget,
    /// Host memory for saved sequences (0: no prompt store).
    pub prompt_store_bytes: usize,
}

/// One sequence's part of a forward pass.
struct Member {
    seq: usize,
    position: usize,
    tokens: Vec<i32>,
    logits: bool,
    /// A generated token (not prompt tokens): what fault injection's poisoned jobs fail on.
    generating: bool,
}

pub struct BatchLoop<'c, B: Backend> {
    backend: B,
    counters: &'c LoadCounters,
    /// Running sequences in admission order, so the oldest waiting prompt is computed first.
    slots: Vec<Slot<B::Sampler>>,
    cache: PrefixCache,
    store: PromptStore<B::Saved>,
    policy: ReusePolicy,
    shape: PassShape,
    budget: StepBudget,
    piece: Vec<u8>,
    intake: Intake,
}

impl<'c, B: Backend> BatchLoop<'c, B> {
    pub fn new(backend: B, counters: &'c LoadCounters, settings: LoopSettings) -> Self {
        // Mixed passes round every token by its batch anyway: any match is reused as it is.
        let policy = match settings.shape {
            PassShape::Mixed => reuse_all,
            PassShape::BatchInvariant => backend.reuse_policy(),
        };
        let store_bytes = if settings.prefix_cache { settings.prompt_store_bytes } else { 0 };
        Self {
            backend,
            counters,
            slots: Vec::with_capacity(settings.slots),
            cache: PrefixCache::new(settings.slots, settings.prefix_cache, policy),
            store: PromptStore::new(store_bytes),
            policy,
            shape: settings.shape,
            budget: settings.budget,
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
            match self.shape {
                PassShape::Mixed => self.mixed_step(),
                PassShape::BatchInvariant => {
                    self.decode_pass();
                    self.prefill_passes();
                }
            }
            self.publish_load();
        }
    }

    /// Moves queued jobs into free sequences. Blocks only when nothing is running. Returns false once
    /// the queue is closed (the engine is shutting down).
    fn admit(&mut self, queue: &Receiver<Job>) -> bool {
        while self.cache.has_free() {
            let running_alone = self.slots.iter().any(|s| s.job.alone);
            let job = match self.intake.next(queue, self.slots.len(), running_alone, self.counters) {
                NextJob::Job(job) => job,
                NextJob::Empty => return true,
                NextJob::Closed => return false,
            };
            let placement = self.cache.place(&job.prompt.tokens).expect("checked a free sequence");
            // Copied out before anything touches the sequence (until then it holds what it held), and
            // stored after the restore, so that making room for it cannot evict the entry restored.
            let saved = self.save_displaced();
            let restored = self.restore_stored(placement.seq, &job.prompt.tokens, placement.reuse);
            if let Some((displaced, state, bytes)) = saved {
                self.store.insert(displaced.tokens, displaced.prompt_len, state, bytes);
                self.counters.record_store(self.store.stats());
            }
            let sampler = self.backend.sampler_for(&job.sampling);
            self.slots.push(Slot::new(placement.seq, job, sampler));
            let index = self.slots.len() - 1;
            match (restored, placement.copy_from) {
                (Some(reuse), _) => self.start_prompt(index, reuse, None),
                (None, Some(source)) if placement.wait => self.slots[index].waiting_for = Some((source, placement.reuse)),
                (None, source) => self.start_prompt(index, placement.reuse, source),
            }
        }
        true
    }

    /// A copy of what the last placement overwrites, for the prompt store, unless it holds it already.
    fn save_displaced(&mut self) -> Option<(Displaced, B::Saved, usize)> {
        let displaced = self.cache.take_displaced()?;
        if !self.store.is_enabled() || self.store.holds(&displaced.tokens) {
            return None;
        }
        let (state, bytes) = self.backend.save_sequence(displaced.seq)?;
        Some((displaced, state, bytes))
    }

    /// Restores into `seq` the stored state sharing the longest prefix with `prompt`, when it is worth
    /// more than the `reuse` the sequences offer; returns the tokens `seq` then holds for it (0 when
    /// the restore failed and left it empty), `None` when nothing was restored.
    fn restore_stored(&mut self, seq: usize, prompt: &[i32], reuse: usize) -> Option<usize> {
        let found = self.store.best_match(prompt, prompt.len().saturating_sub(1), self.policy)?;
        if found.reuse < reuse + MIN_USEFUL_PREFIX {
            return None;
        }
        if !self.backend.restore_sequence(seq, self.store.state(found)) {
            return Some(0);
        }
        self.store.record_hit();
        self.counters.record_store(self.store.stats());
        Some(found.reuse)
    }

    /// Readies the sequence of slot `index` for its prompt: the first `reuse` tokens' keys and values
    /// taken from `source` (or already in the sequence when `None`), everything after them dropped.
    fn start_prompt(&mut self, index: usize, reuse: usize, source: Option<usize>) {
        let seq = self.slots[index].seq;
        let reuse = self.backend.start_sequence(seq, reuse, source);
        let slot = &mut self.slots[index];
        self.cache.stop_waiting(seq, &slot.job.prompt.tokens[..reuse]);
        self.counters.record_prompt(slot.job.prompt.tokens.len(), reuse);
        slot.set_cached_prefix(reuse, if source.is_some() { reuse } else { 0 });
    }

    /// Slots waiting for a prefix another sequence computes: take it once it is in; if that sequence
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
                self.cache.release(slot.seq);
            } else {
                i += 1;
            }
        }
    }

    /// The decode members of this step: the next token of every decoding sequence.
    fn decode_members(&mut self) -> Vec<Member> {
        let mut members = Vec::new();
        for slot in &mut self.slots {
            if let Some(token) = slot.next_token.take() {
                members.push(Member { seq: slot.seq, position: slot.position, tokens: vec![token], logits: true, generating: true });
                slot.position += 1;
            }
        }
        members
    }

    /// The next `take` prompt tokens of slot `index` as a pass member; the prompt's last one asks for
    /// logits (its first generated token).
    fn prompt_member(&mut self, index: usize, end: usize) -> Member {
        let slot = &mut self.slots[index];
        let tokens = slot.job.prompt.tokens[slot.prefilled..end].to_vec();
        let member =
            Member { seq: slot.seq, position: slot.position, logits: end == slot.job.prompt.tokens.len(), tokens, generating: false };
        slot.position += member.tokens.len();
        slot.prefilled = end;
        member
    }

    /// One pass: every decoding sequence's token and pending prompt tokens up to the budget, oldest
    /// prompt first (llama-server's step).
    fn mixed_step(&mut self) {
        let mut members = self.decode_members();
        let mut budget = self.budget.tokens.saturating_sub(members.len()).max(1);
        for index in 0..self.slots.len() {
            if budget == 0 {
                break;
            }
            let slot = &self.slots[index];
            if slot.is_prefilling() {
                let end = (slot.prefilled + budget).min(slot.job.prompt.tokens.len());
                budget -= end - slot.prefilled;
                members.push(self.prompt_member(index, end));
            }
        }
        self.pass(members);
    }

    /// Batch-invariant: one token for every decoding sequence, in one pass.
    fn decode_pass(&mut self) {
        let members = self.decode_members();
        self.pass(members);
    }

    /// Batch-invariant: prompt chunks, oldest prompt first, up to the step's budget, each chunk a pass of
    /// its own (see the module's comment).
    fn prefill_passes(&mut self) {
        let mut budget = self.budget.tokens.max(1);
        let prefilling: Vec<usize> = self.slots.iter().filter(|s| s.is_prefilling()).map(|s| s.seq).collect();
        for seq in prefilling {
            if budget == 0 {
                break;
            }
            let Some(index) = self.slots.iter().position(|s| s.seq == seq) else { continue };
            let slot = &self.slots[index];
            let end = chunk_end(slot.prefilled, slot.job.prompt.tokens.len(), self.budget.chunk);
            budget = budget.saturating_sub(end - slot.prefilled);
            let member = self.prompt_member(index, end);
            self.pass(vec![member]);
        }
    }

    fn index_of(&self, seq: usize) -> usize {
        self.slots.iter().position(|s| s.seq == seq).expect("a member of the pass is running")
    }

    /// Runs one forward pass over `members` and samples a token for each member that asked for logits.
    fn pass(&mut self, mut members: Vec<Member>) {
        if members.is_empty() {
            return;
        }
        // In increasing sequence order: with one KV stream per sequence llama.cpp puts sequences into
        // one micro-batch only while their ids are consecutive and increasing in the batch.
        members.sort_by_key(|m| m.seq);
        let poisoned = members.iter().any(|m| m.generating && self.slots[self.index_of(m.seq)].job.poisoned);
        let forward = if poisoned {
            Err("injected fault (MODELPOOL_FAULT_POISON)".to_string())
        } else {
            let runs: Vec<Run> =
                members.iter().map(|m| Run { seq: m.seq, position: m.position, tokens: &m.tokens, logits: m.logits }).collect();
            self.backend.forward(&runs)
        };
        if let Err(error) = forward {
            self.fail(&members, &error);
            return;
        }
        let mut row = 0;
        let mut finished = Vec::new();
        let mut broken = Vec::new();
        for member in members {
            self.cache.extend(member.seq, &member.tokens);
            if !member.logits {
                continue;
            }
            let index = self.index_of(member.seq);
            let slot = &mut self.slots[index];
            let allowed = match slot.constraint.as_mut().map(|c| c.allowed()).transpose() {
                Ok(allowed) => allowed,
                Err(error) => {
                    row += 1;
                    broken.push((member.seq, error));
                    continue;
                }
            };
            let bias = slot.logit_bias.as_ref().map_or(&[][..], LogitBias::current);
            let token = self.backend.sample(slot.sampler.as_mut(), row, Shaping { bias, allowed: allowed.as_ref() });
            row += 1;
            if let Some(Err(error)) = slot.constraint.as_mut().map(|c| c.accept(token)) {
                broken.push((member.seq, error));
                continue;
            }
            let is_end = self.backend.token_text(token, &mut self.piece);
            if let Progress::Finished(reason) = slot.accept(token, &self.piece, is_end) {
                finished.push((member.seq, reason));
            }
        }
        for (seq, reason) in finished {
            let slot = self.slots.remove(self.index_of(seq));
            self.cache.release(seq);
            // Counted before the reply goes out, so a client that asks right after sees it.
            self.counters.served.fetch_add(1, Ordering::Relaxed);
            slot.finish(reason);
        }
        for (seq, error) in broken {
            self.fail_one(seq, PoolError::Internal(error));
        }
        self.publish_load();
    }

    /// Fails one job whose own state broke (its grammar), leaving its sequence's cache as computed.
    fn fail_one(&mut self, seq: usize, error: PoolError) {
        tracing::warn!(%error, "a job failed");
        let slot = self.slots.remove(self.index_of(seq));
        self.cache.release(seq);
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        let _ = slot.job.events.send(JobEvent::Failed(error));
    }

    /// A failed forward pass leaves its sequences' caches unknown: fail their jobs rather than produce
    /// text from a corrupt cache.
    fn fail(&mut self, members: &[Member], error: &str) {
        tracing::warn!(%error, sequences = members.len(), "forward pass failed; failing the jobs in it");
        let failure = forward_failed(members.len(), error);
        for member in members {
            let slot = self.slots.remove(self.index_of(member.seq));
            self.backend.clear_sequence(member.seq);
            self.cache.forget(member.seq);
            self.cache.release(member.seq);
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            let _ = slot.job.events.send(JobEvent::Failed(failure.clone()));
        }
        self.publish_load();
    }

    fn publish_load(&self) {
        self.counters.slots_in_use.store(self.slots.len() as u32, Ordering::Relaxed);
        self.counters.kv_cells_used.store(self.cache.cached_tokens() as u32, Ordering::Relaxed);
    }
}
