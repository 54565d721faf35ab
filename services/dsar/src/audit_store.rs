//! The audit trail in the DSAR database: appending to a tenant's chain (once per event, never
//! forking), filtered queries, contiguous ranges for the export, and the chain check.
//!
//! Appending is optimistic: read the tenant's head, insert at `head + 1` with the chained hash,
//! commit. `(tenant_id, seq)` is the primary key, so when two replicas (or two relays of one
//! process on PostgreSQL) race for the same position, one insert fails with a unique violation;
//! that transaction is dropped and the append starts again on the new head, after a short random
//! pause. On SQLite the write transaction (`BEGIN IMMEDIATE`) already serialises appends.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, SqlErr};
use uuid::Uuid;

use carnet_kit::{ErrorCode, ServiceError};

use crate::audit::{Broken, Checker, GENESIS, Line, time_text};
use crate::entity::audit;
use crate::store::DsarStore;

/// Tries before an append gives up (the event is then delivered again later).
const APPEND_ATTEMPTS: u32 = 64;
/// Rows read per round when walking a chain.
pub const CHAIN_PAGE: u64 = 1_000;

fn db_err(err: DbErr) -> ServiceError {
    tracing::error!(error = %err, "dsar audit database error");
    ServiceError::internal("database error")
}

/// An entry to append, from one `audit.recorded` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewEntry {
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub service: String,
    pub actor: String,
    pub action: String,
    pub record_type: String,
    pub record_id: String,
    pub subject_id: String,
    pub api: String,
    pub request_id: String,
    pub fields: Vec<String>,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Chained at this position.
    Stored(u64),
    /// The event was stored before: nothing changed.
    Duplicate,
}

enum Attempt {
    Done(Appended),
    /// Another writer took the position first.
    Lost,
}

/// The filters of a query; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub subject_id_opt: Option<String>,
    pub record_id_opt: Option<String>,
    pub actor_opt: Option<String>,
    pub action_opt: Option<String>,
    pub record_type_opt: Option<String>,
    pub service_opt: Option<String>,
    /// Bounds on `occurred_at`: since ≤ t < until.
    pub since_opt: Option<DateTime<Utc>>,
    pub until_opt: Option<DateTime<Utc>>,
    /// The seq after which (in the chosen order) the page starts.
    pub cursor_opt: Option<i64>,
    pub limit: u64,
    pub newest_first: bool,
}

/// The outcome of a chain check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub checked: u64,
    pub broken_opt: Option<(u64, Broken)>,
    pub head_opt: Option<(u64, String)>,
}

impl DsarStore {
    /// Appends one entry to the tenant's chain, once per event id.
    pub async fn append_audit(&self, tenant_id: Uuid, entry: &NewEntry) -> Result<Appended, ServiceError> {
        let _one = self.append_lock.lock().await;
        for attempt in 0..APPEND_ATTEMPTS {
            match self.try_append(tenant_id, entry).await {
                Ok(Attempt::Done(done)) => return Ok(done),
                Ok(Attempt::Lost) => {
                    let cap = 1u64 << attempt.min(5);
                    tokio::time::sleep(std::time::Duration::from_millis(rand::random::<u64>() % (cap + 1))).await;
                }
                Err(e) => return Err(db_err(e)),
            }
        }
        Err(ServiceError::new(ErrorCode::Unavailable, format!("audit chain of tenant {tenant_id} is busy")))
    }

    async fn try_append(&self, tenant_id: Uuid, entry: &NewEntry) -> Result<Attempt, DbErr> {
        let txn = self.db().begin_write().await?;
        let seen = audit::Entity::find()
            .select_only()
            .column(audit::Column::Seq)
            .filter(audit::Column::TenantId.eq(tenant_id))
            .filter(audit::Column::EventId.eq(entry.event_id))
            .into_tuple::<i64>()
            .all(&txn)
            .await?;
        if !seen.is_empty() {
            txn.rollback().await?;
            return Ok(Attempt::Done(Appended::Duplicate));
        }
        let head = audit::Entity::find()
            .filter(audit::Column::TenantId.eq(tenant_id))
            .order_by_desc(audit::Column::Seq)
            .limit(1)
            .all(&txn)
            .await?
            .pop();
        let now = carnet_kit::db::now();
        let (seq, prev_hash, recorded_at) = match &head {
            // Never earlier than the entry before: the chain order is also the time order, so
            // a time range of the export is a contiguous piece of the chain.
            Some(h) => (h.seq + 1, h.hash.clone(), now.max(h.recorded_at)),
            None => (1, GENESIS.to_string(), now),
        };
        let occurred_at = carnet_kit::db::truncate(entry.occurred_at);
        let mut line = Line {
            seq: seq as u64,
            tenant_id: tenant_id.to_string(),
            event_id: entry.event_id.to_string(),
            occurred_at: time_text(occurred_at),
            recorded_at: time_text(recorded_at),
            service: entry.service.clone(),
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            record_type: entry.record_type.clone(),
            record_id: entry.record_id.clone(),
            subject_id: entry.subject_id.clone(),
            api: entry.api.clone(),
            request_id: entry.request_id.clone(),
            fields: entry.fields.clone(),
            prev_hash: prev_hash.clone(),
            hash: String::new(),
        };
        line.hash = line.computed_hash();
        let row = audit::ActiveModel {
            tenant_id: Set(tenant_id),
            seq: Set(seq),
            event_id: Set(entry.event_id),
            occurred_at: Set(occurred_at),
            recorded_at: Set(recorded_at),
            actor: Set(line.actor),
            action: Set(line.action),
            record_type: Set(line.record_type),
            record_id: Set(line.record_id),
            subject_id: Set(line.subject_id),
            api: Set(line.api),
            request_id: Set(line.request_id),
            service: Set(line.service),
            fields: Set(serde_json::json!(line.fields)),
            prev_hash: Set(prev_hash),
            hash: Set(line.hash),
        };
        let lost = |e: &DbErr| matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)));
        match audit::Entity::insert(row).exec_without_returning(&txn).await {
            Ok(_) => {}
            Err(e) if lost(&e) => return Ok(Attempt::Lost),
            Err(e) => return Err(e),
        }
        match txn.commit().await {
            Ok(()) => Ok(Attempt::Done(Appended::Stored(seq as u64))),
            Err(e) if lost(&e) => Ok(Attempt::Lost),
            Err(e) => Err(e),
        }
    }

    /// One page of entries matching `q`, and the cursor of the next page.
    pub async fn query_audit(
        &self,
        tenant_id: Uuid,
        q: &AuditQuery,
    ) -> Result<(Vec<audit::Model>, Option<i64>), ServiceError> {
        use audit::Column as C;
        let mut find = audit::Entity::find().filter(C::TenantId.eq(tenant_id));
        for (column, value_opt) in [
            (C::SubjectId, &q.subject_id_opt),
            (C::RecordId, &q.record_id_opt),
            (C::Actor, &q.actor_opt),
            (C::Action, &q.action_opt),
            (C::RecordType, &q.record_type_opt),
            (C::Service, &q.service_opt),
        ] {
            if let Some(value) = value_opt {
                find = find.filter(column.eq(value.as_str()));
            }
        }
        if let Some(since) = q.since_opt {
            find = find.filter(C::OccurredAt.gte(since));
        }
        if let Some(until) = q.until_opt {
            find = find.filter(C::OccurredAt.lt(until));
        }
        if let Some(cursor) = q.cursor_opt {
            find = if q.newest_first { find.filter(C::Seq.lt(cursor)) } else { find.filter(C::Seq.gt(cursor)) };
        }
        find = if q.newest_first { find.order_by_desc(C::Seq) } else { find.order_by_asc(C::Seq) };
        let mut rows = find.limit(q.limit + 1).all(&self.db().read).await.map_err(db_err)?;
        let next = if rows.len() as u64 > q.limit {
            rows.truncate(q.limit as usize);
            rows.last().map(|r| r.seq)
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Entries after `after_seq` up to `last_seq` (inclusive), in chain order, at most `limit`.
    pub async fn audit_chain_page(
        &self,
        tenant_id: Uuid,
        after_seq: i64,
        last_seq_opt: Option<i64>,
        limit: u64,
    ) -> Result<Vec<audit::Model>, ServiceError> {
        let mut find = audit::Entity::find()
            .filter(audit::Column::TenantId.eq(tenant_id))
            .filter(audit::Column::Seq.gt(after_seq));
        if let Some(last) = last_seq_opt {
            find = find.filter(audit::Column::Seq.lte(last));
        }
        find.order_by_asc(audit::Column::Seq).limit(limit).all(&self.db().read).await.map_err(db_err)
    }

    /// The first and last seq recorded in `[since, until)` (`None` bounds: the chain's ends);
    /// `None` when no entry falls inside. `recorded_at` never decreases along the chain, so
    /// every entry between the two falls inside too.
    pub async fn audit_range(
        &self,
        tenant_id: Uuid,
        since_opt: Option<DateTime<Utc>>,
        until_opt: Option<DateTime<Utc>>,
    ) -> Result<Option<(i64, i64)>, ServiceError> {
        let edge = |newest: bool| {
            let mut find = audit::Entity::find()
                .select_only()
                .column(audit::Column::Seq)
                .filter(audit::Column::TenantId.eq(tenant_id));
            if let Some(since) = since_opt {
                find = find.filter(audit::Column::RecordedAt.gte(since));
            }
            if let Some(until) = until_opt {
                find = find.filter(audit::Column::RecordedAt.lt(until));
            }
            let find =
                if newest { find.order_by_desc(audit::Column::Seq) } else { find.order_by_asc(audit::Column::Seq) };
            find.limit(1).into_tuple::<i64>()
        };
        let first = edge(false).all(&self.db().read).await.map_err(db_err)?.pop();
        let last = edge(true).all(&self.db().read).await.map_err(db_err)?.pop();
        Ok(first.zip(last))
    }

    /// Recomputes the tenant's whole chain from seq 1, a page at a time.
    pub async fn verify_audit(&self, tenant_id: Uuid) -> Result<Verified, ServiceError> {
        let mut checker = Checker::whole();
        let mut after = 0;
        loop {
            let rows = self.audit_chain_page(tenant_id, after, None, CHAIN_PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for row in &rows {
                if let Err(broken) = checker.check(&Line::of(row)) {
                    return Ok(Verified { checked: checker.checked, broken_opt: Some(broken), head_opt: None });
                }
            }
            if (rows.len() as u64) < CHAIN_PAGE {
                break;
            }
        }
        Ok(Verified { checked: checker.checked, broken_opt: None, head_opt: checker.head_opt })
    }
}
