//! carnet-gateway: the only way users, scripts and web pages reach Carnet.
//!
//! REST/JSON over the services' gRPC APIs, authenticated by API keys or OIDC bearer JWTs,
//! authorised by role, and forwarded into the mesh with the caller signed into the gRPC
//! metadata (every service verifies it and checks the permission again). Errors are
//! `application/problem+json` with the shared error codes; `GET /openapi.json` is generated from
//! the handlers.

pub mod auth;
pub mod console;
pub mod error;
pub mod extract;
pub mod jwt;
pub mod keys;
pub mod openapi;
pub mod roles;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use carnet_kit::config::{ConfigError, Validate};
use carnet_kit::{CallerSigner, ErrorCode, MeshKey};
use carnet_proto::comms::v1::comms_service_client::CommsServiceClient;
use carnet_proto::consent::v1::consent_service_client::ConsentServiceClient;
use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use carnet_proto::dsar::v1::dsar_service_client::DsarServiceClient;
use carnet_proto::enrichment::v1::enrichment_service_client::EnrichmentServiceClient;

use crate::auth::{Auth, RateLimiter, RequestId};
use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::keys::KeyStore;

/// The `[gateway]` configuration section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// HTTP listener.
    pub listen_addr: String,
    /// Tenants and keys: `postgres://…` or `sqlite://…`; empty means `gateway.db` in the data dir.
    pub database_url: String,
    pub max_connections: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Deadline of one HTTP request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Sustained requests per second per key or token subject; 0 turns the limit off.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// How long a verified API key is trusted before its row is read again, in milliseconds.
    /// A key revoked through this gateway is refused at once; other replicas notice within this
    /// time. 0 reads the row on every request.
    pub key_cache_ms: u64,
    /// The contacts service; empty in monolith mode (this process's own gRPC address).
    pub contacts_endpoint: String,
    /// The consent service; empty in monolith mode.
    pub consent_endpoint: String,
    /// The comms service; empty in monolith mode.
    pub comms_endpoint: String,
    /// The DSAR service; empty in monolith mode.
    pub dsar_endpoint: String,
    /// The enrichment service; empty in monolith mode.
    pub enrichment_endpoint: String,
    /// Largest body of `POST /v1/plugins` (a base64 component).
    pub max_plugin_bytes: usize,
    pub oidc: jwt::OidcConfig,
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError(format!("gateway.listen_addr `{}` is not HOST:PORT", self.listen_addr)))?;
        if self.max_body_bytes == 0 || self.request_timeout_ms == 0 {
            return Err(ConfigError("gateway.max_body_bytes and gateway.request_timeout_ms must be positive".into()));
        }
        for (key, endpoint) in [
            ("contacts_endpoint", &self.contacts_endpoint),
            ("consent_endpoint", &self.consent_endpoint),
            ("comms_endpoint", &self.comms_endpoint),
            ("dsar_endpoint", &self.dsar_endpoint),
            ("enrichment_endpoint", &self.enrichment_endpoint),
        ] {
            if !endpoint.is_empty() && !endpoint.starts_with("http") {
                return Err(ConfigError(format!("gateway.{key} must be an http:// or https:// URL")));
            }
        }
        self.oidc.validate().map_err(ConfigError)
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<GatewayConfig>,
    pub keys: KeyStore,
    pub jwt_opt: Option<jwt::JwtVerifier>,
    pub limiter: Arc<RateLimiter>,
    mesh_key: MeshKey,
    contacts: Channel,
    consent: Channel,
    comms_opt: Option<Channel>,
    dsar_opt: Option<Channel>,
    enrichment_opt: Option<Channel>,
}

/// Channels to the services the gateway fronts.
#[derive(Clone, Debug)]
pub struct Upstreams {
    pub contacts: Channel,
    pub consent: Channel,
    /// `None` when this gateway fronts no comms service: its routes answer `unavailable`.
    pub comms_opt: Option<Channel>,
    /// `None` when this gateway fronts no DSAR service.
    pub dsar_opt: Option<Channel>,
    /// `None` when this gateway fronts no enrichment service.
    pub enrichment_opt: Option<Channel>,
}

impl AppState {
    pub fn new(
        config: GatewayConfig,
        keys: KeyStore,
        jwt_opt: Option<jwt::JwtVerifier>,
        mesh_key: MeshKey,
        upstreams: Upstreams,
    ) -> Self {
        let limiter = Arc::new(RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst));
        let Upstreams { contacts, consent, comms_opt, dsar_opt, enrichment_opt } = upstreams;
        AppState {
            config: Arc::new(config),
            keys,
            jwt_opt,
            limiter,
            mesh_key,
            contacts,
            consent,
            comms_opt,
            dsar_opt,
            enrichment_opt,
        }
    }

    /// The key signing callers into the mesh (and, derived, the gateway's own tokens).
    pub fn mesh_key(&self) -> MeshKey {
        self.mesh_key.clone()
    }

    fn signer(&self, caller: carnet_kit::Caller) -> CallerSigner {
        CallerSigner::new(self.mesh_key.clone(), caller)
    }

    /// A contacts client signing `auth`'s caller into every call.
    pub fn contacts(&self, auth: &Auth) -> ContactsServiceClient<InterceptedService<Channel, CallerSigner>> {
        self.contacts_as(auth.0.clone())
    }

    /// A consent client signing `auth`'s caller into every call.
    pub fn consent(&self, auth: &Auth) -> ConsentServiceClient<InterceptedService<Channel, CallerSigner>> {
        self.consent_as(auth.0.clone())
    }

    /// A comms client signing `auth`'s caller into every call.
    pub fn comms(
        &self,
        auth: &Auth,
    ) -> Result<CommsServiceClient<InterceptedService<Channel, CallerSigner>>, ApiError> {
        self.comms_as(auth.0.clone())
    }

    /// A comms client acting as `caller`; `unavailable` when no comms service is configured.
    pub fn comms_as(
        &self,
        caller: carnet_kit::Caller,
    ) -> Result<CommsServiceClient<InterceptedService<Channel, CallerSigner>>, ApiError> {
        let channel = self.comms_opt.clone().ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, "no comms service is configured (gateway.comms_endpoint)")
        })?;
        Ok(CommsServiceClient::with_interceptor(channel, self.signer(caller)))
    }

    /// A DSAR client signing `auth`'s caller into every call.
    pub fn dsar(&self, auth: &Auth) -> Result<DsarServiceClient<InterceptedService<Channel, CallerSigner>>, ApiError> {
        let channel = self.dsar_opt.clone().ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, "no DSAR service is configured (gateway.dsar_endpoint)")
        })?;
        // Access exports can be large (a person with many activities): accept up to 256 MiB.
        Ok(DsarServiceClient::with_interceptor(channel, self.signer(auth.0.clone()))
            .max_decoding_message_size(256 * 1024 * 1024))
    }

    /// An enrichment client signing `auth`'s caller into every call.
    pub fn enrichment(
        &self,
        auth: &Auth,
    ) -> Result<EnrichmentServiceClient<InterceptedService<Channel, CallerSigner>>, ApiError> {
        let channel = self.enrichment_opt.clone().ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, "no enrichment service is configured (gateway.enrichment_endpoint)")
        })?;
        Ok(EnrichmentServiceClient::with_interceptor(channel, self.signer(auth.0.clone()))
            .max_encoding_message_size(usize::MAX))
    }

    /// A contacts client acting as `caller` (public pages act for the tenant a link or form names).
    pub fn contacts_as(
        &self,
        caller: carnet_kit::Caller,
    ) -> ContactsServiceClient<InterceptedService<Channel, CallerSigner>> {
        ContactsServiceClient::with_interceptor(self.contacts.clone(), self.signer(caller))
    }

    /// A consent client acting as `caller`.
    pub fn consent_as(
        &self,
        caller: carnet_kit::Caller,
    ) -> ConsentServiceClient<InterceptedService<Channel, CallerSigner>> {
        ConsentServiceClient::with_interceptor(self.consent.clone(), self.signer(caller))
    }
}

/// Builds the HTTP router: the REST API, and the console at `/console`, which reaches the data
/// only by calling that same API router in-process with the signed-in user's credential.
pub fn router(state: AppState) -> Router {
    let api = api_router(state.clone());
    let body_limit = axum::extract::DefaultBodyLimit::max(state.config.max_body_bytes);
    let console = console::router(&state, api.clone())
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .layer(body_limit);
    api.merge(console)
}

/// The REST API alone.
fn api_router(state: AppState) -> Router {
    use routes::{
        audit, comms, consent, contacts, dsar, enrichment, export, forms, imports, keys, me, public, retention,
    };
    // Bodies are read at most this far: a larger one is refused without being buffered whole.
    let body_limit = axum::extract::DefaultBodyLimit::max(state.config.max_body_bytes);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::serve))
        .route("/v1/field-policy", get(contacts::get_field_policy).put(contacts::put_field_policy))
        .route("/v1/contacts", post(contacts::create_contact).get(contacts::list_contacts))
        // A static segment: matched before `/v1/contacts/{id}` whatever the order (matchit).
        .route("/v1/contacts/export", get(export::export_contacts))
        .route(
            "/v1/contacts/{id}",
            get(contacts::get_contact).patch(contacts::update_contact).delete(contacts::delete_contact),
        )
        .route("/v1/contacts/{id}/merge", post(contacts::merge_contacts))
        .route("/v1/contacts/{id}/restriction", put(contacts::put_restriction))
        .route("/v1/contacts/{id}/objection", put(contacts::put_objection))
        .route("/v1/contacts/{id}/history", get(contacts::get_history))
        .route("/v1/contacts/{id}/export", get(contacts::export_contact))
        .route("/v1/contacts/{id}/consents", get(consent::contact_consents))
        .route("/v1/purposes", post(consent::create_purpose).get(consent::list_purposes))
        .route("/v1/purposes/{key}", get(consent::get_purpose))
        .route("/v1/purposes/{key}/notice", put(consent::put_notice))
        .route("/v1/consents", post(consent::record_consent))
        .route("/v1/consents/check", post(consent::check))
        .route("/v1/templates", post(comms::create_template))
        .route("/v1/templates/{id}", get(comms::get_template))
        .route("/v1/messages", post(comms::send_message))
        .route("/v1/messages/{id}", get(comms::get_message))
        .route("/v1/campaigns", post(comms::create_campaign).get(comms::list_campaigns))
        .route("/v1/campaigns/{id}", get(comms::get_campaign))
        .route("/v1/campaigns/{id}/send", post(comms::send_campaign))
        .route("/v1/sequences", post(comms::create_sequence))
        .route("/v1/sequences/{id}", get(comms::get_sequence))
        .route("/v1/sequences/{id}/enrollments", post(comms::enroll))
        .route("/v1/consent-requests", post(comms::request_consent))
        .route("/v1/bounces", post(comms::report_bounce))
        .route("/v1/suppressions", post(comms::suppress))
        .route("/v1/calls", post(comms::log_call))
        .route("/v1/calls/{id}", axum::routing::patch(comms::update_call))
        .route("/v1/contacts/{id}/timeline", get(comms::timeline))
        .route("/v1/dsar", post(dsar::create).get(dsar::list))
        .route("/v1/dsar/{id}", get(dsar::get))
        .route("/v1/dsar/{id}/export", get(dsar::export))
        .route("/v1/dsar/{id}/extend", post(dsar::extend))
        .route("/v1/dsar/{id}/reject", post(dsar::reject))
        .route("/v1/legal-holds", post(dsar::place_hold).get(dsar::list_holds))
        .route("/v1/legal-holds/{id}/lift", post(dsar::lift_hold))
        .route("/v1/erasure-ledger", get(dsar::ledger))
        .route("/v1/imports", post(imports::create).get(imports::list))
        .route("/v1/imports/{id}", get(imports::get))
        // A whole file: ApiJson's limit does not apply to a streamed body, nor the deadline.
        .route(imports::DATA_ROUTE, put(imports::upload).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/v1/imports/{id}/report", get(imports::report))
        .route("/v1/retention", get(retention::get).put(retention::put))
        .route("/v1/retention/run", post(retention::run))
        .route("/v1/retention/purges", get(retention::purges))
        .route("/v1/audit", get(audit::query))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/audit/export", get(audit::export))
        .route(
            "/v1/plugins",
            post(enrichment::install)
                .get(enrichment::list)
                // Components are larger than other bodies.
                .layer(axum::extract::DefaultBodyLimit::max(state.config.max_plugin_bytes))
                .layer(middleware::map_request_with_state(state.clone(), plugin_body_limit)),
        )
        .route("/v1/enrichment/settings", get(enrichment::get_settings).put(enrichment::put_settings))
        .route("/v1/enrichment/runs", get(enrichment::runs))
        .route("/v1/contacts/{id}/enrich", post(enrichment::enrich))
        .route("/v1/contacts/{id}/enrichment-runs", get(enrichment::contact_runs))
        .route("/v1/forms", post(forms::create_form))
        .route("/f/{form_id}", get(forms::form_page).post(forms::submit_form))
        .route("/o/{token}", get(public::confirm))
        .route("/u/{token}", get(public::withdraw_page).post(public::withdraw))
        .route("/v1/api-keys", post(keys::create_key).get(keys::list_keys))
        .route("/v1/api-keys/{id}", axum::routing::delete(keys::revoke_key))
        .route("/v1/me", get(me::me))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .layer(body_limit)
        .with_state(state)
}

/// Raises the body limit `ApiJson` applies for plugin uploads.
async fn plugin_body_limit(State(state): State<AppState>, mut request: Request) -> Request {
    request.extensions_mut().insert(BodyLimit(state.config.max_plugin_bytes));
    request
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> Response {
    let mut response = ApiError::invalid_field("method", "is not allowed on this route").into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the keys database and the contacts service answer.
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    use sea_orm::ConnectionTrait as _;
    let unavailable = |what: &str| ApiError::new(ErrorCode::Unavailable, format!("{what} is not ready"));
    state.keys.db().read.execute_unprepared("SELECT 1").await.map_err(|_| unavailable("gateway database"))?;
    let mut health = tonic_health_client(state.contacts.clone());
    let req = tonic_health::pb::HealthCheckRequest { service: "carnet.contacts.v1.ContactsService".into() };
    match health.check(req).await {
        Ok(r) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 => {
            Ok("ready")
        }
        _ => Err(unavailable("contacts service")),
    }
}

fn tonic_health_client(channel: Channel) -> tonic_health::pb::health_client::HealthClient<Channel> {
    tonic_health::pb::health_client::HealthClient::new(channel)
}

/// Runs around every request: request id, body limit, deadline and the request span.
async fn edge(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(request_id.clone()));
    request.extensions_mut().insert(BodyLimit(state.config.max_body_bytes));
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().as_str().to_string();
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
    );
    carnet_kit::telemetry::continue_trace(&span, request.headers());
    let started = std::time::Instant::now();
    let deadline = Duration::from_millis(state.config.request_timeout_ms);
    let run = tracing::Instrument::instrument(next.run(request), span.clone());
    // An import's file takes as long as it takes (its progress is at GET /v1/imports/{id}).
    let mut response = if route == routes::imports::DATA_ROUTE {
        run.await
    } else {
        match tokio::time::timeout(deadline, run).await {
            Ok(response) => response,
            Err(_) => ApiError::new(ErrorCode::DeadlineExceeded, "request timed out").into_response(),
        }
    };
    span.record("http.response.status_code", response.status().as_u16());
    carnet_kit::metrics::record_http(&method, &route, response.status().as_u16(), started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
