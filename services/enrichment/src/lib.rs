//! carnet-enrichment: the enrichment service.
//!
//! Enrichment and profiling run only as WebAssembly components (`plugins/wit`, run by
//! `carnet-plugin-host`) that see only the fields their manifest declares, inside hard limits.
//! Tenants switch them on and off (`auto_enrichment`, `profiling_allowed`, per plugin); a
//! person's objection or restriction stops every plugin for them, and a profiling plugin needs
//! a lawful basis for the tenant's profiling purpose. Every value a plugin finds is written back
//! through the contacts service with provenance `enrichment` / `<plugin>@<version>`, and every
//! run is recorded (keys and outcomes, never values).

pub mod engine;
pub mod entity;
pub mod grpc;
pub mod store;

use serde::{Deserialize, Serialize};

use carnet_kit::config::{ConfigError, Validate};

pub use engine::{Engine, Trigger};
pub use grpc::EnrichmentGrpc;
pub use store::EnrichmentStore;

/// The service name used in exports, erasure confirmations and the DSAR participant list.
pub const SERVICE_NAME: &str = "enrichment";
/// Version of the JSON document ExportSubject produces.
pub const EXPORT_SCHEMA_VERSION: u32 = 1;

/// The `[enrichment]` configuration section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentConfig {
    /// `postgres://…` or `sqlite://…`; empty means `enrichment.db` in the data dir.
    pub database_url: String,
    pub max_connections: u32,
    /// Split mode: where the contacts and consent services listen; empty when in this process.
    pub contacts_endpoint: String,
    pub consent_endpoint: String,
    /// The consent purpose a profiling plugin needs a lawful basis for.
    pub profiling_purpose: String,
    /// Limits of one plugin run.
    pub memory_mb: u32,
    pub timeout_ms: u64,
    pub max_output_bytes: u32,
    /// Plugin instances alive at once (the pooling allocator's size).
    pub pool_size: u32,
    /// The largest component `InstallPlugin` accepts.
    pub max_component_bytes: u32,
    /// Outbound fetches of plugins (only to the hosts their manifest declares): the wall time
    /// of one (never past the run's `timeout_ms`), the largest body, how many one run may send,
    /// and whether plain `http://` is allowed (development and tests only).
    pub fetch_timeout_ms: u64,
    pub fetch_max_body_bytes: u32,
    pub fetch_max_per_run: u32,
    pub fetch_allow_plain_http: bool,
}

impl Validate for EnrichmentConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database_url;
        if !url.is_empty() && !url.starts_with("sqlite:") && !url.starts_with("postgres") {
            return Err(ConfigError("enrichment.database_url must be a sqlite: or postgres:// URL".into()));
        }
        if self.max_connections == 0 {
            return Err(ConfigError("enrichment.max_connections must be positive".into()));
        }
        for (key, value) in [
            ("enrichment.contacts_endpoint", &self.contacts_endpoint),
            ("enrichment.consent_endpoint", &self.consent_endpoint),
        ] {
            if !value.is_empty() && !value.starts_with("http") {
                return Err(ConfigError(format!("{key} must be an http:// or https:// URL")));
            }
        }
        if self.profiling_purpose.trim().is_empty() {
            return Err(ConfigError("enrichment.profiling_purpose must not be empty".into()));
        }
        if self.memory_mb == 0 || self.timeout_ms == 0 || self.max_output_bytes == 0 || self.pool_size == 0 {
            return Err(ConfigError(
                "enrichment.memory_mb, timeout_ms, max_output_bytes and pool_size must be positive".into(),
            ));
        }
        if self.fetch_timeout_ms == 0 || self.fetch_max_body_bytes == 0 {
            return Err(ConfigError("enrichment.fetch_timeout_ms and fetch_max_body_bytes must be positive".into()));
        }
        if self.max_component_bytes == 0 {
            return Err(ConfigError("enrichment.max_component_bytes must be positive".into()));
        }
        Ok(())
    }
}

impl EnrichmentConfig {
    /// The host limits this configuration sets.
    pub fn limits(&self) -> carnet_plugin_host::Limits {
        carnet_plugin_host::Limits {
            memory_bytes: (self.memory_mb as usize) << 20,
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            max_output_bytes: self.max_output_bytes as usize,
            pool_size: self.pool_size,
            ..carnet_plugin_host::Limits::default()
        }
    }

    /// The outbound fetch limits this configuration sets.
    pub fn fetch_limits(&self) -> carnet_plugin_host::FetchLimits {
        carnet_plugin_host::FetchLimits {
            timeout: std::time::Duration::from_millis(self.fetch_timeout_ms),
            max_body_bytes: self.fetch_max_body_bytes as usize,
            max_fetches: self.fetch_max_per_run,
            allow_plain_http: self.fetch_allow_plain_http,
        }
    }
}

/// The bus consumer of the enrichment service:
/// - `contact.upserted` (not enrichment's own writes): runs the tenant's plugins when
///   auto-enrichment is on;
/// - `erasure.requested`: erases the subject's runs and confirms in one transaction.
pub fn consumer(engine: Engine) -> carnet_kit::bus::Consumer {
    use carnet_proto::events::v1::event::Payload;
    carnet_kit::bus::Consumer {
        durable: SERVICE_NAME.to_string(),
        kinds: vec!["contact.upserted".to_string(), "erasure.requested".to_string()],
        handler: carnet_kit::bus::handler(move |event| {
            let engine = engine.clone();
            async move {
                let err = |e: carnet_kit::ServiceError| format!("{}: {}", e.code, e.message);
                if let Some((tenant_id, request_id, subject_id)) = carnet_kit::outbox::erasure_for(&event, SERVICE_NAME)
                {
                    engine.store().erase(tenant_id, subject_id, Some(&request_id)).await.map_err(err)?;
                    tracing::info!(%tenant_id, %request_id, contact_id = %subject_id, "enrichment runs erased for a request");
                    return Ok(());
                }
                let Some(Payload::ContactUpserted(up)) = &event.payload else { return Ok(()) };
                if up.source_channel == carnet_proto::common::v1::SourceChannel::Enrichment as i32 {
                    return Ok(());
                }
                let (Ok(tenant_id), Ok(contact_id)) = (event.tenant_id.parse(), up.contact_id.parse()) else {
                    return Ok(());
                };
                let changed_at = carnet_kit::outbox::occurred_at(&event);
                match engine.enrich(tenant_id, contact_id, Trigger::Auto(changed_at), engine::PRINCIPAL).await {
                    Ok(_) => Ok(()),
                    // Erased or merged away since: nothing to enrich.
                    Err(e) if e.code == carnet_kit::ErrorCode::NotFound => Ok(()),
                    Err(e) => Err(err(e)),
                }
            }
        }),
    }
}
