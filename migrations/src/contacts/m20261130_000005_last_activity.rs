//! The contact's last activity (creation, a person's change, a flag, a consent change, a logged
//! call), from which retention counts inactivity; existing rows start from their last update.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Contacts {
    Table,
    TenantId,
    LastActivityAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Contacts::Table)
                    .add_column(ColumnDef::new(Contacts::LastActivityAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(Contacts::Table)
                    .value(Contacts::LastActivityAt, Expr::col(Contacts::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("contacts_tenant_last_activity")
                    .table(Contacts::Table)
                    .col(Contacts::TenantId)
                    .col(Contacts::LastActivityAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name("contacts_tenant_last_activity").table(Contacts::Table).to_owned())
            .await?;
        manager
            .alter_table(Table::alter().table(Contacts::Table).drop_column(Contacts::LastActivityAt).to_owned())
            .await
    }
}
