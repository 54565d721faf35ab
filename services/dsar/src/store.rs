//! The DSAR database: requests and their per-service tasks, legal holds, encrypted exports and
//! the erasure ledger. Every query is scoped by tenant, except the re-publisher's scan of due
//! tasks, which carries each row's tenant along. Each change writes its audit entry
//! (`audit.recorded`) to the outbox in its own transaction, like every other service; the
//! consumer then chains it (see `audit_store`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use carnet_kit::audit::{self, Entry};
use carnet_kit::db::{Db, now};
use carnet_kit::{ErrorCode, ServiceError};
use carnet_proto::events::v1::{ErasureRequested, event::Payload};

use crate::entity::{export, hold, ledger, request, task};

pub(crate) fn db_err(err: DbErr) -> ServiceError {
    tracing::error!(error = %err, "dsar database error");
    ServiceError::internal("database error")
}

pub const RECEIVED: &str = "received";
pub const IN_PROGRESS: &str = "in_progress";
pub const COMPLETED: &str = "completed";
pub const REJECTED: &str = "rejected";
pub const PENDING: &str = "pending";
pub const CONFIRMED: &str = "confirmed";

/// A participant's confirmation, newly recorded.
#[derive(Clone, Copy, Debug)]
pub struct Confirmed {
    /// Every participant has now confirmed.
    pub completed: bool,
    /// From the request's receipt to this confirmation.
    pub lag: chrono::Duration,
}

/// A request to write.
pub struct NewRequest {
    pub kind: String,
    pub subject_id: Uuid,
    pub verification: String,
    pub details: serde_json::Value,
    pub recipients: Vec<String>,
    /// Services that must confirm (erasure) or answer (access).
    pub participants: Vec<String>,
    /// Erasure: the ledger pseudonym of the subject.
    pub pseudonym_opt: Option<String>,
    /// Set for requests finished at once (rectification, restriction, objection).
    pub completed: bool,
    /// Rectification: the keys of the fields changed (never the values), for the audit trail.
    pub changed_fields: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct DsarStore {
    db: Db,
    /// Audit appends of this process go one at a time: they all extend the same chains, so
    /// concurrent ones would only lose the race for the next seq and retry. Replicas still race
    /// each other (and retry, see `append_audit`).
    pub(crate) append_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// One calendar month after `at` (Art. 12(3)), clamped to the month's last day.
pub fn add_months(at: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    at.checked_add_months(chrono::Months::new(months)).unwrap_or(at)
}

/// Who acts when the DSAR service acts on its own: on an event (`bus`) or in its background
/// engine (`background`).
pub fn service_stamp(api: &str) -> Entry {
    Entry { actor: "service:dsar".into(), api: api.to_string(), ..Entry::default() }
}

async fn record<C: ConnectionTrait>(conn: &C, tenant_id: Uuid, entry: Entry) -> Result<(), ServiceError> {
    audit::record(conn, tenant_id, crate::SERVICE_NAME, entry).await.map_err(db_err)
}

fn erasure_event(request_id: Uuid, subject_id: Uuid, participants: Vec<String>) -> Payload {
    Payload::ErasureRequested(ErasureRequested {
        request_id: request_id.to_string(),
        subject_id: subject_id.to_string(),
        participants,
    })
}

impl DsarStore {
    pub fn new(db: Db) -> Self {
        DsarStore { db, append_lock: Default::default() }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes an audit entry of an action that changed nothing here (a download, an export of
    /// the trail), right after it.
    pub async fn record_audit(&self, tenant_id: Uuid, entry: Entry) -> Result<(), ServiceError> {
        record(&self.db.write, tenant_id, entry).await
    }

    /// Writes a request with its tasks (and, for an erasure, its ledger entry and the
    /// `erasure.requested` event) in one transaction.
    pub async fn create(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        new: NewRequest,
        retry_after: chrono::Duration,
    ) -> Result<request::Model, ServiceError> {
        let actor = stamp.actor.as_str();
        let at = now();
        let id = Uuid::now_v7();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        if new.kind == "erasure"
            && let Some(h) = active_hold(&txn, tenant_id, new.subject_id).await?
        {
            return Err(ServiceError::new(
                ErrorCode::FailedPrecondition,
                format!("legal hold {} covers contact {}: erasure refused until it is lifted", h.id, new.subject_id),
            )
            .with_field("contact_id"));
        }
        let row = request::ActiveModel {
            tenant_id: Set(tenant_id),
            id: Set(id),
            kind: Set(new.kind.clone()),
            subject_id: Set(new.subject_id),
            status: Set(if new.completed { COMPLETED.into() } else { IN_PROGRESS.into() }),
            verification: Set(Some(new.verification)),
            received_at: Set(at),
            due_at: Set(add_months(at, 1)),
            extended: Set(false),
            extension_reason: Set(None),
            completed_at: Set(new.completed.then_some(at)),
            rejection_reason: Set(None),
            details: Set(new.details),
            recipients: Set(serde_json::json!(new.recipients)),
            export_expires_at: Set(None),
            created_by: Set(actor.to_string()),
        };
        let model = row.insert(&txn).await.map_err(db_err)?;
        for service in &new.participants {
            task::ActiveModel {
                tenant_id: Set(tenant_id),
                request_id: Set(id),
                service: Set(service.clone()),
                status: Set(PENDING.into()),
                attempts: Set(1),
                next_at: Set(at + retry_after),
                confirmed_at: Set(None),
                records: Set(serde_json::json!({})),
            }
            .insert(&txn)
            .await
            .map_err(db_err)?;
        }
        if new.kind == "erasure" {
            ledger::ActiveModel {
                tenant_id: Set(tenant_id),
                request_id: Set(id),
                subject_pseudonym: Set(new.pseudonym_opt.unwrap_or_default()),
                participants: Set(serde_json::json!(new.participants)),
                removed: Set(serde_json::json!({})),
                requested_at: Set(at),
                completed_at: Set(None),
            }
            .insert(&txn)
            .await
            .map_err(db_err)?;
            let event = erasure_event(id, new.subject_id, new.participants.clone());
            carnet_kit::outbox::enqueue(&txn, tenant_id, event).await.map_err(db_err)?;
            // Who ordered the person's erasure: the participants erase later, on the event.
            let erase = stamp.of("erase", "contact", new.subject_id).subject(new.subject_id);
            record(&txn, tenant_id, erase).await?;
        }
        let created = stamp.of("create", "dsar_request", id).subject(new.subject_id).fields(new.changed_fields.clone());
        record(&txn, tenant_id, created).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(model)
    }

    pub async fn request(&self, tenant_id: Uuid, id: Uuid) -> Result<request::Model, ServiceError> {
        request::Entity::find_by_id((tenant_id, id))
            .one(&self.db.read)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("request", id))
    }

    pub async fn tasks(&self, tenant_id: Uuid, request_id: Uuid) -> Result<Vec<task::Model>, ServiceError> {
        task::Entity::find()
            .filter(task::Column::TenantId.eq(tenant_id))
            .filter(task::Column::RequestId.eq(request_id))
            .order_by_asc(task::Column::Service)
            .all(&self.db.read)
            .await
            .map_err(db_err)
    }

    pub async fn requests(&self, tenant_id: Uuid, open_only: bool) -> Result<Vec<request::Model>, ServiceError> {
        let mut q = request::Entity::find().filter(request::Column::TenantId.eq(tenant_id));
        if open_only {
            q = q.filter(request::Column::Status.is_in([RECEIVED, IN_PROGRESS]));
        }
        q.order_by_asc(request::Column::DueAt).limit(1_000).all(&self.db.read).await.map_err(db_err)
    }

    /// Extends the deadline once, by `months` from the original due date, with a reason.
    pub async fn extend(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        id: Uuid,
        months: u32,
        reason: &str,
    ) -> Result<request::Model, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let current = request::Entity::find_by_id((tenant_id, id))
            .one(&txn)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("request", id))?;
        if current.extended {
            return Err(ServiceError::new(ErrorCode::FailedPrecondition, format!("request {id} was already extended"))
                .with_field("id"));
        }
        if current.status == COMPLETED || current.status == REJECTED {
            return Err(ServiceError::new(
                ErrorCode::FailedPrecondition,
                format!("request {id} is {}", current.status),
            )
            .with_field("id"));
        }
        let mut row: request::ActiveModel = current.clone().into();
        row.due_at = Set(add_months(current.due_at, months));
        row.extended = Set(true);
        row.extension_reason = Set(Some(reason.to_string()));
        let model = row.update(&txn).await.map_err(db_err)?;
        record(&txn, tenant_id, stamp.of("extend", "dsar_request", id).subject(model.subject_id)).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(model)
    }

    /// Rejects an open request with a reason; its pending tasks are cancelled (no re-asking).
    pub async fn reject(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        id: Uuid,
        reason: &str,
    ) -> Result<request::Model, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let current = request::Entity::find_by_id((tenant_id, id))
            .one(&txn)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("request", id))?;
        if current.status == COMPLETED || current.status == REJECTED {
            return Err(ServiceError::new(
                ErrorCode::FailedPrecondition,
                format!("request {id} is {}", current.status),
            )
            .with_field("id"));
        }
        let tasks = task::Entity::find()
            .filter(task::Column::TenantId.eq(tenant_id))
            .filter(task::Column::RequestId.eq(id))
            .all(&txn)
            .await
            .map_err(db_err)?;
        if current.kind == "erasure" && tasks.iter().any(|t| t.status == CONFIRMED) {
            return Err(ServiceError::new(
                ErrorCode::FailedPrecondition,
                format!("request {id}: participants have already erased; it completes instead"),
            )
            .with_field("id"));
        }
        task::Entity::update_many()
            .col_expr(task::Column::Status, Expr::value("cancelled"))
            .filter(task::Column::TenantId.eq(tenant_id))
            .filter(task::Column::RequestId.eq(id))
            .filter(task::Column::Status.eq(PENDING))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        let mut row: request::ActiveModel = current.into();
        row.status = Set(REJECTED.into());
        row.rejection_reason = Set(Some(reason.to_string()));
        row.completed_at = Set(Some(now()));
        let model = row.update(&txn).await.map_err(db_err)?;
        record(&txn, tenant_id, stamp.of("reject", "dsar_request", id).subject(model.subject_id)).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(model)
    }

    // ----- legal holds -----

    pub async fn place_hold(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        subject_id: Uuid,
        reason: &str,
    ) -> Result<hold::Model, ServiceError> {
        let id = Uuid::now_v7();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let model = hold::ActiveModel {
            tenant_id: Set(tenant_id),
            id: Set(id),
            subject_id: Set(subject_id),
            reason: Set(reason.to_string()),
            placed_by: Set(stamp.actor.clone()),
            placed_at: Set(now()),
            lifted_at: Set(None),
            lifted_by: Set(None),
            lift_reason: Set(None),
        }
        .insert(&txn)
        .await
        .map_err(db_err)?;
        record(&txn, tenant_id, stamp.of("place", "legal_hold", id).subject(subject_id)).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(model)
    }

    pub async fn lift_hold(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        id: Uuid,
        reason: &str,
    ) -> Result<hold::Model, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let current = hold::Entity::find_by_id((tenant_id, id))
            .one(&txn)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("legal hold", id))?;
        if current.lifted_at.is_some() {
            return Err(ServiceError::new(ErrorCode::FailedPrecondition, format!("legal hold {id} is already lifted")));
        }
        let mut row: hold::ActiveModel = current.into();
        row.lifted_at = Set(Some(now()));
        row.lifted_by = Set(Some(stamp.actor.clone()));
        row.lift_reason = Set(Some(reason.to_string()));
        let model = row.update(&txn).await.map_err(db_err)?;
        record(&txn, tenant_id, stamp.of("lift", "legal_hold", id).subject(model.subject_id)).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(model)
    }

    pub async fn holds(&self, tenant_id: Uuid, subject_opt: Option<Uuid>) -> Result<Vec<hold::Model>, ServiceError> {
        let mut q = hold::Entity::find().filter(hold::Column::TenantId.eq(tenant_id));
        if let Some(s) = subject_opt {
            q = q.filter(hold::Column::SubjectId.eq(s));
        }
        q.order_by_desc(hold::Column::PlacedAt).all(&self.db.read).await.map_err(db_err)
    }

    // ----- erasure confirmations and re-publishing -----

    /// Records one participant's confirmation (once; a repeat changes nothing) and completes the
    /// request and its ledger entry when every participant confirmed. Returns true when the
    /// request completed now.
    pub async fn confirm(
        &self,
        tenant_id: Uuid,
        request_id: Uuid,
        service: &str,
        removed: BTreeMap<String, u64>,
    ) -> Result<Option<Confirmed>, ServiceError> {
        let at = now();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        // Confirmations of one request go one at a time: each reads every task to see whether
        // it was the last, and two concurrent ones (PostgreSQL, read committed) would each see
        // the other's task still pending, so neither would complete the request. SQLite's
        // write transactions are serialised already.
        if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
            request::Entity::find()
                .filter(request::Column::TenantId.eq(tenant_id))
                .filter(request::Column::Id.eq(request_id))
                .lock_exclusive()
                .all(&txn)
                .await
                .map_err(db_err)?;
        }
        let res = task::Entity::update_many()
            .col_expr(task::Column::Status, Expr::value(CONFIRMED))
            .col_expr(task::Column::ConfirmedAt, Expr::value(at))
            .col_expr(task::Column::Records, Expr::value(serde_json::json!(removed)))
            .filter(task::Column::TenantId.eq(tenant_id))
            .filter(task::Column::RequestId.eq(request_id))
            .filter(task::Column::Service.eq(service))
            .filter(task::Column::Status.eq(PENDING))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        if res.rows_affected == 0 {
            return Ok(None);
        }
        let request_opt = request::Entity::find()
            .filter(request::Column::TenantId.eq(tenant_id))
            .filter(request::Column::Id.eq(request_id))
            .all(&txn)
            .await
            .map_err(db_err)?
            .pop();
        let received_at = request_opt.as_ref().map_or(at, |r| r.received_at);
        let tasks = task::Entity::find()
            .filter(task::Column::TenantId.eq(tenant_id))
            .filter(task::Column::RequestId.eq(request_id))
            .all(&txn)
            .await
            .map_err(db_err)?;
        let done = tasks.iter().all(|t| t.status == CONFIRMED);
        if done {
            request::Entity::update_many()
                .col_expr(request::Column::Status, Expr::value(COMPLETED))
                .col_expr(request::Column::CompletedAt, Expr::value(at))
                .filter(request::Column::TenantId.eq(tenant_id))
                .filter(request::Column::Id.eq(request_id))
                .exec(&txn)
                .await
                .map_err(db_err)?;
            let mut totals: BTreeMap<String, u64> = BTreeMap::new();
            for t in &tasks {
                let records: BTreeMap<String, u64> = serde_json::from_value(t.records.clone()).unwrap_or_default();
                for (k, v) in records {
                    *totals.entry(format!("{}.{k}", t.service)).or_default() += v;
                }
            }
            ledger::Entity::update_many()
                .col_expr(ledger::Column::CompletedAt, Expr::value(at))
                .col_expr(ledger::Column::Removed, Expr::value(serde_json::json!(totals)))
                .filter(ledger::Column::TenantId.eq(tenant_id))
                .filter(ledger::Column::RequestId.eq(request_id))
                .exec(&txn)
                .await
                .map_err(db_err)?;
            let mut completed = service_stamp("bus").of("complete", "dsar_request", request_id);
            completed.subject_id_opt = request_opt.as_ref().map(|r| r.subject_id);
            record(&txn, tenant_id, completed).await?;
        }
        txn.commit().await.map_err(db_err)?;
        Ok(Some(Confirmed { completed: done, lag: at - received_at }))
    }

    /// Open and overdue requests over every tenant (for the gauges).
    pub async fn open_counts(&self) -> Result<(u64, u64), ServiceError> {
        use sea_orm::PaginatorTrait as _;
        let open = || request::Entity::find().filter(request::Column::Status.is_in([RECEIVED, IN_PROGRESS]));
        let total = open().count(&self.db.read).await.map_err(db_err)?;
        let overdue = open().filter(request::Column::DueAt.lt(now())).count(&self.db.read).await.map_err(db_err)?;
        Ok((total, overdue))
    }

    /// Asks again every participant that has not confirmed an erasure by its due time, with
    /// exponential backoff: one `erasure.requested` per request naming the missing ones.
    pub async fn republish_due(&self, base: chrono::Duration, max: chrono::Duration) -> Result<u64, ServiceError> {
        let at = now();
        let due = task::Entity::find()
            .filter(task::Column::Status.eq(PENDING))
            .filter(task::Column::NextAt.lte(at))
            .limit(500)
            .all(&self.db.read)
            .await
            .map_err(db_err)?;
        let mut by_request: BTreeMap<(Uuid, Uuid), Vec<task::Model>> = BTreeMap::new();
        for t in due {
            by_request.entry((t.tenant_id, t.request_id)).or_default().push(t);
        }
        let mut sent = 0;
        for ((tenant_id, request_id), tasks) in by_request {
            let req = self.request(tenant_id, request_id).await?;
            let txn = self.db.begin_write().await.map_err(db_err)?;
            for t in &tasks {
                let factor = 2i32.saturating_pow(t.attempts.clamp(0, 16) as u32);
                let wait = (base * factor).min(max);
                task::Entity::update_many()
                    .col_expr(task::Column::Attempts, Expr::value(t.attempts + 1))
                    .col_expr(task::Column::NextAt, Expr::value(at + wait))
                    .filter(task::Column::TenantId.eq(tenant_id))
                    .filter(task::Column::RequestId.eq(request_id))
                    .filter(task::Column::Service.eq(t.service.clone()))
                    .filter(task::Column::Status.eq(PENDING))
                    .exec(&txn)
                    .await
                    .map_err(db_err)?;
            }
            if req.kind == "erasure" {
                let missing = tasks.iter().map(|t| t.service.clone()).collect();
                let event = erasure_event(request_id, req.subject_id, missing);
                carnet_kit::outbox::enqueue(&txn, tenant_id, event).await.map_err(db_err)?;
                sent += 1;
            }
            txn.commit().await.map_err(db_err)?;
            tracing::info!(%tenant_id, %request_id, services = tasks.len(), "participants asked again");
        }
        Ok(sent)
    }

    // ----- access exports -----

    /// Stores the encrypted export of an access request and completes it with its task counts.
    pub async fn complete_access(
        &self,
        req: &request::Model,
        nonce: Vec<u8>,
        ciphertext: Vec<u8>,
        expires_at: DateTime<Utc>,
        counts: &BTreeMap<String, u64>,
    ) -> Result<(), ServiceError> {
        let (tenant_id, request_id) = (req.tenant_id, req.id);
        let at = now();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        export::ActiveModel {
            tenant_id: Set(tenant_id),
            request_id: Set(request_id),
            nonce: Set(nonce),
            ciphertext: Set(ciphertext),
            expires_at: Set(expires_at),
        }
        .insert(&txn)
        .await
        .map_err(db_err)?;
        for (service, n) in counts {
            task::Entity::update_many()
                .col_expr(task::Column::Status, Expr::value(CONFIRMED))
                .col_expr(task::Column::ConfirmedAt, Expr::value(at))
                .col_expr(task::Column::Records, Expr::value(serde_json::json!({"records": n})))
                .filter(task::Column::TenantId.eq(tenant_id))
                .filter(task::Column::RequestId.eq(request_id))
                .filter(task::Column::Service.eq(service.clone()))
                .exec(&txn)
                .await
                .map_err(db_err)?;
        }
        request::Entity::update_many()
            .col_expr(request::Column::Status, Expr::value(COMPLETED))
            .col_expr(request::Column::CompletedAt, Expr::value(at))
            .col_expr(request::Column::ExportExpiresAt, Expr::value(expires_at))
            .filter(request::Column::TenantId.eq(tenant_id))
            .filter(request::Column::Id.eq(request_id))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        let completed = service_stamp("background").of("complete", "dsar_request", request_id).subject(req.subject_id);
        record(&txn, tenant_id, completed).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(())
    }

    /// Records a failed participant of an access request (it is retried by the caller).
    pub async fn note_attempt(&self, tenant_id: Uuid, request_id: Uuid, service: &str) -> Result<(), ServiceError> {
        task::Entity::update_many()
            .col_expr(task::Column::Attempts, Expr::col(task::Column::Attempts).add(1))
            .filter(task::Column::TenantId.eq(tenant_id))
            .filter(task::Column::RequestId.eq(request_id))
            .filter(task::Column::Service.eq(service))
            .exec(&self.db.write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub async fn export(&self, tenant_id: Uuid, request_id: Uuid) -> Result<export::Model, ServiceError> {
        export::Entity::find_by_id((tenant_id, request_id))
            .one(&self.db.read)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("export", request_id))
    }

    /// Access requests still in progress (resumed after a restart).
    pub async fn open_access_requests(&self) -> Result<Vec<request::Model>, ServiceError> {
        request::Entity::find()
            .filter(request::Column::Kind.eq("access"))
            .filter(request::Column::Status.eq(IN_PROGRESS))
            .all(&self.db.read)
            .await
            .map_err(db_err)
    }

    // ----- the ledger -----

    pub async fn ledger(
        &self,
        tenant_id: Uuid,
        since_opt: Option<DateTime<Utc>>,
    ) -> Result<Vec<ledger::Model>, ServiceError> {
        let mut q = ledger::Entity::find().filter(ledger::Column::TenantId.eq(tenant_id));
        if let Some(since) = since_opt {
            q = q.filter(ledger::Column::RequestedAt.gte(since));
        }
        q.order_by_asc(ledger::Column::RequestedAt).all(&self.db.read).await.map_err(db_err)
    }

    /// Publishes `erasure.requested` again for a replayed ledger entry (participants erase
    /// idempotently; the request's tasks are not reopened).
    pub async fn replay(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        request_id: Uuid,
        subject_id: Uuid,
        participants: Vec<String>,
    ) -> Result<(), ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        carnet_kit::outbox::enqueue(&txn, tenant_id, erasure_event(request_id, subject_id, participants))
            .await
            .map_err(db_err)?;
        record(&txn, tenant_id, stamp.of("replay", "dsar_request", request_id).subject(subject_id)).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(())
    }
}

pub(crate) async fn active_hold<C: ConnectionTrait>(
    conn: &C,
    tenant_id: Uuid,
    subject_id: Uuid,
) -> Result<Option<hold::Model>, ServiceError> {
    let rows = hold::Entity::find()
        .filter(hold::Column::TenantId.eq(tenant_id))
        .filter(hold::Column::SubjectId.eq(subject_id))
        .filter(hold::Column::LiftedAt.is_null())
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok(rows.into_iter().next())
}
