//! sea-orm entities of the contacts database (see `migrations/src/contacts`).

pub mod contact {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contacts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        /// The personal values ([`crate::sealed::Personal`] as JSON), sealed with the person's
        /// key from the key store (or plain when `keys.encrypt` is off); see `carnet_kit::keystore`.
        pub personal: Option<Vec<u8>>,
        /// Blind indexes (keyed hashes) of the normalised e-mail and phone: unique per tenant.
        pub email_index: Option<String>,
        pub phone_index: Option<String>,
        /// `{key: Source}` of values written with a named source after creation.
        #[sea_orm(column_type = "JsonBinary")]
        pub field_sources: Json,
        pub source_channel: String,
        pub source_detail: String,
        pub source_actor: String,
        pub source_collected_at: DateTimeUtc,
        pub restricted: bool,
        pub restricted_at: Option<DateTimeUtc>,
        pub objected: bool,
        pub objected_at: Option<DateTimeUtc>,
        pub version: i64,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        /// Retention counts inactivity from here (see `proto` `Contact.last_activity_at`).
        pub last_activity_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact_change {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_changes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub contact_id: Uuid,
        pub kind: String,
        #[sea_orm(column_type = "JsonBinary")]
        pub fields: Json,
        pub actor: String,
        /// The reason given, sealed like the contact's values (the change id as associated data).
        pub sealed_reason: Option<Vec<u8>>,
        pub related_contact_id: Option<Uuid>,
        #[sea_orm(column_type = "JsonBinary", nullable)]
        pub source: Option<Json>,
        pub at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod field_policy {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "field_policies")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(column_type = "JsonBinary")]
        pub fields: Json,
        pub version: i32,
        pub updated_by: String,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod tombstone {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "erasure_tombstones")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub hash: String,
        pub field: String,
        pub request_id: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact_token {
    use sea_orm::entity::prelude::*;

    /// One blind-indexed token of a contact's first or last name, for exact name search.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub hash: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: Uuid,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod import {
    use sea_orm::entity::prelude::*;

    /// A bulk import job (docs/import.md).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "imports")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub status: String,
        pub file_name: String,
        pub format: String,
        /// [`crate::import::Terms`] as JSON.
        #[sea_orm(column_type = "JsonBinary")]
        pub terms: Json,
        pub actor: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub finished_at: Option<DateTimeUtc>,
        pub lines_done: i64,
        pub bytes_done: i64,
        pub header_sha256: String,
        pub chain_sha256: String,
        pub created: i64,
        pub updated: i64,
        pub skipped: i64,
        pub failed: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod import_row {
    use sea_orm::entity::prelude::*;

    /// One line of an import's report.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "import_rows")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub import_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub line: i64,
        pub outcome: String,
        pub reason: String,
        pub contact_id: Option<Uuid>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
