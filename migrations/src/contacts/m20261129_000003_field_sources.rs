//! Per-field provenance: where each value written after the contact's creation came from when
//! the writer named it (an enrichment plugin, an import), as `{key: Source}`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Contacts {
    Table,
    FieldSources,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Contacts::Table)
                    .add_column(
                        ColumnDef::new(Contacts::FieldSources).json_binary().not_null().default(Expr::cust("'{}'")),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Contacts::Table).drop_column(Contacts::FieldSources).to_owned()).await
    }
}
