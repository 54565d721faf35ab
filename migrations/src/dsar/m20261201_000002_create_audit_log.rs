//! The audit trail: one hash chain per tenant (docs/audit.md). `(tenant_id, seq)` is the primary
//! key, so two DSAR replicas appending at once cannot both write the same position: the loser
//! retries on the new head and the chain never forks. `(tenant_id, event_id)` is unique, so an
//! `audit.recorded` event delivered twice is stored once.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    TenantId,
    Seq,
    EventId,
    OccurredAt,
    RecordedAt,
    Actor,
    Action,
    RecordType,
    RecordId,
    SubjectId,
    Api,
    RequestId,
    Service,
    Fields,
    PrevHash,
    Hash,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .col(uuid(AuditLog::TenantId))
                    .col(big_integer(AuditLog::Seq))
                    .col(uuid(AuditLog::EventId))
                    .col(timestamp_with_time_zone(AuditLog::OccurredAt))
                    .col(timestamp_with_time_zone(AuditLog::RecordedAt))
                    .col(text(AuditLog::Actor))
                    .col(text(AuditLog::Action))
                    .col(text(AuditLog::RecordType))
                    .col(text(AuditLog::RecordId))
                    // Empty when the record belongs to no contact.
                    .col(text(AuditLog::SubjectId))
                    .col(text(AuditLog::Api))
                    .col(text(AuditLog::RequestId))
                    .col(text(AuditLog::Service))
                    // A JSON array of field keys (never values), in the order recorded.
                    .col(json_binary(AuditLog::Fields))
                    .col(text(AuditLog::PrevHash))
                    .col(text(AuditLog::Hash))
                    .primary_key(Index::create().col(AuditLog::TenantId).col(AuditLog::Seq))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_audit_log_event")
                    .table(AuditLog::Table)
                    .col(AuditLog::TenantId)
                    .col(AuditLog::EventId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The filters people use most: a person's trail, a record's trail, an actor's trail.
        for (name, column) in [
            ("ix_audit_log_subject", AuditLog::SubjectId),
            ("ix_audit_log_record", AuditLog::RecordId),
            ("ix_audit_log_actor", AuditLog::Actor),
            ("ix_audit_log_recorded", AuditLog::RecordedAt),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(AuditLog::Table)
                        .col(AuditLog::TenantId)
                        .col(column)
                        .col(AuditLog::Seq)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(AuditLog::Table).to_owned()).await
    }
}
