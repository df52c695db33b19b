//! Compiles the .proto files with protox (a pure-Rust protobuf compiler), so
//! that a fresh machine builds with cargo alone: no system `protoc` needed.
//! Also writes the encoded descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTO_FILES: &[&str] = &[
    "flotilla/controller/v1/controller.proto",
    "flotilla/fleet/v1/fleet.proto",
    "flotilla/inference/v1/inference.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let file_descriptors = protox::compile(PROTO_FILES, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("flotilla_descriptor.bin"),
        file_descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(file_descriptors)?;
    Ok(())
}
