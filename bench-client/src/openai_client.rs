//! Any OpenAI-compatible endpoint as a bench target (this pool's HTTP API, llama-server, vLLM,
//! mlx_lm.server, Ollama): each request is streamed, so time to first token and the gaps between tokens
//! are measured here, at the client, the same way for every server. Chat prompts go to
//! `/v1/chat/completions`, raw prompts to `/v1/completions`.

use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelpool::{PredictRequest, Prompt};
use serde_json::{Value, json};

use crate::record::RequestRecord;

/// Where to send requests and how to name the model.
#[derive(Clone)]
pub struct OpenAiClient {
    base: String,
    api_key: Option<String>,
    model: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl OpenAiClient {
    /// `base` is the server's root or its `/v1` (http:// only).
    pub fn new(base: &str, api_key: Option<String>, model: Option<String>) -> Result<Self, String> {
        let base = base.trim_end_matches('/').trim_end_matches("/v1").to_string();
        if !base.starts_with("http://") {
            return Err(format!("--openai {base:?}: only http:// endpoints are supported"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A connection per request: servers close idle keep-alive connections on their own schedule
        // (llama-server after a few requests), and a pooled connection closed under the client fails
        // the request that picked it up. On 127.0.0.1 a connection costs a fraction of a millisecond.
        let http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
        Ok(Self { base, api_key, model: model.unwrap_or_else(|| "default".into()), http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The body of one streamed request, with the usage block asked for (OpenAI's `include_usage`).
    pub fn body(&self, request: &PredictRequest) -> (&'static str, Value) {
        let sampling = &request.sampling;
        let mut body = json!({
            "model": self.model,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if sampling.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        if sampling.top_k > 0 {
            body["top_k"] = json!(sampling.top_k);
        }
        if !sampling.stop.is_empty() {
            body["stop"] = json!(sampling.stop);
        }
        if !sampling.is_greedy() {
            body["seed"] = json!(sampling.seed);
        }
        match &request.prompt {
            Prompt::Chat(messages) => {
                let messages: Vec<Value> = messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect();
                body["messages"] = json!(messages);
                ("/v1/chat/completions", body)
            }
            Prompt::Raw(text) => {
                body["prompt"] = json!(text);
                ("/v1/completions", body)
            }
        }
    }

    /// Sends one request and records what the client saw: the first piece of text, the gaps between
    /// pieces, the whole text and the usage the server reported.
    pub async fn send(&self, request: &PredictRequest, index: usize, client_wait_ms: f64) -> RequestRecord {
        let mut record = RequestRecord { index, request_id: request.request_id.clone(), client_wait_ms, attempts: 1, ..Default::default() };
        let sent = Instant::now();
        if let Err(error) = self.stream(request, sent, &mut record).await {
            record.ok = false;
            record.error = Some(error);
        }
        record.e2e_ms = ms(sent);
        if record.ok && record.completion_tokens > 1 {
            record.tpot_ms = (record.e2e_ms - record.ttft_ms) / f64::from(record.completion_tokens - 1);
        }
        record
    }

    async fn stream(&self, request: &PredictRequest, sent: Instant, record: &mut RequestRecord) -> Result<(), String> {
        let (path, body) = self.body(request);
        let mut builder = hyper::Request::post(format!("{}{path}", self.base)).header("content-type", "application/json");
        if let Some(key) = &self.api_key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let http_request = builder.body(Full::new(Bytes::from(body.to_string()))).map_err(|e| e.to_string())?;
        let response = self.http.request(http_request).await.map_err(|e| format!("{path}: {e}"))?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let text = body.collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default();
            return Err(format!("HTTP {status}: {}", text.trim()));
        }
        let mut events = SseLines::default();
        let mut last_piece: Option<Instant> = None;
        let mut done = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the stream: {e}"))?;
            let Some(data) = frame.data_ref() else { continue };
            for event in events.push(data) {
                if event == "[DONE]" {
                    done = true;
                    continue;
                }
                let chunk: Value = serde_json::from_str(&event).map_err(|e| format!("a stream event is not JSON ({e}): {event}"))?;
                if let Some(error) = chunk.get("error") {
                    return Err(format!("the server reported: {error}"));
                }
                let piece = chunk["choices"].get(0).and_then(|c| c["delta"]["content"].as_str().or(c["text"].as_str())).unwrap_or("");
                if !piece.is_empty() {
                    let now = Instant::now();
                    match last_piece {
                        None => record.ttft_ms = (now - sent).as_secs_f64() * 1000.0,
                        Some(previous) => record.inter_token_ms.push(((now - previous).as_secs_f64() * 1000.0) as f32),
                    }
                    last_piece = Some(now);
                    record.text.push_str(piece);
                }
                if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
                    record.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0) as u32;
                    record.completion_tokens = usage["completion_tokens"].as_u64().unwrap_or(0) as u32;
                    if let Some(cached) = usage["prompt_tokens_details"]["cached_tokens"].as_u64() {
                        record.cached_tokens = cached as u32;
                    }
                }
                // llama-server says how much of the prompt its slot reused in its own timings block.
                if let Some(cached) = chunk["timings"]["cache_n"].as_u64() {
                    record.cached_tokens = record.cached_tokens.max(cached as u32);
                }
            }
        }
        if !done {
            return Err("the stream ended without [DONE]".into());
        }
        if record.completion_tokens == 0 && !record.text.is_empty() {
            return Err("the server reported no usage (stream_options.include_usage)".into());
        }
        record.ok = true;
        Ok(())
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Splits server-sent events out of a byte stream: the `data:` payload of each event, as events end.
#[derive(Default)]
struct SseLines {
    buffer: Vec<u8>,
}

impl SseLines {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("data:")).map(str::trim_start).collect();
            if !data.is_empty() {
                events.push(data.join("\n"));
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_come_out_whole() {
        let mut sse = SseLines::default();
        assert!(sse.push(b"data: {\"a\":").is_empty());
        assert_eq!(sse.push(b"1}\n\n: keep-alive\n\ndata: [DONE]\n\n"), vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]);
    }

    #[test]
    fn bodies_ask_for_usage_and_pass_benchmark_extensions() {
        let client = OpenAiClient::new("http://127.0.0.1:8000/v1/", None, Some("m".into())).unwrap();
        assert_eq!(client.base(), "http://127.0.0.1:8000");
        let mut request = PredictRequest::user("hi", 8);
        request.sampling.ignore_eos = true;
        let (path, body) = client.body(&request);
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["messages"][0]["content"], "hi");
        request.prompt = Prompt::Raw("once".into());
        assert_eq!(client.body(&request).0, "/v1/completions");
        assert!(OpenAiClient::new("https://x", None, None).is_err());
    }
}
