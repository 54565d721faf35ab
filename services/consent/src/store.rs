//! The consent store: purposes and notice versions, the append-only ledger, and the current
//! state per contact and purpose, updated in the same transaction as each ledger row (with the
//! `consent.changed` event in the outbox). Every change also writes its audit entry
//! (`audit.recorded`, docs/audit.md) in its transaction, from the `stamp` of who did it through
//! which API.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use carnet_kit::audit::{self, Entry};
use carnet_kit::db::Db;
use carnet_kit::{ErrorCode, ServiceError, outbox};
use carnet_proto::events::v1::{ConsentChanged, event::Payload};

use crate::domain::{
    Action, ConsentSource, Decision, LawfulBasis, Notice, Purpose, Record, RecordInput, State, Status, SubjectFlags,
    decide,
};
use crate::entity::{form, notice_version, purpose, record, state};

/// A web form definition.
#[derive(Clone, Debug, PartialEq)]
pub struct FormDef {
    pub id: Uuid,
    pub name: String,
    pub fields: Vec<String>,
    pub consents: Vec<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// (contact, purpose, status, lawful basis, notice version, since): what a decision reads.
type StateColumns = (Uuid, String, String, String, Option<i32>, chrono::DateTime<chrono::Utc>);

/// Longest notice text, in characters.
pub const MAX_NOTICE_CHARS: usize = 20_000;
/// Contacts per query when loading states for a batch check (SQLite allows 32766 parameters;
/// one more is the tenant).
const STATE_CHUNK: usize = 10_000;

pub(crate) fn db_err(err: DbErr) -> ServiceError {
    tracing::error!(error = %err, "consent database error");
    ServiceError::internal("database error")
}

/// Writes the audit entry of `action` on a record, from the `stamp` of the call.
async fn audited<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    stamp: &Entry,
    action: &'static str,
    record_type: &'static str,
    record_id: impl ToString,
    edit: impl FnOnce(Entry) -> Entry,
) -> Result<(), ServiceError> {
    let entry = edit(stamp.of(action, record_type, record_id));
    audit::record(conn, tenant_id, crate::SERVICE_NAME, entry).await.map_err(db_err)
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some('a'..='z'))
        && key.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_notice(notice: &str) -> Result<String, ServiceError> {
    let text = notice.trim();
    if text.is_empty() {
        return Err(ServiceError::invalid_field("notice", "is required: the text shown to the person"));
    }
    if text.chars().count() > MAX_NOTICE_CHARS {
        return Err(ServiceError::invalid_field("notice", format!("is longer than {MAX_NOTICE_CHARS} characters")));
    }
    Ok(text.to_string())
}

#[derive(Clone, Debug)]
pub struct ConsentStore {
    db: Db,
    /// Keys the hash of client addresses kept as evidence.
    ip_key: std::sync::Arc<Vec<u8>>,
}

impl ConsentStore {
    /// `ip_key` keys the hash under which client addresses are kept (never in clear).
    pub fn new(db: Db, ip_key: Vec<u8>) -> Self {
        ConsentStore { db, ip_key: std::sync::Arc::new(ip_key) }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    fn ip_hash(&self, tenant_id: Uuid, ip: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.ip_key).expect("hmac takes keys of any length");
        mac.update(tenant_id.as_bytes());
        mac.update(ip.trim().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Creates a purpose with version 1 of its notice text.
    pub async fn create_purpose(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        key: &str,
        description: &str,
        basis: LawfulBasis,
        notice: &str,
    ) -> Result<Purpose, ServiceError> {
        if !valid_key(key) {
            return Err(ServiceError::invalid_field(
                "key",
                "must be lower-case letters, digits and _, starting with a letter (at most 63)",
            ));
        }
        let notice = check_notice(notice)?;
        let description = description.trim();
        if description.chars().count() > 1000 {
            return Err(ServiceError::invalid_field("description", "is longer than 1000 characters"));
        }
        let txn = self.db.begin_write().await.map_err(db_err)?;
        if find_purpose(&txn, tenant_id, key).await?.is_some() {
            return Err(ServiceError::new(ErrorCode::AlreadyExists, format!("key: purpose {key} already exists"))
                .with_field("key"));
        }
        let now = carnet_kit::db::now();
        purpose::Entity::insert(purpose::ActiveModel {
            tenant_id: Set(tenant_id),
            key: Set(key.to_string()),
            description: Set(description.to_string()),
            lawful_basis: Set(basis.as_str().to_string()),
            current_version: Set(1),
            created_at: Set(now),
        })
        .exec_without_returning(&txn)
        .await
        .map_err(db_err)?;
        insert_notice(&txn, tenant_id, key, 1, &notice, &stamp.actor).await?;
        audited(&txn, tenant_id, stamp, "create", "purpose", key, |e| e.fields(["notice"])).await?;
        txn.commit().await.map_err(db_err)?;
        self.purpose(tenant_id, key).await
    }

    /// Stores a new version of the notice text (the same text again changes nothing).
    pub async fn update_notice(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        key: &str,
        notice: &str,
    ) -> Result<Purpose, ServiceError> {
        let notice = check_notice(notice)?;
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let row = find_purpose(&txn, tenant_id, key).await?.ok_or_else(|| unknown_purpose("key", key))?;
        let current = load_notice(&txn, tenant_id, key, row.current_version).await?;
        if current.sha256 != sha256_hex(&notice) {
            let version = row.current_version + 1;
            insert_notice(&txn, tenant_id, key, version, &notice, &stamp.actor).await?;
            let mut model: purpose::ActiveModel = row.into();
            model.current_version = Set(version);
            sea_orm::ActiveModelTrait::update(model, &txn).await.map_err(db_err)?;
            audited(&txn, tenant_id, stamp, "update", "purpose", key, |e| e.fields(["notice"])).await?;
        }
        txn.commit().await.map_err(db_err)?;
        self.purpose(tenant_id, key).await
    }

    /// Returns a purpose with every version of its notice, oldest first.
    pub async fn purpose(&self, tenant_id: Uuid, key: &str) -> Result<Purpose, ServiceError> {
        let row = find_purpose(&self.db.read, tenant_id, key).await?.ok_or_else(|| unknown_purpose("key", key))?;
        let notices = notice_version::Entity::find()
            .filter(notice_version::Column::TenantId.eq(tenant_id))
            .filter(notice_version::Column::PurposeKey.eq(key))
            .order_by_asc(notice_version::Column::Version)
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        to_purpose(row, notices.into_iter().map(to_notice).collect())
    }

    /// Lists the tenant's purposes, each with its current notice.
    pub async fn purposes(&self, tenant_id: Uuid) -> Result<Vec<Purpose>, ServiceError> {
        let rows = purpose::Entity::find()
            .filter(purpose::Column::TenantId.eq(tenant_id))
            .order_by_asc(purpose::Column::Key)
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        let mut purposes = Vec::with_capacity(rows.len());
        for row in rows {
            let notice = load_notice(&self.db.read, tenant_id, &row.key, row.current_version).await?;
            purposes.push(to_purpose(row, vec![notice])?);
        }
        Ok(purposes)
    }

    /// Appends a grant or withdrawal to the ledger and updates the current state. The caller has
    /// checked that the contact exists. `actor` is who the ledger names (`subject:link` for the
    /// person's own links); `stamp` the caller of the API, for the audit trail.
    pub async fn record(
        &self,
        tenant_id: Uuid,
        actor: &str,
        input: RecordInput,
        stamp: &Entry,
    ) -> Result<Record, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let purpose_row = find_purpose(&txn, tenant_id, &input.purpose)
            .await?
            .ok_or_else(|| unknown_purpose("purpose", &input.purpose))?;
        let purpose_basis = parse_basis(&purpose_row.lawful_basis)?;
        let current = find_state(&txn, tenant_id, input.contact_id, &input.purpose).await?;
        if let Some(expected) = input.expected_record_opt
            && current.as_ref().map(|s| s.record_id) != Some(expected)
        {
            return Err(ServiceError::new(ErrorCode::FailedPrecondition, "token: the link is no longer valid")
                .with_field("token"));
        }
        let justification = input.justification_opt.as_deref().map(str::trim).filter(|j| !j.is_empty());
        if justification.is_some_and(|j| j.chars().count() > 2000) {
            return Err(ServiceError::invalid_field("evidence.justification", "is longer than 2000 characters"));
        }
        let (basis, status, notice) = match input.action {
            Action::Grant => {
                let basis = input.lawful_basis_opt.unwrap_or(purpose_basis);
                if basis != LawfulBasis::Consent && justification.is_none() {
                    return Err(ServiceError::invalid_field(
                        "evidence.justification",
                        format!("is required for lawful basis {}", basis.as_str()),
                    ));
                }
                if input.require_confirmation && basis != LawfulBasis::Consent {
                    return Err(ServiceError::invalid_field("require_confirmation", "applies to consent only"));
                }
                let version = input.notice_version_opt.unwrap_or(purpose_row.current_version);
                if version < 1 || version > purpose_row.current_version {
                    return Err(ServiceError::invalid_field(
                        "evidence.notice_version",
                        format!("purpose {} has notice versions 1 to {}", input.purpose, purpose_row.current_version),
                    ));
                }
                let notice = load_notice(&txn, tenant_id, &input.purpose, version).await?;
                let status = if input.require_confirmation { Status::Pending } else { Status::Granted };
                (basis, status, Some(notice))
            }
            Action::Withdraw => {
                let basis = current.as_ref().map_or(Ok(purpose_basis), |s| parse_basis(&s.lawful_basis))?;
                (basis, Status::Withdrawn, None)
            }
        };
        let now = carnet_kit::db::now();
        let at = input.at_opt.map(carnet_kit::db::truncate).unwrap_or(now);
        if at > now + chrono::Duration::minutes(5) {
            return Err(ServiceError::invalid_field("evidence.at", "is in the future"));
        }
        let trimmed = |s: &Option<String>, max: usize| {
            s.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(|v| v.chars().take(max).collect::<String>())
        };
        let row = record::Model {
            id: Uuid::now_v7(),
            tenant_id,
            contact_id: input.contact_id,
            purpose_key: input.purpose.clone(),
            action: input.action.as_str().to_string(),
            status: status.as_str().to_string(),
            lawful_basis: basis.as_str().to_string(),
            source: input.source.as_str().to_string(),
            form_id: trimmed(&input.form_id_opt, 100),
            notice_version: notice.as_ref().map(|n| n.version),
            notice_sha256: notice.as_ref().map(|n| n.sha256.clone()),
            ip_hash: input.ip_opt.as_deref().filter(|ip| !ip.trim().is_empty()).map(|ip| self.ip_hash(tenant_id, ip)),
            user_agent: trimmed(&input.user_agent_opt, 512),
            justification: justification.map(str::to_owned),
            actor: actor.to_string(),
            at,
        };
        record::Entity::insert(sea_orm::IntoActiveModel::into_active_model(row.clone()))
            .exec_without_returning(&txn)
            .await
            .map_err(db_err)?;
        let new_state = state::ActiveModel {
            tenant_id: Set(tenant_id),
            contact_id: Set(input.contact_id),
            purpose_key: Set(input.purpose.clone()),
            status: Set(status.as_str().to_string()),
            lawful_basis: Set(basis.as_str().to_string()),
            notice_version: Set(row.notice_version.or(current.as_ref().and_then(|s| s.notice_version))),
            record_id: Set(row.id),
            since: Set(at),
        };
        state::Entity::insert(new_state)
            .on_conflict(
                OnConflict::columns([state::Column::TenantId, state::Column::ContactId, state::Column::PurposeKey])
                    .update_columns([
                        state::Column::Status,
                        state::Column::LawfulBasis,
                        state::Column::NoticeVersion,
                        state::Column::RecordId,
                        state::Column::Since,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await
            .map_err(db_err)?;
        let event = ConsentChanged {
            contact_id: input.contact_id.to_string(),
            purpose: input.purpose.clone(),
            status: status.as_str().to_string(),
            record_id: row.id.to_string(),
        };
        outbox::enqueue(&txn, tenant_id, Payload::ConsentChanged(event)).await.map_err(db_err)?;
        let contact_id = input.contact_id;
        audited(&txn, tenant_id, stamp, input.action.as_str(), "consent", row.id, |e| e.subject(contact_id)).await?;
        txn.commit().await.map_err(db_err)?;
        to_record(row)
    }

    /// Returns the current state of one contact and purpose, with the id of its latest record.
    pub async fn state(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        key: &str,
    ) -> Result<Option<(State, Uuid)>, ServiceError> {
        match find_state(&self.db.read, tenant_id, contact_id, key).await? {
            Some(row) => {
                let record_id = row.record_id;
                Ok(Some((to_state(row)?, record_id)))
            }
            None => Ok(None),
        }
    }

    /// Confirms the pending grant `record_id` (double opt-in): appends a granted record with the
    /// same notice version, source `email_optin`. Returns `(state, already_done)`; a pending
    /// grant that was since replaced (withdrawn, granted again) can no longer be confirmed.
    #[allow(clippy::too_many_arguments)]
    pub async fn confirm(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        key: &str,
        record_id: Uuid,
        ip_opt: Option<String>,
        user_agent_opt: Option<String>,
        stamp: &Entry,
    ) -> Result<(Status, bool), ServiceError> {
        let current = find_state(&self.db.read, tenant_id, contact_id, key).await?;
        let Some(current) = current else {
            return Err(ServiceError::new(ErrorCode::FailedPrecondition, "token: the link is no longer valid")
                .with_field("token"));
        };
        let status =
            Status::parse(&current.status).ok_or_else(|| ServiceError::internal("stored status is unknown"))?;
        if status == Status::Granted {
            let confirmed_from = record::Entity::find_by_id(current.record_id)
                .all(&self.db.read)
                .await
                .map_err(db_err)?
                .pop()
                .is_some_and(|r| r.source == ConsentSource::EmailOptin.as_str());
            if confirmed_from {
                return Ok((Status::Granted, true));
            }
        }
        if status != Status::Pending || current.record_id != record_id {
            return Err(ServiceError::new(ErrorCode::FailedPrecondition, "token: the link is no longer valid")
                .with_field("token"));
        }
        let input = RecordInput {
            contact_id,
            purpose: key.to_string(),
            action: Action::Grant,
            lawful_basis_opt: Some(LawfulBasis::Consent),
            source: ConsentSource::EmailOptin,
            form_id_opt: None,
            notice_version_opt: current.notice_version,
            at_opt: None,
            ip_opt,
            user_agent_opt,
            justification_opt: None,
            require_confirmation: false,
            expected_record_opt: Some(record_id),
        };
        let record = self.record(tenant_id, "subject:link", input, stamp).await?;
        Ok((record.status, false))
    }

    /// Stores a form; `fields` were checked against the field policy by the caller, the purposes
    /// are checked here.
    pub async fn create_form(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        name: &str,
        fields: Vec<String>,
        consents: Vec<String>,
    ) -> Result<FormDef, ServiceError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ServiceError::invalid_field("name", "must be 1 to 200 characters"));
        }
        if fields.is_empty() {
            return Err(ServiceError::invalid_field("fields", "must list at least one field"));
        }
        for (i, key) in consents.iter().enumerate() {
            if consents[..i].contains(key) {
                return Err(ServiceError::invalid_field(format!("consents[{i}]"), "is listed twice"));
            }
            if find_purpose(&self.db.read, tenant_id, key).await?.is_none() {
                return Err(unknown_purpose(&format!("consents[{i}]"), key));
            }
        }
        let row = form::Model {
            tenant_id,
            id: Uuid::now_v7(),
            name: name.to_string(),
            fields: serde_json::json!(fields),
            consents: serde_json::json!(consents),
            created_by: stamp.actor.clone(),
            created_at: carnet_kit::db::now(),
        };
        let txn = self.db.begin_write().await.map_err(db_err)?;
        form::Entity::insert(sea_orm::IntoActiveModel::into_active_model(row.clone()))
            .exec_without_returning(&txn)
            .await
            .map_err(db_err)?;
        audited(&txn, tenant_id, stamp, "create", "form", row.id, |e| e.fields(fields.iter().cloned())).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(FormDef { id: row.id, name: row.name, fields, consents, created_at: row.created_at })
    }

    /// Returns a form of the tenant.
    pub async fn form(&self, tenant_id: Uuid, id: Uuid) -> Result<FormDef, ServiceError> {
        let row = form::Entity::find()
            .filter(form::Column::TenantId.eq(tenant_id))
            .filter(form::Column::Id.eq(id))
            .all(&self.db.read)
            .await
            .map_err(db_err)?
            .pop()
            .ok_or_else(|| ServiceError::not_found("form", id).with_field("id"))?;
        let unreadable = |_| ServiceError::internal("stored form is unreadable");
        Ok(FormDef {
            id: row.id,
            name: row.name,
            fields: serde_json::from_value(row.fields).map_err(unreadable)?,
            consents: serde_json::from_value(row.consents).map_err(unreadable)?,
            created_at: row.created_at,
        })
    }

    /// Returns the current notice of a purpose.
    pub async fn current_notice(&self, tenant_id: Uuid, key: &str) -> Result<(Purpose, Notice), ServiceError> {
        let row = find_purpose(&self.db.read, tenant_id, key).await?.ok_or_else(|| unknown_purpose("purpose", key))?;
        let notice = load_notice(&self.db.read, tenant_id, key, row.current_version).await?;
        Ok((to_purpose(row, Vec::new())?, notice))
    }

    /// Returns the current states and the ledger of one contact, oldest first.
    pub async fn contact_consents(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
    ) -> Result<(Vec<State>, Vec<Record>), ServiceError> {
        let states = state::Entity::find()
            .filter(state::Column::TenantId.eq(tenant_id))
            .filter(state::Column::ContactId.eq(contact_id))
            .order_by_asc(state::Column::PurposeKey)
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        let records = record::Entity::find()
            .filter(record::Column::TenantId.eq(tenant_id))
            .filter(record::Column::ContactId.eq(contact_id))
            .order_by_asc(record::Column::Id)
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        Ok((
            states.into_iter().map(to_state).collect::<Result<_, _>>()?,
            records.into_iter().map(to_record).collect::<Result<_, _>>()?,
        ))
    }

    /// Decides many (contact, purpose) checks with one read of the tenant's purposes and one
    /// read of the states per 10,000 contacts. `flags` comes from the contacts service.
    pub async fn check_batch(
        &self,
        tenant_id: Uuid,
        pairs: &[(Uuid, String)],
        flags: &HashMap<Uuid, SubjectFlags>,
    ) -> Result<Vec<Decision>, ServiceError> {
        let purposes: HashMap<String, Purpose> = purpose::Entity::find()
            .filter(purpose::Column::TenantId.eq(tenant_id))
            .all(&self.db.read)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(|row| Ok((row.key.clone(), to_purpose(row, Vec::new())?)))
            .collect::<Result<_, ServiceError>>()?;
        let mut contacts: Vec<Uuid> = pairs.iter().map(|(c, _)| *c).collect();
        contacts.sort_unstable();
        contacts.dedup();
        // Per contact, its few states: looked up without building a key per pair.
        let mut states: HashMap<Uuid, Vec<State>> = HashMap::with_capacity(contacts.len());
        for chunk in contacts.chunks(STATE_CHUNK) {
            // Only the columns a decision needs.
            let rows: Vec<StateColumns> = state::Entity::find()
                .select_only()
                .columns([
                    state::Column::ContactId,
                    state::Column::PurposeKey,
                    state::Column::Status,
                    state::Column::LawfulBasis,
                    state::Column::NoticeVersion,
                    state::Column::Since,
                ])
                .filter(state::Column::TenantId.eq(tenant_id))
                .filter(state::Column::ContactId.is_in(chunk.iter().copied()))
                .into_tuple()
                .all(&self.db.read)
                .await
                .map_err(db_err)?;
            for (contact_id, purpose, status, basis, notice_version, since) in rows {
                let state = State {
                    purpose,
                    status: Status::parse(&status).ok_or_else(|| ServiceError::internal("stored status is unknown"))?,
                    lawful_basis: parse_basis(&basis)?,
                    notice_version,
                    since,
                };
                states.entry(contact_id).or_default().push(state);
            }
        }
        Ok(pairs
            .iter()
            .map(|(contact, key)| {
                let flags = flags.get(contact).copied().unwrap_or_default();
                let state = states.get(contact).and_then(|list| list.iter().find(|s| &s.purpose == key));
                decide(purposes.get(key), flags, state)
            })
            .collect())
    }

    /// Returns everything the service holds about one subject, and the number of records.
    pub async fn export_subject(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
    ) -> Result<(serde_json::Value, u64), ServiceError> {
        let (states, records) = self.contact_consents(tenant_id, contact_id).await?;
        let count = (states.len() + records.len()) as u64;
        let doc = serde_json::json!({
            "service": crate::SERVICE_NAME,
            "schema_version": crate::EXPORT_SCHEMA_VERSION,
            "exported_at": carnet_kit::db::now(),
            "contact_id": contact_id,
            "consents": states,
            "ledger": records,
        });
        Ok((doc, count))
    }

    /// Erases a subject's ledger rows and states: they are deleted, not pseudonymised (see
    /// docs/consent.md). Idempotent.
    pub async fn erase_subject(&self, tenant_id: Uuid, contact_id: Uuid) -> Result<(u64, u64), ServiceError> {
        self.erase(tenant_id, contact_id, None).await
    }

    /// Erases a subject for a DSAR request and writes `erasure.confirmed` in the same transaction.
    pub async fn erase_for_request(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        request_id: &str,
    ) -> Result<(u64, u64), ServiceError> {
        self.erase(tenant_id, contact_id, Some(request_id)).await
    }

    async fn erase(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        request_opt: Option<&str>,
    ) -> Result<(u64, u64), ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let records = record::Entity::delete_many()
            .filter(record::Column::TenantId.eq(tenant_id))
            .filter(record::Column::ContactId.eq(contact_id))
            .exec(&txn)
            .await
            .map_err(db_err)?
            .rows_affected;
        let states = state::Entity::delete_many()
            .filter(state::Column::TenantId.eq(tenant_id))
            .filter(state::Column::ContactId.eq(contact_id))
            .exec(&txn)
            .await
            .map_err(db_err)?
            .rows_affected;
        if let Some(request_id) = request_opt {
            let removed = [("consent_records", records), ("consent_states", states)];
            let event = carnet_kit::outbox::confirmation(crate::SERVICE_NAME, request_id, contact_id, &removed);
            carnet_kit::outbox::enqueue(&txn, tenant_id, event).await.map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)?;
        Ok((records, states))
    }
}

fn unknown_purpose(field: &str, key: &str) -> ServiceError {
    ServiceError::new(ErrorCode::NotFound, format!("{field}: purpose {key} not found")).with_field(field)
}

fn parse_basis(s: &str) -> Result<LawfulBasis, ServiceError> {
    LawfulBasis::parse(s).ok_or_else(|| ServiceError::internal("stored lawful basis is unknown"))
}

async fn find_purpose<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    key: &str,
) -> Result<Option<purpose::Model>, ServiceError> {
    // `all`, not `one`: `one` adds `LIMIT ?`, which makes SQLite re-prepare the statement.
    Ok(purpose::Entity::find()
        .filter(purpose::Column::TenantId.eq(tenant_id))
        .filter(purpose::Column::Key.eq(key))
        .all(conn)
        .await
        .map_err(db_err)?
        .pop())
}

async fn find_state<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    contact_id: Uuid,
    key: &str,
) -> Result<Option<state::Model>, ServiceError> {
    Ok(state::Entity::find()
        .filter(state::Column::TenantId.eq(tenant_id))
        .filter(state::Column::ContactId.eq(contact_id))
        .filter(state::Column::PurposeKey.eq(key))
        .all(conn)
        .await
        .map_err(db_err)?
        .pop())
}

async fn load_notice<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    key: &str,
    version: i32,
) -> Result<Notice, ServiceError> {
    notice_version::Entity::find()
        .filter(notice_version::Column::TenantId.eq(tenant_id))
        .filter(notice_version::Column::PurposeKey.eq(key))
        .filter(notice_version::Column::Version.eq(version))
        .all(conn)
        .await
        .map_err(db_err)?
        .pop()
        .map(to_notice)
        .ok_or_else(|| ServiceError::internal("notice version missing"))
}

async fn insert_notice<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    key: &str,
    version: i32,
    text: &str,
    actor: &str,
) -> Result<(), ServiceError> {
    notice_version::Entity::insert(notice_version::ActiveModel {
        tenant_id: Set(tenant_id),
        purpose_key: Set(key.to_string()),
        version: Set(version),
        text: Set(text.to_string()),
        sha256: Set(sha256_hex(text)),
        created_by: Set(actor.to_string()),
        created_at: Set(carnet_kit::db::now()),
    })
    .exec_without_returning(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

fn to_notice(row: notice_version::Model) -> Notice {
    Notice {
        version: row.version,
        text: row.text,
        sha256: row.sha256,
        created_by: row.created_by,
        created_at: row.created_at,
    }
}

fn to_purpose(row: purpose::Model, notices: Vec<Notice>) -> Result<Purpose, ServiceError> {
    Ok(Purpose {
        lawful_basis: parse_basis(&row.lawful_basis)?,
        key: row.key,
        description: row.description,
        current_version: row.current_version,
        created_at: row.created_at,
        notices,
    })
}

fn to_state(row: state::Model) -> Result<State, ServiceError> {
    Ok(State {
        purpose: row.purpose_key,
        status: Status::parse(&row.status).ok_or_else(|| ServiceError::internal("stored status is unknown"))?,
        lawful_basis: parse_basis(&row.lawful_basis)?,
        notice_version: row.notice_version,
        since: row.since,
    })
}

fn to_record(row: record::Model) -> Result<Record, ServiceError> {
    let unknown = || ServiceError::internal("stored consent record is unreadable");
    Ok(Record {
        id: row.id,
        contact_id: row.contact_id,
        action: Action::parse(&row.action).ok_or_else(unknown)?,
        status: Status::parse(&row.status).ok_or_else(unknown)?,
        lawful_basis: parse_basis(&row.lawful_basis)?,
        source: ConsentSource::parse(&row.source).ok_or_else(unknown)?,
        purpose: row.purpose_key,
        form_id: row.form_id,
        notice_version: row.notice_version,
        notice_sha256: row.notice_sha256,
        ip_hash: row.ip_hash,
        user_agent: row.user_agent,
        justification: row.justification,
        actor: row.actor,
        at: row.at,
    })
}
