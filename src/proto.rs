//! Generated gRPC code for `modelpool.v1`. These types stay at the edges: handlers convert them into the
//! domain types of [`crate::request`], [`crate::response`] and [`crate::membership`] as messages come in,
//! and back as they go out; those modules hold every conversion.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("modelpool.v1");

/// The encoded file descriptor set of the modelpool protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("modelpool_descriptor");

/// Request metadata for `Worker/PredictStream`: send the text gathered at most every this many
/// milliseconds (and at the first token) instead of piece by piece. A caller that only watches progress
/// (the coordinator, for unary prompts) then wakes once per interval, not once per token.
pub const STREAM_INTERVAL_MS_HEADER: &str = "modelpool-stream-interval-ms";

/// The largest interval [`STREAM_INTERVAL_MS_HEADER`] accepts.
pub const MAX_STREAM_INTERVAL_MS: u64 = 60_000;
