//! The consent service end to end over gRPC, in monolith mode (SQLite) and split mode
//! (PostgreSQL): purposes and notice versions, the ledger, and checks honouring restriction and
//! objection from the contacts service.

use carnet_kit::{ErrorCode, ServiceError};
use carnet_proto::common::v1::{EraseSubjectRequest, ExportSubjectRequest, Source, SourceChannel};
use carnet_proto::consent::v1::{
    CheckBatchRequest, CheckRequest, ConsentAction, ConsentSource, ConsentStatus, CreatePurposeRequest, Evidence,
    GetContactConsentsRequest, GetPurposeRequest, LawfulBasis, RecordConsentRequest, UpdateNoticeRequest,
};
use carnet_proto::contacts::v1::{CreateContactRequest, SetFlagRequest};
use carnet_tests::{ConsentClient, Sandbox, both_modes, new_tenant};

async fn contact(sb: &Sandbox, caller: &carnet_kit::Caller, email: &str) -> String {
    let req = CreateContactRequest {
        email: Some(email.into()),
        source: Some(Source {
            channel: SourceChannel::Api as i32,
            detail: "consent-test".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    sb.contacts(caller).create_contact(req).await.unwrap().into_inner().id
}

fn grant(contact_id: &str, purpose: &str) -> RecordConsentRequest {
    RecordConsentRequest {
        contact_id: contact_id.into(),
        purpose: purpose.into(),
        action: ConsentAction::Grant as i32,
        source: ConsentSource::WebForm as i32,
        evidence: Some(Evidence {
            form_id: "form-1".into(),
            ip: "203.0.113.7".into(),
            user_agent: "Mozilla/5.0 test".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn check(c: &mut ConsentClient, contact_id: &str, purpose: &str) -> (bool, String) {
    let r =
        c.check(CheckRequest { contact_id: contact_id.into(), purpose: purpose.into() }).await.unwrap().into_inner();
    (r.allowed, r.reason)
}

async fn newsletter(c: &mut ConsentClient) {
    let req = CreatePurposeRequest {
        key: "newsletter".into(),
        description: "Monthly product news".into(),
        lawful_basis: LawfulBasis::Consent as i32,
        notice: "We will e-mail you our newsletter once a month.".into(),
    };
    c.create_purpose(req).await.unwrap();
}

async fn notice_versions_are_immutable_and_consents_keep_theirs(sb: &Sandbox) {
    let owner = new_tenant();
    let mut c = sb.consent(&owner);
    newsletter(&mut c).await;
    let ada = contact(sb, &owner, "ada@example.org").await;
    let first = c.record_consent(grant(&ada, "newsletter")).await.unwrap().into_inner();
    assert_eq!(first.notice_version, 1);
    assert_eq!(first.status, ConsentStatus::Granted as i32);
    assert!(!first.ip_hash.is_empty() && !first.ip_hash.contains("203.0.113.7"), "the address is kept hashed only");
    let v2 = "We will e-mail you our newsletter once a week.";
    let purpose = c
        .update_notice(UpdateNoticeRequest { key: "newsletter".into(), notice: v2.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purpose.current_version, 2);
    assert_eq!(purpose.notices.len(), 2);
    assert_eq!(purpose.notices[0].text, "We will e-mail you our newsletter once a month.");
    assert_ne!(purpose.notices[0].sha256, purpose.notices[1].sha256);
    // Saving the same text again makes no new version.
    let same = c
        .update_notice(UpdateNoticeRequest { key: "newsletter".into(), notice: v2.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.current_version, 2);
    // The earlier consent still points at version 1, with the hash of what was shown.
    let consents =
        c.get_contact_consents(GetContactConsentsRequest { contact_id: ada.clone() }).await.unwrap().into_inner();
    assert_eq!(consents.history[0].notice_version, 1);
    assert_eq!(consents.history[0].notice_sha256, purpose.notices[0].sha256);
    let r = c.check(CheckRequest { contact_id: ada.clone(), purpose: "newsletter".into() }).await.unwrap().into_inner();
    assert_eq!((r.allowed, r.reason.as_str(), r.notice_version), (true, "granted", 1));
    // A consent recorded for the version a form showed earlier keeps that version.
    let bob = contact(sb, &owner, "bob@example.org").await;
    let mut shown_v1 = grant(&bob, "newsletter");
    shown_v1.evidence.as_mut().unwrap().notice_version = 1;
    assert_eq!(c.record_consent(shown_v1).await.unwrap().into_inner().notice_version, 1);
    let mut shown_v9 = grant(&bob, "newsletter");
    shown_v9.evidence.as_mut().unwrap().notice_version = 9;
    let e = ServiceError::from_status(&c.record_consent(shown_v9).await.unwrap_err());
    assert_eq!(e.field_opt.as_deref(), Some("evidence.notice_version"));
    let p = c.get_purpose(GetPurposeRequest { key: "newsletter".into() }).await.unwrap().into_inner();
    assert_eq!(p.notices.len(), 2);
}

both_modes!(notice_versions_are_immutable_and_consents_keep_theirs);

async fn pending_withdrawn_restricted_and_objected(sb: &Sandbox) {
    let owner = new_tenant();
    let mut c = sb.consent(&owner);
    newsletter(&mut c).await;
    let li = CreatePurposeRequest {
        key: "account_news".into(),
        description: "Service announcements".into(),
        lawful_basis: LawfulBasis::LegitimateInterests as i32,
        notice: "We tell customers about changes to their service.".into(),
    };
    c.create_purpose(li).await.unwrap();
    let ada = contact(sb, &owner, "ada@example.org").await;
    assert_eq!(check(&mut c, &ada, "newsletter").await, (false, "no_basis".to_string()));

    // Double opt-in: pending until confirmed.
    let mut pending = grant(&ada, "newsletter");
    pending.require_confirmation = true;
    let record = c.record_consent(pending).await.unwrap().into_inner();
    assert_eq!(record.status, ConsentStatus::Pending as i32);
    assert_eq!(check(&mut c, &ada, "newsletter").await, (false, "pending".to_string()));
    c.record_consent(grant(&ada, "newsletter")).await.unwrap();
    assert_eq!(check(&mut c, &ada, "newsletter").await, (true, "granted".to_string()));

    // Withdrawal flips the check at once.
    let mut withdraw = grant(&ada, "newsletter");
    withdraw.action = ConsentAction::Withdraw as i32;
    c.record_consent(withdraw).await.unwrap();
    assert_eq!(check(&mut c, &ada, "newsletter").await, (false, "withdrawn".to_string()));

    // A non-consent basis needs its justification.
    let mut li_grant = grant(&ada, "account_news");
    let e = ServiceError::from_status(&c.record_consent(li_grant.clone()).await.unwrap_err());
    assert_eq!((e.code, e.field_opt.as_deref()), (ErrorCode::InvalidArgument, Some("evidence.justification")));
    li_grant.evidence.as_mut().unwrap().justification = "existing customer, service changes".into();
    let r = c.record_consent(li_grant).await.unwrap().into_inner();
    assert_eq!(r.lawful_basis, LawfulBasis::LegitimateInterests as i32);
    assert_eq!(check(&mut c, &ada, "account_news").await, (true, "lawful_basis".to_string()));

    // Objection (Art. 21) stops legitimate-interest processing.
    let mut contacts = sb.contacts(&owner);
    contacts.set_objection(SetFlagRequest { id: ada.clone(), active: true, reason: String::new() }).await.unwrap();
    assert_eq!(check(&mut c, &ada, "account_news").await, (false, "objected".to_string()));

    // Restriction (Art. 18) refuses every purpose, consent included.
    let bob = contact(sb, &owner, "bob@example.org").await;
    c.record_consent(grant(&bob, "newsletter")).await.unwrap();
    assert_eq!(check(&mut c, &bob, "newsletter").await, (true, "granted".to_string()));
    contacts
        .set_restriction(SetFlagRequest { id: bob.clone(), active: true, reason: "contested".into() })
        .await
        .unwrap();
    assert_eq!(check(&mut c, &bob, "newsletter").await, (false, "restricted".to_string()));
    assert_eq!(check(&mut c, &bob, "account_news").await, (false, "restricted".to_string()));

    // Unknown contact and purpose.
    assert_eq!(check(&mut c, &uuid::Uuid::now_v7().to_string(), "newsletter").await.1, "unknown_contact");
    assert_eq!(check(&mut c, &bob, "telemarketing").await.1, "unknown_purpose");
    let e = ServiceError::from_status(
        &c.record_consent(grant(&uuid::Uuid::now_v7().to_string(), "newsletter")).await.unwrap_err(),
    );
    assert_eq!((e.code, e.field_opt.as_deref()), (ErrorCode::NotFound, Some("contact_id")));
    let e = ServiceError::from_status(&c.record_consent(grant(&bob, "telemarketing")).await.unwrap_err());
    assert_eq!((e.code, e.field_opt.as_deref()), (ErrorCode::NotFound, Some("purpose")));
}

both_modes!(pending_withdrawn_restricted_and_objected);

async fn batch_check_export_and_erase(sb: &Sandbox) {
    let owner = new_tenant();
    let mut c = sb.consent(&owner);
    newsletter(&mut c).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = contact(sb, &owner, &format!("p{i}@example.org")).await;
        if i % 2 == 0 {
            c.record_consent(grant(&id, "newsletter")).await.unwrap();
        }
        ids.push(id);
    }
    let checks = ids.iter().map(|id| CheckRequest { contact_id: id.clone(), purpose: "newsletter".into() }).collect();
    let results = c.check_batch(CheckBatchRequest { checks }).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.contact_id, ids[i], "results keep the request order");
        assert_eq!(r.allowed, i % 2 == 0);
        assert_eq!(r.reason, if i % 2 == 0 { "granted" } else { "no_basis" });
    }
    // Another tenant sees none of it.
    let mut stranger = sb.consent(&new_tenant());
    let checks = vec![CheckRequest { contact_id: ids[0].clone(), purpose: "newsletter".into() }];
    let r = stranger.check_batch(CheckBatchRequest { checks }).await.unwrap().into_inner().results;
    assert_eq!(r[0].reason, "unknown_purpose");

    let export = c.export_subject(ExportSubjectRequest { subject_id: ids[0].clone() }).await.unwrap().into_inner();
    let doc: serde_json::Value = serde_json::from_slice(&export.document_json).unwrap();
    assert_eq!(doc["ledger"][0]["purpose"], "newsletter");
    assert_eq!(doc["ledger"][0]["notice_version"], 1);
    assert_eq!(doc["consents"][0]["status"], "granted");
    let erased = c
        .erase_subject(EraseSubjectRequest { subject_id: ids[0].clone(), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((erased.removed["consent_records"], erased.removed["consent_states"]), (1, 1));
    let left =
        c.get_contact_consents(GetContactConsentsRequest { contact_id: ids[0].clone() }).await.unwrap().into_inner();
    assert!(left.history.is_empty() && left.current.is_empty());
}

both_modes!(batch_check_export_and_erase);
