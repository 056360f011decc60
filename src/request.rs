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
    /// Largest frequency and presence penalty, either sign (OpenAI's range).
    pub const MAX_PENALTY: f32 = 2.0;
    /// Largest logit bias, either sign (OpenAI's range: -100 bans a token, 100 forces it).
    pub const MAX_LOGIT_BIAS: f32 = 100.0;
    /// Tokens one request may bias: each costs a little on every sampled token.
    pub const MAX_LOGIT_BIAS_TOKENS: usize = 1024;
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
    /// Subtracted from a token's logit per time it was generated in this reply (OpenAI's).
    pub frequency_penalty: f32,
    /// Subtracted from a token's logit once it was generated in this reply (OpenAI's).
    pub presence_penalty: f32,
    /// Added to these tokens' logits before sampling (OpenAI's logit_bias), by token id, ascending and
    /// each id once. Whether an id is in the model's vocabulary only the worker knows and checks.
    pub logit_bias: Vec<(u32, f32)>,
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
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether anything is added to the logits before sampling (penalties or a logit bias).
    pub fn shapes_logits(&self) -> bool {
        self.frequency_penalty != 0.0 || self.presence_penalty != 0.0 || !self.logit_bias.is_empty()
    }
}

/// A logit bias given as pairs in any order, as one list by token id with each id once (the wire's map
/// has no order; OpenAI's JSON object can repeat a key, and the last one counts, as JSON parsers do).
pub fn logit_bias_by_token(pairs: impl IntoIterator<Item = (u32, f32)>) -> Vec<(u32, f32)> {
    let mut by_token: Vec<(u32, f32)> = pairs.into_iter().collect();
    // Stable: among equal ids the last given stays last, and dedup keeps the first of a run.
    by_token.sort_by_key(|&(token, _)| token);
    by_token.reverse();
    by_token.dedup_by_key(|&mut (token, _)| token);
    by_token.reverse();
    by_token
}

fn check_logit_bias_count(count: usize) -> Result<(), PoolError> {
    if count > limits::MAX_LOGIT_BIAS_TOKENS {
        return Err(PoolError::invalid("sampling.logit_bias", format!("{count} tokens, limit {}", limits::MAX_LOGIT_BIAS_TOKENS)));
    }
    Ok(())
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
        for (field, penalty) in
            [("sampling.frequency_penalty", self.frequency_penalty), ("sampling.presence_penalty", self.presence_penalty)]
        {
            if !(-limits::MAX_PENALTY..=limits::MAX_PENALTY).contains(&penalty) {
                return Err(PoolError::invalid(field, format!("{penalty} is outside [-{0}, {0}]", limits::MAX_PENALTY)));
            }
        }
        check_logit_bias_count(self.logit_bias.len())?;
        for &(token, bias) in &self.logit_bias {
            if !(-limits::MAX_LOGIT_BIAS..=limits::MAX_LOGIT_BIAS).contains(&bias) {
                let limit = limits::MAX_LOGIT_BIAS;
                return Err(PoolError::invalid(format!("sampling.logit_bias.{token}"), format!("{bias} is outside [-{limit}, {limit}]")));
            }
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
        frequency_penalty: params.frequency_penalty.unwrap_or(defaults.frequency_penalty),
        presence_penalty: params.presence_penalty.unwrap_or(defaults.presence_penalty),
        logit_bias: {
            // Counted before it is sorted, as the other lists are.
            check_logit_bias_count(params.logit_bias.len())?;
            logit_bias_by_token(params.logit_bias)
        },
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
                frequency_penalty: Some(s.frequency_penalty),
                presence_penalty: Some(s.presence_penalty),
                logit_bias: s.logit_bias.iter().copied().collect(),
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
    fn penalties_and_a_logit_bias_are_bounded_and_the_bias_is_kept_by_token_id() {
        let mut wire = chat("hi");
        wire.sampling.as_mut().unwrap().frequency_penalty = Some(2.5);
        assert!(refusal(wire).contains("sampling.frequency_penalty"));
        let mut wire = chat("hi");
        wire.sampling.as_mut().unwrap().presence_penalty = Some(f32::NAN);
        assert!(refusal(wire).contains("sampling.presence_penalty"));
        let mut wire = chat("hi");
        wire.sampling.as_mut().unwrap().logit_bias = [(7, 100.5)].into();
        assert!(refusal(wire).contains("sampling.logit_bias.7"));
        let mut wire = chat("hi");
        wire.sampling.as_mut().unwrap().logit_bias = (0..=limits::MAX_LOGIT_BIAS_TOKENS as u32).map(|t| (t, 1.0)).collect();
        assert!(refusal(wire).contains("sampling.logit_bias"));

        let mut wire = chat("hi");
        wire.sampling.as_mut().unwrap().logit_bias = [(9, -1.0), (2, 100.0), (40000, -100.0)].into();
        let request = PredictRequest::try_from(wire).unwrap();
        assert_eq!(request.sampling.logit_bias, vec![(2, 100.0), (9, -1.0), (40000, -100.0)]);
        assert_eq!(PredictRequest::try_from(proto::PredictRequest::from(&request)).unwrap(), request);
        // Given twice (JSON objects may repeat a key), the last one counts.
        assert_eq!(logit_bias_by_token([(5, 1.0), (3, 0.0), (5, 2.0)]), vec![(3, 0.0), (5, 2.0)]);
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
