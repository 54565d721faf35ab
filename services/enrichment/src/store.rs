//! The enrichment store: installed plugins, the tenant switches and the run ledger, every query
//! scoped by tenant. Installs, switch changes and runs that wrote values write their audit entry
//! (`audit.recorded`, docs/audit.md) in their transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use carnet_kit::audit::{self, Entry};
use carnet_kit::db::Db;
use carnet_kit::{ErrorCode, ServiceError, outbox};

use crate::entity::{plugin, run, settings};

fn db_err(err: DbErr) -> ServiceError {
    tracing::error!(error = %err, "enrichment database error");
    ServiceError::internal("database error")
}

async fn record<C: sea_orm::ConnectionTrait>(conn: &C, tenant_id: Uuid, entry: Entry) -> Result<(), ServiceError> {
    audit::record(conn, tenant_id, crate::SERVICE_NAME, entry).await.map_err(db_err)
}

/// The tenant switches. Privacy by default (Art. 25): a tenant that never chose has both off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub auto_enrichment: bool,
    /// When auto-enrichment was switched on: changes made before are not enriched on their own.
    pub auto_since_opt: Option<DateTime<Utc>>,
    pub profiling_allowed: bool,
    pub updated_at_opt: Option<DateTime<Utc>>,
    pub updated_by: String,
}

/// A change of the switches; `None` keeps the current value.
#[derive(Clone, Debug, Default)]
pub struct SettingsPatch {
    pub auto_enrichment_opt: Option<bool>,
    pub profiling_allowed_opt: Option<bool>,
    pub plugins: BTreeMap<String, bool>,
}

/// A plugin being installed, checked by the caller.
pub struct NewPlugin<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub manifest: &'a str,
    pub sha256: &'a str,
    pub component: &'a [u8],
    pub enabled_opt: Option<bool>,
}

#[derive(Clone)]
pub struct EnrichmentStore {
    db: Db,
}

impl EnrichmentStore {
    pub fn new(db: Db) -> Self {
        EnrichmentStore { db }
    }

    pub async fn settings(&self, tenant_id: Uuid) -> Result<Settings, ServiceError> {
        let row = settings::Entity::find_by_id(tenant_id).all(&self.db.read).await.map_err(db_err)?.pop();
        Ok(row
            .map(|r| Settings {
                auto_enrichment: r.auto_enrichment,
                auto_since_opt: r.auto_since,
                profiling_allowed: r.profiling_allowed,
                updated_at_opt: Some(r.updated_at),
                updated_by: r.updated_by,
            })
            .unwrap_or_default())
    }

    /// Changes the switches and per-plugin enables in one transaction; an unknown plugin name
    /// fails the whole change.
    pub async fn update_settings(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        patch: SettingsPatch,
    ) -> Result<(), ServiceError> {
        let actor = stamp.actor.as_str();
        // The switches named (setting keys, not personal data).
        let mut changed: Vec<String> = Vec::new();
        if patch.auto_enrichment_opt.is_some() {
            changed.push("auto_enrichment".into());
        }
        if patch.profiling_allowed_opt.is_some() {
            changed.push("profiling_allowed".into());
        }
        changed.extend(patch.plugins.keys().map(|name| format!("plugins.{name}")));
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let now = carnet_kit::db::now();
        let current = settings::Entity::find_by_id(tenant_id).all(&txn).await.map_err(db_err)?.pop();
        let auto = patch.auto_enrichment_opt.unwrap_or(current.as_ref().is_some_and(|c| c.auto_enrichment));
        let profiling = patch.profiling_allowed_opt.unwrap_or(current.as_ref().is_some_and(|c| c.profiling_allowed));
        let auto_since = match &current {
            Some(c) if c.auto_enrichment && auto => c.auto_since,
            _ if auto => Some(now),
            _ => None,
        };
        let row = settings::ActiveModel {
            tenant_id: Set(tenant_id),
            auto_enrichment: Set(auto),
            auto_since: Set(auto_since),
            profiling_allowed: Set(profiling),
            updated_at: Set(now),
            updated_by: Set(actor.to_string()),
        };
        if current.is_some() {
            row.update(&txn).await.map_err(db_err)?;
        } else {
            settings::Entity::insert(row).exec_without_returning(&txn).await.map_err(db_err)?;
        }
        for (name, enabled) in patch.plugins {
            let found = plugin::Entity::find()
                .filter(plugin::Column::TenantId.eq(tenant_id))
                .filter(plugin::Column::Name.eq(name.as_str()))
                .all(&txn)
                .await
                .map_err(db_err)?
                .pop();
            let Some(found) = found else {
                return Err(ServiceError::new(ErrorCode::NotFound, format!("plugin {name} is not installed"))
                    .with_field(format!("plugins.{name}")));
            };
            let mut model = found.into_active_model();
            model.enabled = Set(enabled);
            model.update(&txn).await.map_err(db_err)?;
        }
        record(&txn, tenant_id, stamp.of("update", "enrichment_settings", tenant_id).fields(changed)).await?;
        txn.commit().await.map_err(db_err)
    }

    /// Every plugin the tenant installed, by name, without the components.
    pub async fn plugins(&self, tenant_id: Uuid) -> Result<Vec<plugin::Info>, ServiceError> {
        plugin::Entity::find()
            .filter(plugin::Column::TenantId.eq(tenant_id))
            .order_by_asc(plugin::Column::Name)
            .into_partial_model::<plugin::Info>()
            .all(&self.db.read)
            .await
            .map_err(db_err)
    }

    /// The component of an installed plugin, if it is still the one with `sha256`.
    pub async fn component(&self, tenant_id: Uuid, name: &str, sha256: &str) -> Result<Vec<u8>, ServiceError> {
        let found = plugin::Entity::find()
            .filter(plugin::Column::TenantId.eq(tenant_id))
            .filter(plugin::Column::Name.eq(name))
            .filter(plugin::Column::Sha256.eq(sha256))
            .all(&self.db.read)
            .await
            .map_err(db_err)?
            .pop();
        found
            .map(|m| m.component)
            .ok_or_else(|| ServiceError::new(ErrorCode::Conflict, format!("plugin {name} changed while it was loaded")))
    }

    /// Installs a plugin or upgrades it to a new version. Re-installing the same version is a
    /// no-op only with the same component: a changed component needs a new version, so that
    /// `<plugin>@<version>` in provenance always names one piece of code.
    pub async fn install(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        new: NewPlugin<'_>,
    ) -> Result<plugin::Model, ServiceError> {
        let actor = stamp.actor.as_str();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let current = plugin::Entity::find()
            .filter(plugin::Column::TenantId.eq(tenant_id))
            .filter(plugin::Column::Name.eq(new.name))
            .all(&txn)
            .await
            .map_err(db_err)?
            .pop();
        let now = carnet_kit::db::now();
        let model = match current {
            Some(current) if current.version == new.version && current.sha256 != new.sha256 => {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    format!(
                        "{}@{} is installed with another component: give the new one a new version",
                        new.name, new.version
                    ),
                )
                .with_field("component"));
            }
            Some(current) => {
                let enabled = new.enabled_opt.unwrap_or(current.enabled);
                let mut model = current.into_active_model();
                model.version = Set(new.version.to_string());
                model.manifest = Set(new.manifest.to_string());
                model.sha256 = Set(new.sha256.to_string());
                model.component = Set(new.component.to_vec());
                model.enabled = Set(enabled);
                model.installed_at = Set(now);
                model.installed_by = Set(actor.to_string());
                model.update(&txn).await.map_err(db_err)?
            }
            None => {
                let model = plugin::Model {
                    tenant_id,
                    name: new.name.to_string(),
                    version: new.version.to_string(),
                    manifest: new.manifest.to_string(),
                    sha256: new.sha256.to_string(),
                    component: new.component.to_vec(),
                    enabled: new.enabled_opt.unwrap_or(false),
                    installed_at: now,
                    installed_by: actor.to_string(),
                };
                plugin::Entity::insert(model.clone().into_active_model())
                    .exec_without_returning(&txn)
                    .await
                    .map_err(db_err)?;
                model
            }
        };
        let installed = stamp.of("install", "plugin", format!("{}@{}", model.name, model.version));
        record(&txn, tenant_id, installed).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(model)
    }

    /// Records runs; each run that wrote values is audited as `enrich` of the contact with the
    /// written keys, by `stamp` (the caller, or `service:enrichment` on its own), in the same
    /// transaction.
    pub async fn record_runs(&self, runs: Vec<run::Model>, stamp: &Entry) -> Result<(), ServiceError> {
        if runs.is_empty() {
            return Ok(());
        }
        let mut audits = Vec::new();
        for r in runs.iter().filter(|r| r.outcome == "written") {
            let written: Vec<String> = serde_json::from_value(r.fields_written.clone()).unwrap_or_default();
            let enriched = stamp.of("enrich", "contact", r.contact_id).subject(r.contact_id).fields(written);
            audits.push(audit::row(r.tenant_id, crate::SERVICE_NAME, enriched));
        }
        let rows: Vec<run::ActiveModel> = runs.into_iter().map(|r| r.into_active_model()).collect();
        let txn = self.db.begin_write().await.map_err(db_err)?;
        run::Entity::insert_many(rows).exec_without_returning(&txn).await.map_err(db_err)?;
        if !audits.is_empty() {
            outbox::entity::Entity::insert_many(audits).exec_without_returning(&txn).await.map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)
    }

    /// The run ledger, newest first, of one contact or of the tenant.
    pub async fn runs(
        &self,
        tenant_id: Uuid,
        contact_opt: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<run::Model>, ServiceError> {
        let mut query = run::Entity::find().filter(run::Column::TenantId.eq(tenant_id));
        if let Some(contact_id) = contact_opt {
            query = query.filter(run::Column::ContactId.eq(contact_id));
        }
        query.order_by_desc(run::Column::Id).limit(limit).all(&self.db.read).await.map_err(db_err)
    }

    /// Everything enrichment keeps about one person: the runs on them.
    pub async fn export_subject(&self, tenant_id: Uuid, contact_id: Uuid) -> Result<Vec<run::Model>, ServiceError> {
        run::Entity::find()
            .filter(run::Column::TenantId.eq(tenant_id))
            .filter(run::Column::ContactId.eq(contact_id))
            .order_by_asc(run::Column::Id)
            .all(&self.db.read)
            .await
            .map_err(db_err)
    }

    /// Erases one person's runs; for a DSAR request, confirms in the same transaction.
    pub async fn erase(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        request_opt: Option<&str>,
    ) -> Result<u64, ServiceError> {
        let txn = self.db.begin_write().await.map_err(db_err)?;
        let removed = run::Entity::delete_many()
            .filter(run::Column::TenantId.eq(tenant_id))
            .filter(run::Column::ContactId.eq(contact_id))
            .exec(&txn)
            .await
            .map_err(db_err)?
            .rows_affected;
        if let Some(request_id) = request_opt {
            let event =
                outbox::confirmation(crate::SERVICE_NAME, request_id, contact_id, &[("enrichment_runs", removed)]);
            outbox::enqueue(&txn, tenant_id, event).await.map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)?;
        Ok(removed)
    }
}

impl EnrichmentStore {
    /// Retention (docs/retention.md): deletes — or, on a dry run, counts — the tenant's run
    /// ledger entries older than `before` (the only record type enrichment purges: `enrichment_runs`).
    pub async fn purge_expired(
        &self,
        tenant_id: Uuid,
        record_type: &str,
        before: chrono::DateTime<chrono::Utc>,
        dry_run: bool,
    ) -> Result<u64, ServiceError> {
        if record_type != "enrichment_runs" {
            return Err(ServiceError::invalid_field(
                "record_type",
                format!("enrichment purges enrichment_runs, not `{record_type}`"),
            ));
        }
        let expired =
            sea_orm::Condition::all().add(run::Column::TenantId.eq(tenant_id)).add(run::Column::At.lt(before));
        if dry_run {
            use sea_orm::PaginatorTrait as _;
            return run::Entity::find().filter(expired).count(&self.db.read).await.map_err(db_err);
        }
        run::Entity::delete_many().filter(expired).exec(&self.db.write).await.map(|r| r.rows_affected).map_err(db_err)
    }
}
