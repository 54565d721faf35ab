//! Migrations of the contacts service.

use sea_orm_migration::prelude::*;

mod m20261129_000001_create_contacts;
mod m20261129_000002_erasure_tombstones;
mod m20261129_000003_field_sources;
mod m20261129_000004_sealed_personal_data;
mod m20261130_000005_last_activity;
mod m20261130_000006_imports;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_create_contacts::Migration),
            Box::new(m20261129_000002_erasure_tombstones::Migration),
            Box::new(m20261129_000003_field_sources::Migration),
            Box::new(m20261129_000004_sealed_personal_data::Migration),
            Box::new(m20261130_000005_last_activity::Migration),
            Box::new(m20261130_000006_imports::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_contacts".into_iden()
    }
}
