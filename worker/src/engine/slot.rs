//! One sequence being generated: its job, where its prompt is, how it samples, the text it has produced
//! so far (whole UTF-8 characters, stop strings held back and cut), and its timings. Engine-agnostic:
//! `S` is the engine's sampler.

use std::time::Instant;

use modelpool::response::{FinishReason, Timings};
use modelpool::text::{StopMatcher, Utf8Stream};

use crate::engine::constraint::Constraint;
use crate::engine::logit_shaping::LogitBias;
use crate::engine::{Completion, Delivery, Job, JobEvent, PROGRESS_EVERY, fault};

pub struct Slot<S> {
    /// Which of the engine's sequences (KV caches) this slot runs in.
    pub seq: usize,
    pub job: Job,
    /// Prompt tokens already in the KV cache.
    pub prefilled: usize,
    /// The token to feed next while decoding (the last one sampled).
    pub next_token: Option<i32>,
    /// Position of the next token in this sequence.
    pub position: usize,
    /// Waiting for this sequence to compute this many tokens of a prefix the slot will copy; the slot
    /// computes nothing meanwhile (see engine::prefix_cache).
    pub waiting_for: Option<(usize, usize)>,
    /// None for greedy decoding, which takes the arg-max of the logits directly.
    pub sampler: Option<S>,
    /// The grammar its text must follow (structured outputs), taken from the job's prompt.
    pub constraint: Option<Constraint>,
    /// What its request adds to the logits (logit bias, penalties); None when nothing.
    pub logit_bias: Option<LogitBias>,
    utf8: Utf8Stream,
    stop: StopMatcher,
    text: String,
    pub generated: u32,
    /// The generated token ids, in order.
    token_ids: Vec<u32>,
    /// Prompt tokens whose keys and values came from the prefix cache rather than being computed.
    cached_tokens: u32,
    /// Of those, tokens copied from another sequence's cache.
    copied_tokens: u32,
    admitted: Instant,
    prefill_done: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    inter_token_ms: Vec<f32>,
    /// Text generated but not yet sent (see [`Delivery`]), and when text was last sent.
    unsent: String,
    last_sent: Option<Instant>,
}

/// What happened to a slot after it received a token.
pub enum Progress {
    Continue,
    Finished(FinishReason),
}

impl<S> Slot<S> {
    pub fn new(seq: usize, mut job: Job, sampler: Option<S>) -> Self {
        let stop = StopMatcher::new(&job.sampling.stop);
        let constraint = job.prompt.constraint.take();
        let logit_bias = LogitBias::for_params(&job.sampling);
        Self {
            seq,
            job,
            prefilled: 0,
            next_token: None,
            position: 0,
            waiting_for: None,
            sampler,
            constraint,
            logit_bias,
            utf8: Utf8Stream::default(),
            stop,
            text: String::new(),
            generated: 0,
            token_ids: Vec::new(),
            cached_tokens: 0,
            copied_tokens: 0,
            admitted: Instant::now(),
            prefill_done: None,
            first_token: None,
            last_token: None,
            inter_token_ms: Vec::new(),
            unsent: String::new(),
            last_sent: None,
        }
    }

    /// Starts the slot's prompt past the first `reuse` tokens, which its cache now holds (`copied` of
    /// them were copied from another sequence); a slot that was waiting for a prefix waits no longer.
    pub fn set_cached_prefix(&mut self, reuse: usize, copied: usize) {
        self.waiting_for = None;
        self.prefilled = reuse;
        self.position = reuse;
        self.cached_tokens = reuse as u32;
        self.copied_tokens = copied as u32;
    }

    /// Whether it is computing its prompt (not waiting to copy a prefix, not decoding).
    pub fn is_prefilling(&self) -> bool {
        self.waiting_for.is_none() && self.prefilled < self.job.prompt.tokens.len()
    }

    /// The client has gone away (its receiver was dropped): stop working for it.
    pub fn is_abandoned(&self) -> bool {
        self.job.events.is_closed()
    }

    /// Accepts a sampled token and its bytes; `is_end` says the model ended the generation with it.
    pub fn accept(&mut self, token: i32, bytes: &[u8], is_end: bool) -> Progress {
        let now = Instant::now();
        self.prefill_done.get_or_insert(now);
        self.first_token.get_or_insert(now);
        if let Some(last) = self.last_token.replace(now) {
            self.inter_token_ms.push(ms(now - last) as f32);
        }
        if is_end && !self.job.sampling.ignore_eos {
            return Progress::Finished(FinishReason::Eos);
        }
        self.generated += 1;
        fault::stall_once_at_second_token(self.generated);
        self.token_ids.push(token as u32);
        if let Some(bias) = &mut self.logit_bias {
            bias.accept(token);
        }
        let piece = self.utf8.push(bytes);
        let step = self.stop.push(&piece);
        self.emit(step.emit);
        self.send_if_due(now);
        if step.stopped {
            return Progress::Finished(FinishReason::StopSequence);
        }
        // A complete structured output can only be followed by an end token: end it now rather than
        // spend a forward pass computing that token.
        if self.constraint.as_ref().is_some_and(Constraint::is_complete) {
            return Progress::Finished(FinishReason::Eos);
        }
        if self.generated >= self.job.prompt.max_tokens {
            return Progress::Finished(FinishReason::Length);
        }
        self.next_token = Some(token);
        Progress::Continue
    }

    fn emit(&mut self, piece: String) {
        if !piece.is_empty() {
            if self.job.delivery != Delivery::Whole {
                self.unsent.push_str(&piece);
            }
            self.text.push_str(&piece);
        }
    }

    /// Sends the unsent text when the job's delivery says it is time (see [`Delivery`]).
    fn send_if_due(&mut self, now: Instant) {
        let since_last = |interval| self.last_sent.is_none_or(|sent| now.saturating_duration_since(sent) >= interval);
        let due = match self.job.delivery {
            Delivery::Whole => false,
            Delivery::Pieces => !self.unsent.is_empty() || since_last(PROGRESS_EVERY),
            Delivery::Every(interval) => since_last(interval),
        };
        if due {
            self.last_sent = Some(now);
            let _ = self.job.events.send(JobEvent::Text(std::mem::take(&mut self.unsent)));
        }
    }

    /// Sends the final accounting. Held-back text (a partial stop string, a dangling byte) is flushed
    /// unless a stop string ended the generation.
    pub fn finish(mut self, reason: FinishReason) {
        if reason != FinishReason::StopSequence {
            let tail = self.utf8.finish();
            let mut rest = self.stop.push(&tail).emit;
            rest.push_str(&self.stop.finish());
            self.emit(rest);
        }
        if !self.unsent.is_empty() {
            let _ = self.job.events.send(JobEvent::Text(std::mem::take(&mut self.unsent)));
        }
        let end = Instant::now();
        let arrived = self.job.arrived;
        let prefill_done = self.prefill_done.unwrap_or(end);
        let first_token = self.first_token.unwrap_or(end);
        let decode_ms = ms(end - first_token);
        let timings = Timings {
            queue_ms: ms(self.admitted.saturating_duration_since(arrived)),
            prefill_ms: ms(prefill_done.saturating_duration_since(self.admitted)),
            ttft_ms: ms(first_token.saturating_duration_since(arrived)),
            decode_ms,
            total_ms: ms(end.saturating_duration_since(arrived)),
            // The first token comes out of prefill; the others are what decode produced.
            decode_tokens_per_second: if decode_ms > 0.0 && self.generated > 1 {
                f64::from(self.generated - 1) * 1000.0 / decode_ms
            } else {
                0.0
            },
            coordinator_queue_ms: 0.0,
            inter_token_ms: std::mem::take(&mut self.inter_token_ms),
        };
        let completion = Completion {
            text: std::mem::take(&mut self.text),
            prompt_tokens: self.job.prompt.tokens.len() as u32,
            completion_tokens: self.generated,
            token_ids: std::mem::take(&mut self.token_ids),
            cached_tokens: self.cached_tokens,
            copied_tokens: self.copied_tokens,
            finish_reason: reason,
            timings,
        };
        let _ = self.job.events.send(JobEvent::Done(completion));
    }
}

fn ms(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The index of the largest logit; the first one on ties, as llama.cpp's greedy sampler picks.
pub fn argmax(logits: &[f32]) -> i32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as i32
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0]), 1);
        assert_eq!(argmax(&[2.0]), 0);
    }
}
