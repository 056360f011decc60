//! Whether a prompt can fit one slot's context, decided before it is tokenized: the coordinator at
//! admission and the worker before its tokenizer runs both refuse from this cheap bound, so that a
//! megabyte of text that can never run costs neither a queue place nor a tokenizer pass. The worker's
//! exact count after tokenizing still decides every prompt that passes.

use crate::PoolError;
use crate::request::{PredictRequest, Prompt};

/// A slot's context, and the most bytes of text one token of the model's vocabulary covers (`None`
/// when the tokenizer gives no such bound, for instance when it can drop bytes).
#[derive(Debug, Clone, Copy)]
pub struct ContextFit {
    pub context: u32,
    pub max_token_bytes: Option<u32>,
}

impl ContextFit {
    /// Why `request` can never run in such a slot, if it cannot: its text is more tokens than the slot
    /// leaves it even if every token covered the most bytes any does. What it leaves: the context less
    /// max_tokens for a strict request (`max_tokens` alone may fill it), else all but the one token
    /// generation needs (it stops where the context ends). `field_prefix` goes before the field names
    /// (a batch's `requests[3].`).
    pub fn refusal(&self, request: &PredictRequest, field_prefix: &str) -> Option<PoolError> {
        let context = self.context;
        let max_tokens = if request.sampling.strict_max_tokens { request.sampling.max_tokens } else { 1 };
        if max_tokens >= context {
            return Some(PoolError::invalid(
                format!("{field_prefix}sampling.max_tokens"),
                format!("{max_tokens} does not fit the context of {context} tokens per slot (prompt included)"),
            ));
        }
        let per_token = u64::from(self.max_token_bytes.filter(|&bytes| bytes > 0)?);
        let (field, text_bytes) = match &request.prompt {
            // Chat templates commonly trim each message, so only the trimmed text is sure to be tokenized.
            Prompt::Chat(messages) => ("chat.messages", messages.iter().map(|m| m.content.trim().len() as u64).sum::<u64>()),
            Prompt::Raw(text) => ("prompt", text.len() as u64),
        };
        let fewest_tokens = text_bytes.div_ceil(per_token);
        let room = u64::from(context - max_tokens);
        (fewest_tokens > room).then(|| {
            PoolError::invalid(
                format!("{field_prefix}{field}"),
                format!(
                    "{text_bytes} bytes of text are at least {fewest_tokens} tokens (no token covers more than \
                     {per_token} bytes), more than the {room} a slot of {context} tokens leaves beside {max_tokens} to generate"
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str, max_tokens: u32) -> PredictRequest {
        let mut request = PredictRequest { prompt: Prompt::Raw(text.into()), ..PredictRequest::user("", max_tokens) };
        request.sampling.strict_max_tokens = true;
        request
    }

    #[test]
    fn refuses_only_what_cannot_fit_whatever_the_tokenizer_makes_of_it() {
        let fit = ContextFit { context: 100, max_token_bytes: Some(10) };
        // 90 tokens of room: 900 bytes might fit (every token 10 bytes), 901 cannot.
        assert!(fit.refusal(&raw(&"a".repeat(900), 10), "").is_none());
        let refused = fit.refusal(&raw(&"a".repeat(901), 10), "requests[2].").unwrap().to_string();
        assert!(refused.contains("requests[2].prompt") && refused.contains("at least 91 tokens"), "{refused}");
        let refused = fit.refusal(&raw("hi", 100), "").unwrap().to_string();
        assert!(refused.contains("sampling.max_tokens"), "{refused}");
        // Chat text counts trimmed, as templates send it.
        let chat = PredictRequest::user(format!("  {}  ", "b".repeat(900)), 10);
        assert!(fit.refusal(&chat, "").is_none());
        // Without a bound from the tokenizer only max_tokens is checked.
        let unbounded = ContextFit { context: 100, max_token_bytes: None };
        assert!(unbounded.refusal(&raw(&"a".repeat(100_000), 10), "").is_none());
    }

    #[test]
    fn a_lenient_request_leaves_its_text_all_but_the_one_token_it_generates() {
        let fit = ContextFit { context: 100, max_token_bytes: Some(10) };
        let lenient = |text: &str, max_tokens| {
            let mut request = raw(text, max_tokens);
            request.sampling.strict_max_tokens = false;
            request
        };
        // DSPy's default max_tokens is no refusal: generation stops where the context ends.
        assert!(fit.refusal(&lenient("hi", 4000), "").is_none());
        // 99 tokens of room whatever max_tokens says: 990 bytes might fit, 991 cannot.
        assert!(fit.refusal(&lenient(&"a".repeat(990), 4000), "").is_none());
        let refused = fit.refusal(&lenient(&"a".repeat(991), 4000), "").unwrap().to_string();
        assert!(refused.contains("prompt") && refused.contains("at least 100 tokens"), "{refused}");
    }
}
