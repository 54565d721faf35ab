//! `/v1/api-keys`: keys for the caller's tenant (`keys:manage`, i.e. owner and admin).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use carnet_kit::audit::Entry;
use carnet_kit::{ErrorCode, Permission};

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, path_id};
use crate::keys::KeyInfo;
use crate::roles::Role;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    /// `owner`, `admin`, `privacy_officer`, `sales`, `marketing` or `read_only`.
    pub role: String,
    #[serde(default)]
    pub label: String,
}

/// A new key: `api_key` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub id: String,
    pub api_key: String,
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub role: String,
    pub label: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

fn view(k: KeyInfo) -> KeyView {
    KeyView {
        id: k.id.to_string(),
        role: k.role.to_string(),
        label: k.label,
        created_by: k.created_by,
        created_at: k.created_at,
        revoked_at: k.revoked_at_opt,
    }
}

/// Creates a key for the caller's tenant. A caller cannot mint a key with a permission it
/// does not hold itself.
#[utoipa::path(post, path = "/v1/api-keys", tag = "keys", request_body = CreateKeyBody,
    responses((status = 201, body = CreatedKey), (status = "4XX", body = Problem)))]
pub async fn create_key(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateKeyBody>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    auth.require(Permission::KeysManage)?;
    let role: Role =
        body.role.parse().map_err(|e: String| ApiError::invalid_field("role", e.replace(&body.role, "…")))?;
    if let Some(missing) = role.permissions().iter().find(|p| !auth.0.has(**p)) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("a key with role {role} would hold {} which the caller lacks", missing.as_str()),
        ));
    }
    let stamp = Entry::stamp(&auth.0, "POST /v1/api-keys");
    let (id, key) = state.keys.create_key_as(auth.0.tenant_id, role, &body.label, &stamp).await?;
    tracing::info!(tenant_id = %auth.0.tenant_id, key_id = %id, %role, "api key created");
    Ok((StatusCode::CREATED, Json(CreatedKey { id: id.to_string(), api_key: key, role: role.to_string() })))
}

/// Lists the tenant's keys (never their secrets).
#[utoipa::path(get, path = "/v1/api-keys", tag = "keys",
    responses((status = 200, body = KeyList), (status = "4XX", body = Problem)))]
pub async fn list_keys(State(state): State<AppState>, auth: Auth) -> Result<Json<KeyList>, ApiError> {
    auth.require(Permission::KeysManage)?;
    let keys = state.keys.list_keys(auth.0.tenant_id).await?;
    Ok(Json(KeyList { keys: keys.into_iter().map(view).collect() }))
}

/// Revokes a key of the tenant; it is refused from the next request on.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = "4XX", body = Problem)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    auth.require(Permission::KeysManage)?;
    let id = path_id("id", &id)?;
    let stamp = Entry::stamp(&auth.0, "DELETE /v1/api-keys/{id}");
    let key = state.keys.revoke_key(auth.0.tenant_id, id, &stamp).await?;
    tracing::info!(tenant_id = %auth.0.tenant_id, key_id = %id, "api key revoked");
    Ok(Json(view(key)))
}
