//! OIDC bearer tokens: the gateway's second way in, next to API keys.
//!
//! A [`JwtVerifier`] holds the identity provider's public keys (a JWKS read from a file or fetched
//! over http/https) and turns a bearer token into a [`JwtIdentity`]: subject, Carnet tenant and
//! role names. Only RS256 and ES256 are accepted; `none`, HMAC and every other algorithm are
//! refused before any key is looked at, so a public key can never double as an HMAC secret.
//!
//! Keys are re-read every `jwks_refresh_seconds` in the background, and on a token whose `kid`
//! is unknown, at most once per 30 s so that a flood of made-up kids cannot hammer the provider.
//! A refresh that fails or yields no usable key keeps the previous keys.
//!
//! HTTPS uses rustls (ring) with the Mozilla roots of `webpki-roots`: the system trust store,
//! private CAs, proxies and redirects are not supported; the document is capped at 1 MiB and
//! 10 s. Plain http is accepted (with a warning) for tests and sidecars.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use carnet_kit::{ErrorCode, ServiceError};
use http_body_util::{BodyExt as _, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use uuid::Uuid;

/// Shortest gap between two key refreshes triggered by unknown kids.
const UNKNOWN_KID_REFRESH_GAP: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 1 << 20;
const MAX_TOKEN_BYTES: usize = 16 << 10;
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// The `oidc` configuration section; an empty `issuer` turns OIDC off.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcConfig {
    /// Expected `iss` claim; empty disables bearer JWTs.
    pub issuer: String,
    /// Value that the `aud` claim must contain.
    pub audience: String,
    /// Path to a JWKS JSON file (exclusive with `jwks_url`).
    pub jwks_file: String,
    /// `http://` or `https://` URL of the provider's JWKS (exclusive with `jwks_file`).
    pub jwks_url: String,
    /// Claim holding the Carnet tenant id as a UUID string.
    pub tenant_claim: String,
    /// Claim holding the role names: an array of strings or a single string.
    pub roles_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Period of the background key refresh (from the file or the URL).
    pub jwks_refresh_seconds: u64,
    /// The provider's authorization endpoint, for signing in to the console (authorization
    /// code with PKCE); empty leaves the console on API keys only.
    pub authorization_endpoint: String,
    /// The provider's token endpoint, where the console redeems the code.
    pub token_endpoint: String,
    /// The console's client id at the provider (a public client: PKCE, no secret).
    pub console_client_id: String,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            tenant_claim: "carnet_tenant".to_owned(),
            roles_claim: "carnet_roles".to_owned(),
            leeway_seconds: 60,
            jwks_refresh_seconds: 600,
            authorization_endpoint: String::new(),
            token_endpoint: String::new(),
            console_client_id: String::new(),
        }
    }
}

impl OidcConfig {
    /// Checks the section; each message names the offending `oidc.<key>`.
    pub fn validate(&self) -> Result<(), String> {
        let console = [&self.authorization_endpoint, &self.token_endpoint, &self.console_client_id];
        if console.iter().any(|v| !v.is_empty()) {
            if console.iter().any(|v| v.is_empty()) {
                return Err(
                    "oidc.authorization_endpoint, oidc.token_endpoint and oidc.console_client_id are set together"
                        .to_owned(),
                );
            }
            if self.issuer.is_empty() {
                return Err("oidc.issuer must be set for the console's oidc sign-in".to_owned());
            }
            for (key, url) in
                [("authorization_endpoint", &self.authorization_endpoint), ("token_endpoint", &self.token_endpoint)]
            {
                let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
                if rest.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
                    return Err(format!("oidc.{key} must be an http:// or https:// url with a host"));
                }
            }
        }
        if self.issuer.is_empty() {
            return Ok(());
        }
        if self.audience.is_empty() {
            return Err("oidc.audience must be set when oidc.issuer is set".to_owned());
        }
        match (self.jwks_file.is_empty(), self.jwks_url.is_empty()) {
            (true, true) => {
                return Err("oidc.jwks_file or oidc.jwks_url must be set when oidc.issuer is set".to_owned());
            }
            (false, false) => return Err("oidc.jwks_file and oidc.jwks_url are mutually exclusive".to_owned()),
            _ => {}
        }
        if !self.jwks_url.is_empty() {
            let rest = self.jwks_url.strip_prefix("https://").or_else(|| self.jwks_url.strip_prefix("http://"));
            if rest.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
                return Err("oidc.jwks_url must be an http:// or https:// url with a host".to_owned());
            }
        }
        if self.tenant_claim.is_empty() {
            return Err("oidc.tenant_claim must not be empty".to_owned());
        }
        if self.roles_claim.is_empty() {
            return Err("oidc.roles_claim must not be empty".to_owned());
        }
        if self.leeway_seconds > 300 {
            return Err("oidc.leeway_seconds must be at most 300".to_owned());
        }
        if self.jwks_refresh_seconds < 30 {
            return Err("oidc.jwks_refresh_seconds must be at least 30".to_owned());
        }
        Ok(())
    }
}

/// The caller a verified bearer token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The `sub` claim.
    pub subject: String,
    /// The tenant named by the configured tenant claim.
    pub tenant_id: Uuid,
    /// Role names from the configured roles claim, in token order.
    pub roles: Vec<String>,
    /// The `exp` claim, in seconds since the Unix epoch.
    pub expires_at: i64,
}

/// Why a bearer token was refused; messages name claims, never their values or the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url JSON parts, oversized, or claims that are not a JSON object.
    #[error("malformed bearer token")]
    Malformed,
    /// Anything but RS256 and ES256, `none` and HS* included.
    #[error("unsupported token algorithm")]
    UnsupportedAlgorithm,
    /// The `kid` names a key published for another algorithm.
    #[error("token algorithm does not match its signing key")]
    AlgorithmMismatch,
    /// No key with this `kid`, or no `kid` and not exactly one key of the algorithm.
    #[error("unknown token signing key")]
    UnknownKey,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer not accepted")]
    WrongIssuer,
    #[error("token audience not accepted")]
    WrongAudience,
    /// Holds the claim's name.
    #[error("token claim {0} is missing")]
    MissingClaim(String),
    /// Holds the claim's name.
    #[error("token claim {0} is invalid")]
    InvalidClaim(String),
}

impl From<JwtError> for ServiceError {
    fn from(err: JwtError) -> Self {
        ServiceError::new(ErrorCode::Unauthenticated, err.to_string())
    }
}

impl JwtError {
    fn from_jsonwebtoken(err: jsonwebtoken::errors::Error) -> Self {
        match err.into_kind() {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) => Self::MissingClaim(claim),
            ErrorKind::InvalidClaimFormat(claim) => Self::InvalidClaim(claim),
            ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm | ErrorKind::MissingAlgorithm => {
                Self::UnsupportedAlgorithm
            }
            // Keys are probed when loaded, so a key error here means the token did not fit it.
            ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidKeyFormat => {
                Self::BadSignature
            }
            _ => Self::Malformed,
        }
    }
}

/// Verifies OIDC bearer tokens against the provider's keys; clones share keys and refresher.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audience: String,
    tenant_claim: String,
    roles_claim: String,
    leeway: u64,
    source: KeySource,
    keys: RwLock<Arc<Vec<VerifyingKey>>>,
    /// When keys were last read; locked across a refresh so concurrent refreshes collapse.
    last_load: AsyncMutex<Instant>,
    unknown_kid_gap: Duration,
    wake_refresher: Arc<Notify>,
    refresher: OnceLock<AbortHandle>,
}

struct VerifyingKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, String>;

enum KeySource {
    File(PathBuf),
    Url { url: String, client: Box<HttpsClient> },
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("issuer", &self.inner.issuer).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.get() {
            task.abort();
        }
    }
}

impl JwtVerifier {
    /// Builds the verifier and loads its keys, or returns `None` when `issuer` is empty.
    ///
    /// Spawns the background refresher, so it must run inside a Tokio runtime.
    pub async fn from_config(cfg: &OidcConfig) -> anyhow::Result<Option<JwtVerifier>> {
        Self::with_unknown_kid_gap(cfg, UNKNOWN_KID_REFRESH_GAP).await
    }

    async fn with_unknown_kid_gap(cfg: &OidcConfig, gap: Duration) -> anyhow::Result<Option<JwtVerifier>> {
        if cfg.issuer.is_empty() {
            return Ok(None);
        }
        cfg.validate().map_err(anyhow::Error::msg)?;
        let source = if cfg.jwks_url.is_empty() {
            KeySource::File(PathBuf::from(&cfg.jwks_file))
        } else {
            if cfg.jwks_url.starts_with("http://") {
                tracing::warn!(url = %cfg.jwks_url, "oidc.jwks_url uses plain http; use https outside tests");
            }
            KeySource::Url { url: cfg.jwks_url.clone(), client: Box::new(https_client()?) }
        };
        let keys = source.load().await?;
        let wake_refresher = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            tenant_claim: cfg.tenant_claim.clone(),
            roles_claim: cfg.roles_claim.clone(),
            leeway: cfg.leeway_seconds,
            source,
            keys: RwLock::new(Arc::new(keys)),
            last_load: AsyncMutex::new(Instant::now()),
            unknown_kid_gap: gap,
            wake_refresher: wake_refresher.clone(),
            refresher: OnceLock::new(),
        });
        let every = Duration::from_secs(cfg.jwks_refresh_seconds);
        let task = tokio::spawn(run_refresher(Arc::downgrade(&inner), wake_refresher, every));
        let _ = inner.refresher.set(task.abort_handle());
        Ok(Some(JwtVerifier { inner }))
    }

    /// Verifies a bearer token and returns the identity it carries.
    ///
    /// On an unknown key it wakes the background refresher and fails at once; the caller's
    /// next attempt sees the refreshed keys. [`Self::verify_with_refresh`] waits instead.
    pub fn verify(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        let result = self.inner.verify(token);
        if result == Err(JwtError::UnknownKey) {
            self.inner.wake_refresher.notify_one();
        }
        result
    }

    /// Verifies a bearer token, re-reading the keys first when its key is unknown and the last
    /// read is more than 30 s old, so a rotated key is accepted on its first use.
    pub async fn verify_with_refresh(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        match self.inner.verify(token) {
            Err(JwtError::UnknownKey) => {
                self.inner.refresh(self.inner.unknown_kid_gap).await;
                self.inner.verify(token)
            }
            result => result,
        }
    }
}

async fn run_refresher(inner: Weak<Inner>, wake: Arc<Notify>, every: Duration) {
    let mut next = Instant::now() + every;
    loop {
        let on_demand = tokio::select! {
            () = tokio::time::sleep_until(next) => false,
            () = wake.notified() => true,
        };
        let Some(inner) = inner.upgrade() else { return };
        if on_demand {
            inner.refresh(inner.unknown_kid_gap).await;
        } else {
            inner.refresh(Duration::ZERO).await;
            next = Instant::now() + every;
        }
    }
}

impl Inner {
    /// Re-reads the keys unless they were read less than `gap` ago; keeps them on failure.
    async fn refresh(&self, gap: Duration) {
        let mut last_load = self.last_load.lock().await;
        if last_load.elapsed() < gap {
            return;
        }
        *last_load = Instant::now();
        match self.source.load().await {
            Ok(keys) => *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys),
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "failed to refresh oidc keys, keeping the previous ones")
            }
        }
    }

    fn verify(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let header = read_header(token)?;
        // Decided from the header alone: `none`, HS* and the rest never reach a key.
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(JwtError::UnsupportedAlgorithm),
        };
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner).clone();
        let key = select_key(&keys, header.kid.as_deref(), alg)?;

        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(JwtError::from_jsonwebtoken)?
            .claims;
        self.identity(&claims)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<JwtIdentity, JwtError> {
        let invalid = |claim: &str| JwtError::InvalidClaim(claim.to_owned());
        let subject =
            claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or_else(|| invalid("sub"))?;
        let expires_at = claims
            .get("exp")
            .and_then(|exp| exp.as_i64().or_else(|| exp.as_f64().map(|exp| exp as i64)))
            .ok_or_else(|| invalid("exp"))?;
        let tenant_id = match claim(claims, &self.tenant_claim)? {
            Value::String(s) => {
                Uuid::parse_str(s).ok().filter(|id| !id.is_nil()).ok_or_else(|| invalid(&self.tenant_claim))?
            }
            _ => return Err(invalid(&self.tenant_claim)),
        };
        let roles = match claim(claims, &self.roles_claim)? {
            Value::String(role) if !role.is_empty() => vec![role.clone()],
            Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().filter(|role| !role.is_empty()).map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid(&self.roles_claim))?,
            _ => return Err(invalid(&self.roles_claim)),
        };
        Ok(JwtIdentity { subject: subject.to_owned(), tenant_id, roles, expires_at })
    }
}

fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<&'a Value, JwtError> {
    claims.get(name).filter(|value| !value.is_null()).ok_or_else(|| JwtError::MissingClaim(name.to_owned()))
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn read_header(token: &str) -> Result<RawHeader, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| JwtError::Malformed)
}

/// Picks the key named by `kid`, or the only key of `alg` when the token names none.
fn select_key<'a>(keys: &'a [VerifyingKey], kid: Option<&str>, alg: Algorithm) -> Result<&'a VerifyingKey, JwtError> {
    let Some(kid) = kid else {
        let mut candidates = keys.iter().filter(|key| key.alg == alg);
        return match (candidates.next(), candidates.next()) {
            (Some(key), None) => Ok(key),
            _ => Err(JwtError::UnknownKey),
        };
    };
    let key = keys.iter().find(|key| key.kid.as_deref() == Some(kid)).ok_or(JwtError::UnknownKey)?;
    if key.alg != alg {
        return Err(JwtError::AlgorithmMismatch);
    }
    Ok(key)
}

impl KeySource {
    async fn load(&self) -> anyhow::Result<Vec<VerifyingKey>> {
        let bytes = match self {
            KeySource::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(&path))
                    .await?
                    .context("failed to read oidc.jwks_file")?
            }
            KeySource::Url { url, client } => tokio::time::timeout(FETCH_TIMEOUT, fetch(client, url))
                .await
                .context("timed out fetching oidc.jwks_url")?
                .context("failed to fetch oidc.jwks_url")?,
        };
        if bytes.len() > MAX_JWKS_BYTES {
            bail!("jwks is larger than {MAX_JWKS_BYTES} bytes");
        }
        parse_jwks(&bytes)
    }
}

async fn fetch(client: &HttpsClient, url: &str) -> anyhow::Result<Vec<u8>> {
    let response = client.get(url.parse()?).await?;
    if !response.status().is_success() {
        bail!("jwks endpoint answered {}", response.status());
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|err| anyhow::anyhow!("failed to read jwks body: {err}"))?;
    Ok(body.to_bytes().to_vec())
}

fn https_client() -> anyhow::Result<HttpsClient> {
    // The provider is named explicitly so that no process-wide rustls default is needed.
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .context("failed to set up tls for oidc.jwks_url")?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Parses a JWKS, keeping its RS256 (2048-bit and up) and ES256 signing keys; others are skipped.
fn parse_jwks(bytes: &[u8]) -> anyhow::Result<Vec<VerifyingKey>> {
    #[derive(Deserialize)]
    struct JwkSet {
        keys: Vec<Value>,
    }
    let set: JwkSet = serde_json::from_slice(bytes).context("jwks is not a json object with a keys array")?;
    // Keys are parsed one by one so that an encryption key of an unknown type does not sink the set.
    let keys: Vec<VerifyingKey> = set
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| usable_key(&jwk))
        .collect();
    if keys.is_empty() {
        bail!("jwks holds no usable RS256 or ES256 signing key");
    }
    Ok(keys)
}

fn usable_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if jwk.common.public_key_use.as_ref().is_some_and(|usage| *usage != PublicKeyUse::Signature) {
        return None;
    }
    let (alg, key_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = URL_SAFE_NO_PAD.decode(rsa.n.trim_end_matches('=')).ok()?;
            let significant = modulus.iter().skip_while(|byte| **byte == 0).count();
            (significant >= MIN_RSA_MODULUS_BYTES).then_some((Algorithm::RS256, KeyAlgorithm::RS256))?
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        _ => return None,
    };
    if jwk.common.key_algorithm.is_some_and(|declared| declared != key_alg) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    // A dummy verification surfaces broken moduli and off-curve points now rather than per request.
    jsonwebtoken::crypto::verify("AA", b"probe", &key, alg).ok()?;
    Some(VerifyingKey { kid: jwk.common.key_id.clone(), alg, key })
}

#[cfg(test)]
mod tests {
    //! The fixtures in `tests/fixtures` were made once with `openssl genpkey` (RSA-2048 `rsa1`,
    //! `rsa2`, P-256 `ec1`); `jwks.json` publishes rsa1 as `rsa-1` and ec1 as `ec-1` (without
    //! `alg`, inferred from the curve), `jwks_rotated.json` publishes rsa2 as `rsa-2` and ec1.

    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://idp.example.test/realms/carnet";
    const AUDIENCE: &str = "carnet-gateway";
    const TENANT: &str = "0192f0c1-7c5e-7d2a-9b3e-1f2a3b4c5d6e";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn read_fixture(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            jwks_file: fixture("jwks.json").to_string_lossy().into_owned(),
            ..OidcConfig::default()
        }
    }

    async fn file_verifier() -> JwtVerifier {
        JwtVerifier::from_config(&config()).await.unwrap().unwrap()
    }

    fn claims() -> Value {
        json!({
            "sub": "user-42",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": now() + 300,
            "iat": now(),
            "carnet_tenant": TENANT,
            "carnet_roles": ["sales", "read_only"],
        })
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    /// Signs `claims` with the private key in fixture `key` (for HS256: the file's bytes).
    fn sign(alg: Algorithm, kid: Option<&str>, key: &str, claims: &Value) -> String {
        let pem = read_fixture(key);
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_secret(&pem).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn rs256(claims: &Value) -> String {
        sign(Algorithm::RS256, Some("rsa-1"), "rsa1_private.pem", claims)
    }

    fn es256(claims: &Value) -> String {
        sign(Algorithm::ES256, Some("ec-1"), "ec1_private.pem", claims)
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn expected_identity(roles: &[&str]) -> JwtIdentity {
        JwtIdentity {
            subject: "user-42".to_owned(),
            tenant_id: Uuid::parse_str(TENANT).unwrap(),
            roles: roles.iter().map(|role| role.to_string()).collect(),
            expires_at: 0,
        }
    }

    #[test]
    fn test_oidc_config_validate_names_the_key() {
        assert_eq!(OidcConfig::default().validate(), Ok(()));
        assert_eq!(config().validate(), Ok(()));
        type Breaker = fn(&mut OidcConfig);
        let cases: [(&str, Breaker); 8] = [
            ("oidc.audience", |c| c.audience.clear()),
            ("oidc.jwks_file or oidc.jwks_url", |c| c.jwks_file.clear()),
            ("oidc.jwks_file and oidc.jwks_url", |c| c.jwks_url = "https://idp.example.test/certs".into()),
            ("oidc.jwks_url", |c| {
                c.jwks_file.clear();
                c.jwks_url = "ftp://idp.example.test/certs".into();
            }),
            ("oidc.tenant_claim", |c| c.tenant_claim.clear()),
            ("oidc.roles_claim", |c| c.roles_claim.clear()),
            ("oidc.leeway_seconds", |c| c.leeway_seconds = 3600),
            ("oidc.jwks_refresh_seconds", |c| c.jwks_refresh_seconds = 1),
        ];
        for (key, break_it) in cases {
            let mut cfg = config();
            break_it(&mut cfg);
            let message = cfg.validate().unwrap_err();
            assert!(message.starts_with(key), "{message:?} does not start with {key}");
        }
        let err = serde_json::from_value::<OidcConfig>(json!({"issuer": ISSUER, "jwks_uri": "x"})).unwrap_err();
        assert!(err.to_string().contains("jwks_uri"), "{err}");
    }

    #[test]
    fn test_oidc_console_sign_in_keys_are_set_together_with_urls() {
        let console = || OidcConfig {
            authorization_endpoint: "https://idp.example.test/authorize".into(),
            token_endpoint: "https://idp.example.test/token".into(),
            console_client_id: "carnet-console".into(),
            ..config()
        };
        assert_eq!(console().validate(), Ok(()));
        let cases: [(&str, OidcConfig); 4] = [
            (
                "oidc.authorization_endpoint, oidc.token_endpoint",
                OidcConfig { token_endpoint: String::new(), ..console() },
            ),
            ("oidc.issuer", OidcConfig { issuer: String::new(), ..console() }),
            (
                "oidc.authorization_endpoint must",
                OidcConfig { authorization_endpoint: "idp/authorize".into(), ..console() },
            ),
            ("oidc.token_endpoint must", OidcConfig { token_endpoint: "https:///token".into(), ..console() }),
        ];
        for (key, cfg) in cases {
            let message = cfg.validate().unwrap_err();
            assert!(message.starts_with(key), "{message:?} does not start with {key}");
        }
    }

    #[tokio::test]
    async fn test_from_config_is_none_when_issuer_is_empty() {
        assert!(JwtVerifier::from_config(&OidcConfig::default()).await.unwrap().is_none());
        let missing = OidcConfig { jwks_file: fixture("absent.json").to_string_lossy().into_owned(), ..config() };
        let err = JwtVerifier::from_config(&missing).await.unwrap_err();
        assert!(format!("{err:#}").contains("oidc.jwks_file"), "{err:#}");
    }

    #[tokio::test]
    async fn test_verify_accepts_rs256_and_es256() {
        let verifier = file_verifier().await;
        let claims = claims();
        let exp = claims["exp"].as_i64().unwrap();
        let expected = JwtIdentity { expires_at: exp, ..expected_identity(&["sales", "read_only"]) };
        assert_eq!(verifier.verify(&rs256(&claims)), Ok(expected.clone()));
        assert_eq!(verifier.verify(&es256(&claims)), Ok(expected.clone()));
        // Without a kid the only key of the token's algorithm is used.
        assert_eq!(verifier.verify(&sign(Algorithm::ES256, None, "ec1_private.pem", &claims)), Ok(expected.clone()));
        // `aud` may be an array that contains the audience.
        let many = with(claims.clone(), "aud", json!(["other", AUDIENCE]));
        assert_eq!(verifier.verify(&es256(&many)), Ok(expected));
    }

    #[tokio::test]
    async fn test_verify_reads_roles_as_string_or_array() {
        let verifier = file_verifier().await;
        let one = verifier.verify(&es256(&with(claims(), "carnet_roles", json!("owner")))).unwrap();
        assert_eq!(one.roles, ["owner"]);
        let many = verifier.verify(&es256(&with(claims(), "carnet_roles", json!(["admin", "audit"])))).unwrap();
        assert_eq!(many.roles, ["admin", "audit"]);
        let none = verifier.verify(&es256(&with(claims(), "carnet_roles", json!([])))).unwrap();
        assert!(none.roles.is_empty());
        let missing = verifier.verify(&es256(&without(claims(), "carnet_roles")));
        assert_eq!(missing, Err(JwtError::MissingClaim("carnet_roles".into())));
        for bad in [json!([1]), json!(""), json!({"role": "admin"}), json!(["admin", null])] {
            let result = verifier.verify(&es256(&with(claims(), "carnet_roles", bad)));
            assert_eq!(result, Err(JwtError::InvalidClaim("carnet_roles".into())));
        }
    }

    #[tokio::test]
    async fn test_verify_checks_the_tenant_claim() {
        let verifier = file_verifier().await;
        let missing = verifier.verify(&es256(&without(claims(), "carnet_tenant")));
        assert_eq!(missing, Err(JwtError::MissingClaim("carnet_tenant".into())));
        for bad in [json!("acme"), json!(42), json!(Uuid::nil().to_string())] {
            let result = verifier.verify(&es256(&with(claims(), "carnet_tenant", bad)));
            assert_eq!(result, Err(JwtError::InvalidClaim("carnet_tenant".into())));
        }
        // The messages name the claim and never carry its value.
        let err = verifier.verify(&es256(&with(claims(), "carnet_tenant", json!("acme-secret")))).unwrap_err();
        assert_eq!(err.to_string(), "token claim carnet_tenant is invalid");
    }

    #[tokio::test]
    async fn test_verify_checks_times() {
        let verifier = file_verifier().await;
        assert_eq!(verifier.verify(&es256(&with(claims(), "exp", json!(now() - 3600)))), Err(JwtError::Expired));
        // Within the 60 s leeway an expired token still passes.
        assert!(verifier.verify(&es256(&with(claims(), "exp", json!(now() - 10)))).is_ok());
        assert_eq!(verifier.verify(&es256(&with(claims(), "nbf", json!(now() + 3600)))), Err(JwtError::NotYetValid));
        assert!(verifier.verify(&es256(&with(claims(), "nbf", json!(now() - 5)))).is_ok());
        assert_eq!(verifier.verify(&es256(&without(claims(), "exp"))), Err(JwtError::MissingClaim("exp".into())));
    }

    #[tokio::test]
    async fn test_verify_checks_issuer_audience_and_subject() {
        let verifier = file_verifier().await;
        let token = es256(&with(claims(), "iss", json!("https://evil.example.test")));
        assert_eq!(verifier.verify(&token), Err(JwtError::WrongIssuer));
        assert_eq!(verifier.verify(&es256(&without(claims(), "iss"))), Err(JwtError::MissingClaim("iss".into())));
        let token = es256(&with(claims(), "aud", json!("another-app")));
        assert_eq!(verifier.verify(&token), Err(JwtError::WrongAudience));
        assert_eq!(verifier.verify(&es256(&with(claims(), "aud", json!([])))), Err(JwtError::WrongAudience));
        assert_eq!(verifier.verify(&es256(&without(claims(), "aud"))), Err(JwtError::MissingClaim("aud".into())));
        assert_eq!(verifier.verify(&es256(&without(claims(), "sub"))), Err(JwtError::MissingClaim("sub".into())));
    }

    #[tokio::test]
    async fn test_verify_refuses_wrong_keys() {
        let verifier = file_verifier().await;
        // Signed by another RSA key under the published kid.
        let forged = sign(Algorithm::RS256, Some("rsa-1"), "rsa2_private.pem", &claims());
        assert_eq!(verifier.verify(&forged), Err(JwtError::BadSignature));
        let tampered = {
            let token = es256(&claims());
            let (head, signature) = token.rsplit_once('.').unwrap();
            let (header, _) = head.split_once('.').unwrap();
            format!("{header}.{}.{signature}", b64(&with(claims(), "carnet_roles", json!(["owner"]))))
        };
        assert_eq!(verifier.verify(&tampered), Err(JwtError::BadSignature));
        let unknown = sign(Algorithm::RS256, Some("rsa-2"), "rsa2_private.pem", &claims());
        assert_eq!(verifier.verify(&unknown), Err(JwtError::UnknownKey));
        // An ES256 token that names the RSA key.
        let mismatched = sign(Algorithm::ES256, Some("rsa-1"), "ec1_private.pem", &claims());
        assert_eq!(verifier.verify(&mismatched), Err(JwtError::AlgorithmMismatch));
    }

    #[tokio::test]
    async fn test_verify_refuses_hmac_and_none() {
        let verifier = file_verifier().await;
        // The classic confusion: the published public key used as an HMAC secret.
        for kid in [Some("rsa-1"), None] {
            let token = sign(Algorithm::HS256, kid, "rsa1_public.pem", &claims());
            assert_eq!(verifier.verify(&token), Err(JwtError::UnsupportedAlgorithm));
        }
        for alg in ["none", "None", "NONE"] {
            let token = format!("{}.{}.", b64(&json!({"alg": alg, "typ": "JWT"})), b64(&claims()));
            assert_eq!(verifier.verify(&token), Err(JwtError::UnsupportedAlgorithm));
        }
        let ps256 = format!("{}.{}.AAAA", b64(&json!({"alg": "PS256", "kid": "rsa-1"})), b64(&claims()));
        assert_eq!(verifier.verify(&ps256), Err(JwtError::UnsupportedAlgorithm));
    }

    #[tokio::test]
    async fn test_verify_refuses_malformed_tokens() {
        let verifier = file_verifier().await;
        let valid = es256(&claims());
        let oversized = format!("{valid}{}", "A".repeat(MAX_TOKEN_BYTES));
        for token in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.AA", &format!("{valid}.x"), &oversized] {
            assert_eq!(verifier.verify(token), Err(JwtError::Malformed), "{token:.40}");
        }
        // Well signed, but the claims are not a JSON object.
        let key = EncodingKey::from_ec_pem(&read_fixture("ec1_private.pem")).unwrap();
        for payload in [URL_SAFE_NO_PAD.encode("not json"), b64(&json!(["sub", "user-42"]))] {
            let message = format!("{}.{payload}", b64(&json!({"alg": "ES256", "kid": "ec-1"})));
            let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).unwrap();
            assert_eq!(verifier.verify(&format!("{message}.{signature}")), Err(JwtError::Malformed));
        }
    }

    #[test]
    fn test_parse_jwks_skips_unusable_keys() {
        let jwks: Value = serde_json::from_slice(&read_fixture("jwks.json")).unwrap();
        let rsa = jwks["keys"][0].clone();
        let ec = jwks["keys"][1].clone();
        let set = json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            with(rsa.clone(), "use", json!("enc")),
            with(with(rsa.clone(), "kid", json!("rsa-as-ps")), "alg", json!("PS256")),
            with(with(rsa.clone(), "kid", json!("rsa-small")), "n", json!(URL_SAFE_NO_PAD.encode([0xc5u8; 128]))),
            with(with(ec.clone(), "kid", json!("ec-off-curve")), "y", json!(URL_SAFE_NO_PAD.encode([1u8; 32]))),
            {"kty": "RSA", "kid": "rsa-oaep", "alg": "RSA-OAEP-256", "n": "AQAB", "e": "AQAB"},
            rsa,
            ec,
        ]});
        let keys = parse_jwks(&serde_json::to_vec(&set).unwrap()).unwrap();
        let kept: Vec<_> = keys.iter().map(|key| (key.kid.as_deref(), key.alg)).collect();
        assert_eq!(kept, [(Some("rsa-1"), Algorithm::RS256), (Some("ec-1"), Algorithm::ES256)]);
        let err = parse_jwks(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).err().unwrap();
        assert_eq!(err.to_string(), "jwks holds no usable RS256 or ES256 signing key");
    }

    /// A JWKS endpoint on a free local port whose document can be swapped and whose hits are counted.
    struct JwksServer {
        url: String,
        document: Arc<Mutex<Vec<u8>>>,
        hits: Arc<AtomicUsize>,
    }

    impl JwksServer {
        async fn start(fixture_name: &str) -> Self {
            let document = Arc::new(Mutex::new(read_fixture(fixture_name)));
            let hits = Arc::new(AtomicUsize::new(0));
            let (served, counted) = (document.clone(), hits.clone());
            let app = axum::Router::new().route(
                "/certs",
                axum::routing::get(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    async move { body }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/certs", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            JwksServer { url, document, hits }
        }

        fn rotate(&self, fixture_name: &str) {
            *self.document.lock().unwrap() = read_fixture(fixture_name);
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn config(&self) -> OidcConfig {
            OidcConfig { jwks_file: String::new(), jwks_url: self.url.clone(), ..config() }
        }
    }

    #[tokio::test]
    async fn test_jwks_url_is_fetched_and_refreshed_on_unknown_kid() {
        let server = JwksServer::start("jwks.json").await;
        let verifier = JwtVerifier::with_unknown_kid_gap(&server.config(), Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(server.hits(), 1);
        assert!(verifier.verify(&rs256(&claims())).is_ok());

        server.rotate("jwks_rotated.json");
        let rotated = sign(Algorithm::RS256, Some("rsa-2"), "rsa2_private.pem", &claims());
        assert_eq!(verifier.verify_with_refresh(&rotated).await.map(|id| id.subject), Ok("user-42".to_owned()));
        assert_eq!(server.hits(), 2);
        // The retired key is gone with the old document.
        assert_eq!(verifier.verify(&rs256(&claims())), Err(JwtError::UnknownKey));
    }

    #[tokio::test]
    async fn test_verify_wakes_the_background_refresher_on_unknown_kid() {
        let server = JwksServer::start("jwks.json").await;
        let verifier = JwtVerifier::with_unknown_kid_gap(&server.config(), Duration::ZERO).await.unwrap().unwrap();
        server.rotate("jwks_rotated.json");
        let rotated = sign(Algorithm::RS256, Some("rsa-2"), "rsa2_private.pem", &claims());
        assert_eq!(verifier.verify(&rotated), Err(JwtError::UnknownKey));
        let deadline = Instant::now() + Duration::from_secs(10);
        while verifier.verify(&rotated).is_err() {
            assert!(Instant::now() < deadline, "the rotated key was never fetched");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(server.hits() >= 2);
    }

    #[tokio::test]
    async fn test_unknown_kid_refreshes_at_most_once_per_30_seconds() {
        let server = JwksServer::start("jwks.json").await;
        let verifier = JwtVerifier::from_config(&server.config()).await.unwrap().unwrap();
        server.rotate("jwks_rotated.json");
        let bogus = sign(Algorithm::ES256, Some("made-up"), "ec1_private.pem", &claims());
        for _ in 0..20 {
            assert_eq!(verifier.verify_with_refresh(&bogus).await, Err(JwtError::UnknownKey));
            assert_eq!(verifier.verify(&bogus), Err(JwtError::UnknownKey));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.hits(), 1, "the startup fetch is less than 30 s old");
    }
}
