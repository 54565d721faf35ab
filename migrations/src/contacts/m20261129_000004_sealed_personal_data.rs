//! Crypto-shredding: a contact's personal values (e-mail, names, phone, custom field values,
//! restriction and objection reasons) leave their plaintext columns for one AES-256-GCM value
//! per contact (`personal`), sealed with the person's key from the key store. Uniqueness and
//! lookups of e-mails and phones move to blind indexes (keyed hashes), name search to a table
//! of hashed name tokens, and the reasons in the change history are sealed too.
//!
//! Rows written in plaintext by an earlier build cannot be converted here (the keys live in
//! another database), nor can erasure tombstones (now keyed hashes of the blind indexes): the
//! migration refuses to run over them rather than drop them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Contacts {
    Table,
    TenantId,
    Email,
    FirstName,
    LastName,
    Phone,
    Fields,
    RestrictionReason,
    ObjectionReason,
    Personal,
    EmailIndex,
    PhoneIndex,
}

#[derive(DeriveIden)]
enum ContactChanges {
    Table,
    Reason,
    SealedReason,
}

#[derive(DeriveIden)]
enum ContactTokens {
    Table,
    TenantId,
    Hash,
    ContactId,
}

async fn count(manager: &SchemaManager<'_>, table: &str) -> Result<i64, DbErr> {
    let conn = manager.get_connection();
    let stmt = Statement::from_string(conn.get_database_backend(), format!("SELECT COUNT(*) AS n FROM {table}"));
    let row = conn.query_one_raw(stmt).await?.ok_or_else(|| DbErr::Custom("COUNT returned no row".into()))?;
    row.try_get::<i64>("", "n")
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Tombstones too: they are now keyed hashes of blind indexes, so older ones would never
        // match again.
        let mut held = 0;
        for table in ["contacts", "contact_changes", "erasure_tombstones"] {
            held += count(manager, table).await?;
        }
        if held > 0 {
            return Err(DbErr::Migration(format!(
                "the contacts database holds {held} rows written by a pre-release build (contacts in plaintext, their \
                 history, erasure tombstones); this version keeps personal data encrypted and cannot convert them: \
                 export what you need, then start from an empty contacts database (and key store)"
            )));
        }
        for index in ["ux_contacts_tenant_email", "ux_contacts_tenant_phone"] {
            manager.drop_index(Index::drop().name(index).table(Contacts::Table).to_owned()).await?;
        }
        // One column per statement: SQLite alters one thing at a time.
        for column in [
            Contacts::Email,
            Contacts::FirstName,
            Contacts::LastName,
            Contacts::Phone,
            Contacts::Fields,
            Contacts::RestrictionReason,
            Contacts::ObjectionReason,
        ] {
            manager.alter_table(Table::alter().table(Contacts::Table).drop_column(column).to_owned()).await?;
        }
        // `[format][nonce][AES-256-GCM(JSON of the values)]`, the contact id as associated data.
        manager
            .alter_table(Table::alter().table(Contacts::Table).add_column(blob_null(Contacts::Personal)).to_owned())
            .await?;
        // Hex HMAC-SHA256 of the normalised e-mail / E.164 phone under the tenant's index key.
        for column in [Contacts::EmailIndex, Contacts::PhoneIndex] {
            manager.alter_table(Table::alter().table(Contacts::Table).add_column(text_null(column)).to_owned()).await?;
        }
        // One person once: unique per tenant (NULLs do not collide).
        for (name, column) in [
            ("ux_contacts_tenant_email_index", Contacts::EmailIndex),
            ("ux_contacts_tenant_phone_index", Contacts::PhoneIndex),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Contacts::Table)
                        .col(Contacts::TenantId)
                        .col(column)
                        .unique()
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(ContactTokens::Table)
                    .col(uuid(ContactTokens::TenantId))
                    // Hex HMAC of one lower-cased token of the first or last name.
                    .col(text(ContactTokens::Hash))
                    .col(uuid(ContactTokens::ContactId))
                    .primary_key(
                        Index::create()
                            .col(ContactTokens::TenantId)
                            .col(ContactTokens::Hash)
                            .col(ContactTokens::ContactId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_contact_tokens_contact")
                    .table(ContactTokens::Table)
                    .col(ContactTokens::TenantId)
                    .col(ContactTokens::ContactId)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(Table::alter().table(ContactChanges::Table).drop_column(ContactChanges::Reason).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ContactChanges::Table)
                    .add_column(blob_null(ContactChanges::SealedReason))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(ContactChanges::Table).drop_column(ContactChanges::SealedReason).to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter().table(ContactChanges::Table).add_column(text_null(ContactChanges::Reason)).to_owned(),
            )
            .await?;
        manager.drop_table(Table::drop().table(ContactTokens::Table).to_owned()).await?;
        for index in ["ux_contacts_tenant_email_index", "ux_contacts_tenant_phone_index"] {
            manager.drop_index(Index::drop().name(index).table(Contacts::Table).to_owned()).await?;
        }
        for column in [Contacts::Personal, Contacts::EmailIndex, Contacts::PhoneIndex] {
            manager.alter_table(Table::alter().table(Contacts::Table).drop_column(column).to_owned()).await?;
        }
        for column in [
            Contacts::Email,
            Contacts::FirstName,
            Contacts::LastName,
            Contacts::Phone,
            Contacts::RestrictionReason,
            Contacts::ObjectionReason,
        ] {
            manager.alter_table(Table::alter().table(Contacts::Table).add_column(text_null(column)).to_owned()).await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Contacts::Table)
                    .add_column(ColumnDef::new(Contacts::Fields).json_binary().not_null().default(Expr::cust("'{}'")))
                    .to_owned(),
            )
            .await?;
        for (name, column) in
            [("ux_contacts_tenant_email", Contacts::Email), ("ux_contacts_tenant_phone", Contacts::Phone)]
        {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Contacts::Table)
                        .col(Contacts::TenantId)
                        .col(column)
                        .unique()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
