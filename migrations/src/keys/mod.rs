//! Migrations of the key store (`carnet_kit::keystore`): its own database, used by the contacts
//! and comms services, migrated with either of them.

use sea_orm_migration::prelude::*;

mod m20261129_000001_create_keys;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261129_000001_create_keys::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_keys".into_iden()
    }
}
