//! Rows of the contacts database: building, sealing and indexing new contacts, the lookups,
//! uniqueness checks, history, tokens and tombstones the store's operations share, and the
//! conversion of a row and its opened values into a [`Contact`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect, Set, SqlErr,
};
use uuid::Uuid;

use carnet_kit::db::Db;
use carnet_kit::keystore::{BlindIndex, SubjectKey};
use carnet_kit::{ErrorCode, ServiceError, audit, outbox};
use carnet_proto::events::v1::{ContactErased, ContactUpserted, event::Payload};

use crate::SERVICE_NAME;
use crate::audit::Audit;
use crate::convert::channel_to_proto;
use crate::domain::{
    Channel, Contact, ContactChange, ContactInput, Erased, FieldDefinition, FieldPolicy, Flag, Source,
};
use crate::entity::{contact, contact_change, contact_token, field_policy, tombstone};
use crate::sealed::{self, Indexes, Personal, seal_personal};
use crate::validate;

/// Maps a database error to `internal`, logging its kind (database messages name constraints,
/// never values).
pub(crate) fn db_err(err: DbErr) -> ServiceError {
    tracing::error!(error = %err, "contacts database error");
    ServiceError::internal("database error")
}

/// The error of a contact whose key is destroyed: the person was erased, and the row came back
/// (from a backup, say) without anything readable in it.
pub(crate) fn erased(id: Uuid, field: &str) -> ServiceError {
    tracing::warn!(contact_id = %id, "a contact row without its key (the person was erased) is read as absent");
    ServiceError::new(ErrorCode::NotFound, format!("contact {id} not found: it was erased (its key is destroyed)"))
        .with_field(field)
}

/// The keyed hash of a tombstone: HMAC-SHA256(key, tenant ‖ field ‖ blind index), hex. Built
/// on the blind index rather than the value, so the erasure of a row whose key is already
/// destroyed (a replay after a restore) still writes it.
pub(crate) fn tombstone_hash(key: &[u8], tenant_id: Uuid, field: &str, index: &str) -> String {
    use hmac::Mac as _;
    let mut m = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key).expect("hmac takes keys of any length");
    m.update(tenant_id.as_bytes());
    m.update(field.as_bytes());
    m.update(index.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// A validated new contact, sealed and indexed, ready to insert.
pub(crate) struct NewContact {
    pub model: contact::Model,
    pub personal: Personal,
    pub indexes: Indexes,
    pub keys: Vec<String>,
    pub channel: Channel,
    pub actor: String,
    pub audit: Audit,
    /// The import creating it, named in the `contact.upserted` event.
    pub import_id_opt: Option<Uuid>,
}

impl NewContact {
    /// Returns the `created` history row, and the outbox rows of this contact: its
    /// `contact.upserted` and its audit entry.
    pub fn rows(&self) -> (contact_change::ActiveModel, [outbox::entity::ActiveModel; 2]) {
        let m = &self.model;
        let change = change_row(m.tenant_id, m.id, "created", &self.keys, &self.actor, None, None, None, None);
        let event = ContactUpserted {
            contact_id: m.id.to_string(),
            created: true,
            changed_fields: self.keys.clone(),
            source_channel: channel_to_proto(self.channel) as i32,
            import_id: self.import_id_opt.map(|i| i.to_string()).unwrap_or_default(),
        };
        let entry = self.audit.entry("create", "contact", m.id).fields(self.keys.clone());
        (
            change,
            [outbox::row(m.tenant_id, Payload::ContactUpserted(event)), audit::row(m.tenant_id, SERVICE_NAME, entry)],
        )
    }

    /// The rows of its name tokens.
    pub fn token_rows(&self) -> impl Iterator<Item = contact_token::ActiveModel> + '_ {
        token_rows(self.model.tenant_id, self.model.id, &self.indexes)
    }
}

pub(crate) fn token_rows<'a>(
    tenant_id: Uuid,
    id: Uuid,
    ix: &'a Indexes,
) -> impl Iterator<Item = contact_token::ActiveModel> + 'a {
    ix.tokens.iter().map(move |hash| contact_token::ActiveModel {
        tenant_id: Set(tenant_id),
        hash: Set(hash.clone()),
        contact_id: Set(id),
    })
}

/// Validates a create against the policy, and seals and indexes the row (no IO).
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare_create(
    policy: &FieldPolicy,
    tenant_id: Uuid,
    id: Uuid,
    input: &ContactInput,
    source: &Source,
    index: &BlindIndex,
    key_opt: Option<&SubjectKey>,
    audit: &Audit,
) -> Result<NewContact, ServiceError> {
    let valid = validate::validate_input(policy, input)?;
    let keys = valid.keys();
    validate::check_required(policy, &|k| keys.iter().any(|p| p == k))?;
    let personal = Personal {
        email: valid.email_opt,
        first_name: valid.first_name_opt,
        last_name: valid.last_name_opt,
        phone: valid.phone_opt,
        fields: valid.fields,
        restriction_reason: None,
        objection_reason: None,
    };
    let indexes = Indexes::of(index, &personal);
    let now = carnet_kit::db::now();
    let model = contact::Model {
        id,
        tenant_id,
        personal: Some(seal_personal(key_opt, tenant_id, id, &personal)),
        email_index: indexes.email_opt.clone(),
        phone_index: indexes.phone_opt.clone(),
        field_sources: serde_json::json!({}),
        source_channel: source.channel.as_str().to_string(),
        source_detail: source.detail.clone(),
        source_actor: source.actor.clone(),
        source_collected_at: carnet_kit::db::truncate(source.collected_at),
        restricted: false,
        restricted_at: None,
        objected: false,
        objected_at: None,
        version: 1,
        created_at: now,
        updated_at: now,
        last_activity_at: Some(now),
    };
    Ok(NewContact {
        model,
        personal,
        indexes,
        keys,
        channel: source.channel,
        actor: source.actor.clone(),
        audit: audit.clone(),
        import_id_opt: None,
    })
}

/// Creates one contact in its own transaction: the path for a create that could not be
/// committed with its batch.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_one(
    db: &Db,
    tenant_id: Uuid,
    id: Uuid,
    input: &ContactInput,
    source: &Source,
    index: &BlindIndex,
    key_opt: Option<&SubjectKey>,
    audit: &Audit,
) -> Result<Contact, ServiceError> {
    let txn = db.begin_write().await.map_err(db_err)?;
    let policy = load_policy(&txn, tenant_id).await?;
    let new = prepare_create(&policy, tenant_id, id, input, source, index, key_opt, audit)?;
    check_unique(&txn, tenant_id, None, new.model.email_index.as_deref(), new.model.phone_index.as_deref()).await?;
    let (change, events) = new.rows();
    let tokens: Vec<_> = new.token_rows().collect();
    let model = insert_contact(&txn, &db.read, new.model.into_active_model()).await?;
    contact_change::Entity::insert(change).exec_without_returning(&txn).await.map_err(db_err)?;
    if !tokens.is_empty() {
        contact_token::Entity::insert_many(tokens).exec_without_returning(&txn).await.map_err(db_err)?;
    }
    outbox::entity::Entity::insert_many(events).exec_without_returning(&txn).await.map_err(db_err)?;
    txn.commit().await.map_err(db_err)?;
    to_domain(model, Some(new.personal))
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

pub(crate) async fn find<C: ConnectionTrait>(
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
/// contact of the tenant holds the e-mail or phone (by blind index).
pub(crate) async fn check_unique<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    self_id_opt: Option<Uuid>,
    email_index_opt: Option<&str>,
    phone_index_opt: Option<&str>,
) -> Result<(), ServiceError> {
    for (field, column, value_opt) in [
        ("email", contact::Column::EmailIndex, email_index_opt),
        ("phone", contact::Column::PhoneIndex, phone_index_opt),
    ] {
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

/// Inserts, turning a unique violation (a duplicate committed concurrently) into
/// `already_exists`, looked up on `read` since the failed statement may have aborted `conn`.
pub(crate) async fn insert_contact<C: ConnectionTrait>(
    conn: &C,
    read: &DatabaseConnection,
    model: contact::ActiveModel,
) -> Result<contact::Model, ServiceError> {
    let (tenant_id, id) = (model.tenant_id.clone().unwrap(), model.id.clone().unwrap());
    let (email_opt, phone_opt) = (model.email_index.clone().unwrap(), model.phone_index.clone().unwrap());
    match model.insert(conn).await {
        Ok(m) => Ok(m),
        Err(err) => Err(unique_violation(read, tenant_id, id, err, email_opt, phone_opt).await),
    }
}

/// Updates, with the same handling of unique violations as [`insert_contact`].
pub(crate) async fn update_contact<C: ConnectionTrait>(
    conn: &C,
    read: &DatabaseConnection,
    model: contact::ActiveModel,
) -> Result<contact::Model, ServiceError> {
    let (tenant_id, id) = (model.tenant_id.clone().unwrap(), model.id.clone().unwrap());
    let (email_opt, phone_opt) = (model.email_index.clone().unwrap(), model.phone_index.clone().unwrap());
    match model.update(conn).await {
        Ok(m) => Ok(m),
        Err(err) => Err(unique_violation(read, tenant_id, id, err, email_opt, phone_opt).await),
    }
}

pub(crate) async fn unique_violation(
    read: &DatabaseConnection,
    tenant_id: Uuid,
    id: Uuid,
    err: DbErr,
    email_index_opt: Option<String>,
    phone_index_opt: Option<String>,
) -> ServiceError {
    if !matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        return db_err(err);
    }
    match check_unique(read, tenant_id, Some(id), email_index_opt.as_deref(), phone_index_opt.as_deref()).await {
        Err(dup) if dup.code == ErrorCode::AlreadyExists => dup,
        _ => ServiceError::new(ErrorCode::AlreadyExists, "e-mail or phone already held by another contact"),
    }
}

/// Replaces a contact's name tokens.
pub(crate) async fn replace_tokens<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    id: Uuid,
    ix: &Indexes,
) -> Result<(), ServiceError> {
    remove_tokens(conn, tenant_id, id).await?;
    let rows: Vec<_> = token_rows(tenant_id, id, ix).collect();
    if !rows.is_empty() {
        contact_token::Entity::insert_many(rows).exec_without_returning(conn).await.map_err(db_err)?;
    }
    Ok(())
}

pub(crate) async fn remove_tokens<C: ConnectionTrait>(conn: &C, tenant_id: Uuid, id: Uuid) -> Result<(), ServiceError> {
    contact_token::Entity::delete_many()
        .filter(contact_token::Column::TenantId.eq(tenant_id))
        .filter(contact_token::Column::ContactId.eq(id))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// A history row; its reason sealed with `key_opt` (plain without one).
#[allow(clippy::too_many_arguments)]
pub(crate) fn change_row(
    tenant_id: Uuid,
    contact_id: Uuid,
    kind: &str,
    fields: &[String],
    actor: &str,
    reason_opt: Option<String>,
    related_opt: Option<Uuid>,
    related_source_opt: Option<&Source>,
    key_opt: Option<&SubjectKey>,
) -> contact_change::ActiveModel {
    let id = Uuid::now_v7();
    let sealed_reason = reason_opt
        .filter(|r| !r.is_empty())
        .map(|r| sealed::seal(key_opt, &sealed::change_aad(tenant_id, id), r.as_bytes()));
    contact_change::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant_id),
        contact_id: Set(contact_id),
        kind: Set(kind.to_string()),
        fields: Set(serde_json::json!(fields)),
        actor: Set(actor.to_string()),
        sealed_reason: Set(sealed_reason),
        related_contact_id: Set(related_opt),
        source: Set(related_source_opt.map(|s| serde_json::to_value(s).expect("source serialises"))),
        at: Set(carnet_kit::db::now()),
    }
}

/// Records keyed-hash tombstones of an erased contact's e-mail and phone (Art. 17 erasures only,
/// not a plain delete), so the person is not silently re-created. Built from the blind indexes,
/// so it needs no key: a restored row whose key is gone gets its tombstones too.
pub(crate) async fn write_tombstones<C: ConnectionTrait>(
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
    for (field, index_opt) in [("email", c.email_index), ("phone", c.phone_index)] {
        let Some(index) = index_opt else { continue };
        let row = tombstone::ActiveModel {
            tenant_id: Set(tenant_id),
            hash: Set(tombstone_hash(key, tenant_id, field, &index)),
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

pub(crate) async fn remove_subject<C: ConnectionTrait>(
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
    remove_tokens(conn, tenant_id, id).await?;
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

pub(crate) async fn load_history<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    id: Uuid,
    key_opt: Option<&SubjectKey>,
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
            let reason_opt = match &row.sealed_reason {
                Some(stored) => sealed::open_reason(key_opt, tenant_id, row.id, stored)?,
                None => None,
            };
            Ok(ContactChange {
                id: row.id,
                kind: row.kind,
                fields: serde_json::from_value(row.fields)
                    .map_err(|_| ServiceError::internal("stored change is unreadable"))?,
                actor: row.actor,
                at: row.at,
                reason_opt,
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

pub(crate) fn parse_channel(s: &str) -> Result<Channel, ServiceError> {
    Channel::parse(s).ok_or_else(|| ServiceError::internal("stored source channel is unknown"))
}

pub(crate) fn source_of(model: &contact::Model) -> Result<Source, ServiceError> {
    Ok(Source {
        channel: parse_channel(&model.source_channel)?,
        detail: model.source_detail.clone(),
        actor: model.source_actor.clone(),
        collected_at: model.source_collected_at,
    })
}

pub(crate) fn decode_cursor(cursor: &str) -> Result<Uuid, ServiceError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| ServiceError::invalid_field("cursor", "is not a cursor returned by this service"))
}

/// A contact from its row and its opened values; `None` (its key is destroyed) gives a record
/// without personal values.
pub(crate) fn to_domain(model: contact::Model, personal_opt: Option<Personal>) -> Result<Contact, ServiceError> {
    let source = source_of(&model)?;
    let p = personal_opt.unwrap_or_default();
    Ok(Contact {
        id: model.id,
        email: p.email,
        first_name: p.first_name,
        last_name: p.last_name,
        phone: p.phone,
        fields: p.fields,
        source,
        restriction: Flag {
            active: model.restricted,
            reason_opt: p.restriction_reason,
            since_opt: model.restricted_at,
        },
        objection: Flag { active: model.objected, reason_opt: p.objection_reason, since_opt: model.objected_at },
        field_sources: serde_json::from_value(model.field_sources)
            .map_err(|_| ServiceError::internal("stored field sources are unreadable"))?,
        version: model.version,
        created_at: model.created_at,
        updated_at: model.updated_at,
        last_activity_at: model.last_activity_at.unwrap_or(model.updated_at),
    })
}
