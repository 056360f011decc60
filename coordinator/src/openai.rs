//! OpenAI's wire format, as far as the pool serves it: chat and text completion requests turned into the
//! pool's own requests (the domain [`PredictRequest`], checked by the same [`PredictRequest::validate`]
//! as the gRPC door's), responses, stream chunks and errors turned back. No I/O here; see `http`.

use std::collections::BTreeMap;

use modelpool::request::SCHEMA_FIELD;
use modelpool::response::{FinishReason, PredictResponse};
use modelpool::response_format::ResponseFormat;
use modelpool::{ChatMessage, PoolError, PredictRequest, Prompt, Role, SamplingParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::unserved_fields::Unsupported;

/// A single stop string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "must be a string or a list of strings")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string, or a list of parts of which the text parts are joined.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "must be a string or a list of content parts")]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default, deserialize_with = "null_is_false")]
    pub include_usage: bool,
}

/// A flag sent as `null` means what leaving it out means, as in OpenAI's API (clients such as the
/// Python SDK's callers write `"stream": null`).
fn null_is_false<'de, D: serde::Deserializer<'de>>(value: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(value)?.unwrap_or(false))
}

/// The sampling fields both endpoints share.
#[derive(Debug, Deserialize)]
pub struct Sampling {
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Extension (llama-server, vLLM): generate exactly max_tokens, an end-of-generation token does not
    /// stop it. Fixed-shape benchmarks rely on it.
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Extension (llama-server, vLLM): keep only the k most likely tokens before sampling.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Structured outputs: `{"type": "text" | "json_object" | "json_schema", ...}` ([`response_format`]).
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Token ids (as the JSON object's keys) and what to add to their logits.
    #[serde(default)]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// What OpenAI's API offers and the pool does not serve, kept only to refuse a request that asks
    /// for it ([`Unsupported::refusal`]) rather than answer as if it had not asked.
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "must be a string or a list of strings")]
pub enum PromptInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: PromptInput,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// OpenAI's default for /v1/completions; chat completions default to the pool's own (128).
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

impl Sampling {
    /// The pool's sampling parameters; what the request leaves out takes the pool's defaults
    /// (`default_max_tokens` first for max_tokens).
    fn to_params(&self, default_max_tokens: Option<u32>) -> Result<SamplingParams, PoolError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(PoolError::invalid("n", format!("{n}; the pool returns one choice per request")));
        }
        if let Some(refusal) = self.unsupported.refusal() {
            return Err(refusal);
        }
        let logit_bias = match &self.logit_bias {
            None => Vec::new(),
            // Its size is checked with the rest of the request (`PredictRequest::validate`).
            Some(map) => {
                let pairs = map.iter().map(|(key, &bias)| match key.parse::<u32>() {
                    Ok(token) => Ok((token, bias)),
                    Err(_) => Err(PoolError::invalid("logit_bias", format!("key {key:?} is not a token id (a number as a string)"))),
                });
                modelpool::request::logit_bias_by_token(pairs.collect::<Result<Vec<_>, _>>()?)
            }
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let defaults = SamplingParams::default();
        Ok(SamplingParams {
            max_tokens: self.max_completion_tokens.or(self.max_tokens).or(default_max_tokens).unwrap_or(defaults.max_tokens),
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            seed: self.seed.unwrap_or(defaults.seed),
            stop,
            ignore_eos: self.ignore_eos.unwrap_or(defaults.ignore_eos),
            // The coordinator's --strict-max-tokens decides it for API requests ([`crate::admission`]).
            strict_max_tokens: false,
            response_format: response_format(self.response_format.as_ref())?,
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            logit_bias,
        })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// OpenAI's `response_format`: `{"type": "text"}`, `{"type": "json_object"}` (llama-server also takes a
/// `schema` beside it) or `{"type": "json_schema", "json_schema": {"name": …, "schema": {…}, "strict": …}}`.
/// Strict or not, a schema is enforced: decoding cannot leave it. The schema is checked (size, and
/// whether it compiles) as its [`ResponseFormat`] is made.
fn response_format(value: Option<&Value>) -> Result<ResponseFormat, PoolError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(ResponseFormat::Text) };
    const KINDS: &str = "one of text, json_object, json_schema";
    let kind =
        value.get("type").and_then(Value::as_str).ok_or_else(|| PoolError::invalid("response_format.type", format!("missing; {KINDS}")))?;
    let schema = match (kind, value.get("schema")) {
        ("text", _) => return Ok(ResponseFormat::Text),
        ("json_object", None) => return Ok(ResponseFormat::JsonObject),
        ("json_object", Some(schema)) => schema,
        ("json_schema", _) => value
            .get("json_schema")
            .and_then(|s| s.get("schema"))
            .ok_or_else(|| PoolError::invalid("response_format.json_schema.schema", "missing: the JSON Schema the output must match"))?,
        (other, _) => return Err(PoolError::invalid("response_format.type", format!("{other:?}; {KINDS}"))),
    };
    ResponseFormat::json_schema(schema.clone()).map_err(|reason| PoolError::invalid(SCHEMA_FIELD, reason))
}

impl ChatCompletionRequest {
    /// The pool's request, built by moving the message texts out (no copy of a long prompt is kept),
    /// validated.
    pub fn into_request(self) -> Result<PredictRequest, PoolError> {
        let sampling = self.sampling.to_params(None)?;
        let messages = self
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match m.content {
                    None => String::new(),
                    Some(Content::Text(text)) => text,
                    Some(Content::Parts(parts)) => {
                        if let Some(part) = parts.iter().find(|p| p.kind != "text") {
                            return Err(PoolError::invalid(
                                format!("messages[{i}].content"),
                                format!("part of type {:?}; this pool serves text only", part.kind),
                            ));
                        }
                        parts.into_iter().filter_map(|p| p.text).collect::<Vec<_>>().concat()
                    }
                };
                // OpenAI's newer name for the system role.
                let role = if m.role == "developer" { Role::System } else { Role::parse(&m.role, i)? };
                Ok(ChatMessage { role, content })
            })
            .collect::<Result<Vec<_>, PoolError>>()?;
        // The caller's id is not taken from the API body: every HTTP prompt gets the coordinator's.
        PredictRequest { request_id: String::new(), prompt: Prompt::Chat(messages), sampling }.validate()
    }
}

impl CompletionRequest {
    /// The pool's request, built by moving the prompt out, validated.
    pub fn into_request(self) -> Result<PredictRequest, PoolError> {
        let sampling = self.sampling.to_params(Some(COMPLETIONS_DEFAULT_MAX_TOKENS))?;
        let prompt = match self.prompt {
            PromptInput::One(p) => p,
            PromptInput::Many(mut v) if v.len() == 1 => v.swap_remove(0),
            PromptInput::Many(v) => {
                return Err(PoolError::invalid("prompt", format!("{} prompts; send one per request", v.len())));
            }
        };
        PredictRequest { request_id: String::new(), prompt: Prompt::Raw(prompt), sampling }.validate()
    }
}

/// The pool's field names in OpenAI's terms, for an error's `param`.
pub fn openai_param(field: &str) -> String {
    let field = field.strip_prefix("sampling.").unwrap_or(field);
    if field == "response_format.json_schema" {
        return "response_format.json_schema.schema".into();
    }
    field.strip_prefix("chat.").unwrap_or(field).to_string()
}

pub fn finish_reason(response: &PredictResponse) -> &'static str {
    match response.finish_reason {
        Some(FinishReason::Length) => "length",
        _ => "stop",
    }
}

/// OpenAI's usage block; `cached_tokens` are the prompt tokens the worker reused from its prefix cache.
pub fn usage(response: &PredictResponse) -> Value {
    json!({
        "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens,
        "total_tokens": response.prompt_tokens + response.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": response.cached_tokens},
    })
}

/// What kind of completion a response or chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

impl Kind {
    pub fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl-",
            Kind::Text => "cmpl-",
        }
    }
}

/// Identity shared by a response and all chunks of one stream.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Envelope {
    pub fn response(&self, response: &PredictResponse) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": response.text},
                "finish_reason": finish_reason(response),
                "logprobs": null,
            }),
            Kind::Text => json!({"index": 0, "text": response.text, "finish_reason": finish_reason(response), "logprobs": null}),
        };
        let object = match self.kind {
            Kind::Chat => "chat.completion",
            Kind::Text => "text_completion",
        };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [choice], "usage": usage(response),
        })
    }

    /// A stream chunk: text (`Some`), or the final chunk (`finish` set). As OpenAI streams: with
    /// `include_usage` every chunk carries `"usage": null` and [`Envelope::usage_chunk`] follows the
    /// last; without it no chunk has a usage field.
    pub fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&PredictResponse>, include_usage: bool) -> Value {
        let (object, choice) = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(text) = text {
                    delta.insert("content".into(), json!(text));
                }
                ("chat.completion.chunk", json!({"index": 0, "delta": delta, "finish_reason": finish.map(finish_reason), "logprobs": null}))
            }
            Kind::Text => (
                "text_completion",
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish.map(finish_reason), "logprobs": null}),
            ),
        };
        let mut chunk = json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]});
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The separate usage-only chunk OpenAI sends last when `stream_options.include_usage` is set.
    pub fn usage_chunk(&self, response: &PredictResponse) -> Value {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [], "usage": usage(response)})
    }
}

/// An error in OpenAI's shape with its HTTP status.
#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn from_pool(error: &PoolError) -> Self {
        let (status, kind, code) = match error {
            PoolError::InvalidArgument { .. } | PoolError::FailedPrecondition(_) | PoolError::AlreadyExists(_) => {
                (400, "invalid_request_error", None)
            }
            PoolError::NotFound(_) => (404, "invalid_request_error", Some("not_found")),
            PoolError::Unauthenticated(_) => (401, "authentication_error", Some("invalid_api_key")),
            PoolError::PermissionDenied(_) => (403, "permission_error", None),
            PoolError::ResourceExhausted(_) => (429, "rate_limit_error", Some("rate_limit_exceeded")),
            PoolError::Unavailable(_) => (503, "service_unavailable_error", Some("no_workers")),
            PoolError::DeadlineExceeded(_) => (504, "timeout_error", Some("timeout")),
            PoolError::Cancelled(_) => (499, "cancelled_error", None),
            PoolError::Internal(_) | PoolError::Aborted(_) => (500, "server_error", None),
        };
        let param = match error {
            PoolError::InvalidArgument { field, .. } => Some(openai_param(field)),
            _ => None,
        };
        Self { status, message: error.to_string(), kind, param, code }
    }

    pub fn body(&self) -> Value {
        json!({ "error": self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_request_becomes_the_pools_request() {
        let request: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "smollm", "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Capital "}, {"type": "text", "text": "of France?"}]}
            ],
            "max_tokens": 12, "temperature": 0.0, "stop": "\n", "seed": 3, "stream": true
        }))
        .unwrap();
        assert!(request.sampling.stream);
        let request = request.into_request().unwrap();
        let Prompt::Chat(messages) = &request.prompt else { panic!("chat input") };
        assert_eq!(messages[0].role, Role::System);
        assert_eq!(messages[1].content, "Capital of France?");
        let sampling = request.sampling;
        assert_eq!((sampling.max_tokens, sampling.seed, sampling.stop), (12, 3, vec!["\n".to_string()]));
    }

    #[test]
    fn benchmark_extensions_pass_through_and_usage_names_cached_tokens() {
        let request: CompletionRequest = serde_json::from_value(json!({"prompt": "a", "ignore_eos": true, "top_k": 5})).unwrap();
        let sampling = request.into_request().unwrap().sampling;
        assert_eq!((sampling.ignore_eos, sampling.top_k), (true, 5));
        let plain: CompletionRequest = serde_json::from_value(json!({"prompt": "a"})).unwrap();
        assert!(!plain.into_request().unwrap().sampling.ignore_eos);
        let response = PredictResponse { prompt_tokens: 100, completion_tokens: 5, cached_tokens: 90, ..Default::default() };
        assert_eq!(usage(&response)["prompt_tokens_details"]["cached_tokens"], 90);
        let envelope = Envelope { kind: Kind::Chat, id: "x".into(), created: 0, model: "m".into() };
        assert!(envelope.chunk(Some("hi"), true, None, false).get("usage").is_none());
        assert!(envelope.chunk(None, false, Some(&response), true)["usage"].is_null());
        assert_eq!(envelope.usage_chunk(&response)["usage"]["total_tokens"], 105);
    }

    #[test]
    fn penalties_and_a_logit_bias_become_the_pools_and_a_key_that_is_no_token_id_is_named() {
        let request: CompletionRequest = serde_json::from_value(json!({
            "prompt": "a", "frequency_penalty": 0.5, "presence_penalty": -1.0, "logit_bias": {"28": -100, "5": 2.5}
        }))
        .unwrap();
        let sampling = request.into_request().unwrap().sampling;
        assert_eq!((sampling.frequency_penalty, sampling.presence_penalty), (0.5, -1.0));
        assert_eq!(sampling.logit_bias, vec![(5, 2.5), (28, -100.0)], "by token id");
        let bad: CompletionRequest = serde_json::from_value(json!({"prompt": "a", "logit_bias": {"comma": 1}})).unwrap();
        assert_eq!(ApiError::from_pool(&bad.into_request().unwrap_err()).param.as_deref(), Some("logit_bias"));
        let many: serde_json::Map<String, Value> = (0..1025).map(|token| (token.to_string(), json!(1))).collect();
        let many: CompletionRequest = serde_json::from_value(json!({"prompt": "a", "logit_bias": many})).unwrap();
        let refused = ApiError::from_pool(&many.into_request().unwrap_err());
        assert_eq!(refused.param.as_deref(), Some("logit_bias"));
        assert!(refused.message.contains("1025 tokens, limit 1024"), "{}", refused.message);
        let far: CompletionRequest = serde_json::from_value(json!({"prompt": "a", "presence_penalty": 2.5})).unwrap();
        assert_eq!(ApiError::from_pool(&far.into_request().unwrap_err()).param.as_deref(), Some("presence_penalty"));
        let asks: CompletionRequest = serde_json::from_value(json!({"prompt": "a", "logprobs": 1})).unwrap();
        assert_eq!(ApiError::from_pool(&asks.into_request().unwrap_err()).param.as_deref(), Some("logprobs"));
    }

    #[test]
    fn completions_default_to_sixteen_tokens_and_refuse_several_prompts_or_choices() {
        let one: CompletionRequest = serde_json::from_value(json!({"prompt": "Once upon"})).unwrap();
        assert_eq!(one.into_request().unwrap().sampling.max_tokens, 16);
        let many: CompletionRequest = serde_json::from_value(json!({"prompt": ["a", "b"]})).unwrap();
        assert_eq!(ApiError::from_pool(&many.into_request().unwrap_err()).param.as_deref(), Some("prompt"));
        let n: CompletionRequest = serde_json::from_value(json!({"prompt": "a", "n": 2})).unwrap();
        assert!(n.into_request().unwrap_err().to_string().contains("n"));
    }

    #[test]
    fn response_formats_become_the_pools_and_bad_ones_name_their_field() {
        let format = |value: Value| {
            let request: ChatCompletionRequest =
                serde_json::from_value(json!({"messages": [{"role": "user", "content": "hi"}], "response_format": value})).unwrap();
            request.into_request().map(|r| r.sampling.response_format)
        };
        assert_eq!(format(json!({"type": "text"})).unwrap(), ResponseFormat::Text);
        assert_eq!(format(Value::Null).unwrap(), ResponseFormat::Text);
        assert_eq!(format(json!({"type": "json_object"})).unwrap(), ResponseFormat::JsonObject);
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let expected = ResponseFormat::json_schema(schema.clone()).unwrap();
        let named = json!({"type": "json_schema", "json_schema": {"name": "a", "strict": true, "schema": schema}});
        assert_eq!(format(named).unwrap(), expected);
        // llama-server's form: a schema beside json_object.
        assert_eq!(format(json!({"type": "json_object", "schema": schema})).unwrap(), expected);
        let field = |value: Value| match format(value).unwrap_err() {
            PoolError::InvalidArgument { field, .. } => openai_param(&field),
            other => panic!("{other:?}"),
        };
        assert_eq!(field(json!({"type": "xml"})), "response_format.type");
        assert_eq!(field(json!({"json_schema": {}})), "response_format.type");
        assert_eq!(field(json!({"type": "json_schema", "json_schema": {"name": "a"}})), "response_format.json_schema.schema");
        assert_eq!(
            field(json!({"type": "json_schema", "json_schema": {"schema": {"type": "no such type"}}})),
            "response_format.json_schema.schema"
        );
        assert_eq!(openai_param("sampling.response_format.json_schema"), "response_format.json_schema.schema");
    }

    #[test]
    fn the_api_door_validates_with_the_grpc_doors_rules() {
        let chat = |body: Value| serde_json::from_value::<ChatCompletionRequest>(body).unwrap().into_request();
        let param = |body: Value| ApiError::from_pool(&chat(body).unwrap_err()).param;
        let hi = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(param(json!({"messages": hi, "temperature": 3.0})).as_deref(), Some("temperature"));
        assert_eq!(param(json!({"messages": hi, "max_tokens": 0})).as_deref(), Some("max_tokens"));
        assert_eq!(param(json!({"messages": []})).as_deref(), Some("messages"));
        assert_eq!(param(json!({"messages": [{"role": "robot", "content": "hi"}]})).as_deref(), Some("messages[0].role"));
        assert_eq!(param(json!({"messages": [{"role": "user", "content": "  "}]})).as_deref(), Some("messages"));
    }

    #[test]
    fn pool_errors_map_to_openai_statuses_and_params() {
        let invalid = ApiError::from_pool(&PoolError::invalid("sampling.temperature", "3 is outside [0, 2]"));
        assert_eq!((invalid.status, invalid.kind, invalid.param.as_deref()), (400, "invalid_request_error", Some("temperature")));
        assert_eq!(ApiError::from_pool(&PoolError::ResourceExhausted("full".into())).status, 429);
        assert_eq!(ApiError::from_pool(&PoolError::Unavailable("no workers".into())).status, 503);
        assert_eq!(ApiError::from_pool(&PoolError::DeadlineExceeded("slow".into())).status, 504);
        let body = invalid.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"].as_str().unwrap().contains("temperature"));
    }
}
