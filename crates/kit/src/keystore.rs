//! The key store behind crypto-shredding.
//!
//! Every person's personal values are encrypted (AES-256-GCM) under a data key of their own, the
//! subject key: 256 random bits, kept here wrapped (AES-256-GCM) by a tenant key. Tenant keys are
//! versioned and wrapped in turn by the [`Kms`] ([`LocalKms`]: a master key from
//! `keys.master_key`; an external KMS implements the same trait). Erasing a person destroys
//! their subject key ([`KeyStore::destroy`]): every copy of their values taken earlier, in a
//! backup or an archive, no longer opens.
//!
//! The store lives in its own database (`keys.database_url`, default `<data_dir>/keys.db`), apart
//! from the databases of the services whose values it protects, so that a copy of a service
//! database never carries the keys to itself. Each tenant also has a blind-index key: keyed
//! hashes of normalised e-mails, phones and name tokens give unique indexes and exact lookups
//! without the values.
//!
//! Rotation ([`KeyStore::rotate_tenant_key`]) adds a tenant-key version that wraps every new
//! subject key, rewraps the existing subject keys under it, and drops the versions nothing uses
//! any more. A foreign key keeps a version that a subject key still names.

mod cache;
mod crypto;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::Aes256Gcm;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, SqlErr};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{ConfigError, Validate};
use crate::db::Db;
use crate::{ErrorCode, ServiceError};

pub use crypto::{
    BlindIndex, FORMAT_AES256GCM, FORMAT_PLAIN, Kms, LocalKms, Opened, SubjectKey, is_encrypted, open_value,
    plain_value,
};

/// The `[keys]` configuration section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// `postgres://…` or `sqlite://…`; empty means `keys.db` in the data dir. Never the database
    /// of a service whose data the keys protect.
    pub database_url: String,
    pub max_connections: u32,
    /// The master key of the local KMS (hex, or text of 32+ bytes). Empty in monolith mode: one
    /// is generated into `<data_dir>/master.key`. Required in split mode.
    pub master_key: String,
    /// Encrypts personal values (default). Off only to measure what encryption costs: values
    /// written while it is off are stored in the clear and stay so.
    pub encrypt: bool,
    /// Unwrapped subject keys kept in memory per process (0: none).
    pub cache_capacity: u32,
    /// How long a cached key (and a tenant's current key version) is trusted; a key destroyed
    /// by another process stops being used here within this time.
    pub cache_ttl_ms: u64,
}

impl Validate for KeysConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database_url;
        if !url.is_empty() && !url.starts_with("sqlite:") && !url.starts_with("postgres") {
            return Err(ConfigError("keys.database_url must be a sqlite: or postgres:// URL".into()));
        }
        if self.max_connections == 0 {
            return Err(ConfigError("keys.max_connections must be positive".into()));
        }
        if !self.master_key.is_empty() {
            LocalKms::from_text(&self.master_key).map_err(|e| ConfigError(format!("keys.master_key: {e}")))?;
        }
        Ok(())
    }
}

/// What can go wrong with keys; every variant maps to `internal` or `unavailable`, never to a
/// message with key material or values.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store database error: {0}")]
    Database(#[from] DbErr),
    #[error("kms: {0}")]
    Kms(String),
    #[error("a stored value does not decrypt with its key")]
    Undecryptable,
}

impl From<KeyError> for ServiceError {
    fn from(err: KeyError) -> Self {
        tracing::error!(error = %err, "key store error");
        match err {
            KeyError::Database(_) => ServiceError::new(ErrorCode::Unavailable, "the key store is unavailable"),
            KeyError::Kms(_) => ServiceError::internal("a tenant key could not be unwrapped"),
            KeyError::Undecryptable => ServiceError::internal("a stored value does not decrypt"),
        }
    }
}

pub mod entity {
    //! Tables of the key store (see `migrations/src/keys`).

    pub mod tenant_key {
        use sea_orm::entity::prelude::*;

        /// A version of a tenant's data-wrapping key, wrapped by the KMS.
        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "tenant_keys")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: Uuid,
            #[sea_orm(primary_key, auto_increment = false)]
            pub version: i32,
            pub kms_key_id: String,
            pub wrapped: Vec<u8>,
            pub created_at: DateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod index_key {
        use sea_orm::entity::prelude::*;

        /// A tenant's blind-index key, wrapped by the KMS.
        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "tenant_index_keys")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: Uuid,
            pub kms_key_id: String,
            pub wrapped: Vec<u8>,
            pub created_at: DateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod subject_key {
        use sea_orm::entity::prelude::*;

        /// A person's data key, wrapped by a version of the tenant key.
        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "subject_keys")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: Uuid,
            #[sea_orm(primary_key, auto_increment = false)]
            pub subject_id: Uuid,
            pub tenant_key_version: i32,
            pub wrapped: Vec<u8>,
            pub created_at: DateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entity::{index_key, subject_key, tenant_key};

/// How a [`KeyStore`] behaves (from [`KeysConfig`]).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub encrypt: bool,
    pub cache_capacity: usize,
    pub cache_ttl: Duration,
}

impl Options {
    pub fn of(cfg: &KeysConfig) -> Options {
        Options {
            encrypt: cfg.encrypt,
            cache_capacity: cfg.cache_capacity as usize,
            cache_ttl: Duration::from_millis(cfg.cache_ttl_ms),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options { encrypt: true, cache_capacity: 100_000, cache_ttl: Duration::from_secs(60) }
    }
}

/// What a rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The new version, which wraps every subject key from now on.
    pub version: i32,
    /// Subject keys rewrapped under it.
    pub rewrapped: u64,
    /// Older versions removed (nothing used them any more).
    pub removed: Vec<i32>,
}

/// Unwrapped keys of one tenant, kept for the life of the process (tenant keys are immutable;
/// a removed version is named by no subject key).
#[derive(Default)]
struct TenantKeys {
    index_opt: Option<BlindIndex>,
    current_opt: Option<(i32, Instant)>,
    versions: HashMap<i32, Arc<Aes256Gcm>>,
}

struct Inner {
    db: Db,
    kms: Arc<dyn Kms>,
    options: Options,
    subjects: Mutex<cache::SubjectCache>,
    tenants: Mutex<HashMap<Uuid, TenantKeys>>,
}

/// The key store; cheap to clone, one per process (its caches are shared by the services of
/// the process).
#[derive(Clone)]
pub struct KeyStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("encrypt", &self.inner.options.encrypt).finish_non_exhaustive()
    }
}

/// Subject keys read or rewrapped per statement.
const CHUNK: usize = 500;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KeyStore {
    /// A key store on `db` (migrated with `carnet_migrations::keys`), wrapping with `kms`.
    pub fn new(db: Db, kms: Arc<dyn Kms>, options: Options) -> KeyStore {
        let subjects = cache::SubjectCache::new(options.cache_capacity, options.cache_ttl);
        KeyStore {
            inner: Arc::new(Inner {
                db,
                kms,
                options,
                subjects: Mutex::new(subjects),
                tenants: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether new values are encrypted (`keys.encrypt`).
    pub fn encrypts(&self) -> bool {
        self.inner.options.encrypt
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Returns the tenant's blind-index key, creating it on first use.
    pub async fn blind_index(&self, tenant_id: Uuid) -> Result<BlindIndex, KeyError> {
        if let Some(index) = lock(&self.inner.tenants).get(&tenant_id).and_then(|t| t.index_opt.clone()) {
            return Ok(index);
        }
        let db = &self.inner.db;
        let row = match index_key::Entity::find_by_id(tenant_id).all(&db.read).await?.pop() {
            Some(row) => row,
            None => {
                let key: [u8; 32] = rand::random();
                let wrapped = self.inner.kms.wrap(&crypto::tenant_context("index", tenant_id, 1), &key).await?;
                let row = index_key::ActiveModel {
                    tenant_id: Set(tenant_id),
                    kms_key_id: Set(self.inner.kms.key_id().to_string()),
                    wrapped: Set(wrapped),
                    created_at: Set(crate::db::now()),
                };
                // Another process may have created it meanwhile: theirs wins, read it back.
                let insert = index_key::Entity::insert(row)
                    .on_conflict(OnConflict::column(index_key::Column::TenantId).do_nothing().to_owned())
                    .exec_without_returning(&db.write)
                    .await;
                match insert {
                    Ok(_) | Err(DbErr::RecordNotInserted) => {}
                    Err(e) => return Err(e.into()),
                }
                index_key::Entity::find_by_id(tenant_id)
                    .all(&db.write)
                    .await?
                    .pop()
                    .ok_or_else(|| KeyError::Kms("the tenant index key vanished".into()))?
            }
        };
        let context = crypto::tenant_context("index", tenant_id, 1);
        let bytes = self.inner.kms.unwrap(&row.kms_key_id, &context, &row.wrapped).await?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Undecryptable)?;
        let index = BlindIndex::from_bytes(key);
        lock(&self.inner.tenants).entry(tenant_id).or_default().index_opt = Some(index.clone());
        Ok(index)
    }

    /// Returns version `version` of the tenant key, unwrapped.
    async fn tenant_key(&self, tenant_id: Uuid, version: i32) -> Result<Arc<Aes256Gcm>, KeyError> {
        if let Some(k) = lock(&self.inner.tenants).get(&tenant_id).and_then(|t| t.versions.get(&version).cloned()) {
            return Ok(k);
        }
        let row = tenant_key::Entity::find_by_id((tenant_id, version))
            .all(&self.inner.db.read)
            .await?
            .pop()
            .ok_or_else(|| KeyError::Kms(format!("tenant key version {version} is missing")))?;
        self.unwrap_tenant_key(row).await
    }

    async fn unwrap_tenant_key(&self, row: tenant_key::Model) -> Result<Arc<Aes256Gcm>, KeyError> {
        let context = crypto::tenant_context("data", row.tenant_id, row.version);
        let bytes = self.inner.kms.unwrap(&row.kms_key_id, &context, &row.wrapped).await?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Undecryptable)?;
        let cipher = Arc::new(crypto::cipher(&key));
        lock(&self.inner.tenants).entry(row.tenant_id).or_default().versions.insert(row.version, cipher.clone());
        Ok(cipher)
    }

    /// Returns the tenant key version that wraps new subject keys, creating version 1 on first use.
    async fn current_version(&self, tenant_id: Uuid) -> Result<(i32, Arc<Aes256Gcm>), KeyError> {
        let cached = lock(&self.inner.tenants).get(&tenant_id).and_then(|t| match t.current_opt {
            Some((v, at)) if at.elapsed() < self.inner.options.cache_ttl => t.versions.get(&v).map(|k| (v, k.clone())),
            _ => None,
        });
        if let Some(found) = cached {
            return Ok(found);
        }
        let db = &self.inner.db;
        let newest = |conn| async move {
            tenant_key::Entity::find()
                .filter(tenant_key::Column::TenantId.eq(tenant_id))
                .order_by_desc(tenant_key::Column::Version)
                .limit(1)
                .all(conn)
                .await
                .map(|mut rows| rows.pop())
        };
        let row = match newest(&db.read).await? {
            Some(row) => row,
            None => {
                self.insert_tenant_key(tenant_id, 1).await?;
                newest(&db.write).await?.ok_or_else(|| KeyError::Kms("the tenant key vanished".into()))?
            }
        };
        let version = row.version;
        let cipher = self.unwrap_tenant_key(row).await?;
        lock(&self.inner.tenants).entry(tenant_id).or_default().current_opt = Some((version, Instant::now()));
        Ok((version, cipher))
    }

    /// Inserts a new random tenant key `version`; returns false when it already existed.
    async fn insert_tenant_key(&self, tenant_id: Uuid, version: i32) -> Result<bool, KeyError> {
        let key: [u8; 32] = rand::random();
        let wrapped = self.inner.kms.wrap(&crypto::tenant_context("data", tenant_id, version), &key).await?;
        let row = tenant_key::ActiveModel {
            tenant_id: Set(tenant_id),
            version: Set(version),
            kms_key_id: Set(self.inner.kms.key_id().to_string()),
            wrapped: Set(wrapped),
            created_at: Set(crate::db::now()),
        };
        let insert = tenant_key::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([tenant_key::Column::TenantId, tenant_key::Column::Version])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.inner.db.write)
            .await;
        match insert {
            Ok(n) => Ok(n > 0),
            Err(DbErr::RecordNotInserted) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn unwrap_subject_key(&self, row: &subject_key::Model, tenant_cipher: &Aes256Gcm) -> Result<SubjectKey, KeyError> {
        let context = crypto::subject_context(row.tenant_id, row.subject_id, row.tenant_key_version);
        let bytes = crypto::open_raw(tenant_cipher, &context, &row.wrapped).ok_or(KeyError::Undecryptable)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Undecryptable)?;
        Ok(SubjectKey::from_bytes(&key))
    }

    /// Returns the keys of the subjects of `tenant_id` that have one (absent: never created, or
    /// destroyed).
    pub async fn find_subject_keys(
        &self,
        tenant_id: Uuid,
        subject_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, SubjectKey>, KeyError> {
        let mut found = HashMap::with_capacity(subject_ids.len());
        let mut missing = Vec::new();
        {
            let mut cache = lock(&self.inner.subjects);
            for id in subject_ids {
                match cache.get(tenant_id, *id) {
                    Some(key) => {
                        found.insert(*id, key);
                    }
                    None => missing.push(*id),
                }
            }
        }
        for chunk in missing.chunks(CHUNK) {
            let rows = subject_key::Entity::find()
                .filter(subject_key::Column::TenantId.eq(tenant_id))
                .filter(subject_key::Column::SubjectId.is_in(chunk.iter().copied()))
                .all(&self.inner.db.read)
                .await?;
            for row in rows {
                let key = match self.tenant_key(tenant_id, row.tenant_key_version).await {
                    Ok(cipher) => self.unwrap_subject_key(&row, &cipher)?,
                    // A rotation elsewhere rewrapped it and removed that version since the row
                    // was read: read it again (it may also have been destroyed meanwhile).
                    Err(KeyError::Kms(_)) => {
                        let again = subject_key::Entity::find_by_id((tenant_id, row.subject_id))
                            .all(&self.inner.db.read)
                            .await?
                            .pop();
                        let Some(row) = again else { continue };
                        let cipher = self.tenant_key(tenant_id, row.tenant_key_version).await?;
                        self.unwrap_subject_key(&row, &cipher)?
                    }
                    Err(e) => return Err(e),
                };
                lock(&self.inner.subjects).put(tenant_id, row.subject_id, key.clone());
                found.insert(row.subject_id, key);
            }
        }
        Ok(found)
    }

    /// Returns the subject's key if it has one.
    pub async fn find_subject_key(&self, tenant_id: Uuid, subject_id: Uuid) -> Result<Option<SubjectKey>, KeyError> {
        Ok(self.find_subject_keys(tenant_id, &[subject_id]).await?.remove(&subject_id))
    }

    /// Returns the subject's key, creating it when there is none.
    pub async fn subject_key(&self, tenant_id: Uuid, subject_id: Uuid) -> Result<SubjectKey, KeyError> {
        if let Some(key) = self.find_subject_key(tenant_id, subject_id).await? {
            return Ok(key);
        }
        self.insert_subject_keys(tenant_id, &[subject_id], true).await?;
        // Read back: a concurrent creator (another service, another replica) may have won.
        let row = subject_key::Entity::find_by_id((tenant_id, subject_id))
            .all(&self.inner.db.write)
            .await?
            .pop()
            .ok_or_else(|| KeyError::Kms("a subject key vanished as it was created".into()))?;
        let cipher = self.tenant_key(tenant_id, row.tenant_key_version).await?;
        let key = self.unwrap_subject_key(&row, &cipher)?;
        lock(&self.inner.subjects).put(tenant_id, subject_id, key.clone());
        Ok(key)
    }

    /// Creates the keys of new subjects (ids never used before, e.g. fresh UUIDv7 record ids), in
    /// one statement per tenant; a subject that already has a key is an error.
    pub async fn create_subject_keys(
        &self,
        subjects: &[(Uuid, Uuid)],
    ) -> Result<HashMap<(Uuid, Uuid), SubjectKey>, KeyError> {
        let mut by_tenant: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (tenant_id, subject_id) in subjects {
            by_tenant.entry(*tenant_id).or_default().push(*subject_id);
        }
        let mut out = HashMap::with_capacity(subjects.len());
        for (tenant_id, ids) in by_tenant {
            for (id, key) in self.insert_subject_keys(tenant_id, &ids, false).await? {
                out.insert((tenant_id, id), key);
            }
        }
        Ok(out)
    }

    /// Inserts fresh keys for `ids` under the tenant's current key version; with
    /// `keep_existing`, a subject that has a key keeps it (the caller reads it back).
    async fn insert_subject_keys(
        &self,
        tenant_id: Uuid,
        ids: &[Uuid],
        keep_existing: bool,
    ) -> Result<Vec<(Uuid, SubjectKey)>, KeyError> {
        // A rotation elsewhere may have removed the version this process still takes for
        // current (the foreign key refuses it): read the current version again, once.
        let mut retried = false;
        loop {
            let (version, cipher) = self.current_version(tenant_id).await?;
            let now = crate::db::now();
            let mut keys = Vec::with_capacity(ids.len());
            let rows: Vec<subject_key::ActiveModel> = ids
                .iter()
                .map(|id| {
                    let raw: [u8; 32] = rand::random();
                    keys.push((*id, SubjectKey::from_bytes(&raw)));
                    let context = crypto::subject_context(tenant_id, *id, version);
                    subject_key::ActiveModel {
                        tenant_id: Set(tenant_id),
                        subject_id: Set(*id),
                        tenant_key_version: Set(version),
                        wrapped: Set(crypto::seal_raw(&cipher, &context, &raw)),
                        created_at: Set(now),
                    }
                })
                .collect();
            let mut insert = subject_key::Entity::insert_many(rows);
            if keep_existing {
                insert = insert.on_conflict(
                    OnConflict::columns([subject_key::Column::TenantId, subject_key::Column::SubjectId])
                        .do_nothing()
                        .to_owned(),
                );
            }
            match insert.exec_without_returning(&self.inner.db.write).await {
                Ok(_) | Err(DbErr::RecordNotInserted) => {}
                Err(e) if !retried && matches!(e.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_))) => {
                    lock(&self.inner.tenants).entry(tenant_id).or_default().current_opt = None;
                    retried = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if !keep_existing {
                let mut cache = lock(&self.inner.subjects);
                for (id, key) in &keys {
                    cache.put(tenant_id, *id, key.clone());
                }
            }
            return Ok(keys);
        }
    }

    /// Destroys the subject's key (crypto-shredding): whatever was sealed with it, wherever a
    /// copy is, no longer opens. Idempotent; returns whether there was a key.
    pub async fn destroy(&self, tenant_id: Uuid, subject_id: Uuid) -> Result<bool, KeyError> {
        lock(&self.inner.subjects).remove(tenant_id, subject_id);
        let res = subject_key::Entity::delete_many()
            .filter(subject_key::Column::TenantId.eq(tenant_id))
            .filter(subject_key::Column::SubjectId.eq(subject_id))
            .exec(&self.inner.db.write)
            .await?;
        // A read that raced the delete may have put it back.
        lock(&self.inner.subjects).remove(tenant_id, subject_id);
        Ok(res.rows_affected > 0)
    }

    /// Seals `plaintext` for `subject_id` (creating its key when needed), or stores it plain
    /// when encryption is off.
    pub async fn seal(
        &self,
        tenant_id: Uuid,
        subject_id: Uuid,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        if !self.encrypts() {
            return Ok(plain_value(plaintext));
        }
        Ok(self.subject_key(tenant_id, subject_id).await?.seal(aad, plaintext))
    }

    /// Opens a stored value of `subject_id`: [`Opened::Shredded`] when its key is destroyed.
    pub async fn open(&self, tenant_id: Uuid, subject_id: Uuid, aad: &[u8], stored: &[u8]) -> Result<Opened, KeyError> {
        let key_opt = if is_encrypted(stored) { self.find_subject_key(tenant_id, subject_id).await? } else { None };
        open_value(key_opt.as_ref(), aad, stored)
    }

    /// Rotates the tenant key: a new version wraps every subject key from now on, the existing
    /// subject keys are rewrapped under it, and the versions nothing uses any more are removed.
    pub async fn rotate_tenant_key(&self, tenant_id: Uuid) -> Result<Rotation, KeyError> {
        let db = &self.inner.db;
        let newest = tenant_key::Entity::find()
            .select_only()
            .column(tenant_key::Column::Version)
            .filter(tenant_key::Column::TenantId.eq(tenant_id))
            .order_by_desc(tenant_key::Column::Version)
            .limit(1)
            .into_tuple::<i32>()
            .all(&db.write)
            .await?
            .pop()
            .unwrap_or(0);
        let version = newest + 1;
        if !self.insert_tenant_key(tenant_id, version).await? {
            return Err(KeyError::Kms(format!("tenant key version {version} was created concurrently; rotate again")));
        }
        let new_cipher = self.tenant_key(tenant_id, version).await?;
        lock(&self.inner.tenants).entry(tenant_id).or_default().current_opt = Some((version, Instant::now()));
        let mut rewrapped = 0;
        loop {
            let rows = subject_key::Entity::find()
                .filter(subject_key::Column::TenantId.eq(tenant_id))
                .filter(subject_key::Column::TenantKeyVersion.lt(version))
                .order_by_asc(subject_key::Column::SubjectId)
                .limit(CHUNK as u64)
                .all(&db.read)
                .await?;
            if rows.is_empty() {
                break;
            }
            let txn = db.begin_write().await?;
            for row in rows {
                let old = self.tenant_key(tenant_id, row.tenant_key_version).await?;
                let context = crypto::subject_context(tenant_id, row.subject_id, row.tenant_key_version);
                let raw = crypto::open_raw(&old, &context, &row.wrapped).ok_or(KeyError::Undecryptable)?;
                let wrapped =
                    crypto::seal_raw(&new_cipher, &crypto::subject_context(tenant_id, row.subject_id, version), &raw);
                // Only if untouched meanwhile (a destroy, or another rotation, wins).
                let res = subject_key::Entity::update_many()
                    .col_expr(subject_key::Column::Wrapped, Expr::value(wrapped))
                    .col_expr(subject_key::Column::TenantKeyVersion, Expr::value(version))
                    .filter(subject_key::Column::TenantId.eq(tenant_id))
                    .filter(subject_key::Column::SubjectId.eq(row.subject_id))
                    .filter(subject_key::Column::TenantKeyVersion.eq(row.tenant_key_version))
                    .exec(&txn)
                    .await?;
                rewrapped += res.rows_affected;
            }
            txn.commit().await?;
        }
        // Versions no subject key names any more; one still named (a key wrapped meanwhile by a
        // process that had not seen the rotation yet) stays until a later rotation.
        let mut removed = Vec::new();
        let old_versions = tenant_key::Entity::find()
            .select_only()
            .column(tenant_key::Column::Version)
            .filter(tenant_key::Column::TenantId.eq(tenant_id))
            .filter(tenant_key::Column::Version.lt(version))
            .into_tuple::<i32>()
            .all(&db.write)
            .await?;
        for old in old_versions {
            let used = subject_key::Entity::find()
                .filter(subject_key::Column::TenantId.eq(tenant_id))
                .filter(subject_key::Column::TenantKeyVersion.eq(old))
                .count(&db.write)
                .await?;
            if used > 0 {
                continue;
            }
            let res = tenant_key::Entity::delete_many()
                .filter(tenant_key::Column::TenantId.eq(tenant_id))
                .filter(tenant_key::Column::Version.eq(old))
                .exec(&db.write)
                .await;
            match res {
                Ok(_) => {
                    lock(&self.inner.tenants).entry(tenant_id).or_default().versions.remove(&old);
                    removed.push(old);
                }
                // A subject key wrapped under it in the meantime: it stays.
                Err(e) if matches!(e.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(%tenant_id, version, rewrapped, removed = removed.len(), "tenant key rotated");
        Ok(Rotation { version, rewrapped, removed })
    }

    /// The versions of the tenant key held, oldest first.
    pub async fn tenant_key_versions(&self, tenant_id: Uuid) -> Result<Vec<i32>, KeyError> {
        Ok(tenant_key::Entity::find()
            .select_only()
            .column(tenant_key::Column::Version)
            .filter(tenant_key::Column::TenantId.eq(tenant_id))
            .order_by_asc(tenant_key::Column::Version)
            .into_tuple::<i32>()
            .all(&self.inner.db.read)
            .await?)
    }

    /// The subjects of a tenant that have a key.
    pub async fn subject_ids(&self, tenant_id: Uuid) -> Result<Vec<Uuid>, KeyError> {
        Ok(subject_key::Entity::find()
            .select_only()
            .column(subject_key::Column::SubjectId)
            .filter(subject_key::Column::TenantId.eq(tenant_id))
            .into_tuple::<Uuid>()
            .all(&self.inner.db.read)
            .await?)
    }

    /// The tenants that have keys.
    pub async fn tenant_ids(&self) -> Result<Vec<Uuid>, KeyError> {
        Ok(tenant_key::Entity::find()
            .select_only()
            .column(tenant_key::Column::TenantId)
            .distinct()
            .into_tuple::<Uuid>()
            .all(&self.inner.db.read)
            .await?)
    }
}
