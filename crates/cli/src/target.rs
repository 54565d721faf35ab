//! The targets one process can run.

use std::fmt;
use std::str::FromStr;

/// A service this binary can run. Targets not built yet are simply not listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Contacts,
    Consent,
    Comms,
    Enrichment,
    Dsar,
    Gateway,
}

impl Target {
    pub const ALL: [Target; 6] =
        [Target::Contacts, Target::Consent, Target::Comms, Target::Enrichment, Target::Dsar, Target::Gateway];

    pub fn as_str(self) -> &'static str {
        match self {
            Target::Contacts => "contacts",
            Target::Consent => "consent",
            Target::Comms => "comms",
            Target::Enrichment => "enrichment",
            Target::Dsar => "dsar",
            Target::Gateway => "gateway",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            let valid: Vec<&str> = Target::ALL.iter().map(|t| t.as_str()).collect();
            format!("unknown target `{s}`, expected one of: {}", valid.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_target_parse_lists_valid_values() {
        assert_eq!("contacts".parse::<Target>().unwrap(), Target::Contacts);
        let err = "billing".parse::<Target>().unwrap_err();
        assert!(err.contains("billing") && err.contains("contacts"), "{err}");
    }
}
