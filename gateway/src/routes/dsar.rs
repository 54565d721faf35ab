//! `/v1/dsar…`, `/v1/legal-holds…` and `/v1/erasure-ledger`: REST over
//! `carnet.dsar.v1.DsarService`. Every route needs `dsar:manage`.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use carnet_kit::Permission;
use carnet_kit::grpc::from_timestamp;
use carnet_proto::dsar::v1 as pb;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery, path_id};

fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| from_timestamp("at", &t).ok())
}

/// A data subject request. `kind`: `access`, `erasure`, `rectification`, `restriction`,
/// `objection`; the subject by `contact_id` or `email`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DsarBody {
    pub kind: String,
    pub contact_id: Option<String>,
    pub email: Option<String>,
    /// How the requester's identity was verified; default: attested by the caller.
    pub verification: Option<String>,
    /// Rectification: the new values by field key.
    #[serde(default)]
    pub changes: BTreeMap<String, String>,
    /// Restriction / objection: `true` (default) sets the flag, `false` lifts it.
    pub active: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub service: String,
    /// `pending`, `confirmed`.
    pub status: String,
    pub attempts: u32,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub records: HashMap<String, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DsarView {
    pub id: String,
    pub kind: String,
    pub contact_id: String,
    /// `received`, `in_progress`, `completed`, `rejected`.
    pub status: String,
    pub received_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub days_left: i64,
    pub overdue: bool,
    pub extended: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub extension_reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rejection_reason: String,
    pub verification: String,
    pub completed_at: Option<DateTime<Utc>>,
    pub tasks: Vec<TaskView>,
    /// Rectification, restriction, objection: the services told of the change (Art. 19).
    pub recipients: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_expires_at: Option<DateTime<Utc>>,
}

fn view(r: pb::DsarRequest) -> DsarView {
    let due_at = time(r.due_at);
    DsarView {
        id: r.id,
        kind: r.kind,
        contact_id: r.contact_id,
        status: r.status,
        received_at: time(r.received_at),
        days_left: due_at.map(|d| (d - Utc::now()).num_days()).unwrap_or_default(),
        due_at,
        overdue: r.overdue,
        extended: r.extended,
        extension_reason: r.extension_reason,
        rejection_reason: r.rejection_reason,
        verification: r.verification,
        completed_at: time(r.completed_at),
        tasks: r
            .tasks
            .into_iter()
            .map(|t| TaskView {
                service: t.service,
                status: t.status,
                attempts: t.attempts,
                confirmed_at: time(t.confirmed_at),
                records: t.records,
            })
            .collect(),
        recipients: r.recipients,
        export_expires_at: time(r.export_expires_at),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DsarList {
    pub requests: Vec<DsarView>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub open: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    pub reason: String,
    /// 1 or 2 (default 2).
    pub months: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    /// What the requester is told (Art. 12(4)).
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    pub contact_id: String,
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiftBody {
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldQuery {
    pub contact_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldView {
    pub id: String,
    pub contact_id: String,
    pub reason: String,
    pub placed_by: String,
    pub placed_at: Option<DateTime<Utc>>,
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifted_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub lift_reason: String,
}

fn hold_view(h: pb::LegalHold) -> HoldView {
    HoldView {
        id: h.id,
        contact_id: h.contact_id,
        reason: h.reason,
        placed_by: h.placed_by,
        placed_at: time(h.placed_at),
        active: h.lifted_at.is_none(),
        lifted_at: time(h.lifted_at),
        lift_reason: h.lift_reason,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldList {
    pub holds: Vec<HoldView>,
}

/// One erasure as the ledger proves it: a pseudonym, never the person.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerView {
    pub request_id: String,
    pub subject_pseudonym: String,
    pub participants: Vec<String>,
    pub removed: HashMap<String, u64>,
    pub requested_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerList {
    pub entries: Vec<LedgerView>,
}

/// Opens a request; the deadline is one calendar month from receipt (Art. 12(3)).
#[utoipa::path(post, path = "/v1/dsar", tag = "dsar", request_body = DsarBody,
    responses((status = 201, body = DsarView), (status = "4XX", body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<DsarBody>,
) -> Result<(StatusCode, Json<DsarView>), ApiError> {
    auth.require(Permission::DsarManage)?;
    let req = pb::CreateRequestRequest {
        kind: body.kind,
        contact_id: body.contact_id.unwrap_or_default(),
        email: body.email.unwrap_or_default(),
        verification: body.verification.unwrap_or_default(),
        changes: body.changes.into_iter().collect(),
        active: body.active,
    };
    let r = state.dsar(&auth)?.create_request(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(view(r))))
}

/// The queue: open requests (`?open=true`) or all, overdue first.
#[utoipa::path(get, path = "/v1/dsar", tag = "dsar", params(("open" = Option<bool>, Query)),
    responses((status = 200, body = DsarList), (status = "4XX", body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<DsarList>, ApiError> {
    auth.require(Permission::DsarManage)?;
    let r = state
        .dsar(&auth)?
        .list_requests(pb::ListRequestsRequest { open_only: q.open.unwrap_or(false) })
        .await?
        .into_inner();
    Ok(Json(DsarList { requests: r.requests.into_iter().map(view).collect() }))
}

/// A request with each participant's confirmation.
#[utoipa::path(get, path = "/v1/dsar/{id}", tag = "dsar", params(("id" = String, Path)),
    responses((status = 200, body = DsarView), (status = "4XX", body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<DsarView>, ApiError> {
    auth.require(Permission::DsarManage)?;
    path_id("id", &id)?;
    let r = state.dsar(&auth)?.get_request(pb::GetRequestRequest { id }).await?.into_inner();
    Ok(Json(view(r)))
}

/// The access document (one machine-readable JSON file), while it has not expired.
#[utoipa::path(get, path = "/v1/dsar/{id}/export", tag = "dsar", params(("id" = String, Path)),
    responses((status = 200, content_type = "application/json"), (status = "4XX", body = Problem)))]
pub async fn export(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Response, ApiError> {
    auth.require(Permission::DsarManage)?;
    path_id("id", &id)?;
    let doc = state.dsar(&auth)?.download_export(pb::DownloadExportRequest { id: id.clone() }).await?.into_inner();
    let disposition = format!("attachment; filename=\"dsar-{id}.json\"");
    Ok((
        [(header::CONTENT_TYPE, "application/json".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        doc.document_json,
    )
        .into_response())
}

/// Extends the deadline once, by up to two months, with a reason.
#[utoipa::path(post, path = "/v1/dsar/{id}/extend", tag = "dsar", params(("id" = String, Path)), request_body = ExtendBody,
    responses((status = 200, body = DsarView), (status = "4XX", body = Problem)))]
pub async fn extend(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ExtendBody>,
) -> Result<Json<DsarView>, ApiError> {
    auth.require(Permission::DsarManage)?;
    path_id("id", &id)?;
    let req = pb::ExtendRequest { id, reason: body.reason, months: body.months.unwrap_or(2) };
    Ok(Json(view(state.dsar(&auth)?.extend(req).await?.into_inner())))
}

/// Rejects an open request with the reason the requester is told.
#[utoipa::path(post, path = "/v1/dsar/{id}/reject", tag = "dsar", params(("id" = String, Path)), request_body = RejectBody,
    responses((status = 200, body = DsarView), (status = "4XX", body = Problem)))]
pub async fn reject(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RejectBody>,
) -> Result<Json<DsarView>, ApiError> {
    auth.require(Permission::DsarManage)?;
    path_id("id", &id)?;
    let req = pb::RejectRequest { id, reason: body.reason };
    Ok(Json(view(state.dsar(&auth)?.reject(req).await?.into_inner())))
}

/// Places a legal hold: erasure of the contact is refused until it is lifted.
#[utoipa::path(post, path = "/v1/legal-holds", tag = "dsar", request_body = HoldBody,
    responses((status = 201, body = HoldView), (status = "4XX", body = Problem)))]
pub async fn place_hold(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<HoldBody>,
) -> Result<(StatusCode, Json<HoldView>), ApiError> {
    auth.require(Permission::DsarManage)?;
    let req = pb::PlaceHoldRequest { contact_id: body.contact_id, reason: body.reason };
    Ok((StatusCode::CREATED, Json(hold_view(state.dsar(&auth)?.place_hold(req).await?.into_inner()))))
}

#[utoipa::path(get, path = "/v1/legal-holds", tag = "dsar", params(("contact_id" = Option<String>, Query)),
    responses((status = 200, body = HoldList), (status = "4XX", body = Problem)))]
pub async fn list_holds(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<HoldQuery>,
) -> Result<Json<HoldList>, ApiError> {
    auth.require(Permission::DsarManage)?;
    let req = pb::ListHoldsRequest { contact_id: q.contact_id.unwrap_or_default() };
    let r = state.dsar(&auth)?.list_holds(req).await?.into_inner();
    Ok(Json(HoldList { holds: r.holds.into_iter().map(hold_view).collect() }))
}

/// Lifts a legal hold, with a reason.
#[utoipa::path(post, path = "/v1/legal-holds/{id}/lift", tag = "dsar", params(("id" = String, Path)), request_body = LiftBody,
    responses((status = 200, body = HoldView), (status = "4XX", body = Problem)))]
pub async fn lift_hold(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<LiftBody>,
) -> Result<Json<HoldView>, ApiError> {
    auth.require(Permission::DsarManage)?;
    path_id("id", &id)?;
    let r = state.dsar(&auth)?.lift_hold(pb::LiftHoldRequest { id, reason: body.reason }).await?.into_inner();
    Ok(Json(hold_view(r)))
}

/// The erasure ledger.
#[utoipa::path(get, path = "/v1/erasure-ledger", tag = "dsar",
    responses((status = 200, body = LedgerList), (status = "4XX", body = Problem)))]
pub async fn ledger(State(state): State<AppState>, auth: Auth) -> Result<Json<LedgerList>, ApiError> {
    auth.require(Permission::DsarManage)?;
    let r = state.dsar(&auth)?.list_ledger(pb::ListLedgerRequest {}).await?.into_inner();
    Ok(Json(LedgerList {
        entries: r
            .entries
            .into_iter()
            .map(|e| LedgerView {
                request_id: e.request_id,
                subject_pseudonym: e.subject_pseudonym,
                participants: e.participants,
                removed: e.removed,
                requested_at: time(e.requested_at),
                completed_at: time(e.completed_at),
            })
            .collect(),
    }))
}
