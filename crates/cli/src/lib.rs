//! The `carnet` binary as a library: configuration, targets and node start-up, shared by the
//! command line and the in-process test sandbox.

pub mod api;
pub mod config;
pub mod import;
pub mod node;
pub mod target;

pub use config::CarnetConfig;
pub use node::{Mode, Node};
pub use target::Target;
