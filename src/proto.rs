//! Generated gRPC code for `modelpool.v1`. These types stay at the edges: handlers convert them into the
//! domain types of [`crate::request`] as requests come in.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("modelpool.v1");

/// The encoded file descriptor set of the modelpool protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("modelpool_descriptor");
