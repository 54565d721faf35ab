//! Derives a company name from the domain of a contact's e-mail address: `ada@analytical-engines.org`
//! gives `Analytical Engines`. Personal addresses (webmail domains) give nothing.

use carnet_plugin_sdk::{Enricher, Error, Input, Output};

/// Domains of personal mailboxes: no company to derive.
const WEBMAIL: [&str; 6] = ["gmail", "outlook", "hotmail", "yahoo", "icloud", "proton"];

struct Company;

/// `analytical-engines` → `Analytical Engines`.
fn company_of(label: &str) -> String {
    label
        .split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Enricher for Company {
    fn enrich(input: &Input) -> Result<Output, Error> {
        let email = input.require("email")?;
        let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        let label = domain.split('.').next().unwrap_or_default().to_ascii_lowercase();
        if label.is_empty() || WEBMAIL.contains(&label.as_str()) {
            return Err(Error::unsupported("no company domain"));
        }
        Ok(Output::new().set("company", company_of(&label)))
    }
}

carnet_plugin_sdk::export_enricher!(Company);
