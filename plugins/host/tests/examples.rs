//! The example plugins, built from source by the test (plugins/examples), run in the host.

#[path = "support/guest.rs"]
mod guest;

use std::collections::BTreeMap;

use carnet_plugin_host::{Host, Limits, Manifest, RunError};

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn test_company_from_domain_derives_the_company_and_reads_only_the_email() {
    let Some(component) = guest::component("company-from-domain") else { return };
    let manifest = Manifest::parse(&guest::manifest("company-from-domain")).unwrap();
    assert_eq!(manifest.id(), "company-from-domain@1.0.0");
    let host = Host::new(Limits::default()).unwrap();
    let plugin = host.load(manifest, &component).unwrap();
    let contact = fields(&[("email", "ada@analytical-engines.org"), ("first_name", "Ada"), ("phone", "+44")]);
    let (updates, report) = host.run(&plugin, &contact).unwrap();
    assert_eq!(updates, vec![("company".to_string(), "Analytical Engines".to_string())]);
    assert_eq!(report.read, vec!["email"], "the name and phone never reached the plugin");
    let webmail = fields(&[("email", "ada@gmail.com")]);
    assert!(matches!(host.run(&plugin, &webmail), Err(RunError::Unsupported(_))));
    assert!(matches!(host.run(&plugin, &fields(&[("first_name", "Ada")])), Err(RunError::Unsupported(_))));
}
