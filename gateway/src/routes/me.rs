//! `GET /v1/me`: who the credential is and what it may do. The console reads it to decide which
//! controls to render; the API still checks every call on its own.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::error::{ApiError, Problem};

/// The caller behind a credential: ids and permissions, never a name or an address.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    pub tenant_id: String,
    /// `key:<id>` for an API key, `oidc:<pseudonym>` for an OIDC token.
    pub principal: String,
    /// The permissions the credential's role (or roles) grant, as in docs/roles.md.
    pub permissions: Vec<String>,
}

/// Describes the calling credential. Any valid credential may ask.
#[utoipa::path(get, path = "/v1/me", tag = "keys",
    responses((status = 200, body = MeView), (status = "4XX", body = Problem)))]
pub async fn me(auth: Auth) -> Result<Json<MeView>, ApiError> {
    let caller = auth.0;
    Ok(Json(MeView {
        tenant_id: caller.tenant_id.to_string(),
        principal: caller.principal,
        permissions: caller.permissions.iter().map(|p| p.as_str().to_string()).collect(),
    }))
}
