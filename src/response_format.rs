//! Structured outputs: what a request asks its text to be (OpenAI's `response_format`). Free text, any
//! JSON object, or JSON matching a JSON Schema; the worker constrains decoding to it (see the worker's
//! `engine::constraint`) with llguidance, the library llama.cpp and mistral.rs use.
//!
//! A schema is checked here, where a request is validated, by compiling it with llguidance's JSON Schema
//! compiler (no tokenizer needed): one it cannot compile is refused with its reason before the prompt
//! is queued, so a client never gets a 200 and a stream that fails later.

use llguidance::JsonCompileOptions;
use llguidance::api::ParserLimits;
use serde_json::{Value, json};

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

/// Compiles `schema` with llguidance's JSON Schema compiler, as the worker will, without a tokenizer.
fn compile_check(schema: &Value) -> Result<(), String> {
    let builder = llguidance::GrammarBuilder::new(None, ParserLimits::default());
    // A panic inside the compiler on an odd schema must be a refusal, not a crashed daemon.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut schema = schema.clone();
        let options = match schema.as_object_mut().and_then(|o| o.remove("x-guidance")) {
            Some(options) => serde_json::from_value::<JsonCompileOptions>(options).map_err(|e| format!("x-guidance: {e}"))?,
            None => JsonCompileOptions::default(),
        };
        options.json_to_llg(builder, schema).map(|_| ()).map_err(|e| format!("{e:#}"))
    }));
    outcome.unwrap_or_else(|_| Err("the schema compiler failed on this schema".into()))
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
    fn a_schema_past_the_byte_limit_is_refused_before_compiling() {
        let huge = json!({"type": "string", "description": "x".repeat(MAX_SCHEMA_BYTES)});
        let error = ResponseFormat::json_schema(huge).unwrap_err();
        assert!(error.contains(&MAX_SCHEMA_BYTES.to_string()), "{error}");
    }
}
