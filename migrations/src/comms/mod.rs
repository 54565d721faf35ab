//! Migrations of the comms service.

use sea_orm_migration::prelude::*;

mod m20261129_000001_create_comms;
mod m20261129_000002_sealed_personal_text;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_create_comms::Migration),
            Box::new(m20261129_000002_sealed_personal_text::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_comms".into_iden()
    }
}
