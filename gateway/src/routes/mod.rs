//! The REST routes, one module per service they front.

pub mod audit;
pub mod comms;
pub mod consent;
pub mod contacts;
pub mod dsar;
pub mod enrichment;
pub mod export;
pub mod forms;
pub mod imports;
pub mod keys;
pub mod me;
pub mod public;
pub mod retention;
