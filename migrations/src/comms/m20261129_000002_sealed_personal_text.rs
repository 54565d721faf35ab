//! Crypto-shredding in comms: the free text comms keeps about one person is sealed (AES-256-GCM)
//! with that person's key from the key store: call notes, and the inline subject and body of a
//! single message (a template written for one contact, now tied to it by `subject_id`).
//!
//! Notes written in plaintext by an earlier build cannot be converted here (the keys live in
//! another database): the migration refuses to run over them rather than drop them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Calls {
    Table,
    Notes,
    SealedNotes,
}

#[derive(DeriveIden)]
enum Templates {
    Table,
    TenantId,
    SubjectId,
    Sealed,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        let stmt = Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n FROM calls WHERE notes IS NOT NULL".to_string(),
        );
        let row = conn.query_one_raw(stmt).await?.ok_or_else(|| DbErr::Custom("COUNT returned no row".into()))?;
        let held: i64 = row.try_get("", "n")?;
        if held > 0 {
            return Err(DbErr::Migration(format!(
                "the comms database holds {held} call notes written in plaintext by a pre-release build; this version \
                 keeps them encrypted and cannot convert them: export what you need, then start from an empty comms \
                 database"
            )));
        }
        manager.alter_table(Table::alter().table(Calls::Table).drop_column(Calls::Notes).to_owned()).await?;
        // `[format][nonce][AES-256-GCM(notes)]`, the call id as associated data.
        manager
            .alter_table(Table::alter().table(Calls::Table).add_column(blob_null(Calls::SealedNotes)).to_owned())
            .await?;
        // A single message's inline content belongs to its one recipient: sealed with their key
        // (`subject` and `body` then stay empty), and erased with them.
        manager
            .alter_table(Table::alter().table(Templates::Table).add_column(uuid_null(Templates::SubjectId)).to_owned())
            .await?;
        manager
            .alter_table(Table::alter().table(Templates::Table).add_column(blob_null(Templates::Sealed)).to_owned())
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_templates_subject")
                    .table(Templates::Table)
                    .col(Templates::TenantId)
                    .col(Templates::SubjectId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("ix_templates_subject").table(Templates::Table).to_owned()).await?;
        for column in [Templates::Sealed, Templates::SubjectId] {
            manager.alter_table(Table::alter().table(Templates::Table).drop_column(column).to_owned()).await?;
        }
        manager.alter_table(Table::alter().table(Calls::Table).drop_column(Calls::SealedNotes).to_owned()).await?;
        manager.alter_table(Table::alter().table(Calls::Table).add_column(text_null(Calls::Notes)).to_owned()).await
    }
}
