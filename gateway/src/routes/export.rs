//! `GET /v1/contacts/export`: the bulk export of the tenant's contacts as CSV or JSON lines
//! (docs/export.md), streamed from `ContactsService.ExportContacts` without buffering it.
//! Needs `contacts:export`.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::Deserialize;

use carnet_kit::{ErrorCode, Permission};
use carnet_proto::contacts::v1 as pb;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;

/// The response header naming the export: the `record_id` of its audit entry.
pub const EXPORT_ID_HEADER: &str = "x-carnet-export-id";

/// Largest chunk accepted from the contacts service (it sends about 1 MiB at most).
const MAX_CHUNK_BYTES: usize = 16 << 20;

/// The query of `GET /v1/contacts/export`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    pub format: Option<String>,
    /// Comma-separated column keys.
    pub fields: Option<String>,
}

/// Every contact of the tenant as CSV (RFC 4180, a header row, formulas neutralised) or JSON
/// lines, in id order; restricted contacts and erased people's rows are left out. Audited once.
#[utoipa::path(get, path = "/v1/contacts/export", tag = "contacts",
    params(
        ("format" = String, Query, description = "`csv` or `jsonl`"),
        ("fields" = Option<String>, Query, description = "comma-separated column keys, in the order wanted (default: every column)"),
    ),
    responses(
        (status = 200, description = "the export, streamed; the `x-carnet-export-id` header names its audit entry",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = "4XX", body = Problem),
    ))]
pub async fn export_contacts(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    auth.require(Permission::ContactsExport)?;
    let fields: Vec<String> = match q.fields.as_deref() {
        None => Vec::new(),
        Some(list) => list.split(',').map(|k| k.trim().to_string()).collect(),
    };
    let format = q.format.unwrap_or_default();
    let req = pb::ExportContactsRequest { format: format.clone(), fields };
    let mut chunks =
        state.contacts(&auth).max_decoding_message_size(MAX_CHUNK_BYTES).export_contacts(req).await?.into_inner();
    // The first chunk names the export; waiting for it turns a failure at the start into an
    // error response rather than a cut-off download.
    let first = chunks
        .next()
        .await
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the export ended before it started"))??;
    let (content_type, extension) = match format.as_str() {
        "csv" => ("text/csv; charset=utf-8", "csv"),
        _ => ("application/x-ndjson", "jsonl"),
    };
    let date = chrono::Utc::now().format("%Y%m%d");
    let disposition = format!("attachment; filename=\"contacts-{}-{date}.{extension}\"", auth.0.tenant_id);
    tracing::info!(tenant_id = %auth.0.tenant_id, export_id = %first.export_id, "bulk export streaming");
    // A failure later on cuts the body short: the client sees an incomplete download, never a
    // file that looks whole.
    let body = Body::from_stream(chunks.map(|chunk| chunk.map(|c| Bytes::from(c.data))));
    let mut response =
        ([(header::CONTENT_TYPE, content_type.to_string()), (header::CONTENT_DISPOSITION, disposition)], body)
            .into_response();
    if let Ok(value) = HeaderValue::from_str(&first.export_id) {
        response.headers_mut().insert(EXPORT_ID_HEADER, value);
    }
    Ok(response)
}
