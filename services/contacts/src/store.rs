//! The contacts store: every operation is scoped by tenant, runs in one transaction on the write
//! handle, and writes its event to the outbox in that same transaction, so a failed request
//! leaves no partial rows and no event.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect, Set, SqlErr,
};
use uuid::Uuid;

use carnet_kit::db::Db;
use carnet_kit::{ErrorCode, ServiceError, outbox};
use carnet_proto::events::v1::{ContactErased, ContactMerged, ContactUpserted, event::Payload};

use crate::batch::Batcher;
use crate::convert::channel_to_proto;
use crate::domain::{
    Channel, Contact, ContactChange, ContactInput, ContactPage, ContactPatch, Erased, FieldDefinition, FieldPolicy,
    FieldValue, Flag, FlagKind, Source, is_builtin,
};
use crate::entity::{contact, contact_change, field_policy, tombstone};
use crate::validate;

/// Default and maximum page sizes of [`ContactStore::list`].
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;
/// Most ids [`ContactStore::subject_flags`] accepts, and how many go into one query.
/// Most contacts read by one [`ContactStore::get_many`].
pub const MAX_BATCH_GET: usize = 1_000;

pub const MAX_FLAG_IDS: usize = 10_000;
const FLAGS_CHUNK: usize = MAX_FLAG_IDS;

/// Maps a database error to `internal`, logging its kind (database messages name constraints,
/// never values).
pub(crate) fn db_err(err: DbErr) -> ServiceError {
    tracing::error!(error = %err, "contacts database error");
    ServiceError::internal("database error")
}

#[derive(Clone, Debug)]
pub struct ContactStore {
    db: Db,
    batcher: Batcher,
    /// Keys the erasure tombstones (HMAC per tenant).
    tombstone_key: std::sync::Arc<Vec<u8>>,
}

/// The keyed hash of a tombstone: HMAC-SHA256(key, tenant ‖ field ‖ normalised value), hex.
fn tombstone_hash(key: &[u8], tenant_id: Uuid, field: &str, value: &str) -> String {
    use hmac::Mac as _;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("hmac takes keys of any length");
    m.update(tenant_id.as_bytes());
    m.update(field.as_bytes());
    m.update(value.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

impl ContactStore {
    /// Returns a store on `db`; spawns the create batcher on the current tokio runtime.
    pub fn new(db: Db) -> Self {
        let batcher = Batcher::spawn(db.clone());
        let key: [u8; 32] = rand::random();
        ContactStore { db, batcher, tombstone_key: std::sync::Arc::new(key.to_vec()) }
    }

    /// Uses `key` for erasure tombstones (derived from the mesh key, so it survives restarts;
    /// [`ContactStore::new`] picks a random one).
    pub fn with_tombstone_key(mut self, key: Vec<u8>) -> Self {
        self.tombstone_key = std::sync::Arc::new(key);
        self
    }

    /// Creates a contact unless its e-mail or phone belongs to a person erased on request,
    /// which needs `erasure_override_opt` (a reason, kept in the contact's history).
    pub async fn create_with(
        &self,
        tenant_id: Uuid,
        input: ContactInput,
        source: Source,
        erasure_override_opt: Option<String>,
    ) -> Result<Contact, ServiceError> {
        let override_opt = erasure_override_opt.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
        let mut hashes = Vec::new();
        if let Some(email) = input.email_opt.as_deref().and_then(|e| validate::normalize_email(e).ok()) {
            hashes.push(("email", tombstone_hash(&self.tombstone_key, tenant_id, "email", &email)));
        }
        if let Some(phone) = input.phone_opt.as_deref().and_then(|p| validate::normalize_phone(p).ok()) {
            hashes.push(("phone", tombstone_hash(&self.tombstone_key, tenant_id, "phone", &phone)));
        }
        if !hashes.is_empty() {
            let found = tombstone::Entity::find()
                .filter(tombstone::Column::TenantId.eq(tenant_id))
                .filter(tombstone::Column::Hash.is_in(hashes.iter().map(|(_, h)| h.clone())))
                .all(&self.db.read)
                .await
                .map_err(db_err)?;
            if let Some(t) = found.first() {
                match &override_opt {
                    None => {
                        return Err(ServiceError::new(
                            ErrorCode::FailedPrecondition,
                            format!(
                                "{}: belongs to a person erased on request {}; creating it again needs erasure_override_reason",
                                t.field, t.request_id
                            ),
                        )
                        .with_field(t.field.clone()));
                    }
                    Some(_) => {
                        tracing::warn!(%tenant_id, request_id = %t.request_id, "an erased person is created again under an override");
                    }
                }
            }
        }
        let contact = self.batcher.create(tenant_id, input, source).await?;
        if let Some(reason) = override_opt {
            let row = change_row(
                tenant_id,
                contact.id,
                "erasure_override",
                &[],
                &contact.source.actor,
                Some(reason),
                None,
                None,
            );
            contact_change::Entity::insert(row).exec_without_returning(&self.db.write).await.map_err(db_err)?;
        }
        Ok(contact)
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Returns the tenant's field policy, or the built-in default when it never set one.
    pub async fn field_policy(&self, tenant_id: Uuid) -> Result<FieldPolicy, ServiceError> {
        load_policy(&self.db.read, tenant_id).await
    }

    /// Replaces the tenant's field policy with a new version.
    pub async fn set_field_policy(
        &self,
        tenant_id: Uuid,
        actor: &str,
        fields: Vec<FieldDefinition>,
    ) -> Result<FieldPolicy, ServiceError> {
        validate::validate_policy(&fields)?;
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let current = load_policy(&txn, tenant_id).await?;
        let now = carnet_kit::db::now();
        let json = serde_json::to_value(&fields).map_err(|_| ServiceError::internal("policy serialisation"))?;
        let model = field_policy::ActiveModel {
            tenant_id: Set(tenant_id),
            fields: Set(json),
            version: Set(current.version + 1),
            updated_by: Set(actor.to_string()),
            updated_at: Set(now),
        };
        if current.version == 0 {
            field_policy::Entity::insert(model).exec_without_returning(&txn).await.map_err(db_err)?;
        } else {
            model.update(&txn).await.map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)?;
        Ok(FieldPolicy {
            fields,
            version: current.version + 1,
            updated_by: actor.to_string(),
            updated_at_opt: Some(now),
        })
    }

    /// Creates a contact. The source is mandatory; every field must be in the policy; the
    /// normalised e-mail and phone must be new to the tenant (`already_exists` carries the id).
    ///
    /// Concurrent creates are committed together in one transaction (see [`crate::batch`]);
    /// each still succeeds or fails on its own.
    pub async fn create(&self, tenant_id: Uuid, input: ContactInput, source: Source) -> Result<Contact, ServiceError> {
        self.batcher.create(tenant_id, input, source).await
    }

    /// Returns one contact of the tenant; another tenant's id reads as `not_found`.
    pub async fn get(&self, tenant_id: Uuid, id: Uuid) -> Result<Contact, ServiceError> {
        to_domain(find(&self.db.read, tenant_id, id, "id").await?)
    }

    /// Rectifies a contact and records which fields changed (never the old values).
    pub async fn update(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        actor: &str,
        patch: ContactPatch,
    ) -> Result<Contact, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let policy = load_policy(&txn, tenant_id).await?;
        let current = find(&txn, tenant_id, id, "id").await?;
        if let Some(expected) = patch.expected_version_opt
            && expected != current.version
        {
            return Err(ServiceError::new(
                ErrorCode::Conflict,
                format!("contact {id} is at version {}, not {expected}", current.version),
            )
            .with_field("expected_version"));
        }
        let valid = validate::validate_input(&policy, &patch.set)?;
        for (i, key) in patch.clear.iter().enumerate() {
            let field = format!("clear_fields[{i}]");
            if valid.keys().contains(key) {
                return Err(ServiceError::invalid_field(field, format!("`{key}` is both set and cleared")));
            }
            if !is_builtin(key) && policy.get(key).is_none() && !current_fields(&current).contains_key(key) {
                return Err(ServiceError::invalid_field(field, format!("`{key}` is not a known field")));
            }
        }
        let mut next = current.clone();
        let mut fields = current_fields(&current);
        let mut changed: Vec<String> = Vec::new();
        let mut set_builtin = |key: &str, slot: &mut Option<String>, value_opt: Option<String>, cleared: bool| {
            let new = if cleared { None } else { value_opt.or_else(|| slot.clone()) };
            if new != *slot {
                *slot = new;
                changed.push(key.to_string());
            }
        };
        let cleared = |key: &str| patch.clear.iter().any(|k| k == key);
        set_builtin("email", &mut next.email, valid.email_opt.clone(), cleared("email"));
        set_builtin("first_name", &mut next.first_name, valid.first_name_opt, cleared("first_name"));
        set_builtin("last_name", &mut next.last_name, valid.last_name_opt, cleared("last_name"));
        set_builtin("phone", &mut next.phone, valid.phone_opt.clone(), cleared("phone"));
        for (key, value) in valid.fields {
            if fields.get(&key) != Some(&value) {
                fields.insert(key.clone(), value);
                changed.push(key);
            }
        }
        for key in patch.clear.iter().filter(|k| !is_builtin(k)) {
            if fields.remove(key).is_some() {
                changed.push(key.clone());
            }
        }
        if changed.is_empty() {
            return to_domain(current);
        }
        let present = |k: &str| match k {
            "email" => next.email.is_some(),
            "first_name" => next.first_name.is_some(),
            "last_name" => next.last_name.is_some(),
            "phone" => next.phone.is_some(),
            other => fields.contains_key(other),
        };
        validate::check_required(&policy, &present)?;
        // Values written with a named source keep it; values rectified without one, or
        // cleared, are no longer that source's.
        let mut field_sources: BTreeMap<String, Source> = serde_json::from_value(current.field_sources.clone())
            .map_err(|_| ServiceError::internal("stored field sources are unreadable"))?;
        for key in &changed {
            match (&patch.source_opt, present(key)) {
                (Some(source), true) => field_sources.insert(key.clone(), source.clone()),
                _ => field_sources.remove(key),
            };
        }
        let email_opt = next.email.clone().filter(|_| changed.iter().any(|k| k == "email"));
        let phone_opt = next.phone.clone().filter(|_| changed.iter().any(|k| k == "phone"));
        check_unique(&txn, tenant_id, Some(id), email_opt.as_deref(), phone_opt.as_deref()).await?;
        let mut model = current.into_active_model();
        model.email = Set(next.email);
        model.first_name = Set(next.first_name);
        model.last_name = Set(next.last_name);
        model.phone = Set(next.phone);
        model.fields = Set(fields_json(&fields));
        model.field_sources = Set(serde_json::to_value(&field_sources).expect("sources serialise"));
        model.version = Set(next.version + 1);
        model.updated_at = Set(carnet_kit::db::now());
        let model = update_contact(&txn, &self.db.read, model).await?;
        record_change(&txn, tenant_id, id, "rectified", &changed, actor, patch.reason_opt, None, None).await?;
        let channel = match &patch.source_opt {
            Some(source) => source.channel,
            None => parse_channel(&model.source_channel)?,
        };
        let event = ContactUpserted {
            contact_id: id.to_string(),
            created: false,
            changed_fields: changed,
            source_channel: channel_to_proto(channel) as i32,
        };
        outbox::enqueue(&txn, tenant_id, Payload::ContactUpserted(event)).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        to_domain(model)
    }

    /// Deletes a contact and its history.
    pub async fn delete(&self, tenant_id: Uuid, id: Uuid) -> Result<(), ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        find(&txn, tenant_id, id, "id").await?;
        remove_subject(&txn, tenant_id, id, "").await?;
        txn.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// Erases everything the service holds about a subject (Art. 17). Idempotent: erasing an
    /// absent subject removes nothing and succeeds, so the DSAR orchestrator can retry.
    pub async fn erase_subject(&self, tenant_id: Uuid, id: Uuid, request_id: &str) -> Result<Erased, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        write_tombstones(&txn, &self.tombstone_key, tenant_id, id, request_id).await?;
        let erased = remove_subject(&txn, tenant_id, id, request_id).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(erased)
    }

    /// Erases a subject for a DSAR request and writes `erasure.confirmed` in the same
    /// transaction. Idempotent: a repeat removes nothing and confirms again.
    pub async fn erase_for_request(&self, tenant_id: Uuid, id: Uuid, request_id: &str) -> Result<Erased, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        write_tombstones(&txn, &self.tombstone_key, tenant_id, id, request_id).await?;
        let erased = remove_subject(&txn, tenant_id, id, request_id).await?;
        let removed = [("contacts", erased.contacts), ("contact_changes", erased.contact_changes)];
        let event = outbox::confirmation(crate::SERVICE_NAME, request_id, id, &removed);
        outbox::enqueue(&txn, tenant_id, event).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(erased)
    }

    /// Lists the tenant's contacts in creation order, optionally matching `query`
    /// (case-insensitive substring of e-mail, names or phone).
    pub async fn list(
        &self,
        tenant_id: Uuid,
        query: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<ContactPage, ServiceError> {
        let limit = match limit {
            0 => DEFAULT_PAGE_SIZE,
            1..=MAX_PAGE_SIZE => limit,
            _ => return Err(ServiceError::invalid_field("limit", format!("must be between 1 and {MAX_PAGE_SIZE}"))),
        };
        let mut select = contact::Entity::find().filter(contact::Column::TenantId.eq(tenant_id));
        if !cursor.is_empty() {
            let after = decode_cursor(cursor)?;
            select = select.filter(contact::Column::Id.gt(after));
        }
        let query = query.trim().to_lowercase();
        if query.chars().count() > 200 {
            return Err(ServiceError::invalid_field("query", "is longer than 200 characters"));
        }
        if !query.is_empty() {
            let escaped = query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            let pattern = format!("%{escaped}%");
            let like = |col: contact::Column| {
                Expr::expr(Func::lower(Expr::col((contact::Entity, col))))
                    .like(LikeExpr::new(pattern.clone()).escape('\\'))
            };
            let mut any = Condition::any()
                .add(like(contact::Column::Email))
                .add(like(contact::Column::FirstName))
                .add(like(contact::Column::LastName));
            let digits: String = query.chars().filter(|c| c.is_ascii_digit()).collect();
            if !digits.is_empty() {
                any = any.add(contact::Column::Phone.like(format!("%{digits}%")));
            }
            select = select.filter(any);
        }
        let mut rows = select
            .order_by_asc(contact::Column::Id)
            .limit(u64::from(limit) + 1)
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        let next_cursor_opt = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|last| URL_SAFE_NO_PAD.encode(last.id.as_bytes()))
        } else {
            None
        };
        let contacts = rows.into_iter().map(to_domain).collect::<Result<_, _>>()?;
        Ok(ContactPage { contacts, next_cursor_opt })
    }

    /// Folds `other_id` into `id`: blanks of the survivor are filled from the duplicate, flags
    /// are combined (the more protective wins), the duplicate's history moves over and its
    /// provenance is kept in the `merged` change entry; the duplicate is removed.
    pub async fn merge(&self, tenant_id: Uuid, id: Uuid, other_id: Uuid, actor: &str) -> Result<Contact, ServiceError> {
        if id == other_id {
            return Err(ServiceError::invalid_field("other_id", "must differ from id"));
        }
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let keep = find(&txn, tenant_id, id, "id").await?;
        let other = find(&txn, tenant_id, other_id, "other_id").await?;
        let other_source = source_of(&other)?;
        let mut taken: Vec<String> = Vec::new();
        let mut model = keep.clone().into_active_model();
        let mut fill = |key: &str, mine: &Option<String>, theirs: &Option<String>| -> Option<String> {
            if mine.is_none() && theirs.is_some() {
                taken.push(key.to_string());
                theirs.clone()
            } else {
                mine.clone()
            }
        };
        let email = fill("email", &keep.email, &other.email);
        let first_name = fill("first_name", &keep.first_name, &other.first_name);
        let last_name = fill("last_name", &keep.last_name, &other.last_name);
        let phone = fill("phone", &keep.phone, &other.phone);
        let mut fields = current_fields(&keep);
        for (key, value) in current_fields(&other) {
            if let std::collections::btree_map::Entry::Vacant(slot) = fields.entry(key.clone()) {
                taken.push(key);
                slot.insert(value);
            }
        }
        if other.restricted && !keep.restricted {
            model.restricted = Set(true);
            model.restriction_reason = Set(other.restriction_reason.clone());
            model.restricted_at = Set(other.restricted_at);
            taken.push("restriction".into());
        }
        if other.objected && !keep.objected {
            model.objected = Set(true);
            model.objection_reason = Set(other.objection_reason.clone());
            model.objected_at = Set(other.objected_at);
            taken.push("objection".into());
        }
        // The duplicate goes first, so the survivor can take its unique e-mail and phone.
        contact_change::Entity::update_many()
            .col_expr(contact_change::Column::ContactId, Expr::value(id))
            .filter(contact_change::Column::TenantId.eq(tenant_id))
            .filter(contact_change::Column::ContactId.eq(other_id))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        contact::Entity::delete_many()
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(contact::Column::Id.eq(other_id))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        model.email = Set(email);
        model.first_name = Set(first_name);
        model.last_name = Set(last_name);
        model.phone = Set(phone);
        model.fields = Set(fields_json(&fields));
        model.version = Set(keep.version + 1);
        model.updated_at = Set(carnet_kit::db::now());
        let model = update_contact(&txn, &self.db.read, model).await?;
        record_change(&txn, tenant_id, id, "merged", &taken, actor, None, Some(other_id), Some(&other_source)).await?;
        let merged = ContactMerged { contact_id: id.to_string(), merged_id: other_id.to_string() };
        outbox::enqueue(&txn, tenant_id, Payload::ContactMerged(merged)).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        to_domain(model)
    }

    /// Sets or lifts the restriction (Art. 18) or objection (Art. 21) flag. Setting a flag to
    /// its current state changes nothing.
    pub async fn set_flag(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        actor: &str,
        kind: FlagKind,
        active: bool,
        reason_opt: Option<String>,
    ) -> Result<Contact, ServiceError> {
        if reason_opt.as_ref().is_some_and(|r| r.chars().count() > validate::MAX_TEXT_CHARS) {
            return Err(ServiceError::invalid_field("reason", "is longer than 1000 characters"));
        }
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let current = find(&txn, tenant_id, id, "id").await?;
        let is_active = match kind {
            FlagKind::Restriction => current.restricted,
            FlagKind::Objection => current.objected,
        };
        if is_active == active {
            return to_domain(current);
        }
        let now = carnet_kit::db::now();
        let since_opt = active.then_some(now);
        let reason_kept = reason_opt.clone().filter(|_| active);
        let version = current.version + 1;
        let mut model = current.into_active_model();
        let (field, change_kind) = match kind {
            FlagKind::Restriction => {
                model.restricted = Set(active);
                model.restriction_reason = Set(reason_kept);
                model.restricted_at = Set(since_opt);
                ("restriction", if active { "restriction_set" } else { "restriction_lifted" })
            }
            FlagKind::Objection => {
                model.objected = Set(active);
                model.objection_reason = Set(reason_kept);
                model.objected_at = Set(since_opt);
                ("objection", if active { "objection_set" } else { "objection_lifted" })
            }
        };
        model.version = Set(version);
        model.updated_at = Set(now);
        let model = update_contact(&txn, &self.db.read, model).await?;
        record_change(&txn, tenant_id, id, change_kind, &[field.to_string()], actor, reason_opt, None, None).await?;
        let event = ContactUpserted {
            contact_id: id.to_string(),
            created: false,
            changed_fields: vec![field.to_string()],
            source_channel: channel_to_proto(parse_channel(&model.source_channel)?) as i32,
        };
        outbox::enqueue(&txn, tenant_id, Payload::ContactUpserted(event)).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        to_domain(model)
    }

    /// Returns (restricted, objected) of each of `ids` the tenant holds; absent ids are unknown.
    pub async fn subject_flags(
        &self,
        tenant_id: Uuid,
        ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, (bool, bool)>, ServiceError> {
        let mut flags = std::collections::HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(FLAGS_CHUNK) {
            let rows: Vec<(Uuid, bool, bool)> = contact::Entity::find()
                .select_only()
                .columns([contact::Column::Id, contact::Column::Restricted, contact::Column::Objected])
                .filter(contact::Column::TenantId.eq(tenant_id))
                .filter(contact::Column::Id.is_in(chunk.iter().copied()))
                .into_tuple()
                .all(&self.db.read)
                .await
                .map_err(db_err)?;
            flags.extend(rows.into_iter().map(|(id, r, o)| (id, (r, o))));
        }
        Ok(flags)
    }

    /// Returns the contacts of `ids` that exist in the tenant (at most [`MAX_BATCH_GET`]).
    pub async fn get_many(&self, tenant_id: Uuid, ids: &[Uuid]) -> Result<Vec<Contact>, ServiceError> {
        let rows = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(contact::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        rows.into_iter().map(to_domain).collect()
    }

    /// Returns the change history of a contact, oldest first.
    pub async fn history(&self, tenant_id: Uuid, id: Uuid) -> Result<Vec<ContactChange>, ServiceError> {
        find(&self.db.read, tenant_id, id, "id").await?;
        load_history(&self.db.read, tenant_id, id).await
    }

    /// Returns everything the service holds about one subject, as a JSON document
    /// (Art. 15 / 20), and the number of records in it.
    pub async fn export_subject(&self, tenant_id: Uuid, id: Uuid) -> Result<(serde_json::Value, u64), ServiceError> {
        let contact = self.get(tenant_id, id).await?;
        let history = load_history(&self.db.read, tenant_id, id).await?;
        let policy = self.field_policy(tenant_id).await?;
        let mut held: Vec<String> = contact.fields.keys().cloned().collect();
        for (key, present) in [
            ("email", contact.email.is_some()),
            ("first_name", contact.first_name.is_some()),
            ("last_name", contact.last_name.is_some()),
            ("phone", contact.phone.is_some()),
        ] {
            if present {
                held.push(key.to_string());
            }
        }
        let categories: Vec<serde_json::Value> = policy
            .fields
            .iter()
            .filter(|d| held.contains(&d.key))
            .map(|d| {
                let mut entry = serde_json::json!({"field": d.key, "category": d.category});
                if !d.purpose.is_empty() {
                    entry["purpose"] = serde_json::json!(d.purpose);
                }
                entry
            })
            .collect();
        let count = 1 + history.len() as u64;
        let doc = serde_json::json!({
            "service": crate::SERVICE_NAME,
            "schema_version": crate::EXPORT_SCHEMA_VERSION,
            "exported_at": carnet_kit::db::now(),
            "contact": contact,
            "data_categories": categories,
            "history": history,
        });
        Ok((doc, count))
    }
}

/// A validated new contact, ready to insert.
pub(crate) struct NewContact {
    pub model: contact::Model,
    pub keys: Vec<String>,
    pub channel: Channel,
    pub actor: String,
}

impl NewContact {
    /// Returns the `created` history row and the `contact.upserted` outbox row of this contact.
    pub fn rows(&self) -> (contact_change::ActiveModel, outbox::entity::ActiveModel) {
        let m = &self.model;
        let change = change_row(m.tenant_id, m.id, "created", &self.keys, &self.actor, None, None, None);
        let event = ContactUpserted {
            contact_id: m.id.to_string(),
            created: true,
            changed_fields: self.keys.clone(),
            source_channel: channel_to_proto(self.channel) as i32,
        };
        (change, outbox::row(m.tenant_id, Payload::ContactUpserted(event)))
    }
}

/// Validates a create against the policy and builds the row (no IO).
pub(crate) fn prepare_create(
    policy: &FieldPolicy,
    tenant_id: Uuid,
    input: &ContactInput,
    source: &Source,
) -> Result<NewContact, ServiceError> {
    let valid = validate::validate_input(policy, input)?;
    let keys = valid.keys();
    validate::check_required(policy, &|k| keys.iter().any(|p| p == k))?;
    let now = carnet_kit::db::now();
    let model = contact::Model {
        id: Uuid::now_v7(),
        tenant_id,
        email: valid.email_opt,
        first_name: valid.first_name_opt,
        last_name: valid.last_name_opt,
        phone: valid.phone_opt,
        fields: fields_json(&valid.fields),
        field_sources: serde_json::json!({}),
        source_channel: source.channel.as_str().to_string(),
        source_detail: source.detail.clone(),
        source_actor: source.actor.clone(),
        source_collected_at: carnet_kit::db::truncate(source.collected_at),
        restricted: false,
        restriction_reason: None,
        restricted_at: None,
        objected: false,
        objection_reason: None,
        objected_at: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    Ok(NewContact { model, keys, channel: source.channel, actor: source.actor.clone() })
}

/// Creates one contact in its own transaction: the path for a create that could not be
/// committed with its batch.
pub(crate) async fn create_one(
    db: &Db,
    tenant_id: Uuid,
    input: &ContactInput,
    source: &Source,
) -> Result<Contact, ServiceError> {
    let txn = db.begin_write().await.map_err(db_err)?;
    let policy = load_policy(&txn, tenant_id).await?;
    let new = prepare_create(&policy, tenant_id, input, source)?;
    check_unique(&txn, tenant_id, None, new.model.email.as_deref(), new.model.phone.as_deref()).await?;
    let (change, event) = new.rows();
    let model = insert_contact(&txn, &db.read, new.model.into_active_model()).await?;
    contact_change::Entity::insert(change).exec_without_returning(&txn).await.map_err(db_err)?;
    outbox::entity::Entity::insert(event).exec_without_returning(&txn).await.map_err(db_err)?;
    txn.commit().await.map_err(db_err)?;
    to_domain(model)
}

pub(crate) async fn load_policy<C: ConnectionTrait>(conn: &C, tenant_id: Uuid) -> Result<FieldPolicy, ServiceError> {
    // `all`, not `one`: see `find`.
    let Some(row) = field_policy::Entity::find_by_id(tenant_id).all(conn).await.map_err(db_err)?.pop() else {
        return Ok(FieldPolicy::default_policy());
    };
    let fields: Vec<FieldDefinition> =
        serde_json::from_value(row.fields).map_err(|_| ServiceError::internal("stored field policy is unreadable"))?;
    Ok(FieldPolicy { fields, version: row.version, updated_by: row.updated_by, updated_at_opt: Some(row.updated_at) })
}

async fn find<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    id: Uuid,
    field: &str,
) -> Result<contact::Model, ServiceError> {
    // `all`, not `one`: the id is the primary key, and `one` adds `LIMIT ?`, whose bound value
    // SQLite (3.51) reads while planning, so it re-prepares the statement on every execution.
    contact::Entity::find()
        .filter(contact::Column::TenantId.eq(tenant_id))
        .filter(contact::Column::Id.eq(id))
        .all(conn)
        .await
        .map_err(db_err)?
        .pop()
        .ok_or_else(|| ServiceError::not_found("contact", id).with_field(field))
}

/// Fails with `already_exists` (naming the field, carrying the holder's id) when another
/// contact of the tenant holds the e-mail or phone.
async fn check_unique<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    self_id_opt: Option<Uuid>,
    email_opt: Option<&str>,
    phone_opt: Option<&str>,
) -> Result<(), ServiceError> {
    for (field, column, value_opt) in
        [("email", contact::Column::Email, email_opt), ("phone", contact::Column::Phone, phone_opt)]
    {
        let Some(value) = value_opt else { continue };
        let mut select = contact::Entity::find()
            .select_only()
            .column(contact::Column::Id)
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(column.eq(value));
        if let Some(self_id) = self_id_opt {
            select = select.filter(contact::Column::Id.ne(self_id));
        }
        // `all`, not `one`: see `find`; the unique index allows one holder at most.
        if let Some(existing) = select.into_tuple::<Uuid>().all(conn).await.map_err(db_err)?.pop() {
            return Err(duplicate(field, existing));
        }
    }
    Ok(())
}

pub(crate) fn duplicate(field: &str, existing: Uuid) -> ServiceError {
    ServiceError::new(ErrorCode::AlreadyExists, format!("{field}: already held by contact {existing}"))
        .with_field(field)
        .with_existing_id(existing.to_string())
}

/// Inserts, turning a unique violation (a concurrent duplicate) into `already_exists`.
/// Inserts, turning a unique violation (a duplicate committed concurrently) into
/// `already_exists`, looked up on `read` since the failed statement may have aborted `conn`.
async fn insert_contact<C: ConnectionTrait>(
    conn: &C,
    read: &DatabaseConnection,
    model: contact::ActiveModel,
) -> Result<contact::Model, ServiceError> {
    let (tenant_id, id) = (model.tenant_id.clone().unwrap(), model.id.clone().unwrap());
    let (email_opt, phone_opt) = (model.email.clone().unwrap(), model.phone.clone().unwrap());
    match model.insert(conn).await {
        Ok(m) => Ok(m),
        Err(err) => Err(unique_violation(read, tenant_id, id, err, email_opt, phone_opt).await),
    }
}

/// Updates, with the same handling of unique violations as [`insert_contact`].
async fn update_contact<C: ConnectionTrait>(
    conn: &C,
    read: &DatabaseConnection,
    model: contact::ActiveModel,
) -> Result<contact::Model, ServiceError> {
    let (tenant_id, id) = (model.tenant_id.clone().unwrap(), model.id.clone().unwrap());
    let (email_opt, phone_opt) = (model.email.clone().unwrap(), model.phone.clone().unwrap());
    match model.update(conn).await {
        Ok(m) => Ok(m),
        Err(err) => Err(unique_violation(read, tenant_id, id, err, email_opt, phone_opt).await),
    }
}

async fn unique_violation(
    read: &DatabaseConnection,
    tenant_id: Uuid,
    id: Uuid,
    err: DbErr,
    email_opt: Option<String>,
    phone_opt: Option<String>,
) -> ServiceError {
    if !matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        return db_err(err);
    }
    match check_unique(read, tenant_id, Some(id), email_opt.as_deref(), phone_opt.as_deref()).await {
        Err(dup) if dup.code == ErrorCode::AlreadyExists => dup,
        _ => ServiceError::new(ErrorCode::AlreadyExists, "e-mail or phone already held by another contact"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn record_change<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    contact_id: Uuid,
    kind: &str,
    fields: &[String],
    actor: &str,
    reason_opt: Option<String>,
    related_opt: Option<Uuid>,
    related_source_opt: Option<&Source>,
) -> Result<(), ServiceError> {
    let change = change_row(tenant_id, contact_id, kind, fields, actor, reason_opt, related_opt, related_source_opt);
    contact_change::Entity::insert(change).exec_without_returning(conn).await.map_err(db_err)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn change_row(
    tenant_id: Uuid,
    contact_id: Uuid,
    kind: &str,
    fields: &[String],
    actor: &str,
    reason_opt: Option<String>,
    related_opt: Option<Uuid>,
    related_source_opt: Option<&Source>,
) -> contact_change::ActiveModel {
    contact_change::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        contact_id: Set(contact_id),
        kind: Set(kind.to_string()),
        fields: Set(serde_json::json!(fields)),
        actor: Set(actor.to_string()),
        reason: Set(reason_opt.filter(|r| !r.is_empty())),
        related_contact_id: Set(related_opt),
        source: Set(related_source_opt.map(|s| serde_json::to_value(s).expect("source serialises"))),
        at: Set(carnet_kit::db::now()),
    }
}

/// Records keyed-hash tombstones of an erased contact's e-mail and phone (Art. 17 erasures only,
/// not a plain delete), so the person is not silently re-created.
async fn write_tombstones<C: ConnectionTrait>(
    conn: &C,
    key: &[u8],
    tenant_id: Uuid,
    id: Uuid,
    request_id: &str,
) -> Result<(), ServiceError> {
    let Some(c) = contact::Entity::find()
        .filter(contact::Column::TenantId.eq(tenant_id))
        .filter(contact::Column::Id.eq(id))
        .all(conn)
        .await
        .map_err(db_err)?
        .pop()
    else {
        return Ok(());
    };
    let request = if request_id.is_empty() { "(no request id)".to_string() } else { request_id.to_string() };
    for (field, value_opt) in [("email", c.email), ("phone", c.phone)] {
        let Some(value) = value_opt else { continue };
        let row = tombstone::ActiveModel {
            tenant_id: Set(tenant_id),
            hash: Set(tombstone_hash(key, tenant_id, field, &value)),
            field: Set(field.to_string()),
            request_id: Set(request.clone()),
            created_at: Set(carnet_kit::db::now()),
        };
        tombstone::Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::columns([tombstone::Column::TenantId, tombstone::Column::Hash])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

async fn remove_subject<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    id: Uuid,
    request_id: &str,
) -> Result<Erased, ServiceError> {
    let changes = contact_change::Entity::delete_many()
        .filter(contact_change::Column::TenantId.eq(tenant_id))
        .filter(contact_change::Column::ContactId.eq(id))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    let contacts = contact::Entity::delete_many()
        .filter(contact::Column::TenantId.eq(tenant_id))
        .filter(contact::Column::Id.eq(id))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if contacts > 0 {
        let event =
            ContactErased { contact_id: id.to_string(), request_id: request_id.to_string(), merged_ids: vec![] };
        outbox::enqueue(conn, tenant_id, Payload::ContactErased(event)).await.map_err(db_err)?;
    }
    Ok(Erased { contacts, contact_changes: changes })
}

async fn load_history<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Vec<ContactChange>, ServiceError> {
    let rows = contact_change::Entity::find()
        .filter(contact_change::Column::TenantId.eq(tenant_id))
        .filter(contact_change::Column::ContactId.eq(id))
        .order_by_asc(contact_change::Column::Id)
        .all(conn)
        .await
        .map_err(db_err)?;
    rows.into_iter()
        .map(|row| {
            Ok(ContactChange {
                id: row.id,
                kind: row.kind,
                fields: serde_json::from_value(row.fields)
                    .map_err(|_| ServiceError::internal("stored change is unreadable"))?,
                actor: row.actor,
                at: row.at,
                reason_opt: row.reason,
                related_contact_id_opt: row.related_contact_id,
                related_source_opt: row
                    .source
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|_| ServiceError::internal("stored source is unreadable"))?,
            })
        })
        .collect()
}

fn fields_json(fields: &BTreeMap<String, FieldValue>) -> serde_json::Value {
    serde_json::to_value(fields).expect("field values serialise")
}

fn current_fields(model: &contact::Model) -> BTreeMap<String, FieldValue> {
    serde_json::from_value(model.fields.clone()).unwrap_or_default()
}

fn parse_channel(s: &str) -> Result<Channel, ServiceError> {
    Channel::parse(s).ok_or_else(|| ServiceError::internal("stored source channel is unknown"))
}

fn source_of(model: &contact::Model) -> Result<Source, ServiceError> {
    Ok(Source {
        channel: parse_channel(&model.source_channel)?,
        detail: model.source_detail.clone(),
        actor: model.source_actor.clone(),
        collected_at: model.source_collected_at,
    })
}

fn decode_cursor(cursor: &str) -> Result<Uuid, ServiceError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| ServiceError::invalid_field("cursor", "is not a cursor returned by this service"))
}

pub(crate) fn to_domain(model: contact::Model) -> Result<Contact, ServiceError> {
    let source = source_of(&model)?;
    let fields =
        serde_json::from_value(model.fields).map_err(|_| ServiceError::internal("stored fields are unreadable"))?;
    Ok(Contact {
        id: model.id,
        email: model.email,
        first_name: model.first_name,
        last_name: model.last_name,
        phone: model.phone,
        fields,
        source,
        restriction: Flag {
            active: model.restricted,
            reason_opt: model.restriction_reason,
            since_opt: model.restricted_at,
        },
        objection: Flag { active: model.objected, reason_opt: model.objection_reason, since_opt: model.objected_at },
        field_sources: serde_json::from_value(model.field_sources)
            .map_err(|_| ServiceError::internal("stored field sources are unreadable"))?,
        version: model.version,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}
