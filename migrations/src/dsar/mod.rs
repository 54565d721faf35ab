//! Migrations of the DSAR service.

use sea_orm_migration::prelude::*;

mod m20261129_000001_create_dsar;
mod m20261130_000003_create_retention;
mod m20261201_000002_create_audit_log;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_create_dsar::Migration),
            Box::new(m20261201_000002_create_audit_log::Migration),
            Box::new(m20261130_000003_create_retention::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_dsar".into_iden()
    }
}
