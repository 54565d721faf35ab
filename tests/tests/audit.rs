//! The audit trail end to end (docs/audit.md), on SQLite as `carnet up` runs and on PostgreSQL
//! as `carnet serve` runs: a view, an edit, an export and an erasure of one person show who did
//! them; the trail holds no personal data; a row changed in the DSAR database breaks the chain
//! check at that row; the export re-verifies offline from its JSON lines alone; an event
//! delivered twice is stored once; two replicas appending at once never fork the chain; and
//! consent, enrichment, the gateway and the DSAR service audit their own changes.

#[path = "../../plugins/host/tests/support/wat.rs"]
mod wat_components;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use prost::Message as _;
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value as DbValue};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use carnet_cli::{Target, node};
use carnet_dsar::audit_store::{Appended, NewEntry};
use carnet_gateway::roles::Role;
use carnet_tests::Sandbox;
use carnet_tests::http::Http;

const WAIT: Duration = Duration::from_secs(30);

/// The principal the gateway signs for an API key (`carnet_<id>_<secret>` → `key:<id>`).
fn principal(key: &str) -> String {
    format!("key:{}", key.split('_').nth(1).expect("a carnet key"))
}

/// Every entry matching `filters` (a query string), in chain order, over all pages.
async fn trail(http: &Http, key: &str, filters: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut path = format!("/v1/audit?order=seq&limit=50&{filters}");
        if !cursor.is_empty() {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let a = http.json("GET", &path, Some(key), None).await;
        assert_eq!(a.status, 200, "{path}: {:?}", a.json);
        entries.extend(a.json["entries"].as_array().unwrap().iter().cloned());
        match a.json["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return entries,
        }
    }
}

fn is(entry: &Value, (action, record_type, actor): (&str, &str, &str)) -> bool {
    entry["action"] == action && entry["record_type"] == record_type && entry["actor"] == actor
}

/// Waits until the trail under `filters` holds an entry for each (action, record type, actor).
async fn wait_for(http: &Http, key: &str, filters: &str, wanted: &[(&str, &str, &str)]) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let entries = trail(http, key, filters).await;
        let missing: Vec<_> = wanted.iter().filter(|w| !entries.iter().any(|e| is(e, **w))).collect();
        if missing.is_empty() {
            return entries;
        }
        assert!(tokio::time::Instant::now() < deadline, "missing {missing:?} in the trail: {entries:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find<'a>(entries: &'a [Value], wanted: (&str, &str, &str)) -> &'a Value {
    entries.iter().find(|e| is(e, wanted)).unwrap_or_else(|| panic!("no {wanted:?}"))
}

/// The tenant's export (or a range of it) as parsed JSON lines.
async fn export(http: &Http, key: &str, query: &str) -> (Vec<Value>, String) {
    let a = http.raw("GET", &format!("/v1/audit/export{query}"), Some(key), None, vec![]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.headers["content-type"], "application/x-ndjson");
    let text = String::from_utf8(a.body.to_vec()).unwrap();
    let lines = text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    (lines, text)
}

/// The hash of one exported line, computed here from the documented encoding (docs/audit.md),
/// independently of the service's code.
fn offline_hash(line: &Value) -> String {
    fn put(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let text = |k: &str| line[k].as_str().unwrap_or_else(|| panic!("{k} is text")).to_string();
    let mut bytes = Vec::new();
    for value in [
        "carnet-audit-v1".to_string(),
        text("prev_hash"),
        text("tenant_id"),
        line["seq"].as_u64().unwrap().to_string(),
        text("event_id"),
        text("occurred_at"),
        text("recorded_at"),
        text("service"),
        text("actor"),
        text("action"),
        text("record_type"),
        text("record_id"),
        text("subject_id"),
        text("api"),
        text("request_id"),
    ] {
        put(&mut bytes, &value);
    }
    let fields = line["fields"].as_array().unwrap();
    bytes.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    for f in fields {
        put(&mut bytes, f.as_str().unwrap());
    }
    hex::encode(Sha256::digest(&bytes))
}

/// Re-verifies exported lines offline: a whole chain from seq 1 after 64 zeros, or a range from
/// its first line. Returns the head (seq, hash), or the first seq that does not hold.
fn offline_check(lines: &[Value], whole: bool) -> Result<(u64, String), u64> {
    let mut expected = whole.then(|| (1, "0".repeat(64)));
    for line in lines {
        let seq = line["seq"].as_u64().unwrap();
        if let Some((want_seq, want_prev)) = &expected {
            if seq != *want_seq {
                return Err(*want_seq);
            }
            if line["prev_hash"] != want_prev.as_str() {
                return Err(seq);
            }
        }
        if offline_hash(line) != line["hash"].as_str().unwrap() {
            return Err(seq);
        }
        expected = Some((seq + 1, line["hash"].as_str().unwrap().to_string()));
    }
    Ok(expected.map(|(next, hash)| (next - 1, hash)).unwrap_or_default())
}

/// Runs SQL (`$1`, `$2`… placeholders) on a target's database; returns the rows.
async fn sql(sb: &Sandbox, target: Target, text: &str, values: Vec<DbValue>) -> Vec<sea_orm::QueryResult> {
    let db = node::open_database(&sb.config, target, false).await.unwrap();
    let backend = db.backend();
    let mut text = text.to_string();
    if backend == DbBackend::Sqlite {
        for n in (1..=values.len()).rev() {
            text = text.replace(&format!("${n}"), &format!("?{n}"));
        }
    }
    let rows = db.write.query_all_raw(Statement::from_sql_and_values(backend, text, values)).await.unwrap();
    db.close().await;
    rows
}

/// Waits until DSAR request `rid` is completed.
async fn wait_completed(http: &Http, key: &str, rid: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = http.json("GET", &format!("/v1/dsar/{rid}"), Some(key), None).await.json;
        if r["status"] == "completed" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "request {rid} did not complete: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn verify(http: &Http, key: &str) -> Value {
    let a = http.json("GET", "/v1/audit/verify", Some(key), None).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    a.json
}

async fn view_edit_export_and_erasure_show_who_did_them(sb: &Sandbox) {
    let http = sb.http();
    let (tenant, owner) = sb.tenant("Audit").await;
    let sales = sb.key(tenant, Role::Sales).await;
    let officer = sb.key(tenant, Role::PrivacyOfficer).await;
    let (sales_p, owner_p, officer_p) = (principal(&sales), principal(&owner), principal(&officer));

    let person = json!({"email": "zebedee.quackenbush@example.org", "first_name": "Zebedee",
        "last_name": "Quackenbush", "source": {"channel": "api", "detail": "audit-test"}});
    let created = http.json("POST", "/v1/contacts", Some(&sales), Some(person)).await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    let id = created.json["id"].as_str().unwrap().to_string();
    // A sales key views and edits; it cannot export.
    assert_eq!(http.json("GET", &format!("/v1/contacts/{id}"), Some(&sales), None).await.status, 200);
    let patch = json!({"last_name": "Quackenbush-Smythe", "reason": "typo"});
    assert_eq!(http.json("PATCH", &format!("/v1/contacts/{id}"), Some(&sales), Some(patch)).await.status, 200);
    // The owner exports; the privacy officer erases through a request.
    assert_eq!(http.raw("GET", &format!("/v1/contacts/{id}/export"), Some(&owner), None, vec![]).await.status, 200);
    let erasure = json!({"kind": "erasure", "contact_id": id});
    let asked = http.json("POST", "/v1/dsar", Some(&officer), Some(erasure)).await;
    assert_eq!(asked.status, 201, "{:?}", asked.json);
    let rid = asked.json["id"].as_str().unwrap().to_string();
    let request_id = asked.headers["x-request-id"].to_str().unwrap().to_string();
    wait_completed(&http, &officer, &rid).await;

    let entries = wait_for(
        &http,
        &owner,
        &format!("subject_id={id}"),
        &[
            ("view", "contact", &sales_p),
            ("update", "contact", &sales_p),
            ("export", "contact", &owner_p),
            ("erase", "contact", &officer_p),
            ("create", "dsar_request", &officer_p),
            ("complete", "dsar_request", "service:dsar"),
        ],
    )
    .await;
    let update = find(&entries, ("update", "contact", &sales_p));
    assert!(update["fields"].as_array().unwrap().contains(&json!("last_name")), "{update}");
    assert_eq!(update["record_id"], id.as_str());
    let erase = find(&entries, ("erase", "contact", &officer_p));
    assert_eq!(erase["api"], "carnet.dsar.v1.DsarService/CreateRequest");
    assert_eq!(erase["request_id"], request_id.as_str(), "correlates with the HTTP request");
    assert_eq!(erase["service"], "dsar");
    assert_eq!(find(&entries, ("create", "dsar_request", &officer_p))["record_id"], rid.as_str());
    assert!(entries.iter().all(|e| e["subject_id"] == id.as_str()));
    // Newest first by default, and filters combine.
    let newest = http.json("GET", &format!("/v1/audit?subject_id={id}&limit=1"), Some(&owner), None).await;
    assert_eq!(newest.json["entries"][0]["seq"], entries.iter().map(|e| e["seq"].as_u64().unwrap()).max().unwrap());
    assert!(newest.json["next_cursor"].is_string());
    let by_sales = trail(&http, &owner, &format!("subject_id={id}&actor={sales_p}&action=view")).await;
    assert!(!by_sales.is_empty() && by_sales.iter().all(|e| is(e, ("view", "contact", &sales_p))));

    // Ids, names and keys only: neither the name nor the address appears anywhere in the trail.
    let (_, text) = export(&http, &owner, "").await;
    let answers = serde_json::to_string(&entries).unwrap();
    for haystack in [text.to_lowercase(), answers.to_lowercase()] {
        for needle in ["zebedee", "quackenbush", "smythe", "example.org"] {
            assert!(!haystack.contains(needle), "personal data `{needle}` in the audit trail");
        }
    }
    // Reading the trail needs `audit:read`: owner, admin and privacy officer have it.
    let refused = http.json("GET", "/v1/audit", Some(&sales), None).await;
    assert_eq!((refused.status, refused.code()), (403, "permission_denied"));
    assert!(refused.json["detail"].as_str().unwrap().contains("audit:read"));
    assert_eq!(http.json("GET", "/v1/audit/verify", Some(&officer), None).await.status, 200);
    let bad = http.json("GET", "/v1/audit?order=oldest", Some(&owner), None).await;
    assert_eq!((bad.status, bad.field()), (400, "order"));
    assert_eq!(verify(&http, &owner).await["ok"], true);
}
carnet_tests::both_modes!(view_edit_export_and_erasure_show_who_did_them);

async fn a_changed_row_breaks_the_chain_and_the_export_reverifies_offline(sb: &Sandbox) {
    let http = sb.http();
    let (tenant, owner) = sb.tenant("Chain").await;
    let owner_p = principal(&owner);
    for n in 1..=3 {
        let purpose = json!({"key": format!("p{n}"), "lawful_basis": "consent", "notice": "Text."});
        assert_eq!(http.json("POST", "/v1/purposes", Some(&owner), Some(purpose)).await.status, 201);
    }
    let notice = json!({"notice": "Another text."});
    assert_eq!(http.json("PUT", "/v1/purposes/p1/notice", Some(&owner), Some(notice)).await.status, 200);
    let settings = json!({"auto_enrichment": false});
    assert_eq!(http.json("PUT", "/v1/enrichment/settings", Some(&owner), Some(settings)).await.status, 200);
    let entries =
        wait_for(&http, &owner, "", &[("update", "purpose", &owner_p), ("update", "enrichment_settings", &owner_p)])
            .await;
    assert!(entries.len() >= 5, "{entries:#?}");

    // The export alone re-verifies: chain order, seq from 1, each hash from its line's values.
    let (lines, _) = export(&http, &owner, "").await;
    assert!(lines.len() >= 5);
    assert!(lines.iter().all(|l| l["tenant_id"] == tenant.to_string().as_str()));
    let (head_seq, head_hash) = offline_check(&lines, true).expect("the exported chain holds");
    assert_eq!(head_seq as usize, lines.len());
    let checked = verify(&http, &owner).await;
    assert_eq!(checked["ok"], true, "{checked}");
    // (Exporting is itself audited, so the head may have moved on by one.)
    assert!(checked["entries"].as_u64().unwrap() >= head_seq);
    wait_for(&http, &owner, "record_type=audit_trail", &[("export", "audit_trail", &owner_p)]).await;
    let again = export(&http, &owner, "").await.0;
    assert_eq!(again[head_seq as usize - 1]["hash"], head_hash.as_str(), "the chain only grows");

    // A time range is a contiguous piece of the chain that re-verifies from its first line.
    let since = lines[2]["recorded_at"].as_str().unwrap();
    let (range, _) = export(&http, &owner, &format!("?since={since}")).await;
    assert!(range[0]["seq"].as_u64().unwrap() <= 3 && range.last().unwrap()["seq"].as_u64().unwrap() >= head_seq);
    assert!(range.iter().all(|l| l["recorded_at"].as_str().unwrap() >= since));
    offline_check(&range, false).expect("the range holds");

    // Someone with access to the DSAR database changes who did entry 2: the check names it.
    let tenant_value = || DbValue::Uuid(Some(tenant));
    sql(
        sb,
        Target::Dsar,
        "UPDATE audit_log SET actor = 'key:someone-else' WHERE tenant_id = $1 AND seq = 2",
        vec![tenant_value()],
    )
    .await;
    let broken = verify(&http, &owner).await;
    assert_eq!((broken["ok"].as_bool(), broken["broken_seq"].as_u64()), (Some(false), Some(2)), "{broken}");
    assert_eq!(broken["reason"], "hash_mismatch");
    let (tampered, _) = export(&http, &owner, "").await;
    assert_eq!(offline_check(&tampered, true), Err(2), "the regulator sees it too");
    // Rewriting that entry's hash as well moves the break to the next entry.
    let forged = offline_hash(&tampered[1]);
    sql(
        sb,
        Target::Dsar,
        "UPDATE audit_log SET hash = $2 WHERE tenant_id = $1 AND seq = 2",
        vec![tenant_value(), DbValue::String(Some(forged))],
    )
    .await;
    let broken = verify(&http, &owner).await;
    assert_eq!((broken["broken_seq"].as_u64(), broken["reason"].as_str()), (Some(3), Some("prev_hash_mismatch")));
    // Removing an entry leaves a gap.
    sql(sb, Target::Dsar, "DELETE FROM audit_log WHERE tenant_id = $1 AND seq = 1", vec![tenant_value()]).await;
    let broken = verify(&http, &owner).await;
    assert_eq!((broken["broken_seq"].as_u64(), broken["reason"].as_str()), (Some(1), Some("missing")));
    // Other tenants' chains are their own and still hold.
    let (_, other) = sb.tenant("Other").await;
    assert_eq!(verify(&http, &other).await["ok"], true);
}
carnet_tests::both_modes!(a_changed_row_breaks_the_chain_and_the_export_reverifies_offline);

async fn the_same_event_delivered_twice_is_stored_once(sb: &Sandbox) {
    let http = sb.http();
    let (tenant, owner) = sb.tenant("Twice").await;
    let purpose = json!({"key": "news", "lawful_basis": "consent", "notice": "News."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&owner), Some(purpose)).await.status, 201);
    wait_for(&http, &owner, "record_type=purpose", &[("create", "purpose", &principal(&owner))]).await;
    let rows = sql(
        sb,
        Target::Consent,
        "SELECT id, payload FROM outbox WHERE tenant_id = $1 AND kind = 'audit.recorded'",
        vec![DbValue::Uuid(Some(tenant))],
    )
    .await;
    assert_eq!(rows.len(), 1);
    let event_id: Uuid = rows[0].try_get("", "id").unwrap();
    let payload: Vec<u8> = rows[0].try_get("", "payload").unwrap();
    let stored = |entries: &[Value]| entries.iter().filter(|e| e["event_id"] == event_id.to_string().as_str()).count();
    assert_eq!(stored(&trail(&http, &owner, "").await), 1);

    // The relay publishes it again (as after a crash between the publish and the mark)…
    let id_value = || DbValue::Uuid(Some(event_id));
    sql(sb, Target::Consent, "UPDATE outbox SET published_at = NULL WHERE id = $1", vec![id_value()]).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sent = sql(
            sb,
            Target::Consent,
            "SELECT id FROM outbox WHERE id = $1 AND published_at IS NOT NULL",
            vec![id_value()],
        )
        .await;
        if !sent.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay did not publish the event again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …and the bus redelivers it to the DSAR consumer (as JetStream does after a lost ack).
    let dsar = node::open_database(&sb.config, Target::Dsar, false).await.unwrap();
    let engine = carnet_dsar::Engine::new(
        carnet_dsar::DsarStore::new(dsar.clone()),
        carnet_dsar::Keys::new(vec![1; 32], vec![2; 32]),
        sb.config.dsar.clone(),
        BTreeMap::new(),
        sb.node.mesh_key.clone(),
    );
    let event = carnet_proto::events::v1::Event::decode(payload.as_slice()).unwrap();
    (carnet_dsar::consumer(engine).handler)(event).await.unwrap();
    dsar.close().await;

    let entries = trail(&http, &owner, "").await;
    assert_eq!(stored(&entries), 1, "stored once: {entries:#?}");
    // Besides it, only the gateway's own entries (the tenant and its first key).
    let consent: Vec<&Value> = entries.iter().filter(|e| e["service"] == "consent").collect();
    assert_eq!(consent.len(), 1, "{entries:#?}");
    assert_eq!(verify(&http, &owner).await["ok"], true);
}
carnet_tests::both_modes!(the_same_event_delivered_twice_is_stored_once);

/// Two DSAR replicas (two connection pools on one database) append the same 60 events at once,
/// each from four tasks: every event is stored once and the chain has no fork and no gap.
async fn concurrent_appends_never_fork_the_chain(sb: &Sandbox) {
    let tenant = Uuid::now_v7();
    let events: Vec<NewEntry> = (0..60)
        .map(|n| NewEntry {
            event_id: Uuid::now_v7(),
            occurred_at: chrono::Utc::now(),
            service: "contacts".into(),
            actor: format!("key:replica-test-{}", n % 3),
            action: "view".into(),
            record_type: "contact".into(),
            record_id: Uuid::now_v7().to_string(),
            api: "carnet.contacts.v1.ContactsService/GetContact".into(),
            ..NewEntry::default()
        })
        .collect();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let db = node::open_database(&sb.config, Target::Dsar, false).await.unwrap();
        replicas.push(carnet_dsar::DsarStore::new(db));
    }
    let mut tasks = Vec::new();
    for (r, store) in replicas.iter().enumerate() {
        for t in 0..4 {
            let store = store.clone();
            // Each replica walks the events in its own order, so both race for every one.
            let mine: Vec<NewEntry> = if r == 0 {
                events.iter().skip(t).step_by(4).cloned().collect()
            } else {
                events.iter().rev().skip(t).step_by(4).cloned().collect()
            };
            tasks.push(tokio::spawn(async move {
                let mut stored = 0;
                for e in mine {
                    if let Appended::Stored(_) = store.append_audit(tenant, &e).await.expect("append") {
                        stored += 1;
                    }
                }
                stored
            }));
        }
    }
    let stored: u64 = futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).sum();
    assert_eq!(stored, 60, "each event stored once over both replicas");
    let rows = sql(
        sb,
        Target::Dsar,
        "SELECT seq FROM audit_log WHERE tenant_id = $1 ORDER BY seq",
        vec![DbValue::Uuid(Some(tenant))],
    )
    .await;
    let seqs: Vec<i64> = rows.iter().map(|r| r.try_get("", "seq").unwrap()).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<i64>>(), "no fork, no gap");
    let checked = replicas[1].verify_audit(tenant).await.unwrap();
    assert_eq!((checked.checked, checked.broken_opt), (60, None));
    for store in replicas {
        store.db().clone().close().await;
    }
}
carnet_tests::both_modes!(concurrent_appends_never_fork_the_chain);

async fn consent_enrichment_gateway_and_dsar_audit_their_own_changes(sb: &Sandbox) {
    let http = sb.http();
    let (tenant, owner) = sb.tenant("Services").await;
    let owner_p = principal(&owner);
    let policy = json!({"fields": [
        {"key": "email", "type": "email", "category": "contact"},
        {"key": "first_name", "type": "string", "category": "identity"},
        {"key": "salary", "type": "number", "category": "financial"}]});
    let a = http.json("PUT", "/v1/field-policy", Some(&owner), Some(policy)).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    let created = http
        .json(
            "POST",
            "/v1/contacts",
            Some(&owner),
            Some(json!({"email": "ottoline.vandersnoot@example.org", "first_name": "Ottoline",
                "source": {"channel": "api", "detail": "audit-test"}})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    let id = created.json["id"].as_str().unwrap().to_string();

    // Consent: a purpose, a new notice, a form, a grant; the person withdraws through a link.
    let purpose = json!({"key": "news", "lawful_basis": "consent", "notice": "News."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&owner), Some(purpose)).await.status, 201);
    let notice = json!({"notice": "News, monthly."});
    assert_eq!(http.json("PUT", "/v1/purposes/news/notice", Some(&owner), Some(notice)).await.status, 200);
    let form = json!({"name": "Sign-up", "fields": ["email", "first_name"], "consents": ["news"]});
    let form = http.json("POST", "/v1/forms", Some(&owner), Some(form)).await;
    assert_eq!(form.status, 201, "{:?}", form.json);
    let grant = json!({"contact_id": id, "purpose": "news", "action": "grant", "source": "api"});
    let granted = http.json("POST", "/v1/consents", Some(&owner), Some(grant)).await;
    assert_eq!(granted.status, 201, "{:?}", granted.json);
    let comms = carnet_kit::Caller::new(tenant, "service:comms", [carnet_kit::Permission::CommsSend]);
    let links = sb
        .consent(&comms)
        .issue_links(carnet_proto::consent::v1::IssueLinksRequest {
            contact_id: id.clone(),
            purpose: "news".into(),
            withdraw_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let withdrawn = http
        .raw(
            "POST",
            &format!("/u/{}", links.withdraw_token),
            None,
            Some("application/x-www-form-urlencoded"),
            b"List-Unsubscribe=One-Click".to_vec(),
        )
        .await;
    assert_eq!(withdrawn.status, 200);

    // Enrichment: a plugin install, a switch change, and a run that writes a value.
    let manifest =
        "name = \"salary\"\nversion = \"1.0.0\"\napi_version = \"0.1.0\"\nreads = [\"email\"]\nwrites = [\"salary\"]\n";
    let component = wat_components::component(wat_components::WRITES_SALARY);
    let body = json!({"manifest": manifest, "enabled": true,
        "component": base64::engine::general_purpose::STANDARD.encode(component)});
    let installed = http.json("POST", "/v1/plugins", Some(&owner), Some(body)).await;
    assert_eq!(installed.status, 201, "{:?}", installed.json);
    let settings = json!({"profiling_allowed": false, "plugins": {"salary": true}});
    assert_eq!(http.json("PUT", "/v1/enrichment/settings", Some(&owner), Some(settings)).await.status, 200);
    let runs = http.json("POST", &format!("/v1/contacts/{id}/enrich"), Some(&owner), None).await;
    assert_eq!(runs.json["runs"][0]["outcome"], "written", "{:?}", runs.json);

    // The gateway: a key created and revoked.
    let key = http.json("POST", "/v1/api-keys", Some(&owner), Some(json!({"role": "read_only"}))).await;
    assert_eq!(key.status, 201, "{:?}", key.json);
    let key_id = key.json["id"].as_str().unwrap().to_string();
    assert_eq!(http.json("DELETE", &format!("/v1/api-keys/{key_id}"), Some(&owner), None).await.status, 200);

    // The DSAR service: a hold placed and lifted, an access request, its download.
    let hold = http.json("POST", "/v1/legal-holds", Some(&owner), Some(json!({"contact_id": id, "reason": "r"}))).await;
    assert_eq!(hold.status, 201);
    let lift = json!({"reason": "done"});
    let hid = hold.json["id"].as_str().unwrap();
    assert_eq!(http.json("POST", &format!("/v1/legal-holds/{hid}/lift"), Some(&owner), Some(lift)).await.status, 200);
    let access = http.json("POST", "/v1/dsar", Some(&owner), Some(json!({"kind": "access", "contact_id": id}))).await;
    let rid = access.json["id"].as_str().unwrap().to_string();
    wait_completed(&http, &owner, &rid).await;
    assert_eq!(http.raw("GET", &format!("/v1/dsar/{rid}/export"), Some(&owner), None, vec![]).await.status, 200);

    let entries = wait_for(
        &http,
        &owner,
        "",
        &[
            ("create", "purpose", &owner_p),
            ("update", "purpose", &owner_p),
            ("create", "form", &owner_p),
            ("grant", "consent", &owner_p),
            ("withdraw", "consent", "public:link"),
            ("install", "plugin", &owner_p),
            ("update", "enrichment_settings", &owner_p),
            ("enrich", "contact", &owner_p),
            ("create", "api_key", &owner_p),
            ("revoke", "api_key", &owner_p),
            ("place", "legal_hold", &owner_p),
            ("lift", "legal_hold", &owner_p),
            ("create", "dsar_request", &owner_p),
            ("complete", "dsar_request", "service:dsar"),
            ("export", "dsar_request", &owner_p),
        ],
    )
    .await;
    let withdrawal = find(&entries, ("withdraw", "consent", "public:link"));
    assert_eq!(
        (withdrawal["subject_id"].as_str(), withdrawal["service"].as_str()),
        (Some(id.as_str()), Some("consent"))
    );
    assert_eq!(withdrawal["api"], "carnet.consent.v1.ConsentService/RedeemLink");
    assert_eq!(withdrawal["request_id"], withdrawn.headers["x-request-id"].to_str().unwrap());
    let enrich = find(&entries, ("enrich", "contact", &owner_p));
    assert_eq!((enrich["subject_id"].as_str(), enrich["fields"].clone()), (Some(id.as_str()), json!(["salary"])));
    assert_eq!(enrich["api"], "carnet.enrichment.v1.EnrichmentService/EnrichContact");
    assert_eq!(find(&entries, ("install", "plugin", &owner_p))["record_id"], "salary@1.0.0");
    assert_eq!(find(&entries, ("create", "form", &owner_p))["fields"], json!(["email", "first_name"]));
    let settings = find(&entries, ("update", "enrichment_settings", &owner_p));
    assert_eq!(settings["fields"], json!(["profiling_allowed", "plugins.salary"]));
    let revoked = find(&entries, ("revoke", "api_key", &owner_p));
    assert_eq!((revoked["record_id"].as_str(), revoked["service"].as_str()), (Some(key_id.as_str()), Some("gateway")));
    assert_eq!(revoked["api"], "DELETE /v1/api-keys/{id}");
    // The tenant itself and its first key, made with the store as `carnet tenant create` does.
    assert!(entries.iter().any(|e| is(e, ("create", "tenant", "test")) && e["api"] == "cli"));
    let download = find(&entries, ("export", "dsar_request", &owner_p));
    assert_eq!(
        (download["record_id"].as_str(), download["subject_id"].as_str()),
        (Some(rid.as_str()), Some(id.as_str()))
    );

    let (lines, text) = export(&http, &owner, "").await;
    offline_check(&lines, true).expect("the chain holds");
    for needle in ["ottoline", "vandersnoot", "example.org"] {
        assert!(!text.to_lowercase().contains(needle), "personal data `{needle}` in the audit trail");
    }
}
carnet_tests::both_modes!(consent_enrichment_gateway_and_dsar_audit_their_own_changes);
