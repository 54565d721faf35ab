//! Bulk imports (docs/import.md): the job with its terms and progress, and the per-line report.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Imports {
    Table,
    TenantId,
    Id,
    Status,
    FileName,
    Format,
    Terms,
    Actor,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
    LinesDone,
    BytesDone,
    HeaderSha256,
    ChainSha256,
    Created,
    Updated,
    Skipped,
    Failed,
}

#[derive(DeriveIden)]
enum ImportRows {
    Table,
    TenantId,
    ImportId,
    Line,
    Outcome,
    Reason,
    ContactId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Imports::Table)
                    .col(uuid(Imports::TenantId))
                    .col(uuid(Imports::Id))
                    .col(text(Imports::Status))
                    .col(text(Imports::FileName))
                    .col(text(Imports::Format))
                    // Mapping, lawful basis, purposes, evidence, duplicates, override reason.
                    .col(json_binary(Imports::Terms))
                    .col(text(Imports::Actor))
                    .col(timestamp_with_time_zone(Imports::CreatedAt))
                    .col(timestamp_with_time_zone(Imports::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Imports::FinishedAt))
                    // The resume point: the last line processed, the bytes up to its end, the
                    // header's hash and the chained hash of every record up to it (a re-sent
                    // file must match the processed part record for record).
                    .col(big_integer(Imports::LinesDone))
                    .col(big_integer(Imports::BytesDone))
                    .col(text(Imports::HeaderSha256))
                    .col(text(Imports::ChainSha256))
                    .col(big_integer(Imports::Created))
                    .col(big_integer(Imports::Updated))
                    .col(big_integer(Imports::Skipped))
                    .col(big_integer(Imports::Failed))
                    .primary_key(Index::create().col(Imports::TenantId).col(Imports::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ImportRows::Table)
                    .col(uuid(ImportRows::TenantId))
                    .col(uuid(ImportRows::ImportId))
                    .col(big_integer(ImportRows::Line))
                    .col(text(ImportRows::Outcome))
                    // A code and a field key (`already_exists:email`), never a value.
                    .col(text(ImportRows::Reason))
                    .col(uuid_null(ImportRows::ContactId))
                    .primary_key(
                        Index::create().col(ImportRows::TenantId).col(ImportRows::ImportId).col(ImportRows::Line),
                    )
                    .to_owned(),
            )
            .await?;
        // In-file duplicates: which earlier row of this import holds a contact.
        manager
            .create_index(
                Index::create()
                    .name("ix_import_rows_contact")
                    .table(ImportRows::Table)
                    .col(ImportRows::TenantId)
                    .col(ImportRows::ImportId)
                    .col(ImportRows::ContactId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ImportRows::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Imports::Table).to_owned()).await
    }
}
