//! Bulk export of a tenant's contacts (issue 11, docs/export.md) through the gateway, on SQLite
//! (`carnet up`) and PostgreSQL (split mode): CSV and JSON lines byte for byte (custom fields,
//! quotes, commas and newlines, a formula neutralised), a column subset, restricted contacts
//! and erased people left out, the permission, bad arguments named, one audit entry per export
//! with the caller and the columns; and a streamed export of a few thousand contacts that holds
//! every id exactly once.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use serde_json::{Value, json};
use uuid::Uuid;

use carnet_gateway::roles::Role;
use carnet_proto::common::v1 as pb_common;
use carnet_proto::contacts::v1 as pb;
use carnet_tests::http::{Answer, Http};
use carnet_tests::{Backend, Sandbox};

const WAIT: Duration = Duration::from_secs(30);
const COLLECTED: &str = "2026-11-02T08:30:00Z";

/// The principal the gateway signs for an API key (`carnet_<id>_<secret>` → `key:<id>`).
fn principal(key: &str) -> String {
    format!("key:{}", key.split('_').nth(1).expect("a carnet key"))
}

/// A time as the export writes it.
fn t(v: &Value) -> String {
    let at: DateTime<Utc> = v.as_str().expect("a time").parse().unwrap();
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The sandbox reads the key store without a cache, so a key destroyed behind its back (a row
/// restored from a backup taken before its person's erasure) is gone at once.
async fn sandbox(backend: Backend) -> Sandbox {
    Sandbox::start_with(backend, &[("keys.cache_capacity", "0".to_string())]).await
}

async fn create(http: &Http, key: &str, body: Value) -> String {
    let a = http.json("POST", "/v1/contacts", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    a.json["id"].as_str().unwrap().to_string()
}

async fn export(http: &Http, key: &str, query: &str) -> Answer {
    http.json("GET", &format!("/v1/contacts/export?{query}"), Some(key), None).await
}

fn text(a: &Answer) -> String {
    String::from_utf8(a.body.to_vec()).expect("utf-8")
}

/// The audit entries of bulk exports, once `n` have arrived (the trail is written over the bus).
async fn export_entries(http: &Http, key: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = http.json("GET", "/v1/audit?action=export&record_type=contact_list&order=seq", Some(key), None).await;
        assert_eq!(a.status, 200, "{:?}", a.json);
        let entries = a.json["entries"].as_array().unwrap().clone();
        if entries.len() >= n {
            return entries;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {n} export entries: {entries:?}", entries.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exports_are_exact_restricted_and_erased_left_out_and_audited(backend: Backend) {
    let sb = sandbox(backend).await;
    let http = sb.http();
    let (tenant_id, owner) = sb.tenant("Export Inc").await;
    let policy = json!({"fields": [
        {"key": "email", "type": "email", "category": "contact"},
        {"key": "first_name", "type": "string", "category": "identity"},
        {"key": "last_name", "type": "string", "category": "identity"},
        {"key": "phone", "type": "phone", "category": "contact"},
        {"key": "company", "type": "string", "category": "professional"},
        {"key": "employees", "type": "number", "category": "professional"},
        {"key": "vip", "type": "boolean", "category": "professional"}]});
    assert_eq!(http.json("PUT", "/v1/field-policy", Some(&owner), Some(policy)).await.status, 200);

    let ada = create(
        &http,
        &owner,
        json!({"email": "Ada@Example.org", "first_name": "Ada \"The Countess\"", "last_name": "Lovelace, Byron",
            "phone": "+44 20 7946 0958", "fields": {"company": "Analytical\nEngines", "employees": 12, "vip": true},
            "source": {"channel": "web_form", "detail": "newsletter, 2026", "collected_at": COLLECTED}}),
    )
    .await;
    let bob = create(
        &http,
        &owner,
        json!({"email": "bob@example.org", "first_name": "Bob",
            "fields": {"company": "=HYPERLINK(\"http://evil.example\",\"x\")", "employees": -3.5, "vip": false},
            "source": {"channel": "api", "detail": "@crm-sync", "collected_at": COLLECTED}}),
    )
    .await;
    let restricted = create(
        &http,
        &owner,
        json!({"email": "rita@example.org", "first_name": "Rita",
            "source": {"channel": "api", "detail": "crm", "collected_at": COLLECTED}}),
    )
    .await;
    let flag = json!({"active": true, "reason": "accuracy contested"});
    let a = http.json("PUT", &format!("/v1/contacts/{restricted}/restriction"), Some(&owner), Some(flag)).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    let erased = create(
        &http,
        &owner,
        json!({"email": "ernst@example.org", "first_name": "Ernst",
            "source": {"channel": "api", "detail": "crm", "collected_at": COLLECTED}}),
    )
    .await;
    let eve = create(
        &http,
        &owner,
        json!({"email": "eve@example.org", "source": {"channel": "manual", "detail": "walk-in", "collected_at": COLLECTED}}),
    )
    .await;
    // Ernst's row as a restore from a backup taken before his erasure brings it back: his key is
    // destroyed, his values no longer open.
    let keys = sb.crypto_keys().await;
    assert!(keys.destroy(tenant_id, erased.parse().unwrap()).await.unwrap(), "the key existed");
    let listed = http.json("GET", "/v1/contacts?limit=50", Some(&owner), None).await;
    let ids: Vec<&str> =
        listed.json["contacts"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&erased.as_str()) && ids.contains(&restricted.as_str()), "both rows are stored: {ids:?}");

    // Times as stored, read back after every change.
    let mut times = std::collections::HashMap::new();
    for id in [&ada, &bob, &eve] {
        let c = http.json("GET", &format!("/v1/contacts/{id}"), Some(&owner), None).await.json;
        let row =
            [t(&c["source"]["collected_at"]), t(&c["created_at"]), t(&c["updated_at"]), t(&c["last_activity_at"])];
        times.insert(id.clone(), row.join(","));
    }
    let collected = "2026-11-02T08:30:00.000000Z";
    assert!(times[&ada].starts_with(collected), "{}", times[&ada]);

    // CSV: every column, RFC 4180, the formula neutralised, phones and negative numbers kept.
    let csv = export(&http, &owner, "format=csv").await;
    assert_eq!(csv.status, 200, "{:?}", csv.json);
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let disposition = csv.headers["content-disposition"].to_str().unwrap();
    let today = Utc::now().format("%Y%m%d");
    assert_eq!(disposition, format!("attachment; filename=\"contacts-{tenant_id}-{today}.csv\""));
    let csv_id = csv.headers["x-carnet-export-id"].to_str().unwrap().to_string();
    let header = "id,email,first_name,last_name,phone,company,employees,vip,source_channel,source_detail,\
                  source_collected_at,created_at,updated_at,last_activity_at,objected";
    let expected = format!(
        "{header}\r\n\
         {ada},ada@example.org,\"Ada \"\"The Countess\"\"\",\"Lovelace, Byron\",+442079460958,\"Analytical\nEngines\",12,true,web_form,\"newsletter, 2026\",{ada_t},false\r\n\
         {bob},bob@example.org,Bob,,,\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",-3.5,false,api,'@crm-sync,{bob_t},false\r\n\
         {eve},eve@example.org,,,,,,,manual,walk-in,{eve_t},false\r\n",
        ada_t = times[&ada],
        bob_t = times[&bob],
        eve_t = times[&eve],
    );
    assert_eq!(text(&csv), expected);

    // JSON lines: one object per contact, keys in column order, types kept, nothing neutralised.
    let jsonl = export(&http, &owner, "format=jsonl").await;
    assert_eq!(jsonl.status, 200, "{:?}", jsonl.json);
    assert_eq!(jsonl.headers["content-type"], "application/x-ndjson");
    assert!(jsonl.headers["content-disposition"].to_str().unwrap().ends_with(".jsonl\""));
    let jsonl_id = jsonl.headers["x-carnet-export-id"].to_str().unwrap().to_string();
    let body = text(&jsonl);
    let lines: Vec<&str> = body.split_terminator('\n').collect();
    assert_eq!(lines.len(), 3, "{body}");
    let tail = |id: &String| {
        let t: Vec<&str> = times[id].split(',').collect();
        format!(
            "\"source_collected_at\":\"{}\",\"created_at\":\"{}\",\"updated_at\":\"{}\",\"last_activity_at\":\"{}\",\"objected\":false}}",
            t[0], t[1], t[2], t[3]
        )
    };
    assert_eq!(
        lines[0],
        format!(
            "{{\"id\":\"{ada}\",\"email\":\"ada@example.org\",\"first_name\":\"Ada \\\"The Countess\\\"\",\
             \"last_name\":\"Lovelace, Byron\",\"phone\":\"+442079460958\",\"company\":\"Analytical\\nEngines\",\
             \"employees\":12.0,\"vip\":true,\"source_channel\":\"web_form\",\"source_detail\":\"newsletter, 2026\",{}",
            tail(&ada)
        )
    );
    assert_eq!(
        lines[1],
        format!(
            "{{\"id\":\"{bob}\",\"email\":\"bob@example.org\",\"first_name\":\"Bob\",\"last_name\":null,\"phone\":null,\
             \"company\":\"=HYPERLINK(\\\"http://evil.example\\\",\\\"x\\\")\",\"employees\":-3.5,\"vip\":false,\
             \"source_channel\":\"api\",\"source_detail\":\"@crm-sync\",{}",
            tail(&bob)
        )
    );
    let eve_line: Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!((eve_line["id"].as_str(), eve_line["company"].is_null()), (Some(eve.as_str()), true), "{eve_line}");

    // A subset of the columns, in the order asked.
    let subset = export(&http, &owner, "format=csv&fields=email,company,id").await;
    assert_eq!(subset.status, 200, "{:?}", subset.json);
    let subset_id = subset.headers["x-carnet-export-id"].to_str().unwrap().to_string();
    assert_eq!(
        text(&subset),
        format!(
            "email,company,id\r\nada@example.org,\"Analytical\nEngines\",{ada}\r\n\
             bob@example.org,\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",{bob}\r\neve@example.org,,{eve}\r\n"
        )
    );

    // Refusals: the permission, then bad arguments named (the route is not taken for `{id}`).
    for role in [Role::Sales, Role::ReadOnly] {
        let limited = sb.key(tenant_id, role).await;
        let refused = export(&http, &limited, "format=csv").await;
        assert_eq!((refused.status, refused.code()), (403, "permission_denied"), "{role:?}: {:?}", refused.json);
    }
    for (query, field) in [
        ("format=xml", "format"),
        ("", "format"),
        ("format=csv&fields=email,shoe_size", "fields[1]"),
        ("format=jsonl&fields=email,email", "fields[1]"),
        ("format=csv&colour=red", "colour"),
    ] {
        let bad = export(&http, &owner, query).await;
        assert_eq!((bad.status, bad.code(), bad.field()), (400, "invalid_argument", field), "{query}: {:?}", bad.json);
    }
    let bad = export(&http, &owner, "format=xml").await;
    assert!(!bad.json["detail"].as_str().unwrap().contains("xml"), "{:?}", bad.json);

    // One entry per export handed out, none for the refused ones: the caller, the columns.
    let entries = export_entries(&http, &owner, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries_again = export_entries(&http, &owner, 3).await;
    assert_eq!(entries_again.len(), 3, "{entries_again:?}");
    let all: Vec<String> = header.split(',').map(str::to_string).collect();
    for (entry, (id, fields)) in entries.iter().zip([
        (&csv_id, all.clone()),
        (&jsonl_id, all.clone()),
        (&subset_id, vec!["email".to_string(), "company".to_string(), "id".to_string()]),
    ]) {
        assert_eq!(entry["record_id"].as_str(), Some(id.as_str()), "{entry}");
        assert_eq!(entry["actor"].as_str(), Some(principal(&owner).as_str()), "{entry}");
        assert_eq!(entry["api"], "carnet.contacts.v1.ContactsService/ExportContacts", "{entry}");
        assert_eq!(entry["service"], "contacts");
        assert!(entry.get("subject_id").is_none(), "{entry}");
        assert_eq!(entry["fields"], json!(fields), "{entry}");
    }

    // The route is in the OpenAPI document.
    let doc = http.json("GET", "/openapi.json", None, None).await;
    assert!(doc.json["paths"]["/v1/contacts/export"]["get"].is_object());
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_export_is_exact_leaves_out_restricted_and_erased_and_is_audited_sqlite() {
    exports_are_exact_restricted_and_erased_left_out_and_audited(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_export_is_exact_leaves_out_restricted_and_erased_and_is_audited_postgres() {
    let Some(server) = carnet_tests::postgres::server_url() else { return };
    exports_are_exact_restricted_and_erased_left_out_and_audited(Backend::Postgres(server)).await;
}

/// Sends `GET path` and reads the body frame by frame; returns the status, the body and the
/// number of data frames it came in.
async fn stream(addr: std::net::SocketAddr, path: &str, key: &str) -> (u16, Vec<u8>, usize) {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.expect("http request");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let (mut bytes, mut frames) = (Vec::new(), 0);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("a whole body").into_data() {
            frames += 1;
            bytes.extend_from_slice(&data);
        }
    }
    (status, bytes, frames)
}

const MANY: usize = 3_000;

async fn a_large_export_streams_every_id_once(backend: Backend) {
    let sb = sandbox(backend).await;
    let (tenant_id, owner) = sb.tenant("Many Inc").await;
    let caller = carnet_kit::Caller::all_permissions(tenant_id, "key:test-seeder");
    let client = sb.contacts(&caller);
    // Many at once: the store commits concurrent creates together.
    let created: Vec<String> = futures::stream::iter(0..MANY)
        .map(|i| {
            let mut client = client.clone();
            async move {
                let req = pb::CreateContactRequest {
                    email: Some(format!("person{i}@many.example")),
                    first_name: Some(format!("Person {i}")),
                    source: Some(pb_common::Source {
                        channel: pb_common::SourceChannel::Import as i32,
                        detail: "seed.csv".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                client.create_contact(req).await.expect("created").into_inner().id
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let addr = sb.node.http_addr_opt.unwrap();
    let (status, body, frames) = stream(addr, "/v1/contacts/export?format=jsonl&fields=id,email", &owner).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let lines: Vec<Value> =
        body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    let ids: Vec<Uuid> = lines.iter().map(|l| l["id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ids.len(), MANY, "every contact once");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order, no id twice");
    let mut expected: Vec<Uuid> = created.iter().map(|id| id.parse().unwrap()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    let emails: std::collections::HashSet<&str> = lines.iter().map(|l| l["email"].as_str().unwrap()).collect();
    assert_eq!(emails.len(), MANY);
    // A page at a time, not one buffered body.
    assert!(frames >= MANY / 500, "{frames} frames");

    // CSV of the same: the header and one record per contact.
    let (status, body, _) = stream(addr, "/v1/contacts/export?format=csv&fields=id", &owner).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let records: Vec<&str> = text.split_terminator("\r\n").collect();
    assert_eq!(records[0], "id");
    assert_eq!(records.len(), MANY + 1);

    // A reader that goes away after the first piece still leaves its entry, once (rows were
    // handed out). With a tenant this small the walk may have finished into the buffers first.
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = hyper::Request::get(format!("http://{addr}/v1/contacts/export?format=csv&fields=email"))
        .header("authorization", format!("Bearer {owner}"))
        .body(Empty::new())
        .unwrap();
    let mut body = client.request(req).await.expect("http request").into_body();
    let first = body.frame().await.expect("a first frame").expect("data");
    assert!(first.into_data().unwrap().starts_with(b"email\r\n"));
    drop(body);
    drop(client);
    let http = sb.http();
    let entries = export_entries(&http, &owner, 3).await;
    let fields: Vec<&Value> = entries.iter().map(|e| &e["fields"]).collect();
    assert_eq!(fields, [&json!(["id", "email"]), &json!(["id"]), &json!(["email"])], "{entries:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(export_entries(&http, &owner, 3).await.len(), 3);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_large_export_streams_every_id_once_sqlite() {
    a_large_export_streams_every_id_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_large_export_streams_every_id_once_postgres() {
    let Some(server) = carnet_tests::postgres::server_url() else { return };
    a_large_export_streams_every_id_once(Backend::Postgres(server)).await;
}
