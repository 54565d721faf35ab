//! The console: a server-rendered web interface at `/console` for tenant admins, sales and
//! privacy officers (docs/console.md).
//!
//! It holds no data access of its own. Every page is rendered from answers of the gateway's
//! REST API, called in-process ([`api::Api`]) with the signed-in user's credential, so a page can
//! never show or change more than that credential may through the API. The credential rides in
//! a sealed cookie ([`session`]); forms carry the session's CSRF token; the roles decide which
//! controls are rendered, and the API checks again whatever is sent.

pub mod api;
pub mod assets;
pub mod campaigns;
pub mod consent;
pub mod contact_page;
pub mod contacts;
pub mod diff;
pub mod enrichment;
pub mod layout;
pub mod oidc;
pub mod privacy;
pub mod records;
pub mod session;
pub mod settings;

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use carnet_kit::Permission;

use crate::AppState;
use api::{Api, Failure};
use session::{Sealer, Session};

/// What console handlers share: the API router they call and the cookie sealer.
#[derive(Clone)]
pub struct ConsoleState {
    api: Router,
    sealer: Sealer,
    /// The provider sign-in, when `gateway.oidc` names its endpoints.
    oidc_opt: Option<oidc::OidcLogin>,
}

/// Builds the console's routes over `api`, the gateway's REST router.
pub fn router(state: &AppState, api: Router) -> Router {
    let oidc_opt = oidc::OidcLogin::from_config(&state.config.oidc);
    let console = ConsoleState { api, sealer: Sealer::new(&state.mesh_key()), oidc_opt };
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/oidc/start", get(oidc::start))
        .route("/console/oidc/callback", get(oidc::callback))
        .route("/console/assets/{file}", get(assets::serve))
        .merge(contacts::routes())
        .merge(campaigns::routes())
        .merge(privacy::routes())
        .merge(consent::routes())
        .merge(enrichment::routes())
        .merge(settings::routes())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// Pages are not cached, not framed, and load scripts and styles only from the binary.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    };
    set(
        headers,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; \
         frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(headers, "x-frame-options", "DENY");
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "referrer-policy", "same-origin");
    set(headers, "cache-control", "no-store");
    response
}

/// The permissions of the signed-in credential, as `GET /v1/me` tells them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Me {
    pub tenant_id: String,
    pub principal: String,
    pub permissions: BTreeSet<Permission>,
}

impl Me {
    pub fn can(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    pub fn can_any(&self, permissions: &[Permission]) -> bool {
        permissions.iter().any(|p| self.can(*p))
    }

    fn of(json: &serde_json::Value) -> Me {
        let permissions = json["permissions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| serde_json::from_value::<Permission>(p.clone()).ok())
            .collect();
        Me {
            tenant_id: json["tenant_id"].as_str().unwrap_or_default().to_string(),
            principal: json["principal"].as_str().unwrap_or_default().to_string(),
            permissions,
        }
    }
}

/// A signed-in request: the API as the user, who the user is, and the session (for its CSRF token).
pub struct Console {
    pub api: Api,
    pub me: Me,
    pub session: Session,
}

impl Console {
    /// Fails (answered `403`) unless the form carries this session's CSRF token.
    pub fn check_csrf(&self, form: &Form) -> Result<(), CsrfRefused> {
        if self.session.csrf_matches(form.get("_csrf")) { Ok(()) } else { Err(CsrfRefused) }
    }
}

/// A form without the session's CSRF token.
#[derive(Debug)]
pub struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, "the form was not served by this session: reload the page").into_response()
    }
}

/// Sends the browser to the sign-in page, dropping its cookie.
fn to_login(secure: bool) -> Response {
    let mut response = Redirect::to("/console/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(secure)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

pub fn is_https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl FromRequestParts<ConsoleState> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let secure = is_https(&parts.headers);
        let cookies = parts.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
        let Some(session) = session::cookie_value(cookies).and_then(|v| state.sealer.open(v, now())) else {
            return Err(to_login(secure));
        };
        let mut api = Api::new(state.api.clone(), session.credential.clone());
        if let Some(id) = parts.extensions.get::<crate::auth::RequestId>() {
            api = api.with_request_id(id.0.clone());
        }
        match api.get("/v1/me").await {
            Ok(me) => Ok(Console { api, me: Me::of(&me), session }),
            // A revoked key or an expired token: sign in again.
            Err(f) if f.status == 401 => Err(to_login(secure)),
            Err(f) => Err(layout::failure_page(&f)),
        }
    }
}

/// A submitted `application/x-www-form-urlencoded` body, pairs in order (checkbox lists repeat).
#[derive(Debug, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(body: &Bytes) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, trimmed; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.trim())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.trim().to_string()).collect()
    }

    pub fn checked(&self, name: &str) -> bool {
        !self.get(name).is_empty()
    }
}

/// `path` with a message shown on arrival (`ok` or `err`), tagged under `key` so the page shows
/// only messages the console itself put there, not text from a link someone else wrote.
fn with_flash(path: &str, kind: &str, text: &str, key: &[u8]) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    let flash = api::with_query("", &[(kind, text), ("tag", &session::tag(key, &format!("{kind}:{text}")))]);
    format!("{path}{sep}{}", flash.trim_start_matches('?'))
}

impl Console {
    /// Redirects to `path` with the outcome of an action shown on arrival: `ok` on success, the
    /// API's code, field and message on failure (messages name fields, never values).
    pub fn after<T>(&self, path: &str, result: Result<T, Failure>, ok: &str) -> Response {
        let key = self.session.csrf.as_bytes();
        match result {
            Ok(_) => Redirect::to(&with_flash(path, "ok", ok, key)).into_response(),
            Err(f) => Redirect::to(&with_flash(path, "err", &f.line(), key)).into_response(),
        }
    }
}

/// The sign-in page with `message` shown.
fn login_with(sealer: &Sealer, message: &str) -> Response {
    Redirect::to(&with_flash("/console/login", "err", message, sealer.login_key())).into_response()
}

async fn home(console: Result<Console, Response>) -> Response {
    match console {
        Ok(_) => Redirect::to("/console/contacts").into_response(),
        Err(_) => Redirect::to("/console/login").into_response(),
    }
}

async fn login_page(State(state): State<ConsoleState>, query: axum::extract::RawQuery) -> Response {
    let q = layout::Query::parse(query.0);
    let err = q.get("err");
    let shown =
        if session::constant_time_eq(state.sealer.login_tag(&format!("err:{err}")).as_bytes(), q.get("tag").as_bytes())
        {
            err
        } else {
            ""
        };
    layout::login(&state.sealer.login_token(now()), shown, state.oidc_opt.is_some()).into_response()
}

/// Signs in: the key must be accepted by the API (`GET /v1/me`) before a session is made.
async fn login(State(state): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if !state.sealer.login_token_valid(form.get("_login"), now()) {
        return (StatusCode::FORBIDDEN, "the sign-in form has expired: reload the page").into_response();
    }
    let credential = form.get("api_key").to_string();
    if credential.is_empty() {
        return login_with(&state.sealer, "enter an API key");
    }
    let api = Api::new(state.api.clone(), credential.clone());
    if let Err(f) = api.get("/v1/me").await {
        tracing::info!(code = %f.code, "console sign-in refused");
        return login_with(&state.sealer, &f.line());
    }
    let sealed = state.sealer.seal(&Session::new(credential, now()));
    let mut response = Redirect::to("/console/contacts").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&sealed, is_https(&headers))) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout(console: Result<Console, Response>, headers: HeaderMap, body: Bytes) -> Response {
    if let Ok(console) = console
        && let Err(refused) = console.check_csrf(&Form::parse(&body))
    {
        return refused.into_response();
    }
    to_login(is_https(&headers))
}
