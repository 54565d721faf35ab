//! Requests, their per-service tasks, legal holds, encrypted export artefacts, the erasure ledger
//! (pseudonyms, no personal data) and the event outbox.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DsarRequests {
    Table,
    TenantId,
    Id,
    Kind,
    SubjectId,
    Status,
    Verification,
    ReceivedAt,
    DueAt,
    Extended,
    ExtensionReason,
    CompletedAt,
    RejectionReason,
    Details,
    Recipients,
    ExportExpiresAt,
    CreatedBy,
}

#[derive(DeriveIden)]
enum DsarTasks {
    Table,
    TenantId,
    RequestId,
    Service,
    Status,
    Attempts,
    NextAt,
    ConfirmedAt,
    Records,
}

#[derive(DeriveIden)]
enum ErasureLedger {
    Table,
    TenantId,
    RequestId,
    SubjectPseudonym,
    Participants,
    Removed,
    RequestedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum LegalHolds {
    Table,
    TenantId,
    Id,
    SubjectId,
    Reason,
    PlacedBy,
    PlacedAt,
    LiftedAt,
    LiftedBy,
    LiftReason,
}

#[derive(DeriveIden)]
enum DsarExports {
    Table,
    TenantId,
    RequestId,
    Nonce,
    Ciphertext,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DsarRequests::Table)
                    .col(uuid(DsarRequests::TenantId))
                    .col(uuid(DsarRequests::Id))
                    .col(text(DsarRequests::Kind))
                    .col(uuid(DsarRequests::SubjectId))
                    .col(text(DsarRequests::Status))
                    .col(text_null(DsarRequests::Verification))
                    .col(timestamp_with_time_zone(DsarRequests::ReceivedAt))
                    .col(timestamp_with_time_zone(DsarRequests::DueAt))
                    .col(boolean(DsarRequests::Extended))
                    .col(text_null(DsarRequests::ExtensionReason))
                    .col(timestamp_with_time_zone_null(DsarRequests::CompletedAt))
                    .col(text_null(DsarRequests::RejectionReason))
                    // Rectification changes are personal data: erased with the subject.
                    .col(json_binary(DsarRequests::Details))
                    .col(json_binary(DsarRequests::Recipients))
                    .col(timestamp_with_time_zone_null(DsarRequests::ExportExpiresAt))
                    .col(text(DsarRequests::CreatedBy))
                    .primary_key(Index::create().col(DsarRequests::TenantId).col(DsarRequests::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DsarTasks::Table)
                    .col(uuid(DsarTasks::TenantId))
                    .col(uuid(DsarTasks::RequestId))
                    .col(text(DsarTasks::Service))
                    .col(text(DsarTasks::Status))
                    .col(integer(DsarTasks::Attempts))
                    .col(timestamp_with_time_zone(DsarTasks::NextAt))
                    .col(timestamp_with_time_zone_null(DsarTasks::ConfirmedAt))
                    .col(json_binary(DsarTasks::Records))
                    .primary_key(
                        Index::create().col(DsarTasks::TenantId).col(DsarTasks::RequestId).col(DsarTasks::Service),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_dsar_tasks_due")
                    .table(DsarTasks::Table)
                    .col(DsarTasks::Status)
                    .col(DsarTasks::NextAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ErasureLedger::Table)
                    .col(uuid(ErasureLedger::TenantId))
                    .col(uuid(ErasureLedger::RequestId))
                    .col(text(ErasureLedger::SubjectPseudonym))
                    .col(json_binary(ErasureLedger::Participants))
                    .col(json_binary(ErasureLedger::Removed))
                    .col(timestamp_with_time_zone(ErasureLedger::RequestedAt))
                    .col(timestamp_with_time_zone_null(ErasureLedger::CompletedAt))
                    .primary_key(Index::create().col(ErasureLedger::TenantId).col(ErasureLedger::RequestId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LegalHolds::Table)
                    .col(uuid(LegalHolds::TenantId))
                    .col(uuid(LegalHolds::Id))
                    .col(uuid(LegalHolds::SubjectId))
                    .col(text(LegalHolds::Reason))
                    .col(text(LegalHolds::PlacedBy))
                    .col(timestamp_with_time_zone(LegalHolds::PlacedAt))
                    .col(timestamp_with_time_zone_null(LegalHolds::LiftedAt))
                    .col(text_null(LegalHolds::LiftedBy))
                    .col(text_null(LegalHolds::LiftReason))
                    .primary_key(Index::create().col(LegalHolds::TenantId).col(LegalHolds::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DsarExports::Table)
                    .col(uuid(DsarExports::TenantId))
                    .col(uuid(DsarExports::RequestId))
                    .col(blob(DsarExports::Nonce))
                    .col(blob(DsarExports::Ciphertext))
                    .col(timestamp_with_time_zone(DsarExports::ExpiresAt))
                    .primary_key(Index::create().col(DsarExports::TenantId).col(DsarExports::RequestId))
                    .to_owned(),
            )
            .await?;
        crate::outbox::create(manager).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::outbox::drop(manager).await?;
        for table in [
            DsarExports::Table.into_iden(),
            LegalHolds::Table.into_iden(),
            ErasureLedger::Table.into_iden(),
            DsarTasks::Table.into_iden(),
            DsarRequests::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
