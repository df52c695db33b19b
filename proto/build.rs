//! Compiles the .proto files with protox (a pure-Rust protobuf compiler), so
//! that a fresh machine builds with cargo alone: no system `protoc` needed.
//! Also writes the encoded descriptor sets for gRPC server reflection: all
//! of Flotilla's services (the controller's), and the inference service
//! alone (the agent's).

use std::path::PathBuf;

use prost::Message;

const INFERENCE_PROTO: &str = "flotilla/inference/v1/inference.proto";
const PROTO_FILES: &[&str] = &[
    "flotilla/controller/v1/controller.proto",
    "flotilla/fleet/v1/fleet.proto",
    INFERENCE_PROTO,
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let file_descriptors = protox::compile(PROTO_FILES, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("flotilla_descriptor.bin"),
        file_descriptors.encode_to_vec(),
    )?;
    // The agent's reflection describes only the service it serves.
    let inference = protox::compile([INFERENCE_PROTO], ["proto"])?;
    std::fs::write(
        out_dir.join("inference_descriptor.bin"),
        inference.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(file_descriptors)?;
    Ok(())
}
