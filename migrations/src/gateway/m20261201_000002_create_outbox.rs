//! The gateway's event outbox: API key changes are audited (`audit.recorded`) in the transaction
//! that makes them, like every other service's changes (docs/audit.md).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::outbox::create(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::outbox::drop(manager).await
    }
}
