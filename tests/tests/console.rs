//! The console at `/console` over HTTP: sign-in (API keys, and the OIDC provider by
//! authorization code + PKCE against a tiny provider in the test), sealed sessions, CSRF, flash
//! messages, API refusals shown with code and field, and read-only pages without a mutating
//! control. The browser journeys are in console_journeys.rs.

use carnet_gateway::roles::Role;
use carnet_tests::Sandbox;
use carnet_tests::console::{form, get, hidden, html, location, post, set_cookies, sign_in};
use carnet_tests::http::Http;
use serde_json::{Value, json};

async fn contact(http: &Http, key: &str, first: &str, last: &str, email: &str, source: Value) -> String {
    let body = json!({"email": email, "first_name": first, "last_name": last, "source": source});
    let a = http.json("POST", "/v1/contacts", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    a.json["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_console_sign_in_refuses_bad_keys_and_forged_or_missing_cookies() {
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (_, owner) = sb.tenant("Console").await;
    // No session: every page sends the browser to the sign-in page.
    for path in ["/console", "/console/contacts", "/console/privacy", "/console/enrichment"] {
        let a = http.raw("GET", path, None, None, vec![]).await;
        assert_eq!((a.status, a.headers["location"].to_str().unwrap()), (303, "/console/login"), "{path}");
    }
    // A wrong key is refused with the API's own code, and no cookie is set.
    let token = hidden(&html(&http.raw("GET", "/console/login", None, None, vec![]).await), "_login");
    let body = form(&[("_login", &token), ("api_key", "carnet_0000_nope")]);
    let a = http.raw("POST", "/console/login", None, Some("application/x-www-form-urlencoded"), body).await;
    assert_eq!(a.status, 303);
    assert!(a.headers["location"].to_str().unwrap().contains("unauthenticated"), "{:?}", a.headers);
    assert!(a.headers.get("set-cookie").is_none());
    let refusal = html(&http.raw("GET", a.headers["location"].to_str().unwrap(), None, None, vec![]).await);
    assert!(refusal.contains("Sign-in refused: unauthenticated"), "{refusal}");
    let spoofed = html(&http.raw("GET", "/console/login?err=your+key+moved+to+evil.example", None, None, vec![]).await);
    assert!(!spoofed.contains("evil.example"), "a message the console did not write is not shown: {spoofed}");
    // A sign-in form not served here is refused.
    let body = form(&[("_login", "1.forged"), ("api_key", &owner)]);
    let a = http.raw("POST", "/console/login", None, Some("application/x-www-form-urlencoded"), body).await;
    assert_eq!(a.status, 403);
    // A good key signs in; a cookie altered by one character is refused.
    let cookie = sign_in(&http, &owner).await;
    assert_eq!(get(&http, &cookie, "/console/contacts").await.status, 200);
    let mut forged = cookie.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let a = get(&http, &forged, "/console/contacts").await;
    assert_eq!((a.status, a.headers["location"].to_str().unwrap()), (303, "/console/login"));
    // A revoked key ends the session at the next page.
    let created = http.json("POST", "/v1/api-keys", Some(&owner), Some(json!({"role": "sales"}))).await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    let sales_cookie = sign_in(&http, created.json["api_key"].as_str().unwrap()).await;
    assert_eq!(get(&http, &sales_cookie, "/console/contacts").await.status, 200);
    let key_path = format!("/v1/api-keys/{}", created.json["id"].as_str().unwrap());
    assert_eq!(http.json("DELETE", &key_path, Some(&owner), None).await.status, 200);
    let a = get(&http, &sales_cookie, "/console/contacts").await;
    assert_eq!(
        (a.status, a.headers["location"].to_str().unwrap()),
        (303, "/console/login"),
        "a revoked key's session is over"
    );
    // Signing out clears the cookie.
    let page = html(&get(&http, &cookie, "/console/contacts").await);
    let out = post(&http, &cookie, "/console/logout", &[("_csrf", &hidden(&page, "_csrf"))]).await;
    assert!(out.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_console_forms_need_the_session_token_and_read_only_gets_no_control() {
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (tenant_id, owner) = sb.tenant("Console").await;
    let id =
        contact(&http, &owner, "Ada", "Lovelace", "ada@example.org", json!({"channel": "api", "detail": "t"})).await;
    let owner_cookie = sign_in(&http, &owner).await;
    // Without the session's token, or with another session's, nothing changes.
    let path = format!("/console/contacts/{id}/restriction");
    let a = post(&http, &owner_cookie, &path, &[("active", "true"), ("reason", "x")]).await;
    assert_eq!(a.status, 403);
    let other = sign_in(&http, &owner).await;
    let other_token = hidden(&html(&get(&http, &other, "/console/contacts").await), "_csrf");
    let a = post(&http, &owner_cookie, &path, &[("active", "true"), ("reason", "x"), ("_csrf", &other_token)]).await;
    assert_eq!(a.status, 403);
    let c = http.json("GET", &format!("/v1/contacts/{id}"), Some(&owner), None).await;
    assert_eq!(c.json["restriction"]["active"], false);
    // With it, the restriction goes through the API.
    let token = hidden(&html(&get(&http, &owner_cookie, "/console/contacts").await), "_csrf");
    let a =
        post(&http, &owner_cookie, &path, &[("active", "true"), ("reason", "accuracy contested"), ("_csrf", &token)])
            .await;
    assert_eq!(a.status, 303);
    assert!(a.headers["location"].to_str().unwrap().contains("ok="), "{:?}", a.headers);
    let c = http.json("GET", &format!("/v1/contacts/{id}"), Some(&owner), None).await;
    assert_eq!(c.json["restriction"]["active"], true);
    // An API refusal comes back with its code and the field it names.
    let a = post(
        &http,
        &owner_cookie,
        "/console/contacts",
        &[("_csrf", &token), ("email", "not-an-address"), ("detail", "x")],
    )
    .await;
    let shown = html(&get(&http, &owner_cookie, a.headers["location"].to_str().unwrap()).await);
    assert!(shown.contains("invalid_argument (email)"), "{shown}");
    // A message in a link the console did not make (or made for another session) is not shown.
    let spoofed = html(&get(&http, &owner_cookie, "/console/contacts?err=call+0800+to+unlock&tag=00").await);
    assert!(!spoofed.contains("0800"), "{spoofed}");
    let theirs = html(&get(&http, &other, a.headers["location"].to_str().unwrap()).await);
    assert!(!theirs.contains("invalid_argument (email)"), "{theirs}");

    // A read-only user sees the data and no control that changes anything.
    let reader = sb.key(tenant_id, Role::ReadOnly).await;
    let cookie = sign_in(&http, &reader).await;
    for page in [
        "/console/contacts".to_string(),
        format!("/console/contacts/{id}"),
        "/console/campaigns".into(),
        "/console/consent".into(),
        "/console/enrichment".into(),
        "/console/settings/fields".into(),
    ] {
        let a = get(&http, &cookie, &page).await;
        assert_eq!(a.status, 200, "{page}");
        let body = html(&a);
        let posts = body.matches("method=\"post\"").count();
        assert_eq!(posts, 1, "{page}: only the sign-out form posts: {body}");
        assert!(!body.contains("id=\"export\"") && !body.contains("id=\"forget\""), "{page}");
    }
    let headers = [("cookie", cookie.clone()), ("x-request-id", "console-page-1".to_string())];
    let page = http.raw_with_headers("GET", &format!("/console/contacts/{id}"), &headers, None, vec![]).await;
    assert!(html(&page).contains("Lovelace"));
    // The page's API calls carry its request id: the audit trail ties the reads to one page view.
    // The trail is written from events: wait for the page's three reads (contact, history, timeline).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let of_page = loop {
        let trail = http.json("GET", &format!("/v1/audit?subject_id={id}"), Some(&owner), None).await;
        let of_page: Vec<Value> = trail.json["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["request_id"] == "console-page-1")
            .cloned()
            .collect();
        if of_page.len() >= 3 {
            break of_page;
        }
        assert!(tokio::time::Instant::now() < deadline, "the page's reads never reached the trail: {:?}", trail.json);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(of_page.iter().all(|e| e["action"] == "view"), "{of_page:?}");
    let reader_key = format!("key:{}", reader.split('_').nth(1).unwrap());
    assert!(of_page.iter().all(|e| e["actor"] == reader_key.as_str()), "as the reader's key: {of_page:?}");
    // And the API refuses the reader anyway, whatever the console renders.
    let token = hidden(&html(&get(&http, &cookie, "/console/contacts").await), "_csrf");
    let a = post(&http, &cookie, &path, &[("active", "false"), ("reason", "x"), ("_csrf", &token)]).await;
    assert!(a.headers["location"].to_str().unwrap().contains("permission_denied"), "{:?}", a.headers);
    let c = http.json("GET", &format!("/v1/contacts/{id}"), Some(&owner), None).await;
    assert_eq!(c.json["restriction"]["active"], true, "unchanged");
    // `GET /v1/me` is what the console reads the permissions from.
    let me = http.json("GET", "/v1/me", Some(&reader), None).await;
    assert_eq!(me.json["permissions"], json!(["contacts:read"]));
    assert_eq!(me.json["tenant_id"], tenant_id.to_string());
    sb.stop().await;
}

/// A tiny OIDC provider for the console's sign-in: `/authorize` answers at once with a code
/// (as if the person had signed in), `/token` redeems a code once, only with the verifier whose
/// S256 challenge came with it, and returns an access token for the API and an ID token with
/// the nonce, both signed with the gateway tests' fixture key.
mod idp {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{RawQuery, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Redirect, Response};
    use axum::routing::{get, post};
    use base64::Engine as _;
    use serde_json::json;
    use sha2::{Digest, Sha256};

    pub const ISSUER: &str = "https://idp.example.test";
    pub const CLIENT_ID: &str = "carnet-console";

    #[derive(Default)]
    pub struct Idp {
        /// code → (challenge, nonce, redirect_uri)
        codes: Mutex<HashMap<String, (String, String, String)>>,
        pub tenant: Mutex<String>,
        pub roles: Mutex<Vec<String>>,
        pub redeemed: Mutex<u32>,
    }

    fn params(raw: &str) -> HashMap<String, String> {
        form_urlencoded::parse(raw.as_bytes()).into_owned().collect()
    }

    async fn authorize(State(idp): State<Arc<Idp>>, RawQuery(raw): RawQuery) -> Response {
        let q = params(&raw.unwrap_or_default());
        let ok = q.get("response_type").map(String::as_str) == Some("code")
            && q.get("code_challenge_method").map(String::as_str) == Some("S256")
            && q.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && q.get("scope").is_some_and(|s| s.split(' ').any(|s| s == "openid"))
            && q.get("code_challenge").is_some_and(|c| c.len() == 43);
        if !ok {
            return (StatusCode::BAD_REQUEST, format!("bad authorization request: {q:?}")).into_response();
        }
        let code = format!("code-{}", uuid::Uuid::now_v7().simple());
        let redirect = q["redirect_uri"].clone();
        idp.codes
            .lock()
            .unwrap()
            .insert(code.clone(), (q["code_challenge"].clone(), q["nonce"].clone(), redirect.clone()));
        let back = format!(
            "{redirect}?code={code}&state={}",
            form_urlencoded::byte_serialize(q["state"].as_bytes()).collect::<String>()
        );
        Redirect::to(&back).into_response()
    }

    async fn token(State(idp): State<Arc<Idp>>, body: Bytes) -> Response {
        let f = params(&String::from_utf8_lossy(&body));
        let grant = |e: &str| (StatusCode::BAD_REQUEST, axum::Json(json!({"error": e}))).into_response();
        let Some((challenge, nonce, redirect)) = idp.codes.lock().unwrap().remove(f.get("code").map_or("", |c| c))
        else {
            return grant("invalid_grant");
        };
        let verifier = f.get("code_verifier").cloned().unwrap_or_default();
        let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if computed != challenge
            || f.get("redirect_uri") != Some(&redirect)
            || f.get("client_id").map(String::as_str) != Some(CLIENT_ID)
            || f.get("grant_type").map(String::as_str) != Some("authorization_code")
        {
            return grant("invalid_grant");
        }
        *idp.redeemed.lock().unwrap() += 1;
        let now = chrono::Utc::now().timestamp();
        let tenant = idp.tenant.lock().unwrap().clone();
        let roles = idp.roles.lock().unwrap().clone();
        let claims = |aud: &str| {
            json!({"iss": ISSUER, "aud": aud, "sub": "alice@corp.example", "exp": now + 300,
            "iat": now, "nonce": nonce, "carnet_tenant": tenant, "carnet_roles": roles})
        };
        axum::Json(json!({"token_type": "Bearer", "expires_in": 300,
            "access_token": super::sign(claims("carnet")), "id_token": super::sign(claims(CLIENT_ID))}))
        .into_response()
    }

    /// Serves the provider on a free loopback port.
    pub async fn start() -> (std::net::SocketAddr, Arc<Idp>) {
        let idp = Arc::new(Idp::default());
        let app =
            Router::new().route("/authorize", get(authorize)).route("/token", post(token)).with_state(idp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, idp)
    }
}

/// Signs claims with the gateway tests' fixture key (kid `rsa-1` of jwks.json).
fn sign(claims: Value) -> String {
    let pem =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/tests/fixtures/rsa1_private.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".to_string());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_console_signs_in_with_the_oidc_provider_by_code_and_pkce() {
    let (idp_addr, provider) = idp::start().await;
    let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/tests/fixtures/jwks.json");
    let sb = Sandbox::start_with(
        carnet_tests::Backend::Sqlite,
        &[
            ("gateway.oidc.issuer", idp::ISSUER.to_string()),
            ("gateway.oidc.audience", "carnet".to_string()),
            ("gateway.oidc.jwks_file", jwks.to_string()),
            ("gateway.oidc.authorization_endpoint", format!("http://{idp_addr}/authorize")),
            ("gateway.oidc.token_endpoint", format!("http://{idp_addr}/token")),
            ("gateway.oidc.console_client_id", idp::CLIENT_ID.to_string()),
        ],
    )
    .await;
    let http = sb.http();
    let idp_http = Http::new(idp_addr);
    let (tenant_id, _) = sb.tenant("Federated").await;
    *provider.tenant.lock().unwrap() = tenant_id.to_string();
    *provider.roles.lock().unwrap() = vec!["privacy_officer".into()];

    let login = html(&http.raw("GET", "/console/login", None, None, vec![]).await);
    assert!(login.contains("href=\"/console/oidc/start\""), "{login}");
    // Start: off to the provider with a PKCE challenge; the flow is remembered in a Lax cookie.
    let start = |http: Http| async move { http.raw("GET", "/console/oidc/start", None, None, vec![]).await };
    let started = start(http.clone()).await;
    assert_eq!(started.status, 303);
    let to_idp = location(&started);
    assert!(
        to_idp.starts_with(&format!("http://{idp_addr}/authorize?")) && to_idp.contains("code_challenge_method=S256"),
        "{to_idp}"
    );
    let flow = set_cookies(&started)["carnet_console_oidc"].clone();
    assert!(
        flow.contains("HttpOnly") && flow.contains("SameSite=Lax") && flow.contains("Path=/console/oidc"),
        "{flow}"
    );
    let flow = flow.split(';').next().unwrap().to_string();
    // The provider signs the person in and sends the browser back with a code.
    let back = idp_http.raw("GET", to_idp.split_once(&idp_addr.to_string()).unwrap().1, None, None, vec![]).await;
    assert_eq!(back.status, 303, "{}", html(&back));
    let callback = location(&back);
    let callback_path =
        callback.split_once(&sb.node.http_addr_opt.unwrap().to_string()).expect("back to this gateway").1.to_string();
    assert!(callback_path.starts_with("/console/oidc/callback?code="), "{callback}");

    // Without the flow cookie, or with another flow's state, the code is not redeemed.
    let a = http.raw("GET", &callback_path, None, None, vec![]).await;
    assert!(location(&a).starts_with("/console/login?err="), "{:?}", a.headers);
    let other = set_cookies(&start(http.clone()).await)["carnet_console_oidc"].split(';').next().unwrap().to_string();
    let a = http.raw_with_headers("GET", &callback_path, &[("cookie", other)], None, vec![]).await;
    assert!(location(&a).starts_with("/console/login?err="), "{:?}", a.headers);
    assert!(!set_cookies(&a).contains_key("carnet_console"));
    assert_eq!(*provider.redeemed.lock().unwrap(), 0, "nothing was redeemed");

    // With it: the code is redeemed with the verifier, and a session is made for the token.
    let done = http.raw_with_headers("GET", &callback_path, &[("cookie", flow.clone())], None, vec![]).await;
    assert_eq!((done.status, location(&done).as_str()), (303, "/console/contacts"), "{:?}", done.headers);
    assert_eq!(*provider.redeemed.lock().unwrap(), 1);
    let cookies = set_cookies(&done);
    assert!(cookies["carnet_console_oidc"].contains("Max-Age=0"), "the flow cookie is cleared");
    let session = cookies["carnet_console"].split(';').next().unwrap().to_string();
    let page = get(&http, &session, "/console/privacy").await;
    assert_eq!(page.status, 200);
    let body = html(&page);
    assert!(body.contains("oidc:") && !body.contains("alice"), "the principal is a pseudonym: {body}");
    assert!(body.contains("Data subject requests"), "a privacy officer's page");
    // A code is good once: the same answer replayed signs nobody in.
    let replay = http.raw_with_headers("GET", &callback_path, &[("cookie", flow)], None, vec![]).await;
    assert!(location(&replay).contains("invalid_grant"), "{:?}", replay.headers);
    sb.stop().await;
}
