//! The comms database: templates, campaigns, sequences and enrolments, the delivery queue, call
//! logs and the suppression list. Every query is scoped by tenant, except the dispatcher's
//! queue scans, which work across tenants and carry each row's tenant along.
//!
//! The delivery queue is the heart of exactly-once sending: one row per (origin, step, contact),
//! enforced by a unique index, moved `queued` → `sending` (claimed under a lease) → `sent` /
//! `skipped` / `failed`, each move its own committed transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use carnet_kit::ServiceError;
use carnet_kit::audit as audit_trail;
use carnet_kit::db::{Db, now};
use carnet_kit::keystore::{KeyStore, Opened, SubjectKey, is_encrypted, open_value, plain_value};

use crate::SERVICE_NAME;
use crate::audit::Audit;
use crate::entity::{call, campaign, delivery, enrollment, sequence, suppression, template};

/// Rows inserted per statement (SQLite allows 32,766 bound values; a delivery has 16 columns).
const INSERT_CHUNK: usize = 1_000;

pub(crate) fn db_err(err: DbErr) -> ServiceError {
    tracing::error!(error = %err, "comms database error");
    ServiceError::internal("database error")
}

/// Where a delivery comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Message,
    Campaign,
    Sequence,
    ConsentRequest,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Message => "message",
            Origin::Campaign => "campaign",
            Origin::Sequence => "sequence",
            Origin::ConsentRequest => "consent_request",
        }
    }

    pub fn parse(s: &str) -> Option<Origin> {
        [Origin::Message, Origin::Campaign, Origin::Sequence, Origin::ConsentRequest]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

pub const QUEUED: &str = "queued";
pub const SENDING: &str = "sending";
/// Recorded just before the relay gets the final `.`: after a crash it counts as sent.
pub const HANDED: &str = "handed";
pub const SENT: &str = "sent";
pub const SKIPPED: &str = "skipped";
pub const FAILED: &str = "failed";

/// A delivery to write: who, for what, from which origin and step, due when.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub origin: Origin,
    pub origin_id: Uuid,
    pub step: u32,
    pub contact_id: Uuid,
    pub purpose: String,
    pub template_id: Uuid,
    pub due_at: DateTime<Utc>,
    /// `None`: queued; `Some(reason)`: recorded as skipped at once.
    pub skip_reason_opt: Option<String>,
}

impl NewDelivery {
    fn row(self, tenant_id: Uuid, actor: &str, at: DateTime<Utc>) -> delivery::ActiveModel {
        let (status, reason) = match self.skip_reason_opt {
            None => (QUEUED, None),
            Some(reason) => (SKIPPED, Some(reason)),
        };
        delivery::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(tenant_id),
            origin: Set(self.origin.as_str().to_string()),
            origin_id: Set(self.origin_id),
            step: Set(self.step as i32),
            contact_id: Set(self.contact_id),
            purpose: Set(self.purpose),
            template_id: Set(self.template_id),
            status: Set(status.to_string()),
            reason: Set(reason),
            attempts: Set(0),
            due_at: Set(self.due_at),
            lease_until: Set(None),
            created_by: Set(actor.to_string()),
            created_at: Set(at),
            sent_at: Set(None),
        }
    }
}

/// A template to store.
#[derive(Clone, Debug)]
pub struct NewTemplate {
    pub name: String,
    pub purpose: String,
    pub subject: String,
    pub body: String,
    /// The one contact it is written for (a single message's inline content): sealed with
    /// their key.
    pub subject_id_opt: Option<Uuid>,
}

/// The sealed content of a template written for one contact.
#[derive(serde::Serialize, serde::Deserialize)]
struct SealedContent {
    subject: String,
    body: String,
}

/// The associated data of a template's sealed content.
pub fn template_aad(tenant_id: Uuid, id: Uuid) -> Vec<u8> {
    let mut aad = b"carnet.comms.template:".to_vec();
    aad.extend_from_slice(tenant_id.as_bytes());
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// The associated data of a call's sealed notes.
pub fn call_aad(tenant_id: Uuid, id: Uuid) -> Vec<u8> {
    let mut aad = b"carnet.comms.call:".to_vec();
    aad.extend_from_slice(tenant_id.as_bytes());
    aad.extend_from_slice(id.as_bytes());
    aad
}

fn seal_with(key_opt: Option<&SubjectKey>, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    match key_opt {
        Some(key) => key.seal(aad, plaintext),
        None => plain_value(plaintext),
    }
}

fn key_err(e: carnet_kit::keystore::KeyError) -> ServiceError {
    e.into()
}

/// The record type of a delivery of `origin` in the audit trail.
fn record_type(origin: &str) -> &'static str {
    match origin {
        "consent_request" => "consent_request",
        "campaign" => "campaign_message",
        "sequence" => "sequence_message",
        _ => "message",
    }
}

/// One step of a sequence as stored in its `steps` JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepDef {
    pub delay_seconds: u64,
    pub template_id: Uuid,
}

/// A campaign's audience as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AudienceDef {
    #[serde(default)]
    pub contact_ids: Vec<Uuid>,
    #[serde(default)]
    pub query: String,
}

/// Delivery counts of a campaign by status and reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub queued: u64,
    pub sending: u64,
    pub sent: u64,
    pub failed: u64,
    pub skipped: HashMap<String, u64>,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.queued + self.sending + self.sent + self.failed + self.skipped.values().sum::<u64>()
    }
}

#[derive(Debug, FromQueryResult)]
struct CountRow {
    status: String,
    reason: Option<String>,
    n: i64,
}

/// A call to log.
#[derive(Clone, Debug)]
pub struct NewCall {
    pub contact_id: Uuid,
    pub direction: String,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: u64,
    pub outcome: String,
    pub notes_opt: Option<String>,
    pub recording: bool,
    pub recording_consent_id_opt: Option<String>,
}

/// What a subject's erasure removed.
#[derive(Clone, Debug, Default)]
pub struct Erased {
    pub deliveries: u64,
    pub calls: u64,
    pub enrollments: u64,
    /// Inline contents of single messages written for the person.
    pub contents: u64,
}

#[derive(Clone, Debug)]
pub struct CommsStore {
    db: Db,
    keys: KeyStore,
}

impl CommsStore {
    /// A store on `db` sealing what it keeps about a person with their key from `keys`.
    pub fn new(db: Db, keys: KeyStore) -> Self {
        CommsStore { db, keys }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The key a person's values are sealed with on write (created on first use); none when
    /// encryption is off.
    async fn write_key(&self, tenant_id: Uuid, contact_id: Uuid) -> Result<Option<SubjectKey>, ServiceError> {
        if !self.keys.encrypts() {
            return Ok(None);
        }
        Ok(Some(self.keys.subject_key(tenant_id, contact_id).await.map_err(key_err)?))
    }

    // ----- templates -----

    async fn template_row(
        &self,
        tenant_id: Uuid,
        actor: &str,
        t: NewTemplate,
        at: DateTime<Utc>,
    ) -> Result<template::ActiveModel, ServiceError> {
        let id = Uuid::now_v7();
        let (subject, body, sealed) = match t.subject_id_opt {
            Some(contact_id) => {
                let key_opt = self.write_key(tenant_id, contact_id).await?;
                let json = serde_json::to_vec(&SealedContent { subject: t.subject, body: t.body })
                    .expect("template content serialises");
                (String::new(), String::new(), Some(seal_with(key_opt.as_ref(), &template_aad(tenant_id, id), &json)))
            }
            None => (t.subject, t.body, None),
        };
        Ok(template::ActiveModel {
            tenant_id: Set(tenant_id),
            id: Set(id),
            name: Set(t.name),
            purpose: Set(t.purpose),
            subject: Set(subject),
            body: Set(body),
            created_by: Set(actor.to_string()),
            created_at: Set(at),
            subject_id: Set(t.subject_id_opt),
            sealed: Set(sealed),
        })
    }

    /// Opens a template's sealed content; `None` when its contact's key is destroyed.
    async fn open_template(&self, mut t: template::Model) -> Result<Option<template::Model>, ServiceError> {
        let (Some(contact_id), Some(stored)) = (t.subject_id, t.sealed.take()) else { return Ok(Some(t)) };
        match self
            .keys
            .open(t.tenant_id, contact_id, &template_aad(t.tenant_id, t.id), &stored)
            .await
            .map_err(key_err)?
        {
            Opened::Value(json) => {
                let c: SealedContent = serde_json::from_slice(&json)
                    .map_err(|_| ServiceError::internal("a sealed template is unreadable"))?;
                t.subject = c.subject;
                t.body = c.body;
                Ok(Some(t))
            }
            Opened::Shredded => Ok(None),
        }
    }

    pub async fn create_template(
        &self,
        tenant_id: Uuid,
        actor: &str,
        t: NewTemplate,
    ) -> Result<template::Model, ServiceError> {
        let row = self.template_row(tenant_id, actor, t, now()).await?;
        let model = row.insert(&self.db.write).await.map_err(db_err)?;
        Ok(self.open_template(model).await?.expect("a template just written opens"))
    }

    /// A template, its content opened (`not_found` when it was written for an erased person).
    pub async fn template(&self, tenant_id: Uuid, id: Uuid) -> Result<template::Model, ServiceError> {
        let model = template::Entity::find_by_id((tenant_id, id))
            .one(&self.db.read)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("template", id))?;
        self.open_template(model).await?.ok_or_else(|| ServiceError::not_found("template", id))
    }

    /// Inserts `new` (an inline template) in `txn` and returns its id, or returns `existing`.
    async fn template_id<C: ConnectionTrait>(
        &self,
        conn: &C,
        tenant_id: Uuid,
        actor: &str,
        t: TemplateRef,
        at: DateTime<Utc>,
    ) -> Result<Uuid, ServiceError> {
        match t {
            TemplateRef::Existing(id) => Ok(id),
            TemplateRef::New(t) => {
                let row = self.template_row(tenant_id, actor, t, at).await?;
                let id = row.id.clone().unwrap();
                template::Entity::insert(row).exec_without_returning(conn).await.map_err(db_err)?;
                Ok(id)
            }
        }
    }

    // ----- single messages and consent requests -----

    /// Queues single deliveries (a message or consent requests), with the inline template when
    /// there is one, and a `send` audit entry per delivery, in one transaction.
    pub async fn queue(
        &self,
        tenant_id: Uuid,
        audit: &Audit,
        template_opt: Option<TemplateRef>,
        mut deliveries: Vec<NewDelivery>,
    ) -> Result<Vec<delivery::Model>, ServiceError> {
        let at = now();
        let actor = audit.actor();
        let template_row_opt = match template_opt {
            Some(TemplateRef::New(t)) => Some(self.template_row(tenant_id, actor, t, at).await?),
            Some(TemplateRef::Existing(id)) => {
                for d in &mut deliveries {
                    d.template_id = id;
                }
                None
            }
            None => None,
        };
        let txn = self.db.begin_write().await.map_err(db_err)?;
        if let Some(row) = template_row_opt {
            let id = row.id.clone().unwrap();
            template::Entity::insert(row).exec_without_returning(&txn).await.map_err(db_err)?;
            for d in &mut deliveries {
                d.template_id = id;
            }
        }
        let mut out = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let row = d.row(tenant_id, actor, at);
            let model = row.insert(&txn).await.map_err(db_err)?;
            let entry = audit.entry("send", record_type(&model.origin), model.id, Some(model.contact_id));
            audit_trail::record(&txn, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)?;
            out.push(model);
        }
        txn.commit().await.map_err(db_err)?;
        Ok(out)
    }

    pub async fn delivery(&self, tenant_id: Uuid, id: Uuid) -> Result<delivery::Model, ServiceError> {
        delivery::Entity::find_by_id(id)
            .filter(delivery::Column::TenantId.eq(tenant_id))
            .one(&self.db.read)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("message", id))
    }

    // ----- campaigns -----

    pub async fn create_campaign(
        &self,
        tenant_id: Uuid,
        actor: &str,
        name: String,
        purpose: String,
        template: TemplateRef,
        audience: AudienceDef,
    ) -> Result<campaign::Model, ServiceError> {
        let at = now();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let template_id = self.template_id(&txn, tenant_id, actor, template, at).await?;
        let row = campaign::ActiveModel {
            tenant_id: Set(tenant_id),
            id: Set(Uuid::now_v7()),
            name: Set(name),
            purpose: Set(purpose),
            template_id: Set(template_id),
            audience: Set(serde_json::to_value(&audience).expect("audience serialises")),
            status: Set("draft".into()),
            created_by: Set(actor.to_string()),
            created_at: Set(at),
            started_at: Set(None),
            completed_at: Set(None),
        };
        let model = row.insert(&txn).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(model)
    }

    pub async fn campaign(&self, tenant_id: Uuid, id: Uuid) -> Result<campaign::Model, ServiceError> {
        campaign::Entity::find_by_id((tenant_id, id))
            .one(&self.db.read)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("campaign", id))
    }

    pub async fn campaigns(&self, tenant_id: Uuid) -> Result<Vec<campaign::Model>, ServiceError> {
        campaign::Entity::find()
            .filter(campaign::Column::TenantId.eq(tenant_id))
            .order_by_desc(campaign::Column::CreatedAt)
            .limit(500)
            .all(&self.db.read)
            .await
            .map_err(db_err)
    }

    /// Moves a draft campaign to `queuing`, with one `send` audit entry for all its recipients;
    /// returns false when it had already started.
    pub async fn start_campaign(&self, tenant_id: Uuid, id: Uuid, audit: &Audit) -> Result<bool, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let res = campaign::Entity::update_many()
            .col_expr(campaign::Column::Status, Expr::value("queuing"))
            .col_expr(campaign::Column::StartedAt, Expr::value(now()))
            .filter(campaign::Column::TenantId.eq(tenant_id))
            .filter(campaign::Column::Id.eq(id))
            .filter(campaign::Column::Status.eq("draft"))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        if res.rows_affected != 1 {
            return Ok(false);
        }
        audit_trail::record(&txn, tenant_id, SERVICE_NAME, audit.entry("send", "campaign", id, None))
            .await
            .map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(true)
    }

    /// Campaigns whose audience is still being queued (after a restart too).
    pub async fn campaigns_queuing(&self) -> Result<Vec<campaign::Model>, ServiceError> {
        campaign::Entity::find().filter(campaign::Column::Status.eq("queuing")).all(&self.db.read).await.map_err(db_err)
    }

    pub async fn set_campaign_status(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        from: &str,
        to: &str,
    ) -> Result<bool, ServiceError> {
        let mut update = campaign::Entity::update_many().col_expr(campaign::Column::Status, Expr::value(to));
        if to == "completed" {
            update = update.col_expr(campaign::Column::CompletedAt, Expr::value(now()));
        }
        let res = update
            .filter(campaign::Column::TenantId.eq(tenant_id))
            .filter(campaign::Column::Id.eq(id))
            .filter(campaign::Column::Status.eq(from))
            .exec(&self.db.write)
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected == 1)
    }

    /// Writes deliveries, ignoring those that exist already (same origin, step and contact): a
    /// resumed queuing never mails anyone twice. Returns how many were new.
    pub async fn insert_deliveries(
        &self,
        tenant_id: Uuid,
        actor: &str,
        deliveries: Vec<NewDelivery>,
    ) -> Result<u64, ServiceError> {
        let at = now();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let inserted = Self::insert_deliveries_in(&txn, tenant_id, actor, deliveries, at).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(inserted)
    }

    async fn insert_deliveries_in<C: ConnectionTrait>(
        conn: &C,
        tenant_id: Uuid,
        actor: &str,
        deliveries: Vec<NewDelivery>,
        at: DateTime<Utc>,
    ) -> Result<u64, ServiceError> {
        let mut inserted = 0;
        let mut rows = deliveries.into_iter().map(|d| d.row(tenant_id, actor, at)).peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(INSERT_CHUNK).collect();
            let res = delivery::Entity::insert_many(chunk)
                .on_conflict(
                    OnConflict::columns([
                        delivery::Column::TenantId,
                        delivery::Column::OriginId,
                        delivery::Column::Step,
                        delivery::Column::ContactId,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_without_returning(conn)
                .await;
            match res {
                Ok(n) => inserted += n,
                Err(DbErr::RecordNotInserted) => {}
                Err(e) => return Err(db_err(e)),
            }
        }
        Ok(inserted)
    }

    /// Delivery counts of one origin (a campaign or a sequence) by status and reason.
    pub async fn counts(&self, tenant_id: Uuid, origin_id: Uuid) -> Result<Counts, ServiceError> {
        let rows = delivery::Entity::find()
            .select_only()
            .column(delivery::Column::Status)
            .column(delivery::Column::Reason)
            .column_as(delivery::Column::Id.count(), "n")
            .filter(delivery::Column::TenantId.eq(tenant_id))
            .filter(delivery::Column::OriginId.eq(origin_id))
            .group_by(delivery::Column::Status)
            .group_by(delivery::Column::Reason)
            .into_model::<CountRow>()
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        let mut counts = Counts::default();
        for row in rows {
            let n = row.n as u64;
            match row.status.as_str() {
                QUEUED => counts.queued += n,
                SENDING | HANDED => counts.sending += n,
                SENT => counts.sent += n,
                FAILED => counts.failed += n,
                _ => *counts.skipped.entry(row.reason.unwrap_or_default()).or_default() += n,
            }
        }
        Ok(counts)
    }

    // ----- sequences -----

    pub async fn create_sequence(
        &self,
        tenant_id: Uuid,
        actor: &str,
        name: String,
        purpose: String,
        steps: Vec<(u64, TemplateRef)>,
    ) -> Result<sequence::Model, ServiceError> {
        let at = now();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let mut defs = Vec::with_capacity(steps.len());
        for (delay_seconds, t) in steps {
            defs.push(StepDef { delay_seconds, template_id: self.template_id(&txn, tenant_id, actor, t, at).await? });
        }
        let row = sequence::ActiveModel {
            tenant_id: Set(tenant_id),
            id: Set(Uuid::now_v7()),
            name: Set(name),
            purpose: Set(purpose),
            steps: Set(serde_json::to_value(&defs).expect("steps serialise")),
            created_by: Set(actor.to_string()),
            created_at: Set(at),
        };
        let model = row.insert(&txn).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(model)
    }

    pub async fn sequence(&self, tenant_id: Uuid, id: Uuid) -> Result<sequence::Model, ServiceError> {
        sequence::Entity::find_by_id((tenant_id, id))
            .one(&self.db.read)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("sequence", id))
    }

    pub async fn enrollments(
        &self,
        tenant_id: Uuid,
        sequence_id: Uuid,
    ) -> Result<Vec<enrollment::Model>, ServiceError> {
        enrollment::Entity::find()
            .filter(enrollment::Column::TenantId.eq(tenant_id))
            .filter(enrollment::Column::SequenceId.eq(sequence_id))
            .order_by_asc(enrollment::Column::ContactId)
            .all(&self.db.read)
            .await
            .map_err(db_err)
    }

    /// Enrols contacts (those already enrolled are left as they are) and queues their first step,
    /// with one `enroll` audit entry for all of them.
    pub async fn enroll(
        &self,
        tenant_id: Uuid,
        audit: &Audit,
        seq: &sequence::Model,
        contact_ids: &[Uuid],
    ) -> Result<u64, ServiceError> {
        let actor = audit.actor();
        let steps: Vec<StepDef> =
            serde_json::from_value(seq.steps.clone()).map_err(|_| ServiceError::internal("bad steps"))?;
        let first = steps.first().ok_or_else(|| ServiceError::internal("sequence without steps"))?;
        let at = now();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let mut enrolled = 0;
        for chunk in contact_ids.chunks(INSERT_CHUNK) {
            let rows = chunk.iter().map(|c| enrollment::ActiveModel {
                tenant_id: Set(tenant_id),
                sequence_id: Set(seq.id),
                contact_id: Set(*c),
                status: Set("active".into()),
                step: Set(0),
                reason: Set(None),
                updated_at: Set(at),
            });
            let existing: HashSet<Uuid> = enrollment::Entity::find()
                .select_only()
                .column(enrollment::Column::ContactId)
                .filter(enrollment::Column::TenantId.eq(tenant_id))
                .filter(enrollment::Column::SequenceId.eq(seq.id))
                .filter(enrollment::Column::ContactId.is_in(chunk.iter().copied()))
                .into_tuple::<Uuid>()
                .all(&txn)
                .await
                .map_err(db_err)?
                .into_iter()
                .collect();
            let rows: Vec<_> = rows.filter(|r| !existing.contains(r.contact_id.as_ref())).collect();
            if rows.is_empty() {
                continue;
            }
            let fresh: Vec<Uuid> = rows.iter().map(|r| *r.contact_id.as_ref()).collect();
            enrolled += fresh.len() as u64;
            enrollment::Entity::insert_many(rows).exec_without_returning(&txn).await.map_err(db_err)?;
            let due_at = at + chrono::Duration::seconds(first.delay_seconds as i64);
            let deliveries = fresh
                .into_iter()
                .map(|contact_id| NewDelivery {
                    origin: Origin::Sequence,
                    origin_id: seq.id,
                    step: 0,
                    contact_id,
                    purpose: seq.purpose.clone(),
                    template_id: first.template_id,
                    due_at,
                    skip_reason_opt: None,
                })
                .collect();
            Self::insert_deliveries_in(&txn, tenant_id, actor, deliveries, at).await?;
        }
        if enrolled > 0 {
            audit_trail::record(&txn, tenant_id, SERVICE_NAME, audit.entry("enroll", "sequence", seq.id, None))
                .await
                .map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)?;
        Ok(enrolled)
    }

    // ----- the dispatcher's queue -----

    /// Returns to the queue the deliveries whose claim expired (their sender died mid-send).
    pub async fn release_expired(&self) -> Result<u64, ServiceError> {
        let res = delivery::Entity::update_many()
            .col_expr(delivery::Column::Status, Expr::value(QUEUED))
            .col_expr(delivery::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .filter(delivery::Column::Status.eq(SENDING))
            .filter(delivery::Column::LeaseUntil.lt(now()))
            .exec(&self.db.write)
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected)
    }

    /// Claims up to `limit` due deliveries for `lease`: each is moved to `sending` only if it is
    /// still queued, so two dispatchers never claim the same row.
    pub async fn claim_due(&self, limit: u64, lease: chrono::Duration) -> Result<Vec<delivery::Model>, ServiceError> {
        let at = now();
        let candidates = delivery::Entity::find()
            .filter(delivery::Column::Status.eq(QUEUED))
            .filter(delivery::Column::DueAt.lte(at))
            .order_by_asc(delivery::Column::DueAt)
            .order_by_asc(delivery::Column::Id)
            .limit(limit)
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let lease_until = at + lease;
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let mut claimed = Vec::with_capacity(candidates.len());
        for mut d in candidates {
            let res = delivery::Entity::update_many()
                .col_expr(delivery::Column::Status, Expr::value(SENDING))
                .col_expr(delivery::Column::LeaseUntil, Expr::value(lease_until))
                .col_expr(delivery::Column::Attempts, Expr::col(delivery::Column::Attempts).add(1))
                .filter(delivery::Column::Id.eq(d.id))
                .filter(delivery::Column::Status.eq(QUEUED))
                .exec(&txn)
                .await
                .map_err(db_err)?;
            if res.rows_affected == 1 {
                d.status = SENDING.into();
                d.lease_until = Some(lease_until);
                d.attempts += 1;
                claimed.push(d);
            }
        }
        txn.commit().await.map_err(db_err)?;
        Ok(claimed)
    }

    /// Records that a claimed delivery is being handed to the relay (see [`HANDED`]).
    pub async fn mark_handed(&self, d: &delivery::Model, lease: chrono::Duration) -> Result<(), ServiceError> {
        let res = delivery::Entity::update_many()
            .col_expr(delivery::Column::Status, Expr::value(HANDED))
            .col_expr(delivery::Column::LeaseUntil, Expr::value(now() + lease))
            .filter(delivery::Column::Id.eq(d.id))
            .filter(delivery::Column::Status.eq(SENDING))
            .exec(&self.db.write)
            .await
            .map_err(db_err)?;
        if res.rows_affected != 1 {
            return Err(ServiceError::internal("the delivery's claim was lost"));
        }
        Ok(())
    }

    /// Deliveries handed to the relay by a sender that stopped before recording the outcome:
    /// the relay has them, so they are finished as sent, never sent again.
    pub async fn expired_handed(&self) -> Result<Vec<delivery::Model>, ServiceError> {
        delivery::Entity::find()
            .filter(delivery::Column::Status.eq(HANDED))
            .filter(delivery::Column::LeaseUntil.lt(now()))
            .limit(1_000)
            .all(&self.db.read)
            .await
            .map_err(db_err)
    }

    /// When the next queued delivery is due, if any.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, ServiceError> {
        let row = delivery::Entity::find()
            .select_only()
            .column(delivery::Column::DueAt)
            .filter(delivery::Column::Status.eq(QUEUED))
            .order_by_asc(delivery::Column::DueAt)
            .limit(1)
            .into_tuple::<DateTime<Utc>>()
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        Ok(row.into_iter().next())
    }

    /// Records claimed deliveries as skipped; a sequence enrolment stops with the reason.
    pub async fn mark_skipped(&self, skipped: &[(delivery::Model, String)]) -> Result<(), ServiceError> {
        if skipped.is_empty() {
            return Ok(());
        }
        let at = now();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        for (d, reason) in skipped {
            Self::finish(&txn, d, SKIPPED, Some(reason), None).await?;
            if d.origin == Origin::Sequence.as_str() {
                Self::set_enrollment(&txn, d, "stopped", d.step, Some(reason), at).await?;
            }
        }
        txn.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// Records one delivery as sent and, for a sequence, queues the next step (or completes the
    /// enrolment) in the same transaction.
    pub async fn mark_sent(&self, d: &delivery::Model, next_opt: Option<NewDelivery>) -> Result<(), ServiceError> {
        let at = now();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        Self::finish(&txn, d, SENT, None, Some(at)).await?;
        if d.origin == Origin::Sequence.as_str() {
            match next_opt {
                Some(next) => {
                    let step = next.step as i32;
                    Self::insert_deliveries_in(&txn, d.tenant_id, &d.created_by, vec![next], at).await?;
                    Self::set_enrollment(&txn, d, "active", step, None, at).await?;
                }
                None => Self::set_enrollment(&txn, d, "completed", d.step, None, at).await?,
            }
        }
        txn.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// Records one delivery as failed for good; a sequence enrolment stops.
    pub async fn mark_failed(&self, d: &delivery::Model, reason: &str) -> Result<(), ServiceError> {
        let at = now();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let reason = reason.to_string();
        Self::finish(&txn, d, FAILED, Some(&reason), None).await?;
        if d.origin == Origin::Sequence.as_str() {
            Self::set_enrollment(&txn, d, "stopped", d.step, Some(&reason), at).await?;
        }
        txn.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// Gives a claim back for a later round, unless the mail was already handed to the relay.
    pub async fn release_claim(&self, d: &delivery::Model, due_at: DateTime<Utc>) -> Result<(), ServiceError> {
        delivery::Entity::update_many()
            .col_expr(delivery::Column::Status, Expr::value(QUEUED))
            .col_expr(delivery::Column::DueAt, Expr::value(due_at))
            .col_expr(delivery::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .filter(delivery::Column::Id.eq(d.id))
            .filter(delivery::Column::Status.eq(SENDING))
            .exec(&self.db.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Puts a claimed delivery back in the queue for a later attempt (the relay refused it
    /// for now, also after the hand-over).
    pub async fn retry_later(&self, d: &delivery::Model, due_at: DateTime<Utc>) -> Result<(), ServiceError> {
        delivery::Entity::update_many()
            .col_expr(delivery::Column::Status, Expr::value(QUEUED))
            .col_expr(delivery::Column::DueAt, Expr::value(due_at))
            .col_expr(delivery::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .filter(delivery::Column::Id.eq(d.id))
            .filter(delivery::Column::Status.is_in([SENDING, HANDED]))
            .exec(&self.db.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn finish<C: ConnectionTrait>(
        conn: &C,
        d: &delivery::Model,
        status: &str,
        reason_opt: Option<&String>,
        sent_at_opt: Option<DateTime<Utc>>,
    ) -> Result<(), ServiceError> {
        let reason_opt = reason_opt.cloned().or(if status == FAILED { Some("delivery_failed".into()) } else { None });
        delivery::Entity::update_many()
            .col_expr(delivery::Column::Status, Expr::value(status))
            .col_expr(delivery::Column::Reason, Expr::value(reason_opt))
            .col_expr(delivery::Column::SentAt, Expr::value(sent_at_opt))
            .col_expr(delivery::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .filter(delivery::Column::Id.eq(d.id))
            .exec(conn)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn set_enrollment<C: ConnectionTrait>(
        conn: &C,
        d: &delivery::Model,
        status: &str,
        step: i32,
        reason_opt: Option<&String>,
        at: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        enrollment::Entity::update_many()
            .col_expr(enrollment::Column::Status, Expr::value(status))
            .col_expr(enrollment::Column::Step, Expr::value(step))
            .col_expr(enrollment::Column::Reason, Expr::value(reason_opt.cloned()))
            .col_expr(enrollment::Column::UpdatedAt, Expr::value(at))
            .filter(enrollment::Column::TenantId.eq(d.tenant_id))
            .filter(enrollment::Column::SequenceId.eq(d.origin_id))
            .filter(enrollment::Column::ContactId.eq(d.contact_id))
            .exec(conn)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Templates by id, their contents opened (those written for an erased person are left out).
    pub async fn templates(&self, tenant_id: Uuid, ids: &[Uuid]) -> Result<Vec<template::Model>, ServiceError> {
        let rows = template::Entity::find()
            .filter(template::Column::TenantId.eq(tenant_id))
            .filter(template::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.extend(self.open_template(row).await?);
        }
        Ok(out)
    }

    // ----- suppression list -----

    /// Adds `hash` for `purpose` on a person's request or an operator's (`suppress` in the audit
    /// trail, about `subject_opt`); returns true when it was already there.
    pub async fn suppress_audited(
        &self,
        tenant_id: Uuid,
        hash: &str,
        purpose: &str,
        reason: &str,
        audit: &Audit,
        subject_opt: Option<Uuid>,
    ) -> Result<bool, ServiceError> {
        let already = self.suppress(tenant_id, hash, purpose, reason).await?;
        if !already {
            // The record is the keyed hash (never the address); its first 16 digits name it.
            let record_id: String = hash.chars().take(16).collect();
            let entry = audit.entry("suppress", "suppression", record_id, subject_opt).fields([purpose]);
            audit_trail::record(&self.db.write, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)?;
        }
        Ok(already)
    }

    /// Adds `hash` for `purpose` (`*`: every purpose); returns true when it was already there.
    pub async fn suppress(
        &self,
        tenant_id: Uuid,
        hash: &str,
        purpose: &str,
        reason: &str,
    ) -> Result<bool, ServiceError> {
        let row = suppression::ActiveModel {
            tenant_id: Set(tenant_id),
            hash: Set(hash.to_string()),
            purpose: Set(purpose.to_string()),
            reason: Set(reason.to_string()),
            created_at: Set(now()),
        };
        let res = suppression::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([
                    suppression::Column::TenantId,
                    suppression::Column::Hash,
                    suppression::Column::Purpose,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&self.db.write)
            .await;
        match res {
            Ok(n) => Ok(n == 0),
            Err(DbErr::RecordNotInserted) => Ok(true),
            Err(e) => Err(db_err(e)),
        }
    }

    /// The suppressions of `hashes` that apply to `purpose`: hash → (when, reason).
    pub async fn suppressed(
        &self,
        tenant_id: Uuid,
        hashes: &[String],
        purpose: &str,
    ) -> Result<HashMap<String, (DateTime<Utc>, String)>, ServiceError> {
        let mut out = HashMap::new();
        for chunk in hashes.chunks(INSERT_CHUNK) {
            let rows = suppression::Entity::find()
                .filter(suppression::Column::TenantId.eq(tenant_id))
                .filter(suppression::Column::Hash.is_in(chunk.iter().cloned()))
                .filter(suppression::Column::Purpose.is_in([purpose.to_string(), "*".to_string()]))
                .all(&self.db.read)
                .await
                .map_err(db_err)?;
            for r in rows {
                let newer = out.get(&r.hash).is_none_or(|(at, _): &(DateTime<Utc>, String)| *at < r.created_at);
                if newer {
                    out.insert(r.hash, (r.created_at, r.reason));
                }
            }
        }
        Ok(out)
    }

    /// Lifts the purpose-scoped suppression of `hash` (the person gave consent again after it).
    pub async fn lift(&self, tenant_id: Uuid, hash: &str, purpose: &str) -> Result<(), ServiceError> {
        suppression::Entity::delete_many()
            .filter(suppression::Column::TenantId.eq(tenant_id))
            .filter(suppression::Column::Hash.eq(hash))
            .filter(suppression::Column::Purpose.eq(purpose))
            .exec(&self.db.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // ----- calls -----

    /// Logs a call, its notes sealed with the contact's key, with its `call` audit entry.
    pub async fn log_call(&self, tenant_id: Uuid, audit: &Audit, c: NewCall) -> Result<call::Model, ServiceError> {
        let at = now();
        let id = Uuid::now_v7();
        let sealed_notes = match &c.notes_opt {
            Some(notes) => {
                let key_opt = self.write_key(tenant_id, c.contact_id).await?;
                Some(seal_with(key_opt.as_ref(), &call_aad(tenant_id, id), notes.as_bytes()))
            }
            None => None,
        };
        let mut fields = vec!["direction", "started_at", "duration_seconds", "outcome"];
        if c.notes_opt.is_some() {
            fields.push("notes");
        }
        if c.recording {
            fields.push("recording");
        }
        let row = call::ActiveModel {
            tenant_id: Set(tenant_id),
            id: Set(id),
            contact_id: Set(c.contact_id),
            direction: Set(c.direction),
            started_at: Set(c.started_at),
            duration_seconds: Set(c.duration_seconds as i64),
            outcome: Set(c.outcome),
            sealed_notes: Set(sealed_notes),
            recording: Set(c.recording),
            recording_consent_id: Set(c.recording_consent_id_opt),
            created_by: Set(audit.actor().to_string()),
            created_at: Set(at),
            updated_at: Set(at),
        };
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let model = row.insert(&txn).await.map_err(db_err)?;
        let entry = audit.entry("call", "call", id, Some(model.contact_id)).fields(fields);
        audit_trail::record(&txn, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)?;
        // A call is a sign of a relationship: the contact's last activity moves (retention).
        let activity = carnet_proto::events::v1::ContactActivity {
            contact_id: model.contact_id.to_string(),
            kind: "call".to_string(),
        };
        let event = carnet_proto::events::v1::event::Payload::ContactActivity(activity);
        carnet_kit::outbox::enqueue(&txn, tenant_id, event).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(model)
    }

    pub async fn call(&self, tenant_id: Uuid, id: Uuid) -> Result<call::Model, ServiceError> {
        call::Entity::find_by_id((tenant_id, id))
            .one(&self.db.read)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("call", id))
    }

    /// A call's notes, opened with `key_opt` (the contact's key); none when it is destroyed.
    pub fn open_notes(&self, key_opt: Option<&SubjectKey>, c: &call::Model) -> Result<Option<String>, ServiceError> {
        let Some(stored) = &c.sealed_notes else { return Ok(None) };
        match open_value(key_opt, &call_aad(c.tenant_id, c.id), stored).map_err(key_err)? {
            Opened::Value(text) => {
                String::from_utf8(text).map(Some).map_err(|_| ServiceError::internal("sealed notes are unreadable"))
            }
            Opened::Shredded => Ok(None),
        }
    }

    /// A call's notes (none when there are none, or the contact's key is destroyed).
    pub async fn notes(&self, c: &call::Model) -> Result<Option<String>, ServiceError> {
        let key_opt = match &c.sealed_notes {
            Some(stored) if is_encrypted(stored) => {
                self.keys.find_subject_key(c.tenant_id, c.contact_id).await.map_err(key_err)?
            }
            _ => None,
        };
        self.open_notes(key_opt.as_ref(), c)
    }

    /// Saves a call's outcome and recording state, and its notes when `notes_opt` says (`Some(None)`
    /// clears them), with an `update` audit entry naming `changed`.
    pub async fn update_call(
        &self,
        model: call::Model,
        notes_opt: Option<Option<String>>,
        audit: &Audit,
        changed: Vec<&'static str>,
    ) -> Result<call::Model, ServiceError> {
        let mut row: call::ActiveModel = model.clone().into();
        row.recording = Set(model.recording);
        row.recording_consent_id = Set(model.recording_consent_id);
        row.outcome = Set(model.outcome);
        if let Some(notes) = notes_opt {
            let sealed = match notes {
                Some(text) => {
                    let key_opt = self.write_key(model.tenant_id, model.contact_id).await?;
                    Some(seal_with(key_opt.as_ref(), &call_aad(model.tenant_id, model.id), text.as_bytes()))
                }
                None => None,
            };
            row.sealed_notes = Set(sealed);
        }
        row.updated_at = Set(now());
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let updated = row.update(&txn).await.map_err(db_err)?;
        let entry = audit.entry("update", "call", model.id, Some(model.contact_id)).fields(changed);
        audit_trail::record(&txn, model.tenant_id, SERVICE_NAME, entry).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(updated)
    }

    /// Records a read of a contact's records by a person (`view` of `record_type`).
    pub async fn record_view(
        &self,
        tenant_id: Uuid,
        audit: &Audit,
        action: &'static str,
        record_type: &'static str,
        contact_id: Uuid,
    ) -> Result<(), ServiceError> {
        let entry = audit.entry(action, record_type, contact_id, Some(contact_id));
        audit_trail::record(&self.db.write, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)
    }

    // ----- one subject -----

    pub async fn subject_deliveries(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        limit_opt: Option<u64>,
    ) -> Result<Vec<delivery::Model>, ServiceError> {
        let mut q = delivery::Entity::find()
            .filter(delivery::Column::TenantId.eq(tenant_id))
            .filter(delivery::Column::ContactId.eq(contact_id))
            .order_by_desc(delivery::Column::CreatedAt);
        if let Some(limit) = limit_opt {
            q = q.limit(limit);
        }
        q.all(&self.db.read).await.map_err(db_err)
    }

    pub async fn subject_calls(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        limit_opt: Option<u64>,
    ) -> Result<Vec<call::Model>, ServiceError> {
        let mut q = call::Entity::find()
            .filter(call::Column::TenantId.eq(tenant_id))
            .filter(call::Column::ContactId.eq(contact_id))
            .order_by_desc(call::Column::StartedAt);
        if let Some(limit) = limit_opt {
            q = q.limit(limit);
        }
        q.all(&self.db.read).await.map_err(db_err)
    }

    pub async fn subject_enrollments(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
    ) -> Result<Vec<enrollment::Model>, ServiceError> {
        enrollment::Entity::find()
            .filter(enrollment::Column::TenantId.eq(tenant_id))
            .filter(enrollment::Column::ContactId.eq(contact_id))
            .all(&self.db.read)
            .await
            .map_err(db_err)
    }

    /// Removes everything comms holds about one contact, and destroys the contact's key, in one
    /// transaction.
    pub async fn erase_subject(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        audit: &Audit,
    ) -> Result<Erased, ServiceError> {
        self.erase(tenant_id, contact_id, None, audit).await
    }

    /// The same for a DSAR request, with `erasure.confirmed` written in the same transaction.
    pub async fn erase_for_request(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        request_id: &str,
    ) -> Result<Erased, ServiceError> {
        self.erase(tenant_id, contact_id, Some(request_id), &Audit::bus(tenant_id, request_id)).await
    }

    async fn erase(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        request_opt: Option<&str>,
        audit: &Audit,
    ) -> Result<Erased, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let deliveries = delivery::Entity::delete_many()
            .filter(delivery::Column::TenantId.eq(tenant_id))
            .filter(delivery::Column::ContactId.eq(contact_id))
            .exec(&txn)
            .await
            .map_err(db_err)?
            .rows_affected;
        let calls = call::Entity::delete_many()
            .filter(call::Column::TenantId.eq(tenant_id))
            .filter(call::Column::ContactId.eq(contact_id))
            .exec(&txn)
            .await
            .map_err(db_err)?
            .rows_affected;
        let enrollments = enrollment::Entity::delete_many()
            .filter(enrollment::Column::TenantId.eq(tenant_id))
            .filter(enrollment::Column::ContactId.eq(contact_id))
            .exec(&txn)
            .await
            .map_err(db_err)?
            .rows_affected;
        let contents = template::Entity::delete_many()
            .filter(template::Column::TenantId.eq(tenant_id))
            .filter(template::Column::SubjectId.eq(contact_id))
            .exec(&txn)
            .await
            .map_err(db_err)?
            .rows_affected;
        if let Some(request_id) = request_opt {
            let removed = [
                ("messages", deliveries),
                ("calls", calls),
                ("sequence_enrollments", enrollments),
                ("message_contents", contents),
            ];
            let event = carnet_kit::outbox::confirmation(crate::SERVICE_NAME, request_id, contact_id, &removed);
            carnet_kit::outbox::enqueue(&txn, tenant_id, event).await.map_err(db_err)?;
        }
        let entry = audit.entry("erase", "contact", contact_id, Some(contact_id));
        audit_trail::record(&txn, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)?;
        // The key goes before the commit: a confirmed erasure always left no key (idempotent:
        // contacts destroys the same one). A failure here rolls the erasure back for a retry.
        self.keys.destroy(tenant_id, contact_id).await.map_err(key_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(Erased { deliveries, calls, enrollments, contents })
    }

    /// How many deliveries are queued or being sent (for progress and tests).
    pub async fn pending(&self) -> Result<u64, ServiceError> {
        delivery::Entity::find()
            .filter(delivery::Column::Status.is_in([QUEUED, SENDING, HANDED]))
            .count(&self.db.read)
            .await
            .map_err(db_err)
    }
}

/// A stored template, or one to store with the record that uses it.
#[derive(Clone, Debug)]
pub enum TemplateRef {
    Existing(Uuid),
    New(NewTemplate),
}
