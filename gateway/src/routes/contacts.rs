//! `/v1/field-policy` and `/v1/contacts…`: REST over `carnet.contacts.v1.ContactsService`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use carnet_kit::Permission;
use carnet_kit::grpc::{from_timestamp, to_timestamp};
use carnet_proto::common::v1 as pb_common;
use carnet_proto::contacts::v1 as pb;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery, path_id};

/// A custom field value: text (also dates, e-mails, phones, enum values), number or boolean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum FieldValueBody {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl FieldValueBody {
    fn to_proto(&self) -> pb::FieldValue {
        let kind = match self {
            FieldValueBody::Bool(b) => pb::field_value::Kind::BoolValue(*b),
            FieldValueBody::Number(n) => pb::field_value::Kind::NumberValue(*n),
            FieldValueBody::Text(s) => pb::field_value::Kind::StringValue(s.clone()),
        };
        pb::FieldValue { kind: Some(kind) }
    }

    fn from_proto(v: &pb::FieldValue) -> Option<FieldValueBody> {
        Some(match v.kind.as_ref()? {
            pb::field_value::Kind::BoolValue(b) => FieldValueBody::Bool(*b),
            pb::field_value::Kind::NumberValue(n) => FieldValueBody::Number(*n),
            pb::field_value::Kind::StringValue(s) => FieldValueBody::Text(s.clone()),
        })
    }
}

/// How a contact entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelBody {
    WebForm,
    Import,
    Api,
    Manual,
    Email,
    Phone,
    Enrichment,
    Event,
}

impl ChannelBody {
    fn to_proto(self) -> pb_common::SourceChannel {
        use pb_common::SourceChannel as P;
        match self {
            ChannelBody::WebForm => P::WebForm,
            ChannelBody::Import => P::Import,
            ChannelBody::Api => P::Api,
            ChannelBody::Manual => P::Manual,
            ChannelBody::Email => P::Email,
            ChannelBody::Phone => P::Phone,
            ChannelBody::Enrichment => P::Enrichment,
            ChannelBody::Event => P::Event,
        }
    }

    fn from_proto(v: i32) -> Option<ChannelBody> {
        use pb_common::SourceChannel as P;
        Some(match P::try_from(v).ok()? {
            P::Unspecified => return None,
            P::WebForm => ChannelBody::WebForm,
            P::Import => ChannelBody::Import,
            P::Api => ChannelBody::Api,
            P::Manual => ChannelBody::Manual,
            P::Email => ChannelBody::Email,
            P::Phone => ChannelBody::Phone,
            P::Enrichment => ChannelBody::Enrichment,
            P::Event => ChannelBody::Event,
        })
    }
}

/// Where, when and how a contact entered. The actor is the caller.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceBody {
    pub channel: ChannelBody,
    /// A form id, file name, API client, event…
    pub detail: String,
    /// When the data was collected; defaults to now.
    #[serde(default)]
    pub collected_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    pub channel: Option<ChannelBody>,
    pub detail: String,
    pub actor: String,
    pub collected_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlagView {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
}

/// A contact.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    pub id: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    pub fields: BTreeMap<String, FieldValueBody>,
    pub source: SourceView,
    /// Provenance of single values written after creation by a named source (an enrichment
    /// plugin: channel `enrichment`, detail `<plugin>@<version>`).
    pub field_sources: BTreeMap<String, SourceView>,
    pub restriction: FlagView,
    pub objection: FlagView,
    /// Pass back as `expected_version` to refuse a rectification of a stale copy.
    pub version: i64,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// The last sign of a relationship (a person's change, a flag, a consent change, a logged
    /// call); retention counts inactivity from it (docs/retention.md).
    pub last_activity_at: Option<DateTime<Utc>>,
}

fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| from_timestamp("at", &t).ok())
}

fn flag_view(flag: Option<pb::Flag>) -> FlagView {
    let flag = flag.unwrap_or_default();
    FlagView { active: flag.active, reason: Some(flag.reason).filter(|r| !r.is_empty()), since: time(flag.since) }
}

impl From<pb::Contact> for ContactView {
    fn from(c: pb::Contact) -> Self {
        let source = c.source.unwrap_or_default();
        let view = |source: pb_common::Source| SourceView {
            channel: ChannelBody::from_proto(source.channel),
            detail: source.detail,
            actor: source.actor,
            collected_at: time(source.collected_at),
        };
        ContactView {
            id: c.id,
            email: c.email,
            first_name: c.first_name,
            last_name: c.last_name,
            phone: c.phone,
            fields: c.fields.iter().filter_map(|(k, v)| Some((k.clone(), FieldValueBody::from_proto(v)?))).collect(),
            source: view(source),
            field_sources: c.field_sources.into_iter().map(|(k, s)| (k, view(s))).collect(),
            restriction: flag_view(c.restriction),
            objection: flag_view(c.objection),
            version: c.version,
            created_at: time(c.created_at),
            updated_at: time(c.updated_at),
            last_activity_at: time(c.last_activity_at),
        }
    }
}

/// A new contact. Every field must be in the tenant's field policy.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContactBody {
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldValueBody>,
    pub source: SourceBody,
    /// Needed to create a person erased earlier on request (their e-mail or phone matches an
    /// erasure tombstone): why it is lawful now. Kept in the contact's history.
    pub erasure_override_reason: Option<String>,
}

/// Distinguishes an absent member (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(de: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(de).map(Some)
}

/// A rectification: members present are set, members set to `null` are cleared.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateContactBody {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub phone: Option<Option<String>>,
    /// Custom fields to set (text, number or boolean); `null` clears one.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, Option<FieldValueBody>>,
    /// Why the data was rectified; kept in the change history.
    pub reason: Option<String>,
    /// Refuse the change with `conflict` unless the contact is at this version.
    pub expected_version: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeBody {
    /// The duplicate folded into this contact and removed.
    pub other_id: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagBody {
    pub active: bool,
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Case-insensitive match on e-mail, names and phone.
    pub q: Option<String>,
    /// 1 to 500, default 50.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactPage {
    pub contacts: Vec<ContactView>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeView {
    pub kind: String,
    pub fields: Vec<String>,
    pub actor: String,
    pub at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub related_contact_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
    pub changes: Vec<ChangeView>,
}

/// Field types of the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldTypeBody {
    String,
    Email,
    Phone,
    Date,
    Number,
    Boolean,
    Enum,
}

impl FieldTypeBody {
    fn to_proto(self) -> pb::FieldType {
        match self {
            FieldTypeBody::String => pb::FieldType::String,
            FieldTypeBody::Email => pb::FieldType::Email,
            FieldTypeBody::Phone => pb::FieldType::Phone,
            FieldTypeBody::Date => pb::FieldType::Date,
            FieldTypeBody::Number => pb::FieldType::Number,
            FieldTypeBody::Boolean => pb::FieldType::Boolean,
            FieldTypeBody::Enum => pb::FieldType::Enum,
        }
    }

    fn from_proto(v: i32) -> Option<FieldTypeBody> {
        Some(match pb::FieldType::try_from(v).ok()? {
            pb::FieldType::Unspecified => return None,
            pb::FieldType::String => FieldTypeBody::String,
            pb::FieldType::Email => FieldTypeBody::Email,
            pb::FieldType::Phone => FieldTypeBody::Phone,
            pb::FieldType::Date => FieldTypeBody::Date,
            pb::FieldType::Number => FieldTypeBody::Number,
            pb::FieldType::Boolean => FieldTypeBody::Boolean,
            pb::FieldType::Enum => FieldTypeBody::Enum,
        })
    }
}

/// One field the tenant may collect.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldDefinitionBody {
    pub key: String,
    #[serde(rename = "type")]
    pub field_type: FieldTypeBody,
    /// Data category, e.g. `contact`, `identity`, `professional`.
    pub category: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enum_values: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
}

/// The tenant's field policy.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldPolicyBody {
    pub fields: Vec<FieldDefinitionBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FieldPolicyView {
    pub fields: Vec<FieldDefinitionBody>,
    pub version: u32,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: String,
}

fn policy_view(p: pb::FieldPolicy) -> FieldPolicyView {
    FieldPolicyView {
        fields: p
            .fields
            .into_iter()
            .filter_map(|f| {
                Some(FieldDefinitionBody {
                    key: f.key,
                    field_type: FieldTypeBody::from_proto(f.r#type)?,
                    category: f.category,
                    required: f.required,
                    enum_values: f.enum_values,
                    purpose: f.purpose,
                })
            })
            .collect(),
        version: p.version,
        updated_at: time(p.updated_at),
        updated_by: p.updated_by,
    }
}

/// Returns the tenant's field policy.
#[utoipa::path(get, path = "/v1/field-policy", tag = "contacts",
    responses((status = 200, body = FieldPolicyView), (status = "4XX", body = Problem)))]
pub async fn get_field_policy(State(state): State<AppState>, auth: Auth) -> Result<Json<FieldPolicyView>, ApiError> {
    auth.require(Permission::ContactsRead)?;
    let policy = state.contacts(&auth).get_field_policy(pb::GetFieldPolicyRequest {}).await?.into_inner();
    Ok(Json(policy_view(policy)))
}

/// Replaces the tenant's field policy (a new version).
#[utoipa::path(put, path = "/v1/field-policy", tag = "contacts", request_body = FieldPolicyBody,
    responses((status = 200, body = FieldPolicyView), (status = "4XX", body = Problem)))]
pub async fn put_field_policy(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<FieldPolicyBody>,
) -> Result<Json<FieldPolicyView>, ApiError> {
    auth.require(Permission::PolicyManage)?;
    let fields = body
        .fields
        .into_iter()
        .map(|f| pb::FieldDefinition {
            key: f.key,
            r#type: f.field_type.to_proto() as i32,
            category: f.category,
            required: f.required,
            enum_values: f.enum_values,
            purpose: f.purpose,
        })
        .collect();
    let policy = state.contacts(&auth).set_field_policy(pb::SetFieldPolicyRequest { fields }).await?.into_inner();
    Ok(Json(policy_view(policy)))
}

/// Creates a contact; the source is required and every field must be in the field policy.
#[utoipa::path(post, path = "/v1/contacts", tag = "contacts", request_body = CreateContactBody,
    responses((status = 201, body = ContactView), (status = 409, description = "e-mail or phone already held; `existing_id` names the holder", body = Problem), (status = "4XX", body = Problem)))]
pub async fn create_contact(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateContactBody>,
) -> Result<(StatusCode, Json<ContactView>), ApiError> {
    auth.require(Permission::ContactsWrite)?;
    let req = pb::CreateContactRequest {
        email: body.email,
        first_name: body.first_name,
        last_name: body.last_name,
        phone: body.phone,
        fields: body.fields.iter().map(|(k, v)| (k.clone(), v.to_proto())).collect(),
        source: Some(pb_common::Source {
            channel: body.source.channel.to_proto() as i32,
            detail: body.source.detail,
            actor: String::new(),
            collected_at: body.source.collected_at.map(to_timestamp),
        }),
        erasure_override_reason: body.erasure_override_reason.unwrap_or_default(),
    };
    let contact = state.contacts(&auth).create_contact(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(contact.into())))
}

/// Searches and lists the tenant's contacts, in creation order, with cursor pagination.
#[utoipa::path(get, path = "/v1/contacts", tag = "contacts", params(ListParams),
    responses((status = 200, body = ContactPage), (status = "4XX", body = Problem)))]
pub async fn list_contacts(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ContactPage>, ApiError> {
    auth.require(Permission::ContactsRead)?;
    let req = pb::ListContactsRequest {
        query: params.q.unwrap_or_default(),
        limit: params.limit.unwrap_or_default(),
        cursor: params.cursor.unwrap_or_default(),
    };
    let page = state.contacts(&auth).list_contacts(req).await?.into_inner();
    Ok(Json(ContactPage {
        contacts: page.contacts.into_iter().map(ContactView::from).collect(),
        next_cursor: Some(page.next_cursor).filter(|c| !c.is_empty()),
    }))
}

/// Reads one contact.
#[utoipa::path(get, path = "/v1/contacts/{id}", tag = "contacts", params(("id" = String, Path)),
    responses((status = 200, body = ContactView), (status = "4XX", body = Problem)))]
pub async fn get_contact(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<ContactView>, ApiError> {
    auth.require(Permission::ContactsRead)?;
    let id = path_id("id", &id)?;
    let contact = state.contacts(&auth).get_contact(pb::GetContactRequest { id: id.to_string() }).await?.into_inner();
    Ok(Json(contact.into()))
}

/// Rectifies a contact (Art. 16); the history records which fields changed, not their values.
#[utoipa::path(patch, path = "/v1/contacts/{id}", tag = "contacts", params(("id" = String, Path)), request_body = UpdateContactBody,
    responses((status = 200, body = ContactView), (status = "4XX", body = Problem)))]
pub async fn update_contact(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateContactBody>,
) -> Result<Json<ContactView>, ApiError> {
    auth.require(Permission::ContactsWrite)?;
    let id = path_id("id", &id)?;
    let mut clear = Vec::new();
    let mut take = |key: &str, value: Option<Option<String>>| match value {
        Some(Some(v)) => Some(v),
        Some(None) => {
            clear.push(key.to_string());
            None
        }
        None => None,
    };
    let email = take("email", body.email);
    let first_name = take("first_name", body.first_name);
    let last_name = take("last_name", body.last_name);
    let phone = take("phone", body.phone);
    let mut fields = std::collections::HashMap::new();
    for (key, value) in body.fields {
        match value {
            Some(v) => {
                fields.insert(key, v.to_proto());
            }
            None => clear.push(key),
        }
    }
    let req = pb::UpdateContactRequest {
        id: id.to_string(),
        email,
        first_name,
        last_name,
        phone,
        fields,
        clear_fields: clear,
        reason: body.reason.unwrap_or_default(),
        expected_version: body.expected_version,
        source: None,
    };
    let contact = state.contacts(&auth).update_contact(req).await?.into_inner();
    Ok(Json(contact.into()))
}

/// Deletes a contact and its history.
#[utoipa::path(delete, path = "/v1/contacts/{id}", tag = "contacts", params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem)))]
pub async fn delete_contact(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Permission::ContactsDelete)?;
    let id = path_id("id", &id)?;
    state.contacts(&auth).delete_contact(pb::DeleteContactRequest { id: id.to_string() }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Folds `other_id` into this contact: blanks are filled from it, it is removed.
#[utoipa::path(post, path = "/v1/contacts/{id}/merge", tag = "contacts", params(("id" = String, Path)), request_body = MergeBody,
    responses((status = 200, body = ContactView), (status = "4XX", body = Problem)))]
pub async fn merge_contacts(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MergeBody>,
) -> Result<Json<ContactView>, ApiError> {
    auth.require(Permission::ContactsWrite)?;
    let id = path_id("id", &id)?;
    let other_id = path_id("other_id", &body.other_id)?;
    let req = pb::MergeContactsRequest { id: id.to_string(), other_id: other_id.to_string() };
    let contact = state.contacts(&auth).merge_contacts(req).await?.into_inner();
    Ok(Json(contact.into()))
}

/// Checks the permission to set a flag and builds the request.
fn flag_request(auth: &Auth, id: &str, body: FlagBody) -> Result<pb::SetFlagRequest, ApiError> {
    auth.require(Permission::ContactsWrite)?;
    Ok(pb::SetFlagRequest {
        id: path_id("id", id)?.to_string(),
        active: body.active,
        reason: body.reason.unwrap_or_default(),
    })
}

/// Sets or lifts the restriction of processing (Art. 18).
#[utoipa::path(put, path = "/v1/contacts/{id}/restriction", tag = "contacts", params(("id" = String, Path)), request_body = FlagBody,
    responses((status = 200, body = ContactView), (status = "4XX", body = Problem)))]
pub async fn put_restriction(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<FlagBody>,
) -> Result<Json<ContactView>, ApiError> {
    let req = flag_request(&auth, &id, body)?;
    Ok(Json(state.contacts(&auth).set_restriction(req).await?.into_inner().into()))
}

/// Sets or lifts the objection to processing (Art. 21).
#[utoipa::path(put, path = "/v1/contacts/{id}/objection", tag = "contacts", params(("id" = String, Path)), request_body = FlagBody,
    responses((status = 200, body = ContactView), (status = "4XX", body = Problem)))]
pub async fn put_objection(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<FlagBody>,
) -> Result<Json<ContactView>, ApiError> {
    let req = flag_request(&auth, &id, body)?;
    Ok(Json(state.contacts(&auth).set_objection(req).await?.into_inner().into()))
}

/// Returns the change history of a contact: which fields changed, when, by whom.
#[utoipa::path(get, path = "/v1/contacts/{id}/history", tag = "contacts", params(("id" = String, Path)),
    responses((status = 200, body = HistoryView), (status = "4XX", body = Problem)))]
pub async fn get_history(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<HistoryView>, ApiError> {
    auth.require(Permission::ContactsRead)?;
    let req = pb::GetContactHistoryRequest { id: path_id("id", &id)?.to_string() };
    let changes = state.contacts(&auth).get_contact_history(req).await?.into_inner().changes;
    Ok(Json(HistoryView {
        changes: changes
            .into_iter()
            .map(|c| ChangeView {
                kind: c.kind,
                fields: c.fields,
                actor: c.actor,
                at: time(c.at),
                reason: Some(c.reason).filter(|r| !r.is_empty()),
                related_contact_id: Some(c.related_contact_id).filter(|r| !r.is_empty()),
            })
            .collect(),
    }))
}

/// One-click export of one person (Art. 15/20): a JSON document to download.
#[utoipa::path(get, path = "/v1/contacts/{id}/export", tag = "contacts", params(("id" = String, Path)),
    responses((status = 200, description = "the contacts service's export document", content_type = "application/json"), (status = "4XX", body = Problem)))]
pub async fn export_contact(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Permission::ContactsExport)?;
    let id: Uuid = path_id("id", &id)?;
    let req = pb_common::ExportSubjectRequest { subject_id: id.to_string() };
    let export = state.contacts(&auth).export_subject(req).await?.into_inner();
    tracing::info!(tenant_id = %auth.0.tenant_id, contact_id = %id, "contact exported");
    let disposition = format!("attachment; filename=\"contact-{id}.json\"");
    Ok((
        [(header::CONTENT_TYPE, "application/json".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        export.document_json,
    )
        .into_response())
}
