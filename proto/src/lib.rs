//! Flotilla's wire types: the generated protobuf messages and tonic service
//! stubs, and nothing else. Conversion to and from domain types happens in the
//! crates that own those types (controller `grpc/`, agent), never here.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The encoded `FileDescriptorSet` of every Flotilla service, for gRPC server
/// reflection (so `grpcurl` works without the .proto files).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flotilla_descriptor.bin"));

/// The encoded `FileDescriptorSet` of `flotilla.inference.v1` alone: what
/// the agent's reflection describes, since the agent serves no other
/// Flotilla service.
pub const INFERENCE_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));

pub mod controller {
    pub mod v1 {
        tonic::include_proto!("flotilla.controller.v1");
    }
}

pub mod fleet {
    pub mod v1 {
        tonic::include_proto!("flotilla.fleet.v1");
    }
}

pub mod inference {
    pub mod v1 {
        tonic::include_proto!("flotilla.inference.v1");
    }
}
