//! An HTTP request's JSON body as the type its route takes, or a 400 that names the field at fault
//! (`max_tokens`, `messages[0].content`, `stream_options.include_usage`) as OpenAI's `param` and in the
//! message; serde_json alone says only "at line 1 column 62".

use serde::de::DeserializeOwned;
use serde_path_to_error::{Path, Segment};

use crate::openai::{ApiError, Sampling};

/// `body` as `T`, or the 400 saying what is wrong with it and where.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_json::<T>(body).map_err(|error| {
        // serde's `flatten` (the sampling fields both endpoints share) hides where in them a bad value
        // is; read those fields alone to find it.
        let error = match error.field {
            None => from_json::<Sampling>(body).err().filter(|inner| inner.field.is_some()).unwrap_or(error),
            Some(_) => error,
        };
        ApiError {
            status: 400,
            message: format!("invalid {}: {}", error.field.as_deref().unwrap_or("JSON body"), error.reason),
            kind: "invalid_request_error",
            param: error.field,
            code: None,
        }
    })
}

/// Why a body is not the JSON a route takes, and where in it (None: the body as a whole).
struct JsonError {
    field: Option<String>,
    reason: serde_json::Error,
}

/// `body` parsed as `T`, with the field that failed if one did.
fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let mut field = field_name(error.path());
        let reason = error.into_inner();
        // A field left out fails at its object, not at itself; serde's message names it.
        if let Some(missing) = reason.to_string().strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
            field = Some(field.map_or(missing.to_string(), |parent| format!("{parent}.{missing}")));
        }
        JsonError { field, reason }
    })?;
    // As serde_json::from_slice: nothing but whitespace may follow the value.
    deserializer.end().map_err(|reason| JsonError { field: None, reason })?;
    Ok(value)
}

/// A path as the API's `param` names fields (`messages[0].content`), up to where the parser could no
/// longer tell (a body cut short); None for the body as a whole.
fn field_name(path: &Path) -> Option<String> {
    let mut field = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Unknown => break,
        }
    }
    (!field.is_empty()).then_some(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{ChatCompletionRequest, CompletionRequest};

    fn refusal<T: DeserializeOwned>(body: &str) -> (Option<String>, String) {
        let error = parse::<T>(body.as_bytes()).err().expect("refused");
        assert_eq!(error.status, 400);
        (error.param, error.message)
    }

    const HI: &str = r#""messages": [{"role": "user", "content": "hi"}]"#;

    #[test]
    fn a_wrong_value_is_named_by_its_field_shared_or_not() {
        let chat = |rest: &str| refusal::<ChatCompletionRequest>(&format!("{{{HI}, {rest}}}"));
        let (param, message) = chat(r#""max_tokens": "4""#);
        assert_eq!(param.as_deref(), Some("max_tokens"));
        assert!(message.starts_with("invalid max_tokens: invalid type: string \"4\""), "{message}");
        assert_eq!(chat(r#""max_tokens": -1"#).0.as_deref(), Some("max_tokens"));
        assert_eq!(chat(r#""temperature": "hot""#).0.as_deref(), Some("temperature"));
        assert_eq!(chat(r#""stream_options": {"include_usage": "x"}"#).0.as_deref(), Some("stream_options.include_usage"));
        let (param, message) = chat(r#""stop": 5"#);
        assert_eq!(param.as_deref(), Some("stop"));
        assert!(message.contains("must be a string or a list of strings"), "{message}");
        let (param, message) = refusal::<ChatCompletionRequest>(r#"{"messages": [{"role": "user", "content": 5}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].content"));
        assert!(message.contains("must be a string or a list of content parts"), "{message}");
        assert_eq!(refusal::<ChatCompletionRequest>(r#"{"messages": [{"role": 5}]}"#).0.as_deref(), Some("messages[0].role"));
        assert_eq!(refusal::<CompletionRequest>(r#"{"prompt": ["a", 5]}"#).0.as_deref(), Some("prompt"));
        assert_eq!(refusal::<CompletionRequest>(r#"{"prompt": "a", "seed": 1.5}"#).0.as_deref(), Some("seed"));
    }

    #[test]
    fn a_missing_field_is_named_and_a_broken_body_is_the_body() {
        assert_eq!(refusal::<ChatCompletionRequest>(r#"{"prompt": "x"}"#).0.as_deref(), Some("messages"));
        assert_eq!(refusal::<ChatCompletionRequest>(r#"{"messages": [{"content": "hi"}]}"#).0.as_deref(), Some("messages[0].role"));
        for broken in [r#"{"messages": [{"role": "user"}], "max_tokens": 4"#, "[]", "", r#"{"messages": []} x"#] {
            let (param, message) = refusal::<ChatCompletionRequest>(broken);
            assert_eq!(param, None, "{broken}");
            assert!(message.starts_with("invalid JSON body: "), "{message}");
        }
    }

    #[test]
    fn a_valid_body_parses_as_before() {
        let request: ChatCompletionRequest = parse(format!(r#"{{{HI}, "max_tokens": 4, "stop": ["a"]}}"#).as_bytes()).unwrap();
        assert_eq!(request.sampling.max_tokens, Some(4));
        assert_eq!(request.messages.len(), 1);
    }
}
