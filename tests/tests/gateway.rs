//! The REST gateway end to end, over real HTTP against a node running every target: the role
//! matrix, tenant isolation, bad input at the edge, credentials (API keys and OIDC JWTs), rate
//! limiting and the OpenAPI document.

#[path = "../../plugins/host/tests/support/wat.rs"]
mod wat_components;

use base64::Engine as _;
use carnet_gateway::roles::Role;
use carnet_kit::Permission;
use carnet_tests::http::{Answer, Http};
use carnet_tests::{Backend, Sandbox};
use serde_json::{Value, json};

fn contact_body(email: &str) -> Value {
    json!({"email": email, "first_name": "Ada", "source": {"channel": "api", "detail": "test-suite"}})
}

async fn create(http: &Http, key: &str, email: &str) -> String {
    let a = http.json("POST", "/v1/contacts", Some(key), Some(contact_body(email))).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    a.json["id"].as_str().unwrap().to_string()
}

async fn count(http: &Http, key: &str) -> usize {
    let a = http.json("GET", "/v1/contacts?limit=500", Some(key), None).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    a.json["contacts"].as_array().unwrap().len()
}

/// One endpoint of the matrix: how to call it and the permission it needs.
struct Endpoint {
    method: &'static str,
    path: &'static str,
    permission: Permission,
    ok: u16,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint { method: "GET", path: "/v1/field-policy", permission: Permission::ContactsRead, ok: 200 },
    Endpoint { method: "PUT", path: "/v1/field-policy", permission: Permission::PolicyManage, ok: 200 },
    Endpoint { method: "POST", path: "/v1/contacts", permission: Permission::ContactsWrite, ok: 201 },
    Endpoint { method: "GET", path: "/v1/contacts", permission: Permission::ContactsRead, ok: 200 },
    Endpoint { method: "GET", path: "/v1/contacts/{id}", permission: Permission::ContactsRead, ok: 200 },
    Endpoint { method: "PATCH", path: "/v1/contacts/{id}", permission: Permission::ContactsWrite, ok: 200 },
    Endpoint { method: "DELETE", path: "/v1/contacts/{id}", permission: Permission::ContactsDelete, ok: 204 },
    Endpoint { method: "POST", path: "/v1/contacts/{id}/merge", permission: Permission::ContactsWrite, ok: 200 },
    Endpoint { method: "PUT", path: "/v1/contacts/{id}/restriction", permission: Permission::ContactsWrite, ok: 200 },
    Endpoint { method: "PUT", path: "/v1/contacts/{id}/objection", permission: Permission::ContactsWrite, ok: 200 },
    Endpoint { method: "GET", path: "/v1/contacts/{id}/history", permission: Permission::ContactsRead, ok: 200 },
    Endpoint { method: "GET", path: "/v1/contacts/{id}/export", permission: Permission::ContactsExport, ok: 200 },
    Endpoint { method: "POST", path: "/v1/purposes", permission: Permission::ConsentManage, ok: 201 },
    Endpoint { method: "GET", path: "/v1/purposes", permission: Permission::ContactsRead, ok: 200 },
    Endpoint { method: "PUT", path: "/v1/purposes/{purpose}/notice", permission: Permission::ConsentManage, ok: 200 },
    Endpoint { method: "POST", path: "/v1/consents", permission: Permission::ConsentManage, ok: 201 },
    Endpoint { method: "GET", path: "/v1/contacts/{id}/consents", permission: Permission::ContactsRead, ok: 200 },
    Endpoint { method: "POST", path: "/v1/consents/check", permission: Permission::ContactsRead, ok: 200 },
    Endpoint { method: "POST", path: "/v1/forms", permission: Permission::ConsentManage, ok: 201 },
    Endpoint { method: "POST", path: "/v1/templates", permission: Permission::CommsSend, ok: 201 },
    Endpoint { method: "POST", path: "/v1/messages", permission: Permission::CommsSend, ok: 202 },
    Endpoint { method: "POST", path: "/v1/campaigns", permission: Permission::CommsSend, ok: 201 },
    Endpoint { method: "POST", path: "/v1/sequences", permission: Permission::CommsSend, ok: 201 },
    Endpoint { method: "POST", path: "/v1/consent-requests", permission: Permission::CommsSend, ok: 202 },
    Endpoint { method: "POST", path: "/v1/bounces", permission: Permission::CommsSend, ok: 200 },
    Endpoint { method: "POST", path: "/v1/calls", permission: Permission::CommsSend, ok: 201 },
    Endpoint { method: "GET", path: "/v1/contacts/{id}/timeline", permission: Permission::ContactsRead, ok: 200 },
    Endpoint { method: "POST", path: "/v1/dsar", permission: Permission::DsarManage, ok: 201 },
    Endpoint { method: "GET", path: "/v1/dsar", permission: Permission::DsarManage, ok: 200 },
    Endpoint { method: "POST", path: "/v1/legal-holds", permission: Permission::DsarManage, ok: 201 },
    Endpoint { method: "GET", path: "/v1/erasure-ledger", permission: Permission::DsarManage, ok: 200 },
    Endpoint { method: "GET", path: "/v1/audit", permission: Permission::AuditRead, ok: 200 },
    Endpoint { method: "GET", path: "/v1/audit/verify", permission: Permission::AuditRead, ok: 200 },
    Endpoint { method: "GET", path: "/v1/audit/export", permission: Permission::AuditRead, ok: 200 },
    Endpoint { method: "POST", path: "/v1/plugins", permission: Permission::EnrichmentAdmin, ok: 201 },
    Endpoint { method: "GET", path: "/v1/plugins", permission: Permission::ContactsRead, ok: 200 },
    Endpoint { method: "GET", path: "/v1/enrichment/settings", permission: Permission::ContactsRead, ok: 200 },
    Endpoint { method: "PUT", path: "/v1/enrichment/settings", permission: Permission::EnrichmentAdmin, ok: 200 },
    Endpoint { method: "GET", path: "/v1/enrichment/runs", permission: Permission::EnrichmentAdmin, ok: 200 },
    Endpoint { method: "POST", path: "/v1/contacts/{id}/enrich", permission: Permission::ContactsWrite, ok: 200 },
    Endpoint {
        method: "GET",
        path: "/v1/contacts/{id}/enrichment-runs",
        permission: Permission::ContactsRead,
        ok: 200,
    },
    Endpoint { method: "POST", path: "/v1/api-keys", permission: Permission::KeysManage, ok: 201 },
    Endpoint { method: "GET", path: "/v1/api-keys", permission: Permission::KeysManage, ok: 200 },
    Endpoint { method: "DELETE", path: "/v1/api-keys/{key}", permission: Permission::KeysManage, ok: 200 },
];

/// The role table of docs/roles.md, written out independently of the code that enforces it.
fn documented_permissions(role: Role) -> &'static [&'static str] {
    match role {
        Role::Owner => &[
            "contacts:read",
            "contacts:write",
            "contacts:delete",
            "contacts:export",
            "policy:manage",
            "consent:manage",
            "comms:send",
            "enrichment:admin",
            "dsar:manage",
            "audit:read",
            "keys:manage",
        ],
        Role::Admin => &[
            "contacts:read",
            "contacts:write",
            "contacts:delete",
            "contacts:export",
            "policy:manage",
            "consent:manage",
            "comms:send",
            "enrichment:admin",
            "audit:read",
            "keys:manage",
        ],
        Role::PrivacyOfficer => &[
            "contacts:read",
            "contacts:write",
            "contacts:delete",
            "contacts:export",
            "policy:manage",
            "consent:manage",
            "dsar:manage",
            "audit:read",
        ],
        Role::Sales => &["contacts:read", "contacts:write", "comms:send"],
        Role::Marketing => &["contacts:read", "consent:manage", "comms:send"],
        Role::ReadOnly => &["contacts:read"],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_every_role_against_every_endpoint() {
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (tenant, owner) = sb.tenant("Matrix").await;
    let purpose = json!({"key": "newsletter", "lawful_basis": "consent", "notice": "Monthly news by e-mail."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&owner), Some(purpose)).await.status, 201);
    // Service mail under a contract (recorded per contact before a message).
    let purpose = json!({"key": "service", "lawful_basis": "contract", "notice": "Account notices."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&owner), Some(purpose)).await.status, 201);
    let mut n = 0;
    for role in Role::ALL {
        let key = sb.key(tenant, role).await;
        for ep in ENDPOINTS {
            n += 1;
            let id = create(&http, &owner, &format!("m{n}@example.org")).await;
            let other = create(&http, &owner, &format!("m{n}-dup@example.org")).await;
            let victim_key = sb.key_store().await.create_key(tenant, Role::ReadOnly, "victim", "test").await.unwrap().0;
            let path = ep
                .path
                .replace("{id}", &id)
                .replace("{key}", &victim_key.to_string())
                .replace("{purpose}", "newsletter");
            let body = match (ep.method, ep.path) {
                ("PUT", "/v1/field-policy") => Some(json!({"fields": [
                    {"key": "email", "type": "email", "category": "contact"},
                    {"key": "first_name", "type": "string", "category": "identity"},
                    {"key": "last_name", "type": "string", "category": "identity"},
                    {"key": "phone", "type": "phone", "category": "contact"}]})),
                ("POST", "/v1/contacts") => Some(contact_body(&format!("m{n}-new@example.org"))),
                ("PATCH", _) => Some(json!({"last_name": "Lovelace", "reason": "matrix"})),
                ("POST", "/v1/contacts/{id}/merge") => Some(json!({"other_id": other})),
                ("PUT", p) if p.ends_with("restriction") || p.ends_with("objection") => {
                    Some(json!({"active": true, "reason": "matrix"}))
                }
                ("POST", "/v1/api-keys") => Some(json!({"role": "read_only", "label": "matrix"})),
                ("POST", "/v1/purposes") => {
                    Some(json!({"key": format!("p{n}"), "lawful_basis": "consent", "notice": "Text."}))
                }
                ("PUT", "/v1/purposes/{purpose}/notice") => Some(json!({"notice": format!("Monthly news, take {n}.")})),
                ("POST", "/v1/consents") => Some(json!({"contact_id": id, "purpose": "newsletter", "action": "grant",
                    "source": "api", "evidence": {"ip": "198.51.100.4"}})),
                ("POST", "/v1/consents/check") => {
                    Some(json!({"checks": [{"contact_id": id, "purpose": "newsletter"}]}))
                }
                ("POST", "/v1/dsar") => Some(json!({"kind": "access", "contact_id": id})),
                ("POST", "/v1/legal-holds") => Some(json!({"contact_id": id, "reason": "audit"})),
                ("POST", "/v1/templates") => {
                    Some(json!({"name": "t", "purpose": "service", "subject": "Hi {{first_name}}", "body": "B"}))
                }
                ("POST", "/v1/messages") => {
                    Some(json!({"contact_id": id, "purpose": "service", "subject": "S", "body": "B"}))
                }
                ("POST", "/v1/campaigns") => {
                    Some(json!({"purpose": "service", "subject": "S", "body": "B", "contact_ids": [id]}))
                }
                ("POST", "/v1/sequences") => Some(json!({"name": "s", "purpose": "service", "contact_ids": [id],
                    "steps": [{"delay_seconds": 60, "subject": "S", "body": "B"}]})),
                ("POST", "/v1/consent-requests") => Some(json!({"purpose": "newsletter", "contact_ids": [id]})),
                ("POST", "/v1/bounces") => Some(json!({"email": format!("bounced{n}@example.org")})),
                ("POST", "/v1/calls") => Some(json!({"contact_id": id, "direction": "inbound",
                    "started_at": "2026-11-29T09:00:00Z", "duration_seconds": 10, "outcome": "connected"})),
                ("POST", "/v1/plugins") => Some(json!({"enabled": true,
                    "manifest": "name = \"echo\"\nversion = \"1.0.0\"\napi_version = \"0.1.0\"\nreads = [\"email\"]\nwrites = [\"email\"]\n",
                    "component": base64::engine::general_purpose::STANDARD.encode(wat_components::component(wat_components::ECHO))})),
                ("PUT", "/v1/enrichment/settings") => Some(json!({"auto_enrichment": false})),
                ("POST", "/v1/forms") => {
                    Some(json!({"name": format!("Form {n}"), "fields": ["email"], "consents": ["newsletter"]}))
                }
                _ => None,
            };
            if ep.path == "/v1/messages" {
                let basis = json!({"contact_id": id, "purpose": "service", "action": "grant", "source": "api",
                    "lawful_basis": "contract", "evidence": {"justification": "customer account"}});
                let granted = http.json("POST", "/v1/consents", Some(&owner), Some(basis)).await;
                assert_eq!(granted.status, 201);
                // The grant moves the contact's last activity over the bus: wait for it, so the
                // snapshot below is taken after the owner's own change.
                let at = granted.json["at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
                loop {
                    let c = http.json("GET", &format!("/v1/contacts/{id}"), Some(&owner), None).await.json;
                    let last =
                        c["last_activity_at"].as_str().and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok());
                    if last.is_some_and(|l| l >= at) {
                        break;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "the grant never reached the contact");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            let before = http.json("GET", &format!("/v1/contacts/{id}"), Some(&owner), None).await.json;
            let a = http.json(ep.method, &path, Some(&key), body).await;
            let allowed = documented_permissions(role).contains(&ep.permission.as_str());
            if allowed {
                assert_eq!(a.status, ep.ok, "{role} {} {}: {:?}", ep.method, ep.path, a.json);
            } else {
                assert_eq!(a.status, 403, "{role} {} {}: {:?}", ep.method, ep.path, a.json);
                assert_eq!(a.code(), "permission_denied");
                assert!(a.json["detail"].as_str().unwrap().contains(ep.permission.as_str()));
                let after = http.json("GET", &format!("/v1/contacts/{id}"), Some(&owner), None).await.json;
                assert_eq!(before, after, "{role} {} {} changed the contact", ep.method, ep.path);
            }
        }
    }
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_tenant_a_cannot_touch_tenant_b() {
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (_, a_key) = sb.tenant("A").await;
    let (_, b_key) = sb.tenant("B").await;
    let b_contact = create(&http, &b_key, "b-person@example.org").await;
    let a_contact = create(&http, &a_key, "a-person@example.org").await;
    let path = format!("/v1/contacts/{b_contact}");
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", path.clone(), None),
        ("PATCH", path.clone(), Some(json!({"first_name": "Mallory"}))),
        ("DELETE", path.clone(), None),
        ("GET", format!("{path}/export"), None),
        ("GET", format!("{path}/history"), None),
        ("PUT", format!("{path}/restriction"), Some(json!({"active": true}))),
        ("PUT", format!("{path}/objection"), Some(json!({"active": true}))),
        ("POST", format!("{path}/merge"), Some(json!({"other_id": a_contact}))),
        ("POST", format!("/v1/contacts/{a_contact}/merge"), Some(json!({"other_id": b_contact}))),
    ];
    for (method, p, body) in calls {
        let a = http.json(method, &p, Some(&a_key), body).await;
        assert_eq!(a.status, 404, "{method} {p}: {:?}", a.json);
        assert_eq!(a.code(), "not_found");
    }
    let search = http.json("GET", "/v1/contacts?q=b-person@example.org", Some(&a_key), None).await;
    assert_eq!(search.json["contacts"].as_array().unwrap().len(), 0);
    let b = http.json("GET", &path, Some(&b_key), None).await;
    assert_eq!(b.status, 200);
    assert_eq!(b.json["first_name"], "Ada");
    assert_eq!(b.json["version"], 1, "nothing changed");
    assert_eq!(b.json["restriction"]["active"], false);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_bad_input_at_the_edge_is_refused_and_nothing_stored() {
    let sb = Sandbox::start_with(Backend::Sqlite, &[("gateway.max_body_bytes", "4096".to_string())]).await;
    let http = sb.http();
    let (_, key) = sb.tenant("Edge").await;
    let post = |body: Value| http.json("POST", "/v1/contacts", Some(&key), Some(body));

    let mut body = contact_body("x@example.org");
    body["favourite_colour"] = json!("blue");
    let a = post(body).await;
    assert_eq!((a.status, a.code(), a.field()), (400, "invalid_argument", "favourite_colour"));
    assert_eq!(a.headers["content-type"], "application/problem+json");

    let mut body = contact_body("x@example.org");
    body["source"]["via"] = json!("fax");
    let a = post(body).await;
    assert_eq!((a.status, a.field()), (400, "source.via"));

    let mut body = contact_body("x@example.org");
    body["first_name"] = json!(["not", "a", "string"]);
    let a = post(body).await;
    assert_eq!((a.status, a.field()), (400, "first_name"));

    let mut body = contact_body("x@example.org");
    body["fields"] = json!({"shoe_size": 40});
    let a = post(body).await;
    assert_eq!((a.status, a.field()), (400, "fields.shoe_size"), "outside the field policy");

    let mut body = contact_body("secret-value-not-an-email");
    body["source"]["channel"] = json!("api");
    let a = post(body).await;
    assert_eq!((a.status, a.field()), (400, "email"));
    assert!(!a.body.windows(12).any(|w| w == b"secret-value"), "values are never echoed");

    let a = post(json!({"email": "y@example.org"})).await;
    assert_eq!((a.status, a.field()), (400, "source"));

    let huge = json!({"email": "z@example.org", "first_name": "x".repeat(10_000), "source": {"channel": "api", "detail": "d"}});
    let a = post(huge).await;
    assert_eq!((a.status, a.code()), (413, "payload_too_large"));

    let a = http.raw("POST", "/v1/contacts", Some(&key), Some("application/json"), b"{\"email\":".to_vec()).await;
    assert_eq!((a.status, a.field()), (400, "body"));
    let a = http.raw("POST", "/v1/contacts", Some(&key), Some("text/plain"), b"{}".to_vec()).await;
    assert_eq!((a.status, a.field()), (400, "content-type"));

    let a = http.json("GET", "/v1/contacts/not-an-id", Some(&key), None).await;
    assert_eq!((a.status, a.field()), (400, "id"));
    let a = http
        .json(
            "POST",
            &format!("/v1/contacts/{}/merge", uuid::Uuid::now_v7()),
            Some(&key),
            Some(json!({"other_id": "42"})),
        )
        .await;
    assert_eq!((a.status, a.field()), (400, "other_id"));
    let a = http.json("GET", "/v1/contacts?limit=many", Some(&key), None).await;
    assert_eq!((a.status, a.field()), (400, "limit"));
    let a = http.json("GET", "/v1/contacts?colour=red", Some(&key), None).await;
    assert_eq!((a.status, a.field()), (400, "colour"));

    assert_eq!(count(&http, &key).await, 0, "no refused request stored anything");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_credentials_missing_forged_and_revoked_are_refused() {
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (tenant, owner) = sb.tenant("Keys").await;
    let a = http.json("GET", "/v1/contacts", None, None).await;
    assert_eq!((a.status, a.code()), (401, "unauthenticated"));
    let forged = format!("{}{}", &owner[..owner.len() - 4], "AAAA");
    let a = http.json("GET", "/v1/contacts", Some(&forged), None).await;
    assert_eq!((a.status, a.code()), (401, "unauthenticated"));
    let a = http.json("GET", "/v1/contacts", Some("carnet_garbage"), None).await;
    assert_eq!(a.status, 401);
    let a = http.json("GET", "/v1/contacts", Some("eyJhbGciOiJub25lIn0.e30."), None).await;
    assert_eq!(a.status, 401, "JWTs are refused when OIDC is off");

    // Keys are created through the API, shown once, and revoked at once.
    let created =
        http.json("POST", "/v1/api-keys", Some(&owner), Some(json!({"role": "sales", "label": "crm-sync"}))).await;
    assert_eq!(created.status, 201);
    let sales = created.json["api_key"].as_str().unwrap().to_string();
    assert_eq!(http.json("GET", "/v1/contacts", Some(&sales), None).await.status, 200);
    let listed = http.json("GET", "/v1/api-keys", Some(&owner), None).await;
    assert!(!listed.body.windows(20).any(|w| sales.as_bytes().windows(20).any(|s| s == w)), "keys are never listed");
    let id = created.json["id"].as_str().unwrap();
    assert_eq!(http.json("DELETE", &format!("/v1/api-keys/{id}"), Some(&owner), None).await.status, 200);
    let a = http.json("GET", "/v1/contacts", Some(&sales), None).await;
    assert_eq!((a.status, a.code()), (401, "unauthenticated"), "revoked keys stop working at once");

    // An admin cannot mint an owner key.
    let admin = sb.key(tenant, Role::Admin).await;
    let a = http.json("POST", "/v1/api-keys", Some(&admin), Some(json!({"role": "owner"}))).await;
    assert_eq!((a.status, a.code()), (403, "permission_denied"));
    let a = http.json("POST", "/v1/api-keys", Some(&owner), Some(json!({"role": "root"}))).await;
    assert_eq!((a.status, a.field()), (400, "role"));
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_rate_limit_answers_429_with_retry_after() {
    let sb = Sandbox::start_with(
        Backend::Sqlite,
        &[("gateway.rate_limit_per_second", "1".to_string()), ("gateway.rate_limit_burst", "3".to_string())],
    )
    .await;
    let http = sb.http();
    let (_, key) = sb.tenant("Busy").await;
    let answers: Vec<Answer> =
        futures::future::join_all((0..6).map(|_| http.json("GET", "/v1/contacts", Some(&key), None))).await;
    let limited: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(limited.len() >= 2, "{:?}", answers.iter().map(|a| a.status).collect::<Vec<_>>());
    assert_eq!(limited[0].code(), "resource_exhausted");
    let retry: u64 = limited[0].headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_openapi_document_lists_every_route() {
    let sb = Sandbox::monolith().await;
    let doc = sb.http().json("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert!(doc.json["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.json["paths"].as_object().unwrap();
    for ep in ENDPOINTS {
        let path = ep.path.replace("{key}", "{id}").replace("{purpose}", "{key}");
        let item = paths.get(&path).unwrap_or_else(|| panic!("{path} missing from /openapi.json"));
        assert!(item.get(ep.method.to_lowercase()).is_some(), "{} {path} missing", ep.method);
    }
    assert!(doc.json["components"]["schemas"]["Problem"].is_object());
    assert!(doc.json["components"]["schemas"]["CreateContactBody"].is_object());
    let health = sb.http().json("GET", "/readyz", None, None).await;
    assert_eq!(health.status, 200);
    sb.stop().await;
}

/// Signs a JWT with a fixture key of the gateway's tests.
fn jwt(key_file: &str, kid: &str, claims: Value) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/tests/fixtures/");
    let pem = std::fs::read(format!("{dir}{key_file}")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_oidc_tokens_are_a_second_way_in() {
    let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/tests/fixtures/jwks.json");
    let sb = Sandbox::start_with(
        Backend::Sqlite,
        &[
            ("gateway.oidc.issuer", "https://idp.example.test".to_string()),
            ("gateway.oidc.audience", "carnet".to_string()),
            ("gateway.oidc.jwks_file", jwks.to_string()),
        ],
    )
    .await;
    let http = sb.http();
    let (tenant, owner) = sb.tenant("Federated").await;
    let id = create(&http, &owner, "fed@example.org").await;
    let now = chrono::Utc::now().timestamp();
    let claims = |roles: Value, aud: &str, exp: i64| {
        json!({"iss": "https://idp.example.test", "aud": aud, "sub": "alice@corp.example", "exp": exp, "iat": now,
               "carnet_tenant": tenant.to_string(), "carnet_roles": roles})
    };
    let sales = jwt("rsa1_private.pem", "rsa-1", claims(json!(["sales"]), "carnet", now + 300));
    let a = http.json("GET", &format!("/v1/contacts/{id}"), Some(&sales), None).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    let a = http.json("GET", &format!("/v1/contacts/{id}/export"), Some(&sales), None).await;
    assert_eq!((a.status, a.code()), (403, "permission_denied"), "sales may view but not export");
    let a = http.json("PATCH", &format!("/v1/contacts/{id}"), Some(&sales), Some(json!({"last_name": "Fed"}))).await;
    assert_eq!(a.status, 200);
    let history = http.json("GET", &format!("/v1/contacts/{id}/history"), Some(&owner), None).await;
    let actor = history.json["changes"][1]["actor"].as_str().unwrap().to_string();
    assert!(actor.starts_with("oidc:") && !actor.contains("alice"), "the subject is pseudonymised: {actor}");

    let refused = [
        ("expired", jwt("rsa1_private.pem", "rsa-1", claims(json!(["owner"]), "carnet", now - 3600))),
        ("wrong audience", jwt("rsa1_private.pem", "rsa-1", claims(json!(["owner"]), "someone-else", now + 300))),
        ("signed by another key", jwt("rsa2_private.pem", "rsa-1", claims(json!(["owner"]), "carnet", now + 300))),
    ];
    for (what, token) in refused {
        let a = http.json("GET", &format!("/v1/contacts/{id}"), Some(&token), None).await;
        assert_eq!((a.status, a.code()), (401, "unauthenticated"), "{what}: {:?}", a.json);
    }
    let no_role = jwt("rsa1_private.pem", "rsa-1", claims(json!(["janitor"]), "carnet", now + 300));
    let a = http.json("GET", &format!("/v1/contacts/{id}"), Some(&no_role), None).await;
    assert_eq!(a.status, 403);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_grpc_call_without_signed_caller_is_refused_behind_the_gateway() {
    use carnet_proto::contacts::v1::ListContactsRequest;
    use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
    let sb = Sandbox::monolith().await;
    let mut direct = ContactsServiceClient::new(sb.channel());
    let status = direct.list_contacts(ListContactsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_consent_over_http_versions_checks_and_refusals() {
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (_, key) = sb.tenant("Consent").await;
    let id = create(&http, &key, "ada@example.org").await;
    let purpose =
        json!({"key": "newsletter", "description": "News", "lawful_basis": "consent", "notice": "Version one."});
    let created = http.json("POST", "/v1/purposes", Some(&key), Some(purpose)).await;
    assert_eq!((created.status, created.json["current_version"].as_u64()), (201, Some(1)));
    let grant = json!({"contact_id": id, "purpose": "newsletter", "action": "grant", "source": "web_form",
        "evidence": {"form_id": "f1", "ip": "192.0.2.1", "user_agent": "test"}});
    let record = http.json("POST", "/v1/consents", Some(&key), Some(grant)).await;
    assert_eq!(record.status, 201, "{:?}", record.json);
    assert_eq!(record.json["notice_version"], 1);
    assert!(!record.body.windows(9).any(|w| w == b"192.0.2.1"), "the address is never returned");
    let v2 =
        http.json("PUT", "/v1/purposes/newsletter/notice", Some(&key), Some(json!({"notice": "Version two."}))).await;
    assert_eq!(v2.json["current_version"], 2);
    let p = http.json("GET", "/v1/purposes/newsletter", Some(&key), None).await;
    assert_eq!(p.json["notices"][0]["text"], "Version one.");
    assert_eq!(p.json["notices"][1]["text"], "Version two.");
    let check = json!({"checks": [{"contact_id": id, "purpose": "newsletter"}, {"contact_id": id, "purpose": "sms"}]});
    let r = http.json("POST", "/v1/consents/check", Some(&key), Some(check.clone())).await;
    assert_eq!(r.json["results"][0]["allowed"], true);
    assert_eq!(r.json["results"][0]["reason"], "granted");
    assert_eq!(r.json["results"][0]["notice_version"], 1, "the consent keeps the version it was given under");
    assert_eq!(r.json["results"][1]["reason"], "unknown_purpose");
    let withdraw = json!({"contact_id": id, "purpose": "newsletter", "action": "withdraw", "source": "api"});
    assert_eq!(http.json("POST", "/v1/consents", Some(&key), Some(withdraw)).await.status, 201);
    let r = http.json("POST", "/v1/consents/check", Some(&key), Some(check)).await;
    assert_eq!(
        (r.json["results"][0]["allowed"].as_bool(), r.json["results"][0]["reason"].as_str()),
        (Some(false), Some("withdrawn"))
    );
    let consents = http.json("GET", &format!("/v1/contacts/{id}/consents"), Some(&key), None).await;
    assert_eq!(consents.json["history"].as_array().unwrap().len(), 2);
    assert_eq!(consents.json["current"][0]["status"], "withdrawn");

    let bad = json!({"contact_id": id, "purpose": "newsletter", "action": "maybe", "source": "api"});
    let a = http.json("POST", "/v1/consents", Some(&key), Some(bad)).await;
    assert_eq!((a.status, a.field()), (400, "action"));
    let bad = json!({"key": "Bad Key", "lawful_basis": "consent", "notice": "x"});
    let a = http.json("POST", "/v1/purposes", Some(&key), Some(bad)).await;
    assert_eq!((a.status, a.field()), (400, "key"));
    let bad = json!({"key": "x", "lawful_basis": "because", "notice": "x"});
    let a = http.json("POST", "/v1/purposes", Some(&key), Some(bad)).await;
    assert_eq!((a.status, a.field()), (400, "lawful_basis"));
    let a = http
        .json(
            "POST",
            "/v1/consents/check",
            Some(&key),
            Some(json!({"checks": [{"contact_id": "nope", "purpose": "x"}]})),
        )
        .await;
    assert_eq!((a.status, a.field()), (400, "checks[0].contact_id"));
    sb.stop().await;
}
