//! Double opt-in and one-click withdrawal through the gateway's public links.

use carnet_kit::links::{LinkClaims, LinkKind, sign};
use carnet_kit::{Caller, Permission};
use carnet_proto::consent::v1::IssueLinksRequest;
use carnet_tests::Sandbox;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_pending_consent_needs_the_link_and_withdrawal_is_one_click() {
    let sb = Sandbox::monolith().await;
    let http = sb.http();
    let (tenant, key) = sb.tenant("Links").await;
    let purpose = json!({"key": "newsletter", "description": "The monthly newsletter", "lawful_basis": "consent",
        "notice": "Monthly news by e-mail."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&key), Some(purpose)).await.status, 201);
    let created = http
        .json(
            "POST",
            "/v1/contacts",
            Some(&key),
            Some(json!({"email": "ada@example.org", "source": {"channel": "web_form", "detail": "f"}})),
        )
        .await;
    let id = created.json["id"].as_str().unwrap().to_string();
    let grant = json!({"contact_id": id, "purpose": "newsletter", "action": "grant", "source": "web_form",
        "require_confirmation": true});
    let pending = http.json("POST", "/v1/consents", Some(&key), Some(grant)).await;
    assert_eq!(pending.json["status"], "pending");
    let check = json!({"checks": [{"contact_id": id, "purpose": "newsletter"}]});
    let verdict = |a: &carnet_tests::http::Answer| {
        (
            a.json["results"][0]["allowed"].as_bool().unwrap(),
            a.json["results"][0]["reason"].as_str().unwrap().to_string(),
        )
    };
    let r = http.json("POST", "/v1/consents/check", Some(&key), Some(check.clone())).await;
    assert_eq!(verdict(&r), (false, "pending".to_string()), "no mail before the link is opened");

    let comms = Caller::new(tenant, "service:comms", [Permission::CommsSend]);
    let links = sb
        .consent(&comms)
        .issue_links(IssueLinksRequest { contact_id: id.clone(), purpose: "newsletter".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(!links.confirm_token.is_empty() && !links.withdraw_token.is_empty());
    assert!(!links.confirm_token.contains("ada"), "links carry ids, not addresses");

    // A tampered or expired link is refused and changes nothing.
    let mut tampered = links.confirm_token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let a = http.raw("GET", &format!("/o/{tampered}"), None, None, vec![]).await;
    assert_eq!(a.status, 400);
    let links_key = sb.node.mesh_key.derive("consent-links");
    let expired = sign(
        &links_key,
        &LinkClaims {
            tenant_id: tenant,
            contact_id: id.parse().unwrap(),
            purpose: "newsletter".into(),
            kind: LinkKind::Confirm,
            record_id_opt: Some(pending.json["id"].as_str().unwrap().parse().unwrap()),
            notice_version_opt: None,
            exp: chrono::Utc::now().timestamp() - 60,
        },
    );
    let a = http.raw("GET", &format!("/o/{expired}"), None, None, vec![]).await;
    assert_eq!(a.status, 400);
    assert!(String::from_utf8_lossy(&a.body).contains("expired"));
    let r = http.json("POST", "/v1/consents/check", Some(&key), Some(check.clone())).await;
    assert_eq!(verdict(&r).1, "pending");

    // Opening the link confirms, with the notice version of the pending grant.
    let a = http.raw("GET", &format!("/o/{}", links.confirm_token), None, None, vec![]).await;
    assert_eq!(a.status, 200);
    assert!(String::from_utf8_lossy(&a.body).contains("is confirmed"));
    let r = http.json("POST", "/v1/consents/check", Some(&key), Some(check.clone())).await;
    assert_eq!(verdict(&r), (true, "granted".to_string()));
    assert_eq!(r.json["results"][0]["notice_version"], 1);
    let again = http.raw("GET", &format!("/o/{}", links.confirm_token), None, None, vec![]).await;
    assert!(String::from_utf8_lossy(&again.body).contains("already confirmed"));

    // Withdrawing is one click: the page, then its POST.
    let page = http.raw("GET", &format!("/u/{}", links.withdraw_token), None, None, vec![]).await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("method=\"post\""));
    let done = http
        .raw(
            "POST",
            &format!("/u/{}", links.withdraw_token),
            None,
            Some("application/x-www-form-urlencoded"),
            b"List-Unsubscribe=One-Click".to_vec(),
        )
        .await;
    assert_eq!(done.status, 200);
    let r = http.json("POST", "/v1/consents/check", Some(&key), Some(check)).await;
    assert_eq!(verdict(&r), (false, "withdrawn".to_string()), "withdrawal flips the check at once");
    // The old confirmation link cannot bring the consent back.
    let stale = http.raw("GET", &format!("/o/{}", links.confirm_token), None, None, vec![]).await;
    assert_eq!(stale.status, 409);

    let history = http.json("GET", &format!("/v1/contacts/{id}/consents"), Some(&key), None).await;
    let sources: Vec<&str> =
        history.json["history"].as_array().unwrap().iter().map(|r| r["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["web_form", "email_optin", "email_optin"]);
    sb.stop().await;
}
