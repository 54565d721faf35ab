//! The transactional outbox: a service writes each event in the same database transaction as the
//! change it describes, so a committed change always has its event and a rolled-back one never
//! does. The [`Relay`] publishes pending rows in order and marks them published; a row whose
//! publish failed stays pending and is tried again (consumers are idempotent).
//!
//! Every service's migrations create an `outbox` table of this shape.

use std::time::Duration;

use prost::Message;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use uuid::Uuid;

use carnet_proto::events::v1::{Event, event::Payload};

pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub kind: String,
        pub payload: Vec<u8>,
        pub created_at: DateTimeUtc,
        pub published_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Returns the event kind (`contact.upserted`, …): the last token of the subject
/// `carnet.<tenant>.<kind>`.
pub fn kind_of(payload: &Payload) -> &'static str {
    match payload {
        Payload::ContactUpserted(_) => "contact.upserted",
        Payload::ContactErased(_) => "contact.erased",
        Payload::ContactMerged(_) => "contact.merged",
        Payload::ConsentChanged(_) => "consent.changed",
        Payload::ErasureRequested(_) => "erasure.requested",
        Payload::ErasureConfirmed(_) => "erasure.confirmed",
        Payload::AuditRecorded(_) => "audit.recorded",
        Payload::ContactActivity(_) => "contact.activity",
    }
}

/// Writes `payload` as a pending event of `tenant_id` on `conn` (a transaction).
pub async fn enqueue<C: ConnectionTrait>(conn: &C, tenant_id: Uuid, payload: Payload) -> Result<Uuid, DbErr> {
    let row = row(tenant_id, payload);
    let id = row.id.clone().unwrap();
    entity::Entity::insert(row).exec_without_returning(conn).await?;
    Ok(id)
}

/// The `erasure.confirmed` a participant writes, in the transaction of its erasure.
pub fn confirmation(service: &str, request_id: &str, subject_id: Uuid, removed: &[(&str, u64)]) -> Payload {
    Payload::ErasureConfirmed(carnet_proto::events::v1::ErasureConfirmed {
        request_id: request_id.to_string(),
        subject_id: subject_id.to_string(),
        service: service.to_string(),
        removed: removed.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    })
}

/// What a participant's handler needs from `erasure.requested`: (tenant, request id, subject),
/// when `service` is among the participants it names.
pub fn erasure_for(event: &Event, service: &str) -> Option<(Uuid, String, Uuid)> {
    let Some(Payload::ErasureRequested(r)) = &event.payload else { return None };
    if !r.participants.iter().any(|p| p == service) {
        return None;
    }
    Some((event.tenant_id.parse().ok()?, r.request_id.clone(), r.subject_id.parse().ok()?))
}

/// When the change an event describes happened (its `occurred_at`; now, for an event without one).
pub fn occurred_at(event: &Event) -> chrono::DateTime<chrono::Utc> {
    event
        .occurred_at
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .unwrap_or_else(chrono::Utc::now)
}

/// Returns the outbox row of a pending event, for callers that insert many rows at once.
pub fn row(tenant_id: Uuid, payload: Payload) -> entity::ActiveModel {
    let id = Uuid::now_v7();
    let now = crate::db::now();
    let kind = kind_of(&payload);
    let event = Event {
        id: id.to_string(),
        tenant_id: tenant_id.to_string(),
        occurred_at: Some(crate::grpc::to_timestamp(now)),
        // The change's trace continues through the bus into every consumer.
        trace_context: crate::telemetry::current_trace_context(),
        payload: Some(payload),
    };
    entity::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant_id),
        kind: Set(kind.to_string()),
        payload: Set(event.encode_to_vec()),
        created_at: Set(now),
        published_at: Set(None),
    }
}

/// Publishes a service's pending outbox rows to the bus.
pub struct Relay {
    db: crate::db::Db,
    bus: crate::bus::SharedBus,
    service: &'static str,
    interval: Duration,
}

/// Rows published per round.
const RELAY_BATCH: u64 = 200;

impl Relay {
    pub fn new(db: crate::db::Db, bus: crate::bus::SharedBus, service: &'static str, interval: Duration) -> Self {
        Relay { db, bus, service, interval }
    }

    /// Publishes pending rows in order until one fails or none is left; returns how many went out.
    pub async fn run_once(&self) -> Result<usize, DbErr> {
        let (total, drained) = self.round().await?;
        // The backlog gauge: nothing left, or (the bus refusing) what is still waiting.
        let backlog = if drained {
            0
        } else {
            use sea_orm::PaginatorTrait as _;
            entity::Entity::find().filter(entity::Column::PublishedAt.is_null()).count(&self.db.read).await? as i64
        };
        crate::metrics::set_gauge("carnet.outbox.backlog", self.service, backlog);
        Ok(total)
    }

    /// One round: (rows published, whether the outbox is now empty).
    async fn round(&self) -> Result<(usize, bool), DbErr> {
        let mut total = 0;
        loop {
            let rows = entity::Entity::find()
                .filter(entity::Column::PublishedAt.is_null())
                .order_by_asc(entity::Column::Id)
                .limit(RELAY_BATCH)
                .all(&self.db.read)
                .await?;
            if rows.is_empty() {
                return Ok((total, true));
            }
            let n = rows.len();
            // Rows go out one by one, in order, and are marked together once the round's page is
            // out (one UPDATE instead of one per row: on SQLite every UPDATE takes the single
            // writer from the service's own transactions). A crash in between publishes the
            // page again; consumers are idempotent and NATS drops repeated message ids.
            let mut sent: Vec<Uuid> = Vec::with_capacity(n);
            for row in rows {
                let outgoing = match crate::bus::Outgoing::of(row.payload.clone(), &row.kind) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(service = self.service, event_id = %row.id, error = %e, "outbox row is not an event; skipped");
                        sent.push(row.id);
                        continue;
                    }
                };
                let context: std::collections::HashMap<String, String> = outgoing.headers.iter().cloned().collect();
                let span = crate::telemetry::publish_span(&row.kind, &outgoing.id, &context);
                let published = tracing::Instrument::instrument(self.bus.publish(&outgoing), span).await;
                if let Err(e) = published {
                    tracing::warn!(service = self.service, event_id = %row.id, kind = %row.kind, error = %e, "publish failed; retrying later");
                    self.mark(&sent).await?;
                    return Ok((total, false));
                }
                sent.push(row.id);
                total += 1;
            }
            self.mark(&sent).await?;
            if (n as u64) < RELAY_BATCH {
                return Ok((total, true));
            }
        }
    }

    async fn mark(&self, ids: &[Uuid]) -> Result<(), DbErr> {
        if ids.is_empty() {
            return Ok(());
        }
        entity::Entity::update_many()
            .col_expr(entity::Column::PublishedAt, Expr::value(crate::db::now()))
            .filter(entity::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.db.write)
            .await?;
        Ok(())
    }

    /// Runs until `shutdown` resolves, a round every interval (and at once after a busy round).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let busy = match self.run_once().await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(service = self.service, error = %e, "outbox relay round failed");
                    false
                }
            };
            let wait = if busy { Duration::ZERO } else { self.interval };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
