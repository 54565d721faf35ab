//! Layered configuration with the `config` crate.
//!
//! Layers, later ones winning: built-in defaults (TOML text owned by the binary), the file given
//! with `--config` (`carnet.toml`), then `CARNET__SECTION__KEY` environment variables, then
//! command-line overrides. Every section is deserialised into a `#[serde(deny_unknown_fields)]`
//! struct, so a misspelt key is an error that names it. Sections shared by every target live here;
//! each service owns its own section type.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A configuration error; the message names the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Checks values that types alone cannot (addresses, ranges, required-in-mode settings).
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from the defaults, an optional file, the `CARNET__` environment and overrides.
pub fn load<T: DeserializeOwned + Validate>(
    defaults_toml: &str,
    file_opt: Option<&Path>,
    overrides: &[(&str, String)],
) -> Result<T, ConfigError> {
    load_with_env(defaults_toml, file_opt, overrides, std::env::vars())
}

/// Like [`load`], with the environment given explicitly (for tests).
pub fn load_with_env<T: DeserializeOwned + Validate>(
    defaults_toml: &str,
    file_opt: Option<&Path>,
    overrides: &[(&str, String)],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    use config::{Config, Environment, File, FileFormat};
    let env_map: config::Map<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("CARNET__")).collect();
    let mut builder = Config::builder().add_source(File::from_str(defaults_toml, FileFormat::Toml));
    if let Some(path) = file_opt {
        if !path.exists() {
            return Err(ConfigError(format!("config file {} does not exist", path.display())));
        }
        builder = builder.add_source(File::from(path).format(FileFormat::Toml));
    }
    builder = builder.add_source(
        Environment::with_prefix("CARNET")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env_map)),
    );
    for (key, value) in overrides {
        builder = builder.set_override(*key, value.clone()).map_err(|e| ConfigError(e.to_string()))?;
    }
    let built = builder.build().map_err(|e| ConfigError(e.to_string()))?;
    let value: T = built.try_deserialize().map_err(|e| ConfigError(e.to_string()))?;
    value.validate()?;
    Ok(value)
}

/// Key names whose values are secrets, redacted by [`redacted_toml`].
const SECRET_KEY_MARKERS: &[&str] = &["key", "secret", "password", "token"];

/// Renders a configuration as TOML with secrets replaced by `[redacted]` and passwords in
/// connection URLs masked.
pub fn redacted_toml<T: Serialize>(value: &T) -> String {
    let mut tree = toml::Value::try_from(value).expect("configuration serialises to toml");
    redact(&mut tree, "");
    toml::to_string_pretty(&tree).expect("toml value renders")
}

fn redact(value: &mut toml::Value, key: &str) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                redact(v, k);
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| redact(v, key)),
        toml::Value::String(s) => {
            let is_secret = SECRET_KEY_MARKERS.iter().any(|m| key.ends_with(m));
            if is_secret && !s.is_empty() {
                *s = "[redacted]".to_string();
            } else if let Some(masked) = mask_url_password(s) {
                *s = masked;
            }
        }
        _ => {}
    }
}

/// Masks the password of `scheme://user:password@host/...`; `None` when there is none.
fn mask_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let (userinfo, host) = rest.split_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:[redacted]@{host}"))
}

/// Where this node keeps its files (SQLite databases, generated keys, mail spool).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub data_dir: String,
}

/// The gRPC listener of this process.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    pub listen_addr: String,
    /// Request deadline applied by the server, in milliseconds.
    pub request_timeout_ms: u64,
    /// Maximum decoded message size, in bytes.
    pub max_message_bytes: usize,
    /// How long a stopping node waits for running calls, in milliseconds.
    pub shutdown_grace_ms: u64,
}

impl Validate for GrpcConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr
            .parse::<std::net::SocketAddr>()
            .map_err(|_| ConfigError(format!("grpc.listen_addr `{}` is not HOST:PORT", self.listen_addr)))?;
        if self.request_timeout_ms == 0 {
            return Err(ConfigError("grpc.request_timeout_ms must be positive".into()));
        }
        Ok(())
    }
}

/// The caller-context signing shared by every target of the mesh.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// HMAC key signing caller contexts (hex, or text of 32+ bytes). Empty in monolith mode:
    /// a key is generated into the data dir. Required in split mode.
    pub signing_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct TestConfig {
        grpc: GrpcConfig,
        mesh: MeshConfig,
    }

    impl Validate for TestConfig {
        fn validate(&self) -> Result<(), ConfigError> {
            self.grpc.validate()
        }
    }

    const DEFAULTS: &str = r#"
[grpc]
listen_addr = "127.0.0.1:50051"
request_timeout_ms = 30000
max_message_bytes = 4194304
shutdown_grace_ms = 1000
[mesh]
signing_key = ""
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn test_layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("carnet.toml");
        std::fs::write(&file, "[grpc]\nlisten_addr = \"127.0.0.1:6000\"\nrequest_timeout_ms = 5\n").unwrap();
        let cfg: TestConfig =
            load_with_env(DEFAULTS, Some(&file), &[], env(&[("CARNET__GRPC__REQUEST_TIMEOUT_MS", "7")])).unwrap();
        assert_eq!(cfg.grpc.listen_addr, "127.0.0.1:6000");
        assert_eq!(cfg.grpc.request_timeout_ms, 7);
        assert_eq!(cfg.grpc.max_message_bytes, 4194304);
    }

    #[test]
    fn test_unknown_key_in_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("carnet.toml");
        std::fs::write(&file, "[grpc]\nlisten_adr = \"127.0.0.1:6000\"\n").unwrap();
        let err = load_with_env::<TestConfig>(DEFAULTS, Some(&file), &[], env(&[])).unwrap_err();
        assert!(err.to_string().contains("listen_adr"), "{err}");
    }

    #[test]
    fn test_unknown_key_in_env_is_refused_naming_it() {
        let err =
            load_with_env::<TestConfig>(DEFAULTS, None, &[], env(&[("CARNET__MESH__SIGNING_KEYS", "x")])).unwrap_err();
        assert!(err.to_string().contains("signing_keys"), "{err}");
    }

    #[test]
    fn test_unknown_section_is_refused_naming_it() {
        let err =
            load_with_env::<TestConfig>(DEFAULTS, None, &[], env(&[("CARNET__GRCP__LISTEN_ADDR", "x")])).unwrap_err();
        assert!(err.to_string().contains("grcp"), "{err}");
    }

    #[test]
    fn test_bad_address_is_refused_naming_the_key() {
        let err = load_with_env::<TestConfig>(DEFAULTS, None, &[("grpc.listen_addr", "nowhere".into())], env(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("grpc.listen_addr"), "{err}");
    }

    #[test]
    fn test_redaction_hides_secrets_and_url_passwords() {
        #[derive(Serialize)]
        struct S {
            signing_key: String,
            database_url: String,
            listen_addr: String,
        }
        let out = redacted_toml(&S {
            signing_key: "supersecret".into(),
            database_url: "postgres://carnet:hunter2@db/contacts".into(),
            listen_addr: "127.0.0.1:1".into(),
        });
        assert!(!out.contains("supersecret"), "{out}");
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("postgres://carnet:[redacted]@db/contacts"), "{out}");
        assert!(out.contains("127.0.0.1:1"), "{out}");
    }
}
