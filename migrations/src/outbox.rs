//! The `outbox` table every service's database carries (see `carnet_kit::outbox`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    TenantId,
    Kind,
    Payload,
    CreatedAt,
    PublishedAt,
}

/// Creates the outbox table and its index of pending events.
pub async fn create(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(Outbox::Table)
                .col(uuid(Outbox::Id).primary_key())
                .col(uuid(Outbox::TenantId))
                .col(text(Outbox::Kind))
                // An encoded `carnet.events.v1.Event`.
                .col(blob(Outbox::Payload))
                .col(timestamp_with_time_zone(Outbox::CreatedAt))
                .col(timestamp_with_time_zone_null(Outbox::PublishedAt))
                .to_owned(),
        )
        .await?;
    manager
        .create_index(
            Index::create()
                .name("ix_outbox_unpublished")
                .table(Outbox::Table)
                .col(Outbox::PublishedAt)
                .col(Outbox::Id)
                .to_owned(),
        )
        .await
}

/// Drops the outbox table.
pub async fn drop(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager.drop_table(Table::drop().table(Outbox::Table).to_owned()).await
}
