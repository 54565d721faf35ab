//! The retention tables of the DSAR database: settings, the purge record and the warnings; and
//! the purge of the DSAR service's own artefacts (docs/retention.md).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use carnet_kit::ServiceError;
use carnet_kit::audit::{self, Entry};
use carnet_kit::db::now;

use crate::entity::{export, request, retention_purge, retention_settings, retention_warning, task};
use crate::store::DsarStore;
use crate::store::db_err;

/// A purge to record.
pub struct NewPurge {
    pub record_type: String,
    pub service: String,
    pub trigger: String,
    pub days: u32,
    pub cutoff: DateTime<Utc>,
    pub purged: u64,
    pub warned: u64,
    pub skipped: u64,
    pub request_ids: Vec<Uuid>,
}

impl DsarStore {
    pub async fn retention_settings(&self, tenant_id: Uuid) -> Result<Option<retention_settings::Model>, ServiceError> {
        retention_settings::Entity::find_by_id(tenant_id).one(&self.db().read).await.map_err(db_err)
    }

    /// Every tenant's settings (the scheduler's round).
    pub async fn all_retention_settings(&self) -> Result<Vec<retention_settings::Model>, ServiceError> {
        retention_settings::Entity::find().all(&self.db().read).await.map_err(db_err)
    }

    /// Replaces the tenant's settings, audited in the same transaction.
    pub async fn set_retention_settings(
        &self,
        stamp: &Entry,
        row: retention_settings::Model,
    ) -> Result<retention_settings::Model, ServiceError> {
        let tenant_id = row.tenant_id;
        let txn = self.db().begin_write().await.map_err(db_err)?;
        let active = retention_settings::ActiveModel {
            tenant_id: Set(row.tenant_id),
            policies: Set(row.policies.clone()),
            erase_on_withdrawal: Set(row.erase_on_withdrawal),
            warning_purpose: Set(row.warning_purpose.clone()),
            warning_subject: Set(row.warning_subject.clone()),
            warning_body: Set(row.warning_body.clone()),
            updated_by: Set(row.updated_by.clone()),
            updated_at: Set(row.updated_at),
        };
        retention_settings::Entity::insert(active)
            .on_conflict(
                OnConflict::column(retention_settings::Column::TenantId)
                    .update_columns([
                        retention_settings::Column::Policies,
                        retention_settings::Column::EraseOnWithdrawal,
                        retention_settings::Column::WarningPurpose,
                        retention_settings::Column::WarningSubject,
                        retention_settings::Column::WarningBody,
                        retention_settings::Column::UpdatedBy,
                        retention_settings::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await
            .map_err(db_err)?;
        let entry = stamp.of("update", "retention_policy", tenant_id);
        audit::record(&txn, tenant_id, crate::SERVICE_NAME, entry).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(row)
    }

    /// Records one purge and its audit entry (`purge`, the record type, the purge id).
    pub async fn record_purge(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        p: NewPurge,
    ) -> Result<retention_purge::Model, ServiceError> {
        let id = Uuid::now_v7();
        let row = retention_purge::ActiveModel {
            tenant_id: Set(tenant_id),
            id: Set(id),
            record_type: Set(p.record_type.clone()),
            service: Set(p.service),
            trigger: Set(p.trigger),
            days: Set(p.days as i32),
            cutoff: Set(carnet_kit::db::truncate(p.cutoff)),
            purged: Set(p.purged as i64),
            warned: Set(p.warned as i64),
            skipped: Set(p.skipped as i64),
            request_ids: Set(serde_json::json!(p.request_ids.iter().map(Uuid::to_string).collect::<Vec<_>>())),
            actor: Set(stamp.actor.clone()),
            ran_at: Set(now()),
        };
        let txn = self.db().begin_write().await.map_err(db_err)?;
        let model = row.insert(&txn).await.map_err(db_err)?;
        // Audit record types are static names: the policy's own, from the known list.
        let record_type =
            crate::retention::RECORD_TYPES.iter().map(|(t, _)| *t).find(|t| *t == p.record_type).unwrap_or("retention");
        let entry = stamp.of("purge", record_type, id);
        audit::record(&txn, tenant_id, crate::SERVICE_NAME, entry).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(model)
    }

    /// The tenant's purge record, newest first.
    pub async fn purges(
        &self,
        tenant_id: Uuid,
        record_type_opt: Option<&str>,
        limit: u64,
    ) -> Result<Vec<retention_purge::Model>, ServiceError> {
        let mut q = retention_purge::Entity::find().filter(retention_purge::Column::TenantId.eq(tenant_id));
        if let Some(t) = record_type_opt {
            q = q.filter(retention_purge::Column::RecordType.eq(t));
        }
        q.order_by_desc(retention_purge::Column::Id).limit(limit).all(&self.db().read).await.map_err(db_err)
    }

    pub async fn warning(
        &self,
        tenant_id: Uuid,
        subject_id: Uuid,
    ) -> Result<Option<retention_warning::Model>, ServiceError> {
        retention_warning::Entity::find_by_id((tenant_id, subject_id)).one(&self.db().read).await.map_err(db_err)
    }

    pub async fn record_warning(&self, tenant_id: Uuid, subject_id: Uuid, outcome: &str) -> Result<(), ServiceError> {
        let row = retention_warning::ActiveModel {
            tenant_id: Set(tenant_id),
            subject_id: Set(subject_id),
            warned_at: Set(now()),
            outcome: Set(outcome.to_string()),
        };
        retention_warning::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([retention_warning::Column::TenantId, retention_warning::Column::SubjectId])
                    .update_columns([retention_warning::Column::WarnedAt, retention_warning::Column::Outcome])
                    .to_owned(),
            )
            .exec_without_returning(&self.db().write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub async fn forget_warning(&self, tenant_id: Uuid, subject_id: Uuid) -> Result<(), ServiceError> {
        retention_warning::Entity::delete_by_id((tenant_id, subject_id))
            .exec(&self.db().write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Whether an erasure of the subject is still open (a second one would only add noise).
    pub async fn erasure_open(&self, tenant_id: Uuid, subject_id: Uuid) -> Result<bool, ServiceError> {
        let n = request::Entity::find()
            .filter(request::Column::TenantId.eq(tenant_id))
            .filter(request::Column::SubjectId.eq(subject_id))
            .filter(request::Column::Kind.eq("erasure"))
            .filter(request::Column::Status.is_not_in([crate::store::COMPLETED, crate::store::REJECTED]))
            .count(&self.db().read)
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }

    pub async fn held(&self, tenant_id: Uuid, subject_id: Uuid) -> Result<bool, ServiceError> {
        Ok(crate::store::active_hold(&self.db().read, tenant_id, subject_id).await?.is_some())
    }

    /// `dsar_artefacts`: requests closed (completed or rejected) before `before`, with their
    /// tasks and export documents, and export documents that expired before it. The erasure
    /// ledger stays: it is the proof that the erasures happened.
    pub async fn purge_artefacts(
        &self,
        tenant_id: Uuid,
        before: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<u64, ServiceError> {
        let closed = Condition::all()
            .add(request::Column::TenantId.eq(tenant_id))
            .add(request::Column::Status.is_in([crate::store::COMPLETED, crate::store::REJECTED]))
            .add(request::Column::CompletedAt.lt(before));
        let ids: Vec<Uuid> = request::Entity::find()
            .select_only()
            .column(request::Column::Id)
            .filter(closed.clone())
            .into_tuple()
            .all(&self.db().read)
            .await
            .map_err(db_err)?;
        let expired =
            Condition::all().add(export::Column::TenantId.eq(tenant_id)).add(export::Column::ExpiresAt.lt(before));
        if dry_run {
            let exports = export::Entity::find()
                .filter(expired)
                .filter(export::Column::RequestId.is_not_in(ids.clone()))
                .count(&self.db().read)
                .await
                .map_err(db_err)?;
            return Ok(ids.len() as u64 + exports);
        }
        let txn = self.db().begin_write().await.map_err(db_err)?;
        let mut purged = 0;
        for chunk in ids.chunks(500) {
            let chunk = chunk.to_vec();
            task::Entity::delete_many()
                .filter(task::Column::TenantId.eq(tenant_id))
                .filter(task::Column::RequestId.is_in(chunk.clone()))
                .exec(&txn)
                .await
                .map_err(db_err)?;
            export::Entity::delete_many()
                .filter(export::Column::TenantId.eq(tenant_id))
                .filter(export::Column::RequestId.is_in(chunk.clone()))
                .exec(&txn)
                .await
                .map_err(db_err)?;
            purged += request::Entity::delete_many()
                .filter(request::Column::TenantId.eq(tenant_id))
                .filter(request::Column::Id.is_in(chunk))
                .exec(&txn)
                .await
                .map_err(db_err)?
                .rows_affected;
        }
        purged += export::Entity::delete_many().filter(expired).exec(&txn).await.map_err(db_err)?.rows_affected;
        txn.commit().await.map_err(db_err)?;
        Ok(purged)
    }
}
