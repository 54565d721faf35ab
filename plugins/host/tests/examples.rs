//! The example plugins, built from source by the test (plugins/examples, over plugins/sdk), run
//! in the host.

#[path = "support/guest.rs"]
mod guest;

use std::collections::BTreeMap;

use carnet_plugin_host::{Host, Limits, Manifest, Plugin, RunError};

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Loads example `name` into a fresh host, or `None` when the wasm toolchain is missing.
fn load(name: &str) -> Option<(Host, Plugin)> {
    let component = guest::component(name)?;
    let manifest = Manifest::parse(&guest::manifest(name)).unwrap();
    let host = Host::new(Limits::default()).unwrap();
    let plugin = host.load(manifest, &component).unwrap();
    Some((host, plugin))
}

#[test]
fn test_company_from_domain_derives_the_company_and_reads_only_the_email() {
    let Some((host, plugin)) = load("company-from-domain") else { return };
    assert_eq!(plugin.manifest.id(), "company-from-domain@1.0.0");
    assert!(!plugin.manifest.profiling);
    let contact = fields(&[("email", "ada@analytical-engines.org"), ("first_name", "Ada"), ("phone", "+44")]);
    let (updates, report) = host.run(&plugin, &contact).unwrap();
    assert_eq!(updates, vec![("company".to_string(), "Analytical Engines".to_string())]);
    assert_eq!(report.read, vec!["email"], "the name and phone never reached the plugin");
    let webmail = fields(&[("email", "ada@gmail.com")]);
    assert_eq!(host.run(&plugin, &webmail).unwrap_err(), RunError::Unsupported("no company domain".into()));
    // The SDK's `require` declines naming the missing key.
    assert_eq!(
        host.run(&plugin, &fields(&[("first_name", "Ada")])).unwrap_err(),
        RunError::Unsupported("no `email` field".into())
    );
}

#[test]
fn test_seen_fields_reports_exactly_the_declared_keys_that_were_present() {
    let Some((host, plugin)) = load("seen-fields") else { return };
    assert_eq!(plugin.manifest.id(), "seen-fields@1.0.0");
    assert_eq!(plugin.manifest.reads, ["email", "first_name", "last_name", "phone", "company"]);
    assert_eq!(plugin.manifest.writes, ["seen_fields"]);
    assert!(!plugin.manifest.profiling);
    // Declared and present: email, first_name, phone, company. Declared but absent: last_name.
    // Present but undeclared: birth_date, notes, job_title, seen_fields itself.
    let contact = fields(&[
        ("phone", "+44 20 7946 0000"),
        ("email", "ada@analytical-engines.org"),
        ("birth_date", "1815-12-10"),
        ("notes", "met at the exhibition"),
        ("first_name", "Ada"),
        ("job_title", "Countess"),
        ("company", "Analytical Engines"),
        ("seen_fields", "forged"),
    ]);
    let (updates, report) = host.run(&plugin, &contact).unwrap();
    assert_eq!(updates, vec![("seen_fields".to_string(), "company,email,first_name,phone".to_string())]);
    assert_eq!(report.read, ["email", "first_name", "phone", "company"]);
    for value in contact.values() {
        assert!(!updates[0].1.contains(value.as_str()), "a value came back: {value}");
    }
    let one = fields(&[("last_name", "Lovelace"), ("notes", "x")]);
    assert_eq!(host.run(&plugin, &one).unwrap().0, vec![("seen_fields".to_string(), "last_name".to_string())]);
    let none = fields(&[("notes", "x"), ("birth_date", "1815-12-10")]);
    assert!(matches!(host.run(&plugin, &none), Err(RunError::Unsupported(_))), "nothing declared was present");
}

#[test]
fn test_lead_score_scores_leads_by_its_documented_rules() {
    let Some((host, plugin)) = load("lead-score") else { return };
    assert_eq!(plugin.manifest.id(), "lead-score@1.0.0");
    assert!(plugin.manifest.profiling, "scoring people is profiling");
    assert_eq!(plugin.manifest.purposes, ["profiling"]);
    assert_eq!(plugin.manifest.reads, ["email", "company", "job_title"]);
    assert_eq!(plugin.manifest.writes, ["lead_score"]);
    for (mut contact, score) in [
        // company domain 30 + company 20 + company matches the domain 10 + executive 40
        (
            vec![
                ("email", "ada@analytical-engines.org"),
                ("company", "Analytical Engines"),
                ("job_title", "Chief Technology Officer"),
            ],
            100,
        ),
        // company domain 30 + company 20 (another one) + manager 20
        (vec![("email", "grace@hopper-labs.com"), ("company", "Initech"), ("job_title", "Engineering Manager")], 70),
        // webmail 10 + trainee 0
        (vec![("email", "bob@gmail.com"), ("job_title", "Marketing Intern")], 10),
        // "vice" makes a president a VP: 30
        (vec![("job_title", "Vice President, Sales")], 30),
        // company domain 30 + director 30
        (vec![("email", "carol@acme.io"), ("job_title", "Director of Finance")], 60),
        // no domain with a dot: 0; company 20; other title 10
        (vec![("email", "dave@localhost"), ("company", "Acme"), ("job_title", "Accountant")], 30),
    ] {
        contact.push(("first_name", "Ada"));
        let (updates, report) = host.run(&plugin, &fields(&contact)).unwrap();
        assert_eq!(updates, vec![("lead_score".to_string(), score.to_string())], "{contact:?}");
        assert!(!report.read.contains(&"first_name".to_string()));
    }
    assert_eq!(
        host.run(&plugin, &fields(&[("first_name", "Ada"), ("phone", "+44")])).unwrap_err(),
        RunError::Unsupported("no `email`, `company` or `job_title` field".into())
    );
}
