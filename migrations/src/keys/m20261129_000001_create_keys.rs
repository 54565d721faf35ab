//! Tenant keys (versioned, wrapped by the KMS), tenant blind-index keys, and subject keys
//! (wrapped by a tenant key version). Destroying a subject key is the erasure of everything
//! encrypted under it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TenantKeys {
    Table,
    TenantId,
    Version,
    KmsKeyId,
    Wrapped,
    CreatedAt,
}

#[derive(DeriveIden)]
enum TenantIndexKeys {
    Table,
    TenantId,
    KmsKeyId,
    Wrapped,
    CreatedAt,
}

#[derive(DeriveIden)]
enum SubjectKeys {
    Table,
    TenantId,
    SubjectId,
    TenantKeyVersion,
    Wrapped,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TenantKeys::Table)
                    .col(uuid(TenantKeys::TenantId))
                    .col(integer(TenantKeys::Version))
                    // The KMS key that wrapped it (`local:<fingerprint>` for the local KMS).
                    .col(text(TenantKeys::KmsKeyId))
                    .col(blob(TenantKeys::Wrapped))
                    .col(timestamp_with_time_zone(TenantKeys::CreatedAt))
                    .primary_key(Index::create().col(TenantKeys::TenantId).col(TenantKeys::Version))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TenantIndexKeys::Table)
                    .col(uuid(TenantIndexKeys::TenantId).primary_key())
                    .col(text(TenantIndexKeys::KmsKeyId))
                    .col(blob(TenantIndexKeys::Wrapped))
                    .col(timestamp_with_time_zone(TenantIndexKeys::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SubjectKeys::Table)
                    .col(uuid(SubjectKeys::TenantId))
                    // The contact id: the subject key across services.
                    .col(uuid(SubjectKeys::SubjectId))
                    .col(integer(SubjectKeys::TenantKeyVersion))
                    .col(blob(SubjectKeys::Wrapped))
                    .col(timestamp_with_time_zone(SubjectKeys::CreatedAt))
                    .primary_key(Index::create().col(SubjectKeys::TenantId).col(SubjectKeys::SubjectId))
                    // A tenant key version cannot go while a subject key is wrapped by it.
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_subject_keys_tenant_key")
                            .from(SubjectKeys::Table, (SubjectKeys::TenantId, SubjectKeys::TenantKeyVersion))
                            .to(TenantKeys::Table, (TenantKeys::TenantId, TenantKeys::Version))
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        // Rotation walks the subject keys of one tenant still wrapped by an older version.
        manager
            .create_index(
                Index::create()
                    .name("ix_subject_keys_version")
                    .table(SubjectKeys::Table)
                    .col(SubjectKeys::TenantId)
                    .col(SubjectKeys::TenantKeyVersion)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [SubjectKeys::Table.into_iden(), TenantIndexKeys::Table.into_iden(), TenantKeys::Table.into_iden()]
        {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
