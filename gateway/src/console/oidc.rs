//! Console sign-in with the configured OIDC provider: the authorization code flow with PKCE
//! (S256) for a public client, no client secret.
//!
//! `/console/oidc/start` makes a state, a nonce and a code verifier, keeps them in a short-lived
//! sealed cookie (SameSite=Lax: the provider's redirect back is a cross-site navigation) and
//! sends the browser to the provider. `/console/oidc/callback` checks the state, redeems the
//! code with the verifier at the token endpoint, and signs in with the first token the API
//! accepts (`GET /v1/me`: the gateway verifies issuer, audience, signature, tenant and roles as
//! for any bearer token); an ID token must also carry the nonce. The session ends when the token
//! expires: there is no refresh.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Request, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::api::Api;
use super::layout::Query;
use super::session::{self, Session};
use super::{ConsoleState, is_https, now};
use crate::jwt::OidcConfig;

/// The flow cookie's name and lifetime.
const FLOW_COOKIE: &str = "carnet_console_oidc";
const FLOW_SECS: i64 = 600;
const FLOW_AAD: &[u8] = b"carnet-console-oidc-v1";
/// Largest token endpoint answer read.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The provider endpoints the console signs in with.
#[derive(Clone)]
pub struct OidcLogin {
    authorization_endpoint: String,
    token_endpoint: String,
    client_id: String,
    client: HttpsClient,
}

impl OidcLogin {
    /// `None` when the console's OIDC sign-in is not configured.
    pub fn from_config(config: &OidcConfig) -> Option<OidcLogin> {
        if config.authorization_endpoint.is_empty() {
            return None;
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .ok()?
            .https_or_http()
            .enable_http1()
            .build();
        Some(OidcLogin {
            authorization_endpoint: config.authorization_endpoint.clone(),
            token_endpoint: config.token_endpoint.clone(),
            client_id: config.console_client_id.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Redeems `code` at the token endpoint; returns the provider's JSON answer.
    async fn redeem(&self, code: &str, redirect_uri: &str, verifier: &str) -> Result<Value, String> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("client_id", &self.client_id)
            .append_pair("code_verifier", verifier)
            .finish();
        let request = Request::post(&self.token_endpoint)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "the token endpoint is not a valid url".to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .map_err(|_| "the token endpoint did not answer in time".to_string())?
            .map_err(|_| "the token endpoint cannot be reached".to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_TOKEN_BYTES)
            .collect()
            .await
            .map_err(|_| "the token endpoint's answer could not be read".to_string())?
            .to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            // The provider's error code only (RFC 6749 §5.2), never its description.
            let code = json["error"].as_str().unwrap_or("error").chars().filter(|c| c.is_ascii_graphic()).take(40);
            return Err(format!("the provider refused the code: {}", code.collect::<String>()));
        }
        Ok(json)
    }
}

/// What the browser must bring back from the provider.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    verifier: String,
    redirect_uri: String,
    expires_at: i64,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 code challenge of `verifier` (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn flow_cookie(value: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{FLOW_COOKIE}={value}; Path=/console/oidc; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
}

fn refused(state: &ConsoleState, message: &str) -> Response {
    super::login_with(&state.sealer, message)
}

/// Sends the browser to the provider.
pub async fn start(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let Some(oidc) = &state.oidc_opt else { return refused(&state, "oidc sign-in is not configured") };
    let secure = is_https(&headers);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let redirect_uri = format!("{}://{host}/console/oidc/callback", if secure { "https" } else { "http" });
    let pending = Pending {
        state: random_token(),
        nonce: random_token(),
        verifier: random_token(),
        redirect_uri,
        expires_at: now() + FLOW_SECS,
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &oidc.client_id)
        .append_pair("redirect_uri", &pending.redirect_uri)
        .append_pair("scope", "openid")
        .append_pair("state", &pending.state)
        .append_pair("nonce", &pending.nonce)
        .append_pair("code_challenge", &challenge(&pending.verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    let sep = if oidc.authorization_endpoint.contains('?') { '&' } else { '?' };
    let mut response = Redirect::to(&format!("{}{sep}{query}", oidc.authorization_endpoint)).into_response();
    let sealed = state.sealer.seal_json(FLOW_AAD, &pending);
    if let Ok(v) = HeaderValue::from_str(&flow_cookie(&sealed, FLOW_SECS, secure)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The `nonce` claim of a JWT's payload (its signature is checked by the API, not here).
fn nonce_of(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["nonce"].as_str().map(str::to_string)
}

/// The `exp` claim of a JWT's payload.
fn exp_of(jwt: &str) -> Option<i64> {
    let payload = jwt.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["exp"].as_i64()
}

/// The provider sends the browser back here with a code.
pub async fn callback(State(state): State<ConsoleState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let Some(oidc) = &state.oidc_opt else { return refused(&state, "oidc sign-in is not configured") };
    let secure = is_https(&headers);
    let query = Query::parse(raw);
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let pending: Option<Pending> = cookies
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(FLOW_COOKIE)?.strip_prefix('='))
        .find_map(|value| state.sealer.open_json(FLOW_AAD, value));
    let Some(pending) = pending.filter(|p| p.expires_at > now()) else {
        return refused(&state, "the sign-in took too long or was not started here: try again");
    };
    if !query.get("error").is_empty() {
        let code: String = query.get("error").chars().filter(|c| c.is_ascii_graphic()).take(40).collect();
        return refused(&state, &format!("the provider refused the sign-in: {code}"));
    }
    if !session::constant_time_eq(pending.state.as_bytes(), query.get("state").as_bytes()) {
        tracing::info!("console oidc callback with a wrong state");
        return refused(&state, "the sign-in answer does not belong to this browser: try again");
    }
    let tokens = match oidc.redeem(query.get("code"), &pending.redirect_uri, &pending.verifier).await {
        Ok(tokens) => tokens,
        Err(message) => return refused(&state, &message),
    };
    // The access token when the API takes it (its audience is the API's), else the ID token.
    let mut chosen = None;
    for (kind, token) in [("access", &tokens["access_token"]), ("id", &tokens["id_token"])] {
        let Some(token) = token.as_str().filter(|t| !t.is_empty()) else { continue };
        if Api::new(state.api.clone(), token.to_string()).get("/v1/me").await.is_ok() {
            chosen = Some((kind, token.to_string()));
            break;
        }
    }
    let Some((kind, credential)) = chosen else {
        return refused(&state, "the API accepts none of the provider's tokens");
    };
    if let Some(id_token) = tokens["id_token"].as_str()
        && nonce_of(id_token).as_deref() != Some(pending.nonce.as_str())
    {
        return refused(&state, "the provider's ID token does not carry this sign-in's nonce");
    }
    tracing::info!(token = kind, "console signed in with oidc");
    let mut session = Session::new(credential.clone(), now());
    if let Some(exp) = exp_of(&credential) {
        session.expires_at = session.expires_at.min(exp);
    }
    let sealed = state.sealer.seal(&session);
    // Browsers keep cookies of at most 4 KB: a provider's very large token cannot ride in one.
    if sealed.len() > 3800 {
        return refused(&state, "the provider's token is too large for a console session");
    }
    let mut response = Redirect::to("/console/contacts").into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&sealed, secure)) {
        headers.append(header::SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&flow_cookie("", 0, secure)) {
        headers.append(header::SET_COOKIE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pkce_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let a = random_token();
        assert!(a.len() >= 43 && a != random_token(), "a verifier is 32 random bytes");
    }

    #[test]
    fn test_nonce_and_exp_are_read_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"nonce":"n-1","exp":1800000000}"#);
        let jwt = format!("e30.{payload}.sig");
        assert_eq!(nonce_of(&jwt).as_deref(), Some("n-1"));
        assert_eq!(exp_of(&jwt), Some(1_800_000_000));
        assert_eq!(nonce_of("not-a-jwt"), None);
    }
}
