//! Generates the auditledger.v1 messages (always) and the tonic services (feature `grpc`).
//! `protoc` comes from `PROTOC` when set, otherwise from `PATH`.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/auditledger/v1/event.proto",
    "proto/auditledger/v1/common.proto",
    "proto/auditledger/v1/ingest.proto",
    "proto/auditledger/v1/log.proto",
    "proto/auditledger/v1/investigate.proto",
    "proto/auditledger/v1/compliance.proto",
    "proto/auditledger/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PROTOC");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        // Deterministic leaf encoding (DESIGN §10): map entries sorted by key.
        .btree_map(".")
        .file_descriptor_set_path(out_dir.join("auditledger_descriptor.bin"))
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
