//! carnet-contacts: the contacts service.
//!
//! Owns contacts, the tenant field policy (data minimisation), provenance, the rectification
//! history and the restriction (Art. 18) and objection (Art. 21) flags. Emits
//! `contact.upserted`, `contact.merged` and `contact.erased` through its outbox.

pub mod audit;
pub mod batch;
pub mod convert;
pub mod domain;
pub mod entity;
pub mod grpc;
pub mod rows;
pub mod sealed;
pub mod search;
pub mod store;
pub mod validate;

use serde::{Deserialize, Serialize};

use carnet_kit::config::{ConfigError, Validate};

pub use audit::Audit;
pub use grpc::ContactsGrpc;
pub use store::ContactStore;

/// The service name used in exports, erasure confirmations and the DSAR participant list.
pub const SERVICE_NAME: &str = "contacts";
/// Version of the JSON document [`ContactStore::export_subject`] produces.
pub const EXPORT_SCHEMA_VERSION: u32 = 1;

/// The `[contacts]` configuration section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContactsConfig {
    /// `postgres://…` or `sqlite://…`; empty means `contacts.db` in the data dir.
    pub database_url: String,
    pub max_connections: u32,
}

impl Validate for ContactsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database_url;
        if !url.is_empty() && !url.starts_with("sqlite:") && !url.starts_with("postgres") {
            return Err(ConfigError("contacts.database_url must be a sqlite: or postgres:// URL".into()));
        }
        if self.max_connections == 0 {
            return Err(ConfigError("contacts.max_connections must be positive".into()));
        }
        Ok(())
    }
}

/// The bus consumer of the contacts service: erases a subject on `erasure.requested` and
/// confirms in the same transaction.
pub fn consumer(store: ContactStore) -> carnet_kit::bus::Consumer {
    carnet_kit::bus::erasure_consumer(SERVICE_NAME, move |tenant_id, request_id, subject_id| {
        let store = store.clone();
        async move { store.erase_for_request(tenant_id, subject_id, &request_id).await.map(|_| ()) }
    })
}
