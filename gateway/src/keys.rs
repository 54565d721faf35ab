//! Tenants and API keys, in the gateway's own database.
//!
//! A key reads `carnet_<key id, 32 hex>_<secret, 43 base64url>`. Only the SHA-256 of the secret
//! is stored (the secret carries 256 random bits, so a fast hash is enough); the key is shown
//! once. A revoked key is refused from the next request on by the gateway that revoked it; with
//! `gateway.key_cache_ms` above zero, other gateway replicas may accept it for up to that long.
//!
//! Creating a tenant, creating and revoking a key write their audit entry (`audit.recorded`,
//! docs/audit.md) to the gateway's outbox in the same transaction; the node's relay publishes it
//! to the DSAR service like every other service's events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sea_orm::{ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, Set};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use carnet_kit::audit::{self, Entry};
use carnet_kit::db::Db;
use carnet_kit::{ErrorCode, ServiceError};

use crate::roles::Role;

const KEY_PREFIX: &str = "carnet_";
/// The service name of the gateway's audit entries.
pub const SERVICE_NAME: &str = "gateway";
/// The `api` of changes made with the store directly (`carnet tenant create`, `carnet apikey
/// create`) rather than over HTTP.
pub const CLI_API: &str = "cli";

/// The stamp of `actor` working with the store directly.
fn cli_stamp(actor: &str) -> Entry {
    Entry { actor: actor.to_string(), api: CLI_API.to_string(), ..Entry::default() }
}

async fn record<C: sea_orm::ConnectionTrait>(conn: &C, tenant_id: Uuid, entry: Entry) -> Result<(), ServiceError> {
    audit::record(conn, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)
}

pub mod entity {
    pub mod tenant {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "tenants")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
            pub name: String,
            pub created_at: DateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod api_key {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "api_keys")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
            pub tenant_id: Uuid,
            pub role: String,
            pub label: String,
            pub secret_hash: String,
            pub created_by: String,
            pub created_at: DateTimeUtc,
            pub revoked_at: Option<DateTimeUtc>,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entity::{api_key, tenant};

/// A key as listed (never with its secret).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyInfo {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub role: Role,
    pub label: String,
    pub created_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at_opt: Option<chrono::DateTime<chrono::Utc>>,
}

/// A verified key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIdentity {
    pub key_id: Uuid,
    pub tenant_id: Uuid,
    pub role: Role,
}

fn db_err(err: DbErr) -> ServiceError {
    tracing::error!(error = %err, "gateway database error");
    ServiceError::internal("database error")
}

/// Compares two hex hashes in constant time.
fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits a presented key into (id, secret); `None` when it is not shaped like a Carnet key.
fn parse_key(key: &str) -> Option<(Uuid, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32 || secret.len() != 43 {
        return None;
    }
    Some((Uuid::try_parse(id).ok()?, secret))
}

/// Returns true when `token` is shaped like a Carnet API key (rather than a JWT).
pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

#[derive(Clone, Debug)]
pub struct KeyStore {
    db: Db,
    cache: Arc<KeyCache>,
}

/// Keys verified recently: (identity, secret hash, verified at).
#[derive(Debug, Default)]
struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Uuid, (KeyIdentity, String, Instant)>>,
    /// Keys revoked through this store: refused even when a concurrent verification read the
    /// row just before the revocation committed.
    revoked: Mutex<std::collections::HashSet<Uuid>>,
}

impl KeyCache {
    fn is_revoked(&self, id: &Uuid) -> bool {
        self.revoked.lock().unwrap_or_else(|e| e.into_inner()).contains(id)
    }
}

impl KeyStore {
    /// A store that reads the key row on every verification.
    pub fn new(db: Db) -> Self {
        KeyStore::with_cache(db, Duration::ZERO)
    }

    /// A store that trusts a verified key for `ttl` before reading its row again; a key revoked
    /// through this store is refused at once.
    pub fn with_cache(db: Db, ttl: Duration) -> Self {
        KeyStore { db, cache: Arc::new(KeyCache { ttl, ..KeyCache::default() }) }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates a tenant and its first key, with the `owner` role; returns (tenant id, key).
    pub async fn create_tenant(&self, name: &str, created_by: &str) -> Result<(Uuid, String), ServiceError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ServiceError::invalid_field("name", "must be 1 to 200 characters"));
        }
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let tenant_id = Uuid::now_v7();
        tenant::ActiveModel { id: Set(tenant_id), name: Set(name.to_string()), created_at: Set(carnet_kit::db::now()) }
            .insert(&txn)
            .await
            .map_err(db_err)?;
        let key = insert_key(&txn, tenant_id, Role::Owner, "initial owner key", created_by).await?;
        let stamp = cli_stamp(created_by);
        record(&txn, tenant_id, stamp.of("create", "tenant", tenant_id)).await?;
        let (key_id, _) = parse_key(&key).expect("minted keys parse");
        record(&txn, tenant_id, stamp.of("create", "api_key", key_id)).await?;
        txn.commit().await.map_err(db_err)?;
        Ok((tenant_id, key))
    }

    /// Creates a key for an existing tenant; returns the key, shown this once. Audited as done
    /// by `created_by` through [`CLI_API`].
    pub async fn create_key(
        &self,
        tenant_id: Uuid,
        role: Role,
        label: &str,
        created_by: &str,
    ) -> Result<(Uuid, String), ServiceError> {
        self.create_key_as(tenant_id, role, label, &cli_stamp(created_by)).await
    }

    /// Creates a key for an existing tenant, audited under `stamp` (its actor creates it).
    pub async fn create_key_as(
        &self,
        tenant_id: Uuid,
        role: Role,
        label: &str,
        stamp: &Entry,
    ) -> Result<(Uuid, String), ServiceError> {
        let created_by = stamp.actor.as_str();
        if label.chars().count() > 200 {
            return Err(ServiceError::invalid_field("label", "is longer than 200 characters"));
        }
        let txn = self.db.begin_write().await.map_err(db_err)?;
        if tenant::Entity::find_by_id(tenant_id).one(&txn).await.map_err(db_err)?.is_none() {
            return Err(ServiceError::not_found("tenant", tenant_id).with_field("tenant"));
        }
        let key = insert_key(&txn, tenant_id, role, label, created_by).await?;
        let (id, _) = parse_key(&key).expect("minted keys parse");
        record(&txn, tenant_id, stamp.of("create", "api_key", id)).await?;
        txn.commit().await.map_err(db_err)?;
        Ok((id, key))
    }

    /// Lists a tenant's keys, newest last.
    /// Every tenant id (operations that run across tenants, e.g. an erasure replay).
    pub async fn tenant_ids(&self) -> Result<Vec<Uuid>, ServiceError> {
        use sea_orm::{EntityTrait as _, QuerySelect as _};
        entity::tenant::Entity::find()
            .select_only()
            .column(entity::tenant::Column::Id)
            .into_tuple::<Uuid>()
            .all(&self.db().read)
            .await
            .map_err(|_| ServiceError::internal("database error"))
    }

    pub async fn list_keys(&self, tenant_id: Uuid) -> Result<Vec<KeyInfo>, ServiceError> {
        let rows = api_key::Entity::find()
            .filter(api_key::Column::TenantId.eq(tenant_id))
            .order_by_asc(api_key::Column::Id)
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        rows.into_iter().map(key_info).collect()
    }

    /// Revokes a key of the tenant; it is refused from the next request on. Audited under
    /// `stamp` when it was not revoked yet.
    pub async fn revoke_key(&self, tenant_id: Uuid, key_id: Uuid, stamp: &Entry) -> Result<KeyInfo, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let row = api_key::Entity::find_by_id(key_id)
            .filter(api_key::Column::TenantId.eq(tenant_id))
            .one(&txn)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("api key", key_id).with_field("id"))?;
        self.cache.revoked.lock().unwrap_or_else(|e| e.into_inner()).insert(key_id);
        self.cache.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&key_id);
        let row = if row.revoked_at.is_none() {
            let mut model: api_key::ActiveModel = row.into();
            model.revoked_at = Set(Some(carnet_kit::db::now()));
            let row = model.update(&txn).await.map_err(db_err)?;
            record(&txn, tenant_id, stamp.of("revoke", "api_key", key_id)).await?;
            row
        } else {
            row
        };
        txn.commit().await.map_err(db_err)?;
        key_info(row)
    }

    /// Verifies a presented key: known, not revoked, secret matching.
    pub async fn verify(&self, presented: &str) -> Result<KeyIdentity, ServiceError> {
        let refused = || ServiceError::new(ErrorCode::Unauthenticated, "invalid api key");
        let (id, secret) = parse_key(presented).ok_or_else(refused)?;
        let presented_hash = hash_secret(secret);
        if self.cache.is_revoked(&id) {
            return Err(ServiceError::new(ErrorCode::Unauthenticated, "api key revoked"));
        }
        if !self.cache.ttl.is_zero() {
            let entries = self.cache.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((identity, hash, at)) = entries.get(&id)
                && at.elapsed() < self.cache.ttl
            {
                return if same_hash(&presented_hash, hash) { Ok(identity.clone()) } else { Err(refused()) };
            }
        }
        // `all`, not `one`: `one` adds `LIMIT ?`, which makes SQLite re-prepare the statement each time.
        let row =
            api_key::Entity::find_by_id(id).all(&self.db.read).await.map_err(db_err)?.pop().ok_or_else(refused)?;
        if !same_hash(&presented_hash, &row.secret_hash) {
            return Err(refused());
        }
        if row.revoked_at.is_some() {
            return Err(ServiceError::new(ErrorCode::Unauthenticated, "api key revoked"));
        }
        let role = row.role.parse().map_err(|_| ServiceError::internal("stored key role is unknown"))?;
        let identity = KeyIdentity { key_id: id, tenant_id: row.tenant_id, role };
        if !self.cache.ttl.is_zero() && !self.cache.is_revoked(&id) {
            let mut entries = self.cache.entries.lock().unwrap_or_else(|e| e.into_inner());
            if entries.len() > 100_000 {
                entries.clear();
            }
            entries.insert(id, (identity.clone(), row.secret_hash, Instant::now()));
        }
        Ok(identity)
    }
}

async fn insert_key<C: sea_orm::ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    role: Role,
    label: &str,
    created_by: &str,
) -> Result<String, ServiceError> {
    let id = Uuid::now_v7();
    let secret_bytes: [u8; 32] = rand::random();
    let secret = URL_SAFE_NO_PAD.encode(secret_bytes);
    api_key::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant_id),
        role: Set(role.as_str().to_string()),
        label: Set(label.trim().to_string()),
        secret_hash: Set(hash_secret(&secret)),
        created_by: Set(created_by.to_string()),
        created_at: Set(carnet_kit::db::now()),
        revoked_at: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    Ok(format!("{KEY_PREFIX}{}_{secret}", id.simple()))
}

fn key_info(row: api_key::Model) -> Result<KeyInfo, ServiceError> {
    Ok(KeyInfo {
        id: row.id,
        tenant_id: row.tenant_id,
        role: row.role.parse().map_err(|_| ServiceError::internal("stored key role is unknown"))?,
        label: row.label,
        created_by: row.created_by,
        created_at: row.created_at,
        revoked_at_opt: row.revoked_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_key_shape() {
        let id = Uuid::now_v7();
        let key = format!("carnet_{}_{}", id.simple(), "a".repeat(43));
        assert_eq!(parse_key(&key).map(|(i, _)| i), Some(id));
        assert!(parse_key("carnet_short_x").is_none());
        assert!(parse_key(&format!("other_{}_{}", id.simple(), "a".repeat(43))).is_none());
    }
}
