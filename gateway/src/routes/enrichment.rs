//! `/v1/plugins`, `/v1/enrichment/…` and `/v1/contacts/{id}/enrich…`: REST over
//! `carnet.enrichment.v1.EnrichmentService`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use carnet_kit::Permission;
use carnet_kit::grpc::from_timestamp;
use carnet_proto::enrichment::v1 as pb;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery, path_id};

fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| from_timestamp("at", &t).ok())
}

/// A plugin to install: its manifest (the TOML text of `carnet-plugin.toml`) and its component
/// (base64 of the `.wasm`: a component, or the core module `cargo build` produces).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallBody {
    pub manifest: String,
    pub component: String,
    /// Whether it runs once installed; a new plugin is off unless this is `true`, an upgrade
    /// keeps its state.
    pub enabled: Option<bool>,
}

/// An installed plugin, its manifest in plain terms.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub api_version: String,
    /// The fields it is given; nothing else reaches it.
    pub reads: Vec<String>,
    /// The fields it may write.
    pub writes: Vec<String>,
    pub categories: Vec<String>,
    pub purposes: Vec<String>,
    /// Whether it profiles people (Art. 4(4)).
    pub profiling: bool,
    /// The hosts it may call.
    pub hosts: Vec<String>,
    pub enabled: bool,
    pub sha256: String,
    pub installed_at: Option<DateTime<Utc>>,
    pub installed_by: String,
}

fn plugin_view(p: pb::Plugin) -> PluginView {
    PluginView {
        name: p.name,
        version: p.version,
        api_version: p.api_version,
        reads: p.reads,
        writes: p.writes,
        categories: p.categories,
        purposes: p.purposes,
        profiling: p.profiling,
        hosts: p.hosts,
        enabled: p.enabled,
        sha256: p.sha256,
        installed_at: time(p.installed_at),
        installed_by: p.installed_by,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginView>,
}

/// The tenant's switches.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsView {
    /// Off: nothing runs on its own (on-demand runs still do).
    pub auto_enrichment: bool,
    /// Off: no profiling plugin runs at all.
    pub profiling_allowed: bool,
    /// Per-plugin enable, by name.
    pub plugins: BTreeMap<String, bool>,
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub updated_by: String,
}

fn settings_view(s: pb::Settings) -> SettingsView {
    SettingsView {
        auto_enrichment: s.auto_enrichment,
        profiling_allowed: s.profiling_allowed,
        plugins: s.plugins.into_iter().collect(),
        updated_at: time(s.updated_at),
        updated_by: s.updated_by,
    }
}

/// A change of the switches: what is left out keeps its value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    pub auto_enrichment: Option<bool>,
    pub profiling_allowed: Option<bool>,
    #[serde(default)]
    pub plugins: BTreeMap<String, bool>,
}

/// One plugin run on one contact: keys and outcome, never values.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub contact_id: String,
    pub plugin: String,
    pub version: String,
    /// `auto` or `manual`.
    pub trigger: String,
    /// `written`, `unchanged`, `skipped`, `declined`, `failed`.
    pub outcome: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub fields_read: Vec<String>,
    pub fields_written: Vec<String>,
    pub duration_us: u64,
    pub at: Option<DateTime<Utc>>,
}

fn run_view(r: pb::Run) -> RunView {
    RunView {
        id: r.id,
        contact_id: r.contact_id,
        plugin: r.plugin,
        version: r.version,
        trigger: r.trigger,
        outcome: r.outcome,
        reason: r.reason,
        fields_read: r.fields_read,
        fields_written: r.fields_written,
        duration_us: r.duration_us,
        at: time(r.at),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunView>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    pub limit: Option<u32>,
}

/// Installs or upgrades a plugin (`enrichment:admin`).
#[utoipa::path(post, path = "/v1/plugins", tag = "enrichment", request_body = InstallBody,
    responses((status = 201, body = PluginView), (status = "4XX", body = Problem)))]
pub async fn install(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<InstallBody>,
) -> Result<(axum::http::StatusCode, Json<PluginView>), ApiError> {
    auth.require(Permission::EnrichmentAdmin)?;
    let component = base64::engine::general_purpose::STANDARD
        .decode(body.component.trim())
        .map_err(|_| ApiError::invalid_field("component", "must be the base64 of a .wasm file"))?;
    let req = pb::InstallPluginRequest { manifest: body.manifest, component, enabled: body.enabled };
    let plugin = state.enrichment(&auth)?.install_plugin(req).await?.into_inner();
    Ok((axum::http::StatusCode::CREATED, Json(plugin_view(plugin))))
}

/// The tenant's plugins.
#[utoipa::path(get, path = "/v1/plugins", tag = "enrichment",
    responses((status = 200, body = PluginList), (status = "4XX", body = Problem)))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<Json<PluginList>, ApiError> {
    auth.require_any(&[Permission::EnrichmentAdmin, Permission::ContactsRead])?;
    let r = state.enrichment(&auth)?.list_plugins(pb::ListPluginsRequest {}).await?.into_inner();
    Ok(Json(PluginList { plugins: r.plugins.into_iter().map(plugin_view).collect() }))
}

/// The tenant switches.
#[utoipa::path(get, path = "/v1/enrichment/settings", tag = "enrichment",
    responses((status = 200, body = SettingsView), (status = "4XX", body = Problem)))]
pub async fn get_settings(State(state): State<AppState>, auth: Auth) -> Result<Json<SettingsView>, ApiError> {
    auth.require_any(&[Permission::EnrichmentAdmin, Permission::ContactsRead])?;
    let r = state.enrichment(&auth)?.get_settings(pb::GetSettingsRequest {}).await?.into_inner();
    Ok(Json(settings_view(r)))
}

/// Changes the tenant switches (`enrichment:admin`).
#[utoipa::path(put, path = "/v1/enrichment/settings", tag = "enrichment", request_body = SettingsBody,
    responses((status = 200, body = SettingsView), (status = "4XX", body = Problem)))]
pub async fn put_settings(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<SettingsBody>,
) -> Result<Json<SettingsView>, ApiError> {
    auth.require(Permission::EnrichmentAdmin)?;
    let req = pb::UpdateSettingsRequest {
        auto_enrichment: body.auto_enrichment,
        profiling_allowed: body.profiling_allowed,
        plugins: body.plugins.into_iter().collect(),
    };
    let r = state.enrichment(&auth)?.update_settings(req).await?.into_inner();
    Ok(Json(settings_view(r)))
}

/// Runs the enabled plugins on one contact now (`contacts:write`).
#[utoipa::path(post, path = "/v1/contacts/{id}/enrich", tag = "enrichment", params(("id" = String, Path)),
    responses((status = 200, body = RunList), (status = "4XX", body = Problem)))]
pub async fn enrich(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<RunList>, ApiError> {
    auth.require(Permission::ContactsWrite)?;
    path_id("id", &id)?;
    let r = state.enrichment(&auth)?.enrich_contact(pb::EnrichContactRequest { contact_id: id }).await?.into_inner();
    Ok(Json(RunList { runs: r.runs.into_iter().map(run_view).collect() }))
}

/// The enrichment runs on one contact, newest first.
#[utoipa::path(get, path = "/v1/contacts/{id}/enrichment-runs", tag = "enrichment", params(("id" = String, Path)),
    responses((status = 200, body = RunList), (status = "4XX", body = Problem)))]
pub async fn contact_runs(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> Result<Json<RunList>, ApiError> {
    auth.require(Permission::ContactsRead)?;
    path_id("id", &id)?;
    let req = pb::ListRunsRequest { contact_id: id, limit: query.limit.unwrap_or(0) };
    let r = state.enrichment(&auth)?.list_runs(req).await?.into_inner();
    Ok(Json(RunList { runs: r.runs.into_iter().map(run_view).collect() }))
}

/// The tenant's recent runs, newest first (`enrichment:admin`).
#[utoipa::path(get, path = "/v1/enrichment/runs", tag = "enrichment",
    responses((status = 200, body = RunList), (status = "4XX", body = Problem)))]
pub async fn runs(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> Result<Json<RunList>, ApiError> {
    auth.require(Permission::EnrichmentAdmin)?;
    let req = pb::ListRunsRequest { contact_id: String::new(), limit: query.limit.unwrap_or(0) };
    let r = state.enrichment(&auth)?.list_runs(req).await?.into_inner();
    Ok(Json(RunList { runs: r.runs.into_iter().map(run_view).collect() }))
}
