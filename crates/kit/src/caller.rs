//! The caller context: who is calling, for which tenant, with which permissions.
//!
//! The gateway (or a service calling another) signs the context with the mesh key and sends it in
//! gRPC metadata; every service verifies the signature and the expiry before any handler runs, and
//! each handler checks the permission it needs. A call without a valid context is refused.
//!
//! Wire form: `x-carnet-caller` = base64url(JSON), `x-carnet-caller-sig` = base64url(HMAC-SHA256).

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::error::{ErrorCode, ServiceError};

pub const CALLER_HEADER: &str = "x-carnet-caller";
pub const CALLER_SIG_HEADER: &str = "x-carnet-caller-sig";
/// Seconds a signed context stays valid.
pub const DEFAULT_CALLER_TTL_SECS: i64 = 60;
/// Clock skew tolerated between signer and verifier.
const CLOCK_SKEW_SECS: i64 = 30;

/// What a caller may do. Roles (in the gateway) map to sets of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    #[serde(rename = "contacts:read")]
    ContactsRead,
    #[serde(rename = "contacts:write")]
    ContactsWrite,
    #[serde(rename = "contacts:delete")]
    ContactsDelete,
    #[serde(rename = "contacts:export")]
    ContactsExport,
    #[serde(rename = "policy:manage")]
    PolicyManage,
    #[serde(rename = "consent:manage")]
    ConsentManage,
    #[serde(rename = "comms:send")]
    CommsSend,
    #[serde(rename = "enrichment:admin")]
    EnrichmentAdmin,
    #[serde(rename = "dsar:manage")]
    DsarManage,
    #[serde(rename = "audit:read")]
    AuditRead,
    #[serde(rename = "keys:manage")]
    KeysManage,
}

impl Permission {
    pub const ALL: [Permission; 11] = [
        Permission::ContactsRead,
        Permission::ContactsWrite,
        Permission::ContactsDelete,
        Permission::ContactsExport,
        Permission::PolicyManage,
        Permission::ConsentManage,
        Permission::CommsSend,
        Permission::EnrichmentAdmin,
        Permission::DsarManage,
        Permission::AuditRead,
        Permission::KeysManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ContactsRead => "contacts:read",
            Permission::ContactsWrite => "contacts:write",
            Permission::ContactsDelete => "contacts:delete",
            Permission::ContactsExport => "contacts:export",
            Permission::PolicyManage => "policy:manage",
            Permission::ConsentManage => "consent:manage",
            Permission::CommsSend => "comms:send",
            Permission::EnrichmentAdmin => "enrichment:admin",
            Permission::DsarManage => "dsar:manage",
            Permission::AuditRead => "audit:read",
            Permission::KeysManage => "keys:manage",
        }
    }
}

impl std::str::FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            let valid: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
            format!("unknown permission `{s}`, expected one of: {}", valid.join(", "))
        })
    }
}

/// The verified identity of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    #[serde(rename = "t")]
    pub tenant_id: Uuid,
    /// An opaque principal id (`key:<id>`, `user:<sub>`, `service:dsar`), never a name or address.
    #[serde(rename = "p")]
    pub principal: String,
    #[serde(rename = "perms")]
    pub permissions: BTreeSet<Permission>,
    /// Unix seconds after which the signed context is refused.
    #[serde(rename = "exp", default)]
    pub expires_at: i64,
    /// The id of the request at the edge (the gateway's `x-request-id`), for correlation.
    #[serde(rename = "rid", default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
}

impl Caller {
    pub fn new(
        tenant_id: Uuid,
        principal: impl Into<String>,
        permissions: impl IntoIterator<Item = Permission>,
    ) -> Self {
        Caller {
            tenant_id,
            principal: principal.into(),
            permissions: permissions.into_iter().collect(),
            expires_at: 0,
            request_id: String::new(),
        }
    }

    /// Returns a caller holding every permission (for service-to-service calls and tests).
    pub fn all_permissions(tenant_id: Uuid, principal: impl Into<String>) -> Self {
        Caller::new(tenant_id, principal, Permission::ALL)
    }

    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Fails with `permission_denied` naming the permission unless the caller holds it.
    pub fn require(&self, permission: Permission) -> Result<(), ServiceError> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(ServiceError::new(
                ErrorCode::PermissionDenied,
                format!("principal {} lacks permission {}", self.principal, permission.as_str()),
            ))
        }
    }

    /// Fails unless the caller holds at least one of the permissions.
    pub fn require_any(&self, permissions: &[Permission]) -> Result<(), ServiceError> {
        if permissions.iter().any(|p| self.has(*p)) {
            return Ok(());
        }
        let names: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
        Err(ServiceError::new(
            ErrorCode::PermissionDenied,
            format!("principal {} lacks one of the permissions {}", self.principal, names.join(", ")),
        ))
    }

    /// Reads the verified caller that [`CallerInterceptor`] put into the request.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, ServiceError> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ServiceError::new(ErrorCode::Unauthenticated, "missing caller context"))
    }
}

/// The shared secret that signs caller contexts inside the mesh.
#[derive(Clone)]
pub struct MeshKey(Arc<Vec<u8>>);

impl std::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshKey([redacted])")
    }
}

impl MeshKey {
    /// The minimum key length in bytes.
    pub const MIN_LEN: usize = 32;

    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < Self::MIN_LEN {
            return Err(format!("mesh signing key must be at least {} bytes", Self::MIN_LEN));
        }
        Ok(MeshKey(Arc::new(bytes)))
    }

    /// Returns a fresh random key.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        MeshKey(Arc::new(bytes.to_vec()))
    }

    /// Parses the textual form: hex (64+ digits) or any string of at least 32 bytes.
    pub fn from_text(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match hex::decode(text) {
            Ok(bytes) if bytes.len() >= Self::MIN_LEN => MeshKey::new(bytes),
            _ => MeshKey::new(text.as_bytes().to_vec()),
        }
    }

    /// Returns a key derived for one use (`label`), so one configured secret serves several
    /// purposes without one use revealing another's key.
    pub fn derive(&self, label: &str) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(b"carnet-derive:");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_slice())
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac takes keys of any length")
    }

    /// Signs `caller`, valid for `ttl_secs` from now; returns (payload, signature) header values.
    pub fn sign(&self, caller: &Caller, ttl_secs: i64) -> (String, String) {
        let mut caller = caller.clone();
        caller.expires_at = chrono::Utc::now().timestamp() + ttl_secs;
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&caller).expect("caller serialises"));
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        (payload, sig)
    }

    /// Verifies a signed context and its expiry.
    pub fn verify(&self, payload: &str, sig: &str) -> Result<Caller, ServiceError> {
        let unauthenticated = |m: &str| ServiceError::new(ErrorCode::Unauthenticated, m);
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| unauthenticated("malformed caller signature"))?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).map_err(|_| unauthenticated("invalid caller signature"))?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| unauthenticated("malformed caller context"))?;
        let caller: Caller = serde_json::from_slice(&json).map_err(|_| unauthenticated("malformed caller context"))?;
        if caller.expires_at + CLOCK_SKEW_SECS < chrono::Utc::now().timestamp() {
            return Err(unauthenticated("caller context expired"));
        }
        Ok(caller)
    }
}

/// Server-side interceptor: verifies the signed caller context and stores the [`Caller`] in the
/// request extensions; refuses the call with `unauthenticated` otherwise.
#[derive(Clone, Debug)]
pub struct CallerInterceptor {
    key: MeshKey,
}

impl CallerInterceptor {
    pub fn new(key: MeshKey) -> Self {
        CallerInterceptor { key }
    }
}

impl tonic::service::Interceptor for CallerInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let header = |name: &str| request.metadata().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (Some(payload), Some(sig)) = (header(CALLER_HEADER), header(CALLER_SIG_HEADER)) else {
            return Err(ServiceError::new(ErrorCode::Unauthenticated, "missing caller context").into());
        };
        let caller = self.key.verify(&payload, &sig)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// Client-side interceptor: signs a fixed caller onto every outgoing request, and passes on the
/// W3C trace context of the current span.
///
/// The signed headers are reused until half their lifetime has passed, so a busy client signs
/// about once every 30 seconds and HTTP/2 header compression sees the same values.
#[derive(Clone, Debug)]
pub struct CallerSigner {
    key: MeshKey,
    caller: Arc<Caller>,
    ttl_secs: i64,
    signed: Arc<std::sync::Mutex<Option<SignedHeaders>>>,
}

#[derive(Clone, Debug)]
struct SignedHeaders {
    payload: tonic::metadata::AsciiMetadataValue,
    sig: tonic::metadata::AsciiMetadataValue,
    renew_at: i64,
}

impl CallerSigner {
    pub fn new(key: MeshKey, caller: Caller) -> Self {
        CallerSigner { key, caller: Arc::new(caller), ttl_secs: DEFAULT_CALLER_TTL_SECS, signed: Default::default() }
    }

    /// Adds the signed caller headers to `request`.
    pub fn apply<T>(&self, request: &mut tonic::Request<T>) {
        let now = chrono::Utc::now().timestamp();
        let headers = {
            let mut cached = self.signed.lock().unwrap_or_else(|e| e.into_inner());
            match cached.as_ref() {
                Some(h) if h.renew_at > now => h.clone(),
                _ => {
                    let (payload, sig) = self.key.sign(&self.caller, self.ttl_secs);
                    let fresh = SignedHeaders {
                        payload: payload.parse().expect("base64url is valid ascii metadata"),
                        sig: sig.parse().expect("base64url is valid ascii metadata"),
                        renew_at: now + self.ttl_secs / 2,
                    };
                    *cached = Some(fresh.clone());
                    fresh
                }
            }
        };
        let md = request.metadata_mut();
        md.insert(CALLER_HEADER, headers.payload);
        md.insert(CALLER_SIG_HEADER, headers.sig);
        crate::telemetry::propagate_trace(md);
    }
}

impl tonic::service::Interceptor for CallerSigner {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(&mut request);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn caller() -> Caller {
        Caller::new(Uuid::now_v7(), "key:abc", [Permission::ContactsRead])
    }

    #[test]
    fn test_signed_caller_verifies_and_reaches_extensions() {
        let key = MeshKey::generate();
        let mut req = tonic::Request::new(());
        CallerSigner::new(key.clone(), caller()).apply(&mut req);
        let req = CallerInterceptor::new(key).call(req).expect("verifies");
        let got = req.extensions().get::<Caller>().expect("caller inserted");
        assert_eq!(got.principal, "key:abc");
        assert!(got.has(Permission::ContactsRead));
        assert!(!got.has(Permission::ContactsWrite));
    }

    #[test]
    fn test_caller_signed_with_another_key_is_refused() {
        let mut req = tonic::Request::new(());
        CallerSigner::new(MeshKey::generate(), caller()).apply(&mut req);
        let err = CallerInterceptor::new(MeshKey::generate()).call(req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn test_tampered_permissions_are_refused() {
        let key = MeshKey::generate();
        let (_, sig) = key.sign(&caller(), 60);
        let forged = Caller::all_permissions(Uuid::now_v7(), "key:abc");
        let (forged_payload, _) = key.sign(&forged, 60);
        assert!(key.verify(&forged_payload, &sig).is_err());
    }

    #[test]
    fn test_expired_caller_is_refused() {
        let key = MeshKey::generate();
        let (payload, sig) = key.sign(&caller(), -(CLOCK_SKEW_SECS + 5));
        let err = key.verify(&payload, &sig).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthenticated);
    }

    #[test]
    fn test_missing_caller_is_refused() {
        let err = CallerInterceptor::new(MeshKey::generate()).call(tonic::Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn test_require_names_the_missing_permission() {
        let err = caller().require(Permission::ContactsExport).unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        assert!(err.message.contains("contacts:export"));
    }

    #[test]
    fn test_short_mesh_key_is_refused() {
        assert!(MeshKey::from_text("too-short").is_err());
        assert!(MeshKey::from_text(&"ab".repeat(32)).is_ok());
    }
}
