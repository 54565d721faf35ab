//! Contacts, their rectification history, the tenant field policy and the event outbox.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Contacts {
    Table,
    Id,
    TenantId,
    Email,
    FirstName,
    LastName,
    Phone,
    Fields,
    SourceChannel,
    SourceDetail,
    SourceActor,
    SourceCollectedAt,
    Restricted,
    RestrictionReason,
    RestrictedAt,
    Objected,
    ObjectionReason,
    ObjectedAt,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ContactChanges {
    Table,
    Id,
    TenantId,
    ContactId,
    Kind,
    Fields,
    Actor,
    Reason,
    RelatedContactId,
    Source,
    At,
}

#[derive(DeriveIden)]
enum FieldPolicies {
    Table,
    TenantId,
    Fields,
    Version,
    UpdatedBy,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Contacts::Table)
                    .col(uuid(Contacts::Id).primary_key())
                    .col(uuid(Contacts::TenantId))
                    // Normalised: trimmed and lower-cased.
                    .col(text_null(Contacts::Email))
                    .col(text_null(Contacts::FirstName))
                    .col(text_null(Contacts::LastName))
                    // Normalised to E.164.
                    .col(text_null(Contacts::Phone))
                    // Custom fields allowed by the tenant's field policy, as a JSON object.
                    .col(json_binary(Contacts::Fields))
                    .col(text(Contacts::SourceChannel))
                    .col(text(Contacts::SourceDetail))
                    .col(text(Contacts::SourceActor))
                    .col(timestamp_with_time_zone(Contacts::SourceCollectedAt))
                    .col(boolean(Contacts::Restricted).default(false))
                    .col(text_null(Contacts::RestrictionReason))
                    .col(timestamp_with_time_zone_null(Contacts::RestrictedAt))
                    .col(boolean(Contacts::Objected).default(false))
                    .col(text_null(Contacts::ObjectionReason))
                    .col(timestamp_with_time_zone_null(Contacts::ObjectedAt))
                    .col(big_integer(Contacts::Version))
                    .col(timestamp_with_time_zone(Contacts::CreatedAt))
                    .col(timestamp_with_time_zone(Contacts::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // One person once: normalised e-mail and phone are unique per tenant (NULLs do not collide).
        manager
            .create_index(
                Index::create()
                    .name("ux_contacts_tenant_email")
                    .table(Contacts::Table)
                    .col(Contacts::TenantId)
                    .col(Contacts::Email)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_contacts_tenant_phone")
                    .table(Contacts::Table)
                    .col(Contacts::TenantId)
                    .col(Contacts::Phone)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Cursor pagination walks (tenant_id, id); ids are UUIDv7, so this is creation order.
        manager
            .create_index(
                Index::create()
                    .name("ix_contacts_tenant_id")
                    .table(Contacts::Table)
                    .col(Contacts::TenantId)
                    .col(Contacts::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ContactChanges::Table)
                    .col(uuid(ContactChanges::Id).primary_key())
                    .col(uuid(ContactChanges::TenantId))
                    .col(uuid(ContactChanges::ContactId))
                    .col(text(ContactChanges::Kind))
                    // Keys of the changed fields only: old values are never kept.
                    .col(json_binary(ContactChanges::Fields))
                    .col(text(ContactChanges::Actor))
                    .col(text_null(ContactChanges::Reason))
                    .col(uuid_null(ContactChanges::RelatedContactId))
                    // For merges: the provenance of the folded-in record, which is kept.
                    .col(json_binary_null(ContactChanges::Source))
                    .col(timestamp_with_time_zone(ContactChanges::At))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_contact_changes_contact")
                    .table(ContactChanges::Table)
                    .col(ContactChanges::TenantId)
                    .col(ContactChanges::ContactId)
                    .col(ContactChanges::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(FieldPolicies::Table)
                    .col(uuid(FieldPolicies::TenantId).primary_key())
                    .col(json_binary(FieldPolicies::Fields))
                    .col(integer(FieldPolicies::Version))
                    .col(text(FieldPolicies::UpdatedBy))
                    .col(timestamp_with_time_zone(FieldPolicies::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        crate::outbox::create(manager).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::outbox::drop(manager).await?;
        for table in [FieldPolicies::Table.into_iden(), ContactChanges::Table.into_iden(), Contacts::Table.into_iden()]
        {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
