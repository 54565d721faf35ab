//! `/v1/audit…`: the tenant's audit trail over `carnet.dsar.v1.DsarService` (docs/audit.md).
//! Every route needs `audit:read`.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use carnet_kit::Permission;
use carnet_kit::grpc::{from_timestamp, to_timestamp};
use carnet_proto::dsar::v1 as pb;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;

fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| from_timestamp("at", &t).ok())
}

/// The filters of `GET /v1/audit`; absent ones match everything.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    pub subject_id: Option<String>,
    pub record_id: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub record_type: Option<String>,
    pub service: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
    pub order: Option<String>,
}

/// One entry of the trail: ids, names and field keys, never values.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    pub seq: u64,
    pub event_id: String,
    pub occurred_at: Option<DateTime<Utc>>,
    pub recorded_at: Option<DateTime<Utc>>,
    /// `key:<id>`, `oidc:<pseudonym>`, `service:<name>`, `public:link`, …
    pub actor: String,
    pub action: String,
    pub record_type: String,
    pub record_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject_id: String,
    pub api: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    pub service: String,
    pub fields: Vec<String>,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntryView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The outcome of recomputing the chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerification {
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// The first entry that does not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_seq: Option<u64>,
    /// `hash_mismatch`, `prev_hash_mismatch` or `missing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last entry (when the chain holds): keep its hash outside Carnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
}

/// The range of `GET /v1/audit/export`, on the time each entry was chained.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

fn view(e: pb::AuditEntry) -> AuditEntryView {
    AuditEntryView {
        seq: e.seq,
        event_id: e.event_id,
        occurred_at: time(e.occurred_at),
        recorded_at: time(e.recorded_at),
        actor: e.actor,
        action: e.action,
        record_type: e.record_type,
        record_id: e.record_id,
        subject_id: e.subject_id,
        api: e.api,
        request_id: e.request_id,
        service: e.service,
        fields: e.fields,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

/// Who did what to which record, newest first (or in chain order with `order=seq`).
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(
        ("subject_id" = Option<String>, Query, description = "the contact the records belong to"),
        ("record_id" = Option<String>, Query),
        ("actor" = Option<String>, Query, description = "a principal, e.g. `key:<id>`"),
        ("action" = Option<String>, Query, description = "`view`, `update`, `export`, `erase`, …"),
        ("record_type" = Option<String>, Query),
        ("service" = Option<String>, Query),
        ("since" = Option<String>, Query, description = "RFC 3339; bounds when it happened"),
        ("until" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("cursor" = Option<String>, Query),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100"),
        ("order" = Option<String>, Query, description = "`newest` (default) or `seq`"),
    ),
    responses((status = 200, body = AuditPage), (status = "4XX", body = Problem)))]
pub async fn query(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    auth.require(Permission::AuditRead)?;
    let req = pb::QueryAuditRequest {
        subject_id: q.subject_id.unwrap_or_default(),
        record_id: q.record_id.unwrap_or_default(),
        actor: q.actor.unwrap_or_default(),
        action: q.action.unwrap_or_default(),
        record_type: q.record_type.unwrap_or_default(),
        service: q.service.unwrap_or_default(),
        since: q.since.map(to_timestamp),
        until: q.until.map(to_timestamp),
        cursor: q.cursor.unwrap_or_default(),
        limit: q.limit.unwrap_or_default(),
        order: q.order.unwrap_or_default(),
    };
    let r = state.dsar(&auth)?.query_audit(req).await?.into_inner();
    Ok(Json(AuditPage {
        entries: r.entries.into_iter().map(view).collect(),
        next_cursor: Some(r.next_cursor).filter(|c| !c.is_empty()),
    }))
}

/// Recomputes the tenant's hash chain and names the first entry that does not hold.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerification), (status = "4XX", body = Problem)))]
pub async fn verify(State(state): State<AppState>, auth: Auth) -> Result<Json<AuditVerification>, ApiError> {
    auth.require(Permission::AuditRead)?;
    let r = state.dsar(&auth)?.verify_audit(pb::VerifyAuditRequest {}).await?.into_inner();
    Ok(Json(AuditVerification {
        ok: r.ok,
        entries: r.entries,
        broken_seq: (!r.ok).then_some(r.broken_seq),
        reason: Some(r.reason).filter(|s| !s.is_empty()),
        head_seq: (r.ok && r.head_seq > 0).then_some(r.head_seq),
        head_hash: Some(r.head_hash).filter(|s| !s.is_empty()),
    }))
}

/// The chain (or the part chained in `[since, until)`) as JSON lines with the hashes, for a
/// regulator to re-verify offline (docs/audit.md). The export is itself audited.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit",
    params(("since" = Option<String>, Query), ("until" = Option<String>, Query)),
    responses((status = 200, content_type = "application/x-ndjson"), (status = "4XX", body = Problem)))]
pub async fn export(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    auth.require(Permission::AuditRead)?;
    let req = pb::ExportAuditRequest { since: q.since.map(to_timestamp), until: q.until.map(to_timestamp) };
    let chunks = state.dsar(&auth)?.export_audit(req).await?.into_inner();
    tracing::info!(tenant_id = %auth.0.tenant_id, "audit trail exported");
    let body = Body::from_stream(chunks.map(|chunk| chunk.map(|c| Bytes::from(c.ndjson))));
    let disposition = format!("attachment; filename=\"audit-{}.ndjson\"", auth.0.tenant_id);
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson".to_string()), (header::CONTENT_DISPOSITION, disposition)], body)
        .into_response())
}
