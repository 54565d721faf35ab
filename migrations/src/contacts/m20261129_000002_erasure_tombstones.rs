//! Keyed-hash tombstones of erased people: an import or create of the same e-mail or phone is
//! refused unless explicitly overridden with a reason.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ErasureTombstones {
    Table,
    TenantId,
    Hash,
    Field,
    RequestId,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ErasureTombstones::Table)
                    .col(uuid(ErasureTombstones::TenantId))
                    // Hex HMAC of the normalised value under the tenant's key; never the value.
                    .col(text(ErasureTombstones::Hash))
                    // `email` or `phone`.
                    .col(text(ErasureTombstones::Field))
                    .col(text(ErasureTombstones::RequestId))
                    .col(timestamp_with_time_zone(ErasureTombstones::CreatedAt))
                    .primary_key(Index::create().col(ErasureTombstones::TenantId).col(ErasureTombstones::Hash))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ErasureTombstones::Table).to_owned()).await
    }
}
