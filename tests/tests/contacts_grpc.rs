//! The contacts service end to end over gRPC, as a client sees it: in monolith mode (SQLite,
//! as `carnet up` runs) and in split mode (PostgreSQL, as `carnet migrate` + `carnet serve` run).

use carnet_kit::{ErrorCode, Permission, ServiceError};
use carnet_proto::common::v1::{EraseSubjectRequest, ExportSubjectRequest, Source, SourceChannel};
use carnet_proto::contacts::v1::{
    CreateContactRequest, DeleteContactRequest, FieldDefinition, FieldType, FieldValue, GetContactHistoryRequest,
    GetContactRequest, ListContactsRequest, MergeContactsRequest, SetFieldPolicyRequest, SetFlagRequest,
    UpdateContactRequest, field_value,
};
use carnet_tests::{ContactsClient, Sandbox, both_modes, caller_with, new_tenant};

fn source(channel: SourceChannel, detail: &str) -> Option<Source> {
    Some(Source { channel: channel as i32, detail: detail.into(), actor: String::new(), collected_at: None })
}

fn create(email: &str, first: &str) -> CreateContactRequest {
    CreateContactRequest {
        email: Some(email.into()),
        first_name: Some(first.into()),
        source: source(SourceChannel::WebForm, "form-newsletter"),
        ..Default::default()
    }
}

fn err(status: tonic::Status) -> ServiceError {
    ServiceError::from_status(&status)
}

async fn count(client: &mut ContactsClient) -> usize {
    let req = ListContactsRequest { limit: 500, ..Default::default() };
    client.list_contacts(req).await.unwrap().into_inner().contacts.len()
}

async fn full_lifecycle(sb: &Sandbox) {
    let owner = new_tenant();
    let mut c = sb.contacts(&owner);
    // Field policy with a custom field.
    let mut fields: Vec<FieldDefinition> = ["email", "first_name", "last_name", "phone"]
        .iter()
        .map(|k| FieldDefinition {
            key: k.to_string(),
            r#type: match *k {
                "email" => FieldType::Email,
                "phone" => FieldType::Phone,
                _ => FieldType::String,
            } as i32,
            category: "contact".into(),
            ..Default::default()
        })
        .collect();
    fields.push(FieldDefinition {
        key: "company".into(),
        r#type: FieldType::String as i32,
        category: "professional".into(),
        ..Default::default()
    });
    let policy = c.set_field_policy(SetFieldPolicyRequest { fields }).await.unwrap().into_inner();
    assert_eq!(policy.version, 1);

    // Create.
    let mut req = create(" Grace.Hopper@Navy.MIL ", "Grace");
    req.fields.insert("company".into(), FieldValue { kind: Some(field_value::Kind::StringValue("US Navy".into())) });
    let grace = c.create_contact(req).await.unwrap().into_inner();
    assert_eq!(grace.email.as_deref(), Some("grace.hopper@navy.mil"));
    let src = grace.source.clone().unwrap();
    assert_eq!(src.channel, SourceChannel::WebForm as i32);
    assert_eq!(src.detail, "form-newsletter");
    assert_eq!(src.actor, "key:test-owner", "the actor defaults to the caller");

    // Read.
    let got = c.get_contact(GetContactRequest { id: grace.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got, grace);

    // Rectify.
    let upd = UpdateContactRequest {
        id: grace.id.clone(),
        last_name: Some("Hopper".into()),
        phone: Some("+1 202 555 0143".into()),
        reason: "subject request".into(),
        expected_version: Some(grace.version),
        ..Default::default()
    };
    let rectified = c.update_contact(upd).await.unwrap().into_inner();
    assert_eq!(rectified.phone.as_deref(), Some("+12025550143"));
    assert_eq!(rectified.source, grace.source, "source is never rewritten");
    let history =
        c.get_contact_history(GetContactHistoryRequest { id: grace.id.clone() }).await.unwrap().into_inner().changes;
    assert_eq!(history.last().unwrap().kind, "rectified");
    assert_eq!(history.last().unwrap().fields, vec!["last_name".to_string(), "phone".to_string()]);

    // Search.
    let dup = c.create_contact(create("g.hopper@example.org", "Amazing Grace")).await.unwrap().into_inner();
    c.create_contact(create("alan@example.org", "Alan")).await.unwrap();
    let found = c
        .list_contacts(ListContactsRequest { query: "grace".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.contacts.len(), 2);

    // Merge.
    let merged = c
        .merge_contacts(MergeContactsRequest { id: grace.id.clone(), other_id: dup.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.email.as_deref(), Some("grace.hopper@navy.mil"));
    let gone = c.get_contact(GetContactRequest { id: dup.id.clone() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);

    // Restrict and object.
    let r = c
        .set_restriction(SetFlagRequest { id: grace.id.clone(), active: true, reason: "accuracy contested".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.restriction.unwrap().active);
    let o = c
        .set_objection(SetFlagRequest { id: grace.id.clone(), active: true, reason: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(o.objection.unwrap().active);

    // Export.
    let export = c.export_subject(ExportSubjectRequest { subject_id: grace.id.clone() }).await.unwrap().into_inner();
    assert_eq!(export.service, "contacts");
    let doc: serde_json::Value = serde_json::from_slice(&export.document_json).unwrap();
    assert_eq!(doc["contact"]["email"], "grace.hopper@navy.mil");
    assert_eq!(doc["contact"]["fields"]["company"], "US Navy");
    assert_eq!(doc["contact"]["source"]["channel"], "web_form");
    assert!(doc["history"].as_array().unwrap().iter().any(|h| h["kind"] == "merged"));

    // Erase.
    let erased = c
        .erase_subject(EraseSubjectRequest { subject_id: grace.id.clone(), request_id: "dsar-1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.removed["contacts"], 1);
    assert!(erased.removed["contact_changes"] >= 5);
    let gone = c.get_contact(GetContactRequest { id: grace.id.clone() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert_eq!(count(&mut c).await, 1);

    // Delete.
    let alan = c.list_contacts(ListContactsRequest::default()).await.unwrap().into_inner().contacts.remove(0);
    c.delete_contact(DeleteContactRequest { id: alan.id.clone() }).await.unwrap();
    assert_eq!(count(&mut c).await, 0);
}

both_modes!(full_lifecycle);

async fn refusals_name_the_field_and_store_nothing(sb: &Sandbox) {
    let owner = new_tenant();
    let mut c = sb.contacts(&owner);
    let ada = c.create_contact(create("ada@example.org", "Ada")).await.unwrap().into_inner();

    // Unknown field.
    let mut req = create("bob@example.org", "Bob");
    req.fields.insert("religion".into(), FieldValue { kind: Some(field_value::Kind::StringValue("x".into())) });
    let e = err(c.create_contact(req).await.unwrap_err());
    assert_eq!((e.code, e.field_opt.as_deref()), (ErrorCode::InvalidArgument, Some("fields.religion")));

    // Duplicate (differently written).
    let e = err(c.create_contact(create("  ADA@example.org", "Ada")).await.unwrap_err());
    assert_eq!((e.code, e.field_opt.as_deref()), (ErrorCode::AlreadyExists, Some("email")));
    assert_eq!(e.existing_id_opt.as_deref(), Some(ada.id.as_str()));

    // Missing source, missing channel, missing detail.
    let mut req = create("carol@example.org", "Carol");
    req.source = None;
    let e = err(c.create_contact(req).await.unwrap_err());
    assert_eq!((e.code, e.field_opt.as_deref()), (ErrorCode::InvalidArgument, Some("source")));
    let mut req = create("carol@example.org", "Carol");
    req.source = source(SourceChannel::Unspecified, "x");
    let e = err(c.create_contact(req).await.unwrap_err());
    assert_eq!(e.field_opt.as_deref(), Some("source.channel"));
    let mut req = create("carol@example.org", "Carol");
    req.source = source(SourceChannel::Import, "  ");
    let e = err(c.create_contact(req).await.unwrap_err());
    assert_eq!(e.field_opt.as_deref(), Some("source.detail"));

    // Malformed e-mail and phone; the message never echoes the value.
    let e = err(c.create_contact(create("dave-at-example.org", "Dave")).await.unwrap_err());
    assert_eq!((e.code, e.field_opt.as_deref()), (ErrorCode::InvalidArgument, Some("email")));
    assert!(!e.message.contains("dave-at-example"));
    let mut req = create("erin@example.org", "Erin");
    req.phone = Some("06 12 34".into());
    let e = err(c.create_contact(req).await.unwrap_err());
    assert_eq!((e.code, e.field_opt.as_deref()), (ErrorCode::InvalidArgument, Some("phone")));

    // Malformed id.
    let e = err(c.get_contact(GetContactRequest { id: "42".into() }).await.unwrap_err());
    assert_eq!((e.code, e.field_opt.as_deref()), (ErrorCode::InvalidArgument, Some("id")));

    // Nothing of the refused requests was stored.
    assert_eq!(count(&mut c).await, 1);

    // Another tenant's id reads as not found, everywhere.
    let mut stranger = sb.contacts(&new_tenant());
    let e = err(stranger.get_contact(GetContactRequest { id: ada.id.clone() }).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::NotFound);
    let upd = UpdateContactRequest { id: ada.id.clone(), first_name: Some("Eve".into()), ..Default::default() };
    assert_eq!(err(stranger.update_contact(upd).await.unwrap_err()).code, ErrorCode::NotFound);
    let e = err(stranger.export_subject(ExportSubjectRequest { subject_id: ada.id.clone() }).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(count(&mut stranger).await, 0);
    assert_eq!(
        c.get_contact(GetContactRequest { id: ada.id.clone() }).await.unwrap().into_inner().first_name.as_deref(),
        Some("Ada")
    );
}

both_modes!(refusals_name_the_field_and_store_nothing);

async fn permissions_are_checked_per_call(sb: &Sandbox) {
    let owner = new_tenant();
    let ada = sb.contacts(&owner).create_contact(create("ada@example.org", "Ada")).await.unwrap().into_inner();
    let mut reader = sb.contacts(&caller_with(owner.tenant_id, &[Permission::ContactsRead]));
    assert!(reader.get_contact(GetContactRequest { id: ada.id.clone() }).await.is_ok());
    let e = err(reader.create_contact(create("bob@example.org", "Bob")).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert!(e.message.contains("contacts:write"));
    // Sales may view and edit but not export or delete.
    let mut sales = sb.contacts(&caller_with(owner.tenant_id, &[Permission::ContactsRead, Permission::ContactsWrite]));
    let e = err(sales.export_subject(ExportSubjectRequest { subject_id: ada.id.clone() }).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    let e = err(sales.delete_contact(DeleteContactRequest { id: ada.id.clone() }).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    let e = err(sales.set_field_policy(SetFieldPolicyRequest { fields: vec![] }).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    // No caller context at all.
    let mut anonymous = carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient::new(sb.channel());
    let status = anonymous.get_contact(GetContactRequest { id: ada.id.clone() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // A context signed with another key.
    let forged = carnet_kit::CallerSigner::new(carnet_kit::MeshKey::generate(), owner.clone());
    let mut forger = carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient::with_interceptor(
        sb.channel(),
        forged,
    );
    let status = forger.get_contact(GetContactRequest { id: ada.id.clone() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

both_modes!(permissions_are_checked_per_call);

async fn health_reports_serving(sb: &Sandbox) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(sb.channel());
    let req = HealthCheckRequest { service: "carnet.contacts.v1.ContactsService".into() };
    let resp = health.check(req).await.unwrap().into_inner();
    assert_eq!(resp.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

both_modes!(health_reports_serving);
