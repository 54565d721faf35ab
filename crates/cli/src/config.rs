//! The composed configuration of the `carnet` binary: the shared sections of carnet-kit plus
//! one section per service, each owned by its crate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use carnet_comms::CommsConfig;
use carnet_consent::ConsentConfig;
use carnet_contacts::ContactsConfig;
use carnet_dsar::DsarConfig;
use carnet_enrichment::EnrichmentConfig;
use carnet_gateway::GatewayConfig;
use carnet_kit::config::{ConfigError, GrpcConfig, MeshConfig, NodeConfig, Validate};
use carnet_kit::keystore::KeysConfig;
use carnet_kit::telemetry::TelemetryConfig;

/// The `[bus]` section: where events go.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// NATS with JetStream (split mode), e.g. `nats://nats:4222`; empty: the embedded bus.
    pub nats_url: String,
    /// How often each service's outbox relay looks for events to publish when idle.
    pub relay_interval_ms: u64,
}

/// Every key with its default value.
pub const DEFAULTS: &str = include_str!("defaults.toml");

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CarnetConfig {
    pub node: NodeConfig,
    pub grpc: GrpcConfig,
    pub telemetry: TelemetryConfig,
    pub mesh: MeshConfig,
    pub keys: KeysConfig,
    pub contacts: ContactsConfig,
    pub consent: ConsentConfig,
    pub comms: CommsConfig,
    pub dsar: DsarConfig,
    pub enrichment: EnrichmentConfig,
    pub gateway: GatewayConfig,
    pub bus: BusConfig,
}

impl Validate for CarnetConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.grpc.validate()?;
        self.telemetry.validate()?;
        self.keys.validate()?;
        self.contacts.validate()?;
        self.consent.validate()?;
        self.comms.validate()?;
        self.dsar.validate()?;
        self.enrichment.validate()?;
        if !self.bus.nats_url.is_empty() && !self.bus.nats_url.starts_with("nats://") {
            return Err(ConfigError("bus.nats_url must be a nats:// URL".into()));
        }
        self.gateway.validate()?;
        if self.node.data_dir.trim().is_empty() {
            return Err(ConfigError("node.data_dir must not be empty".into()));
        }
        Ok(())
    }
}

impl CarnetConfig {
    /// Loads the configuration: defaults, then `file_opt`, then the `CARNET__` environment,
    /// then `overrides` (from command-line flags).
    pub fn load(file_opt: Option<&Path>, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        carnet_kit::config::load(DEFAULTS, file_opt, overrides)
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(&self.node.data_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_defaults_load_and_validate() {
        let cfg: CarnetConfig = carnet_kit::config::load_with_env(DEFAULTS, None, &[], Vec::new()).unwrap();
        assert_eq!(cfg.grpc.listen_addr, "127.0.0.1:50051");
        assert!(cfg.contacts.database_url.is_empty());
        assert!(cfg.keys.encrypt, "encryption is on by default");
    }

    #[test]
    fn test_a_short_master_key_is_refused_naming_the_key() {
        let env = vec![("CARNET__KEYS__MASTER_KEY".to_string(), "short".to_string())];
        let err = carnet_kit::config::load_with_env::<CarnetConfig>(DEFAULTS, None, &[], env).unwrap_err();
        assert!(err.to_string().contains("keys.master_key"), "{err}");
        assert!(!err.to_string().contains("short"), "the value is not echoed: {err}");
    }

    #[test]
    fn test_unknown_service_key_is_refused_naming_it() {
        let env = vec![("CARNET__CONTACTS__DATABASE_URI".to_string(), "sqlite://x".to_string())];
        let err = carnet_kit::config::load_with_env::<CarnetConfig>(DEFAULTS, None, &[], env).unwrap_err();
        assert!(err.to_string().contains("database_uri"), "{err}");
    }
}
