//! What is done to a row of logits before a token is drawn from it: a request's logit bias and its
//! frequency and presence penalties (OpenAI's), and its grammar's mask ([`super::constraint`]). Both
//! engines apply it the same way ([`Shaping::apply`]); a request that asks for none of it samples from
//! the engine's own logits, uncopied.

use std::collections::HashMap;

use modelpool::{PoolError, SamplingParams};
use toktrie::SimpleVob;

use super::constraint::allows;

/// One running request's additions to the logits: its fixed logit bias, and its penalties over the
/// tokens generated so far in the reply. Penalties count only the reply, not the prompt, as OpenAI
/// and vLLM count them: a long shared preamble must not push the model off the words of its own
/// instructions.
#[derive(Debug, Clone)]
pub struct LogitBias {
    frequency_penalty: f32,
    presence_penalty: f32,
    /// How many times each token was generated, when a penalty is set.
    counts: HashMap<i32, u32>,
    /// The additions for the next token: the request's logit bias (its first `fixed` entries), then one
    /// entry per generated token when penalised.
    current: Vec<(i32, f32)>,
    fixed: usize,
}

impl LogitBias {
    /// None when the request adds nothing to the logits.
    pub fn for_params(params: &SamplingParams) -> Option<Self> {
        params.shapes_logits().then(|| {
            let current: Vec<(i32, f32)> = params.logit_bias.iter().map(|&(token, bias)| (token as i32, bias)).collect();
            Self {
                fixed: current.len(),
                current,
                frequency_penalty: params.frequency_penalty,
                presence_penalty: params.presence_penalty,
                counts: HashMap::new(),
            }
        })
    }

    /// Counts a generated token for the penalties.
    pub fn accept(&mut self, token: i32) {
        if self.frequency_penalty == 0.0 && self.presence_penalty == 0.0 {
            return;
        }
        *self.counts.entry(token).or_default() += 1;
        self.current.truncate(self.fixed);
        let (frequency, presence) = (self.frequency_penalty, self.presence_penalty);
        self.current.extend(self.counts.iter().map(|(&token, &count)| (token, -(count as f32 * frequency + presence))));
    }

    /// What to add to the logits for the next token; a token may appear twice (its bias and its
    /// penalty), and the additions sum.
    pub fn current(&self) -> &[(i32, f32)] {
        &self.current
    }
}

/// The shaping of one logits row: additions, then a mask.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shaping<'a> {
    pub bias: &'a [(i32, f32)],
    pub allowed: Option<&'a SimpleVob>,
}

impl Shaping<'_> {
    /// Whether the row is sampled as the engine computed it.
    pub fn is_none(&self) -> bool {
        self.bias.is_empty() && self.allowed.is_none()
    }

    /// A copy of `logits` with the additions made and the tokens the grammar forbids taken out
    /// (negative infinity). Ids past the row (never in the model's vocabulary) are left out.
    pub fn apply(&self, logits: &[f32]) -> Vec<f32> {
        let mut shaped = logits.to_vec();
        for &(token, add) in self.bias {
            if let Some(logit) = usize::try_from(token).ok().and_then(|t| shaped.get_mut(t)) {
                *logit += add;
            }
        }
        if let Some(allowed) = self.allowed {
            for (id, logit) in shaped.iter_mut().enumerate() {
                if !allows(allowed, id) {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        shaped
    }
}

/// Refuses a logit bias on an id the model's vocabulary does not have (the ids are sorted, so the last
/// is the largest).
pub fn check_vocabulary(params: &SamplingParams, vocab_size: usize) -> Result<(), PoolError> {
    match params.logit_bias.last() {
        Some(&(token, _)) if token as usize >= vocab_size => Err(PoolError::invalid(
            "sampling.logit_bias",
            format!("token id {token} is not in the model's vocabulary of {vocab_size} tokens"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::slot::argmax;

    fn params(frequency_penalty: f32, presence_penalty: f32, logit_bias: Vec<(u32, f32)>) -> SamplingParams {
        SamplingParams { frequency_penalty, presence_penalty, logit_bias, ..SamplingParams::default() }
    }

    fn shaped(bias: &LogitBias, logits: &[f32]) -> Vec<f32> {
        Shaping { bias: bias.current(), allowed: None }.apply(logits)
    }

    #[test]
    fn nothing_set_is_no_shaping() {
        assert!(LogitBias::for_params(&SamplingParams::default()).is_none());
        assert!(Shaping::default().is_none());
    }

    #[test]
    fn a_bias_moves_the_arg_max_and_ids_past_the_row_are_ignored() {
        let bias = LogitBias::for_params(&params(0.0, 0.0, vec![(0, 100.0), (2, -100.0), (99, 100.0)])).unwrap();
        let logits = [0.0, 1.0, 5.0];
        let out = shaped(&bias, &logits);
        assert_eq!(out, vec![100.0, 1.0, -95.0]);
        assert_eq!(argmax(&out), 0);
    }

    #[test]
    fn penalties_follow_openai_formula_over_the_reply() {
        // logit - count * frequency - (count > 0) * presence
        let mut bias = LogitBias::for_params(&params(0.5, 1.0, vec![(1, 2.0)])).unwrap();
        for token in [1, 1, 3] {
            bias.accept(token);
        }
        let out = shaped(&bias, &[0.0, 0.0, 0.0, 0.0]);
        assert_eq!(out, vec![0.0, 2.0 - 2.0 * 0.5 - 1.0, 0.0, -0.5 - 1.0]);
        // A bias alone counts nothing.
        let mut plain = LogitBias::for_params(&params(0.0, 0.0, vec![(1, 2.0)])).unwrap();
        plain.accept(1);
        assert_eq!(plain.current(), &[(1, 2.0)]);
    }

    #[test]
    fn the_mask_wins_over_a_bias() {
        let mut allowed = SimpleVob::alloc(3);
        allowed.allow_token(1);
        let bias = [(0, 100.0)];
        let out = Shaping { bias: &bias, allowed: Some(&allowed) }.apply(&[0.0, 1.0, 2.0]);
        assert!(out[0].is_infinite() && out[2].is_infinite());
        assert_eq!(argmax(&out), 1);
    }

    #[test]
    fn an_id_past_the_vocabulary_is_refused_naming_the_field() {
        let error = check_vocabulary(&params(0.0, 0.0, vec![(3, 1.0), (49152, 1.0)]), 49152).unwrap_err();
        assert!(error.to_string().contains("sampling.logit_bias") && error.to_string().contains("49152"), "{error}");
        assert!(check_vocabulary(&params(0.0, 0.0, vec![(49151, 1.0)]), 49152).is_ok());
    }
}
