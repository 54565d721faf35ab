//! Retention purges of the comms service (docs/retention.md), asked for by the DSAR service's
//! scheduler through `PurgeExpired`:
//!
//! - `calls`: call logs that started before the cutoff;
//! - `messages`: deliveries in a final state (`sent`, `skipped`, `failed`) sent — or, when never
//!   sent, created — before the cutoff, with the inline content written for one person that no
//!   remaining delivery uses. Queued and in-flight mail is never purged.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Query;
use sea_orm::{ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter};
use uuid::Uuid;

use carnet_kit::ServiceError;

use crate::entity::{call, delivery, template};
use crate::store::db_err;
use crate::store::{CommsStore, FAILED, SENT, SKIPPED};

/// The record types `PurgeExpired` knows.
pub const RECORD_TYPES: [&str; 2] = ["calls", "messages"];

fn expired_deliveries(tenant_id: Uuid, before: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(delivery::Column::TenantId.eq(tenant_id))
        .add(delivery::Column::Status.is_in([SENT, SKIPPED, FAILED]))
        .add(
            Condition::any().add(delivery::Column::SentAt.lt(before)).add(
                Condition::all().add(delivery::Column::SentAt.is_null()).add(delivery::Column::CreatedAt.lt(before)),
            ),
        )
}

impl CommsStore {
    /// Deletes (or, on a dry run, counts) the tenant's `record_type` records older than `before`.
    pub async fn purge_expired(
        &self,
        tenant_id: Uuid,
        record_type: &str,
        before: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<u64, ServiceError> {
        let db = &self.db().write;
        match (record_type, dry_run) {
            ("calls", true) => call::Entity::find()
                .filter(call::Column::TenantId.eq(tenant_id))
                .filter(call::Column::StartedAt.lt(before))
                .count(db)
                .await
                .map_err(db_err),
            ("calls", false) => call::Entity::delete_many()
                .filter(call::Column::TenantId.eq(tenant_id))
                .filter(call::Column::StartedAt.lt(before))
                .exec(db)
                .await
                .map(|r| r.rows_affected)
                .map_err(db_err),
            ("messages", true) => {
                delivery::Entity::find().filter(expired_deliveries(tenant_id, before)).count(db).await.map_err(db_err)
            }
            ("messages", false) => {
                let txn = self.db().begin_write().await.map_err(db_err)?;
                let purged = delivery::Entity::delete_many()
                    .filter(expired_deliveries(tenant_id, before))
                    .exec(&txn)
                    .await
                    .map_err(db_err)?
                    .rows_affected;
                // One person's inline content goes with the last delivery that used it.
                let used = Query::select()
                    .column(delivery::Column::TemplateId)
                    .from(delivery::Entity)
                    .and_where(delivery::Column::TenantId.eq(tenant_id))
                    .to_owned();
                template::Entity::delete_many()
                    .filter(template::Column::TenantId.eq(tenant_id))
                    .filter(template::Column::SubjectId.is_not_null())
                    .filter(template::Column::Id.not_in_subquery(used))
                    .exec(&txn)
                    .await
                    .map_err(db_err)?;
                txn.commit().await.map_err(db_err)?;
                Ok(purged)
            }
            _ => Err(ServiceError::invalid_field(
                "record_type",
                format!("comms purges {}, not `{record_type}`", RECORD_TYPES.join(", ")),
            )),
        }
    }
}
