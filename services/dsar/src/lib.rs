//! carnet-dsar: the DSAR orchestrator.
//!
//! One request exports or forgets a person across every participating service, each service
//! confirms, and the proof survives: requests with their Art. 12(3) deadlines, per-service tasks,
//! legal holds, encrypted access exports, and the erasure ledger (pseudonyms, counts and times,
//! no personal data). Erasure travels as `erasure.requested` on the bus; participants answer
//! `erasure.confirmed`; whoever has not confirmed is asked again with backoff. The service also
//! keeps every tenant's audit trail: `audit.recorded` events from every service, chained per
//! tenant (docs/audit.md).

pub mod audit;
pub mod audit_grpc;
pub mod audit_store;
pub mod engine;
pub mod entity;
pub mod grpc;
pub mod retention;
pub mod retention_grpc;
pub mod retention_store;
pub mod store;

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use carnet_kit::config::{ConfigError, Validate};

pub use engine::Engine;
pub use grpc::DsarGrpc;
pub use store::DsarStore;

pub const SERVICE_NAME: &str = "dsar";
/// Version of the access document.
pub const EXPORT_SCHEMA_VERSION: u32 = 1;

/// The `[dsar]` configuration section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DsarConfig {
    pub database_url: String,
    pub max_connections: u32,
    /// The services that hold personal data: each answers ExportSubject and erases on
    /// `erasure.requested`. A service that is down is still waited for.
    pub participants: Vec<String>,
    /// Split mode: where each participant listens (`contacts = "http://carnet-contacts:50051"`);
    /// a participant without an entry runs in this process.
    pub endpoints: BTreeMap<String, String>,
    /// How long an access export stays downloadable.
    pub export_ttl_hours: u64,
    /// A participant that has not confirmed an erasure is asked again after this, doubling up to
    /// `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Deadline of one ExportSubject call.
    pub call_timeout_ms: u64,
    /// How often the retention scheduler applies every tenant's policies (docs/retention.md);
    /// 0 turns it off (`RunRetention` still works).
    pub retention_interval_ms: u64,
}

impl Validate for DsarConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database_url;
        if !url.is_empty() && !url.starts_with("sqlite:") && !url.starts_with("postgres") {
            return Err(ConfigError("dsar.database_url must be a sqlite: or postgres:// URL".into()));
        }
        if self.max_connections == 0 {
            return Err(ConfigError("dsar.max_connections must be positive".into()));
        }
        if self.participants.is_empty() {
            return Err(ConfigError("dsar.participants must name at least one service".into()));
        }
        for p in &self.participants {
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_lowercase()) {
                return Err(ConfigError(format!("dsar.participants: `{p}` is not a service name")));
            }
        }
        for (name, url) in &self.endpoints {
            if !url.starts_with("http") {
                return Err(ConfigError(format!("dsar.endpoints.{name} must be an http:// or https:// URL")));
            }
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms || self.call_timeout_ms == 0 {
            return Err(ConfigError(
                "dsar.retry_base_ms, retry_max_ms and call_timeout_ms must be positive and ordered".into(),
            ));
        }
        Ok(())
    }
}

/// The keys the DSAR service derives from the mesh key.
#[derive(Clone)]
pub struct Keys {
    pseudonym: std::sync::Arc<Vec<u8>>,
    exports: std::sync::Arc<Vec<u8>>,
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes keys of any length")
}

impl Keys {
    pub fn new(pseudonym: Vec<u8>, exports: Vec<u8>) -> Self {
        Keys { pseudonym: std::sync::Arc::new(pseudonym), exports: std::sync::Arc::new(exports) }
    }

    /// The ledger pseudonym of a subject: HMAC-SHA256(tenant ‖ contact id), hex.
    pub fn pseudonym(&self, tenant_id: Uuid, subject_id: Uuid) -> String {
        let mut m = mac(&self.pseudonym);
        m.update(tenant_id.as_bytes());
        m.update(subject_id.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    fn export_cipher(&self, tenant_id: Uuid) -> Aes256Gcm {
        let mut m = mac(&self.exports);
        m.update(tenant_id.as_bytes());
        let key = m.finalize().into_bytes();
        Aes256Gcm::new_from_slice(&key).expect("32-byte key")
    }

    /// Encrypts an export (AES-256-GCM under a per-tenant key, the request id as associated data).
    pub fn seal(&self, tenant_id: Uuid, request_id: Uuid, plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let nonce: [u8; 12] = rand::random();
        let payload = aes_gcm::aead::Payload { msg: plain, aad: request_id.as_bytes() };
        let sealed = self.export_cipher(tenant_id).encrypt(Nonce::from_slice(&nonce), payload).expect("encryption");
        (nonce.to_vec(), sealed)
    }

    pub fn open(&self, tenant_id: Uuid, request_id: Uuid, nonce: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if nonce.len() != 12 {
            return None;
        }
        let payload = aes_gcm::aead::Payload { msg: sealed, aad: request_id.as_bytes() };
        self.export_cipher(tenant_id).decrypt(Nonce::from_slice(nonce), payload).ok()
    }
}

/// The bus consumer of the DSAR service: `erasure.confirmed` from the participants, and
/// `audit.recorded` from every service (the DSAR service's own included).
pub fn consumer(engine: Engine) -> carnet_kit::bus::Consumer {
    carnet_kit::bus::Consumer {
        durable: SERVICE_NAME.to_string(),
        kinds: vec!["erasure.confirmed".to_string(), "audit.recorded".to_string(), "consent.changed".to_string()],
        handler: carnet_kit::bus::handler(move |event| {
            let engine = engine.clone();
            async move { engine.on_event(event).await }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_exports_round_trip_and_are_bound_to_their_request() {
        let keys = Keys::new(b"p".to_vec(), b"e".to_vec());
        let (t, r) = (Uuid::now_v7(), Uuid::now_v7());
        let (nonce, sealed) = keys.seal(t, r, b"{\"a\":1}");
        assert_eq!(keys.open(t, r, &nonce, &sealed).as_deref(), Some(&b"{\"a\":1}"[..]));
        assert!(keys.open(t, Uuid::now_v7(), &nonce, &sealed).is_none());
        assert!(keys.open(Uuid::now_v7(), r, &nonce, &sealed).is_none());
        assert!(!sealed.windows(5).any(|w| w == b"\"a\":1"));
    }

    #[test]
    fn test_pseudonyms_are_stable_and_tenant_scoped() {
        let keys = Keys::new(b"p".to_vec(), b"e".to_vec());
        let s = Uuid::now_v7();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(keys.pseudonym(a, s), keys.pseudonym(a, s));
        assert_ne!(keys.pseudonym(a, s), keys.pseudonym(b, s));
    }
}
