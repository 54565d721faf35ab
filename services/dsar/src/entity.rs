//! sea-orm entities of the DSAR database (see `migrations/src/dsar`).

pub mod request {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "dsar_requests")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub kind: String,
        pub subject_id: Uuid,
        pub status: String,
        pub verification: Option<String>,
        pub received_at: DateTimeUtc,
        pub due_at: DateTimeUtc,
        pub extended: bool,
        pub extension_reason: Option<String>,
        pub completed_at: Option<DateTimeUtc>,
        pub rejection_reason: Option<String>,
        pub details: Json,
        pub recipients: Json,
        pub export_expires_at: Option<DateTimeUtc>,
        pub created_by: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod task {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "dsar_tasks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub service: String,
        pub status: String,
        pub attempts: i32,
        pub next_at: DateTimeUtc,
        pub confirmed_at: Option<DateTimeUtc>,
        pub records: Json,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod ledger {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "erasure_ledger")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: Uuid,
        pub subject_pseudonym: String,
        pub participants: Json,
        pub removed: Json,
        pub requested_at: DateTimeUtc,
        pub completed_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod hold {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "legal_holds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub subject_id: Uuid,
        pub reason: String,
        pub placed_by: String,
        pub placed_at: DateTimeUtc,
        pub lifted_at: Option<DateTimeUtc>,
        pub lifted_by: Option<String>,
        pub lift_reason: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod export {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "dsar_exports")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: Uuid,
        pub nonce: Vec<u8>,
        pub ciphertext: Vec<u8>,
        pub expires_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod audit {
    use sea_orm::entity::prelude::*;

    /// One entry of a tenant's audit chain (docs/audit.md).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_log")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub event_id: Uuid,
        pub occurred_at: DateTimeUtc,
        pub recorded_at: DateTimeUtc,
        pub actor: String,
        pub action: String,
        pub record_type: String,
        pub record_id: String,
        pub subject_id: String,
        pub api: String,
        pub request_id: String,
        pub service: String,
        pub fields: Json,
        pub prev_hash: String,
        pub hash: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod retention_settings {
    use sea_orm::entity::prelude::*;

    /// A tenant's retention policies and switches (docs/retention.md).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "retention_settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        /// `[{record_type, days, warn_days}]`.
        pub policies: Json,
        pub erase_on_withdrawal: bool,
        pub warning_purpose: String,
        pub warning_subject: String,
        pub warning_body: String,
        pub updated_by: String,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod retention_purge {
    use sea_orm::entity::prelude::*;

    /// The record of one purge: which policy, which cutoff, how many records (ids only).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "retention_purges")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub record_type: String,
        pub service: String,
        pub trigger: String,
        pub days: i32,
        pub cutoff: DateTimeUtc,
        pub purged: i64,
        pub warned: i64,
        pub skipped: i64,
        pub request_ids: Json,
        pub actor: String,
        pub ran_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod retention_warning {
    use sea_orm::entity::prelude::*;

    /// The last inactivity warning mailed to a contact.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "retention_warnings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub subject_id: Uuid,
        pub warned_at: DateTimeUtc,
        pub outcome: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
