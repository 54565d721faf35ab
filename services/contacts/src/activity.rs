//! A contact's last activity and the retention listing of inactive contacts (docs/retention.md).
//!
//! Activity is a sign of a relationship: the creation, a change by a person, a restriction or
//! objection, a merge (written by the store with the change), and — from other services over the
//! bus — a consent change (`consent.changed`) or a logged call (`contact.activity`). Enrichment
//! writes and outgoing mail are not activity: Carnet's own processing must not keep data alive.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use carnet_kit::ServiceError;

use crate::entity::contact;
use crate::rows::db_err;
use crate::store::ContactStore;

/// Largest page of [`ContactStore::inactive`].
pub const MAX_INACTIVE_PAGE: u64 = 1_000;

impl ContactStore {
    /// Moves the contact's last activity to `at` (never backwards). An unknown or erased contact
    /// is not an error: the event may arrive after the erasure.
    pub async fn touch(&self, tenant_id: Uuid, id: Uuid, at: DateTime<Utc>) -> Result<bool, ServiceError> {
        let at = carnet_kit::db::truncate(at);
        let res = contact::Entity::update_many()
            .col_expr(contact::Column::LastActivityAt, Expr::value(at))
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(contact::Column::Id.eq(id))
            .filter(
                Condition::any()
                    .add(contact::Column::LastActivityAt.lt(at))
                    .add(contact::Column::LastActivityAt.is_null()),
            )
            .exec(&self.db().write)
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected > 0)
    }

    /// Contacts last active before `before`, in id order after `after_opt`, restricted ones left
    /// out (Art. 18(1)(c): kept while the person needs them for a claim).
    pub async fn inactive(
        &self,
        tenant_id: Uuid,
        before: DateTime<Utc>,
        after_opt: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<(Uuid, DateTime<Utc>)>, ServiceError> {
        let mut q = contact::Entity::find()
            .select_only()
            .column(contact::Column::Id)
            .column(contact::Column::LastActivityAt)
            .column(contact::Column::UpdatedAt)
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(contact::Column::Restricted.eq(false))
            .filter(
                Condition::any().add(contact::Column::LastActivityAt.lt(before)).add(
                    Condition::all()
                        .add(contact::Column::LastActivityAt.is_null())
                        .add(contact::Column::UpdatedAt.lt(before)),
                ),
            )
            .order_by_asc(contact::Column::Id)
            .limit(limit.clamp(1, MAX_INACTIVE_PAGE));
        if let Some(after) = after_opt {
            q = q.filter(contact::Column::Id.gt(after));
        }
        let rows: Vec<(Uuid, Option<DateTime<Utc>>, DateTime<Utc>)> =
            q.into_tuple().all(&self.db().read).await.map_err(db_err)?;
        Ok(rows.into_iter().map(|(id, last_opt, updated)| (id, last_opt.unwrap_or(updated))).collect())
    }
}
