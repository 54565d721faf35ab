//! DSAR requests end to end in one process (the embedded bus): an access request returns one
//! document with the person's data from every participant; an erasure leaves no row of the
//! person in any service database (checked with SQL against each store), completes with one
//! confirmation per participant and writes the ledger; legal holds refuse erasure; deadlines
//! extend once; a replayed erasure does no harm.

#[path = "../../plugins/host/tests/support/wat.rs"]
mod wat_components;

use std::time::Duration;

use base64::Engine as _;

use carnet_cli::Target;
use carnet_cli::node;
use carnet_tests::Sandbox;
use carnet_tests::http::Http;
use sea_orm::{ConnectionTrait, Statement, Value as DbValue};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

async fn wait_until(http: &Http, key: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = http.json("GET", path, Some(key), None).await;
        assert_eq!(a.status, 200, "{:?}", a.json);
        if done(&a.json) {
            return a.json;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting on {path}: {}", a.json);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A contact with data in every participant: the contact (and a rectification), a consent, a
/// mail and a call.
async fn person(http: &Http, key: &str, email: &str) -> String {
    let phone = format!("+4420794601{:02}", email.len() % 100);
    let body = json!({"email": email, "first_name": "Erin", "last_name": "Example", "phone": phone,
        "source": {"channel": "api", "detail": "dsar-test"}});
    let a = http.json("POST", "/v1/contacts", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    let id = a.json["id"].as_str().unwrap().to_string();
    let patch = json!({"last_name": "Exemplar", "reason": "typo"});
    assert_eq!(http.json("PATCH", &format!("/v1/contacts/{id}"), Some(key), Some(patch)).await.status, 200);
    let grant = json!({"contact_id": id, "purpose": "news", "action": "grant", "source": "api"});
    assert_eq!(http.json("POST", "/v1/consents", Some(key), Some(grant)).await.status, 201);
    let mail = json!({"contact_id": id, "purpose": "news", "subject": "Hello", "body": "News."});
    assert_eq!(http.json("POST", "/v1/messages", Some(key), Some(mail)).await.status, 202);
    let call = json!({"contact_id": id, "direction": "inbound", "started_at": "2026-11-29T09:00:00Z",
        "duration_seconds": 42, "outcome": "connected", "notes": "Asked to be forgotten."});
    assert_eq!(http.json("POST", "/v1/calls", Some(key), Some(call)).await.status, 201);
    let runs = http.json("POST", &format!("/v1/contacts/{id}/enrich"), Some(key), None).await;
    assert_eq!(runs.json["runs"][0]["outcome"], "unchanged", "{:?}", runs.json);
    id
}

async fn setup(sb: &Sandbox) -> (Http, String, Uuid) {
    let http = sb.http();
    let (tenant_id, key) = sb.tenant("Dsar").await;
    let purpose = json!({"key": "news", "description": "News", "lawful_basis": "consent", "notice": "News by mail."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&key), Some(purpose)).await.status, 201);
    // A plugin that reads the e-mail and hands it back: every person gets an enrichment run.
    let echo = wat_components::component(wat_components::ECHO);
    let manifest =
        "name = \"echo\"\nversion = \"1.0.0\"\napi_version = \"0.1.0\"\nreads = [\"email\"]\nwrites = [\"email\"]\n";
    let body = json!({"manifest": manifest, "component": base64::engine::general_purpose::STANDARD.encode(echo),
        "enabled": true});
    assert_eq!(http.json("POST", "/v1/plugins", Some(&key), Some(body)).await.status, 201);
    (http, key, tenant_id)
}

/// True when the person has rows in every store (enrolments aside: `person` starts no sequence).
async fn held_everywhere(sb: &Sandbox, id: Uuid) -> bool {
    rows_of(sb, id).await.iter().filter(|(t, _)| t != "comms.enrollments").all(|(_, n)| *n > 0)
}

/// Rows that mention `id` in every table of every service store, by SQL.
async fn rows_of(sb: &Sandbox, id: Uuid) -> Vec<(String, i64)> {
    let tables: [(Target, &[(&str, &str)]); 4] = [
        (Target::Contacts, &[("contacts", "id"), ("contact_changes", "contact_id")]),
        (Target::Consent, &[("consent_records", "contact_id"), ("consent_states", "contact_id")]),
        (Target::Comms, &[("deliveries", "contact_id"), ("calls", "contact_id"), ("enrollments", "contact_id")]),
        (Target::Enrichment, &[("enrichment_runs", "contact_id")]),
    ];
    let mut out = Vec::new();
    for (target, list) in tables {
        let db = node::open_database(&sb.config, target, false).await.unwrap();
        let backend = db.backend();
        for (table, column) in list {
            let placeholder = if backend == sea_orm::DbBackend::Postgres { "$1" } else { "?" };
            let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = {placeholder}");
            let row = db
                .read
                .query_one_raw(Statement::from_sql_and_values(backend, sql, [DbValue::Uuid(Some(id))]))
                .await
                .unwrap()
                .unwrap();
            out.push((format!("{target}.{table}"), row.try_get::<i64>("", "n").unwrap()));
        }
        db.close().await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_access_request_returns_one_document_from_every_participant() {
    let sb = Sandbox::monolith().await;
    let (http, key, tenant_id) = setup(&sb).await;
    let id = person(&http, &key, "erin@example.org").await;
    let created =
        http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "access", "email": "Erin@Example.org"}))).await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    assert_eq!(created.json["contact_id"], id);
    let due = created.json["due_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let received = created.json["received_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert_eq!(due, received.checked_add_months(chrono::Months::new(1)).unwrap(), "one calendar month");
    let rid = created.json["id"].as_str().unwrap().to_string();
    let done = wait_until(&http, &key, &format!("/v1/dsar/{rid}"), |r| r["status"] == "completed").await;
    let services: Vec<&str> =
        done["tasks"].as_array().unwrap().iter().map(|t| t["service"].as_str().unwrap()).collect();
    assert_eq!(services, vec!["comms", "consent", "contacts", "enrichment"]);

    let export = http.raw("GET", &format!("/v1/dsar/{rid}/export"), Some(&key), None, vec![]).await;
    assert_eq!(export.status, 200);
    let doc: Value = serde_json::from_slice(&export.body).unwrap();
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["services"]["contacts"]["contact"]["email"], "erin@example.org");
    assert_eq!(doc["services"]["contacts"]["contact"]["last_name"], "Exemplar");
    assert_eq!(doc["services"]["consent"]["consents"][0]["purpose"], "news");
    assert_eq!(doc["services"]["comms"]["calls"][0]["notes"], "Asked to be forgotten.");
    assert_eq!(doc["services"]["comms"]["messages"].as_array().unwrap().len(), 1);
    assert_eq!(doc["article_15"]["purposes"][0]["purpose"], "news");
    assert_eq!(doc["services"]["enrichment"]["runs"][0]["plugin"], "echo");
    assert_eq!(doc["services"]["enrichment"]["plugins"][0]["reads"], json!(["email"]));
    assert_eq!(
        doc["article_15"]["recipients"],
        json!(["comms", "consent", "contacts", "enrichment", "plugin echo@1.0.0"])
    );
    assert!(doc["summary"].as_str().unwrap().contains("4 services"));

    // The stored artefact is encrypted: the raw DSAR database holds no plaintext of it.
    let raw = std::fs::read(sb.data_dir().join("dsar.db")).unwrap();
    let wal = std::fs::read(sb.data_dir().join("dsar.db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(!bytes.windows(16).any(|w| w == b"erin@example.org"), "export stored in clear");
    }
    // Only `dsar:manage` downloads it.
    let sales = sb.key(tenant_id, carnet_gateway::roles::Role::Sales).await;
    let refused = http.raw("GET", &format!("/v1/dsar/{rid}/export"), Some(&sales), None, vec![]).await;
    assert_eq!(refused.status, 403);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_erasure_removes_every_row_confirms_per_participant_and_writes_the_ledger() {
    let sb = Sandbox::monolith().await;
    let (http, key, _) = setup(&sb).await;
    let id = person(&http, &key, "forget@example.org").await;
    let keep = person(&http, &key, "keep@example.org").await;
    let uid: Uuid = id.parse().unwrap();
    // Let the mail go out so comms holds a sent delivery.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(held_everywhere(&sb, uid).await, "{:?}", rows_of(&sb, uid).await);

    let created = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "erasure", "contact_id": id}))).await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    let rid = created.json["id"].as_str().unwrap().to_string();
    let done = wait_until(&http, &key, &format!("/v1/dsar/{rid}"), |r| r["status"] == "completed").await;
    let tasks = done["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4, "{done}");
    assert!(tasks.iter().all(|t| t["status"] == "confirmed" && t["confirmed_at"].is_string()), "{done}");
    let contacts_task = tasks.iter().find(|t| t["service"] == "contacts").unwrap();
    assert_eq!(contacts_task["records"]["contacts"], 1);

    let left: Vec<_> = rows_of(&sb, uid).await.into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(left.is_empty(), "rows of the erased person remain: {left:?}");
    assert!(held_everywhere(&sb, keep.parse().unwrap()).await, "the other person is untouched");

    let ledger = http.json("GET", "/v1/erasure-ledger", Some(&key), None).await;
    let entry = ledger.json["entries"].as_array().unwrap().iter().find(|e| e["request_id"] == rid).unwrap().clone();
    assert_eq!(entry["participants"], json!(["contacts", "consent", "comms", "enrichment"]));
    assert_eq!(entry["removed"]["enrichment.enrichment_runs"], 1, "{entry}");
    assert!(entry["completed_at"].is_string());
    assert_eq!(entry["removed"]["contacts.contacts"], 1, "{entry}");
    let text = entry.to_string();
    assert!(!text.contains(&id) && !text.contains("forget@"), "the ledger holds a pseudonym only: {text}");

    // The erased person cannot silently come back: a keyed-hash tombstone refuses the address,
    // unless the create says why it is lawful now (kept in the history).
    let again = json!({"email": "Forget@Example.org", "source": {"channel": "import", "detail": "old-list.csv"}});
    let refused = http.json("POST", "/v1/contacts", Some(&key), Some(again.clone())).await;
    assert_eq!(
        (refused.status, refused.code(), refused.field()),
        (409, "failed_precondition", "email"),
        "{:?}",
        refused.json
    );
    assert!(refused.json["detail"].as_str().unwrap().contains(&rid));
    let mut overridden = again;
    overridden["erasure_override_reason"] = json!("the person signed up again in the shop on 2026-11-30");
    let back = http.json("POST", "/v1/contacts", Some(&key), Some(overridden)).await;
    assert_eq!(back.status, 201, "{:?}", back.json);
    let history = http
        .json("GET", &format!("/v1/contacts/{}/history", back.json["id"].as_str().unwrap()), Some(&key), None)
        .await;
    assert!(history.body.windows(17).any(|w| w == b"erasure_override\""), "{:?}", history.json);

    // Asking again (a replay, or the same event twice) changes nothing and breaks nothing.
    let replay = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "erasure", "contact_id": id}))).await;
    assert_eq!(replay.status, 404, "the person is gone: {:?}", replay.json);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_legal_hold_refuses_erasure_until_lifted_and_deadlines_extend_once() {
    let sb = Sandbox::monolith().await;
    let (http, key, _) = setup(&sb).await;
    let id = person(&http, &key, "held@example.org").await;
    let hold = http
        .json("POST", "/v1/legal-holds", Some(&key), Some(json!({"contact_id": id, "reason": "litigation 2026-17"})))
        .await;
    assert_eq!(hold.status, 201, "{:?}", hold.json);
    let refused = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "erasure", "contact_id": id}))).await;
    assert_eq!((refused.status, refused.code(), refused.field()), (409, "failed_precondition", "contact_id"));
    assert!(refused.json["detail"].as_str().unwrap().contains("legal hold"));
    assert!(held_everywhere(&sb, id.parse().unwrap()).await, "nothing erased");

    let hid = hold.json["id"].as_str().unwrap();
    let lifted =
        http.json("POST", &format!("/v1/legal-holds/{hid}/lift"), Some(&key), Some(json!({"reason": "settled"}))).await;
    assert_eq!((lifted.status, lifted.json["active"].as_bool()), (200, Some(false)));

    // A finished request's deadline cannot be extended any more (open ones: crates/cli/tests/mesh.rs).
    let access = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "access", "contact_id": id}))).await;
    let rid = access.json["id"].as_str().unwrap().to_string();
    wait_until(&http, &key, &format!("/v1/dsar/{rid}"), |r| r["status"] == "completed").await;
    let late = http
        .json("POST", &format!("/v1/dsar/{rid}/extend"), Some(&key), Some(json!({"reason": "complex request"})))
        .await;
    assert_eq!((late.status, late.code()), (409, "failed_precondition"));
    let bad = http
        .json("POST", &format!("/v1/dsar/{rid}/extend"), Some(&key), Some(json!({"reason": "x", "months": 3})))
        .await;
    assert_eq!((bad.status, bad.field()), (400, "months"));
    // A request can be rejected with the reason the requester is told, while it is open.
    let open = http
        .json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "restriction", "contact_id": id, "active": false})))
        .await;
    assert_eq!(open.json["status"], "completed");
    let done = http
        .json(
            "POST",
            &format!("/v1/dsar/{}/reject", open.json["id"].as_str().unwrap()),
            Some(&key),
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!((done.status, done.code()), (409, "failed_precondition"), "a completed request stays completed");
    let no_reason =
        http.json("POST", &format!("/v1/dsar/{rid}/reject"), Some(&key), Some(json!({"reason": " "}))).await;
    assert_eq!((no_reason.status, no_reason.field()), (400, "reason"));

    let erased = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "erasure", "contact_id": id}))).await;
    assert_eq!(erased.status, 201, "{:?}", erased.json);
    let rid = erased.json["id"].as_str().unwrap().to_string();
    wait_until(&http, &key, &format!("/v1/dsar/{rid}"), |r| r["status"] == "completed").await;
    let holds = http.json("GET", &format!("/v1/legal-holds?contact_id={id}"), Some(&key), None).await;
    assert_eq!(holds.json["holds"][0]["lift_reason"], "settled");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_rectification_and_restriction_requests_apply_and_name_their_recipients() {
    let sb = Sandbox::monolith().await;
    let (http, key, _) = setup(&sb).await;
    let id = person(&http, &key, "rectify@example.org").await;
    let r = http
        .json(
            "POST",
            "/v1/dsar",
            Some(&key),
            Some(json!({"kind": "rectification", "contact_id": id, "changes": {"last_name": "Corrected"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["status"], "completed");
    assert_eq!(r.json["recipients"], json!(["contacts", "consent", "comms", "enrichment"]));
    let c = http.json("GET", &format!("/v1/contacts/{id}"), Some(&key), None).await;
    assert_eq!(c.json["last_name"], "Corrected");

    let bad = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "rectification", "contact_id": id}))).await;
    assert_eq!((bad.status, bad.field()), (400, "changes"));
    let bad = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "forget-me", "contact_id": id}))).await;
    assert_eq!((bad.status, bad.field()), (400, "kind"));

    let r = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "restriction", "contact_id": id}))).await;
    assert_eq!((r.status, r.json["status"].as_str()), (201, Some("completed")), "{:?}", r.json);
    let check = http
        .json(
            "POST",
            "/v1/consents/check",
            Some(&key),
            Some(json!({"checks": [{"contact_id": id, "purpose": "news"}]})),
        )
        .await;
    assert_eq!(check.json["results"][0]["reason"], "restricted", "every consent-gated use stops");
    let queue = http.json("GET", "/v1/dsar?open=false", Some(&key), None).await;
    assert_eq!(queue.json["requests"].as_array().unwrap().len(), 2);
    sb.stop().await;
}

/// Participants that confirm at the same moment: exactly one of them sees that it was the last,
/// and the request completes (on PostgreSQL two concurrent confirmations once each saw the
/// other's task pending, and the request stayed in progress for ever).
async fn concurrent_confirmations_complete_the_request(sb: &Sandbox) {
    let db = node::open_database(&sb.config, Target::Dsar, false).await.unwrap();
    let store = carnet_dsar::DsarStore::new(db.clone());
    let tenant_id = Uuid::now_v7();
    let participants: Vec<String> = (0..8).map(|i| format!("service{i}")).collect();
    for round in 0..5 {
        let caller = carnet_kit::Caller::new(tenant_id, "key:race", [carnet_kit::Permission::DsarManage]);
        let stamp = carnet_kit::audit::Entry::new(&caller, "create", "dsar_request", "", "test");
        let new = carnet_dsar::store::NewRequest {
            kind: "erasure".into(),
            subject_id: Uuid::now_v7(),
            verification: "attested".into(),
            details: json!({}),
            recipients: vec![],
            participants: participants.clone(),
            pseudonym_opt: Some(format!("p{round}")),
            completed: false,
            changed_fields: vec![],
        };
        let request = store.create(tenant_id, &stamp, new, chrono::Duration::seconds(60)).await.unwrap();
        let confirms = participants.iter().map(|p| {
            let store = store.clone();
            let p = p.clone();
            tokio::spawn(async move { store.confirm(tenant_id, request.id, &p, Default::default()).await.unwrap() })
        });
        let results: Vec<_> = futures::future::join_all(confirms).await.into_iter().map(|r| r.unwrap()).collect();
        let completed = results.iter().filter(|c| c.is_some_and(|c| c.completed)).count();
        assert_eq!(completed, 1, "round {round}: exactly one confirmation is the last");
        assert_eq!(store.request(tenant_id, request.id).await.unwrap().status, "completed", "round {round}");
    }
    db.close().await;
}
carnet_tests::both_modes!(concurrent_confirmations_complete_the_request);
