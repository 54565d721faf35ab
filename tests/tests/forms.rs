//! Web forms: the page shows the current notice text, unticked; a submission creates the
//! contact (source `web_form`) and records each ticked consent with the notice version shown,
//! pending until confirmed; CSRF, honeypot and unknown fields are refused. The last test fills
//! the page in headless Chromium.

use carnet_tests::Sandbox;
use carnet_tests::http::Http;
use serde_json::{Value, json};

async fn setup(sb: &Sandbox) -> (Http, String, String) {
    let http = sb.http();
    let (_, key) = sb.tenant("Forms").await;
    let purpose = json!({"key": "newsletter", "description": "Newsletter", "lawful_basis": "consent",
        "notice": "Yes, send me the monthly newsletter. I can withdraw at any time."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&key), Some(purpose)).await.status, 201);
    let form = json!({"name": "Join our newsletter", "fields": ["email", "first_name"], "consents": ["newsletter"]});
    let created = http.json("POST", "/v1/forms", Some(&key), Some(form)).await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    let id = created.json["id"].as_str().unwrap().to_string();
    assert_eq!(created.json["url"], format!("/f/{id}"));
    (http, key, id)
}

fn csrf_of(html: &str) -> String {
    html.split("name=\"_csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string()
}

fn form_body(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

async fn contacts(http: &Http, key: &str) -> Vec<Value> {
    http.json("GET", "/v1/contacts?limit=500", Some(key), None).await.json["contacts"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_form_records_the_notice_version_it_showed() {
    let sb = Sandbox::monolith().await;
    let (http, key, id) = setup(&sb).await;
    let page = http.raw("GET", &format!("/f/{id}"), None, None, vec![]).await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(html.contains("Yes, send me the monthly newsletter."), "{html}");
    assert!(html.contains("name=\"consent_newsletter\" value=\"yes\">"), "unticked by default: {html}");
    assert!(!html.contains("checked"));
    assert!(html.contains("type=\"email\""));
    let csrf = csrf_of(&html);

    // The notice changes after the page was served: the submission keeps what was shown.
    let v2 =
        http.json("PUT", "/v1/purposes/newsletter/notice", Some(&key), Some(json!({"notice": "New wording."}))).await;
    assert_eq!(v2.json["current_version"], 2);
    let body = form_body(&[
        ("email", "Grace@Example.org"),
        ("first_name", "Grace"),
        ("consent_newsletter", "yes"),
        ("_csrf", &csrf),
        ("website", ""),
    ]);
    let done = http.raw("POST", &format!("/f/{id}"), None, Some("application/x-www-form-urlencoded"), body).await;
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    assert!(String::from_utf8_lossy(&done.body).contains("confirm"));

    let all = contacts(&http, &key).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["email"], "grace@example.org");
    assert_eq!(all[0]["source"]["channel"], "web_form");
    assert_eq!(all[0]["source"]["detail"], format!("form:{id}"));
    let cid = all[0]["id"].as_str().unwrap();
    let consents = http.json("GET", &format!("/v1/contacts/{cid}/consents"), Some(&key), None).await;
    let record = &consents.json["history"][0];
    assert_eq!(record["status"], "pending", "web-form consent waits for the opt-in link");
    assert_eq!(record["notice_version"], 1, "the version shown, not the current one");
    assert_eq!(record["form_id"], id);
    assert!(record["ip_hash"].is_string());
    let check = json!({"checks": [{"contact_id": cid, "purpose": "newsletter"}]});
    let r = http.json("POST", "/v1/consents/check", Some(&key), Some(check)).await;
    assert_eq!(r.json["results"][0]["allowed"], false);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_form_refuses_bots_forgeries_and_unknown_fields() {
    let sb = Sandbox::monolith().await;
    let (http, key, id) = setup(&sb).await;
    let html = String::from_utf8(http.raw("GET", &format!("/f/{id}"), None, None, vec![]).await.body.to_vec()).unwrap();
    let csrf = csrf_of(&html);
    let path = format!("/f/{id}");
    let post = |pairs: Vec<(&'static str, String)>| {
        let body = form_body(&pairs.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>());
        http.raw("POST", &path, None, Some("application/x-www-form-urlencoded"), body)
    };
    // Honeypot filled: answered politely, nothing stored.
    let bot =
        post(vec![("email", "bot@example.org".into()), ("_csrf", csrf.clone()), ("website", "http://spam".into())])
            .await;
    assert_eq!(bot.status, 200);
    // No token, a forged token, a token of another form.
    let a = post(vec![("email", "x@example.org".into())]).await;
    assert_eq!(a.status, 403);
    let a = post(vec![("email", "x@example.org".into()), ("_csrf", format!("{csrf}x"))]).await;
    assert_eq!(a.status, 403);
    // A field the form does not have.
    let a = post(vec![("email", "x@example.org".into()), ("religion", "x".into()), ("_csrf", csrf.clone())]).await;
    assert_eq!(a.status, 400);
    // A malformed value is refused by the contacts service, naming the field.
    let a = post(vec![("email", "not-an-address".into()), ("_csrf", csrf.clone())]).await;
    assert_eq!(a.status, 400);
    assert_eq!(contacts(&http, &key).await.len(), 0, "nothing was stored");
    // A form cannot ask for a field outside the policy, nor an unknown purpose.
    let bad = json!({"name": "x", "fields": ["email", "religion"], "consents": []});
    let a = http.json("POST", "/v1/forms", Some(&key), Some(bad)).await;
    assert_eq!((a.status, a.field()), (400, "fields[1]"));
    let bad = json!({"name": "x", "fields": ["email"], "consents": ["telemarketing"]});
    let a = http.json("POST", "/v1/forms", Some(&key), Some(bad)).await;
    assert_eq!((a.status, a.field()), (404, "consents[0]"));
    let a = http.raw("GET", "/f/not-a-form", None, None, vec![]).await;
    assert_eq!(a.status, 404);
    sb.stop().await;
}

/// Whether the browser test must run: the test command sets this after installing Chromium and
/// playwright-core; elsewhere the test is skipped with a message.
fn browser() -> Option<(String, String)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/form.mjs").to_string();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_form_page_filled_in_headless_chromium() {
    let Some((script, chromium)) = browser() else { return };
    let sb = Sandbox::monolith().await;
    let (http, key, id) = setup(&sb).await;
    let url = format!("http://{}/f/{id}", sb.node.http_addr_opt.unwrap());
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .args([url.as_str(), "ada@example.org", "Ada", "newsletter"])
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .expect("run node");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    assert_eq!(seen["shown"]["title"], "Join our newsletter");
    assert_eq!(seen["shown"]["notice"], "Yes, send me the monthly newsletter. I can withdraw at any time.");
    assert_eq!(seen["shown"]["tickedByDefault"], false);
    assert_eq!(seen["shown"]["honeypotOnScreen"], false);
    assert!(seen["answer"].as_str().unwrap().contains("Thank you"));
    let all = contacts(&http, &key).await;
    assert_eq!(all.len(), 1);
    let cid = all[0]["id"].as_str().unwrap();
    let consents = http.json("GET", &format!("/v1/contacts/{cid}/consents"), Some(&key), None).await;
    assert_eq!(consents.json["current"][0]["purpose"], "newsletter");
    assert_eq!(consents.json["current"][0]["status"], "pending");
    assert_eq!(consents.json["history"][0]["form_id"], id);
    assert!(consents.json["history"][0]["user_agent"].as_str().unwrap().contains("Chrome"));
    sb.stop().await;
}
