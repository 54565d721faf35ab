//! sea-orm migrators, one per Carnet service. Each service owns its database (a SQLite file in
//! monolith mode, a PostgreSQL database in split mode) and its own migration table, so two
//! services pointed at one database by mistake do not mix their histories.
//!
//! `carnet migrate` runs them; `carnet up` runs them at start.

pub mod comms;
pub mod consent;
pub mod contacts;
pub mod dsar;
pub mod enrichment;
pub mod gateway;
pub mod keys;
pub mod outbox;

pub use sea_orm_migration::MigratorTrait;
