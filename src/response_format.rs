//! Structured outputs: what a request asks its text to be (OpenAI's `response_format`). Free text, any
//! JSON object, or JSON matching a JSON Schema; the worker constrains decoding to it (see the worker's
//! `engine::constraint`) with llguidance, the library llama.cpp and mistral.rs use.
//!
//! A schema is checked here, where a request is validated: llguidance compiles it into a parser over a
//! vocabulary of the 256 single bytes (no model tokenizer needed) and asks which bytes may start the
//! output. One it cannot compile, or one no JSON value can match (`{"$ref": "#"}` refers only to
//! itself), is refused with its reason before the prompt is queued, so a client never gets a 200 and a
//! stream that fails later. Every token's text starts with some byte, so a schema no byte can start is
//! one no model's token can start either: the check refuses nothing a model could answer.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};

/// The most bytes of JSON Schema text one request may carry.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// What the generated text must be.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema (already checked to compile).
    JsonSchema(Value),
}

impl ResponseFormat {
    /// A JSON Schema request, checked: `schema` must be a JSON object of at most [`MAX_SCHEMA_BYTES`]
    /// that llguidance compiles. The error is the reason, for the caller to name its field.
    pub fn json_schema(schema: Value) -> Result<Self, String> {
        let bytes = serde_json::to_vec(&schema).map(|text| text.len()).unwrap_or(usize::MAX);
        if bytes > MAX_SCHEMA_BYTES {
            return Err(format!("{bytes} bytes of schema, limit {MAX_SCHEMA_BYTES}"));
        }
        if !schema.is_object() && !schema.is_boolean() {
            return Err("must be a JSON Schema: an object (or true/false)".into());
        }
        let format = Self::JsonSchema(schema);
        compile_check(&format.grammar_schema().expect("a schema"))?;
        Ok(format)
    }

    /// The schema llguidance compiles for this format, with this pool's JSON layout; `None` for text.
    pub fn grammar_schema(&self) -> Option<Value> {
        let mut schema = match self {
            Self::Text => return None,
            Self::JsonObject => json!({"type": "object"}),
            Self::JsonSchema(schema) => schema.clone(),
        };
        // JSON laid out on one line (`{"a": 1, "b": [2, 3]}`) unless the schema says otherwise: with
        // free whitespace a small model can spend its whole max_tokens on newlines and indentation
        // inside a value that never closes.
        if let Some(object) = schema.as_object_mut()
            && !object.contains_key("x-guidance")
        {
            object.insert("x-guidance".into(), json!({"whitespace_flexible": false}));
        }
        Some(schema)
    }

    /// About the bytes this format holds in memory while its request waits, for the queue's byte bound:
    /// a parsed schema keeps every node in a map or a vector, some four times its text.
    pub fn approximate_bytes(&self) -> usize {
        match self {
            Self::JsonSchema(schema) => 4 * serde_json::to_vec(schema).map(|text| text.len()).unwrap_or(0),
            _ => 0,
        }
    }
}

/// Compiles `schema` as the worker will, over single bytes, and checks that some output can start.
fn compile_check(schema: &Value) -> Result<(), String> {
    let factory = byte_parser_factory()?;
    // A panic inside the compiler on an odd schema must be a refusal, not a crashed daemon.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let parser = factory.create_parser(TopLevelGrammar::from_json_schema(schema.clone())).map_err(|e| format!("{e:#}"))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(error);
        }
        match matcher.compute_mask() {
            Ok(allowed) if !allowed.is_zero() => Ok(()),
            _ => Err("no JSON value matches this schema".to_string()),
        }
    }));
    outcome.unwrap_or_else(|_| Err("the schema compiler failed on this schema".into()))
}

/// llguidance's parser factory over a vocabulary of the 256 bytes and one end token, made once.
fn byte_parser_factory() -> Result<&'static Arc<ParserFactory>, String> {
    static FACTORY: OnceLock<Result<Arc<ParserFactory>, String>> = OnceLock::new();
    FACTORY
        .get_or_init(|| {
            const END: u32 = 256;
            // The end token's bytes start with 0xFF, llguidance's mark of a special token.
            let words: Vec<Vec<u8>> = (0..=255u8).map(|byte| vec![byte]).chain([b"\xFF[END]".to_vec()]).collect();
            parser_factory(&words, &[END])
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// llguidance's parser factory over a vocabulary: each token's bytes by id (a special token's marked
/// with a leading 0xFF, llguidance's convention, so no grammar can spell it) and the ids that end a
/// generation (at least one).
pub fn parser_factory(words: &[Vec<u8>], end_tokens: &[u32]) -> Result<Arc<ParserFactory>, String> {
    let first_end = *end_tokens.first().ok_or("no end-of-generation token")?;
    let trie = TokTrie::from(&TokRxInfo::new(words.len() as u32, first_end), words).with_eos_tokens(end_tokens);
    let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| format!("{e:#}"))?;
    // Its messages would go to stderr; errors reach the request instead.
    factory.quiet();
    Ok(Arc::new(factory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_that_compiles_is_accepted_and_laid_out_on_one_line() {
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let format = ResponseFormat::json_schema(schema).unwrap();
        assert_eq!(format.grammar_schema().unwrap()["x-guidance"]["whitespace_flexible"], false);
        assert_eq!(ResponseFormat::JsonObject.grammar_schema().unwrap()["type"], "object");
        assert_eq!(ResponseFormat::Text.grammar_schema(), None);
    }

    #[test]
    fn schemas_the_compiler_refuses_are_refused_with_its_reason() {
        let unknown_type = ResponseFormat::json_schema(json!({"type": "strnig"})).unwrap_err();
        assert!(unknown_type.contains("strnig"), "{unknown_type}");
        let dangling_ref = ResponseFormat::json_schema(json!({"$ref": "#/$defs/missing"})).unwrap_err();
        assert!(dangling_ref.contains("missing"), "{dangling_ref}");
        assert!(ResponseFormat::json_schema(json!("a string")).unwrap_err().contains("JSON Schema"));
        assert!(ResponseFormat::json_schema(json!([1, 2])).is_err());
    }

    #[test]
    fn schemas_no_value_can_match_are_refused() {
        for schema in [
            json!({"$ref": "#/definitions/a", "definitions": {"a": {"$ref": "#/definitions/a"}}}),
            json!({"$ref": "#"}),
            json!(false),
            json!({"type": "integer", "minimum": 10, "maximum": 1}),
        ] {
            let error = ResponseFormat::json_schema(schema.clone()).expect_err(&schema.to_string());
            assert!(!error.is_empty(), "{schema}");
        }
        // A recursive schema with a way out is fine.
        let tree = json!({"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}});
        ResponseFormat::json_schema(tree).unwrap();
    }

    #[test]
    fn a_schema_past_the_byte_limit_is_refused_before_compiling() {
        let huge = json!({"type": "string", "description": "x".repeat(MAX_SCHEMA_BYTES)});
        let error = ResponseFormat::json_schema(huge).unwrap_err();
        assert!(error.contains(&MAX_SCHEMA_BYTES.to_string()), "{error}");
    }
}
