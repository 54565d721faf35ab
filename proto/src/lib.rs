//! Protobuf messages and tonic services of Carnet.
//!
//! Generated at build time from `proto/carnet/**` with protox and tonic-prost-build.
//! Packages follow `carnet.<service>.v1`.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// The encoded `FileDescriptorSet` of every Carnet proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/carnet_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("carnet.common.v1");
    }
}

pub mod contacts {
    pub mod v1 {
        tonic::include_proto!("carnet.contacts.v1");
    }
}

pub mod consent {
    pub mod v1 {
        tonic::include_proto!("carnet.consent.v1");
    }
}

pub mod comms {
    pub mod v1 {
        tonic::include_proto!("carnet.comms.v1");
    }
}

pub mod dsar {
    pub mod v1 {
        tonic::include_proto!("carnet.dsar.v1");
    }
}

pub mod enrichment {
    pub mod v1 {
        tonic::include_proto!("carnet.enrichment.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("carnet.events.v1");
    }
}

pub mod bench {
    pub mod v1 {
        tonic::include_proto!("carnet.bench.v1");
    }
}
