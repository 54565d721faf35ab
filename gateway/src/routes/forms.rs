//! Web forms: `POST /v1/forms` defines one (authenticated); `GET /f/{form_id}` serves it as a
//! real HTML page and `POST /f/{form_id}` takes its submission (public, CSRF token, honeypot,
//! rate limit). A submission creates the contact with source `web_form` and the form id, and
//! records each ticked consent, pending until confirmed, with the exact notice version shown.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use carnet_kit::{Caller, ErrorCode, Permission, ServiceError};
use carnet_proto::common::v1 as pb_common;
use carnet_proto::consent::v1 as pb;
use carnet_proto::contacts::v1 as pb_contacts;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::routes::public::{ClientIp, error_page, escape, limit, page, user_agent};

/// How long a served form may be submitted.
const FORM_TOKEN_SECS: i64 = 2 * 3600;
/// The honeypot input: hidden from people, filled by bots.
const HONEYPOT: &str = "website";
const CSRF: &str = "_csrf";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFormBody {
    pub name: String,
    /// Field keys of the tenant's field policy, in display order.
    pub fields: Vec<String>,
    /// Purpose keys: one unticked consent box each, showing the purpose's current notice.
    #[serde(default)]
    pub consents: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FormConsentView {
    pub purpose: String,
    pub notice_version: u32,
    pub notice_text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FormView {
    /// The public id: the page is served at `/f/{id}`.
    pub id: String,
    pub name: String,
    pub fields: Vec<String>,
    pub consents: Vec<FormConsentView>,
    /// Where the page is served.
    pub url: String,
}

/// Defines a web form from fields of the field policy and consent boxes bound to purposes.
#[utoipa::path(post, path = "/v1/forms", tag = "consent", request_body = CreateFormBody,
    responses((status = 201, body = FormView), (status = "4XX", body = Problem)))]
pub async fn create_form(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateFormBody>,
) -> Result<(StatusCode, Json<FormView>), ApiError> {
    auth.require(Permission::ConsentManage)?;
    let req = pb::CreateFormRequest { name: body.name, fields: body.fields, consents: body.consents };
    let form = state.consent(&auth).create_form(req).await?.into_inner();
    Ok((
        StatusCode::CREATED,
        Json(FormView {
            url: format!("/f/{}", form.id),
            id: form.id,
            name: form.name,
            fields: form.fields,
            consents: form
                .consents
                .into_iter()
                .map(|c| FormConsentView {
                    purpose: c.purpose,
                    notice_version: c.notice_version,
                    notice_text: c.notice_text,
                })
                .collect(),
        }),
    ))
}

/// What the served page showed, signed into its CSRF token: the submission records these notice
/// versions, whatever the client sends back.
#[derive(Debug, Serialize, Deserialize)]
struct FormToken {
    f: String,
    v: Vec<(String, u32)>,
    iat: i64,
}

fn form_key(state: &AppState) -> Vec<u8> {
    state.mesh_key().derive("gateway-forms")
}

fn sign_token(key: &[u8], token: &FormToken) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(token).expect("token serialises"));
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac key");
    mac.update(payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn verify_token(key: &[u8], text: &str, form_id: &str) -> Result<FormToken, ApiError> {
    let refused =
        || ApiError::new(ErrorCode::PermissionDenied, "the form has expired or was not served here: reload it");
    let (payload, sig) = text.split_once('.').ok_or_else(refused)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac key");
    mac.update(payload.as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(sig).map_err(|_| refused())?).map_err(|_| refused())?;
    let token: FormToken =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).map_err(|_| refused())?).map_err(|_| refused())?;
    let age = chrono::Utc::now().timestamp() - token.iat;
    if token.f != form_id || !(0..=FORM_TOKEN_SECS).contains(&age) {
        return Err(refused());
    }
    Ok(token)
}

/// The caller a public form acts as: only what a submission needs, in the form's tenant.
fn form_caller(form_id: &str) -> Result<Caller, ApiError> {
    let (tenant_id, id) = carnet_kit::links::parse_form_public_id(form_id)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "form not found"))?;
    Ok(Caller::new(
        tenant_id,
        format!("form:{}", id.simple()),
        [Permission::ContactsRead, Permission::ContactsWrite, Permission::ConsentManage],
    ))
}

fn input_type(field_type: i32) -> &'static str {
    match pb_contacts::FieldType::try_from(field_type).unwrap_or(pb_contacts::FieldType::String) {
        pb_contacts::FieldType::Email => "email",
        pb_contacts::FieldType::Phone => "tel",
        pb_contacts::FieldType::Date => "date",
        pb_contacts::FieldType::Number => "number",
        pb_contacts::FieldType::Boolean => "checkbox",
        _ => "text",
    }
}

fn label(key: &str) -> String {
    let text = key.replace('_', " ");
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

async fn load(state: &AppState, form_id: &str) -> Result<(Caller, pb::Form, pb_contacts::FieldPolicy), ApiError> {
    let caller = form_caller(form_id)?;
    let form =
        state.consent_as(caller.clone()).get_form(pb::GetFormRequest { id: form_id.to_string() }).await?.into_inner();
    let policy =
        state.contacts_as(caller.clone()).get_field_policy(pb_contacts::GetFieldPolicyRequest {}).await?.into_inner();
    Ok((caller, form, policy))
}

/// `GET /f/{form_id}`: the form as a page, consent boxes unticked, each with its notice text.
pub async fn form_page(State(state): State<AppState>, ClientIp(ip): ClientIp, Path(form_id): Path<String>) -> Response {
    if let Err(err) = limit(&state, &ip) {
        return error_page(err);
    }
    let (_, form, policy) = match load(&state, &form_id).await {
        Ok(v) => v,
        Err(err) => return error_page(err),
    };
    let token = FormToken {
        f: form_id.clone(),
        v: form.consents.iter().map(|c| (c.purpose.clone(), c.notice_version)).collect(),
        iat: chrono::Utc::now().timestamp(),
    };
    let mut html = format!("<h1>{}</h1><form method=\"post\" action=\"/f/{}\">", escape(&form.name), escape(&form_id));
    for key in &form.fields {
        let def = policy.fields.iter().find(|f| &f.key == key);
        let required = if def.is_some_and(|d| d.required) { " required" } else { "" };
        let field_type = def.map_or(0, |d| d.r#type);
        if field_type == pb_contacts::FieldType::Enum as i32 {
            let options: String = def
                .map(|d| d.enum_values.iter().map(|v| format!("<option>{}</option>", escape(v))).collect())
                .unwrap_or_default();
            html.push_str(&format!(
                "<label for=\"{k}\">{l}</label><select id=\"{k}\" name=\"{k}\"{required}><option value=\"\"></option>{options}</select>",
                k = escape(key),
                l = escape(&label(key))
            ));
        } else {
            html.push_str(&format!(
                "<label for=\"{k}\">{l}</label><input id=\"{k}\" name=\"{k}\" type=\"{t}\"{required}>",
                k = escape(key),
                l = escape(&label(key)),
                t = input_type(field_type)
            ));
        }
    }
    for consent in &form.consents {
        html.push_str(&format!(
            "<div class=\"consent\"><input type=\"checkbox\" id=\"consent_{p}\" name=\"consent_{p}\" value=\"yes\">\
             <label for=\"consent_{p}\">{t}</label></div>",
            p = escape(&consent.purpose),
            t = escape(&consent.notice_text)
        ));
    }
    html.push_str(&format!(
        "<div class=\"hp\" aria-hidden=\"true\"><label for=\"{HONEYPOT}\">Leave empty</label>\
         <input id=\"{HONEYPOT}\" name=\"{HONEYPOT}\" type=\"text\" tabindex=\"-1\" autocomplete=\"off\"></div>\
         <input type=\"hidden\" name=\"{CSRF}\" value=\"{}\"><button type=\"submit\">Send</button></form>",
        escape(&sign_token(&form_key(&state), &token))
    ));
    Html(page(&form.name, &html)).into_response()
}

/// `POST /f/{form_id}`: creates the contact (source `web_form`) and records the ticked consents,
/// pending until confirmed, with the notice versions the page showed.
pub async fn submit_form(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path(form_id): Path<String>,
    body: Bytes,
) -> Response {
    match submit(&state, &ip, &headers, &form_id, &body).await {
        Ok(pending) => {
            let text = if pending > 0 {
                "Thank you. We have sent you an e-mail: your consent takes effect once you confirm it there."
            } else {
                "Thank you, we have received your details."
            };
            Html(page("Thank you", &format!("<h1>Thank you</h1><p>{text}</p>"))).into_response()
        }
        Err(err) => error_page(err),
    }
}

async fn submit(
    state: &AppState,
    ip: &str,
    headers: &HeaderMap,
    form_id: &str,
    body: &[u8],
) -> Result<usize, ApiError> {
    limit(state, ip)?;
    let values: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let (caller, form, policy) = load(state, form_id).await?;
    let token = verify_token(&form_key(state), values.get(CSRF).map(String::as_str).unwrap_or_default(), form_id)?;
    if values.get(HONEYPOT).is_some_and(|v| !v.is_empty()) {
        // Answer as if accepted: telling a bot it was caught only teaches it.
        tracing::info!(tenant_id = %caller.tenant_id, "form submission dropped by the honeypot");
        return Ok(0);
    }
    for name in values.keys() {
        let known = name == CSRF
            || name == HONEYPOT
            || form.fields.contains(name)
            || name.strip_prefix("consent_").is_some_and(|p| form.consents.iter().any(|c| c.purpose == p));
        if !known {
            return Err(ApiError::invalid_field(name.clone(), "is not a field of this form"));
        }
    }
    let mut req = pb_contacts::CreateContactRequest {
        source: Some(pb_common::Source {
            channel: pb_common::SourceChannel::WebForm as i32,
            detail: format!("form:{form_id}"),
            actor: caller.principal.clone(),
            collected_at: None,
        }),
        ..Default::default()
    };
    for key in &form.fields {
        let Some(raw) = values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) else { continue };
        let field_type = policy.fields.iter().find(|f| &f.key == key).map_or(0, |f| f.r#type);
        match key.as_str() {
            "email" => req.email = Some(raw.to_string()),
            "first_name" => req.first_name = Some(raw.to_string()),
            "last_name" => req.last_name = Some(raw.to_string()),
            "phone" => req.phone = Some(raw.to_string()),
            _ => {
                let kind = match pb_contacts::FieldType::try_from(field_type) {
                    Ok(pb_contacts::FieldType::Number) => pb_contacts::field_value::Kind::NumberValue(
                        raw.parse().map_err(|_| ApiError::invalid_field(key.clone(), "is not a number"))?,
                    ),
                    Ok(pb_contacts::FieldType::Boolean) => pb_contacts::field_value::Kind::BoolValue(true),
                    _ => pb_contacts::field_value::Kind::StringValue(raw.to_string()),
                };
                req.fields.insert(key.clone(), pb_contacts::FieldValue { kind: Some(kind) });
            }
        }
    }
    let mut contacts = state.contacts_as(caller.clone());
    // A person already known keeps their data: a public form never overwrites it.
    let contact_id = match contacts.create_contact(req).await {
        Ok(c) => c.into_inner().id,
        Err(status) => {
            let err = ServiceError::from_status(&status);
            match (err.code, err.existing_id_opt.clone()) {
                (ErrorCode::AlreadyExists, Some(id)) => id,
                _ => return Err(err.into()),
            }
        }
    };
    let mut consent = state.consent_as(caller.clone());
    let mut pending = 0;
    let mut pending_purposes = Vec::new();
    for (purpose, version) in &token.v {
        if values.get(&format!("consent_{purpose}")).is_none_or(|v| v.is_empty()) {
            continue;
        }
        let record = pb::RecordConsentRequest {
            contact_id: contact_id.clone(),
            purpose: purpose.clone(),
            action: pb::ConsentAction::Grant as i32,
            lawful_basis: pb::LawfulBasis::Consent as i32,
            source: pb::ConsentSource::WebForm as i32,
            evidence: Some(pb::Evidence {
                form_id: form_id.to_string(),
                notice_version: *version,
                at: None,
                ip: ip.to_string(),
                user_agent: user_agent(headers),
                justification: String::new(),
            }),
            require_confirmation: true,
        };
        consent.record_consent(record).await?;
        pending += 1;
        pending_purposes.push(purpose.clone());
    }
    // Double opt-in: comms mails each confirmation link. The grants are recorded whatever
    // happens here; a failed request is logged and can be sent again (POST /v1/consent-requests).
    let Ok(mut comms) = state.comms_as(caller) else {
        if !pending_purposes.is_empty() {
            tracing::warn!("no comms service is configured: double opt-in mails are not sent");
        }
        return Ok(pending);
    };
    for purpose in pending_purposes {
        let req = carnet_proto::comms::v1::RequestConsentRequest { purpose, contact_ids: vec![contact_id.clone()] };
        if let Err(status) = comms.request_consent(req).await {
            let err = ServiceError::from_status(&status);
            tracing::warn!(code = err.code.as_str(), "the double opt-in mail could not be queued");
        }
    }
    Ok(pending)
}
