//! Compiles the .proto files in pure Rust with protox (no system `protoc`) and
//! generates prost messages and tonic clients/servers from the descriptor set.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "carnet/common/v1/common.proto",
    "carnet/contacts/v1/contacts.proto",
    "carnet/consent/v1/consent.proto",
    "carnet/comms/v1/comms.proto",
    "carnet/dsar/v1/dsar.proto",
    "carnet/enrichment/v1/enrichment.proto",
    "carnet/events/v1/events.proto",
    "carnet/bench/v1/echo.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    // Kept for gRPC server reflection.
    std::fs::write(out_dir.join("carnet_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
