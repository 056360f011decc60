//! A prompt's answer as the coordinator carries it from a worker to the caller: converted from the
//! wire's `PredictResponse` where a worker's stream ends and back where the caller is answered.

use crate::proto;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// `max_tokens` was reached.
    Length,
    /// A stop string was produced (it is not part of the text).
    StopSequence,
}

/// Where the time of one prompt went, in milliseconds (see `Timings` in predict.proto).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub ttft_ms: f64,
    pub decode_ms: f64,
    pub total_ms: f64,
    pub decode_tokens_per_second: f64,
    /// Set by the coordinator: time in its queue before a worker took the prompt.
    pub coordinator_queue_ms: f64,
    pub inter_token_ms: Vec<f32>,
}

/// A generated answer with its accounting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PredictResponse {
    pub request_id: String,
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// None when the worker did not say.
    pub finish_reason: Option<FinishReason>,
    pub timings: Option<Timings>,
    /// The worker that produced it (set by the coordinator).
    pub worker_id: String,
    /// Workers tried, 1 unless a failed attempt was retried.
    pub attempts: u32,
    /// Prompt tokens reused from the worker's prefix cache, and of those, copied from another slot.
    pub cached_tokens: u32,
    pub copied_tokens: u32,
}

impl From<proto::PredictResponse> for PredictResponse {
    fn from(r: proto::PredictResponse) -> Self {
        let finish_reason = match proto::FinishReason::try_from(r.finish_reason) {
            Ok(proto::FinishReason::Eos) => Some(FinishReason::Eos),
            Ok(proto::FinishReason::Length) => Some(FinishReason::Length),
            Ok(proto::FinishReason::StopSequence) => Some(FinishReason::StopSequence),
            Ok(proto::FinishReason::Unspecified) | Err(_) => None,
        };
        Self {
            request_id: r.request_id,
            text: r.text,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            finish_reason,
            timings: r.timings.map(|t| Timings {
                queue_ms: t.queue_ms,
                prefill_ms: t.prefill_ms,
                ttft_ms: t.ttft_ms,
                decode_ms: t.decode_ms,
                total_ms: t.total_ms,
                decode_tokens_per_second: t.decode_tokens_per_second,
                coordinator_queue_ms: t.coordinator_queue_ms,
                inter_token_ms: t.inter_token_ms,
            }),
            worker_id: r.worker_id,
            attempts: r.attempts,
            cached_tokens: r.cached_tokens,
            copied_tokens: r.copied_tokens,
        }
    }
}

impl From<PredictResponse> for proto::PredictResponse {
    fn from(r: PredictResponse) -> Self {
        let finish_reason = match r.finish_reason {
            None => proto::FinishReason::Unspecified,
            Some(FinishReason::Eos) => proto::FinishReason::Eos,
            Some(FinishReason::Length) => proto::FinishReason::Length,
            Some(FinishReason::StopSequence) => proto::FinishReason::StopSequence,
        };
        Self {
            request_id: r.request_id,
            text: r.text,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            finish_reason: finish_reason as i32,
            timings: r.timings.map(|t| proto::Timings {
                queue_ms: t.queue_ms,
                prefill_ms: t.prefill_ms,
                ttft_ms: t.ttft_ms,
                decode_ms: t.decode_ms,
                total_ms: t.total_ms,
                decode_tokens_per_second: t.decode_tokens_per_second,
                coordinator_queue_ms: t.coordinator_queue_ms,
                inter_token_ms: t.inter_token_ms,
            }),
            worker_id: r.worker_id,
            attempts: r.attempts,
            cached_tokens: r.cached_tokens,
            copied_tokens: r.copied_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_wire_type() {
        let response = PredictResponse {
            request_id: "r1".into(),
            text: "hi".into(),
            prompt_tokens: 12,
            completion_tokens: 2,
            finish_reason: Some(FinishReason::StopSequence),
            timings: Some(Timings { ttft_ms: 3.5, coordinator_queue_ms: 1.0, inter_token_ms: vec![4.0], ..Default::default() }),
            worker_id: "w1-7".into(),
            attempts: 2,
            cached_tokens: 8,
            copied_tokens: 4,
        };
        assert_eq!(PredictResponse::from(proto::PredictResponse::from(response.clone())), response);
        let unsaid = PredictResponse { finish_reason: None, timings: None, ..response };
        assert_eq!(PredictResponse::from(proto::PredictResponse::from(unsaid.clone())), unsaid);
    }
}
