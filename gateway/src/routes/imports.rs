//! `/v1/imports…`: bulk import of contacts (docs/import.md). `POST /v1/imports` creates the job
//! with its terms; `PUT /v1/imports/{id}/data` streams the file into it (again from the start to
//! resume: the lines already processed are skipped); `GET /v1/imports/{id}` is its progress and
//! `GET /v1/imports/{id}/report` the CSV report. Creating and uploading need `contacts:write`;
//! reading needs `contacts:read`.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use carnet_kit::grpc::{from_timestamp, to_timestamp};
use carnet_kit::{ErrorCode, Permission};
use carnet_proto::consent::v1 as pb_consent;
use carnet_proto::contacts::v1 as pb;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, path_id};

/// The route whose body is a whole file: no body limit, no request deadline.
pub const DATA_ROUTE: &str = "/v1/imports/{id}/data";

/// Bytes per chunk sent on to the contacts service.
const CHUNK: usize = 256 * 1024;

fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| from_timestamp("at", &t).ok())
}

/// Why the people of the import may be processed.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBody {
    /// Consent: when the people agreed.
    pub collected_at: Option<DateTime<Utc>>,
    /// Consent: where (a form, a fair's sign-up sheet).
    #[serde(default)]
    pub collected_where: String,
    /// Consent: the notice version of the purposes they were shown…
    #[serde(default)]
    pub notice_version: u32,
    /// …or the text itself.
    #[serde(default)]
    pub notice_text: String,
    /// Another basis: why it applies.
    #[serde(default)]
    pub justification: String,
}

/// An import's terms.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    pub file_name: String,
    /// `csv` or `jsonl`.
    pub format: String,
    /// Column → field key; a column mapped to "" is ignored. Empty: every column is the field
    /// of its name.
    #[serde(default)]
    pub mapping: BTreeMap<String, String>,
    /// `consent`, `contract`, `legal_obligation`, `vital_interests`, `public_task`,
    /// `legitimate_interests`.
    pub lawful_basis: String,
    /// The consent purposes the basis covers (required for `consent`).
    #[serde(default)]
    pub purposes: Vec<String>,
    #[serde(default)]
    pub evidence: EvidenceBody,
    /// `skip` (default), `update` or `fail`.
    #[serde(default)]
    pub on_duplicate: String,
    /// Needed to import people erased on request (audited).
    #[serde(default)]
    pub erasure_override_reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportView {
    pub id: String,
    /// `created`, `running` (arriving, or interrupted: upload again to resume), `completed`.
    pub status: String,
    pub file_name: String,
    pub format: String,
    pub mapping: BTreeMap<String, String>,
    pub lawful_basis: String,
    pub purposes: Vec<String>,
    pub evidence: EvidenceBody,
    pub on_duplicate: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub erasure_override_reason: String,
    pub actor: String,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Progress: the last line processed and the bytes up to it.
    pub lines_done: u64,
    pub bytes_done: u64,
    pub created: u64,
    pub updated: u64,
    pub skipped: u64,
    pub failed: u64,
}

fn view(i: pb::Import) -> ImportView {
    let e = i.evidence.unwrap_or_default();
    ImportView {
        id: i.id,
        status: i.status,
        file_name: i.file_name,
        format: i.format,
        mapping: i.mapping.into_iter().collect(),
        lawful_basis: i.lawful_basis,
        purposes: i.purposes,
        evidence: EvidenceBody {
            collected_at: time(e.collected_at),
            collected_where: e.collected_where,
            notice_version: e.notice_version,
            notice_text: e.notice_text,
            justification: e.justification,
        },
        on_duplicate: i.on_duplicate,
        erasure_override_reason: i.erasure_override_reason,
        actor: i.actor,
        created_at: time(i.created_at),
        updated_at: time(i.updated_at),
        finished_at: time(i.finished_at),
        lines_done: i.lines_done,
        bytes_done: i.bytes_done,
        created: i.created,
        updated: i.updated,
        skipped: i.skipped,
        failed: i.failed,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportList {
    pub imports: Vec<ImportView>,
}

#[utoipa::path(post, path = "/v1/imports", tag = "contacts", request_body = ImportBody,
    responses((status = 201, body = ImportView), (status = "4XX", body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<ImportBody>,
) -> Result<(StatusCode, Json<ImportView>), ApiError> {
    auth.require(Permission::ContactsWrite)?;
    // The purposes and the notice version must exist: the consents follow from them.
    for (i, key) in body.purposes.iter().enumerate() {
        let field = format!("purposes[{i}]");
        let purpose = match state.consent(&auth).get_purpose(pb_consent::GetPurposeRequest { key: key.clone() }).await {
            Ok(p) => p.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(ApiError::invalid_field(&field, format!("`{key}` is not a purpose of this tenant")));
            }
            Err(s) => return Err(s.into()),
        };
        if body.evidence.notice_version > purpose.current_version {
            return Err(ApiError::invalid_field(
                "evidence.notice_version",
                format!("purpose `{key}` has no notice version {}", body.evidence.notice_version),
            ));
        }
    }
    let e = body.evidence;
    let req = pb::CreateImportRequest {
        file_name: body.file_name,
        format: body.format,
        mapping: body.mapping.into_iter().collect(),
        lawful_basis: body.lawful_basis,
        purposes: body.purposes,
        evidence: Some(pb::ImportEvidence {
            collected_at: e.collected_at.map(to_timestamp),
            collected_where: e.collected_where,
            notice_version: e.notice_version,
            notice_text: e.notice_text,
            justification: e.justification,
        }),
        on_duplicate: body.on_duplicate,
        erasure_override_reason: body.erasure_override_reason,
    };
    let created = state.contacts(&auth).create_import(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(view(created))))
}

/// Streams the file into the import. A body that ends normally completes the import; a broken
/// one leaves it `running`, to be resumed by uploading the same file again.
#[utoipa::path(put, path = "/v1/imports/{id}/data", tag = "contacts", params(("id" = String, Path)),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = ImportView), (status = "4XX", body = Problem)))]
pub async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<ImportView>, ApiError> {
    auth.require(Permission::ContactsWrite)?;
    path_id("id", &id)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportChunk>(4);
    let first = pb::ImportChunk { import_id: id.clone(), data: Vec::new(), last: false };
    tx.send(first).await.map_err(|_| ApiError::new(ErrorCode::Internal, "upload channel closed"))?;
    // Forward the body in chunks; on a broken body stop without `last`.
    let pump = tokio::spawn(async move {
        let mut frames = body.into_data_stream();
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        loop {
            match frames.next().await {
                Some(Ok(bytes)) => {
                    buf.extend_from_slice(&bytes);
                    if buf.len() >= CHUNK {
                        let chunk =
                            pb::ImportChunk { import_id: String::new(), data: std::mem::take(&mut buf), last: false };
                        if tx.send(chunk).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Err(_)) => {
                    // The client went away: what arrived whole is kept, the import stays running.
                    let chunk =
                        pb::ImportChunk { import_id: String::new(), data: std::mem::take(&mut buf), last: false };
                    let _ = tx.send(chunk).await;
                    return;
                }
                None => {
                    let _ = tx.send(pb::ImportChunk { import_id: String::new(), data: buf, last: true }).await;
                    return;
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let res = state.contacts(&auth).upload_import(stream).await;
    pump.abort();
    Ok(Json(view(res?.into_inner())))
}

#[utoipa::path(get, path = "/v1/imports/{id}", tag = "contacts", params(("id" = String, Path)),
    responses((status = 200, body = ImportView), (status = "4XX", body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<ImportView>, ApiError> {
    auth.require(Permission::ContactsRead)?;
    path_id("id", &id)?;
    let i = state.contacts(&auth).get_import(pb::GetImportRequest { id }).await?.into_inner();
    Ok(Json(view(i)))
}

#[utoipa::path(get, path = "/v1/imports", tag = "contacts",
    responses((status = 200, body = ImportList), (status = "4XX", body = Problem)))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<Json<ImportList>, ApiError> {
    auth.require(Permission::ContactsRead)?;
    let r = state.contacts(&auth).list_imports(pb::ListImportsRequest {}).await?.into_inner();
    Ok(Json(ImportList { imports: r.imports.into_iter().map(view).collect() }))
}

/// The report: `line,outcome,reason,contact_id`, one line per row of the file, in line order.
#[utoipa::path(get, path = "/v1/imports/{id}/report", tag = "contacts", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/csv"), (status = "4XX", body = Problem)))]
pub async fn report(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Response, ApiError> {
    auth.require(Permission::ContactsRead)?;
    path_id("id", &id)?;
    let chunks = state.contacts(&auth).import_report(pb::ImportReportRequest { id: id.clone() }).await?.into_inner();
    let body = Body::from_stream(chunks.map(|c| c.map(|c| Bytes::from(c.csv))));
    let disposition = format!("attachment; filename=\"import-{id}-report.csv\"");
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        body,
    )
        .into_response())
}
