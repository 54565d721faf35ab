//! carnet-kit: the plumbing every Carnet service shares.
//!
//! - [`config`]: layered configuration (defaults → `carnet.toml` → `CARNET__…` env) with
//!   unknown keys refused and secrets redacted on display.
//! - [`telemetry`]: `tracing` with optional OpenTelemetry OTLP export.
//! - [`error`]: the one error-code table, mapped to gRPC status and HTTP status.
//! - [`caller`]: the signed caller context (tenant, principal, permissions) carried in gRPC metadata.
//! - [`db`]: database connections (SQLite with WAL by default, PostgreSQL in split mode).
//! - [`grpc`]: conversions shared by the gRPC handlers.
//! - [`outbox`]: events written in the same transaction as the change, and the relay that
//!   publishes them.
//! - [`bus`]: the event bus (embedded, or NATS JetStream).

pub mod audit;
pub mod bus;
pub mod caller;
pub mod config;
pub mod db;
pub mod deadline;
pub mod error;
pub mod grpc;
pub mod keystore;
pub mod links;
pub mod metrics;
pub mod outbox;
pub mod telemetry;

pub use caller::{Caller, CallerInterceptor, CallerSigner, MeshKey, Permission};
pub use error::{ErrorCode, ServiceError};
