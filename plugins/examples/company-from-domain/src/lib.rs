//! Derives a company name from the domain of a contact's e-mail address: `ada@analytical-engines.org`
//! gives `Analytical Engines`. Personal addresses (webmail domains) give nothing.

wit_bindgen::generate!({ path: "../../wit", world: "enricher" });

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

impl Guest for Company {
    fn enrich(input: Vec<Field>) -> Result<Vec<Field>, EnrichError> {
        let email = input
            .iter()
            .find(|f| f.key == "email")
            .ok_or_else(|| EnrichError::Unsupported("no e-mail address".into()))?;
        let domain = email.value.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        let label = domain.split('.').next().unwrap_or_default().to_ascii_lowercase();
        if label.is_empty() || WEBMAIL.contains(&label.as_str()) {
            return Err(EnrichError::Unsupported("no company domain".into()));
        }
        Ok(vec![Field { key: "company".into(), value: company_of(&label) }])
    }
}

export!(Company);
