//! The contacts store suite, run against SQLite and against a real PostgreSQL (started by the
//! test command). Each test gets a fresh database; tenants are random, so scoping is real.

use chrono::Utc;
use prost::Message as _;
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};
use uuid::Uuid;

use carnet_contacts::domain::{
    Channel, ContactInput, ContactPatch, FieldDefinition, FieldType, FieldValue, FlagKind, Source,
};
use carnet_contacts::{Audit, ContactStore};
use carnet_kit::db::{self, Db};
use carnet_kit::keystore::{KeyStore, LocalKms, Options};
use carnet_kit::{Caller, ErrorCode, ServiceError};
use carnet_migrations::MigratorTrait;

/// A store on a fresh database (and a fresh key store), and what keeps it alive.
struct Fixture {
    store: ContactStore,
    db: Db,
    url: String,
    keys: KeyStore,
    /// Kept alive by the test macro: the test body's async block captures only the fields it uses.
    dir_opt: Option<std::sync::Arc<tempfile::TempDir>>,
}

/// A key store on `url` with a fresh master key.
async fn key_store(url: &str) -> KeyStore {
    let db = db::connect(url, 4).await.unwrap();
    carnet_migrations::keys::Migrator::up(&db.write, None).await.unwrap();
    KeyStore::new(db, std::sync::Arc::new(LocalKms::generate().0), Options::default())
}

async fn sqlite() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let url = db::sqlite_url(&dir.path().join("contacts.db"));
    let db = db::connect(&url, 4).await.unwrap();
    carnet_migrations::contacts::Migrator::up(&db.write, None).await.unwrap();
    let keys = key_store(&db::sqlite_url(&dir.path().join("keys.db"))).await;
    let store = ContactStore::new(db.clone(), keys.clone());
    Some(Fixture { store, db, url, keys, dir_opt: Some(std::sync::Arc::new(dir)) })
}

async fn postgres() -> Option<Fixture> {
    let server = carnet_tests::postgres::server_url()?;
    let url = carnet_tests::postgres::fresh_database(&server).await;
    let db = db::connect(&url, 4).await.unwrap();
    carnet_migrations::contacts::Migrator::up(&db.write, None).await.unwrap();
    let keys = key_store(&carnet_tests::postgres::fresh_database(&server).await).await;
    let store = ContactStore::new(db.clone(), keys.clone());
    Some(Fixture { store, db, url, keys, dir_opt: None })
}

/// A caller `principal` through a test API.
fn by(principal: &str) -> Audit {
    Audit::new(&Caller::all_permissions(Uuid::nil(), principal), "test")
}

fn audit() -> Audit {
    by("key:test")
}

/// Outbox rows of one kind.
async fn events(f: &Fixture, kind: &str) -> usize {
    carnet_kit::outbox::entity::Entity::find().all(&f.db.read).await.unwrap().iter().filter(|e| e.kind == kind).count()
}

/// Generates `<name>::sqlite` and `<name>::postgres` from one async test body.
macro_rules! store_test {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                if let Some(f) = super::sqlite().await {
                    let dir = f.dir_opt.clone();
                    $body(f).await;
                    drop(dir);
                }
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(f) = super::postgres().await {
                    $body(f).await;
                }
            }
        }
    };
}

fn source() -> Source {
    Source { channel: Channel::Api, detail: "crm-sync".into(), actor: "key:test".into(), collected_at: Utc::now() }
}

fn person(email: &str) -> ContactInput {
    ContactInput {
        email_opt: Some(email.into()),
        first_name_opt: Some("Ada".into()),
        last_name_opt: Some("Lovelace".into()),
        ..Default::default()
    }
}

async fn rows(f: &Fixture, table: &str) -> i64 {
    let stmt = sea_orm::Statement::from_string(f.db.backend(), format!("SELECT COUNT(*) AS n FROM {table}"));
    let row = f.db.read.query_one_raw(stmt).await.unwrap().unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

fn assert_code(err: &ServiceError, code: ErrorCode, field: &str) {
    assert_eq!(err.code, code, "{err:?}");
    assert_eq!(err.field_opt.as_deref(), Some(field), "{err:?}");
}

fn custom_policy() -> Vec<FieldDefinition> {
    let def = |key: &str, t: FieldType, cat: &str| FieldDefinition {
        key: key.into(),
        field_type: t,
        category: cat.into(),
        required: false,
        enum_values: vec![],
        purpose: String::new(),
    };
    let mut tier = def("tier", FieldType::Enum, "commercial");
    tier.enum_values = vec!["gold".into(), "silver".into()];
    let mut email = def("email", FieldType::Email, "contact");
    email.required = true;
    vec![
        email,
        def("first_name", FieldType::String, "identity"),
        def("last_name", FieldType::String, "identity"),
        def("company", FieldType::String, "professional"),
        def("employees", FieldType::Number, "professional"),
        tier,
    ]
}

store_test!(create_normalises_and_keeps_source, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let mut input = person("  Ada@Example.ORG ");
    input.phone_opt = Some("+44 20 7946 0958".into());
    let src = source();
    let created = f.store.create(tenant, input, src.clone(), &audit()).await.unwrap();
    assert_eq!(created.email.as_deref(), Some("ada@example.org"));
    assert_eq!(created.phone.as_deref(), Some("+442079460958"));
    assert_eq!(created.source.channel, Channel::Api);
    assert_eq!(created.source.detail, "crm-sync");
    assert_eq!(created.version, 1);
    let got = f.store.get(tenant, created.id, &audit()).await.unwrap();
    assert_eq!(got, created);
    assert_eq!(events(&f, "contact.upserted").await, 1, "create writes its event");
    assert_eq!(events(&f, "audit.recorded").await, 2, "and its audit entry; the get its view");
});

store_test!(field_outside_policy_is_refused_and_nothing_stored, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let mut input = person("ada@example.org");
    input.fields.insert("shoe_size".into(), FieldValue::Number(38.0));
    let err = f.store.create(tenant, input, source(), &audit()).await.unwrap_err();
    assert_code(&err, ErrorCode::InvalidArgument, "fields.shoe_size");
    assert_eq!(rows(&f, "contacts").await, 0);
    assert_eq!(rows(&f, "contact_changes").await, 0);
    assert_eq!(rows(&f, "outbox").await, 0);
});

store_test!(policy_governs_custom_and_builtin_fields, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let policy = f.store.set_field_policy(tenant, &by("key:admin"), custom_policy()).await.unwrap();
    assert_eq!(policy.version, 1);
    assert_eq!(f.store.field_policy(tenant).await.unwrap().fields.len(), 6);
    // The phone is no longer in the policy.
    let mut input = person("ada@example.org");
    input.phone_opt = Some("+33612345678".into());
    let err = f.store.create(tenant, input, source(), &audit()).await.unwrap_err();
    assert_code(&err, ErrorCode::InvalidArgument, "phone");
    // The e-mail is now required.
    let err = f
        .store
        .create(tenant, ContactInput { first_name_opt: Some("Ada".into()), ..Default::default() }, source(), &audit())
        .await
        .unwrap_err();
    assert_code(&err, ErrorCode::InvalidArgument, "email");
    // Typed custom fields.
    let mut input = person("ada@example.org");
    input.fields.insert("tier".into(), FieldValue::String("platinum".into()));
    let err = f.store.create(tenant, input.clone(), source(), &audit()).await.unwrap_err();
    assert_code(&err, ErrorCode::InvalidArgument, "fields.tier");
    input.fields.insert("tier".into(), FieldValue::String("gold".into()));
    input.fields.insert("employees".into(), FieldValue::Number(120.0));
    let created = f.store.create(tenant, input, source(), &audit()).await.unwrap();
    assert_eq!(created.fields.get("tier"), Some(&FieldValue::String("gold".into())));
    assert_eq!(created.fields.get("employees"), Some(&FieldValue::Number(120.0)));
    // Another tenant keeps the default policy.
    let other = Uuid::now_v7();
    assert_eq!(f.store.field_policy(other).await.unwrap().version, 0);
    let v2 = f.store.set_field_policy(tenant, &by("key:admin"), custom_policy()).await.unwrap();
    assert_eq!(v2.version, 2);
});

store_test!(duplicate_email_and_phone_are_refused_with_existing_id, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let mut input = person("ada@example.org");
    input.phone_opt = Some("+33 6 12 34 56 78".into());
    let first = f.store.create(tenant, input, source(), &audit()).await.unwrap();
    let err = f.store.create(tenant, person(" ADA@example.org"), source(), &audit()).await.unwrap_err();
    assert_code(&err, ErrorCode::AlreadyExists, "email");
    assert_eq!(err.existing_id_opt, Some(first.id.to_string()));
    let dup_phone = ContactInput { phone_opt: Some("0033612345678".into()), ..Default::default() };
    let err = f.store.create(tenant, dup_phone, source(), &audit()).await.unwrap_err();
    assert_code(&err, ErrorCode::AlreadyExists, "phone");
    assert_eq!(err.existing_id_opt, Some(first.id.to_string()));
    assert_eq!(rows(&f, "contacts").await, 1);
    assert_eq!(events(&f, "contact.upserted").await, 1);
    // The same person in another tenant is another record.
    f.store.create(Uuid::now_v7(), person("ada@example.org"), source(), &audit()).await.unwrap();
});

store_test!(other_tenant_reads_not_found, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let other = Uuid::now_v7();
    let c = f.store.create(tenant, person("ada@example.org"), source(), &audit()).await.unwrap();
    let bob = ContactInput { email_opt: Some("bob@example.org".into()), ..Default::default() };
    let d = f.store.create(other, bob, source(), &audit()).await.unwrap();
    assert_eq!(f.store.get(other, c.id, &audit()).await.unwrap_err().code, ErrorCode::NotFound);
    let patch = ContactPatch {
        set: ContactInput { first_name_opt: Some("X".into()), ..Default::default() },
        ..Default::default()
    };
    assert_eq!(f.store.update(other, c.id, &by("key:x"), patch).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(f.store.delete(other, c.id, &audit()).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(f.store.history(other, c.id, &audit()).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(f.store.export_subject(other, c.id, &audit()).await.unwrap_err().code, ErrorCode::NotFound);
    let err = f.store.merge(other, d.id, c.id, &by("key:x")).await.unwrap_err();
    assert_code(&err, ErrorCode::NotFound, "other_id");
    assert_eq!(f.store.erase_subject(other, c.id, "", &audit()).await.unwrap().contacts, 0);
    assert_eq!(
        f.store.set_flag(other, c.id, &by("key:x"), FlagKind::Restriction, true, None).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    let page = f.store.list(other, "ada", 50, "", &audit()).await.unwrap();
    assert!(page.contacts.is_empty());
    // Still intact for its owner.
    assert_eq!(f.store.get(tenant, c.id, &audit()).await.unwrap(), c);
});

store_test!(rectification_records_fields_not_values, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let c = f.store.create(tenant, person("ada@example.org"), source(), &audit()).await.unwrap();
    let patch = ContactPatch {
        set: ContactInput {
            last_name_opt: Some("King".into()),
            email_opt: Some("ada@example.org".into()),
            ..Default::default()
        },
        clear: vec!["first_name".into()],
        reason_opt: Some("subject asked".into()),
        expected_version_opt: Some(1),
        source_opt: None,
        import_id_opt: None,
    };
    let updated = f.store.update(tenant, c.id, &by("key:clerk"), patch).await.unwrap();
    assert_eq!(updated.last_name.as_deref(), Some("King"));
    assert_eq!(updated.first_name, None);
    assert_eq!(updated.version, 2);
    assert_eq!(updated.source, c.source, "updates never rewrite the source");
    let history = f.store.history(tenant, c.id, &audit()).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].kind, "created");
    assert_eq!(history[1].kind, "rectified");
    assert_eq!(history[1].fields, vec!["first_name".to_string(), "last_name".to_string()]);
    assert_eq!(history[1].actor, "key:clerk");
    assert_eq!(history[1].reason_opt.as_deref(), Some("subject asked"));
    let serialized = serde_json::to_string(&history).unwrap();
    assert!(!serialized.contains("Lovelace") && !serialized.contains("King"), "history holds no values: {serialized}");
    // Stale version.
    let stale = ContactPatch {
        set: ContactInput { last_name_opt: Some("Byron".into()), ..Default::default() },
        expected_version_opt: Some(1),
        ..Default::default()
    };
    let err = f.store.update(tenant, c.id, &by("key:clerk"), stale).await.unwrap_err();
    assert_code(&err, ErrorCode::Conflict, "expected_version");
    // Malformed values are refused and nothing changes.
    let bad =
        ContactPatch { set: ContactInput { phone_opt: Some("12".into()), ..Default::default() }, ..Default::default() };
    assert_code(
        &f.store.update(tenant, c.id, &by("key:clerk"), bad).await.unwrap_err(),
        ErrorCode::InvalidArgument,
        "phone",
    );
    assert_eq!(f.store.get(tenant, c.id, &audit()).await.unwrap(), updated);
    // A no-op update records nothing.
    let same = ContactPatch {
        set: ContactInput { last_name_opt: Some("King".into()), ..Default::default() },
        ..Default::default()
    };
    assert_eq!(f.store.update(tenant, c.id, &by("key:clerk"), same).await.unwrap().version, 2);
    assert_eq!(f.store.history(tenant, c.id, &audit()).await.unwrap().len(), 2);
});

store_test!(values_written_with_a_source_keep_it_until_rectified, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    f.store.set_field_policy(tenant, &by("key:admin"), custom_policy()).await.unwrap();
    let c = f.store.create(tenant, person("ada@analytical-engines.org"), source(), &audit()).await.unwrap();
    assert!(c.field_sources.is_empty());
    let plugin = Source {
        channel: Channel::Enrichment,
        detail: "company-from-domain@1.0.0".into(),
        actor: "service:enrichment".into(),
        collected_at: Utc::now(),
    };
    let enrich = ContactPatch {
        set: ContactInput {
            fields: [("company".to_string(), FieldValue::String("Analytical Engines".into()))].into(),
            ..Default::default()
        },
        source_opt: Some(plugin.clone()),
        ..Default::default()
    };
    let enriched = f.store.update(tenant, c.id, &by("service:enrichment"), enrich).await.unwrap();
    assert_eq!(enriched.field_sources.len(), 1);
    let kept = &enriched.field_sources["company"];
    assert_eq!((kept.channel, kept.detail.as_str()), (Channel::Enrichment, "company-from-domain@1.0.0"));
    assert_eq!(enriched.source, c.source, "the record's own source is untouched");
    assert_eq!(f.store.get(tenant, c.id, &audit()).await.unwrap(), enriched, "the provenance is stored");
    // The event names the change's channel, so enrichment does not react to its own writes.
    let upserts = carnet_kit::outbox::entity::Entity::find().all(&f.db.read).await.unwrap();
    let last = upserts.iter().filter(|e| e.kind == "contact.upserted").max_by_key(|e| e.id).unwrap();
    let last = carnet_proto::events::v1::Event::decode(last.payload.as_slice()).unwrap();
    let Some(carnet_proto::events::v1::event::Payload::ContactUpserted(up)) = last.payload else { panic!() };
    assert_eq!(up.source_channel, carnet_proto::common::v1::SourceChannel::Enrichment as i32);
    // A person's rectification makes the value theirs.
    let rectify = ContactPatch {
        set: ContactInput {
            fields: [("company".to_string(), FieldValue::String("Babbage & Co".into()))].into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let rectified = f.store.update(tenant, c.id, &by("key:clerk"), rectify).await.unwrap();
    assert!(rectified.field_sources.is_empty());
    // A cleared value loses its entry too.
    let again = ContactPatch {
        set: ContactInput {
            fields: [("employees".to_string(), FieldValue::Number(12.0))].into(),
            ..Default::default()
        },
        source_opt: Some(plugin),
        ..Default::default()
    };
    assert!(
        f.store
            .update(tenant, c.id, &by("service:enrichment"), again)
            .await
            .unwrap()
            .field_sources
            .contains_key("employees")
    );
    let clear = ContactPatch { clear: vec!["employees".into()], ..Default::default() };
    assert!(f.store.update(tenant, c.id, &by("key:clerk"), clear).await.unwrap().field_sources.is_empty());
});

store_test!(rectifying_to_a_taken_email_is_refused, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let a = f.store.create(tenant, person("ada@example.org"), source(), &audit()).await.unwrap();
    let b = f.store.create(tenant, person("bob@example.org"), source(), &audit()).await.unwrap();
    let patch = ContactPatch {
        set: ContactInput { email_opt: Some("Ada@Example.org".into()), ..Default::default() },
        ..Default::default()
    };
    let err = f.store.update(tenant, b.id, &by("key:x"), patch).await.unwrap_err();
    assert_code(&err, ErrorCode::AlreadyExists, "email");
    assert_eq!(err.existing_id_opt, Some(a.id.to_string()));
    assert_eq!(f.store.get(tenant, b.id, &audit()).await.unwrap().email.as_deref(), Some("bob@example.org"));
});

store_test!(search_and_cursor_pagination, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut input = person(&format!("user{i}@example.org"));
        input.last_name_opt = Some(if i % 2 == 0 { "Lovelace".into() } else { "Hopper".into() });
        ids.push(f.store.create(tenant, input, source(), &audit()).await.unwrap().id);
    }
    f.store.create(Uuid::now_v7(), person("user9@example.org"), source(), &audit()).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = f.store.list(tenant, "", 3, &cursor, &audit()).await.unwrap();
        seen.extend(page.contacts.iter().map(|c| c.id));
        match page.next_cursor_opt {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(seen, ids, "every contact once, in creation order, tenant-scoped");
    // Values are encrypted: a query matches a whole name token, e-mail or phone, exactly.
    let hoppers = f.store.list(tenant, "HOPPER", 50, "", &audit()).await.unwrap();
    assert_eq!(hoppers.contacts.len(), 3);
    assert!(hoppers.contacts.iter().all(|c| c.last_name.as_deref() == Some("Hopper")));
    let both = f.store.list(tenant, "ada lovelace", 50, "", &audit()).await.unwrap();
    assert_eq!(both.contacts.len(), 4, "every token of the query, in first or last name");
    assert!(f.store.list(tenant, "ada hopper lovelace", 50, "", &audit()).await.unwrap().contacts.is_empty());
    let by_email = f.store.list(tenant, " User3@Example.org", 50, "", &audit()).await.unwrap();
    assert_eq!(by_email.contacts.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[3]]);
    assert!(f.store.list(tenant, "user3@", 50, "", &audit()).await.unwrap().contacts.is_empty(), "no substrings");
    assert!(f.store.list(tenant, "Hop", 50, "", &audit()).await.unwrap().contacts.is_empty(), "no prefixes");
    assert!(f.store.list(tenant, "%", 50, "", &audit()).await.unwrap().contacts.is_empty(), "wildcards are literal");
    let patch = ContactPatch {
        set: ContactInput { phone_opt: Some("+44 20 7946 0958".into()), ..Default::default() },
        ..Default::default()
    };
    f.store.update(tenant, ids[5], &audit(), patch).await.unwrap();
    let by_phone = f.store.list(tenant, "0044 (20) 7946-0958", 50, "", &audit()).await.unwrap();
    assert_eq!(by_phone.contacts.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[5]]);
    // A rectified name is found under its new tokens only.
    let patch = ContactPatch {
        set: ContactInput { last_name_opt: Some("Byron-King".into()), ..Default::default() },
        ..Default::default()
    };
    f.store.update(tenant, ids[0], &audit(), patch).await.unwrap();
    assert_eq!(f.store.list(tenant, "lovelace", 50, "", &audit()).await.unwrap().contacts.len(), 3);
    let kings = f.store.list(tenant, "king", 50, "", &audit()).await.unwrap();
    assert_eq!(kings.contacts.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[0]]);
    let err = f.store.list(tenant, "", 50, "not-a-cursor!", &audit()).await.unwrap_err();
    assert_code(&err, ErrorCode::InvalidArgument, "cursor");
    let err = f.store.list(tenant, "", 501, "", &audit()).await.unwrap_err();
    assert_code(&err, ErrorCode::InvalidArgument, "limit");
});

store_test!(merge_fills_blanks_and_keeps_provenance, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let keep = f.store.create(tenant, person("ada@example.org"), source(), &audit()).await.unwrap();
    let other_source =
        Source { channel: Channel::WebForm, detail: "form-7".into(), actor: "public".into(), collected_at: Utc::now() };
    let other_input = ContactInput {
        phone_opt: Some("+33612345678".into()),
        first_name_opt: Some("Augusta".into()),
        ..Default::default()
    };
    let other = f.store.create(tenant, other_input, other_source.clone(), &audit()).await.unwrap();
    f.store
        .set_flag(tenant, other.id, &by("key:x"), FlagKind::Objection, true, Some("no marketing".into()))
        .await
        .unwrap();
    let merged = f.store.merge(tenant, keep.id, other.id, &by("key:merger")).await.unwrap();
    assert_eq!(merged.first_name.as_deref(), Some("Ada"), "the survivor's values win");
    assert_eq!(merged.phone.as_deref(), Some("+33612345678"), "blanks are filled");
    assert!(merged.objection.active, "the more protective flag wins");
    assert_eq!(merged.source, keep.source);
    assert_eq!(f.store.get(tenant, other.id, &audit()).await.unwrap_err().code, ErrorCode::NotFound);
    let history = f.store.history(tenant, keep.id, &audit()).await.unwrap();
    let entry = history.iter().find(|h| h.kind == "merged").expect("merge recorded");
    assert_eq!(entry.related_contact_id_opt, Some(other.id));
    assert_eq!(entry.related_source_opt.as_ref().map(|s| s.detail.as_str()), Some("form-7"));
    assert!(entry.fields.contains(&"phone".to_string()));
    assert!(history.iter().any(|h| h.kind == "objection_set"), "the duplicate's history moves over");
    let err = f.store.merge(tenant, keep.id, keep.id, &by("key:x")).await.unwrap_err();
    assert_code(&err, ErrorCode::InvalidArgument, "other_id");
});

store_test!(restriction_and_objection_flags, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let c = f.store.create(tenant, person("ada@example.org"), source(), &audit()).await.unwrap();
    let r = f
        .store
        .set_flag(tenant, c.id, &by("key:dpo"), FlagKind::Restriction, true, Some("accuracy contested".into()))
        .await
        .unwrap();
    assert!(r.restriction.active);
    assert_eq!(r.restriction.reason_opt.as_deref(), Some("accuracy contested"));
    assert!(r.restriction.since_opt.is_some());
    assert!(!r.objection.active);
    let again = f.store.set_flag(tenant, c.id, &by("key:dpo"), FlagKind::Restriction, true, None).await.unwrap();
    assert_eq!(again.version, r.version, "setting a flag twice changes nothing");
    let o = f.store.set_flag(tenant, c.id, &by("key:dpo"), FlagKind::Objection, true, None).await.unwrap();
    assert!(o.objection.active && o.restriction.active);
    let lifted = f.store.set_flag(tenant, c.id, &by("key:dpo"), FlagKind::Restriction, false, None).await.unwrap();
    assert!(!lifted.restriction.active && lifted.restriction.since_opt.is_none());
    let kinds: Vec<String> =
        f.store.history(tenant, c.id, &audit()).await.unwrap().into_iter().map(|h| h.kind).collect();
    assert_eq!(kinds, ["created", "restriction_set", "objection_set", "restriction_lifted"]);
});

store_test!(export_holds_the_subject_only, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let c = f.store.create(tenant, person("ada@example.org"), source(), &audit()).await.unwrap();
    f.store.create(tenant, person("bob@example.org"), source(), &audit()).await.unwrap();
    let patch = ContactPatch {
        set: ContactInput { last_name_opt: Some("King".into()), ..Default::default() },
        ..Default::default()
    };
    f.store.update(tenant, c.id, &by("key:x"), patch).await.unwrap();
    let (doc, count) = f.store.export_subject(tenant, c.id, &audit()).await.unwrap();
    assert_eq!(count, 3);
    assert_eq!(doc["service"], "contacts");
    assert_eq!(doc["contact"]["email"], "ada@example.org");
    assert_eq!(doc["contact"]["last_name"], "King");
    assert_eq!(doc["contact"]["source"]["channel"], "api");
    assert_eq!(doc["contact"]["source"]["detail"], "crm-sync");
    assert_eq!(doc["history"].as_array().unwrap().len(), 2);
    let categories: Vec<&str> =
        doc["data_categories"].as_array().unwrap().iter().map(|c| c["category"].as_str().unwrap()).collect();
    assert!(categories.contains(&"contact") && categories.contains(&"identity"));
    assert!(!doc.to_string().contains("bob@example.org"));
});

store_test!(erasure_removes_everything_and_is_idempotent, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let c = f.store.create(tenant, person("ada@example.org"), source(), &audit()).await.unwrap();
    let keep = f.store.create(tenant, person("bob@example.org"), source(), &audit()).await.unwrap();
    f.store.set_flag(tenant, c.id, &by("key:x"), FlagKind::Restriction, true, None).await.unwrap();
    let erased = f.store.erase_subject(tenant, c.id, "req-1", &audit()).await.unwrap();
    assert_eq!((erased.contacts, erased.contact_changes), (1, 2));
    assert_eq!(f.store.get(tenant, c.id, &audit()).await.unwrap_err().code, ErrorCode::NotFound);
    assert!(f.keys.find_subject_key(tenant, c.id).await.unwrap().is_none(), "the erasure destroyed the key");
    let again = f.store.erase_subject(tenant, c.id, "req-1", &audit()).await.unwrap();
    assert_eq!((again.contacts, again.contact_changes), (0, 0));
    assert_eq!(rows(&f, "contacts").await, 1);
    assert_eq!(rows(&f, "contact_changes").await, 1, "only the other contact's history is left");
    let events = carnet_kit::outbox::entity::Entity::find().all(&f.db.read).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "contact.erased").count(), 1);
    // The e-mail is free again: the person can come back through a new, lawful entry.
    f.store.create(tenant, person("ada@example.org"), source(), &audit()).await.unwrap();
    f.store.delete(tenant, keep.id, &audit()).await.unwrap();
    assert!(f.keys.find_subject_key(tenant, keep.id).await.unwrap().is_none(), "a delete destroys the key too");
    assert_eq!(f.store.delete(tenant, keep.id, &audit()).await.unwrap_err().code, ErrorCode::NotFound);
});

store_test!(outbox_commits_with_the_change_only, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let c = f.store.create(tenant, person("ada@example.org"), source(), &audit()).await.unwrap();
    assert!(f.store.create(tenant, person("ada@example.org"), source(), &audit()).await.is_err());
    let bad = ContactPatch {
        set: ContactInput { email_opt: Some("nope".into()), ..Default::default() },
        ..Default::default()
    };
    assert!(f.store.update(tenant, c.id, &by("key:x"), bad).await.is_err());
    let count = carnet_kit::outbox::entity::Entity::find().count(&f.db.read).await.unwrap();
    assert_eq!(count, 2, "the create's event and its audit entry");
    assert_eq!(events(&f, "contact.upserted").await, 1);
});

store_test!(concurrent_creates_commit_together_and_fail_alone, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let existing = f.store.create(tenant, person("taken@example.org"), source(), &audit()).await.unwrap();
    // 40 creates at once: 30 distinct people, 5 copies of one new address, 4 of a stored one,
    // and one outside the field policy.
    let mut inputs: Vec<ContactInput> = (0..30).map(|i| person(&format!("p{i}@example.org"))).collect();
    inputs.extend((0..5).map(|_| person("twin@example.org")));
    inputs.extend((0..4).map(|_| person("TAKEN@example.org")));
    let mut bad = person("bad@example.org");
    bad.fields.insert("shoe_size".into(), FieldValue::Number(40.0));
    inputs.push(bad);
    let a = audit();
    let results =
        futures::future::join_all(inputs.into_iter().map(|input| f.store.create(tenant, input, source(), &a))).await;
    let created: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(created.len(), 31, "30 distinct people and one of the twins");
    let twin = created.iter().find(|c| c.email.as_deref() == Some("twin@example.org")).unwrap();
    for r in &results[30..35] {
        match r {
            Ok(c) => assert_eq!(c.id, twin.id),
            Err(e) => {
                assert_code(e, ErrorCode::AlreadyExists, "email");
                assert_eq!(e.existing_id_opt, Some(twin.id.to_string()));
            }
        }
    }
    for r in &results[35..39] {
        let e = r.as_ref().unwrap_err();
        assert_code(e, ErrorCode::AlreadyExists, "email");
        assert_eq!(e.existing_id_opt, Some(existing.id.to_string()));
    }
    assert_code(results[39].as_ref().unwrap_err(), ErrorCode::InvalidArgument, "fields.shoe_size");
    assert_eq!(rows(&f, "contacts").await, 32);
    assert_eq!(rows(&f, "contact_changes").await, 32);
    assert_eq!(events(&f, "contact.upserted").await, 32);
    assert_eq!(events(&f, "audit.recorded").await, 32, "one create entry each");
    // The keys of refused creates are destroyed right after their batch is answered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.keys.subject_ids(tenant).await.unwrap().len() != 32 {
        assert!(std::time::Instant::now() < deadline, "refused creates leave no key");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for c in created {
        assert_eq!(&f.store.get(tenant, c.id, &audit()).await.unwrap(), c);
    }
});

// Two writers on one database (two replicas on PostgreSQL, or `carnet up` and a CLI command on
// one SQLite file) racing on the same addresses: each address ends up held once, and every
// loser is told who holds it. On PostgreSQL the losing batch is retried create by create; on
// SQLite the second writer waits for the write lock.
store_test!(racing_writers_keep_one_person_once, |f: Fixture| async move {
    // The other process shares the key store (its own handle, its own cache).
    let other_process = ContactStore::new(db::connect(&f.url, 4).await.unwrap(), f.keys.clone());
    let tenant = Uuid::now_v7();
    let who = audit();
    for round in 0..5 {
        let emails: Vec<String> = (0..10).map(|i| format!("r{round}-{i}@example.org")).collect();
        let a = emails.iter().map(|e| f.store.create(tenant, person(e), source(), &who));
        let b = emails.iter().map(|e| other_process.create(tenant, person(e), source(), &who));
        let (ra, rb) = futures::future::join(futures::future::join_all(a), futures::future::join_all(b)).await;
        for (x, y) in ra.iter().zip(&rb) {
            let (winner, loser) = match (x, y) {
                (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
                other => panic!("exactly one create per address must win: {other:?}"),
            };
            assert_code(loser, ErrorCode::AlreadyExists, "email");
            assert_eq!(loser.existing_id_opt, Some(winner.id.to_string()));
        }
    }
    assert_eq!(rows(&f, "contacts").await, 50);
    assert_eq!(events(&f, "contact.upserted").await, 50);
});

/// The audit entries of the store's outbox, oldest first.
async fn audit_entries(f: &Fixture) -> Vec<carnet_proto::events::v1::AuditRecorded> {
    use sea_orm::QueryOrder as _;
    let rows = carnet_kit::outbox::entity::Entity::find()
        .order_by_asc(carnet_kit::outbox::entity::Column::Id)
        .all(&f.db.read)
        .await
        .unwrap();
    rows.iter()
        .filter_map(|r| match carnet_proto::events::v1::Event::decode(r.payload.as_slice()).unwrap().payload {
            Some(carnet_proto::events::v1::event::Payload::AuditRecorded(a)) => Some(a),
            _ => None,
        })
        .collect()
}

store_test!(changes_and_reads_are_audited_by_whom_with_keys_not_values, |f: Fixture| async move {
    let tenant = Uuid::now_v7();
    let clerk = by("key:clerk");
    let mailer = by("service:comms");
    let a = f.store.create(tenant, person("ada@example.org"), source(), &clerk).await.unwrap();
    let b = f.store.create(tenant, person("bob@example.org"), source(), &clerk).await.unwrap();
    let patch = ContactPatch {
        set: ContactInput { last_name_opt: Some("King".into()), ..Default::default() },
        reason_opt: Some("Ada asked".into()),
        ..Default::default()
    };
    f.store.update(tenant, a.id, &clerk, patch).await.unwrap();
    f.store.get(tenant, a.id, &mailer).await.unwrap();
    // A person listing or batch-reading views each contact; a service reading to send does not.
    f.store.list(tenant, "", 50, "", &clerk).await.unwrap();
    f.store.list(tenant, "", 50, "", &mailer).await.unwrap();
    f.store.get_many(tenant, &[a.id], &mailer).await.unwrap();
    f.store.get_many(tenant, &[b.id], &clerk).await.unwrap();
    f.store.set_flag(tenant, a.id, &clerk, FlagKind::Restriction, true, Some("Ada disputes".into())).await.unwrap();
    f.store.set_flag(tenant, a.id, &clerk, FlagKind::Objection, true, None).await.unwrap();
    f.store.export_subject(tenant, a.id, &clerk).await.unwrap();
    f.store.merge(tenant, a.id, b.id, &clerk).await.unwrap();
    f.store.erase_subject(tenant, a.id, "req-9", &clerk).await.unwrap();
    let c = f.store.create(tenant, person("cy@example.org"), source(), &clerk).await.unwrap();
    f.store.delete(tenant, c.id, &clerk).await.unwrap();
    f.store.erase_for_request(tenant, c.id, "req-10").await.unwrap();
    let entries = audit_entries(&f).await;
    let seen: Vec<(&str, &str, String)> =
        entries.iter().map(|e| (e.action.as_str(), e.actor.as_str(), e.record_id.clone())).collect();
    let (ai, bi, ci) = (a.id.to_string(), b.id.to_string(), c.id.to_string());
    assert_eq!(
        seen,
        [
            ("create", "key:clerk", ai.clone()),
            ("create", "key:clerk", bi.clone()),
            ("update", "key:clerk", ai.clone()),
            ("view", "service:comms", ai.clone()),
            ("view", "key:clerk", ai.clone()),
            ("view", "key:clerk", bi.clone()),
            ("view", "key:clerk", bi.clone()),
            ("restrict", "key:clerk", ai.clone()),
            ("object", "key:clerk", ai.clone()),
            ("export", "key:clerk", ai.clone()),
            ("merge", "key:clerk", ai.clone()),
            ("merge", "key:clerk", bi.clone()),
            ("erase", "key:clerk", ai.clone()),
            ("create", "key:clerk", ci.clone()),
            ("delete", "key:clerk", ci.clone()),
            ("erase", "service:dsar", ci.clone()),
        ]
    );
    assert!(
        entries.iter().all(|e| e.service == "contacts" && e.record_type == "contact" && e.subject_id == e.record_id)
    );
    assert_eq!(entries[2].fields, ["last_name"], "the keys that changed");
    assert_eq!(entries[0].fields, ["email", "first_name", "last_name"]);
    assert_eq!(entries[0].api, "test");
    assert_eq!((entries[15].api.as_str(), entries[15].request_id.as_str()), ("bus", "req-10"));
    let text = format!("{entries:?}").to_lowercase();
    for value in ["ada@", "lovelace", "king", "disputes", "asked", "example.org"] {
        assert!(!text.contains(value), "`{value}` in the audit trail");
    }
});

/// The schema change of issue 9 refuses to run over rows an earlier build wrote (it cannot
/// encrypt them: the keys live in another database) rather than drop them.
async fn migration_refuses_pre_release_rows(url: String) {
    use sea_orm::{Statement, Value as DbValue};
    let db = db::connect(&url, 1).await.unwrap();
    carnet_migrations::contacts::Migrator::up(&db.write, Some(3)).await.unwrap();
    let backend = db.backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => {
            "INSERT INTO erasure_tombstones (tenant_id, hash, field, request_id, created_at) VALUES ($1, 'h', 'email', 'r', $2)"
        }
        _ => {
            "INSERT INTO erasure_tombstones (tenant_id, hash, field, request_id, created_at) VALUES (?, 'h', 'email', 'r', ?)"
        }
    };
    let values = [DbValue::Uuid(Some(Uuid::now_v7())), DbValue::ChronoDateTimeUtc(Some(Utc::now()))];
    db.write.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await.unwrap();
    let err = carnet_migrations::contacts::Migrator::up(&db.write, None).await.unwrap_err();
    assert!(err.to_string().contains("pre-release build"), "{err}");
    // Nothing was dropped: the sealing migration (and what follows it) is still pending.
    let pending = carnet_migrations::contacts::Migrator::get_pending_migrations(&db.write).await.unwrap();
    let names: Vec<&str> = pending.iter().map(|m| m.name()).collect();
    assert_eq!(names.first().copied(), Some("m20261129_000004_sealed_personal_data"), "{names:?}");
    db.close().await;
}

#[tokio::test]
async fn test_migration_refuses_pre_release_rows_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    migration_refuses_pre_release_rows(db::sqlite_url(&dir.path().join("contacts.db"))).await;
}

#[tokio::test]
async fn test_migration_refuses_pre_release_rows_postgres() {
    let Some(server) = carnet_tests::postgres::server_url() else { return };
    migration_refuses_pre_release_rows(carnet_tests::postgres::fresh_database(&server).await).await;
}
