//! Bulk import end to end through the gateway (docs/import.md), on SQLite and PostgreSQL: a file
//! with good rows, a column outside the field policy, malformed values, in-file and stored
//! duplicates and a person erased earlier gets the right report line by line and stores nothing
//! of a failed row; the import's consents follow; an import interrupted and resumed ends exactly
//! as an uninterrupted one; a different file cannot resume it.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use carnet_cli::Target;
use carnet_cli::node;
use carnet_gateway::roles::Role;
use carnet_kit::Permission;
use carnet_proto::contacts::v1 as pb;
use carnet_tests::http::Http;
use carnet_tests::{Sandbox, both_modes};
use sea_orm::{ConnectionTrait, Statement, Value as DbValue};

const WAIT: Duration = Duration::from_secs(30);

async fn contacts_in_db(sb: &Sandbox, tenant_id: Uuid) -> i64 {
    let db = node::open_database(&sb.config, Target::Contacts, false).await.unwrap();
    let backend = db.backend();
    let placeholder = if backend == sea_orm::DbBackend::Postgres { "$1" } else { "?" };
    let sql = format!("SELECT COUNT(*) AS n FROM contacts WHERE tenant_id = {placeholder}");
    let row = db
        .read
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [DbValue::Uuid(Some(tenant_id))]))
        .await
        .unwrap()
        .unwrap();
    let n = row.try_get::<i64>("", "n").unwrap();
    db.close().await;
    n
}

async fn tenant(sb: &Sandbox, http: &Http, name: &str) -> (Uuid, String) {
    let (tenant_id, key) = sb.tenant(name).await;
    let policy = json!({"fields": [
        {"key": "email", "type": "email", "category": "contact"},
        {"key": "first_name", "type": "string", "category": "identity"},
        {"key": "last_name", "type": "string", "category": "identity"},
        {"key": "phone", "type": "phone", "category": "contact"},
        {"key": "company", "type": "string", "category": "professional"},
        {"key": "score", "type": "number", "category": "professional"}]});
    let a = http.json("PUT", "/v1/field-policy", Some(&key), Some(policy)).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    let purpose = json!({"key": "news", "description": "News", "lawful_basis": "consent", "notice": "News by mail."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&key), Some(purpose)).await.status, 201);
    (tenant_id, key)
}

fn terms(file_name: &str) -> Value {
    json!({"file_name": file_name, "format": "csv", "lawful_basis": "consent", "purposes": ["news"],
        "evidence": {"collected_at": "2026-10-01T09:00:00Z", "collected_where": "trade fair stand, sign-up sheet",
            "notice_version": 1}})
}

async fn create(http: &Http, key: &str, body: Value) -> String {
    let a = http.json("POST", "/v1/imports", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    assert_eq!(a.json["status"], "created");
    a.json["id"].as_str().unwrap().to_string()
}

async fn upload(http: &Http, key: &str, id: &str, data: &[u8]) -> Value {
    let path = format!("/v1/imports/{id}/data");
    let a = http.raw("PUT", &path, Some(key), Some("text/csv"), data.to_vec()).await;
    assert_eq!(a.status, 200, "{}", a.json);
    a.json
}

/// The report as `(line, outcome, reason)`, and the contact id column.
async fn report(http: &Http, key: &str, id: &str) -> (Vec<(u64, String, String)>, Vec<String>) {
    let a = http.raw("GET", &format!("/v1/imports/{id}/report"), Some(key), None, Vec::new()).await;
    assert_eq!(a.status, 200);
    let text = String::from_utf8(a.body.to_vec()).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("line,outcome,reason,contact_id"));
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for l in lines {
        let parts: Vec<&str> = l.splitn(4, ',').collect();
        rows.push((parts[0].parse().unwrap(), parts[1].to_string(), parts[2].to_string()));
        ids.push(parts[3].to_string());
    }
    (rows, ids)
}

/// Every contact of the tenant as (email, first name, last name, phone, company, score), sorted.
async fn all_contacts(http: &Http, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!(
            "/v1/contacts?limit=500{}",
            if cursor.is_empty() { String::new() } else { format!("&cursor={cursor}") }
        );
        let page = http.json("GET", &path, Some(key), None).await;
        assert_eq!(page.status, 200, "{:?}", page.json);
        for c in page.json["contacts"].as_array().unwrap() {
            out.push(format!(
                "{}|{}|{}|{}|{}|{}|{}",
                c["email"],
                c["first_name"],
                c["last_name"],
                c["phone"],
                c["fields"]["company"],
                c["fields"]["score"],
                c["source"]["channel"]
            ));
        }
        match page.json["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    out.sort();
    out
}

const FILE: &str = "email,first_name,last_name,phone,company,score,shoe_size
ada@example.org,Ada,Lovelace,+44 20 7946 0001,Analytical Engines,3,
bob@example.org,Bob,,,,,
carl@example.org,Carl,,,,,44
not-an-email,Dora,,,,,
eve@example.org,Eve,,12,,,
fay@example.org,Fay,,,,lots,
ADA@example.org,Ada again,,,,,
stored@example.org,Stan,,,,,
gone@example.org,Gina,,,,,
hal@example.org,\"Hal \"\"H\"\"\",,,\"Multi
line, Inc\",,
,,,,,,
ivy@example.org,Ivy,,+442079460001,,,
";

async fn file_with_every_kind_of_row(sb: &Sandbox) {
    let http = sb.http();
    let (tenant_id, key) = tenant(sb, &http, "Import").await;
    // A contact that exists before the import, and a person erased on request.
    let stored = json!({"email": "stored@example.org", "source": {"channel": "api", "detail": "before"}});
    assert_eq!(http.json("POST", "/v1/contacts", Some(&key), Some(stored)).await.status, 201);
    let gone = json!({"email": "gone@example.org", "source": {"channel": "api", "detail": "before"}});
    let gone = http.json("POST", "/v1/contacts", Some(&key), Some(gone)).await.json["id"].as_str().unwrap().to_string();
    let erase = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "erasure", "contact_id": gone}))).await;
    let rid = erase.json["id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    while http.json("GET", &format!("/v1/dsar/{rid}"), Some(&key), None).await.json["status"] != "completed" {
        assert!(tokio::time::Instant::now() < deadline, "erasure did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bad terms name their field and store nothing.
    for (patch, field) in [
        (json!({"format": "xlsx"}), "format"),
        (json!({"lawful_basis": "because"}), "lawful_basis"),
        (json!({"purposes": []}), "purposes"),
        (json!({"purposes": ["nope"]}), "purposes[0]"),
        (json!({"evidence": {"collected_where": "x", "notice_version": 1}}), "evidence.collected_at"),
        (
            json!({"evidence": {"collected_at": "2026-10-01T09:00:00Z", "collected_where": "x", "notice_version": 9}}),
            "evidence.notice_version",
        ),
        (json!({"mapping": {"E-mail": "shoe_size"}}), "mapping.E-mail"),
        (json!({"lawful_basis": "contract", "purposes": []}), "evidence.justification"),
        (json!({"on_duplicate": "merge"}), "on_duplicate"),
    ] {
        let mut body = terms("people.csv");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let a = http.json("POST", "/v1/imports", Some(&key), Some(body)).await;
        assert_eq!((a.status, a.field()), (400, field), "{:?}", a.json);
    }
    assert_eq!(http.json("GET", "/v1/imports", Some(&key), None).await.json["imports"], json!([]));
    // A read-only key cannot import.
    let reader = sb.key(tenant_id, Role::ReadOnly).await;
    let a = http.json("POST", "/v1/imports", Some(&reader), Some(terms("people.csv"))).await;
    assert_eq!((a.status, a.code()), (403, "permission_denied"));

    let id = create(&http, &key, terms("people.csv")).await;
    let done = upload(&http, &key, &id, FILE.as_bytes()).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(
        (done["created"].as_u64(), done["updated"].as_u64(), done["skipped"].as_u64(), done["failed"].as_u64()),
        (Some(3), Some(0), Some(3), Some(6)),
        "{done}"
    );
    let (rows, ids) = report(&http, &key, &id).await;
    let expected: Vec<(u64, &str, &str)> = vec![
        (2, "created", ""),
        (3, "created", ""),
        (4, "failed", "invalid_argument:fields.shoe_size"),
        (5, "failed", "invalid_argument:email"),
        (6, "failed", "invalid_argument:phone"),
        (7, "failed", "invalid_argument:fields.score"),
        (8, "skipped", "duplicate_in_file:email@line 2"),
        (9, "skipped", "already_exists:email"),
        (10, "failed", "erased:email"),
        (11, "created", ""),
        (13, "failed", "invalid_argument:empty_row"),
        (14, "skipped", "duplicate_in_file:phone@line 2"),
    ];
    let got: Vec<(u64, &str, &str)> = rows.iter().map(|(l, o, r)| (*l, o.as_str(), r.as_str())).collect();
    assert_eq!(got, expected);
    assert_eq!(ids[6], ids[0], "the duplicate names the contact of line 2");

    // Nothing of a failed row: the store holds the contact made before and the three created.
    assert_eq!(contacts_in_db(sb, tenant_id).await, 4);
    for email in ["carl@example.org", "eve@example.org", "fay@example.org", "gone@example.org"] {
        let found = http.json("GET", &format!("/v1/contacts?q={email}"), Some(&key), None).await;
        assert_eq!(found.json["contacts"], json!([]), "{email}");
    }
    let ada = http.json("GET", &format!("/v1/contacts/{}", ids[0]), Some(&key), None).await.json;
    assert_eq!((ada["first_name"].as_str(), ada["phone"].as_str()), (Some("Ada"), Some("+442079460001")));
    assert_eq!(ada["fields"]["score"], 3.0);
    assert_eq!(ada["source"]["channel"], "import");
    assert_eq!(ada["source"]["detail"], format!("people.csv (import {id})"));
    assert_eq!(ada["source"]["collected_at"], "2026-10-01T09:00:00Z");
    assert!(ada["source"]["actor"].as_str().unwrap().starts_with("key:"));
    let hal = http.json("GET", &format!("/v1/contacts/{}", ids[9]), Some(&key), None).await.json;
    assert_eq!(
        (hal["first_name"].as_str(), hal["fields"]["company"].as_str()),
        (Some("Hal \"H\""), Some("Multi\nline, Inc"))
    );

    // The consents follow, with the import's evidence.
    let deadline = tokio::time::Instant::now() + WAIT;
    let consents = loop {
        let c = http.json("GET", &format!("/v1/contacts/{}/consents", ids[0]), Some(&key), None).await.json;
        if c["current"].as_array().is_some_and(|l| !l.is_empty()) {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "no consent followed the import: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(consents["current"][0]["purpose"], "news");
    assert_eq!(consents["current"][0]["status"], "granted");
    assert_eq!(consents["current"][0]["notice_version"], 1);
    let record = &consents["history"][0];
    assert_eq!(
        (record["source"].as_str(), record["form_id"].as_str()),
        (Some("import"), Some(format!("import:{id}").as_str()))
    );
    assert_eq!(record["at"], "2026-10-01T09:00:00Z");

    // A completed import takes no more data; the audit trail has its creation and completion.
    let again = http
        .raw("PUT", &format!("/v1/imports/{id}/data"), Some(&key), Some("text/csv"), FILE.as_bytes().to_vec())
        .await;
    assert_eq!((again.status, again.code()), (409, "failed_precondition"), "{}", again.json);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let trail = http.json("GET", &format!("/v1/audit?record_id={id}"), Some(&key), None).await.json;
        let actions: Vec<&str> =
            trail["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        if actions.contains(&"import") && actions.contains(&"create") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "import not audited: {trail}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both_modes!(file_with_every_kind_of_row);

async fn duplicates_update_or_fail_and_erased_override(sb: &Sandbox) {
    let http = sb.http();
    let (_, key) = tenant(sb, &http, "Modes").await;
    let stored =
        json!({"email": "stored@example.org", "first_name": "Old", "source": {"channel": "api", "detail": "before"}});
    let stored =
        http.json("POST", "/v1/contacts", Some(&key), Some(stored)).await.json["id"].as_str().unwrap().to_string();
    let file = b"email,first_name\nstored@example.org,New\n";
    let mut body = terms("update.csv");
    body["on_duplicate"] = json!("update");
    let id = create(&http, &key, body).await;
    assert_eq!(upload(&http, &key, &id, file).await["updated"], 1);
    let c = http.json("GET", &format!("/v1/contacts/{stored}"), Some(&key), None).await.json;
    assert_eq!(c["first_name"], "New");
    assert_eq!(c["field_sources"]["first_name"]["channel"], "import");
    let mut body = terms("fail.csv");
    body["on_duplicate"] = json!("fail");
    let id = create(&http, &key, body).await;
    assert_eq!(upload(&http, &key, &id, file).await["failed"], 1);
    assert_eq!(report(&http, &key, &id).await.0, vec![(2, "failed".to_string(), "already_exists:email".to_string())]);

    // An erased person comes back only with a reason.
    let erase = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "erasure", "contact_id": stored}))).await;
    let rid = erase.json["id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    while http.json("GET", &format!("/v1/dsar/{rid}"), Some(&key), None).await.json["status"] != "completed" {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut body = terms("override.csv");
    body["erasure_override_reason"] = json!("new contract signed 2026-11-20");
    let id = create(&http, &key, body).await;
    let done = upload(&http, &key, &id, b"email\nstored@example.org\n").await;
    assert_eq!(done["created"], 1, "{done}");
    let (rows, ids) = report(&http, &key, &id).await;
    assert_eq!(rows, vec![(2, "created".to_string(), "erasure_override".to_string())]);
    let history = http.json("GET", &format!("/v1/contacts/{}/history", ids[0]), Some(&key), None).await.json;
    assert!(history.to_string().contains("erasure_override"), "{history}");

    // JSON lines, typed values.
    let mut body = terms("people.jsonl");
    body["format"] = json!("jsonl");
    let id = create(&http, &key, body).await;
    let lines = b"{\"email\":\"jo@example.org\",\"score\":7}\n{\"email\":\"kim@example.org\",\"score\":\"x\"}\n";
    let done = upload(&http, &key, &id, lines).await;
    assert_eq!((done["created"].as_u64(), done["failed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(
        report(&http, &key, &id).await.0[1],
        (2, "failed".to_string(), "invalid_argument:fields.score".to_string())
    );
}

both_modes!(duplicates_update_or_fail_and_erased_override);

/// A file of `n` rows with a failure every 7th row and an in-file duplicate every 11th.
fn generated(n: usize) -> String {
    let mut s = String::from("email,first_name,score\n");
    for i in 0..n {
        match i {
            i if i % 7 == 3 => s.push_str(&format!("bad-{i},Row{i},1\n")),
            i if i % 11 == 5 && i > 11 => s.push_str(&format!("p{}@example.org,Dup{i},2\n", i - 11)),
            i => s.push_str(&format!("p{i}@example.org,Row{i},{}\n", i % 100)),
        }
    }
    s
}

async fn interrupted_import_resumes_to_the_same_state(sb: &Sandbox) {
    let http = sb.http();
    let file = generated(2_600);
    // Uninterrupted, in one tenant.
    let (_, key_a) = tenant(sb, &http, "Straight").await;
    let a = create(&http, &key_a, terms("big.csv")).await;
    let done_a = upload(&http, &key_a, &a, file.as_bytes()).await;
    assert_eq!(done_a["status"], "completed");

    // Interrupted in another: the first 60% of the bytes (cut inside a line), no `last`.
    let (tenant_b, key_b) = tenant(sb, &http, "Resumed").await;
    let b = create(&http, &key_b, terms("big.csv")).await;
    let cut = file.len() * 6 / 10;
    let caller = carnet_tests::caller_with(tenant_b, &[Permission::ContactsWrite, Permission::ContactsRead]);
    let chunks = vec![
        pb::ImportChunk { import_id: b.clone(), data: file.as_bytes()[..cut / 2].to_vec(), last: false },
        pb::ImportChunk { import_id: String::new(), data: file.as_bytes()[cut / 2..cut].to_vec(), last: false },
    ];
    let partial = sb.contacts(&caller).upload_import(tokio_stream::iter(chunks)).await.unwrap().into_inner();
    assert_eq!(partial.status, "running");
    assert!(partial.lines_done > 1_000 && (partial.bytes_done as usize) <= cut, "{partial:?}");
    // Another file cannot resume it.
    let other = generated(2_600).replace("Row2,", "Other,");
    let path = format!("/v1/imports/{b}/data");
    let refused = http.raw("PUT", &path, Some(&key_b), Some("text/csv"), other.into_bytes()).await;
    assert_eq!((refused.status, refused.field()), (409, "file"), "{}", refused.json);
    // The same file does, from the start.
    let done_b = upload(&http, &key_b, &b, file.as_bytes()).await;
    assert_eq!(done_b["status"], "completed");

    for k in ["created", "updated", "skipped", "failed", "lines_done", "bytes_done"] {
        assert_eq!(done_a[k], done_b[k], "{k}");
    }
    let (rows_a, _) = report(&http, &key_a, &a).await;
    let (rows_b, _) = report(&http, &key_b, &b).await;
    assert_eq!(rows_a.len(), 2_600);
    assert_eq!(rows_a, rows_b, "the same report line by line");
    assert_eq!(all_contacts(&http, &key_a).await, all_contacts(&http, &key_b).await, "the same contacts");
}

both_modes!(interrupted_import_resumes_to_the_same_state);
