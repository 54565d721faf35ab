//! Migrations of the enrichment service.

use sea_orm_migration::prelude::*;

mod m20261129_000001_create_enrichment;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261129_000001_create_enrichment::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_enrichment".into_iden()
    }
}
