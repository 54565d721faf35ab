//! Comms against a real SMTP server on loopback (aiosmtpd, tests/smtp/sink.py): only consented
//! recipients receive mail, skips are counted by reason, both unsubscribe paths withdraw at
//! once, a sequence stops for a contact who withdrew between steps, call recording needs
//! consent, consent-request mails carry working links, and the timeline, export and erasure
//! cover comms' data.

use std::time::Duration;

use carnet_tests::http::Http;
use carnet_tests::smtp::{ReceivedMail, SmtpSink};
use carnet_tests::{Backend, Sandbox, smtp_overrides};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// A sandbox mailing to a fresh sink; `None` when aiosmtpd is missing and not required.
async fn start(backend: Backend) -> Option<(Sandbox, SmtpSink)> {
    let sink = SmtpSink::start().await?;
    let sb = Sandbox::start_with(backend, &smtp_overrides(sink.port)).await;
    Some((sb, sink))
}

async fn purpose(http: &Http, key: &str, name: &str, basis: &str) {
    let body = json!({"key": name, "description": format!("The {name} purpose"), "lawful_basis": basis,
        "notice": format!("I agree to {name}. I can withdraw at any time.")});
    let a = http.json("POST", "/v1/purposes", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
}

async fn contact(http: &Http, key: &str, email: Option<&str>, first_name: &str) -> String {
    let mut body = json!({"first_name": first_name, "source": {"channel": "api", "detail": "comms-test"}});
    match email {
        Some(e) => body["email"] = json!(e),
        None => body["phone"] = json!(format!("+4420794600{:02}", first_name.len())),
    }
    let a = http.json("POST", "/v1/contacts", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    a.json["id"].as_str().unwrap().to_string()
}

async fn consent(http: &Http, key: &str, contact_id: &str, purpose: &str, action: &str) {
    let body = json!({"contact_id": contact_id, "purpose": purpose, "action": action, "source": "api"});
    let a = http.json("POST", "/v1/consents", Some(key), Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
}

async fn consent_status(http: &Http, key: &str, contact_id: &str, purpose: &str) -> Value {
    let a = http.json("GET", &format!("/v1/contacts/{contact_id}/consents"), Some(key), None).await;
    a.json["current"].as_array().unwrap().iter().find(|s| s["purpose"] == purpose).cloned().unwrap_or(Value::Null)
}

/// Polls `GET path` until `done` holds.
async fn wait_until(http: &Http, key: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = http.json("GET", path, Some(key), None).await;
        assert_eq!(a.status, 200, "{:?}", a.json);
        if done(&a.json) {
            return a.json;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting on {path}: {}", a.json);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A mail's final states.
fn settled(m: &Value) -> bool {
    ["sent", "skipped", "failed"].contains(&m["status"].as_str().unwrap_or_default())
}

fn to(m: &ReceivedMail) -> String {
    m.rcpt_tos.join(",")
}

/// The URL inside `List-Unsubscribe: <…>`, as a path on the gateway.
fn unsubscribe_path(m: &ReceivedMail, http_base: &str) -> String {
    let header = m.header("List-Unsubscribe").expect("List-Unsubscribe header");
    let url = header.trim().trim_start_matches('<').trim_end_matches('>');
    url.strip_prefix(http_base).unwrap_or_else(|| panic!("{url} is not on {http_base}")).to_string()
}

fn link_path(body: &str, marker: &str, http_base: &str) -> String {
    let start = body.find(&format!("{http_base}{marker}")).unwrap_or_else(|| panic!("no {marker} link in {body}"));
    let url: String = body[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    url.strip_prefix(http_base).unwrap().to_string()
}

async fn only_consented_recipients_receive_mail(backend: Backend) {
    let Some((sb, sink)) = start(backend).await else { return };
    let http = sb.http();
    let (_, key) = sb.tenant("Mailer").await;
    purpose(&http, &key, "newsletter", "consent").await;
    let granted = contact(&http, &key, Some("ada@example.org"), "Ada").await;
    let never = contact(&http, &key, Some("bob@example.org"), "Bob").await;
    let withdrawn = contact(&http, &key, Some("cy@example.org"), "Cy").await;
    let restricted = contact(&http, &key, Some("di@example.org"), "Di").await;
    let suppressed = contact(&http, &key, Some("ed@example.org"), "Ed").await;
    let erased = contact(&http, &key, Some("flo@example.org"), "Flo").await;
    let no_address = contact(&http, &key, None, "Gus").await;
    for id in [&granted, &withdrawn, &restricted, &suppressed, &erased, &no_address] {
        consent(&http, &key, id, "newsletter", "grant").await;
    }
    consent(&http, &key, &withdrawn, "newsletter", "withdraw").await;
    let r = http
        .json("PUT", &format!("/v1/contacts/{restricted}/restriction"), Some(&key), Some(json!({"active": true})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    // The relay reported a bounce for Ed's address (its case does not matter).
    let b = http.json("POST", "/v1/bounces", Some(&key), Some(json!({"email": "ED@example.org"}))).await;
    assert_eq!(b.status, 200, "{:?}", b.json);
    assert!(!b.body.windows(3).any(|w| w == b"ed@"), "the answer holds a hash, not the address");
    assert_eq!(http.json("DELETE", &format!("/v1/contacts/{erased}"), Some(&key), None).await.status, 204);

    // A single mail to someone who never agreed is refused outright, and nothing is queued.
    let refused = http
        .json(
            "POST",
            "/v1/messages",
            Some(&key),
            Some(json!({"contact_id": never, "purpose": "newsletter", "subject": "Hi", "body": "Hello"})),
        )
        .await;
    assert_eq!((refused.status, refused.code(), refused.field()), (422, "consent_required", "contact_id"));
    // A template variable outside the field policy is refused, naming where.
    let bad = http
        .json(
            "POST",
            "/v1/campaigns",
            Some(&key),
            Some(
                json!({"purpose": "newsletter", "subject": "Hi", "body": "Your {{salary}}", "contact_ids": [granted]}),
            ),
        )
        .await;
    assert_eq!((bad.status, bad.field()), (400, "content.body"), "{:?}", bad.json);

    let all = [&granted, &never, &withdrawn, &restricted, &suppressed, &erased, &no_address];
    let created = http
        .json(
            "POST",
            "/v1/campaigns",
            Some(&key),
            Some(json!({"purpose": "newsletter", "subject": "News for {{first_name}}",
                "body": "Hello {{first_name}},\nthis month: nothing new.", "contact_ids": all})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    assert_eq!(created.json["status"], "draft");
    let id = created.json["id"].as_str().unwrap().to_string();
    let sent = http.json("POST", &format!("/v1/campaigns/{id}/send"), Some(&key), None).await;
    assert_eq!(sent.status, 202, "{:?}", sent.json);
    let done = wait_until(&http, &key, &format!("/v1/campaigns/{id}"), |c| c["status"] == "completed").await;
    assert_eq!(done["recipients"], 7, "{done}");
    assert_eq!(done["sent"], 1, "{done}");
    assert_eq!(done["failed"], 0, "{done}");
    assert_eq!(
        done["skipped"],
        json!({"no_consent": 1, "withdrawn": 1, "restricted": 1, "suppressed": 1, "erased": 1, "no_address": 1}),
        "{done}"
    );
    // Sending again mails nobody twice.
    assert_eq!(http.json("POST", &format!("/v1/campaigns/{id}/send"), Some(&key), None).await.status, 202);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mails = sink.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1, "{:?}", mails.iter().map(to).collect::<Vec<_>>());
    let m = &mails[0];
    assert_eq!(to(m), "ada@example.org");
    assert_eq!(m.header("Subject"), Some("News for Ada"));
    assert!(m.body.starts_with("Hello Ada,\nthis month: nothing new."), "{}", m.body);
    assert!(m.body.contains("You receive this e-mail for \"The newsletter purpose\" (newsletter)"), "{}", m.body);
    assert_eq!(m.header("List-Unsubscribe-Post"), Some("List-Unsubscribe=One-Click"));
    assert_eq!(m.header("X-Carnet-Purpose"), Some("newsletter"));
    let base = format!("http://{}", sb.node.http_addr_opt.unwrap());
    assert!(unsubscribe_path(m, &base).starts_with("/u/"));
    assert!(m.header("Message-ID").is_some_and(|id| id.contains("@carnet.localhost")));
    sb.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_only_consented_recipients_receive_mail_sqlite() {
    only_consented_recipients_receive_mail(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_only_consented_recipients_receive_mail_postgres() {
    let Some(server) = carnet_tests::postgres::server_url() else { return };
    only_consented_recipients_receive_mail(Backend::Postgres(server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_unsubscribe_link_and_one_click_post_both_withdraw() {
    let Some((sb, sink)) = start(Backend::Sqlite).await else { return };
    let http = sb.http();
    let base = format!("http://{}", sb.node.http_addr_opt.unwrap());
    let (_, key) = sb.tenant("Unsub").await;
    purpose(&http, &key, "offers", "consent").await;
    let clicker = contact(&http, &key, Some("click@example.org"), "Clicker").await;
    let client = contact(&http, &key, Some("mua@example.org"), "Mua").await;
    for id in [&clicker, &client] {
        consent(&http, &key, id, "offers", "grant").await;
        let a = http
            .json(
                "POST",
                "/v1/messages",
                Some(&key),
                Some(json!({"contact_id": id, "purpose": "offers", "subject": "Offer", "body": "Buy now"})),
            )
            .await;
        assert_eq!((a.status, a.json["status"].as_str()), (202, Some("queued")), "{:?}", a.json);
    }
    let mails = sink.wait_for(2, WAIT).await;
    let mail_of = |addr: &str| mails.iter().find(|m| to(m) == addr).unwrap().clone();

    // The person follows the link in the mail: a page with one button (mail scanners fetch
    // links, so the change itself is a POST), then the form posts.
    let path = unsubscribe_path(&mail_of("click@example.org"), &base);
    assert!(mail_of("click@example.org").body.contains(&format!("{base}{path}")), "the footer carries the link too");
    let page = http.raw("GET", &path, None, None, vec![]).await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(html.contains(&format!("action=\"{path}\"")), "{html}");
    assert_eq!(consent_status(&http, &key, &clicker, "offers").await["status"], "granted", "a GET changes nothing");
    let posted = http
        .raw("POST", &path, None, Some("application/x-www-form-urlencoded"), b"List-Unsubscribe=One-Click".to_vec())
        .await;
    assert_eq!(posted.status, 200);
    assert_eq!(consent_status(&http, &key, &clicker, "offers").await["status"], "withdrawn");

    // The mail client's RFC 8058 one-click POST to the List-Unsubscribe URL.
    let path = unsubscribe_path(&mail_of("mua@example.org"), &base);
    let one_click = http
        .raw("POST", &path, None, Some("application/x-www-form-urlencoded"), b"List-Unsubscribe=One-Click".to_vec())
        .await;
    assert_eq!(one_click.status, 200);
    let state = consent_status(&http, &key, &client, "offers").await;
    assert_eq!(state["status"], "withdrawn", "{state}");

    // Withdrawn at once: the next mail is refused.
    for id in [&clicker, &client] {
        let a = http
            .json(
                "POST",
                "/v1/messages",
                Some(&key),
                Some(json!({"contact_id": id, "purpose": "offers", "subject": "Offer", "body": "Again"})),
            )
            .await;
        assert_eq!((a.status, a.code()), (422, "consent_required"));
    }
    sb.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_sequence_stops_for_a_contact_who_withdrew_between_steps() {
    let Some((sb, sink)) = start(Backend::Sqlite).await else { return };
    let http = sb.http();
    let (_, key) = sb.tenant("Sequences").await;
    purpose(&http, &key, "onboarding", "consent").await;
    let stays = contact(&http, &key, Some("stays@example.org"), "Stays").await;
    let leaves = contact(&http, &key, Some("leaves@example.org"), "Leaves").await;
    for id in [&stays, &leaves] {
        consent(&http, &key, id, "onboarding", "grant").await;
    }
    let body = json!({"name": "Welcome", "purpose": "onboarding", "contact_ids": [stays, leaves], "steps": [
        {"delay_seconds": 0, "subject": "Welcome {{first_name}}", "body": "Step one."},
        {"delay_seconds": 3, "subject": "Day two", "body": "Step two."}]});
    let created = http.json("POST", "/v1/sequences", Some(&key), Some(body)).await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    let id = created.json["id"].as_str().unwrap().to_string();
    assert_eq!(created.json["enrollments"].as_array().unwrap().len(), 2);

    let first = sink.wait_for(2, WAIT).await;
    assert!(first.iter().all(|m| m.header("Subject").unwrap().starts_with("Welcome")));
    consent(&http, &key, &leaves, "onboarding", "withdraw").await;

    let seq = wait_until(&http, &key, &format!("/v1/sequences/{id}"), |s| {
        s["enrollments"].as_array().unwrap().iter().all(|e| e["status"] != "active")
    })
    .await;
    let enrollment =
        |cid: &str| seq["enrollments"].as_array().unwrap().iter().find(|e| e["contact_id"] == cid).unwrap().clone();
    assert_eq!(enrollment(&stays)["status"], "completed", "{seq}");
    assert_eq!(enrollment(&leaves)["status"], "stopped", "{seq}");
    assert_eq!(enrollment(&leaves)["reason"], "withdrawn", "{seq}");
    let mails = sink.messages();
    let subjects = |addr: &str| {
        mails.iter().filter(|m| to(m) == addr).map(|m| m.header("Subject").unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(subjects("stays@example.org"), vec!["Welcome Stays", "Day two"]);
    assert_eq!(subjects("leaves@example.org"), vec!["Welcome Leaves"]);

    // The timeline shows the skipped step and the consent events.
    let tl = http.json("GET", &format!("/v1/contacts/{leaves}/timeline"), Some(&key), None).await;
    assert_eq!(tl.status, 200);
    let entries = tl.json["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["kind"] == "mail" && e["status"] == "skipped:withdrawn"), "{entries:?}");
    assert!(entries.iter().any(|e| e["kind"] == "mail" && e["status"] == "sent"), "{entries:?}");
    assert!(entries.iter().any(|e| e["kind"] == "consent" && e["status"] == "withdrawn"), "{entries:?}");
    sb.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_call_recording_needs_consent() {
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (_, key) = sb.tenant("Calls").await;
    purpose(&http, &key, "call_recording", "consent").await;
    let agreed = contact(&http, &key, Some("agreed@example.org"), "Agreed").await;
    let silent = contact(&http, &key, Some("silent@example.org"), "Silent").await;
    consent(&http, &key, &agreed, "call_recording", "grant").await;
    let call = |id: &str, recording: bool, verbal: bool| {
        json!({"contact_id": id, "direction": "outbound", "started_at": "2026-11-29T10:00:00Z",
            "duration_seconds": 95, "outcome": "connected", "notes": "Asked about pricing.",
            "recording": recording, "verbal_consent": verbal})
    };

    let refused = http.json("POST", "/v1/calls", Some(&key), Some(call(&silent, true, false))).await;
    assert_eq!((refused.status, refused.code(), refused.field()), (422, "consent_required", "recording"));
    assert!(!refused.body.windows(6).any(|w| w == b"silent"), "no personal data in the error");
    let tl = http.json("GET", &format!("/v1/contacts/{silent}/timeline"), Some(&key), None).await;
    assert!(tl.json["entries"].as_array().unwrap().iter().all(|e| e["kind"] != "call"), "nothing stored");

    let with_consent = http.json("POST", "/v1/calls", Some(&key), Some(call(&agreed, true, false))).await;
    assert_eq!(with_consent.status, 201, "{:?}", with_consent.json);
    assert!(with_consent.json["recording"].as_bool().unwrap());
    assert!(with_consent.json["recording_basis"].as_str().unwrap().starts_with("consent:"));

    // Verbal consent on the call is recorded as a consent with source `phone`.
    let verbal = http.json("POST", "/v1/calls", Some(&key), Some(call(&silent, true, true))).await;
    assert_eq!(verbal.status, 201, "{:?}", verbal.json);
    assert!(verbal.json["recording_basis"].as_str().unwrap().starts_with("verbal:"));
    let consents = http.json("GET", &format!("/v1/contacts/{silent}/consents"), Some(&key), None).await;
    let last = consents.json["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["purpose"].as_str(), last["source"].as_str()), (Some("call_recording"), Some("phone")));

    // The toggle on a logged call is gated the same way.
    let other = contact(&http, &key, Some("later@example.org"), "Later").await;
    let plain = http.json("POST", "/v1/calls", Some(&key), Some(call(&other, false, false))).await;
    assert_eq!(plain.status, 201);
    let call_id = plain.json["id"].as_str().unwrap();
    let toggle =
        http.json("PATCH", &format!("/v1/calls/{call_id}"), Some(&key), Some(json!({"recording": true}))).await;
    assert_eq!((toggle.status, toggle.code()), (422, "consent_required"));
    consent(&http, &key, &other, "call_recording", "grant").await;
    let toggle =
        http.json("PATCH", &format!("/v1/calls/{call_id}"), Some(&key), Some(json!({"recording": true}))).await;
    assert_eq!(toggle.status, 200, "{:?}", toggle.json);
    assert!(toggle.json["recording"].as_bool().unwrap());

    // Bad input names the field.
    let mut bad = call(&other, false, false);
    bad["direction"] = json!("sideways");
    let a = http.json("POST", "/v1/calls", Some(&key), Some(bad)).await;
    assert_eq!((a.status, a.field()), (400, "direction"));
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_consent_request_mails_carry_working_links() {
    let Some((sb, sink)) = start(Backend::Sqlite).await else { return };
    let http = sb.http();
    let base = format!("http://{}", sb.node.http_addr_opt.unwrap());
    let (_, key) = sb.tenant("Requests").await;
    purpose(&http, &key, "events", "consent").await;
    let asked = contact(&http, &key, Some("asked@example.org"), "Asked").await;
    let pending = contact(&http, &key, Some("pending@example.org"), "Pending").await;
    let already = contact(&http, &key, Some("already@example.org"), "Already").await;
    let body = json!({"contact_id": pending, "purpose": "events", "action": "grant", "source": "web_form",
        "require_confirmation": true});
    assert_eq!(http.json("POST", "/v1/consents", Some(&key), Some(body)).await.status, 201);
    consent(&http, &key, &already, "events", "grant").await;

    let r = http
        .json(
            "POST",
            "/v1/consent-requests",
            Some(&key),
            Some(json!({"purpose": "events", "contact_ids": [asked, pending, already]})),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    let mails = sink.wait_for(2, WAIT).await;
    let mail_of = |addr: &str| mails.iter().find(|m| to(m) == addr).cloned().unwrap();
    let msg_of = |cid: &str| {
        r.json["messages"].as_array().unwrap().iter().find(|m| m["contact_id"] == cid).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let skipped =
        wait_until(&http, &key, &format!("/v1/messages/{}", msg_of(&already)), |m| m["status"] != "queued").await;
    assert_eq!((skipped["status"].as_str(), skipped["reason"].as_str()), (Some("skipped"), Some("already_granted")));

    // No consent yet: the notice text is the acceptance clause, and the link grants it.
    let offer = mail_of("asked@example.org");
    assert!(offer.body.contains("I agree to events. I can withdraw at any time."), "{}", offer.body);
    let accept = link_path(&offer.body, "/o/", &base);
    assert_eq!(consent_status(&http, &key, &asked, "events").await, Value::Null);
    assert_eq!(http.raw("GET", &accept, None, None, vec![]).await.status, 200);
    let state = consent_status(&http, &key, &asked, "events").await;
    assert_eq!((state["status"].as_str(), state["notice_version"].as_u64()), (Some("granted"), Some(1)), "{state}");
    let history = http.json("GET", &format!("/v1/contacts/{asked}/consents"), Some(&key), None).await;
    assert_eq!(history.json["history"][0]["source"], "email_optin");

    // A pending grant (double opt-in): the mail carries the confirmation link.
    let confirm = link_path(&mail_of("pending@example.org").body, "/o/", &base);
    assert_eq!(consent_status(&http, &key, &pending, "events").await["status"], "pending");
    assert_eq!(http.raw("GET", &confirm, None, None, vec![]).await.status, 200);
    assert_eq!(consent_status(&http, &key, &pending, "events").await["status"], "granted");
    sb.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_subject_export_and_erasure_cover_comms_data() {
    use carnet_proto::common::v1::{EraseSubjectRequest, ExportSubjectRequest};
    let Some((sb, sink)) = start(Backend::Sqlite).await else { return };
    let http = sb.http();
    let (tenant_id, key) = sb.tenant("Dsar").await;
    purpose(&http, &key, "news", "consent").await;
    let id = contact(&http, &key, Some("gone@example.org"), "Gone").await;
    consent(&http, &key, &id, "news", "grant").await;
    let m = http
        .json(
            "POST",
            "/v1/messages",
            Some(&key),
            Some(json!({"contact_id": id, "purpose": "news", "subject": "S", "body": "B"})),
        )
        .await;
    assert_eq!(m.status, 202);
    sink.wait_for(1, WAIT).await;
    let call = json!({"contact_id": id, "direction": "inbound", "started_at": "2026-11-28T09:00:00Z",
        "duration_seconds": 30, "outcome": "voicemail", "notes": "Left a message about the renewal."});
    assert_eq!(http.json("POST", "/v1/calls", Some(&key), Some(call)).await.status, 201);

    let dsar = carnet_kit::Caller::new(tenant_id, "service:dsar", [carnet_kit::Permission::DsarManage]);
    let mut comms = sb.comms(&dsar);
    let export = comms.export_subject(ExportSubjectRequest { subject_id: id.clone() }).await.unwrap().into_inner();
    let doc: Value = serde_json::from_slice(&export.document_json).unwrap();
    assert_eq!((doc["messages"].as_array().unwrap().len(), doc["calls"].as_array().unwrap().len()), (1, 1), "{doc}");
    assert_eq!(doc["calls"][0]["notes"], "Left a message about the renewal.");
    assert_eq!(export.record_count, 2);

    let erased = comms
        .erase_subject(EraseSubjectRequest { subject_id: id.clone(), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((erased.removed["messages"], erased.removed["calls"], erased.removed["suppressions_added"]), (1, 1, 1));
    let after = comms.export_subject(ExportSubjectRequest { subject_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(after.record_count, 0);
    // The erased address is suppressed: the same person re-created and consenting gets no bulk mail.
    assert_eq!(http.json("DELETE", &format!("/v1/contacts/{id}"), Some(&key), None).await.status, 204);
    let again = contact(&http, &key, Some("gone@example.org"), "Again").await;
    consent(&http, &key, &again, "news", "grant").await;
    let c = http
        .json(
            "POST",
            "/v1/campaigns",
            Some(&key),
            Some(json!({"purpose": "news", "subject": "S", "body": "B", "contact_ids": [again]})),
        )
        .await;
    let cid = c.json["id"].as_str().unwrap().to_string();
    http.json("POST", &format!("/v1/campaigns/{cid}/send"), Some(&key), None).await;
    let done = wait_until(&http, &key, &format!("/v1/campaigns/{cid}"), |c| c["status"] == "completed").await;
    assert_eq!(done["skipped"], json!({"suppressed": 1}), "{done}");
    assert_eq!(sink.count(), 1);
    sb.stop().await;
    sink.stop().await;
}

/// A sandbox mailing through `sink` with `extra` relay settings.
async fn start_relay(sink: &SmtpSink, extra: &[(&'static str, String)]) -> Sandbox {
    let mut overrides = smtp_overrides(sink.port);
    overrides.extend(extra.iter().cloned());
    Sandbox::start_with(Backend::Sqlite, &overrides).await
}

/// Sends one mail to a fresh consenting contact; returns the message id.
async fn mail_one(http: &Http, key: &str, email: &str) -> String {
    let id = contact(http, key, Some(email), "Relay").await;
    consent(http, key, &id, "news", "grant").await;
    let a = http
        .json(
            "POST",
            "/v1/messages",
            Some(key),
            Some(json!({"contact_id": id, "purpose": "news", "subject": "S", "body": "B"})),
        )
        .await;
    assert_eq!(a.status, 202, "{:?}", a.json);
    a.json["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_starttls_and_auth_relay_delivers_and_bad_credentials_fail_without_bouncing() {
    use carnet_tests::smtp::{SinkOptions, private_ca_and_relay_cert};
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key_pem) = private_ca_and_relay_cert(certs.path());
    let opts = SinkOptions {
        auth_opt: Some(("relay-user".into(), "relay-secret".into())),
        tls_opt: Some((cert, key_pem)),
        ..Default::default()
    };
    let Some(sink) = SmtpSink::start_with(opts).await else { return };
    let tls = |password: &str| {
        vec![
            ("comms.smtp.tls", "starttls".to_string()),
            ("comms.smtp.ca_file", ca.display().to_string()),
            ("comms.smtp.username", "relay-user".to_string()),
            ("comms.smtp.password", password.to_string()),
            ("comms.max_attempts", "2".to_string()),
        ]
    };
    let sb = start_relay(&sink, &tls("relay-secret")).await;
    let http = sb.http();
    let (_, key) = sb.tenant("Relay").await;
    purpose(&http, &key, "news", "consent").await;
    let id = mail_one(&http, &key, "tls@example.org").await;
    let m = wait_until(&http, &key, &format!("/v1/messages/{id}"), settled).await;
    assert_eq!(m["status"], "sent", "{m}");
    assert_eq!(to(&sink.wait_for(1, WAIT).await[0]), "tls@example.org");
    sb.stop().await;

    // Wrong credentials are the relay's problem, not the recipient's: retried, then failed,
    // and the address is not suppressed.
    let sb = start_relay(&sink, &tls("wrong")).await;
    let http = sb.http();
    let (_, key) = sb.tenant("Relay").await;
    purpose(&http, &key, "news", "consent").await;
    let id = mail_one(&http, &key, "tls@example.org").await;
    let m = wait_until(&http, &key, &format!("/v1/messages/{id}"), |m| m["status"] == "failed").await;
    assert_eq!((m["reason"].as_str(), m["attempts"].as_u64()), (Some("delivery_failed"), Some(2)), "{m}");
    assert_eq!(sink.count(), 1);
    sb.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_hard_bounce_fails_the_mail_and_suppresses_the_address() {
    use carnet_tests::smtp::SinkOptions;
    let opts = SinkOptions { reject: vec!["gone@example.org".into()], ..Default::default() };
    let Some(sink) = SmtpSink::start_with(opts).await else { return };
    let sb = start_relay(&sink, &[]).await;
    let http = sb.http();
    let (_, key) = sb.tenant("Bounce").await;
    purpose(&http, &key, "news", "consent").await;
    let id = mail_one(&http, &key, "gone@example.org").await;
    let m = wait_until(&http, &key, &format!("/v1/messages/{id}"), settled).await;
    assert_eq!((m["status"].as_str(), m["reason"].as_str()), (Some("failed"), Some("bounced")), "{m}");
    // The same address under a new contact record (the first one deleted) is now suppressed.
    let first = m["contact_id"].as_str().unwrap().to_string();
    assert_eq!(http.json("DELETE", &format!("/v1/contacts/{first}"), Some(&key), None).await.status, 204);
    let again = mail_one(&http, &key, "Gone@Example.org").await;
    let m = wait_until(&http, &key, &format!("/v1/messages/{again}"), settled).await;
    assert_eq!((m["status"].as_str(), m["reason"].as_str()), (Some("skipped"), Some("suppressed")), "{m}");
    assert_eq!(sink.count(), 0);
    sb.stop().await;
    sink.stop().await;
}
