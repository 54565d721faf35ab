//! The gRPC face of the enrichment service.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};

use carnet_kit::audit::Entry;
use carnet_kit::grpc::{parse_id, to_timestamp};
use carnet_kit::{Caller, Permission, ServiceError};
use carnet_plugin_host::Manifest;
use carnet_proto::common::v1 as pb_common;
use carnet_proto::enrichment::v1 as pb;
use carnet_proto::enrichment::v1::enrichment_service_server::EnrichmentService;

use crate::engine::{Engine, Trigger};
use crate::entity::{plugin, run};
use crate::store::SettingsPatch;

pub struct EnrichmentGrpc {
    engine: Engine,
}

impl EnrichmentGrpc {
    pub fn new(engine: Engine) -> Self {
        EnrichmentGrpc { engine }
    }
}

/// Who calls, through which method: the common part of the call's audit entries.
fn stamp(caller: &Caller, method: &str) -> Entry {
    Entry::stamp(caller, &format!("carnet.enrichment.v1.EnrichmentService/{method}"))
}

fn caller<T>(request: &Request<T>, any_of: &[Permission]) -> Result<Caller, Status> {
    let caller = Caller::of(request)?;
    caller.require_any(any_of)?;
    Ok(caller)
}

fn plugin_to_proto(row: plugin::Info) -> pb::Plugin {
    let manifest_opt = Manifest::parse(&row.manifest).ok();
    let m = |f: fn(&Manifest) -> Vec<String>| manifest_opt.as_ref().map(f).unwrap_or_default();
    pb::Plugin {
        api_version: manifest_opt.as_ref().map(|m| m.api_version.clone()).unwrap_or_default(),
        reads: m(|m| m.reads.clone()),
        writes: m(|m| m.writes.clone()),
        categories: m(|m| m.categories.clone()),
        purposes: m(|m| m.purposes.clone()),
        profiling: manifest_opt.as_ref().is_some_and(|m| m.profiling),
        hosts: m(|m| m.hosts.clone()),
        name: row.name,
        version: row.version,
        enabled: row.enabled,
        sha256: row.sha256,
        installed_at: Some(to_timestamp(row.installed_at)),
        installed_by: row.installed_by,
    }
}

fn keys(value: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

pub fn run_to_proto(row: &run::Model) -> pb::Run {
    pb::Run {
        id: row.id.to_string(),
        contact_id: row.contact_id.to_string(),
        plugin: row.plugin.clone(),
        version: row.version.clone(),
        trigger: row.trigger.clone(),
        outcome: row.outcome.clone(),
        reason: row.reason.clone(),
        fields_read: keys(&row.fields_read),
        fields_written: keys(&row.fields_written),
        duration_us: row.duration_us.max(0) as u64,
        at: Some(to_timestamp(row.at)),
    }
}

impl EnrichmentGrpc {
    async fn settings_proto(&self, caller: &Caller) -> Result<pb::Settings, ServiceError> {
        let settings = self.engine.store().settings(caller.tenant_id).await?;
        let plugins = self.engine.store().plugins(caller.tenant_id).await?;
        Ok(pb::Settings {
            auto_enrichment: settings.auto_enrichment,
            profiling_allowed: settings.profiling_allowed,
            plugins: plugins.into_iter().map(|p| (p.name, p.enabled)).collect(),
            updated_at: settings.updated_at_opt.map(to_timestamp),
            updated_by: settings.updated_by,
        })
    }
}

#[tonic::async_trait]
impl EnrichmentService for EnrichmentGrpc {
    async fn install_plugin(&self, request: Request<pb::InstallPluginRequest>) -> Result<Response<pb::Plugin>, Status> {
        let caller = caller(&request, &[Permission::EnrichmentAdmin])?;
        let req = request.into_inner();
        let row = self
            .engine
            .install(caller.tenant_id, &stamp(&caller, "InstallPlugin"), &req.manifest, &req.component, req.enabled)
            .await?;
        tracing::info!(tenant_id = %caller.tenant_id, plugin = %row.name, version = %row.version, "plugin installed");
        Ok(Response::new(plugin_to_proto(row.into())))
    }

    async fn list_plugins(
        &self,
        request: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        let caller = caller(&request, &[Permission::EnrichmentAdmin, Permission::ContactsRead])?;
        let plugins = self.engine.store().plugins(caller.tenant_id).await?;
        Ok(Response::new(pb::ListPluginsResponse { plugins: plugins.into_iter().map(plugin_to_proto).collect() }))
    }

    async fn get_settings(&self, request: Request<pb::GetSettingsRequest>) -> Result<Response<pb::Settings>, Status> {
        let caller = caller(&request, &[Permission::EnrichmentAdmin, Permission::ContactsRead])?;
        Ok(Response::new(self.settings_proto(&caller).await?))
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::Settings>, Status> {
        let caller = caller(&request, &[Permission::EnrichmentAdmin])?;
        let req = request.into_inner();
        let patch = SettingsPatch {
            auto_enrichment_opt: req.auto_enrichment,
            profiling_allowed_opt: req.profiling_allowed,
            plugins: req.plugins.into_iter().collect::<BTreeMap<_, _>>(),
        };
        self.engine.store().update_settings(caller.tenant_id, &stamp(&caller, "UpdateSettings"), patch).await?;
        tracing::info!(tenant_id = %caller.tenant_id, "enrichment settings changed");
        Ok(Response::new(self.settings_proto(&caller).await?))
    }

    async fn enrich_contact(
        &self,
        request: Request<pb::EnrichContactRequest>,
    ) -> Result<Response<pb::EnrichContactResponse>, Status> {
        let caller = caller(&request, &[Permission::ContactsWrite])?;
        let id = parse_id("contact_id", &request.get_ref().contact_id)?;
        let runs =
            self.engine.enrich_as(caller.tenant_id, id, Trigger::Manual, &stamp(&caller, "EnrichContact")).await?;
        Ok(Response::new(pb::EnrichContactResponse { runs: runs.iter().map(run_to_proto).collect() }))
    }

    async fn list_runs(&self, request: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsResponse>, Status> {
        let caller = caller(&request, &[Permission::ContactsRead, Permission::EnrichmentAdmin])?;
        let req = request.into_inner();
        let contact_opt = if req.contact_id.is_empty() { None } else { Some(parse_id("contact_id", &req.contact_id)?) };
        let limit = match req.limit {
            0 => 50,
            n @ 1..=500 => n,
            _ => return Err(ServiceError::invalid_field("limit", "must be between 1 and 500").into()),
        };
        let runs = self.engine.store().runs(caller.tenant_id, contact_opt, limit as u64).await?;
        Ok(Response::new(pb::ListRunsResponse { runs: runs.iter().map(run_to_proto).collect() }))
    }

    async fn export_subject(
        &self,
        request: Request<pb_common::ExportSubjectRequest>,
    ) -> Result<Response<pb_common::ExportSubjectResponse>, Status> {
        let caller = caller(&request, &[Permission::ContactsExport, Permission::DsarManage])?;
        let id = parse_id("subject_id", &request.get_ref().subject_id)?;
        let runs = self.engine.store().export_subject(caller.tenant_id, id).await?;
        // Art. 15(1)(c), (h): which plugins processed the person, for what, and whether they
        // profile: the manifest facts of every plugin that ran on them.
        let ran: std::collections::BTreeSet<&str> = runs.iter().map(|r| r.plugin.as_str()).collect();
        let plugins: Vec<serde_json::Value> = self
            .engine
            .store()
            .plugins(caller.tenant_id)
            .await?
            .into_iter()
            .filter(|p| ran.contains(p.name.as_str()))
            .map(plugin_to_proto)
            .map(|p| {
                serde_json::json!({
                    "name": p.name, "version": p.version, "reads": p.reads, "writes": p.writes,
                    "categories": p.categories, "purposes": p.purposes, "profiling": p.profiling,
                    "hosts": p.hosts,
                })
            })
            .collect();
        let runs_json: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id, "plugin": r.plugin, "version": r.version, "trigger": r.trigger,
                    "outcome": r.outcome, "reason": r.reason, "fields_read": r.fields_read,
                    "fields_written": r.fields_written, "at": r.at,
                })
            })
            .collect();
        let doc = serde_json::json!({ "plugins": plugins, "runs": runs_json });
        Ok(Response::new(pb_common::ExportSubjectResponse {
            service: crate::SERVICE_NAME.to_string(),
            schema_version: crate::EXPORT_SCHEMA_VERSION,
            document_json: serde_json::to_vec(&doc).map_err(|_| ServiceError::internal("export serialisation"))?,
            record_count: runs.len() as u64,
        }))
    }

    async fn purge_expired(
        &self,
        request: Request<pb_common::PurgeExpiredRequest>,
    ) -> Result<Response<pb_common::PurgeExpiredResponse>, Status> {
        let caller = caller(&request, &[Permission::DsarManage])?;
        let req = request.into_inner();
        let before = carnet_kit::grpc::purge_cutoff(&req)?;
        let purged = self.engine.store().purge_expired(caller.tenant_id, &req.record_type, before, req.dry_run).await?;
        tracing::info!(tenant_id = %caller.tenant_id, record_type = %req.record_type, purged, dry_run = req.dry_run, "retention purge");
        Ok(Response::new(pb_common::PurgeExpiredResponse {
            service: crate::SERVICE_NAME.to_string(),
            record_type: req.record_type,
            purged,
        }))
    }

    async fn erase_subject(
        &self,
        request: Request<pb_common::EraseSubjectRequest>,
    ) -> Result<Response<pb_common::EraseSubjectResponse>, Status> {
        let caller = caller(&request, &[Permission::DsarManage])?;
        let req = request.into_inner();
        let id = parse_id("subject_id", &req.subject_id)?;
        let request_opt = Some(req.request_id.as_str()).filter(|r| !r.is_empty());
        let removed = self.engine.store().erase(caller.tenant_id, id, request_opt).await?;
        tracing::info!(tenant_id = %caller.tenant_id, contact_id = %id, removed, "enrichment data erased");
        Ok(Response::new(pb_common::EraseSubjectResponse {
            service: crate::SERVICE_NAME.to_string(),
            removed: [("enrichment_runs".to_string(), removed)].into(),
        }))
    }
}
