//! carnet-contacts: the contacts service.
//!
//! Owns contacts, the tenant field policy (data minimisation), provenance, the rectification
//! history and the restriction (Art. 18) and objection (Art. 21) flags. Emits
//! `contact.upserted`, `contact.merged` and `contact.erased` through its outbox.

pub mod activity;
pub mod audit;
pub mod batch;
pub mod bulk_export;
pub mod convert;
pub mod domain;
pub mod entity;
pub mod grpc;
pub mod import;
pub mod import_batch;
pub mod import_grpc;
pub mod import_parse;
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
/// confirms in the same transaction; moves a contact's last activity on `consent.changed` and
/// `contact.activity` (retention counts inactivity from it).
pub fn consumer(store: ContactStore) -> carnet_kit::bus::Consumer {
    use carnet_proto::events::v1::event::Payload;
    let erase_store = store.clone();
    let mut consumer = carnet_kit::bus::erasure_consumer(SERVICE_NAME, move |tenant_id, request_id, subject_id| {
        let store = erase_store.clone();
        async move { store.erase_for_request(tenant_id, subject_id, &request_id).await.map(|_| ()) }
    });
    let erase = consumer.handler.clone();
    consumer.kinds.extend(["consent.changed".to_string(), "contact.activity".to_string()]);
    consumer.handler = carnet_kit::bus::handler(move |event| {
        let store = store.clone();
        let erase = erase.clone();
        async move {
            let contact_id = match &event.payload {
                Some(Payload::ConsentChanged(c)) => &c.contact_id,
                Some(Payload::ContactActivity(a)) => &a.contact_id,
                _ => return erase(event).await,
            };
            let (Ok(tenant_id), Ok(contact_id)) = (event.tenant_id.parse(), contact_id.parse()) else {
                return Ok(());
            };
            let at = carnet_kit::outbox::occurred_at(&event);
            store.touch(tenant_id, contact_id, at).await.map(|_| ()).map_err(|e| format!("{}: {}", e.code, e.message))
        }
    });
    consumer
}
