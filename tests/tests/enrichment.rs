//! The enrichment service end to end through the gateway, with the example plugins built from
//! source (plugins/examples) and hostile components written in WAT: only declared fields reach
//! a plugin, undeclared writes are refused, every switch stops what it should, provenance is on
//! every enriched value, and a hostile plugin fails alone while the service stays up.

#[path = "../../plugins/host/tests/support/guest.rs"]
mod guest;
#[path = "../../plugins/host/tests/support/wat.rs"]
mod wat_components;

use std::time::Duration;

use base64::Engine as _;
use carnet_tests::Sandbox;
use carnet_tests::http::Http;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// A tenant with a field policy the examples fit, the profiling purpose, and the three example
/// plugins installed and enabled. `None` when the wasm toolchain is missing (skipped).
async fn setup_in(sb: &Sandbox, name: &str) -> Option<(Http, String, uuid::Uuid)> {
    let components: Vec<(&str, Vec<u8>)> = ["company-from-domain", "seen-fields", "lead-score"]
        .into_iter()
        .map(|p| guest::component(p).map(|c| (p, c)))
        .collect::<Option<_>>()?;
    let http = sb.http();
    let (tenant_id, key) = sb.tenant(name).await;
    let policy = json!({"fields": [
        {"key": "email", "type": "email", "category": "contact"},
        {"key": "first_name", "type": "string", "category": "identity"},
        {"key": "last_name", "type": "string", "category": "identity"},
        {"key": "phone", "type": "phone", "category": "contact"},
        {"key": "job_title", "type": "string", "category": "professional"},
        {"key": "company", "type": "string", "category": "professional"},
        {"key": "seen_fields", "type": "string", "category": "technical"},
        {"key": "lead_score", "type": "number", "category": "profiling"},
    ]});
    let a = http.json("PUT", "/v1/field-policy", Some(&key), Some(policy)).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    let purpose = json!({"key": "profiling", "description": "Lead scoring", "lawful_basis": "consent",
        "notice": "We score your interest from your job title and company."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&key), Some(purpose)).await.status, 201);
    for (plugin, component) in components {
        let installed = install(&http, &key, &guest::manifest(plugin), &component, true).await;
        assert_eq!(installed.status, 201, "{plugin}: {:?}", installed.json);
        assert_eq!(installed.json["name"], plugin);
        assert_eq!(installed.json["enabled"], true);
    }
    Some((http, key, tenant_id))
}

async fn setup(sb: &Sandbox, name: &str) -> Option<(Http, String)> {
    setup_in(sb, name).await.map(|(http, key, _)| (http, key))
}

async fn install(
    http: &Http,
    key: &str,
    manifest: &str,
    component: &[u8],
    enabled: bool,
) -> carnet_tests::http::Answer {
    let body = json!({"manifest": manifest, "component": base64::engine::general_purpose::STANDARD.encode(component),
        "enabled": enabled});
    http.json("POST", "/v1/plugins", Some(key), Some(body)).await
}

async fn contact(http: &Http, key: &str, email: &str) -> String {
    // Phones are unique per tenant: one per address.
    let phone = format!("+4420794{:05}", email.bytes().map(u32::from).sum::<u32>() % 100_000);
    let body = json!({"email": email, "first_name": "Ada", "last_name": "Lovelace", "phone": phone,
        "fields": {"job_title": "Chief Technology Officer"}, "source": {"channel": "api", "detail": "enrichment-test"}});
    let a = http.json("POST", "/v1/contacts", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    a.json["id"].as_str().unwrap().to_string()
}

async fn get(http: &Http, key: &str, id: &str) -> Value {
    let a = http.json("GET", &format!("/v1/contacts/{id}"), Some(key), None).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    a.json
}

async fn enrich(http: &Http, key: &str, id: &str) -> Vec<Value> {
    let a = http.json("POST", &format!("/v1/contacts/{id}/enrich"), Some(key), None).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    a.json["runs"].as_array().unwrap().clone()
}

async fn settings(http: &Http, key: &str, body: Value) -> Value {
    let a = http.json("PUT", "/v1/enrichment/settings", Some(key), Some(body)).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    a.json
}

/// The run of `plugin` among `runs`.
fn run_of<'a>(runs: &'a [Value], plugin: &str) -> &'a Value {
    runs.iter().find(|r| r["plugin"] == plugin).unwrap_or_else(|| panic!("no run of {plugin} in {runs:?}"))
}

fn outcome(runs: &[Value], plugin: &str) -> (String, String) {
    let r = run_of(runs, plugin);
    (r["outcome"].as_str().unwrap().to_string(), r["reason"].as_str().unwrap_or_default().to_string())
}

async fn runs_on(http: &Http, key: &str, id: &str) -> Vec<Value> {
    let a = http.json("GET", &format!("/v1/contacts/{id}/enrichment-runs"), Some(key), None).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    a.json["runs"].as_array().unwrap().clone()
}

/// Waits until automatic runs on `id` are recorded.
async fn auto_runs(http: &Http, key: &str, id: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let runs = runs_on(http, key, id).await;
        if !runs.is_empty() {
            return runs;
        }
        assert!(tokio::time::Instant::now() < deadline, "no automatic run on {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn only_declared_fields_reach_a_plugin_and_every_value_has_provenance(sb: &Sandbox) {
    let Some((http, key)) = setup(sb, "Provenance").await else { return };
    let id = contact(&http, &key, "ada@analytical-engines.org").await;
    let runs = enrich(&http, &key, &id).await;
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert_eq!(outcome(&runs, "company-from-domain"), ("written".into(), String::new()));
    assert_eq!(run_of(&runs, "company-from-domain")["fields_read"], json!(["email"]));
    assert_eq!(run_of(&runs, "company-from-domain")["fields_written"], json!(["company"]));
    assert_eq!(outcome(&runs, "seen-fields"), ("written".into(), String::new()));
    // Profiling is off by default.
    assert_eq!(outcome(&runs, "lead-score"), ("skipped".into(), "profiling_off".into()));

    let c = get(&http, &key, &id).await;
    assert_eq!(c["fields"]["company"], "Analytical Engines");
    // seen-fields declares email, names, phone and company; the job title never reached it.
    assert_eq!(c["fields"]["seen_fields"], "company,email,first_name,last_name,phone");
    for (field, plugin) in [("company", "company-from-domain@1.0.0"), ("seen_fields", "seen-fields@1.0.0")] {
        assert_eq!(c["field_sources"][field]["channel"], "enrichment", "{field}: {c}");
        assert_eq!(c["field_sources"][field]["detail"], plugin, "{field}: {c}");
    }
    assert_eq!(c["source"]["channel"], "api", "the record's own source is untouched");
    let values: Vec<&str> = c["field_sources"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(values, vec!["company", "seen_fields"], "only enriched values carry an enrichment source");

    // A person's rectification makes the value theirs: plugins no longer overwrite it.
    let patch = json!({"fields": {"company": "Babbage & Co"}, "reason": "the person told us"});
    assert_eq!(http.json("PATCH", &format!("/v1/contacts/{id}"), Some(&key), Some(patch)).await.status, 200);
    let runs = enrich(&http, &key, &id).await;
    assert_eq!(outcome(&runs, "company-from-domain"), ("unchanged".into(), String::new()));
    let c = get(&http, &key, &id).await;
    assert_eq!(c["fields"]["company"], "Babbage & Co");
    assert!(c["field_sources"].get("company").is_none());

    // The run ledger keeps keys, never values.
    let ledger = runs_on(&http, &key, &id).await;
    assert_eq!(ledger.len(), 6);
    let text = serde_json::to_string(&ledger).unwrap();
    for value in ["Analytical", "Babbage", "ada@", "Lovelace", "+44"] {
        assert!(!text.contains(value), "the run ledger holds `{value}`: {text}");
    }
}

carnet_tests::both_modes!(only_declared_fields_reach_a_plugin_and_every_value_has_provenance);

async fn every_switch_stops_what_it_should(sb: &Sandbox) {
    let Some((http, key)) = setup(sb, "Switches").await else { return };
    let defaults = http.json("GET", "/v1/enrichment/settings", Some(&key), None).await.json;
    assert_eq!(defaults["auto_enrichment"], false, "privacy by default: {defaults}");
    assert_eq!(defaults["profiling_allowed"], false);

    // Auto-enrichment off: a new contact is left alone. Events are handled in order, so once
    // the contact created after switching it on is enriched, the first one's event is done.
    let quiet = contact(&http, &key, "grace@hopper-labs.com").await;
    settings(&http, &key, json!({"auto_enrichment": true})).await;
    let marker = contact(&http, &key, "alan@bletchley-park.org").await;
    let runs = auto_runs(&http, &key, &marker).await;
    assert!(runs.iter().all(|r| r["trigger"] == "auto"), "{runs:?}");
    assert_eq!(outcome(&runs, "company-from-domain").0, "written");
    assert!(runs.iter().all(|r| r["plugin"] != "lead-score"), "profiling off: no automatic profiling run");
    assert!(runs_on(&http, &key, &quiet).await.is_empty(), "auto-enrichment was off for the first contact");
    assert!(get(&http, &key, &quiet).await["fields"].get("company").is_none());
    assert_eq!(get(&http, &key, &marker).await["fields"]["company"], "Bletchley Park");
    // The write-back is enrichment's own change: it does not trigger another round.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs_on(&http, &key, &marker).await.len(), runs.len(), "no loop on enrichment's own writes");

    // A disabled plugin does not run.
    let s = settings(&http, &key, json!({"auto_enrichment": false, "plugins": {"company-from-domain": false}})).await;
    assert_eq!(s["plugins"]["company-from-domain"], false);
    let runs = enrich(&http, &key, &quiet).await;
    assert_eq!(outcome(&runs, "company-from-domain"), ("skipped".into(), "plugin_disabled".into()));
    assert!(get(&http, &key, &quiet).await["fields"].get("company").is_none());
    settings(&http, &key, json!({"plugins": {"company-from-domain": true}})).await;

    // Profiling off: the profiling plugin never runs.
    let runs = enrich(&http, &key, &quiet).await;
    assert_eq!(outcome(&runs, "lead-score"), ("skipped".into(), "profiling_off".into()));
    // Profiling on, but no lawful basis for the profiling purpose.
    settings(&http, &key, json!({"profiling_allowed": true})).await;
    let runs = enrich(&http, &key, &quiet).await;
    assert_eq!(outcome(&runs, "lead-score"), ("skipped".into(), "no_profiling_basis".into()));
    assert!(get(&http, &key, &quiet).await["fields"].get("lead_score").is_none());
    // With consent for profiling it runs, after the enrichers (it uses the company they found).
    let grant = json!({"contact_id": quiet, "purpose": "profiling", "action": "grant", "source": "api"});
    assert_eq!(http.json("POST", "/v1/consents", Some(&key), Some(grant)).await.status, 201);
    let runs = enrich(&http, &key, &quiet).await;
    assert_eq!(outcome(&runs, "lead-score"), ("written".into(), String::new()));
    let c = get(&http, &key, &quiet).await;
    assert!(c["fields"]["lead_score"].as_f64().unwrap() > 0.0, "{c}");
    assert_eq!(c["field_sources"]["lead_score"]["detail"], "lead-score@1.0.0");

    // The person objects: nothing runs for them, profiling or not.
    let objection = json!({"active": true, "reason": "Art. 21"});
    let a = http.json("PUT", &format!("/v1/contacts/{quiet}/objection"), Some(&key), Some(objection)).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    let before = get(&http, &key, &quiet).await;
    let runs = enrich(&http, &key, &quiet).await;
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r["outcome"] == "skipped" && r["reason"] == "objected"), "{runs:?}");
    assert_eq!(get(&http, &key, &quiet).await["version"], before["version"], "the contact is untouched");

    // Only an enrichment admin installs plugins and changes the switches.
    let (tenant_id, _) = sb.tenant("Other").await;
    let sales = sb.key(tenant_id, carnet_gateway::roles::Role::Sales).await;
    let a = http.json("PUT", "/v1/enrichment/settings", Some(&sales), Some(json!({"auto_enrichment": true}))).await;
    assert_eq!((a.status, a.code()), (403, "permission_denied"));
    let a = http.json("PUT", "/v1/enrichment/settings", Some(&key), Some(json!({"plugins": {"nope": true}}))).await;
    assert_eq!((a.status, a.code(), a.field()), (404, "not_found", "plugins.nope"));
}

carnet_tests::both_modes!(every_switch_stops_what_it_should);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_writes_and_bad_installs_are_refused() {
    let sb = Sandbox::monolith().await;
    let Some((http, key)) = setup(&sb, "Refusals").await else { return };
    // The real company-from-domain component under a manifest that does not let it write
    // `company`: the run fails and the contact is untouched.
    let component = guest::component("company-from-domain").unwrap();
    let manifest = guest::manifest("company-from-domain")
        .replace("name = \"company-from-domain\"", "name = \"company-undeclared\"")
        .replace("writes = [\"company\"]", "writes = [\"job_title\"]");
    assert_eq!(install(&http, &key, &manifest, &component, true).await.status, 201);
    settings(&http, &key, json!({"plugins": {"company-from-domain": false, "seen-fields": false}})).await;
    let id = contact(&http, &key, "ada@analytical-engines.org").await;
    let before = get(&http, &key, &id).await;
    let runs = enrich(&http, &key, &id).await;
    assert_eq!(outcome(&runs, "company-undeclared"), ("failed".into(), "undeclared_write".into()));
    assert_eq!(get(&http, &key, &id).await, before, "nothing was written");

    // Install refusals name the field and store nothing.
    let a = install(&http, &key, "name = \"x\"", &component, true).await;
    assert_eq!((a.status, a.code()), (400, "invalid_argument"), "{:?}", a.json);
    assert!(a.field().starts_with("manifest"), "{:?}", a.json);
    let a =
        install(&http, &key, &guest::manifest("seen-fields").replace("1.0.0\"\napi", "2.0.0\"\napi"), b"\0asm", true)
            .await;
    assert_eq!((a.status, a.field()), (400, "component"), "{:?}", a.json);
    // Another component under an installed name@version is a conflict: a new one needs a new version.
    let a = install(&http, &key, &guest::manifest("seen-fields"), &component, true).await;
    assert_eq!((a.status, a.code()), (409, "conflict"), "{:?}", a.json);
    let plugins = http.json("GET", "/v1/plugins", Some(&key), None).await.json;
    let names: Vec<&str> = plugins["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["company-from-domain", "company-undeclared", "lead-score", "seen-fields"]);
    let seen = plugins["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "seen-fields").unwrap();
    assert_eq!(seen["version"], "1.0.0");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_alone_and_the_service_stays_up() {
    // Small limits so the hostile runs end quickly.
    let overrides = [("enrichment.timeout_ms", "200".to_string()), ("enrichment.memory_mb", "16".to_string())];
    let sb = Sandbox::start_with(carnet_tests::Backend::Sqlite, &overrides).await;
    let Some((http, key)) = setup(&sb, "Hostile").await else { return };
    let hostile = [
        ("loop", wat_components::INFINITE_LOOP, "timeout"),
        ("bomb", wat_components::MEMORY_BOMB, "memory_limit"),
        ("recursion", wat_components::DEEP_RECURSION, "stack_overflow"),
        ("huge", wat_components::HUGE_OUTPUT, "output_too_large"),
        ("trap", wat_components::TRAP, "trap"),
    ];
    for (name, body, _) in hostile {
        let manifest = format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\napi_version = \"0.1.0\"\nreads = [\"email\"]\nwrites = [\"company\"]\n"
        );
        let a = install(&http, &key, &manifest, &wat_components::component(body), true).await;
        assert_eq!(a.status, 201, "{name}: {:?}", a.json);
    }
    let id = contact(&http, &key, "ada@analytical-engines.org").await;
    let runs = enrich(&http, &key, &id).await;
    for (name, _, reason) in hostile {
        assert_eq!(outcome(&runs, name), ("failed".into(), reason.into()), "{name}");
    }
    // The healthy plugins ran beside them and wrote; the hostile ones touched nothing.
    assert_eq!(outcome(&runs, "company-from-domain").0, "written");
    let c = get(&http, &key, &id).await;
    assert_eq!(c["fields"]["company"], "Analytical Engines");
    assert_eq!(c["field_sources"]["company"]["detail"], "company-from-domain@1.0.0");
    // The service is still up and serves again.
    let again = contact(&http, &key, "grace@hopper-labs.com").await;
    let runs = enrich(&http, &key, &again).await;
    assert_eq!(outcome(&runs, "company-from-domain").0, "written");
    assert_eq!(outcome(&runs, "loop"), ("failed".into(), "timeout".into()));
    assert_eq!(http.json("GET", "/readyz", None, None).await.status, 200);
    sb.stop().await;
}

/// Another replica (or this one after a restart) has none of the compiled plugins: it reads the
/// component from the database and compiles it on first use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replica_compiles_installed_plugins_on_first_use() {
    let sb = Sandbox::monolith().await;
    let Some((http, key, tenant_id)) = setup_in(&sb, "Replica").await else { return };
    let id = contact(&http, &key, "ada@analytical-engines.org").await;
    let db = carnet_cli::node::open_database(&sb.config, carnet_cli::Target::Enrichment, false).await.unwrap();
    let replica = carnet_enrichment::Engine::new(
        carnet_enrichment::EnrichmentStore::new(db),
        carnet_plugin_host::Host::new(carnet_plugin_host::Limits::default()).unwrap(),
        sb.channel(),
        sb.channel(),
        sb.node.mesh_key.clone(),
        "profiling".into(),
        1 << 24,
    );
    let runs = replica
        .enrich(tenant_id, id.parse().unwrap(), carnet_enrichment::Trigger::Manual, "key:replica")
        .await
        .unwrap();
    let company = runs.iter().find(|r| r.plugin == "company-from-domain").unwrap();
    assert_eq!(company.outcome, "written");
    assert_eq!(get(&http, &key, &id).await["fields"]["company"], "Analytical Engines");
    sb.stop().await;
}
