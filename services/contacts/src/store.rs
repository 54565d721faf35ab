//! The contacts store: every operation is scoped by tenant, runs in one transaction on the write
//! handle, and writes its event and its audit entry to the outbox in that same transaction, so a
//! failed request leaves no partial rows and no event.
//!
//! Personal values are sealed with the person's key from the key store (see [`crate::sealed`]);
//! erasing a person destroys that key, so a copy of this database taken earlier no longer
//! yields them. E-mails, phones and name tokens are found through blind indexes.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set};
use uuid::Uuid;

use carnet_kit::db::Db;
use carnet_kit::keystore::{KeyStore, SubjectKey, is_encrypted};
use carnet_kit::{ErrorCode, ServiceError, audit, outbox};
use carnet_proto::events::v1::{ContactMerged, ContactUpserted, event::Payload};

use crate::SERVICE_NAME;
use crate::audit::{Audit, ReadLog};
use crate::batch::Batcher;
use crate::convert::channel_to_proto;
use crate::domain::{
    Contact, ContactChange, ContactInput, ContactPage, ContactPatch, Erased, FieldDefinition, FieldPolicy, FlagKind,
    Source, is_builtin,
};
use crate::entity::{contact, contact_change, field_policy, tombstone};
use crate::rows::{
    change_row, check_unique, db_err, decode_cursor, erased, find, load_history, load_policy, parse_channel,
    remove_subject, remove_tokens, replace_tokens, source_of, to_domain, tombstone_hash, update_contact,
    write_tombstones,
};
use crate::sealed::{self, Indexes, Personal, email_hash, open_personal, phone_hash, seal_personal};
use crate::search::Search;
use crate::validate;

/// Default and maximum page sizes of [`ContactStore::list`].
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;
/// Most contacts read by one [`ContactStore::get_many`].
pub const MAX_BATCH_GET: usize = 1_000;
/// Most ids [`ContactStore::subject_flags`] accepts, and how many go into one query.
pub const MAX_FLAG_IDS: usize = 10_000;
const FLAGS_CHUNK: usize = MAX_FLAG_IDS;

#[derive(Clone, Debug)]
pub struct ContactStore {
    db: Db,
    keys: KeyStore,
    batcher: Batcher,
    reads: ReadLog,
    /// Keys the erasure tombstones (HMAC per tenant).
    tombstone_key: std::sync::Arc<Vec<u8>>,
}

impl ContactStore {
    /// Returns a store on `db` whose personal values are sealed with keys from `keys`; spawns the
    /// create batcher and the read-audit writer on the current tokio runtime.
    pub fn new(db: Db, keys: KeyStore) -> Self {
        let batcher = Batcher::spawn(db.clone(), keys.clone());
        let reads = ReadLog::spawn(db.clone());
        let key: [u8; 32] = rand::random();
        ContactStore { db, keys, batcher, reads, tombstone_key: std::sync::Arc::new(key.to_vec()) }
    }

    /// Uses `key` for erasure tombstones (derived from the mesh key, so it survives restarts;
    /// [`ContactStore::new`] picks a random one).
    pub fn with_tombstone_key(mut self, key: Vec<u8>) -> Self {
        self.tombstone_key = std::sync::Arc::new(key);
        self
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The key of erasure tombstones (imports check them like single creates).
    pub(crate) fn tombstone_key(&self) -> &[u8] {
        &self.tombstone_key
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The key a contact's values are sealed with on write: its key (created on first use), or
    /// none when encryption is off.
    async fn write_key(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<SubjectKey>, ServiceError> {
        if !self.keys.encrypts() {
            return Ok(None);
        }
        Ok(Some(self.keys.subject_key(tenant_id, id).await?))
    }

    /// Opens a row's personal values; `None` when its key is destroyed.
    async fn open(&self, model: &contact::Model) -> Result<Option<Personal>, ServiceError> {
        let key_opt = match model.personal.as_deref() {
            Some(stored) if is_encrypted(stored) => self.keys.find_subject_key(model.tenant_id, model.id).await?,
            _ => None,
        };
        open_personal(key_opt.as_ref(), model.tenant_id, model.id, model.personal.as_deref())
    }

    /// Opens many rows of one tenant with one key-store query.
    pub(crate) async fn open_many(
        &self,
        tenant_id: Uuid,
        models: Vec<contact::Model>,
    ) -> Result<Vec<(contact::Model, Option<Personal>)>, ServiceError> {
        let sealed: Vec<Uuid> =
            models.iter().filter(|m| m.personal.as_deref().is_some_and(is_encrypted)).map(|m| m.id).collect();
        let keys =
            if sealed.is_empty() { HashMap::new() } else { self.keys.find_subject_keys(tenant_id, &sealed).await? };
        models
            .into_iter()
            .map(|m| {
                let personal = open_personal(keys.get(&m.id), tenant_id, m.id, m.personal.as_deref())?;
                Ok((m, personal))
            })
            .collect()
    }

    /// Creates a contact unless its e-mail or phone belongs to a person erased on request,
    /// which needs `erasure_override_opt` (a reason, kept in the contact's history).
    pub async fn create_with(
        &self,
        tenant_id: Uuid,
        input: ContactInput,
        source: Source,
        erasure_override_opt: Option<String>,
        audit: &Audit,
    ) -> Result<Contact, ServiceError> {
        let override_opt = erasure_override_opt.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
        let index = self.keys.blind_index(tenant_id).await?;
        let mut hashes = Vec::new();
        if let Some(email) = input.email_opt.as_deref().and_then(|e| validate::normalize_email(e).ok()) {
            let h = tombstone_hash(&self.tombstone_key, tenant_id, "email", &email_hash(&index, &email));
            hashes.push(("email", h));
        }
        if let Some(phone) = input.phone_opt.as_deref().and_then(|p| validate::normalize_phone(p).ok()) {
            let h = tombstone_hash(&self.tombstone_key, tenant_id, "phone", &phone_hash(&index, &phone));
            hashes.push(("phone", h));
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
        let contact = self.batcher.create(tenant_id, input, source, audit.clone()).await?;
        if let Some(reason) = override_opt {
            let key_opt = self.write_key(tenant_id, contact.id).await?;
            let row = change_row(
                tenant_id,
                contact.id,
                "erasure_override",
                &[],
                &contact.source.actor,
                Some(reason),
                None,
                None,
                key_opt.as_ref(),
            );
            contact_change::Entity::insert(row).exec_without_returning(&self.db.write).await.map_err(db_err)?;
        }
        Ok(contact)
    }

    /// Returns the tenant's field policy, or the built-in default when it never set one.
    pub async fn field_policy(&self, tenant_id: Uuid) -> Result<FieldPolicy, ServiceError> {
        load_policy(&self.db.read, tenant_id).await
    }

    /// Replaces the tenant's field policy with a new version.
    pub async fn set_field_policy(
        &self,
        tenant_id: Uuid,
        audit: &Audit,
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
            updated_by: Set(audit.actor().to_string()),
            updated_at: Set(now),
        };
        if current.version == 0 {
            field_policy::Entity::insert(model).exec_without_returning(&txn).await.map_err(db_err)?;
        } else {
            model.update(&txn).await.map_err(db_err)?;
        }
        let mut entry = audit.entry("update", "field_policy", tenant_id).fields(fields.iter().map(|f| f.key.clone()));
        entry.subject_id_opt = None;
        audit::record(&txn, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(FieldPolicy {
            fields,
            version: current.version + 1,
            updated_by: audit.actor().to_string(),
            updated_at_opt: Some(now),
        })
    }

    /// Creates a contact. The source is mandatory; every field must be in the policy; the
    /// normalised e-mail and phone must be new to the tenant (`already_exists` carries the id).
    ///
    /// Concurrent creates are committed together in one transaction (see [`crate::batch`]);
    /// each still succeeds or fails on its own.
    pub async fn create(
        &self,
        tenant_id: Uuid,
        input: ContactInput,
        source: Source,
        audit: &Audit,
    ) -> Result<Contact, ServiceError> {
        self.batcher.create(tenant_id, input, source, audit.clone()).await
    }

    /// Returns one contact of the tenant and records the `view`; another tenant's id, and an
    /// erased person's row restored from a backup, read as `not_found`.
    pub async fn get(&self, tenant_id: Uuid, id: Uuid, audit: &Audit) -> Result<Contact, ServiceError> {
        let contact = self.read(tenant_id, id).await?;
        self.reads.record(tenant_id, vec![audit.entry("view", "contact", id)]).await?;
        Ok(contact)
    }

    /// [`ContactStore::get`] without an audit entry (for the store's own reads).
    async fn read(&self, tenant_id: Uuid, id: Uuid) -> Result<Contact, ServiceError> {
        let model = find(&self.db.read, tenant_id, id, "id").await?;
        let personal = self.open(&model).await?.ok_or_else(|| erased(id, "id"))?;
        to_domain(model, Some(personal))
    }

    /// Rectifies a contact and records which fields changed (never the old values).
    pub async fn update(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        audit: &Audit,
        patch: ContactPatch,
    ) -> Result<Contact, ServiceError> {
        let index = self.keys.blind_index(tenant_id).await?;
        let key_opt = self.keys.find_subject_key(tenant_id, id).await?;
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let policy = load_policy(&txn, tenant_id).await?;
        let current = find(&txn, tenant_id, id, "id").await?;
        let personal = open_personal(key_opt.as_ref(), tenant_id, id, current.personal.as_deref())?
            .ok_or_else(|| erased(id, "id"))?;
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
            if !is_builtin(key) && policy.get(key).is_none() && !personal.fields.contains_key(key) {
                return Err(ServiceError::invalid_field(field, format!("`{key}` is not a known field")));
            }
        }
        let mut next = personal.clone();
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
            if next.fields.get(&key) != Some(&value) {
                next.fields.insert(key.clone(), value);
                changed.push(key);
            }
        }
        for key in patch.clear.iter().filter(|k| !is_builtin(k)) {
            if next.fields.remove(key).is_some() {
                changed.push(key.clone());
            }
        }
        if changed.is_empty() {
            return to_domain(current, Some(personal));
        }
        let present = |k: &str| match k {
            "email" => next.email.is_some(),
            "first_name" => next.first_name.is_some(),
            "last_name" => next.last_name.is_some(),
            "phone" => next.phone.is_some(),
            other => next.fields.contains_key(other),
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
        let ix = Indexes::of(&index, &next);
        let email_changed = changed.iter().any(|k| k == "email");
        let phone_changed = changed.iter().any(|k| k == "phone");
        let email_opt = ix.email_opt.clone().filter(|_| email_changed);
        let phone_opt = ix.phone_opt.clone().filter(|_| phone_changed);
        check_unique(&txn, tenant_id, Some(id), email_opt.as_deref(), phone_opt.as_deref()).await?;
        let write_key = match (&key_opt, self.keys.encrypts()) {
            (Some(key), true) => Some(key.clone()),
            (None, true) => self.write_key(tenant_id, id).await?,
            (_, false) => None,
        };
        let version = current.version;
        let source_channel = current.source_channel.clone();
        let mut model = current.into_active_model();
        model.personal = Set(Some(seal_personal(write_key.as_ref(), tenant_id, id, &next)));
        model.email_index = Set(ix.email_opt.clone());
        model.phone_index = Set(ix.phone_opt.clone());
        model.field_sources = Set(serde_json::to_value(&field_sources).expect("sources serialise"));
        model.version = Set(version + 1);
        let now = carnet_kit::db::now();
        model.updated_at = Set(now);
        // A plugin's write is not a sign of a relationship: it must not keep data alive.
        if !patch.source_opt.as_ref().is_some_and(|s| s.channel == crate::domain::Channel::Enrichment) {
            model.last_activity_at = Set(Some(now));
        }
        let model = update_contact(&txn, &self.db.read, model).await?;
        if changed.iter().any(|k| k == "first_name" || k == "last_name") {
            replace_tokens(&txn, tenant_id, id, &ix).await?;
        }
        let row = change_row(
            tenant_id,
            id,
            "rectified",
            &changed,
            audit.actor(),
            patch.reason_opt,
            None,
            None,
            write_key.as_ref(),
        );
        contact_change::Entity::insert(row).exec_without_returning(&txn).await.map_err(db_err)?;
        let channel = match &patch.source_opt {
            Some(source) => source.channel,
            None => parse_channel(&source_channel)?,
        };
        let event = ContactUpserted {
            contact_id: id.to_string(),
            created: false,
            changed_fields: changed.clone(),
            source_channel: channel_to_proto(channel) as i32,
            import_id: patch.import_id_opt.map(|i| i.to_string()).unwrap_or_default(),
        };
        outbox::enqueue(&txn, tenant_id, Payload::ContactUpserted(event)).await.map_err(db_err)?;
        audit::record(&txn, tenant_id, SERVICE_NAME, audit.entry("update", "contact", id).fields(changed))
            .await
            .map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        to_domain(model, Some(next))
    }

    /// Deletes a contact and its history, and destroys its key.
    pub async fn delete(&self, tenant_id: Uuid, id: Uuid, audit: &Audit) -> Result<(), ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        find(&txn, tenant_id, id, "id").await?;
        remove_subject(&txn, tenant_id, id, "").await?;
        audit::record(&txn, tenant_id, SERVICE_NAME, audit.entry("delete", "contact", id)).await.map_err(db_err)?;
        self.destroy_key(tenant_id, id).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// Destroys the subject's key, with the rows gone in the open transaction: if the key cannot
    /// be destroyed, the erasure is rolled back (and retried), so a confirmed erasure always
    /// left no key; if the commit fails after it, the rows left are unreadable and the retry
    /// removes them.
    async fn destroy_key(&self, tenant_id: Uuid, id: Uuid) -> Result<(), ServiceError> {
        self.keys.destroy(tenant_id, id).await?;
        Ok(())
    }

    /// Erases everything the service holds about a subject (Art. 17). Idempotent: erasing an
    /// absent subject removes nothing and succeeds (destroying its key if one is left, e.g.
    /// after the key store was restored), so the DSAR orchestrator can retry.
    pub async fn erase_subject(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        request_id: &str,
        audit: &Audit,
    ) -> Result<Erased, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        write_tombstones(&txn, &self.tombstone_key, tenant_id, id, request_id).await?;
        let erased = remove_subject(&txn, tenant_id, id, request_id).await?;
        audit::record(&txn, tenant_id, SERVICE_NAME, audit.entry("erase", "contact", id)).await.map_err(db_err)?;
        self.destroy_key(tenant_id, id).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(erased)
    }

    /// Erases a subject for a DSAR request and writes `erasure.confirmed` in the same
    /// transaction, after its key is destroyed. Idempotent: a repeat removes nothing and
    /// confirms again.
    pub async fn erase_for_request(&self, tenant_id: Uuid, id: Uuid, request_id: &str) -> Result<Erased, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        write_tombstones(&txn, &self.tombstone_key, tenant_id, id, request_id).await?;
        let erased = remove_subject(&txn, tenant_id, id, request_id).await?;
        let removed = [("contacts", erased.contacts), ("contact_changes", erased.contact_changes)];
        let event = outbox::confirmation(crate::SERVICE_NAME, request_id, id, &removed);
        outbox::enqueue(&txn, tenant_id, event).await.map_err(db_err)?;
        let entry = Audit::bus(tenant_id, request_id).entry("erase", "contact", id);
        audit::record(&txn, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)?;
        self.destroy_key(tenant_id, id).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(erased)
    }

    /// Lists the tenant's contacts in creation order, optionally matching `query` exactly (a
    /// whole e-mail, a phone, or name tokens: see [`crate::search`]), and records a `view` per
    /// contact returned when a person asked. A row whose key is destroyed (an erased person
    /// restored from a backup) is listed without personal values, so an erasure replay finds it.
    pub async fn list(
        &self,
        tenant_id: Uuid,
        query: &str,
        limit: u32,
        cursor: &str,
        audit: &Audit,
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
        if query.trim().chars().count() > 200 {
            return Err(ServiceError::invalid_field("query", "is longer than 200 characters"));
        }
        let search = Search::parse(query);
        if search != Search::All {
            let index = self.keys.blind_index(tenant_id).await?;
            if let Some(condition) = search.condition(&index, tenant_id) {
                select = select.filter(condition);
            }
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
        let contacts = self
            .open_many(tenant_id, rows)
            .await?
            .into_iter()
            .map(|(m, p)| to_domain(m, p))
            .collect::<Result<Vec<_>, _>>()?;
        if !audit.is_service() {
            let entries = contacts.iter().map(|c| audit.entry("view", "contact", c.id)).collect();
            self.reads.record(tenant_id, entries).await?;
        }
        Ok(ContactPage { contacts, next_cursor_opt })
    }

    /// Folds `other_id` into `id`: blanks of the survivor are filled from the duplicate, flags
    /// are combined (the more protective wins), the duplicate's history moves over (its reasons
    /// sealed again with the survivor's key) and its provenance is kept in the `merged` change
    /// entry; the duplicate is removed. The duplicate's key stays: other services may still hold
    /// records under its id.
    pub async fn merge(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        other_id: Uuid,
        audit: &Audit,
    ) -> Result<Contact, ServiceError> {
        if id == other_id {
            return Err(ServiceError::invalid_field("other_id", "must differ from id"));
        }
        let index = self.keys.blind_index(tenant_id).await?;
        let mut found = self.keys.find_subject_keys(tenant_id, &[id, other_id]).await?;
        let (keep_key_opt, other_key_opt) = (found.remove(&id), found.remove(&other_id));
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let keep = find(&txn, tenant_id, id, "id").await?;
        let other = find(&txn, tenant_id, other_id, "other_id").await?;
        let mine = open_personal(keep_key_opt.as_ref(), tenant_id, id, keep.personal.as_deref())?
            .ok_or_else(|| erased(id, "id"))?;
        let theirs = open_personal(other_key_opt.as_ref(), tenant_id, other_id, other.personal.as_deref())?
            .ok_or_else(|| erased(other_id, "other_id"))?;
        let other_source = source_of(&other)?;
        let mut taken: Vec<String> = Vec::new();
        let mut next = mine.clone();
        let mut fill = |key: &str, slot: &mut Option<String>, theirs: &Option<String>| {
            if slot.is_none() && theirs.is_some() {
                taken.push(key.to_string());
                *slot = theirs.clone();
            }
        };
        fill("email", &mut next.email, &theirs.email);
        fill("first_name", &mut next.first_name, &theirs.first_name);
        fill("last_name", &mut next.last_name, &theirs.last_name);
        fill("phone", &mut next.phone, &theirs.phone);
        for (key, value) in &theirs.fields {
            if let std::collections::btree_map::Entry::Vacant(slot) = next.fields.entry(key.clone()) {
                taken.push(key.clone());
                slot.insert(value.clone());
            }
        }
        let mut model = keep.clone().into_active_model();
        if other.restricted && !keep.restricted {
            model.restricted = Set(true);
            model.restricted_at = Set(other.restricted_at);
            next.restriction_reason = theirs.restriction_reason.clone();
            taken.push("restriction".into());
        }
        if other.objected && !keep.objected {
            model.objected = Set(true);
            model.objected_at = Set(other.objected_at);
            next.objection_reason = theirs.objection_reason.clone();
            taken.push("objection".into());
        }
        let write_key = match (&keep_key_opt, self.keys.encrypts()) {
            (Some(key), true) => Some(key.clone()),
            (None, true) => self.write_key(tenant_id, id).await?,
            (_, false) => None,
        };
        // The duplicate's history moves over, its reasons sealed with the survivor's key.
        let moved = contact_change::Entity::find()
            .filter(contact_change::Column::TenantId.eq(tenant_id))
            .filter(contact_change::Column::ContactId.eq(other_id))
            .all(&txn)
            .await
            .map_err(db_err)?;
        for change in moved {
            let mut row = change.clone().into_active_model();
            row.contact_id = Set(id);
            if let Some(stored) = &change.sealed_reason {
                let reason_opt = sealed::open_reason(other_key_opt.as_ref(), tenant_id, change.id, stored)?;
                let aad = sealed::change_aad(tenant_id, change.id);
                row.sealed_reason = Set(reason_opt.map(|r| sealed::seal(write_key.as_ref(), &aad, r.as_bytes())));
            }
            row.update(&txn).await.map_err(db_err)?;
        }
        // The duplicate goes first, so the survivor can take its unique e-mail and phone.
        remove_tokens(&txn, tenant_id, other_id).await?;
        contact::Entity::delete_many()
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(contact::Column::Id.eq(other_id))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        let ix = Indexes::of(&index, &next);
        model.personal = Set(Some(seal_personal(write_key.as_ref(), tenant_id, id, &next)));
        model.email_index = Set(ix.email_opt.clone());
        model.phone_index = Set(ix.phone_opt.clone());
        model.version = Set(keep.version + 1);
        let now = carnet_kit::db::now();
        model.updated_at = Set(now);
        model.last_activity_at = Set(Some(now));
        let model = update_contact(&txn, &self.db.read, model).await?;
        replace_tokens(&txn, tenant_id, id, &ix).await?;
        let row =
            change_row(tenant_id, id, "merged", &taken, audit.actor(), None, Some(other_id), Some(&other_source), None);
        contact_change::Entity::insert(row).exec_without_returning(&txn).await.map_err(db_err)?;
        let merged = ContactMerged { contact_id: id.to_string(), merged_id: other_id.to_string() };
        outbox::enqueue(&txn, tenant_id, Payload::ContactMerged(merged)).await.map_err(db_err)?;
        for (subject, fields) in [(id, taken.clone()), (other_id, Vec::new())] {
            let entry = audit.entry("merge", "contact", subject).fields(fields);
            audit::record(&txn, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)?;
        to_domain(model, Some(next))
    }

    /// Sets or lifts the restriction (Art. 18) or objection (Art. 21) flag. Setting a flag to
    /// its current state changes nothing.
    pub async fn set_flag(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        audit: &Audit,
        kind: FlagKind,
        active: bool,
        reason_opt: Option<String>,
    ) -> Result<Contact, ServiceError> {
        if reason_opt.as_ref().is_some_and(|r| r.chars().count() > validate::MAX_TEXT_CHARS) {
            return Err(ServiceError::invalid_field("reason", "is longer than 1000 characters"));
        }
        let key_opt = self.keys.find_subject_key(tenant_id, id).await?;
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let current = find(&txn, tenant_id, id, "id").await?;
        let personal = open_personal(key_opt.as_ref(), tenant_id, id, current.personal.as_deref())?
            .ok_or_else(|| erased(id, "id"))?;
        let is_active = match kind {
            FlagKind::Restriction => current.restricted,
            FlagKind::Objection => current.objected,
        };
        if is_active == active {
            return to_domain(current, Some(personal));
        }
        let now = carnet_kit::db::now();
        let since_opt = active.then_some(now);
        let reason_kept = reason_opt.clone().filter(|_| active);
        let version = current.version + 1;
        let source_channel = current.source_channel.clone();
        let mut next = personal;
        let mut model = current.into_active_model();
        let (field, change_kind, action) = match kind {
            FlagKind::Restriction => {
                model.restricted = Set(active);
                model.restricted_at = Set(since_opt);
                next.restriction_reason = reason_kept;
                ("restriction", if active { "restriction_set" } else { "restriction_lifted" }, "restrict")
            }
            FlagKind::Objection => {
                model.objected = Set(active);
                model.objected_at = Set(since_opt);
                next.objection_reason = reason_kept;
                ("objection", if active { "objection_set" } else { "objection_lifted" }, "object")
            }
        };
        let write_key = match (&key_opt, self.keys.encrypts()) {
            (Some(key), true) => Some(key.clone()),
            (None, true) => self.write_key(tenant_id, id).await?,
            (_, false) => None,
        };
        model.personal = Set(Some(seal_personal(write_key.as_ref(), tenant_id, id, &next)));
        model.version = Set(version);
        model.updated_at = Set(now);
        model.last_activity_at = Set(Some(now));
        let model = update_contact(&txn, &self.db.read, model).await?;
        let fields = [field.to_string()];
        let row =
            change_row(tenant_id, id, change_kind, &fields, audit.actor(), reason_opt, None, None, write_key.as_ref());
        contact_change::Entity::insert(row).exec_without_returning(&txn).await.map_err(db_err)?;
        let event = ContactUpserted {
            contact_id: id.to_string(),
            created: false,
            changed_fields: fields.to_vec(),
            source_channel: channel_to_proto(parse_channel(&source_channel)?) as i32,
            import_id: String::new(),
        };
        outbox::enqueue(&txn, tenant_id, Payload::ContactUpserted(event)).await.map_err(db_err)?;
        audit::record(&txn, tenant_id, SERVICE_NAME, audit.entry(action, "contact", id).fields(fields))
            .await
            .map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        to_domain(model, Some(next))
    }

    /// Returns (restricted, objected) of each of `ids` the tenant holds; absent ids are unknown.
    pub async fn subject_flags(
        &self,
        tenant_id: Uuid,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, (bool, bool)>, ServiceError> {
        let mut flags = HashMap::with_capacity(ids.len());
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

    /// Returns the contacts of `ids` that exist in the tenant (at most [`MAX_BATCH_GET`]); an
    /// erased person's restored row is left out. Records a `view` per contact returned when a
    /// person asked.
    pub async fn get_many(&self, tenant_id: Uuid, ids: &[Uuid], audit: &Audit) -> Result<Vec<Contact>, ServiceError> {
        let rows = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(contact::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        let contacts = self
            .open_many(tenant_id, rows)
            .await?
            .into_iter()
            .filter(|(_, p)| p.is_some())
            .map(|(m, p)| to_domain(m, p))
            .collect::<Result<Vec<_>, _>>()?;
        if !audit.is_service() {
            let entries = contacts.iter().map(|c| audit.entry("view", "contact", c.id)).collect();
            self.reads.record(tenant_id, entries).await?;
        }
        Ok(contacts)
    }

    /// Returns the change history of a contact, oldest first, and records its `view`.
    pub async fn history(&self, tenant_id: Uuid, id: Uuid, audit: &Audit) -> Result<Vec<ContactChange>, ServiceError> {
        let model = find(&self.db.read, tenant_id, id, "id").await?;
        let key_opt = self.keys.find_subject_key(tenant_id, id).await?;
        if model.personal.as_deref().is_some_and(is_encrypted) && key_opt.is_none() {
            return Err(erased(id, "id"));
        }
        let history = load_history(&self.db.read, tenant_id, id, key_opt.as_ref()).await?;
        self.reads.record(tenant_id, vec![audit.entry("view", "contact_history", id)]).await?;
        Ok(history)
    }

    /// Returns everything the service holds about one subject, as a JSON document
    /// (Art. 15 / 20), and the number of records in it; records the `export`.
    pub async fn export_subject(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        audit: &Audit,
    ) -> Result<(serde_json::Value, u64), ServiceError> {
        let contact = self.read(tenant_id, id).await?;
        let key_opt = self.keys.find_subject_key(tenant_id, id).await?;
        let history = load_history(&self.db.read, tenant_id, id, key_opt.as_ref()).await?;
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
        self.reads.record(tenant_id, vec![audit.entry("export", "contact", id)]).await?;
        Ok((doc, count))
    }
}
