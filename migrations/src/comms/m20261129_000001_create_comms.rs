//! Templates, campaigns, sequences and their enrolments, the delivery queue (one row per
//! recipient and step: the idempotency key of every send), call logs, the suppression list of
//! keyed hashes, and the event outbox. No table holds an e-mail address.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Templates {
    Table,
    TenantId,
    Id,
    Name,
    Purpose,
    Subject,
    Body,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Campaigns {
    Table,
    TenantId,
    Id,
    Name,
    Purpose,
    TemplateId,
    Audience,
    Status,
    CreatedBy,
    CreatedAt,
    StartedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum Sequences {
    Table,
    TenantId,
    Id,
    Name,
    Purpose,
    Steps,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Enrollments {
    Table,
    TenantId,
    SequenceId,
    ContactId,
    Status,
    Step,
    Reason,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    Id,
    TenantId,
    Origin,
    OriginId,
    Step,
    ContactId,
    Purpose,
    TemplateId,
    Status,
    Reason,
    Attempts,
    DueAt,
    LeaseUntil,
    CreatedBy,
    CreatedAt,
    SentAt,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    TenantId,
    Id,
    ContactId,
    Direction,
    StartedAt,
    DurationSeconds,
    Outcome,
    Notes,
    Recording,
    RecordingConsentId,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Suppressions {
    Table,
    TenantId,
    Hash,
    Purpose,
    Reason,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Templates::Table)
                    .col(uuid(Templates::TenantId))
                    .col(uuid(Templates::Id))
                    .col(text(Templates::Name))
                    .col(text(Templates::Purpose))
                    .col(text(Templates::Subject))
                    .col(text(Templates::Body))
                    .col(text(Templates::CreatedBy))
                    .col(timestamp_with_time_zone(Templates::CreatedAt))
                    .primary_key(Index::create().col(Templates::TenantId).col(Templates::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Campaigns::Table)
                    .col(uuid(Campaigns::TenantId))
                    .col(uuid(Campaigns::Id))
                    .col(text(Campaigns::Name))
                    .col(text(Campaigns::Purpose))
                    .col(uuid(Campaigns::TemplateId))
                    // `{"contact_ids": [...], "query": "..."}`: ids and a search, no addresses.
                    .col(json_binary(Campaigns::Audience))
                    .col(text(Campaigns::Status))
                    .col(text(Campaigns::CreatedBy))
                    .col(timestamp_with_time_zone(Campaigns::CreatedAt))
                    .col(timestamp_with_time_zone_null(Campaigns::StartedAt))
                    .col(timestamp_with_time_zone_null(Campaigns::CompletedAt))
                    .primary_key(Index::create().col(Campaigns::TenantId).col(Campaigns::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Sequences::Table)
                    .col(uuid(Sequences::TenantId))
                    .col(uuid(Sequences::Id))
                    .col(text(Sequences::Name))
                    .col(text(Sequences::Purpose))
                    // `[{"delay_seconds": n, "template_id": "..."}]`
                    .col(json_binary(Sequences::Steps))
                    .col(text(Sequences::CreatedBy))
                    .col(timestamp_with_time_zone(Sequences::CreatedAt))
                    .primary_key(Index::create().col(Sequences::TenantId).col(Sequences::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Enrollments::Table)
                    .col(uuid(Enrollments::TenantId))
                    .col(uuid(Enrollments::SequenceId))
                    .col(uuid(Enrollments::ContactId))
                    .col(text(Enrollments::Status))
                    .col(integer(Enrollments::Step))
                    .col(text_null(Enrollments::Reason))
                    .col(timestamp_with_time_zone(Enrollments::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(Enrollments::TenantId)
                            .col(Enrollments::SequenceId)
                            .col(Enrollments::ContactId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Deliveries::Table)
                    .col(uuid(Deliveries::Id).primary_key())
                    .col(uuid(Deliveries::TenantId))
                    // `message`, `campaign`, `sequence`, `consent_request`.
                    .col(text(Deliveries::Origin))
                    .col(uuid(Deliveries::OriginId))
                    .col(integer(Deliveries::Step))
                    .col(uuid(Deliveries::ContactId))
                    .col(text(Deliveries::Purpose))
                    // Nil for the built-in consent-request mail.
                    .col(uuid(Deliveries::TemplateId))
                    .col(text(Deliveries::Status))
                    .col(text_null(Deliveries::Reason))
                    .col(integer(Deliveries::Attempts))
                    .col(timestamp_with_time_zone(Deliveries::DueAt))
                    .col(timestamp_with_time_zone_null(Deliveries::LeaseUntil))
                    .col(text(Deliveries::CreatedBy))
                    .col(timestamp_with_time_zone(Deliveries::CreatedAt))
                    .col(timestamp_with_time_zone_null(Deliveries::SentAt))
                    .to_owned(),
            )
            .await?;
        // One mail per recipient and step of an origin, whatever crashes or retries happen.
        manager
            .create_index(
                Index::create()
                    .name("ux_deliveries_once")
                    .table(Deliveries::Table)
                    .col(Deliveries::TenantId)
                    .col(Deliveries::OriginId)
                    .col(Deliveries::Step)
                    .col(Deliveries::ContactId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_deliveries_due")
                    .table(Deliveries::Table)
                    .col(Deliveries::Status)
                    .col(Deliveries::DueAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_deliveries_contact")
                    .table(Deliveries::Table)
                    .col(Deliveries::TenantId)
                    .col(Deliveries::ContactId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Calls::Table)
                    .col(uuid(Calls::TenantId))
                    .col(uuid(Calls::Id))
                    .col(uuid(Calls::ContactId))
                    .col(text(Calls::Direction))
                    .col(timestamp_with_time_zone(Calls::StartedAt))
                    .col(big_integer(Calls::DurationSeconds))
                    .col(text(Calls::Outcome))
                    .col(text_null(Calls::Notes))
                    .col(boolean(Calls::Recording))
                    .col(text_null(Calls::RecordingConsentId))
                    .col(text(Calls::CreatedBy))
                    .col(timestamp_with_time_zone(Calls::CreatedAt))
                    .col(timestamp_with_time_zone(Calls::UpdatedAt))
                    .primary_key(Index::create().col(Calls::TenantId).col(Calls::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_calls_contact")
                    .table(Calls::Table)
                    .col(Calls::TenantId)
                    .col(Calls::ContactId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Suppressions::Table)
                    .col(uuid(Suppressions::TenantId))
                    // Hex HMAC of the normalised address under the tenant's key; never the address.
                    .col(text(Suppressions::Hash))
                    // A purpose key, or `*` for every purpose.
                    .col(text(Suppressions::Purpose))
                    .col(text(Suppressions::Reason))
                    .col(timestamp_with_time_zone(Suppressions::CreatedAt))
                    .primary_key(
                        Index::create().col(Suppressions::TenantId).col(Suppressions::Hash).col(Suppressions::Purpose),
                    )
                    .to_owned(),
            )
            .await?;
        crate::outbox::create(manager).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::outbox::drop(manager).await?;
        for table in [
            Suppressions::Table.into_iden(),
            Calls::Table.into_iden(),
            Deliveries::Table.into_iden(),
            Enrollments::Table.into_iden(),
            Sequences::Table.into_iden(),
            Campaigns::Table.into_iden(),
            Templates::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
