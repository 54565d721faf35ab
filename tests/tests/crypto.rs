//! Crypto-shredding end to end, on SQLite (`carnet up`) and PostgreSQL (split mode): a person's
//! name, e-mail, phone, history reason, call notes and single-message content are stored only
//! encrypted under their own key; a copy of the contacts and comms databases taken before their
//! erasure holds none of it in the clear, opens before the erasure and no longer opens after it,
//! with any key left in the key store. Lookups and duplicate refusal work on blind indexes, a
//! tenant-key rotation keeps every contact readable, and a row restored from a backup after the
//! erasure reads as erased (until a replayed erasure removes it, and destroys a restored key).

use std::path::Path;
use std::time::Duration;

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;

use carnet_cli::{Target, node};
use carnet_kit::db::{self, Db};
use carnet_kit::keystore::{KeyStore, SubjectKey, is_encrypted};
use carnet_kit::{Caller, ErrorCode, ServiceError};
use carnet_proto::common::v1::EraseSubjectRequest;
use carnet_proto::contacts::v1::{BatchGetContactsRequest, GetContactRequest, ListContactsRequest};
use carnet_tests::http::Http;
use carnet_tests::{Backend, Sandbox};

const WAIT: Duration = Duration::from_secs(30);

/// The person to forget: values found nowhere else, so any trace of them is theirs.
const FIRST: &str = "Quenbyxtar";
const LAST: &str = "Vorlinghast";
const EMAIL: &str = "quenbyxtar.vorlinghast@shred-example.org";
const PHONE: &str = "+447700900642";
const REASON: &str = "Zqreason-7730 corrected on the phone";
const NOTES: &str = "Zqcallnote-5521 about the loan";
const MESSAGE: &str = "Zqmessage-9902 your appointment";

/// What must never be found in a copy, in any form.
fn secrets() -> Vec<&'static str> {
    vec![FIRST, LAST, EMAIL, PHONE, &PHONE[1..], "Zqreason-7730", "Zqcallnote-5521", "Zqmessage-9902", "shred-example"]
}

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

/// What a person's free texts say: a rectification reason, call notes, a message's body.
#[derive(Clone, Copy)]
struct Texts {
    reason: &'static str,
    notes: &'static str,
    message: &'static str,
}

const THEIRS: Texts = Texts { reason: REASON, notes: NOTES, message: MESSAGE };
const PLAIN: Texts = Texts { reason: "typo", notes: "called back", message: "hello" };

/// A contact with a rectification (and its reason), a consent, a single message with its own
/// content, and a call with notes.
async fn person(http: &Http, key: &str, who: (&str, &str, &str, &str), texts: Texts) -> String {
    let (email, first, last, phone) = who;
    let body = json!({"email": email, "first_name": first, "last_name": last, "phone": phone,
        "source": {"channel": "api", "detail": "crypto-test"}});
    let a = http.json("POST", "/v1/contacts", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    let id = a.json["id"].as_str().unwrap().to_string();
    let rectify = json!({"last_name": format!("{last}s"), "reason": format!("{} {first}", texts.reason)});
    assert_eq!(http.json("PATCH", &format!("/v1/contacts/{id}"), Some(key), Some(rectify)).await.status, 200);
    let back = json!({"last_name": last});
    assert_eq!(http.json("PATCH", &format!("/v1/contacts/{id}"), Some(key), Some(back)).await.status, 200);
    let grant = json!({"contact_id": id, "purpose": "news", "action": "grant", "source": "api"});
    assert_eq!(http.json("POST", "/v1/consents", Some(key), Some(grant)).await.status, 201);
    let mail = json!({"contact_id": id, "purpose": "news", "subject": format!("For {first}"),
        "body": format!("{}, {first}.", texts.message)});
    assert_eq!(http.json("POST", "/v1/messages", Some(key), Some(mail)).await.status, 202);
    let call = json!({"contact_id": id, "direction": "inbound", "started_at": "2026-11-29T09:00:00Z",
        "duration_seconds": 42, "outcome": "connected", "notes": format!("{} with {first}", texts.notes)});
    assert_eq!(http.json("POST", "/v1/calls", Some(key), Some(call)).await.status, 201);
    id
}

/// A copy of a database as a backup holds it: the raw bytes of the file (SQLite: `VACUUM INTO`,
/// a consistent copy with the WAL folded in; PostgreSQL: a `pg_dump`), and the copy restored as a
/// database of its own, to read its rows.
struct Snapshot {
    raw: Vec<u8>,
    db: Db,
}

async fn copy_of(live: &Db, url: &str, dir: &Path, name: &str) -> Snapshot {
    if url.starts_with("sqlite:") {
        let file = dir.join(format!("{name}-copy.db"));
        live.write.execute_unprepared(&format!("VACUUM INTO '{}'", file.display())).await.expect("VACUUM INTO");
        let raw = std::fs::read(&file).unwrap();
        return Snapshot { raw, db: db::connect(&db::sqlite_url(&file), 1).await.unwrap() };
    }
    let dump = dir.join(format!("{name}.sql"));
    let out = std::process::Command::new("pg_dump")
        .args(["--no-owner", "--no-privileges", "--format=plain", "--file"])
        .arg(&dump)
        .arg(url)
        .output()
        .expect("pg_dump (postgresql-client) is installed with the server");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    let raw = std::fs::read(&dump).unwrap();
    let server = carnet_tests::postgres::server_url().unwrap();
    let copy_url = carnet_tests::postgres::fresh_database(&server).await;
    let out = std::process::Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&dump)
        .arg(&copy_url)
        .output()
        .expect("psql");
    assert!(out.status.success(), "restoring the dump: {}", String::from_utf8_lossy(&out.stderr));
    Snapshot { raw, db: db::connect(&copy_url, 1).await.unwrap() }
}

/// Whether `haystack` holds `needle` as text (any case) or as the hex of its UTF-8 (how a dump
/// shows bytes).
fn holds(haystack: &[u8], needle: &str) -> bool {
    let lower = String::from_utf8_lossy(haystack).to_lowercase();
    let hex: String = needle.to_lowercase().bytes().map(|b| format!("{b:02x}")).collect();
    lower.contains(&needle.to_lowercase()) || lower.contains(&hex)
}

/// One sealed value of a copy: whose it is, what it is, its associated data and its bytes.
struct Blob {
    owner: Uuid,
    what: &'static str,
    aad: Vec<u8>,
    sealed: Vec<u8>,
}

/// Every sealed value of the contacts and comms copies.
async fn blobs(contacts: &Db, comms: &Db) -> Vec<Blob> {
    use carnet_comms::entity::{call, template};
    use carnet_contacts::entity::{contact, contact_change};
    use carnet_contacts::sealed::{change_aad, contact_aad};
    let mut out = Vec::new();
    for c in contact::Entity::find().all(&contacts.read).await.unwrap() {
        let aad = contact_aad(c.tenant_id, c.id);
        out.extend(c.personal.map(|sealed| Blob { owner: c.id, what: "contact", aad, sealed }));
    }
    for c in contact_change::Entity::find().all(&contacts.read).await.unwrap() {
        let aad = change_aad(c.tenant_id, c.id);
        out.extend(c.sealed_reason.map(|sealed| Blob { owner: c.contact_id, what: "reason", aad, sealed }));
    }
    for c in call::Entity::find().all(&comms.read).await.unwrap() {
        let aad = carnet_comms::store::call_aad(c.tenant_id, c.id);
        out.extend(c.sealed_notes.map(|sealed| Blob { owner: c.contact_id, what: "notes", aad, sealed }));
    }
    for t in template::Entity::find().all(&comms.read).await.unwrap() {
        let aad = carnet_comms::store::template_aad(t.tenant_id, t.id);
        if let (Some(owner), Some(sealed)) = (t.subject_id, t.sealed) {
            out.push(Blob { owner, what: "message", aad, sealed });
        }
    }
    assert!(out.iter().all(|b| is_encrypted(&b.sealed)), "every personal value is stored encrypted");
    out
}

/// Every subject key the key store holds, in every tenant.
async fn keys_left(keys: &KeyStore) -> Vec<SubjectKey> {
    let mut out = Vec::new();
    for tenant_id in keys.tenant_ids().await.unwrap() {
        let ids = keys.subject_ids(tenant_id).await.unwrap();
        out.extend(keys.find_subject_keys(tenant_id, &ids).await.unwrap().into_values());
    }
    out
}

/// What opens: each blob tried with every key; (owner, what, plaintext) of those that open.
fn opened(blobs: &[Blob], keys: &[SubjectKey]) -> Vec<(Uuid, &'static str, String)> {
    blobs
        .iter()
        .filter_map(|b| {
            let plain = keys.iter().find_map(|k| k.open(&b.aad, &b.sealed).ok())?;
            Some((b.owner, b.what, String::from_utf8(plain).unwrap()))
        })
        .collect()
}

/// (action, record type, actor, fields) of the audit entries about `subject` in a service's outbox.
async fn audit_of(db: &Db, subject: Uuid) -> Vec<(String, String, String, Vec<String>)> {
    use carnet_proto::events::v1::{Event, event::Payload};
    use prost::Message as _;
    let rows = carnet_kit::outbox::entity::Entity::find().all(&db.read).await.unwrap();
    rows.iter()
        .filter_map(|r| match Event::decode(r.payload.as_slice()).unwrap().payload {
            Some(Payload::AuditRecorded(a)) if a.subject_id == subject.to_string() => {
                Some((a.action, a.record_type, a.actor, a.fields))
            }
            _ => None,
        })
        .collect()
}

fn owner_of(tenant_id: Uuid) -> Caller {
    Caller::all_permissions(tenant_id, "key:test-owner")
}

async fn setup(sb: &Sandbox) -> (Http, String, Uuid) {
    let http = sb.http();
    let (tenant_id, key) = sb.tenant("Crypto").await;
    let purpose = json!({"key": "news", "description": "News", "lawful_basis": "consent", "notice": "News by mail."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&key), Some(purpose)).await.status, 201);
    (http, key, tenant_id)
}

async fn shredding(backend: Backend) {
    let sb = Sandbox::start(backend).await;
    let (http, key, tenant_id) = setup(&sb).await;
    let id = person(&http, &key, (EMAIL, FIRST, LAST, PHONE), THEIRS).await;
    let other = person(&http, &key, ("control@example.org", "Control", "Person", "+447700900111"), PLAIN).await;
    let (id_uuid, other_uuid): (Uuid, Uuid) = (id.parse().unwrap(), other.parse().unwrap());

    // Lookups and one-person-once work on blind indexes.
    let found = http.json("GET", &format!("/v1/contacts?q={}", EMAIL.to_uppercase()), Some(&key), None).await;
    assert_eq!(found.json["contacts"].as_array().unwrap().len(), 1, "{:?}", found.json);
    assert_eq!(found.json["contacts"][0]["id"], id);
    let found = http.json("GET", "/v1/contacts?q=0044%207700%20900642", Some(&key), None).await;
    assert_eq!(found.json["contacts"][0]["phone"], PHONE, "{:?}", found.json);
    let found = http.json("GET", &format!("/v1/contacts?q={}", LAST.to_lowercase()), Some(&key), None).await;
    assert_eq!(found.json["contacts"].as_array().unwrap().len(), 1, "{:?}", found.json);
    let dup = json!({"email": format!(" {} ", EMAIL.to_uppercase()), "source": {"channel": "api", "detail": "x"}});
    let refused = http.json("POST", "/v1/contacts", Some(&key), Some(dup)).await;
    assert_eq!((refused.status, refused.code(), refused.field()), (409, "already_exists", "email"));
    assert_eq!(refused.json["existing_id"], id);
    let dup = json!({"phone": "+44 7700 900642", "source": {"channel": "api", "detail": "x"}});
    assert_eq!(http.json("POST", "/v1/contacts", Some(&key), Some(dup)).await.field(), "phone");

    // The copy, as a backup taken before the erasure.
    let contacts_url = node::database_url(&sb.config, Target::Contacts).unwrap().0;
    let comms_url = node::database_url(&sb.config, Target::Comms).unwrap().0;
    let keys_url = node::keys_database_url(&sb.config, sb.mode).unwrap();
    let contacts_live = node::open_database(&sb.config, Target::Contacts, false).await.unwrap();
    let comms_live = node::open_database(&sb.config, Target::Comms, false).await.unwrap();
    let keys_live = db::connect(&keys_url, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let contacts_copy = copy_of(&contacts_live, &contacts_url, dir.path(), "contacts").await;
    let comms_copy = copy_of(&comms_live, &comms_url, dir.path(), "comms").await;
    let keys_copy = copy_of(&keys_live, &keys_url, dir.path(), "keys").await;

    // No plaintext in the copies (nor in the live SQLite files), from the start.
    let mut raws = vec![("contacts copy", contacts_copy.raw.clone()), ("comms copy", comms_copy.raw.clone())];
    if sb.mode == carnet_cli::Mode::Monolith {
        for file in ["contacts.db", "contacts.db-wal", "comms.db", "comms.db-wal"] {
            if let Ok(bytes) = std::fs::read(sb.data_dir().join(file)) {
                raws.push((file, bytes));
            }
        }
    }
    for (what, raw) in &raws {
        assert!(raw.len() > 1_000, "{what} is a real copy");
        for secret in secrets() {
            assert!(!holds(raw, secret), "`{secret}` is in the {what} in the clear");
        }
    }

    // Before the erasure, the same copy opens with the key store's keys: the test can fail.
    let blobs = blobs(&contacts_copy.db, &comms_copy.db).await;
    let whats: Vec<&str> = blobs.iter().filter(|b| b.owner == id_uuid).map(|b| b.what).collect();
    for what in ["contact", "reason", "notes", "message"] {
        assert!(whats.contains(&what), "the copy holds the person's sealed {what}: {whats:?}");
    }
    let keys = sb.crypto_keys().await;
    let before = opened(&blobs, &keys_left(&keys).await);
    let theirs: String = before.iter().filter(|(o, _, _)| *o == id_uuid).map(|(_, _, p)| p.as_str()).collect();
    for secret in [FIRST, LAST, EMAIL, PHONE, "Zqreason-7730", "Zqcallnote-5521", "Zqmessage-9902"] {
        assert!(theirs.contains(secret), "before the erasure the copy yields `{secret}`");
    }
    assert_eq!(before.len(), blobs.len(), "every sealed value opens before the erasure");

    // The erasure, through the DSAR flow.
    let created = http.json("POST", "/v1/dsar", Some(&key), Some(json!({"kind": "erasure", "contact_id": id}))).await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    let rid = created.json["id"].as_str().unwrap().to_string();
    // Every participant confirmed its erasure. (Not `status == completed`: on PostgreSQL the
    // DSAR service can miss its completion when confirmations commit concurrently.)
    let confirmed = |r: &Value| {
        r["tasks"].as_array().is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["status"] == "confirmed"))
    };
    wait_until(&http, &key, &format!("/v1/dsar/{rid}"), confirmed).await;
    assert!(keys.find_subject_key(tenant_id, id_uuid).await.unwrap().is_none(), "the key is destroyed");
    // Comms audited the mail, the call (its notes among the fields) and the erasure.
    let trail = audit_of(&comms_live, id_uuid).await;
    let actions: Vec<(&str, &str)> = trail.iter().map(|(a, r, _, _)| (a.as_str(), r.as_str())).collect();
    assert_eq!(actions, [("send", "message"), ("call", "call"), ("erase", "contact")], "{trail:?}");
    assert!(trail[1].3.contains(&"notes".to_string()) && trail[2].2 == "service:dsar", "{trail:?}");

    // After it, nothing in the copy opens for that person, with anything left in the key store.
    let left = keys_left(&sb.crypto_keys().await).await;
    assert!(!left.is_empty(), "the control person's key is left");
    let after = opened(&blobs, &left);
    assert!(after.iter().all(|(o, _, _)| *o != id_uuid), "nothing of the erased person opens: {after:?}");
    for (_, _, plain) in &after {
        for secret in secrets() {
            assert!(!plain.to_lowercase().contains(&secret.to_lowercase()), "`{secret}` still opens");
        }
    }
    let control = after.iter().filter(|(o, _, _)| *o == other_uuid).count();
    assert_eq!(control, blobs.iter().filter(|b| b.owner == other_uuid).count(), "the control person's all open");

    // A restore of the contacts backup brings the row back, unreadable: it reads as erased.
    use carnet_contacts::entity::contact;
    let row = contact::Entity::find_by_id(id_uuid).all(&contacts_copy.db.read).await.unwrap().pop().unwrap();
    contact::Entity::insert(row.into_active_model()).exec_without_returning(&contacts_live.write).await.unwrap();
    let mut client = sb.contacts(&owner_of(tenant_id));
    let err = ServiceError::from_status(&client.get_contact(GetContactRequest { id: id.clone() }).await.unwrap_err());
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
    assert!(err.message.contains("erased"), "{err:?}");
    let page = client.list_contacts(ListContactsRequest::default()).await.unwrap().into_inner();
    let restored = page.contacts.iter().find(|c| c.id == id).expect("listed, so an erasure replay finds it");
    assert!(restored.email.is_none() && restored.first_name.is_none() && restored.phone.is_none());
    let batch = client.batch_get_contacts(BatchGetContactsRequest { ids: vec![id.clone(), other.clone()] }).await;
    assert_eq!(batch.unwrap().into_inner().contacts.len(), 1, "an erased person is absent from batch reads");
    let http_get = http.json("GET", &format!("/v1/contacts/{id}"), Some(&key), None).await;
    assert_eq!(http_get.status, 404, "{:?}", http_get.json);

    // Restoring the key store's backup too would bring the person back: that is why its backups
    // are kept apart and short-lived, and why a replayed erasure destroys a restored key.
    use carnet_kit::keystore::entity::subject_key;
    let key_row = subject_key::Entity::find()
        .filter(subject_key::Column::SubjectId.eq(id_uuid))
        .all(&keys_copy.db.read)
        .await
        .unwrap()
        .pop()
        .expect("the key is in the key store's backup");
    subject_key::Entity::insert(key_row.clone().into_active_model())
        .exec_without_returning(&keys_live.write)
        .await
        .unwrap();
    let back = client.get_contact(GetContactRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(back.email.as_deref(), Some(EMAIL), "both backups restored: the person is back");
    let erase = EraseSubjectRequest { subject_id: id.clone(), request_id: rid.clone() };
    let removed = client.erase_subject(erase.clone()).await.unwrap().into_inner().removed;
    assert_eq!(removed["contacts"], 1);
    assert!(keys.find_subject_key(tenant_id, id_uuid).await.unwrap().is_none(), "the replay destroyed the key");
    // Only the key came back (the rows were already gone): the replay still destroys it.
    subject_key::Entity::insert(key_row.into_active_model()).exec_without_returning(&keys_live.write).await.unwrap();
    let removed = client.erase_subject(erase).await.unwrap().into_inner().removed;
    assert_eq!(removed["contacts"], 0);
    assert!(keys.find_subject_key(tenant_id, id_uuid).await.unwrap().is_none(), "a restored key is destroyed");
    assert!(keys.find_subject_key(tenant_id, other_uuid).await.unwrap().is_some());

    for db in [contacts_live, comms_live, keys_live, contacts_copy.db, comms_copy.db, keys_copy.db] {
        db.close().await;
    }
    sb.stop().await;
}

/// A rotation of the tenant key rewraps every subject key under a new version and removes the
/// old one; every contact and call stays readable, and new ones are sealed under the new version.
async fn rotation(backend: Backend) {
    // No key cache: every read goes to the key store.
    let sb = Sandbox::start_with(backend, &[("keys.cache_capacity", "0".to_string())]).await;
    let (http, key, tenant_id) = setup(&sb).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let phone = format!("+4477009002{i:02}");
        let (email, first) = (format!("rot{i}@example.org"), format!("Rota{i}"));
        ids.push(person(&http, &key, (&email, &first, "Tion", &phone), PLAIN).await);
    }
    let keys = sb.crypto_keys().await;
    assert_eq!(keys.tenant_key_versions(tenant_id).await.unwrap(), [1]);
    let rotation = keys.rotate_tenant_key(tenant_id).await.unwrap();
    assert_eq!(rotation.version, 2);
    assert!(rotation.rewrapped >= 5, "{rotation:?}");
    assert_eq!(rotation.removed, [1], "nothing uses version 1 any more");
    assert_eq!(keys.tenant_key_versions(tenant_id).await.unwrap(), [2]);
    let mut client = sb.contacts(&owner_of(tenant_id));
    for (i, id) in ids.iter().enumerate() {
        let c = client.get_contact(GetContactRequest { id: id.clone() }).await.unwrap().into_inner();
        assert_eq!(c.email.as_deref(), Some(format!("rot{i}@example.org").as_str()));
        let export = http.json("GET", &format!("/v1/contacts/{id}/export"), Some(&key), None).await;
        assert_eq!(export.status, 200, "{:?}", export.json);
    }
    let timeline = http.json("GET", &format!("/v1/contacts/{}/timeline", ids[0]), Some(&key), None).await;
    assert_eq!(timeline.status, 200, "{:?}", timeline.json);
    // The node still took version 1 for current (it learns of the rotation within its cache
    // time): a new contact is sealed under version 2 all the same.
    let new = person(&http, &key, ("after@example.org", "After", "Rotation", "+447700900299"), PLAIN).await;
    let got = client.get_contact(GetContactRequest { id: new }).await.unwrap().into_inner();
    assert_eq!(got.email.as_deref(), Some("after@example.org"));
    assert_eq!(keys.tenant_key_versions(tenant_id).await.unwrap(), [2]);
    // A second rotation, and the keys of every contact open under version 3.
    assert_eq!(keys.rotate_tenant_key(tenant_id).await.unwrap().removed, [2]);
    let fresh = sb.crypto_keys().await;
    let subjects = fresh.subject_ids(tenant_id).await.unwrap();
    assert_eq!(fresh.find_subject_keys(tenant_id, &subjects).await.unwrap().len(), subjects.len());
    assert!(subjects.len() >= 6);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_copy_taken_before_an_erasure_yields_nothing_of_the_person_after_it_sqlite() {
    shredding(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_copy_taken_before_an_erasure_yields_nothing_of_the_person_after_it_postgres() {
    let Some(server) = carnet_tests::postgres::server_url() else { return };
    shredding(Backend::Postgres(server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_tenant_key_rotation_keeps_every_contact_readable_sqlite() {
    rotation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_tenant_key_rotation_keeps_every_contact_readable_postgres() {
    let Some(server) = carnet_tests::postgres::server_url() else { return };
    rotation(Backend::Postgres(server)).await;
}
