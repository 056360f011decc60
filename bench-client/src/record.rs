//! One request's record: what the client saw and what the pool reported. Every runner fills it,
//! every summary and report reads it.

/// What happened to one request, as the client saw it and as the pool reported it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RequestRecord {
    pub index: usize,
    pub request_id: String,
    pub ok: bool,
    pub error: Option<String>,
    /// Time the request waited in the client for a free concurrency slot.
    pub client_wait_ms: f64,
    /// From sending to receiving the whole response.
    pub e2e_ms: f64,
    /// Coordinator queue wait plus the worker's time to first token.
    pub ttft_ms: f64,
    pub coordinator_queue_ms: f64,
    pub worker_queue_ms: f64,
    /// Decode time divided by the tokens after the first (time per output token).
    pub tpot_ms: f64,
    pub prompt_tokens: u32,
    /// Prompt tokens the server reused from its prefix cache instead of computing them.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub worker_id: String,
    pub attempts: u32,
    /// Gaps between consecutive tokens as the worker produced them.
    pub inter_token_ms: Vec<f32>,
    pub text: String,
}
