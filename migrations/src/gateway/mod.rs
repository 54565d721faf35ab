//! Migrations of the gateway: tenants and API keys.

use sea_orm_migration::prelude::*;

mod m20261129_000001_create_tenants_and_keys;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261129_000001_create_tenants_and_keys::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_gateway".into_iden()
    }
}
