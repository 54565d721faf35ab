//! The console's journeys in headless Chromium (tests/browser/console.mjs, playwright-core with
//! Debian's chromium, as forms.rs does) against a node running every target in one process, as
//! `carnet up` does. They write screenshots of the main pages into target/console-screenshots/
//! (the README's console tour links it).

#[path = "../../plugins/host/tests/support/guest.rs"]
mod guest;

use std::time::Duration;

use base64::Engine as _;
use carnet_gateway::roles::Role;
use carnet_tests::Sandbox;
use carnet_tests::http::Http;
use serde_json::{Value, json};

async fn contact(http: &Http, key: &str, first: &str, last: &str, email: &str, source: Value) -> String {
    let body = json!({"email": email, "first_name": first, "last_name": last, "source": source});
    let a = http.json("POST", "/v1/contacts", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    a.json["id"].as_str().unwrap().to_string()
}

/// The browser test's node script and Chromium, or `None` (skipped) when they are missing and
/// `CARNET_REQUIRE_BROWSER` is not 1.
fn browser() -> Option<(String, String)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/console.mjs").to_string();
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/node_modules/playwright-core");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = std::path::Path::new(modules).exists() && std::path::Path::new(&chromium).exists();
    match (ready, std::env::var("CARNET_REQUIRE_BROWSER").as_deref()) {
        (true, _) => Some((script, chromium)),
        (false, Ok("1")) => panic!("CARNET_REQUIRE_BROWSER=1 but chromium or playwright-core is missing"),
        (false, _) => {
            eprintln!("skipped: chromium or tests/browser/node_modules missing (run the README's test command)");
            None
        }
    }
}

const SCREENSHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/console-screenshots");

/// Runs one journey of console.mjs; returns what the pages showed.
async fn journey(sb: &Sandbox, name: &str, key: &str, args: &[&str]) -> Value {
    let (script, chromium) = browser().expect("checked by the caller");
    let base = format!("http://{}", sb.node.http_addr_opt.unwrap());
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(&script)
            .args([name, &base, key, SCREENSHOTS])
            .args(args)
            .env("CHROMIUM", &chromium)
            .output(),
    )
    .await
    .expect("the journey finishes within 3 minutes")
    .expect("run node");
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{name} prints JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

async fn runs_on(http: &Http, key: &str, id: &str) -> Vec<Value> {
    let a = http.json("GET", &format!("/v1/contacts/{id}/enrichment-runs"), Some(key), None).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    a.json["runs"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_console_admin_switches_auto_enrichment_off_and_a_new_contact_is_not_enriched() {
    if browser().is_none() {
        return;
    }
    let Some(component) = guest::component("company-from-domain") else { return };
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (tenant_id, owner) = sb.tenant("Console").await;
    let policy = json!({"fields": [
        {"key": "email", "type": "email", "category": "contact"},
        {"key": "first_name", "type": "string", "category": "identity"},
        {"key": "last_name", "type": "string", "category": "identity"},
        {"key": "company", "type": "string", "category": "professional"},
    ]});
    assert_eq!(http.json("PUT", "/v1/field-policy", Some(&owner), Some(policy)).await.status, 200);
    let body = json!({"manifest": guest::manifest("company-from-domain"), "enabled": true,
        "component": base64::engine::general_purpose::STANDARD.encode(&component)});
    assert_eq!(http.json("POST", "/v1/plugins", Some(&owner), Some(body)).await.status, 201);
    let on = json!({"auto_enrichment": true});
    assert_eq!(http.json("PUT", "/v1/enrichment/settings", Some(&owner), Some(on)).await.status, 200);
    // A purpose with two notice versions, for the diff on its page.
    let purpose = json!({"key": "newsletter", "description": "Newsletter", "lawful_basis": "consent",
        "notice": "Yes, send me the monthly newsletter. I can withdraw at any time."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&owner), Some(purpose)).await.status, 201);
    let v2 = json!({"notice": "Yes, send me the weekly newsletter. I can withdraw at any time."});
    assert_eq!(http.json("PUT", "/v1/purposes/newsletter/notice", Some(&owner), Some(v2)).await.status, 200);

    let admin = sb.key(tenant_id, Role::Admin).await;
    let seen = journey(&sb, "admin-auto-off", &admin, &[]).await;
    assert_eq!(seen["autoBefore"], true, "{seen}");
    let manifest = seen["manifest"].as_str().unwrap();
    assert!(manifest.contains("Reads: email") && manifest.contains("Writes: company"), "{manifest}");
    assert!(manifest.contains("Does not profile"), "{manifest}");
    // With auto-enrichment on, the contact created in the console was enriched.
    let timeline = seen["enrichedTimeline"].as_str().unwrap();
    assert!(timeline.contains("company-from-domain@1.0.0") && timeline.contains("auto"), "{seen}");
    assert!(seen["enrichedFields"].as_str().unwrap().contains("Analytical Engines"), "{seen}");
    // The switch was turned off through the console…
    assert_eq!(seen["autoAfter"], false, "{seen}");
    assert!(seen["flash"].as_str().unwrap().contains("Switches saved"), "{seen}");
    let settings = http.json("GET", "/v1/enrichment/settings", Some(&owner), None).await;
    assert_eq!(settings.json["auto_enrichment"], false);
    assert!(settings.json["updated_by"].as_str().unwrap().starts_with("key:"), "the admin's key changed it");
    // …and the contact created after it is left alone. Events are handled in order: once a
    // marker created after switching it back on is enriched, the quiet contact's event is done.
    let quiet = seen["quietId"].as_str().unwrap();
    assert_eq!(
        http.json("PUT", "/v1/enrichment/settings", Some(&owner), Some(json!({"auto_enrichment": true}))).await.status,
        200
    );
    let marker = contact(
        &http,
        &owner,
        "Alan",
        "Turing",
        "alan@bletchley-park.org",
        json!({"channel": "api", "detail": "marker"}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while runs_on(&http, &owner, &marker).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the marker was never enriched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(runs_on(&http, &owner, quiet).await.is_empty(), "auto-enrichment was off for {quiet}");
    let q = http.json("GET", &format!("/v1/contacts/{quiet}"), Some(&owner), None).await;
    assert!(q.json["fields"].get("company").is_none(), "{:?}", q.json);
    let enriched = seen["enrichedId"].as_str().unwrap();
    let e = http.json("GET", &format!("/v1/contacts/{enriched}"), Some(&owner), None).await;
    assert_eq!(e.json["fields"]["company"], "Analytical Engines");

    // The consent pages: the diff between notice versions, the live preview and the embed snippet.
    let diff = seen["diff"].as_str().unwrap();
    assert!(diff.contains("<del>monthly </del>") && diff.contains("<ins>weekly </ins>"), "{diff}");
    assert!(seen["preview"].as_str().unwrap().contains("Yes, send me the weekly newsletter."), "{seen}");
    let embed = seen["embed"].as_str().unwrap();
    assert!(embed.starts_with("<iframe src=\"http://") && embed.contains("/f/"), "{embed}");
    // The campaign's progress: nobody consented to the newsletter, so both contacts are skipped.
    let campaign = seen["campaign"].as_str().unwrap();
    assert!(campaign.contains("completed") && campaign.contains("2 of 2 handled"), "{campaign}");
    assert!(campaign.contains("0 sent") && campaign.contains("2 skipped (no_consent)"), "{campaign}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_console_privacy_officer_forgets_a_person_and_watches_every_participant_confirm() {
    if browser().is_none() {
        return;
    }
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (tenant_id, owner) = sb.tenant("Console").await;
    let purpose = json!({"key": "news", "description": "News", "lawful_basis": "consent", "notice": "News by mail."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&owner), Some(purpose)).await.status, 201);
    let id =
        contact(&http, &owner, "Erin", "Exemplar", "erin@example.org", json!({"channel": "api", "detail": "crm-sync"}))
            .await;
    let grant = json!({"contact_id": id, "purpose": "news", "action": "grant", "source": "api"});
    assert_eq!(http.json("POST", "/v1/consents", Some(&owner), Some(grant)).await.status, 201);

    let officer = sb.key(tenant_id, Role::PrivacyOfficer).await;
    let seen = journey(&sb, "privacy-erasure", &officer, &["Exemplar"]).await;
    assert_eq!(seen["contactId"], id.as_str(), "{seen}");
    assert_eq!(seen["exportName"], format!("contact-{id}.json"), "{seen}");
    assert_eq!(seen["exportHasId"], true, "the downloaded document is the person's export");
    assert!(seen["exportProgress"].as_str().unwrap().starts_with("Export ready"), "{seen}");
    assert_eq!(seen["hasForget"], 1);
    assert!(seen["confirmation"].as_str().unwrap().contains("cannot be undone"), "{seen}");
    assert!(seen["requestUrl"].as_str().unwrap().contains("/console/privacy/requests/"), "{seen}");
    assert_eq!(seen["stayed"], true, "the request page updated itself without reloading");
    eprintln!("request page first showed `{}` (polling: {})", seen["firstStatus"], seen["polling"]);
    let tasks = seen["tasks"].as_array().unwrap();
    let services: Vec<&str> = tasks.iter().map(|t| t["service"].as_str().unwrap()).collect();
    for participant in ["contacts", "consent", "comms", "enrichment"] {
        assert!(services.contains(&participant), "{participant} missing from {services:?}");
    }
    assert!(tasks.iter().all(|t| t["status"] == "confirmed"), "{tasks:?}");
    let request_id = seen["requestId"].as_str().unwrap();
    // The API agrees: the request is complete, the person is gone, the ledger has the proof.
    let r = http.json("GET", &format!("/v1/dsar/{request_id}"), Some(&officer), None).await;
    assert_eq!(
        (r.json["kind"].as_str(), r.json["status"].as_str()),
        (Some("erasure"), Some("completed")),
        "{:?}",
        r.json
    );
    assert_eq!(r.json["contact_id"], id.as_str());
    assert_eq!(r.json["tasks"].as_array().unwrap().len(), tasks.len());
    assert_eq!(http.json("GET", &format!("/v1/contacts/{id}"), Some(&owner), None).await.status, 404);
    assert!(seen["queue"].as_str().unwrap().contains(request_id));
    assert!(seen["ledger"].as_str().unwrap().contains(request_id));
    let audit = seen["audit"].as_str().unwrap();
    assert!(audit.contains("hash chain holds"), "{audit}");
    for value in ["Erin", "Exemplar", "erin@"] {
        assert!(
            !audit.contains(value) && !seen["ledger"].as_str().unwrap().contains(value),
            "personal data `{value}` shown"
        );
    }
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_console_sales_user_sees_consents_and_source_but_no_export_or_forget() {
    if browser().is_none() {
        return;
    }
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (tenant_id, owner) = sb.tenant("Console").await;
    let purpose = json!({"key": "newsletter", "description": "Newsletter", "lawful_basis": "consent",
        "notice": "Yes, send me the monthly newsletter."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&owner), Some(purpose)).await.status, 201);
    let source = json!({"channel": "import", "detail": "trade-fair-2026.csv"});
    let id = contact(&http, &owner, "Ada", "Lovelace", "ada@example.org", source).await;
    contact(&http, &owner, "Grace", "Hopper", "grace@example.org", json!({"channel": "api", "detail": "x"})).await;
    let grant = json!({"contact_id": id, "purpose": "newsletter", "action": "grant", "source": "api",
        "evidence": {"notice_version": 1, "justification": "ticked at the stand"}});
    let g = http.json("POST", "/v1/consents", Some(&owner), Some(grant)).await;
    assert_eq!(g.status, 201, "{:?}", g.json);

    let sales = sb.key(tenant_id, Role::Sales).await;
    let seen = journey(&sb, "sales-view", &sales, &["Lovelace"]).await;
    assert_eq!(seen["contactId"], id.as_str(), "{seen}");
    let consents = seen["consents"].as_str().unwrap();
    assert!(consents.contains("newsletter") && consents.contains("granted") && consents.contains("v1"), "{consents}");
    let source = seen["source"].as_str().unwrap();
    assert!(source.contains("import") && source.contains("trade-fair-2026.csv"), "{source}");
    assert_eq!(seen["exportButtons"], 0, "{seen}");
    assert_eq!(seen["forgetButtons"], 0, "{seen}");
    let buttons =
        seen["buttons"].as_array().unwrap().iter().map(|b| b.as_str().unwrap().to_lowercase()).collect::<Vec<_>>();
    assert!(
        buttons.iter().all(|b| !b.contains("export") && !b.contains("forget") && !b.contains("erase")),
        "{buttons:?}"
    );
    assert!(buttons.iter().any(|b| b.contains("save changes")), "sales may rectify: {buttons:?}");
    let nav = seen["nav"].as_str().unwrap();
    assert!(!nav.contains("Privacy"), "no privacy area for sales: {nav}");
    assert!(seen["exportByHand"].as_str().unwrap().contains("permission_denied"), "{seen}");
    // The API refuses the export to this key, whatever the console shows.
    let a = http.json("GET", &format!("/v1/contacts/{id}/export"), Some(&sales), None).await;
    assert_eq!((a.status, a.code()), (403, "permission_denied"));
    let a = http.json("GET", &format!("/v1/contacts/{id}/export"), Some(&owner), None).await;
    assert_eq!(a.status, 200, "the export itself works for a key allowed to export");
    sb.stop().await;
}
