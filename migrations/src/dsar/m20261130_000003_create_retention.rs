//! Retention (docs/retention.md): each tenant's policies and switches, the record of every purge,
//! and the warnings mailed before an inactivity deletion.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RetentionSettings {
    Table,
    TenantId,
    Policies,
    EraseOnWithdrawal,
    WarningPurpose,
    WarningSubject,
    WarningBody,
    UpdatedBy,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RetentionPurges {
    Table,
    TenantId,
    Id,
    RecordType,
    Service,
    Trigger,
    Days,
    Cutoff,
    Purged,
    Warned,
    Skipped,
    RequestIds,
    Actor,
    RanAt,
}

#[derive(DeriveIden)]
enum RetentionWarnings {
    Table,
    TenantId,
    SubjectId,
    WarnedAt,
    Outcome,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RetentionSettings::Table)
                    .col(uuid(RetentionSettings::TenantId).primary_key())
                    // `[{record_type, days, warn_days}]`.
                    .col(json_binary(RetentionSettings::Policies))
                    .col(boolean(RetentionSettings::EraseOnWithdrawal))
                    .col(text(RetentionSettings::WarningPurpose))
                    .col(text(RetentionSettings::WarningSubject))
                    .col(text(RetentionSettings::WarningBody))
                    .col(text(RetentionSettings::UpdatedBy))
                    .col(timestamp_with_time_zone(RetentionSettings::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RetentionPurges::Table)
                    .col(uuid(RetentionPurges::TenantId))
                    .col(uuid(RetentionPurges::Id))
                    .col(text(RetentionPurges::RecordType))
                    .col(text(RetentionPurges::Service))
                    // `schedule`, `manual`, `consent_withdrawn`.
                    .col(text(RetentionPurges::Trigger))
                    .col(integer(RetentionPurges::Days))
                    .col(timestamp_with_time_zone(RetentionPurges::Cutoff))
                    .col(big_integer(RetentionPurges::Purged))
                    .col(big_integer(RetentionPurges::Warned))
                    .col(big_integer(RetentionPurges::Skipped))
                    // The erasure requests opened (contacts): ids only.
                    .col(json_binary(RetentionPurges::RequestIds))
                    .col(text(RetentionPurges::Actor))
                    .col(timestamp_with_time_zone(RetentionPurges::RanAt))
                    .primary_key(Index::create().col(RetentionPurges::TenantId).col(RetentionPurges::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RetentionWarnings::Table)
                    .col(uuid(RetentionWarnings::TenantId))
                    .col(uuid(RetentionWarnings::SubjectId))
                    .col(timestamp_with_time_zone(RetentionWarnings::WarnedAt))
                    // `queued` (the message id) or why it was not sent.
                    .col(text(RetentionWarnings::Outcome))
                    .primary_key(Index::create().col(RetentionWarnings::TenantId).col(RetentionWarnings::SubjectId))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["retention_warnings", "retention_purges", "retention_settings"] {
            manager.drop_table(Table::drop().table(Alias::new(table)).to_owned()).await?;
        }
        Ok(())
    }
}
