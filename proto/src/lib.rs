//! The `auditledger.v1` API (DESIGN §5): prost messages and, with the `grpc` feature, the tonic
//! clients and servers. The `.proto` files under `proto/` are the source of truth.

/// Package `auditledger.v1`.
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::large_enum_variant,
        clippy::doc_lazy_continuation
    )]
    include!(concat!(env!("OUT_DIR"), "/auditledger.v1.rs"));
}

/// Encoded `FileDescriptorSet` of every auditledger.v1 file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/auditledger_descriptor.bin"));

/// Current `AuditEvent.schema_version`.
pub const SCHEMA_VERSION: u32 = 1;
