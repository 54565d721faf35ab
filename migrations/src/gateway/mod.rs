//! Migrations of the gateway: tenants, API keys and the event outbox.

use sea_orm_migration::prelude::*;

mod m20261129_000001_create_tenants_and_keys;
mod m20261201_000002_create_outbox;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_create_tenants_and_keys::Migration),
            Box::new(m20261201_000002_create_outbox::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_gateway".into_iden()
    }
}
