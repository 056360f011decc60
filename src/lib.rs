//! modelpool: run a pool of local LLM workers and measure what the pool buys.
//!
//! This root crate holds what the worker, the coordinator and the bench client share: the generated gRPC
//! code ([`proto`]), the validated request types ([`request`]) and the answer ([`response`]), structured
//! output formats ([`response_format`]), pool membership as the daemons see it ([`membership`]: what a
//! worker reports, heartbeats, a worker's status), the error-to-status mapping ([`error`]), the memory
//! probe ([`memory`]), streaming text helpers ([`text`]), the cheap context bound both daemons check
//! before tokenizing ([`context_fit`]), the gRPC ports' connection limits ([`grpc_incoming`]), the pool's
//! shared secret ([`auth`]), TLS settings ([`tls`]) and the flags for both ([`security_args`]), the
//! engine kind both daemons name ([`engine_kind`]), telemetry and the shutdown signal.
//!
//! What reads a model (its GGUF metadata, folder, tokenizer, chat template, the default model's cache)
//! is the `model-input` crate's: the worker and the lab use it, the coordinator links none of it.

pub mod auth;
pub mod context_fit;
pub mod engine_kind;
pub mod error;
pub mod grpc_incoming;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod proto;
pub mod request;
pub mod response;
pub mod response_format;
pub mod rng;
pub mod security_args;
pub mod shutdown;
pub mod telemetry;
pub mod text;
pub mod tls;

pub use engine_kind::{DEFAULT_CONTEXT_PER_SLOT, DEFAULT_PROMPT_CACHE_MIB, EngineKind};
pub use error::PoolError;
pub use request::{ChatMessage, PredictRequest, Prompt, Role, SamplingParams};
