//! Validated prediction requests: what a worker or the coordinator accepts. Each door builds the domain
//! request from what it received (the gRPC message here, OpenAI's JSON in the coordinator's `openai`
//! module), and [`PredictRequest::validate`] is the one set of rules for both. Every refusal names the
//! field, as the gRPC message calls it, and the limit.

use crate::error::PoolError;
use crate::proto;
use crate::response_format::ResponseFormat;

/// Limits on what one request may ask for. Context limits depend on the model and are checked by the worker.
pub mod limits {
    /// Tokens generated when the request does not say.
    pub const DEFAULT_MAX_TOKENS: u32 = 128;
    /// Highest temperature accepted (the range OpenAI's API uses).
    pub const MAX_TEMPERATURE: f32 = 2.0;
    pub const MAX_STOP_STRINGS: usize = 8;
    pub const MAX_STOP_BYTES: usize = 64;
    pub const MAX_MESSAGES: usize = 256;
    /// Bytes of prompt text (raw prompt, or all chat contents together).
    pub const MAX_PROMPT_BYTES: usize = 1 << 20;
    pub const MAX_TOP_K: u32 = 1000;
    pub const MAX_REQUEST_ID_BYTES: usize = 128;
    /// Slots one worker may have (its `--slots`), and so claim at registration.
    pub const MAX_SLOTS_PER_WORKER: u32 = 64;
    /// The largest host-memory prompt store a worker may have (its `--prompt-cache-mib`).
    pub const MAX_PROMPT_CACHE_MIB: u32 = 1 << 16;
    /// Tokens a worker's prompt store may claim to hold (what the coordinator's index sizes for it):
    /// about 23 GB of the default model's keys and values.
    pub const MAX_PROMPT_STORE_TOKENS: u64 = 1 << 20;
    /// Prompt tokens a worker may compute per step (its `--batch-tokens`).
    pub const MAX_BATCH_TOKENS: u32 = 8192;
    /// The smallest context per slot a worker may have (its `--ctx-per-slot`), and so claim.
    pub const MIN_CONTEXT_PER_SLOT: u32 = 64;
    /// The largest context per slot a worker may have, and so claim: past the longest context models
    /// are trained for today, and what keeps the coordinator's prefix index for one worker bounded.
    pub const MAX_CONTEXT_PER_SLOT: u32 = 1 << 20;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// A message's role by name; a refusal names `chat.messages[index].role`.
    pub fn parse(role: &str, index: usize) -> Result<Self, PoolError> {
        match role {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(PoolError::invalid(
                format!("chat.messages[{index}].role"),
                format!("unknown role {other:?}; expected one of system, user, assistant"),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// What the model is asked: chat messages (formatted with the model's own template) or raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Raw(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    pub seed: u64,
    pub stop: Vec<String>,
    /// Keep generating through end-of-generation tokens, up to max_tokens (benchmarks).
    pub ignore_eos: bool,
    /// Refuse a prompt whose length plus max_tokens does not fit a slot's context. Off (the default),
    /// a prompt that fits is served and generation stops where the context ends, with finish reason
    /// length: DSPy's `dspy.LM` sends max_tokens 4000 whatever the context, and llama-server serves it.
    pub strict_max_tokens: bool,
    /// What the text must be (structured outputs); decoding is constrained to it.
    pub response_format: ResponseFormat,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: limits::DEFAULT_MAX_TOKENS,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop: Vec::new(),
            ignore_eos: false,
            strict_max_tokens: false,
            response_format: ResponseFormat::Text,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictRequest {
    pub request_id: String,
    pub prompt: Prompt,
    pub sampling: SamplingParams,
}

impl PredictRequest {
    /// A greedy chat request with one user message, the common case in tests and benchmarks.
    pub fn user(text: impl Into<String>, max_tokens: u32) -> Self {
        Self {
            request_id: String::new(),
            prompt: Prompt::Chat(vec![ChatMessage::new(Role::User, text)]),
            sampling: SamplingParams { max_tokens, ..SamplingParams::default() },
        }
    }
}

impl PredictRequest {
    /// The rules every prompt passes, whichever door it came through: its id, its prompt's size and
    /// content, and its sampling parameters' ranges. (A structured-output schema is checked when its
    /// [`ResponseFormat`] is made.)
    pub fn validate(self) -> Result<Self, PoolError> {
        check_request_id(&self.request_id)?;
        match &self.prompt {
            Prompt::Chat(messages) => check_chat(messages)?,
            Prompt::Raw(text) => check_raw(text)?,
        }
        self.sampling.check()?;
        Ok(self)
    }
}

fn check_request_id(id: &str) -> Result<(), PoolError> {
    if id.len() > limits::MAX_REQUEST_ID_BYTES {
        return Err(PoolError::invalid("request_id", format!("{} bytes, limit {}", id.len(), limits::MAX_REQUEST_ID_BYTES)));
    }
    // Ids are logged as given: a newline or an escape sequence in one would forge or garble log lines.
    if let Some((at, _)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(PoolError::invalid("request_id", format!("a control character at byte {at}: ids must be printable")));
    }
    Ok(())
}

fn check_chat(messages: &[ChatMessage]) -> Result<(), PoolError> {
    if messages.is_empty() {
        return Err(PoolError::invalid("chat.messages", "empty: give at least one message"));
    }
    if messages.len() > limits::MAX_MESSAGES {
        return Err(PoolError::invalid("chat.messages", format!("{} messages, limit {}", messages.len(), limits::MAX_MESSAGES)));
    }
    let total: usize = messages.iter().map(|m| m.content.len()).sum();
    if total > limits::MAX_PROMPT_BYTES {
        return Err(PoolError::invalid("chat.messages", format!("{total} bytes of content, limit {}", limits::MAX_PROMPT_BYTES)));
    }
    if messages.iter().all(|m| m.content.trim().is_empty()) {
        return Err(PoolError::invalid("chat.messages", "every message is empty"));
    }
    Ok(())
}

fn check_raw(text: &str) -> Result<(), PoolError> {
    if text.len() > limits::MAX_PROMPT_BYTES {
        return Err(PoolError::invalid("prompt", format!("{} bytes, limit {}", text.len(), limits::MAX_PROMPT_BYTES)));
    }
    if text.trim().is_empty() {
        return Err(PoolError::invalid("prompt", "empty"));
    }
    Ok(())
}

impl SamplingParams {
    fn check(&self) -> Result<(), PoolError> {
        if self.max_tokens == 0 {
            return Err(PoolError::invalid("sampling.max_tokens", "0; must be at least 1"));
        }
        let temperature = self.temperature;
        if !(0.0..=limits::MAX_TEMPERATURE).contains(&temperature) {
            return Err(PoolError::invalid("sampling.temperature", format!("{temperature} is outside [0, {}]", limits::MAX_TEMPERATURE)));
        }
        let top_p = self.top_p;
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(PoolError::invalid("sampling.top_p", format!("{top_p} is outside (0, 1]")));
        }
        if self.top_k > limits::MAX_TOP_K {
            return Err(PoolError::invalid("sampling.top_k", format!("{}, limit {}", self.top_k, limits::MAX_TOP_K)));
        }
        if self.stop.len() > limits::MAX_STOP_STRINGS {
            return Err(PoolError::invalid("sampling.stop", format!("{} strings, limit {}", self.stop.len(), limits::MAX_STOP_STRINGS)));
        }
        for (i, stop) in self.stop.iter().enumerate() {
            if stop.is_empty() || stop.len() > limits::MAX_STOP_BYTES {
                return Err(PoolError::invalid(
                    format!("sampling.stop[{i}]"),
                    format!("{} bytes; must be 1 to {}", stop.len(), limits::MAX_STOP_BYTES),
                ));
            }
        }
        Ok(())
    }
}

/// Whether a wire request asks for JSON matching a schema: converting it compiles the schema, which takes
/// up to tens of milliseconds (see [`crate::response_format`]), so the daemons convert such a request
/// off their async runtime.
pub fn carries_schema(request: &proto::PredictRequest) -> bool {
    use proto::response_format::Format;
    let format = request.sampling.as_ref().and_then(|s| s.response_format.as_ref()).and_then(|f| f.format.as_ref());
    matches!(format, Some(Format::JsonSchema(_)))
}

/// The gRPC door: the message's fields moved into the domain request (absent ones take the
/// defaults), then [`PredictRequest::validate`]. The wire's `run_alone` is the scheduler's retry tool,
/// not something a client may ask, and is dropped here.
impl TryFrom<proto::PredictRequest> for PredictRequest {
    type Error = PoolError;

    fn try_from(request: proto::PredictRequest) -> Result<Self, PoolError> {
        let prompt = match request.input {
            None => return Err(PoolError::invalid("input", "missing: set chat or prompt")),
            Some(proto::predict_request::Input::Chat(chat)) => Prompt::Chat(chat_messages(chat)?),
            Some(proto::predict_request::Input::Prompt(bytes)) => Prompt::Raw(raw_prompt(bytes)?),
        };
        let sampling = sampling_params(request.sampling.unwrap_or_default())?;
        PredictRequest { request_id: request.request_id, prompt, sampling }.validate()
    }
}

fn chat_messages(chat: proto::ChatMessages) -> Result<Vec<ChatMessage>, PoolError> {
    // Counted before the roles are read: a list far past the limit is refused without walking it.
    if chat.messages.len() > limits::MAX_MESSAGES {
        return Err(PoolError::invalid("chat.messages", format!("{} messages, limit {}", chat.messages.len(), limits::MAX_MESSAGES)));
    }
    chat.messages.into_iter().enumerate().map(|(i, m)| Ok(ChatMessage { role: Role::parse(&m.role, i)?, content: m.content })).collect()
}

fn raw_prompt(bytes: Vec<u8>) -> Result<String, PoolError> {
    if bytes.len() > limits::MAX_PROMPT_BYTES {
        return Err(PoolError::invalid("prompt", format!("{} bytes, limit {}", bytes.len(), limits::MAX_PROMPT_BYTES)));
    }
    String::from_utf8(bytes)
        .map_err(|e| PoolError::invalid("prompt", format!("not valid UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to())))
}

fn sampling_params(params: proto::SamplingParams) -> Result<SamplingParams, PoolError> {
    let defaults = SamplingParams::default();
    Ok(SamplingParams {
        max_tokens: params.max_tokens.unwrap_or(defaults.max_tokens),
        temperature: params.temperature.unwrap_or(defaults.temperature),
        top_p: params.top_p.unwrap_or(defaults.top_p),
        top_k: params.top_k.unwrap_or(defaults.top_k),
        seed: params.seed.unwrap_or(defaults.seed),
        stop: params.stop,
        ignore_eos: params.ignore_eos.unwrap_or(defaults.ignore_eos),
        strict_max_tokens: params.strict_max_tokens.unwrap_or(defaults.strict_max_tokens),
        response_format: response_format(params.response_format)?,
    })
}

/// Where a refusal of a structured-output schema points.
pub const SCHEMA_FIELD: &str = "sampling.response_format.json_schema";

fn response_format(format: Option<proto::ResponseFormat>) -> Result<ResponseFormat, PoolError> {
    use proto::response_format::Format;
    match format.and_then(|f| f.format) {
        None | Some(Format::JsonObject(false)) => Ok(ResponseFormat::Text),
        Some(Format::JsonObject(true)) => Ok(ResponseFormat::JsonObject),
        Some(Format::JsonSchema(text)) => {
            // Bounded before it is parsed; ResponseFormat::json_schema bounds the parsed schema again.
            if text.len() > crate::response_format::MAX_SCHEMA_BYTES {
                return Err(PoolError::invalid(
                    SCHEMA_FIELD,
                    format!("{} bytes of schema, limit {}", text.len(), crate::response_format::MAX_SCHEMA_BYTES),
                ));
            }
            let schema = serde_json::from_str(&text).map_err(|e| PoolError::invalid(SCHEMA_FIELD, format!("not JSON: {e}")))?;
            ResponseFormat::json_schema(schema).map_err(|reason| PoolError::invalid(SCHEMA_FIELD, reason))
        }
    }
}

impl From<&ResponseFormat> for Option<proto::ResponseFormat> {
    fn from(format: &ResponseFormat) -> Self {
        use proto::response_format::Format;
        let format = match format {
            ResponseFormat::Text => return None,
            ResponseFormat::JsonObject => Format::JsonObject(true),
            ResponseFormat::JsonSchema(schema) => Format::JsonSchema(schema.to_string()),
        };
        Some(proto::ResponseFormat { format: Some(format) })
    }
}

impl From<&PredictRequest> for proto::PredictRequest {
    fn from(request: &PredictRequest) -> Self {
        let input = match &request.prompt {
            Prompt::Chat(messages) => proto::predict_request::Input::Chat(proto::ChatMessages {
                messages: messages
                    .iter()
                    .map(|m| proto::ChatMessage { role: m.role.as_str().to_string(), content: m.content.clone() })
                    .collect(),
            }),
            Prompt::Raw(text) => proto::predict_request::Input::Prompt(text.clone().into_bytes()),
        };
        let s = &request.sampling;
        proto::PredictRequest {
            request_id: request.request_id.clone(),
            input: Some(input),
            run_alone: false,
            sampling: Some(proto::SamplingParams {
                max_tokens: Some(s.max_tokens),
                temperature: Some(s.temperature),
                top_p: Some(s.top_p),
                seed: Some(s.seed),
                stop: s.stop.clone(),
                top_k: Some(s.top_k),
                ignore_eos: Some(s.ignore_eos),
                strict_max_tokens: Some(s.strict_max_tokens),
                response_format: (&s.response_format).into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn chat(text: &str) -> proto::PredictRequest {
        proto::PredictRequest::from(&PredictRequest::user(text, 16))
    }

    fn refusal(request: proto::PredictRequest) -> String {
        let status = PredictRequest::try_from(request).unwrap_err().to_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        status.message().to_string()
    }

    #[test]
    fn round_trips_through_the_wire_type() {
        let mut request = PredictRequest::user("hello", 7);
        request.sampling.stop = vec!["\n".into()];
        request.sampling.temperature = 0.5;
        request.sampling.ignore_eos = true;
        let back = PredictRequest::try_from(proto::PredictRequest::from(&request)).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn absent_sampling_takes_defaults() {
        let mut wire = chat("hi");
        wire.sampling = None;
        let request = PredictRequest::try_from(wire).unwrap();
        assert_eq!(request.sampling, SamplingParams::default());
    }

    #[test]
    fn refusals_name_the_field() {
        let mut wire = chat("hi");
        wire.sampling.as_mut().unwrap().max_tokens = Some(0);
        assert!(refusal(wire).contains("sampling.max_tokens"));

        let mut wire = chat("hi");
        wire.sampling.as_mut().unwrap().temperature = Some(-0.1);
        assert!(refusal(wire).contains("sampling.temperature"));

        let mut wire = chat("hi");
        wire.sampling.as_mut().unwrap().top_p = Some(1.5);
        assert!(refusal(wire).contains("sampling.top_p"));

        let mut wire = chat("hi");
        wire.sampling.as_mut().unwrap().stop = vec!["x".into(); limits::MAX_STOP_STRINGS + 1];
        assert!(refusal(wire).contains("sampling.stop"));

        assert!(refusal(chat("   ")).contains("chat.messages"));

        let mut wire = chat("hi");
        wire.input = Some(proto::predict_request::Input::Chat(proto::ChatMessages::default()));
        assert!(refusal(wire).contains("chat.messages"));

        let mut wire = chat("hi");
        if let Some(proto::predict_request::Input::Chat(c)) = wire.input.as_mut() {
            c.messages[0].role = "robot".into();
        }
        assert!(refusal(wire).contains("chat.messages[0].role"));

        let mut wire = chat("hi");
        wire.input = Some(proto::predict_request::Input::Prompt(vec![b'a', 0xff, b'b']));
        let message = refusal(wire);
        assert!(message.contains("prompt") && message.contains("UTF-8"), "{message}");

        let mut wire = chat("hi");
        wire.input = None;
        assert!(refusal(wire).contains("input"));
    }
}
