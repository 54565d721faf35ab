//! A tour of the contacts service against a running `carnet up`:
//! `cargo run -p carnet-tests --example tour -- [--data-dir DIR] [--grpc-addr HOST:PORT]`.
//!
//! Signs its calls with the mesh key from the data dir, as the gateway does, for a fresh tenant.

use carnet_kit::{Caller, CallerSigner, MeshKey, ServiceError};
use carnet_proto::common::v1::{EraseSubjectRequest, ExportSubjectRequest, Source, SourceChannel};
use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use carnet_proto::contacts::v1::{
    CreateContactRequest, FieldDefinition, FieldType, FieldValue, GetContactHistoryRequest, GetContactRequest,
    ListContactsRequest, MergeContactsRequest, SetFieldPolicyRequest, SetFlagRequest, UpdateContactRequest,
    field_value,
};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_string())
}

fn refused(what: &str, status: tonic::Status) {
    let e = ServiceError::from_status(&status);
    println!("  refused {what}: code={} field={} message=\"{}\"", e.code, e.field_opt.unwrap_or_default(), e.message);
}

fn web_form() -> Option<Source> {
    Some(Source {
        channel: SourceChannel::WebForm as i32,
        detail: "form:newsletter".into(),
        actor: String::new(),
        collected_at: None,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let data_dir = arg("--data-dir", "./carnet-data");
    let addr = arg("--grpc-addr", "127.0.0.1:50051");
    let key =
        MeshKey::from_text(&std::fs::read_to_string(format!("{data_dir}/mesh.key"))?).map_err(anyhow::Error::msg)?;
    let caller = Caller::all_permissions(uuid::Uuid::now_v7(), "key:tour");
    println!("tenant {}", caller.tenant_id);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut c = ContactsServiceClient::with_interceptor(channel, CallerSigner::new(key, caller));

    let def = |key: &str, t: FieldType, category: &str| FieldDefinition {
        key: key.into(),
        r#type: t as i32,
        category: category.into(),
        ..Default::default()
    };
    let fields = vec![
        def("email", FieldType::Email, "contact"),
        def("first_name", FieldType::String, "identity"),
        def("last_name", FieldType::String, "identity"),
        def("phone", FieldType::Phone, "contact"),
        def("company", FieldType::String, "professional"),
    ];
    let policy = c.set_field_policy(SetFieldPolicyRequest { fields }).await?.into_inner();
    println!("1. field policy v{}: {:?}", policy.version, policy.fields.iter().map(|f| &f.key).collect::<Vec<_>>());

    let mut req = CreateContactRequest {
        email: Some(" Ada.Lovelace@Example.org ".into()),
        first_name: Some("Ada".into()),
        source: web_form(),
        ..Default::default()
    };
    req.fields.insert(
        "company".into(),
        FieldValue { kind: Some(field_value::Kind::StringValue("Analytical Engines".into())) },
    );
    let ada = c.create_contact(req.clone()).await?.into_inner();
    println!("2. created {} email={:?} source={:?}", ada.id, ada.email, ada.source.as_ref().map(|s| &s.detail));

    let mut bad = req.clone();
    bad.fields.insert("religion".into(), FieldValue { kind: Some(field_value::Kind::StringValue("x".into())) });
    refused("a field outside the policy", c.create_contact(bad).await.unwrap_err());
    refused("a duplicate e-mail", c.create_contact(req.clone()).await.unwrap_err());
    refused(
        "a missing source",
        c.create_contact(CreateContactRequest { source: None, ..req.clone() }).await.unwrap_err(),
    );
    refused(
        "a malformed phone",
        c.create_contact(CreateContactRequest { email: None, phone: Some("12 34".into()), ..req.clone() })
            .await
            .unwrap_err(),
    );

    let upd = UpdateContactRequest {
        id: ada.id.clone(),
        last_name: Some("Lovelace".into()),
        reason: "subject request".into(),
        ..Default::default()
    };
    c.update_contact(upd).await?;
    let history = c.get_contact_history(GetContactHistoryRequest { id: ada.id.clone() }).await?.into_inner();
    for h in &history.changes {
        println!("3. history: {} {:?} by {}", h.kind, h.fields, h.actor);
    }

    let dup = CreateContactRequest {
        phone: Some("+44 20 7946 0958".into()),
        first_name: Some("Augusta".into()),
        source: web_form(),
        ..Default::default()
    };
    let dup = c.create_contact(dup).await?.into_inner();
    let found =
        c.list_contacts(ListContactsRequest { query: "lovelace".into(), ..Default::default() }).await?.into_inner();
    println!("4. search 'lovelace': {} result(s)", found.contacts.len());
    let merged = c.merge_contacts(MergeContactsRequest { id: ada.id.clone(), other_id: dup.id }).await?.into_inner();
    println!("5. merged: phone={:?}", merged.phone);

    c.set_restriction(SetFlagRequest { id: ada.id.clone(), active: true, reason: "accuracy contested".into() }).await?;
    let o = c
        .set_objection(SetFlagRequest { id: ada.id.clone(), active: true, reason: "direct marketing".into() })
        .await?
        .into_inner();
    println!(
        "6. restricted={} objected={}",
        o.restriction.is_some_and(|f| f.active),
        o.objection.is_some_and(|f| f.active)
    );

    let export = c.export_subject(ExportSubjectRequest { subject_id: ada.id.clone() }).await?.into_inner();
    let doc: serde_json::Value = serde_json::from_slice(&export.document_json)?;
    println!("7. export ({} records):\n{}", export.record_count, serde_json::to_string_pretty(&doc)?);

    let erased = c
        .erase_subject(EraseSubjectRequest { subject_id: ada.id.clone(), request_id: String::new() })
        .await?
        .into_inner();
    println!("8. erased: {:?}", erased.removed);
    refused("reading an erased contact", c.get_contact(GetContactRequest { id: ada.id }).await.unwrap_err());
    Ok(())
}
