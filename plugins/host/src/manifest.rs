//! The plugin manifest: what a plugin is, what it reads and writes, whether it profiles, and the
//! hosts it may call. A TOML file beside the component, checked at install.

use serde::{Deserialize, Serialize};

/// The WIT API versions this host implements.
pub const API_VERSIONS: [&str; 1] = ["0.1.0"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// The `carnet:enricher` version the component targets.
    pub api_version: String,
    /// Field keys the plugin receives; nothing else reaches it.
    pub reads: Vec<String>,
    /// Field keys the plugin may write; any other write fails the run.
    pub writes: Vec<String>,
    /// Data categories it processes (Art. 30), e.g. `professional`.
    #[serde(default)]
    pub categories: Vec<String>,
    /// The purposes it serves (consent purpose keys).
    #[serde(default)]
    pub purposes: Vec<String>,
    /// Profiling (Art. 4(4), 22): runs only when the tenant allows profiling and the person has
    /// a lawful basis for the tenant's profiling purpose.
    #[serde(default)]
    pub profiling: bool,
    /// Hosts the HTTP fetch may reach: `host` or `host:port` (`api.example.org`,
    /// `127.0.0.1:8443`), compared exactly (ignoring case), no wildcards. Without a port, the
    /// URL scheme's default port.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Why a manifest was refused: the field at fault and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ManifestError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError { field: field.into(), message: message.into() }
}

fn is_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Splits a declared host into its name (or `[IPv6]` address) and optional port; `None` when it
/// is not one (a wildcard, userinfo, a path, an empty or zero port, …).
pub(crate) fn parse_host(declared: &str) -> Option<(&str, Option<u16>)> {
    let (host, port_opt) = match declared.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            let address = &rest[..end];
            if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
                return None;
            }
            let after = &rest[end + 1..];
            (&declared[..end + 2], if after.is_empty() { None } else { Some(after.strip_prefix(':')?) })
        }
        None => match declared.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (declared, None),
        },
    };
    if !host.starts_with('[')
        && (host.is_empty()
            || host.len() > 253
            || host.starts_with(['.', '-'])
            || host.ends_with('.')
            || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    {
        return None;
    }
    let port_opt = match port_opt {
        Some(p) if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) => return None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port_opt))
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| err("manifest", e.message().to_string()))?;
        m.check()?;
        Ok(m)
    }

    pub fn check(&self) -> Result<(), ManifestError> {
        if !self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') || self.name.is_empty()
        {
            return Err(err("name", "must be lowercase letters, digits and `-`"));
        }
        let parts: Vec<&str> = self.version.split('.').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
            return Err(err("version", "must be MAJOR.MINOR.PATCH"));
        }
        if !API_VERSIONS.contains(&self.api_version.as_str()) {
            return Err(err("api_version", format!("must be one of: {}", API_VERSIONS.join(", "))));
        }
        if self.reads.is_empty() {
            return Err(err("reads", "must name at least one field"));
        }
        for (list, keys) in [("reads", &self.reads), ("writes", &self.writes)] {
            for (i, k) in keys.iter().enumerate() {
                if !is_key(k) {
                    return Err(err(format!("{list}[{i}]"), "is not a field key"));
                }
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if parse_host(h).is_none() {
                return Err(err(format!("hosts[{i}]"), "must be a host name or address, with an optional `:port`"));
            }
        }
        Ok(())
    }

    /// `name@version`, the provenance written with every value the plugin produces.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "company-from-domain"
version = "1.0.0"
api_version = "0.1.0"
reads = ["email"]
writes = ["company"]
categories = ["professional"]
"#;

    #[test]
    fn test_manifest_parses_and_names_its_provenance() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.id(), "company-from-domain@1.0.0");
        assert!(!m.profiling);
    }

    #[test]
    fn test_hosts_may_carry_a_port() {
        assert_eq!(parse_host("api.example.org"), Some(("api.example.org", None)));
        assert_eq!(parse_host("127.0.0.1:8443"), Some(("127.0.0.1", Some(8443))));
        assert_eq!(parse_host("[::1]:8443"), Some(("[::1]", Some(8443))));
        assert_eq!(parse_host("[::1]"), Some(("[::1]", None)));
        for bad in ["", "[]", "[::1", "[::1]x", "[x]:1", "a b", "a:b", "a:1:2", ".a", "a."] {
            assert_eq!(parse_host(bad), None, "{bad}");
        }
        let m = Manifest::parse(&format!("{GOOD}hosts = [\"API.example.org\", \"127.0.0.1:8443\"]\n")).unwrap();
        assert_eq!(m.hosts.len(), 2);
    }

    #[test]
    fn test_bad_manifests_are_refused_naming_the_field() {
        for (text, field) in [
            (GOOD.replace("1.0.0\"\napi", "one\"\napi"), "version"),
            (GOOD.replace("api_version = \"0.1.0\"", "api_version = \"9.0.0\""), "api_version"),
            (GOOD.replace("reads = [\"email\"]", "reads = [\"E-Mail\"]"), "reads[0]"),
            (GOOD.replace("reads = [\"email\"]", "reads = []"), "reads"),
            (format!("{GOOD}hosts = [\"*.example.org\"]\n"), "hosts[0]"),
            (format!("{GOOD}hosts = [\"api.example.org\", \"ada@api.example.org\"]\n"), "hosts[1]"),
            (format!("{GOOD}hosts = [\"api.example.org/v1\"]\n"), "hosts[0]"),
            (format!("{GOOD}hosts = [\"api.example.org:0\"]\n"), "hosts[0]"),
            (format!("{GOOD}hosts = [\"api.example.org:65536\"]\n"), "hosts[0]"),
            (format!("{GOOD}hosts = [\"api.example.org:\"]\n"), "hosts[0]"),
            (format!("{GOOD}hosts = [\"https://api.example.org\"]\n"), "hosts[0]"),
            (format!("{GOOD}surprise = 1\n"), "manifest"),
        ] {
            assert_eq!(Manifest::parse(&text).unwrap_err().field, field, "{text}");
        }
    }
}
