//! carnet-comms: the comms service.
//!
//! E-mail for a purpose, only to people the consent service says may receive it at the moment of
//! sending: single messages, campaigns and sequences, plus the double opt-in and consent-request
//! mails. A suppression list of keyed address hashes (never addresses) backs the consent check
//! up. Calls are logged with time, duration and outcome; recording needs consent for the
//! tenant's call-recording purpose. The timeline joins mails, calls and consent events.
//!
//! Comms keeps no address: the dispatcher reads it from the contacts service when it sends.

pub mod audit;
pub mod dispatch;
pub mod entity;
pub mod grpc;
pub mod mailer;
pub mod peers;
pub mod retention;
pub mod store;
pub mod template;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use carnet_kit::config::{ConfigError, Validate};

pub use dispatch::Dispatcher;
pub use grpc::CommsGrpc;
pub use mailer::Mailer;
pub use store::CommsStore;

/// The service name used in exports, erasure confirmations and the DSAR participant list.
pub const SERVICE_NAME: &str = "comms";
/// Version of the JSON document ExportSubject produces.
pub const EXPORT_SCHEMA_VERSION: u32 = 1;

/// The `[comms]` configuration section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommsConfig {
    /// `postgres://…` or `sqlite://…`; empty means `comms.db` in the data dir.
    pub database_url: String,
    pub max_connections: u32,
    /// Split mode: where the contacts and consent services listen; empty when in this process.
    pub contacts_endpoint: String,
    pub consent_endpoint: String,
    /// The `From:` of every mail, e.g. `Acme <news@acme.example>`.
    pub from_address: String,
    /// Where people's links point (the gateway's public URL, e.g. `https://crm.acme.example`).
    /// Empty in monolith mode: this process's gateway address.
    pub public_url: String,
    /// The consent purpose a call recording needs.
    pub recording_purpose: String,
    /// Mails sent per second at most, over all tenants; 0: as fast as the relay takes them.
    pub send_rate_per_second: u32,
    /// Deliveries claimed per dispatcher round, and mails in flight at once.
    pub batch_size: u32,
    pub concurrency: u32,
    /// How long a claimed delivery stays reserved for its sender; after a crash it is retried
    /// once this has passed.
    pub claim_lease_ms: u64,
    /// Temporary failures are retried this many times, with exponential backoff from
    /// `retry_base_ms`.
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    /// How often the dispatcher looks for due mail when nothing woke it.
    pub poll_interval_ms: u64,
    pub smtp: SmtpConfig,
}

/// The SMTP relay. An empty host writes each mail as an `.eml` file under `<data_dir>/mail`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// `starttls` (required), `tls` (implicit, usually port 465) or `none` (loopback relays only).
    pub tls: String,
    pub username: String,
    pub password: String,
    pub timeout_ms: u64,
    /// A PEM file of extra CA certificates to trust for the relay (a private CA); empty: the
    /// system's web roots only.
    pub ca_file: String,
    /// Pooled connections to the relay.
    pub max_connections: u32,
}

impl Validate for CommsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database_url;
        if !url.is_empty() && !url.starts_with("sqlite:") && !url.starts_with("postgres") {
            return Err(ConfigError("comms.database_url must be a sqlite: or postgres:// URL".into()));
        }
        if self.max_connections == 0 {
            return Err(ConfigError("comms.max_connections must be positive".into()));
        }
        for (key, value) in [
            ("comms.contacts_endpoint", &self.contacts_endpoint),
            ("comms.consent_endpoint", &self.consent_endpoint),
            ("comms.public_url", &self.public_url),
        ] {
            if !value.is_empty() && !value.starts_with("http") {
                return Err(ConfigError(format!("{key} must be an http:// or https:// URL")));
            }
        }
        if self.from_address.parse::<lettre::message::Mailbox>().is_err() {
            return Err(ConfigError("comms.from_address must be an address like `Name <user@example.org>`".into()));
        }
        if self.recording_purpose.trim().is_empty() {
            return Err(ConfigError("comms.recording_purpose must not be empty".into()));
        }
        if self.batch_size == 0 || self.concurrency == 0 || self.max_attempts == 0 {
            return Err(ConfigError(
                "comms.batch_size, comms.concurrency and comms.max_attempts must be positive".into(),
            ));
        }
        if self.claim_lease_ms < 1_000 {
            return Err(ConfigError("comms.claim_lease_ms must be at least 1000".into()));
        }
        if !["starttls", "tls", "none"].contains(&self.smtp.tls.as_str()) {
            return Err(ConfigError("comms.smtp.tls must be `starttls`, `tls` or `none`".into()));
        }
        if self.smtp.username.is_empty() != self.smtp.password.is_empty() {
            return Err(ConfigError("comms.smtp.username and comms.smtp.password go together".into()));
        }
        if self.smtp.max_connections == 0 {
            return Err(ConfigError("comms.smtp.max_connections must be positive".into()));
        }
        Ok(())
    }
}

/// Keyed hashes of addresses for the suppression list: HMAC-SHA256 under a per-tenant key
/// (itself derived from the service key), over the trimmed, lower-cased address.
#[derive(Clone)]
pub struct AddressHasher {
    key: std::sync::Arc<Vec<u8>>,
}

impl AddressHasher {
    pub fn new(key: Vec<u8>) -> Self {
        AddressHasher { key: std::sync::Arc::new(key) }
    }

    fn mac(key: &[u8]) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(key).expect("hmac takes keys of any length")
    }

    pub fn hash(&self, tenant_id: Uuid, address: &str) -> String {
        let mut tenant = Self::mac(&self.key);
        tenant.update(tenant_id.as_bytes());
        let tenant_key = tenant.finalize().into_bytes();
        let mut m = Self::mac(&tenant_key);
        m.update(address.trim().to_lowercase().as_bytes());
        hex::encode(m.finalize().into_bytes())
    }
}

/// The bus consumer of the comms service:
/// - `erasure.requested`: the address is suppressed (while contacts still has it), then the
///   subject's mails, calls and enrolments are erased and the erasure confirmed, in one
///   transaction;
/// - `consent.changed`: a withdrawal suppresses the address for that purpose, a new grant lifts
///   that suppression.
pub fn consumer(store: CommsStore, peers: peers::Peers, hasher: AddressHasher) -> carnet_kit::bus::Consumer {
    use carnet_proto::events::v1::event::Payload;
    carnet_kit::bus::Consumer {
        durable: SERVICE_NAME.to_string(),
        kinds: vec!["erasure.requested".to_string(), "consent.changed".to_string()],
        handler: carnet_kit::bus::handler(move |event| {
            let (store, peers, hasher) = (store.clone(), peers.clone(), hasher.clone());
            async move {
                let err = |e: carnet_kit::ServiceError| format!("{}: {}", e.code, e.message);
                let address = |tenant_id: Uuid, contact_id: String| {
                    let peers = peers.clone();
                    async move {
                        let req = carnet_proto::contacts::v1::BatchGetContactsRequest { ids: vec![contact_id] };
                        let found = peers.contacts(tenant_id, "").batch_get_contacts(req).await;
                        found.ok().and_then(|r| r.into_inner().contacts.into_iter().next()).and_then(|c| c.email)
                    }
                };
                if let Some((tenant_id, request_id, subject_id)) = carnet_kit::outbox::erasure_for(&event, SERVICE_NAME)
                {
                    if let Some(email) = address(tenant_id, subject_id.to_string()).await {
                        store.suppress(tenant_id, &hasher.hash(tenant_id, &email), "*", "erased").await.map_err(err)?;
                    }
                    store.erase_for_request(tenant_id, subject_id, &request_id).await.map_err(err)?;
                    tracing::info!(%tenant_id, %request_id, contact_id = %subject_id, "comms data erased for a request");
                    return Ok(());
                }
                if let Some(Payload::ConsentChanged(c)) = &event.payload {
                    let Ok(tenant_id) = event.tenant_id.parse::<Uuid>() else { return Ok(()) };
                    if c.status != "withdrawn" && c.status != "granted" {
                        return Ok(());
                    }
                    let Some(email) = address(tenant_id, c.contact_id.clone()).await else { return Ok(()) };
                    let hash = hasher.hash(tenant_id, &email);
                    if c.status == "withdrawn" {
                        store.suppress(tenant_id, &hash, &c.purpose, "withdrawn").await.map_err(err)?;
                    } else {
                        store.lift(tenant_id, &hash, &c.purpose).await.map_err(err)?;
                    }
                }
                Ok(())
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_address_hash_is_normalised_and_tenant_scoped() {
        let h = AddressHasher::new(b"k".to_vec());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(h.hash(a, " Ada@Example.org "), h.hash(a, "ada@example.org"));
        assert_ne!(h.hash(a, "ada@example.org"), h.hash(b, "ada@example.org"));
        assert!(!h.hash(a, "ada@example.org").contains("ada"));
    }
}
