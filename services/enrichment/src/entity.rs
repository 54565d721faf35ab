//! sea-orm entities of the enrichment database (see `migrations/src/enrichment`).

pub mod plugin {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "enrichment_plugins")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub version: String,
        /// The manifest as installed (TOML).
        pub manifest: String,
        pub sha256: String,
        pub component: Vec<u8>,
        pub enabled: bool,
        pub installed_at: DateTimeUtc,
        pub installed_by: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// A plugin without its component: what listings and runs read (the component is read
    /// only to compile it, once per process).
    #[derive(Clone, Debug, PartialEq, DerivePartialModel)]
    #[sea_orm(entity = "Entity")]
    pub struct Info {
        pub tenant_id: Uuid,
        pub name: String,
        pub version: String,
        pub manifest: String,
        pub sha256: String,
        pub enabled: bool,
        pub installed_at: DateTimeUtc,
        pub installed_by: String,
    }

    impl From<Model> for Info {
        fn from(m: Model) -> Self {
            Info {
                tenant_id: m.tenant_id,
                name: m.name,
                version: m.version,
                manifest: m.manifest,
                sha256: m.sha256,
                enabled: m.enabled,
                installed_at: m.installed_at,
                installed_by: m.installed_by,
            }
        }
    }
}

pub mod settings {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "enrichment_settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        pub auto_enrichment: bool,
        pub auto_since: Option<DateTimeUtc>,
        pub profiling_allowed: bool,
        pub updated_at: DateTimeUtc,
        pub updated_by: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod run {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "enrichment_runs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub contact_id: Uuid,
        pub plugin: String,
        pub version: String,
        pub trigger: String,
        pub outcome: String,
        pub reason: String,
        #[sea_orm(column_type = "JsonBinary")]
        pub fields_read: Json,
        #[sea_orm(column_type = "JsonBinary")]
        pub fields_written: Json,
        pub duration_us: i64,
        pub at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
