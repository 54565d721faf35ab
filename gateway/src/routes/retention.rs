//! `/v1/retention…`: the tenant's retention policies, a run on demand (or a dry run), and the
//! record of purges, over `carnet.dsar.v1.DsarService` (docs/retention.md). `dsar:manage`.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use carnet_kit::Permission;
use carnet_kit::grpc::from_timestamp;
use carnet_proto::dsar::v1 as pb;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery};

fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| from_timestamp("at", &t).ok())
}

/// One policy: records of `record_type` older than `days` go. `record_type`: `contacts`
/// (inactive for `days`; erased through an erasure request), `calls`, `messages`,
/// `enrichment_runs`, `dsar_artefacts`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    pub record_type: String,
    pub days: u32,
    /// `contacts` only: mail the person this many days before the deletion.
    #[serde(default)]
    pub warn_days: u32,
}

/// The tenant's retention settings (`PUT` replaces them all).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    #[serde(default)]
    pub policies: Vec<PolicyBody>,
    /// Erase a contact when consent was the only lawful basis and it is withdrawn for every purpose.
    #[serde(default)]
    pub erase_on_withdrawal: bool,
    /// The purpose the inactivity warning is mailed for; required when a policy warns.
    #[serde(default)]
    pub warning_purpose: String,
    /// `{deletion_date}` and `{days}` are filled in; empty: the default text.
    #[serde(default)]
    pub warning_subject: String,
    #[serde(default)]
    pub warning_body: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionView {
    pub policies: Vec<PolicyBody>,
    pub erase_on_withdrawal: bool,
    pub warning_purpose: String,
    pub warning_subject: String,
    pub warning_body: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub updated_by: String,
    pub updated_at: Option<DateTime<Utc>>,
}

fn view(r: pb::Retention) -> RetentionView {
    RetentionView {
        policies: r
            .policies
            .into_iter()
            .map(|p| PolicyBody { record_type: p.record_type, days: p.days, warn_days: p.warn_days })
            .collect(),
        erase_on_withdrawal: r.erase_on_withdrawal,
        warning_purpose: r.warning_purpose,
        warning_subject: r.warning_subject,
        warning_body: r.warning_body,
        updated_by: r.updated_by,
        updated_at: time(r.updated_at),
    }
}

/// The record of one purge (or, in a dry run's answer, what it would remove).
#[derive(Debug, Serialize, ToSchema)]
pub struct PurgeView {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub record_type: String,
    pub service: String,
    /// `schedule`, `manual`, `consent_withdrawn`.
    pub trigger: String,
    pub days: u32,
    pub cutoff: Option<DateTime<Utc>>,
    /// Records deleted; for `contacts`, erasure requests opened.
    pub purged: u64,
    pub warned: u64,
    /// Contacts kept by a legal hold.
    pub skipped: u64,
    pub request_ids: Vec<String>,
    pub actor: String,
    pub ran_at: Option<DateTime<Utc>>,
}

fn purge_view(p: pb::Purge) -> PurgeView {
    PurgeView {
        id: p.id,
        record_type: p.record_type,
        service: p.service,
        trigger: p.trigger,
        days: p.days,
        cutoff: time(p.cutoff),
        purged: p.purged,
        warned: p.warned,
        skipped: p.skipped,
        request_ids: p.request_ids,
        actor: p.actor,
        ran_at: time(p.ran_at),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PurgeList {
    pub purges: Vec<PurgeView>,
    /// True for a dry run: nothing was removed or recorded.
    pub dry_run: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    /// Count what the policies would remove; nothing is removed or recorded.
    pub dry_run: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeQuery {
    pub record_type: Option<String>,
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/retention", tag = "dsar",
    responses((status = 200, body = RetentionView), (status = "4XX", body = Problem)))]
pub async fn get(State(state): State<AppState>, auth: Auth) -> Result<Json<RetentionView>, ApiError> {
    auth.require(Permission::DsarManage)?;
    let r = state.dsar(&auth)?.get_retention(pb::GetRetentionRequest {}).await?.into_inner();
    Ok(Json(view(r)))
}

#[utoipa::path(put, path = "/v1/retention", tag = "dsar", request_body = RetentionBody,
    responses((status = 200, body = RetentionView), (status = "4XX", body = Problem)))]
pub async fn put(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<RetentionBody>,
) -> Result<Json<RetentionView>, ApiError> {
    auth.require(Permission::DsarManage)?;
    let retention = pb::Retention {
        policies: body
            .policies
            .into_iter()
            .map(|p| pb::RetentionPolicy { record_type: p.record_type, days: p.days, warn_days: p.warn_days })
            .collect(),
        erase_on_withdrawal: body.erase_on_withdrawal,
        warning_purpose: body.warning_purpose,
        warning_subject: body.warning_subject,
        warning_body: body.warning_body,
        ..pb::Retention::default()
    };
    let r =
        state.dsar(&auth)?.set_retention(pb::SetRetentionRequest { retention: Some(retention) }).await?.into_inner();
    Ok(Json(view(r)))
}

#[utoipa::path(post, path = "/v1/retention/run", tag = "dsar", params(("dry_run" = Option<bool>, Query)),
    responses((status = 200, body = PurgeList), (status = "4XX", body = Problem)))]
pub async fn run(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<RunQuery>,
) -> Result<Json<PurgeList>, ApiError> {
    auth.require(Permission::DsarManage)?;
    let dry_run = q.dry_run.unwrap_or(false);
    let r = state.dsar(&auth)?.run_retention(pb::RunRetentionRequest { dry_run }).await?.into_inner();
    Ok(Json(PurgeList { purges: r.purges.into_iter().map(purge_view).collect(), dry_run }))
}

#[utoipa::path(get, path = "/v1/retention/purges", tag = "dsar",
    params(("record_type" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = PurgeList), (status = "4XX", body = Problem)))]
pub async fn purges(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<PurgeQuery>,
) -> Result<Json<PurgeList>, ApiError> {
    auth.require(Permission::DsarManage)?;
    let req = pb::ListPurgesRequest { record_type: q.record_type.unwrap_or_default(), limit: q.limit.unwrap_or(0) };
    let r = state.dsar(&auth)?.list_purges(req).await?.into_inner();
    Ok(Json(PurgeList { purges: r.purges.into_iter().map(purge_view).collect(), dry_run: false }))
}
