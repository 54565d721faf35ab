//! Purposes, their versioned notice texts, the append-only consent ledger, the current state
//! derived from it, and the event outbox.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Purposes {
    Table,
    TenantId,
    Key,
    Description,
    LawfulBasis,
    CurrentVersion,
    CreatedAt,
}

#[derive(DeriveIden)]
enum NoticeVersions {
    Table,
    TenantId,
    PurposeKey,
    Version,
    Text,
    Sha256,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ConsentRecords {
    Table,
    Id,
    TenantId,
    ContactId,
    PurposeKey,
    Action,
    Status,
    LawfulBasis,
    Source,
    FormId,
    NoticeVersion,
    NoticeSha256,
    IpHash,
    UserAgent,
    Justification,
    Actor,
    At,
}

#[derive(DeriveIden)]
enum ConsentStates {
    Table,
    TenantId,
    ContactId,
    PurposeKey,
    Status,
    LawfulBasis,
    NoticeVersion,
    RecordId,
    Since,
}

#[derive(DeriveIden)]
enum Forms {
    Table,
    TenantId,
    Id,
    Name,
    Fields,
    Consents,
    CreatedBy,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Purposes::Table)
                    .col(uuid(Purposes::TenantId))
                    .col(text(Purposes::Key))
                    .col(text(Purposes::Description))
                    .col(text(Purposes::LawfulBasis))
                    .col(integer(Purposes::CurrentVersion))
                    .col(timestamp_with_time_zone(Purposes::CreatedAt))
                    .primary_key(Index::create().col(Purposes::TenantId).col(Purposes::Key))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(NoticeVersions::Table)
                    .col(uuid(NoticeVersions::TenantId))
                    .col(text(NoticeVersions::PurposeKey))
                    .col(integer(NoticeVersions::Version))
                    // Immutable once written: a new text is a new version.
                    .col(text(NoticeVersions::Text))
                    .col(text(NoticeVersions::Sha256))
                    .col(text(NoticeVersions::CreatedBy))
                    .col(timestamp_with_time_zone(NoticeVersions::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(NoticeVersions::TenantId)
                            .col(NoticeVersions::PurposeKey)
                            .col(NoticeVersions::Version),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ConsentRecords::Table)
                    .col(uuid(ConsentRecords::Id).primary_key())
                    .col(uuid(ConsentRecords::TenantId))
                    .col(uuid(ConsentRecords::ContactId))
                    .col(text(ConsentRecords::PurposeKey))
                    .col(text(ConsentRecords::Action))
                    .col(text(ConsentRecords::Status))
                    .col(text(ConsentRecords::LawfulBasis))
                    .col(text(ConsentRecords::Source))
                    .col(text_null(ConsentRecords::FormId))
                    .col(integer_null(ConsentRecords::NoticeVersion))
                    .col(text_null(ConsentRecords::NoticeSha256))
                    // Keyed hash of the client address; the address itself is never stored.
                    .col(text_null(ConsentRecords::IpHash))
                    .col(text_null(ConsentRecords::UserAgent))
                    .col(text_null(ConsentRecords::Justification))
                    .col(text(ConsentRecords::Actor))
                    .col(timestamp_with_time_zone(ConsentRecords::At))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_consent_records_contact")
                    .table(ConsentRecords::Table)
                    .col(ConsentRecords::TenantId)
                    .col(ConsentRecords::ContactId)
                    .col(ConsentRecords::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ConsentStates::Table)
                    .col(uuid(ConsentStates::TenantId))
                    .col(uuid(ConsentStates::ContactId))
                    .col(text(ConsentStates::PurposeKey))
                    .col(text(ConsentStates::Status))
                    .col(text(ConsentStates::LawfulBasis))
                    .col(integer_null(ConsentStates::NoticeVersion))
                    .col(uuid(ConsentStates::RecordId))
                    .col(timestamp_with_time_zone(ConsentStates::Since))
                    .primary_key(
                        Index::create()
                            .col(ConsentStates::TenantId)
                            .col(ConsentStates::ContactId)
                            .col(ConsentStates::PurposeKey),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Forms::Table)
                    .col(uuid(Forms::TenantId))
                    .col(uuid(Forms::Id))
                    .col(text(Forms::Name))
                    // Field keys and purpose keys, as JSON arrays.
                    .col(json_binary(Forms::Fields))
                    .col(json_binary(Forms::Consents))
                    .col(text(Forms::CreatedBy))
                    .col(timestamp_with_time_zone(Forms::CreatedAt))
                    .primary_key(Index::create().col(Forms::TenantId).col(Forms::Id))
                    .to_owned(),
            )
            .await?;
        crate::outbox::create(manager).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::outbox::drop(manager).await?;
        for table in [
            Forms::Table.into_iden(),
            ConsentStates::Table.into_iden(),
            ConsentRecords::Table.into_iden(),
            NoticeVersions::Table.into_iden(),
            Purposes::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
