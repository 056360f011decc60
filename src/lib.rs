//! modelpool: run a pool of local LLM workers and measure what the pool buys.
//!
//! This root crate holds what the worker, the coordinator and the bench client share: the generated gRPC
//! code ([`proto`]), the validated request types ([`request`]) and the answer ([`response`]), pool membership as the daemons see it
//! ([`membership`]: what a worker reports, heartbeats, a worker's status), the error-to-status mapping ([`error`]),
//! the memory probe ([`memory`]), the default-model cache ([`model_cache`]), streaming text helpers
//! ([`text`]), a GGUF metadata reader ([`gguf`]), an mlx-lm folder's text files ([`model_folder`]), the
//! model's tokenizer ([`tokenizer`]) and chat template ([`chat_template`]) and the two together
//! ([`prompt_format`]), the cheap context bound both daemons check before tokenizing ([`context_fit`]),
//! the gRPC ports' connection limits ([`grpc_incoming`]), the pool's shared secret ([`auth`]), TLS
//! settings ([`tls`]) and the flags for both ([`security_args`]),
//! the engine kind both daemons name ([`engine_kind`]), telemetry and the shutdown signal.

pub mod auth;
pub mod chat_template;
pub mod context_fit;
pub mod engine_kind;
pub mod error;
pub mod gguf;
pub mod grpc_incoming;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod model_cache;
pub mod model_folder;
pub mod prompt_format;
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
pub mod tokenizer;

pub use engine_kind::{DEFAULT_CONTEXT_PER_SLOT, DEFAULT_PROMPT_CACHE_MIB, EngineKind};
pub use error::PoolError;
pub use request::{ChatMessage, PredictRequest, Prompt, Role, SamplingParams};
