//! Installed plugins (manifest and component), the tenant switches, the run ledger (keys and
//! outcomes, never values) and the event outbox.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EnrichmentPlugins {
    Table,
    TenantId,
    Name,
    Version,
    Manifest,
    Sha256,
    Component,
    Enabled,
    InstalledAt,
    InstalledBy,
}

#[derive(DeriveIden)]
enum EnrichmentSettings {
    Table,
    TenantId,
    AutoEnrichment,
    AutoSince,
    ProfilingAllowed,
    UpdatedAt,
    UpdatedBy,
}

#[derive(DeriveIden)]
enum EnrichmentRuns {
    Table,
    TenantId,
    Id,
    ContactId,
    Plugin,
    Version,
    Trigger,
    Outcome,
    Reason,
    FieldsRead,
    FieldsWritten,
    DurationUs,
    At,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(EnrichmentPlugins::Table)
                    .col(uuid(EnrichmentPlugins::TenantId))
                    .col(text(EnrichmentPlugins::Name))
                    .col(text(EnrichmentPlugins::Version))
                    // The manifest as installed (TOML text).
                    .col(text(EnrichmentPlugins::Manifest))
                    .col(text(EnrichmentPlugins::Sha256))
                    .col(blob(EnrichmentPlugins::Component))
                    .col(boolean(EnrichmentPlugins::Enabled))
                    .col(timestamp_with_time_zone(EnrichmentPlugins::InstalledAt))
                    .col(text(EnrichmentPlugins::InstalledBy))
                    .primary_key(Index::create().col(EnrichmentPlugins::TenantId).col(EnrichmentPlugins::Name))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EnrichmentSettings::Table)
                    .col(uuid(EnrichmentSettings::TenantId).primary_key())
                    .col(boolean(EnrichmentSettings::AutoEnrichment))
                    // When auto-enrichment was last switched on: changes made before are not
                    // enriched automatically.
                    .col(timestamp_with_time_zone_null(EnrichmentSettings::AutoSince))
                    .col(boolean(EnrichmentSettings::ProfilingAllowed))
                    .col(timestamp_with_time_zone(EnrichmentSettings::UpdatedAt))
                    .col(text(EnrichmentSettings::UpdatedBy))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EnrichmentRuns::Table)
                    .col(uuid(EnrichmentRuns::TenantId))
                    .col(uuid(EnrichmentRuns::Id))
                    .col(uuid(EnrichmentRuns::ContactId))
                    .col(text(EnrichmentRuns::Plugin))
                    .col(text(EnrichmentRuns::Version))
                    .col(text(EnrichmentRuns::Trigger))
                    .col(text(EnrichmentRuns::Outcome))
                    .col(text(EnrichmentRuns::Reason))
                    // Keys only, never values.
                    .col(json_binary(EnrichmentRuns::FieldsRead))
                    .col(json_binary(EnrichmentRuns::FieldsWritten))
                    .col(big_integer(EnrichmentRuns::DurationUs))
                    .col(timestamp_with_time_zone(EnrichmentRuns::At))
                    .primary_key(Index::create().col(EnrichmentRuns::TenantId).col(EnrichmentRuns::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_enrichment_runs_contact")
                    .table(EnrichmentRuns::Table)
                    .col(EnrichmentRuns::TenantId)
                    .col(EnrichmentRuns::ContactId)
                    .to_owned(),
            )
            .await?;
        crate::outbox::create(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::outbox::drop(manager).await?;
        for table in [
            EnrichmentRuns::Table.into_iden(),
            EnrichmentSettings::Table.into_iden(),
            EnrichmentPlugins::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
