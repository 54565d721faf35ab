//! Retention end to end (docs/retention.md), on SQLite and PostgreSQL: a run deletes exactly what
//! each policy says — inactive contacts through erasure requests, old calls, messages, enrichment
//! runs and closed DSAR requests — keeps what is younger, held or restricted, and records every
//! purge (and a dry run counts without deleting or recording); a warning is mailed before an
//! inactivity erasure and activity since starts the count again; a contact whose only basis was
//! consent is erased when it is withdrawn everywhere, when the tenant chose so.
//!
//! Ages are made by moving the stored times back in each service's database (SQL), the way the
//! records would look after the days passed.

#[path = "../../plugins/host/tests/support/wat.rs"]
mod wat_components;

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Statement, Value as DbValue};
use serde_json::{Value, json};

use carnet_cli::Target;
use carnet_cli::node;
use carnet_tests::http::Http;
use carnet_tests::{Backend, Sandbox};

const WAIT: Duration = Duration::from_secs(30);

fn days_ago(days: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::days(days)
}

/// Runs `UPDATE` (or any statement) with `?` placeholders on one target's database.
async fn sql(sb: &Sandbox, target: Target, statement: &str, values: Vec<DbValue>) -> u64 {
    let db = node::open_database(&sb.config, target, false).await.unwrap();
    let backend = db.backend();
    let mut text = statement.to_string();
    if backend == sea_orm::DbBackend::Postgres {
        let mut n = 0;
        text = statement
            .chars()
            .map(|c| {
                if c == '?' {
                    n += 1;
                    format!("${n}")
                } else {
                    c.to_string()
                }
            })
            .collect();
    }
    let res = db.write.execute_raw(Statement::from_sql_and_values(backend, text, values)).await.unwrap();
    db.close().await;
    res.rows_affected()
}

async fn count(sb: &Sandbox, target: Target, table: &str, column: &str, id: &str) -> i64 {
    let db = node::open_database(&sb.config, target, false).await.unwrap();
    let backend = db.backend();
    let placeholder = if backend == sea_orm::DbBackend::Postgres { "$1" } else { "?" };
    let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = {placeholder}");
    let value = DbValue::Uuid(Some(id.parse().unwrap()));
    let row = db.read.query_one_raw(Statement::from_sql_and_values(backend, sql, [value])).await.unwrap().unwrap();
    let n = row.try_get::<i64>("", "n").unwrap();
    db.close().await;
    n
}

fn at(t: DateTime<Utc>) -> DbValue {
    DbValue::ChronoDateTimeUtc(Some(t))
}

fn uuid(id: &str) -> DbValue {
    DbValue::Uuid(Some(id.parse().unwrap()))
}

async fn backdate_contact(sb: &Sandbox, id: &str, days: i64) {
    let n = sql(
        sb,
        Target::Contacts,
        "UPDATE contacts SET last_activity_at = ? WHERE id = ?",
        vec![at(days_ago(days)), uuid(id)],
    )
    .await;
    assert_eq!(n, 1);
}

async fn contact(http: &Http, key: &str, email: &str) -> String {
    let body = json!({"email": email, "first_name": "Rhea", "source": {"channel": "api", "detail": "retention-test"}});
    let a = http.json("POST", "/v1/contacts", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    a.json["id"].as_str().unwrap().to_string()
}

async fn wait_for(http: &Http, key: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = http.json("GET", path, Some(key), None).await;
        if done(&a.json) {
            return a.json;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting on {path}: {}", a.json);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the contact's last activity reached `t` (activity from other services arrives
/// over the bus): only then can a test move it back without the event moving it forward again.
async fn settled(http: &Http, key: &str, id: &str, t: DateTime<Utc>) {
    wait_for(http, key, &format!("/v1/contacts/{id}"), |c| {
        c["last_activity_at"].as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok()).is_some_and(|a| a >= t)
    })
    .await;
}

async fn grant(http: &Http, key: &str, id: &str, purpose: &str, action: &str) -> DateTime<Utc> {
    let mut body = json!({"contact_id": id, "purpose": purpose, "action": action, "source": "api"});
    if purpose == "notices" {
        body["evidence"] = json!({"justification": "service notices required by law"});
    }
    let a = http.json("POST", "/v1/consents", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    a.json["at"].as_str().unwrap().parse().unwrap()
}

async fn setup(sb: &Sandbox) -> (Http, String) {
    let http = sb.http();
    let (_, key) = sb.tenant("Retention").await;
    for (purpose, basis) in [("news", "consent"), ("notices", "legal_obligation")] {
        let body = json!({"key": purpose, "description": purpose, "lawful_basis": basis, "notice": "Mail from us."});
        assert_eq!(http.json("POST", "/v1/purposes", Some(&key), Some(body)).await.status, 201);
    }
    (http, key)
}

async fn put_retention(http: &Http, key: &str, body: Value) {
    let a = http.json("PUT", "/v1/retention", Some(key), Some(body)).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
}

async fn run(http: &Http, key: &str, dry_run: bool) -> Vec<Value> {
    let a = http.json("POST", &format!("/v1/retention/run?dry_run={dry_run}"), Some(key), None).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    assert_eq!(a.json["dry_run"], dry_run);
    a.json["purges"].as_array().unwrap().clone()
}

fn purge<'a>(purges: &'a [Value], record_type: &str) -> &'a Value {
    purges.iter().find(|p| p["record_type"] == record_type).unwrap_or_else(|| panic!("no {record_type} in {purges:?}"))
}

/// `(purged, warned, skipped)` of each record type, in a fixed order.
fn counts(purges: &[Value]) -> Vec<(String, u64, u64, u64)> {
    let mut out: Vec<_> = purges
        .iter()
        .map(|p| {
            let n = |k: &str| p[k].as_u64().unwrap();
            (p["record_type"].as_str().unwrap().to_string(), n("purged"), n("warned"), n("skipped"))
        })
        .collect();
    out.sort();
    out
}

async fn policies_delete_exactly_what_they_say(backend: Backend) {
    let sb = Sandbox::start(backend).await;
    let (http, key) = setup(&sb).await;
    let echo = wat_components::component(wat_components::ECHO);
    let manifest =
        "name = \"echo\"\nversion = \"1.0.0\"\napi_version = \"0.1.0\"\nreads = [\"email\"]\nwrites = [\"email\"]\n";
    let body = json!({"manifest": manifest, "component": base64::engine::general_purpose::STANDARD.encode(echo),
        "enabled": true});
    assert_eq!(http.json("POST", "/v1/plugins", Some(&key), Some(body)).await.status, 201);

    let stale = contact(&http, &key, "stale@example.org").await;
    let fresh = contact(&http, &key, "fresh@example.org").await;
    let held = contact(&http, &key, "held@example.org").await;
    let restricted = contact(&http, &key, "restricted@example.org").await;
    let hold = json!({"contact_id": held, "reason": "pending litigation"});
    assert_eq!(http.json("POST", "/v1/legal-holds", Some(&key), Some(hold)).await.status, 201);
    let flag = json!({"active": true, "reason": "contests accuracy"});
    let path = format!("/v1/contacts/{restricted}/restriction");
    assert_eq!(http.json("PUT", &path, Some(&key), Some(flag)).await.status, 200);

    // The fresh contact's records: two calls (100 and 10 days old), two mails, two enrichment
    // runs and a closed rectification request.
    grant(&http, &key, &fresh, "news", "grant").await;
    let mut calls = Vec::new();
    for started in [days_ago(100), days_ago(10)] {
        let call = json!({"contact_id": fresh, "direction": "outbound", "started_at": started.to_rfc3339(),
            "duration_seconds": 60, "outcome": "connected"});
        let a = http.json("POST", "/v1/calls", Some(&key), Some(call)).await;
        assert_eq!(a.status, 201, "{:?}", a.json);
        calls.push(a.json["id"].as_str().unwrap().to_string());
    }
    let mut messages = Vec::new();
    for _ in 0..2 {
        let mail = json!({"contact_id": fresh, "purpose": "news", "subject": "Hello", "body": "News."});
        let a = http.json("POST", "/v1/messages", Some(&key), Some(mail)).await;
        assert_eq!(a.status, 202, "{:?}", a.json);
        let id = a.json["id"].as_str().unwrap().to_string();
        wait_for(&http, &key, &format!("/v1/messages/{id}"), |m| m["status"] == "sent").await;
        messages.push(id);
    }
    let mut runs = Vec::new();
    for _ in 0..2 {
        let a = http.json("POST", &format!("/v1/contacts/{fresh}/enrich"), Some(&key), None).await;
        assert_eq!(a.status, 200, "{:?}", a.json);
        runs.push(a.json["runs"][0]["id"].as_str().unwrap().to_string());
    }
    let rect = json!({"kind": "rectification", "contact_id": fresh, "changes": {"first_name": "Rhona"}});
    let a = http.json("POST", "/v1/dsar", Some(&key), Some(rect)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    let rectification = a.json["id"].as_str().unwrap().to_string();
    let open = json!({"kind": "access", "contact_id": fresh});
    let a = http.json("POST", "/v1/dsar", Some(&key), Some(open)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    let access = a.json["id"].as_str().unwrap().to_string();
    wait_for(&http, &key, &format!("/v1/dsar/{access}"), |r| r["status"] == "completed").await;

    // Ages: the stale, held and restricted contacts 40 days without activity; the first mail
    // sent 70 days ago; the first run 45 days ago; the rectification closed 45 days ago (the
    // access request closed now).
    settled(&http, &key, &fresh, Utc::now() - chrono::Duration::seconds(5)).await;
    for id in [&stale, &held, &restricted] {
        backdate_contact(&sb, id, 40).await;
    }
    let old = vec![at(days_ago(70)), at(days_ago(70)), uuid(&messages[0])];
    assert_eq!(sql(&sb, Target::Comms, "UPDATE deliveries SET sent_at = ?, created_at = ? WHERE id = ?", old).await, 1);
    let old = vec![at(days_ago(45)), uuid(&runs[0])];
    assert_eq!(sql(&sb, Target::Enrichment, "UPDATE enrichment_runs SET at = ? WHERE id = ?", old).await, 1);
    let old = vec![at(days_ago(45)), uuid(&rectification)];
    assert_eq!(sql(&sb, Target::Dsar, "UPDATE dsar_requests SET completed_at = ? WHERE id = ?", old).await, 1);

    put_retention(
        &http,
        &key,
        json!({"policies": [
            {"record_type": "contacts", "days": 30},
            {"record_type": "calls", "days": 90},
            {"record_type": "messages", "days": 60},
            {"record_type": "enrichment_runs", "days": 30},
            {"record_type": "dsar_artefacts", "days": 30}]}),
    )
    .await;

    // A dry run counts and changes nothing.
    let expected = vec![
        ("calls".to_string(), 1, 0, 0),
        ("contacts".to_string(), 1, 0, 1),
        ("dsar_artefacts".to_string(), 1, 0, 0),
        ("enrichment_runs".to_string(), 1, 0, 0),
        ("messages".to_string(), 1, 0, 0),
    ];
    assert_eq!(counts(&run(&http, &key, true).await), expected);
    assert_eq!(count(&sb, Target::Comms, "calls", "id", &calls[0]).await, 1);
    assert_eq!(count(&sb, Target::Contacts, "contacts", "id", &stale).await, 1);
    let listed = http.json("GET", "/v1/retention/purges", Some(&key), None).await;
    assert_eq!(listed.json["purges"], json!([]), "a dry run records nothing");

    // The run: exactly the old records go; one erasure request for the stale contact.
    let purges = run(&http, &key, false).await;
    assert_eq!(counts(&purges), expected);
    let contacts = purge(&purges, "contacts");
    assert_eq!(contacts["trigger"], "manual");
    assert_eq!(contacts["days"], 30);
    let request = contacts["request_ids"][0].as_str().unwrap().to_string();
    let done = wait_for(&http, &key, &format!("/v1/dsar/{request}"), |r| r["status"] == "completed").await;
    assert_eq!(done["contact_id"], stale);
    assert!(done["verification"].as_str().unwrap().starts_with("retention policy"), "{done}");
    assert_eq!(count(&sb, Target::Contacts, "contacts", "id", &stale).await, 0);
    for id in [&fresh, &held, &restricted] {
        assert_eq!(count(&sb, Target::Contacts, "contacts", "id", id).await, 1, "kept: {id}");
    }
    assert_eq!(count(&sb, Target::Comms, "calls", "id", &calls[0]).await, 0);
    assert_eq!(count(&sb, Target::Comms, "calls", "id", &calls[1]).await, 1);
    assert_eq!(count(&sb, Target::Comms, "deliveries", "id", &messages[0]).await, 0);
    assert_eq!(count(&sb, Target::Comms, "deliveries", "id", &messages[1]).await, 1);
    assert_eq!(count(&sb, Target::Enrichment, "enrichment_runs", "id", &runs[0]).await, 0);
    assert_eq!(count(&sb, Target::Enrichment, "enrichment_runs", "id", &runs[1]).await, 1);
    assert_eq!(count(&sb, Target::Dsar, "dsar_requests", "id", &rectification).await, 0);
    assert_eq!(count(&sb, Target::Dsar, "dsar_requests", "id", &access).await, 1);

    // Every purge is recorded, and audited as `purge` by the caller.
    let listed = http.json("GET", "/v1/retention/purges", Some(&key), None).await;
    let recorded = listed.json["purges"].as_array().unwrap();
    assert_eq!(counts(recorded), expected);
    assert!(recorded.iter().all(|p| p["actor"].as_str().unwrap().starts_with("key:")), "{recorded:?}");
    let only_calls = http.json("GET", "/v1/retention/purges?record_type=calls", Some(&key), None).await;
    assert_eq!(only_calls.json["purges"].as_array().unwrap().len(), 1);
    let trail = wait_for(&http, &key, "/v1/audit?action=purge", |t| t["entries"].as_array().unwrap().len() == 5).await;
    let ids: Vec<&str> = recorded.iter().map(|p| p["id"].as_str().unwrap()).collect();
    for e in trail["entries"].as_array().unwrap() {
        assert!(ids.contains(&e["record_id"].as_str().unwrap()), "{e}");
    }

    // Run again: nothing left to purge; the held contact is still kept.
    let again = counts(&run(&http, &key, false).await);
    assert!(
        again.iter().all(|(t, purged, _, skipped)| *purged == 0 && *skipped == u64::from(t == "contacts")),
        "{again:?}"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_retention_deletes_exactly_what_its_policy_says_and_records_it_sqlite() {
    policies_delete_exactly_what_they_say(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_retention_deletes_exactly_what_its_policy_says_and_records_it_postgres() {
    let Some(server) = carnet_tests::postgres::server_url() else { return };
    policies_delete_exactly_what_they_say(Backend::Postgres(server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_inactive_contact_is_warned_before_erasure_and_activity_starts_the_count_again() {
    let sb = Sandbox::monolith().await;
    let (http, key) = setup(&sb).await;
    let quiet = contact(&http, &key, "quiet@example.org").await;
    let returning = contact(&http, &key, "returning@example.org").await;
    let mut granted = Vec::new();
    for id in [&quiet, &returning] {
        granted.push(grant(&http, &key, id, "notices", "grant").await);
    }
    for (id, t) in [&quiet, &returning].into_iter().zip(granted) {
        settled(&http, &key, id, t).await;
        backdate_contact(&sb, id, 25).await;
    }
    put_retention(
        &http,
        &key,
        json!({"policies": [{"record_type": "contacts", "days": 30, "warn_days": 7}],
            "warning_purpose": "notices", "warning_subject": "Deleting your data on {deletion_date}"}),
    )
    .await;

    // 25 days quiet, 30 allowed, 7 days' warning: both are warned now, no one is erased.
    let first = run(&http, &key, false).await;
    assert_eq!(
        (purge(&first, "contacts")["warned"].as_u64(), purge(&first, "contacts")["purged"].as_u64()),
        (Some(2), Some(0))
    );
    for id in [&quiet, &returning] {
        let is_warning = |e: &Value| e["kind"] == "mail" && e["purpose"] == "notices";
        let timeline = wait_for(&http, &key, &format!("/v1/contacts/{id}/timeline"), |t| {
            t["entries"].as_array().is_some_and(|entries| entries.iter().any(is_warning))
        })
        .await;
        let entry = timeline["entries"].as_array().unwrap().iter().find(|e| is_warning(e)).unwrap().clone();
        let message =
            http.json("GET", &format!("/v1/messages/{}", entry["ref_id"].as_str().unwrap()), Some(&key), None).await;
        assert!(
            message.json["subject"].as_str().unwrap().starts_with("Deleting your data on 20"),
            "{:?}",
            message.json
        );
    }
    // Warned once: a second run neither warns nor erases.
    let second = run(&http, &key, false).await;
    assert_eq!(
        (purge(&second, "contacts")["warned"].as_u64(), purge(&second, "contacts")["purged"].as_u64()),
        (Some(0), Some(0))
    );

    // A week on: the quiet contact is 40 days inactive and was warned 8 days ago; the other one
    // called in since (activity after the warning).
    backdate_contact(&sb, &quiet, 40).await;
    backdate_contact(&sb, &returning, 40).await;
    let eight = vec![at(days_ago(8))];
    assert_eq!(sql(&sb, Target::Dsar, "UPDATE retention_warnings SET warned_at = ?", eight).await, 2);
    let call = json!({"contact_id": returning, "direction": "inbound", "started_at": Utc::now().to_rfc3339(),
        "duration_seconds": 30, "outcome": "connected"});
    assert_eq!(http.json("POST", "/v1/calls", Some(&key), Some(call)).await.status, 201);
    settled(&http, &key, &returning, Utc::now() - chrono::Duration::seconds(5)).await;

    let third = run(&http, &key, false).await;
    let contacts = purge(&third, "contacts");
    assert_eq!((contacts["purged"].as_u64(), contacts["warned"].as_u64()), (Some(1), Some(0)), "{contacts}");
    let request = contacts["request_ids"][0].as_str().unwrap();
    let done = wait_for(&http, &key, &format!("/v1/dsar/{request}"), |r| r["status"] == "completed").await;
    assert_eq!(done["contact_id"], quiet);
    assert_eq!(count(&sb, Target::Contacts, "contacts", "id", &returning).await, 1);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_withdrawal_of_the_only_basis_erases_when_the_tenant_chose_so() {
    let sb = Sandbox::monolith().await;
    let (http, key) = setup(&sb).await;
    let bad =
        json!({"erase_on_withdrawal": true, "policies": [{"record_type": "contacts", "days": 30, "warn_days": 3}]});
    let a = http.json("PUT", "/v1/retention", Some(&key), Some(bad)).await;
    assert_eq!((a.status, a.code(), a.field()), (400, "invalid_argument", "retention.warning_purpose"), "{:?}", a.json);
    let bad = json!({"warning_purpose": "nope", "policies": [{"record_type": "contacts", "days": 30, "warn_days": 3}]});
    let a = http.json("PUT", "/v1/retention", Some(&key), Some(bad)).await;
    assert_eq!((a.status, a.field()), (400, "retention.warning_purpose"), "{:?}", a.json);
    assert_eq!(http.json("GET", "/v1/retention", Some(&key), None).await.json["policies"], json!([]), "nothing stored");

    // Switched off: a withdrawal erases no one.
    let before = contact(&http, &key, "before@example.org").await;
    grant(&http, &key, &before, "news", "grant").await;
    grant(&http, &key, &before, "news", "withdraw").await;

    put_retention(&http, &key, json!({"erase_on_withdrawal": true})).await;
    // Consent only, withdrawn everywhere: erased.
    let only = contact(&http, &key, "only@example.org").await;
    grant(&http, &key, &only, "news", "grant").await;
    grant(&http, &key, &only, "news", "withdraw").await;
    // Another basis remains (a legal obligation): kept.
    let other = contact(&http, &key, "other@example.org").await;
    grant(&http, &key, &other, "news", "grant").await;
    grant(&http, &key, &other, "notices", "grant").await;
    grant(&http, &key, &other, "news", "withdraw").await;

    let listed = wait_for(&http, &key, "/v1/retention/purges?record_type=contacts", |p| {
        p["purges"].as_array().is_some_and(|l| !l.is_empty())
    })
    .await;
    let purges = listed["purges"].as_array().unwrap();
    assert_eq!(purges.len(), 1, "{purges:?}");
    assert_eq!(purges[0]["trigger"], "consent_withdrawn");
    let request = purges[0]["request_ids"][0].as_str().unwrap();
    let done = wait_for(&http, &key, &format!("/v1/dsar/{request}"), |r| r["status"] == "completed").await;
    assert_eq!(done["contact_id"], only);
    // The other withdrawals were handled (the bus delivers in order per subject stream) and
    // erased no one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        http.json("GET", "/v1/retention/purges", Some(&key), None).await.json["purges"].as_array().unwrap().len(),
        1
    );
    for id in [&before, &other] {
        assert_eq!(count(&sb, Target::Contacts, "contacts", "id", id).await, 1, "kept: {id}");
    }
    assert_eq!(count(&sb, Target::Contacts, "contacts", "id", &only).await, 0);
    sb.stop().await;
}
