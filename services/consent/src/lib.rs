//! carnet-consent: the consent service.
//!
//! Owns purposes with versioned notice texts, the append-only consent ledger (grants and
//! withdrawals with their lawful basis, source and evidence) and the current state derived from
//! it, and answers "may purpose P be used for contact C now?" one pair or thousands at a time.
//! Restriction and objection come from the contacts service at check time.

pub mod domain;
pub mod entity;
pub mod grpc;
pub mod imports;
pub mod store;

use serde::{Deserialize, Serialize};

use carnet_kit::config::{ConfigError, Validate};

pub use grpc::ConsentGrpc;
pub use store::ConsentStore;

/// The service name used in exports, erasure confirmations and the DSAR participant list.
pub const SERVICE_NAME: &str = "consent";
/// Version of the JSON document [`ConsentStore::export_subject`] produces.
pub const EXPORT_SCHEMA_VERSION: u32 = 1;

/// The `[consent]` configuration section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// `postgres://…` or `sqlite://…`; empty means `consent.db` in the data dir.
    pub database_url: String,
    pub max_connections: u32,
    /// Split mode: where the contacts service listens; empty when it runs in this process.
    pub contacts_endpoint: String,
}

impl Validate for ConsentConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database_url;
        if !url.is_empty() && !url.starts_with("sqlite:") && !url.starts_with("postgres") {
            return Err(ConfigError("consent.database_url must be a sqlite: or postgres:// URL".into()));
        }
        if self.max_connections == 0 {
            return Err(ConfigError("consent.max_connections must be positive".into()));
        }
        if !self.contacts_endpoint.is_empty() && !self.contacts_endpoint.starts_with("http") {
            return Err(ConfigError("consent.contacts_endpoint must be an http:// or https:// URL".into()));
        }
        Ok(())
    }
}

/// The bus consumer of the consent service: erases a subject's ledger on `erasure.requested`
/// and confirms in the same transaction; records the consents of imported contacts
/// (`contact.upserted` naming an import).
pub fn consumer(store: ConsentStore, imports: imports::ImportFollower) -> carnet_kit::bus::Consumer {
    let mut consumer = carnet_kit::bus::erasure_consumer(SERVICE_NAME, move |tenant_id, request_id, subject_id| {
        let store = store.clone();
        async move { store.erase_for_request(tenant_id, subject_id, &request_id).await.map(|_| ()) }
    });
    // Imports: the consents an import's terms give follow its contacts (docs/import.md).
    let erase = consumer.handler.clone();
    consumer.kinds.push("contact.upserted".to_string());
    consumer.handler = carnet_kit::bus::handler(move |event| {
        let erase = erase.clone();
        let imports = imports.clone();
        async move {
            if matches!(event.payload, Some(carnet_proto::events::v1::event::Payload::ContactUpserted(_))) {
                return imports.on_event(&event).await.map_err(|e| format!("{}: {}", e.code, e.message));
            }
            erase(event).await
        }
    });
    consumer
}
