//! Constrained decoding for structured outputs ([`ResponseFormat`]): before each token of a constrained
//! sequence is sampled, llguidance's parser gives the tokens its grammar allows next, and every other
//! token's logit is taken out; once the JSON is complete only an end token is allowed. Per sequence, so a
//! constrained request still shares prefixes and batches with the others.
//!
//! The token trie llguidance walks is built once per engine, from the same tokenizer both engines
//! encode with, the first time a request asks for a format (a worker that never serves one never pays
//! for it).

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use model_input::tokenizer::Tokenizer;
use modelpool::PoolError;
use modelpool::response_format::ResponseFormat;
use toktrie::SimpleVob;

/// Makes a [`Constraint`] per request; one per engine.
#[derive(Default)]
pub struct Constraints {
    factory: OnceLock<Result<Arc<ParserFactory>, String>>,
}

impl Constraints {
    /// The constraint for `format` (`None` for free text). A schema the parser cannot take is an invalid
    /// argument naming the field; admission has compiled it once already, so this is rare.
    pub fn for_format(&self, format: &ResponseFormat, tokenizer: &Tokenizer) -> Result<Option<Constraint>, PoolError> {
        let Some(schema) = format.grammar_schema() else { return Ok(None) };
        let factory = self.factory.get_or_init(|| parser_factory(tokenizer)).as_ref().map_err(|e| PoolError::Internal(e.clone()))?;
        let parser = factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| PoolError::invalid("sampling.response_format.json_schema", format!("{e:#}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(PoolError::invalid("sampling.response_format.json_schema", error));
        }
        Ok(Some(Constraint { matcher }))
    }
}

/// llguidance's view of the vocabulary: every token's bytes (special tokens marked with a leading 0xFF,
/// llguidance's convention, so no grammar can spell them) and the tokens that end a generation.
fn parser_factory(tokenizer: &Tokenizer) -> Result<Arc<ParserFactory>, String> {
    if tokenizer.eos.is_empty() {
        return Err("the tokenizer names no end-of-generation token".into());
    }
    let words: Vec<Vec<u8>> = (0..tokenizer.vocab_size() as u32)
        .map(|id| match tokenizer.is_special(id) {
            true => [&[0xFF][..], &tokenizer.token_bytes(id, true)].concat(),
            false => tokenizer.token_bytes(id, false),
        })
        .collect();
    modelpool::response_format::parser_factory(&words, &tokenizer.eos)
}

/// One sequence's grammar state.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

impl Constraint {
    /// The tokens allowed next: what the grammar can continue with, or only the end tokens once it is
    /// complete.
    pub fn allowed(&mut self) -> Result<SimpleVob, String> {
        self.matcher.compute_mask_or_eos().map_err(|e| format!("constrained decoding: {e:#}"))
    }

    /// Advances the grammar past a sampled token (one [`Constraint::allowed`] let through).
    pub fn accept(&mut self, token: i32) -> Result<(), String> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher.consume_token(token as u32).map_err(|e| format!("constrained decoding: {e:#}"))
    }

    /// Whether the output is complete: the grammar allows nothing more but an end token.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Whether `allowed` lets token `id` through; ids past the grammar's vocabulary (a model's padding
/// rows) never are.
pub fn allows(allowed: &SimpleVob, id: usize) -> bool {
    id < allowed.len() && allowed.is_allowed(id as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_only_allowed_tokens_and_drops_ids_past_the_vocabulary() {
        let mut allowed = SimpleVob::alloc(4);
        allowed.allow_token(1);
        allowed.allow_token(3);
        let shaping = crate::engine::logit_shaping::Shaping { bias: &[], allowed: Some(&allowed) };
        let out = shaping.apply(&[5.0, 1.0, 9.0, 2.0, 7.0]);
        assert_eq!(out[1], 1.0);
        assert_eq!(out[3], 2.0);
        assert!(out[0].is_infinite() && out[2].is_infinite() && out[4].is_infinite());
        assert_eq!(crate::engine::slot::argmax(&out), 3);
    }
}
