//! `/v1/purposes…`, `/v1/consents…` and `/v1/contacts/{id}/consents`: REST over
//! `carnet.consent.v1.ConsentService`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use carnet_kit::Permission;
use carnet_kit::grpc::{from_timestamp, to_timestamp};
use carnet_proto::consent::v1 as pb;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, path_id};

/// Art. 6(1) lawful bases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LawfulBasisBody {
    Consent,
    Contract,
    LegalObligation,
    VitalInterests,
    PublicTask,
    LegitimateInterests,
}

impl LawfulBasisBody {
    fn to_proto(self) -> pb::LawfulBasis {
        use pb::LawfulBasis as P;
        match self {
            LawfulBasisBody::Consent => P::Consent,
            LawfulBasisBody::Contract => P::Contract,
            LawfulBasisBody::LegalObligation => P::LegalObligation,
            LawfulBasisBody::VitalInterests => P::VitalInterests,
            LawfulBasisBody::PublicTask => P::PublicTask,
            LawfulBasisBody::LegitimateInterests => P::LegitimateInterests,
        }
    }

    fn from_proto(v: i32) -> Option<LawfulBasisBody> {
        use pb::LawfulBasis as P;
        Some(match P::try_from(v).ok()? {
            P::Unspecified => return None,
            P::Consent => LawfulBasisBody::Consent,
            P::Contract => LawfulBasisBody::Contract,
            P::LegalObligation => LawfulBasisBody::LegalObligation,
            P::VitalInterests => LawfulBasisBody::VitalInterests,
            P::PublicTask => LawfulBasisBody::PublicTask,
            P::LegitimateInterests => LawfulBasisBody::LegitimateInterests,
        })
    }
}

/// How a consent or withdrawal was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentSourceBody {
    WebForm,
    EmailOptin,
    Phone,
    Api,
    Import,
}

impl ConsentSourceBody {
    fn to_proto(self) -> pb::ConsentSource {
        use pb::ConsentSource as P;
        match self {
            ConsentSourceBody::WebForm => P::WebForm,
            ConsentSourceBody::EmailOptin => P::EmailOptin,
            ConsentSourceBody::Phone => P::Phone,
            ConsentSourceBody::Api => P::Api,
            ConsentSourceBody::Import => P::Import,
        }
    }

    fn from_proto(v: i32) -> Option<ConsentSourceBody> {
        use pb::ConsentSource as P;
        Some(match P::try_from(v).ok()? {
            P::Unspecified => return None,
            P::WebForm => ConsentSourceBody::WebForm,
            P::EmailOptin => ConsentSourceBody::EmailOptin,
            P::Phone => ConsentSourceBody::Phone,
            P::Api => ConsentSourceBody::Api,
            P::Import => ConsentSourceBody::Import,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePurposeBody {
    pub key: String,
    #[serde(default)]
    pub description: String,
    pub lawful_basis: LawfulBasisBody,
    /// The text shown to people when they are asked (version 1).
    pub notice: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoticeBody {
    pub notice: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NoticeView {
    pub version: u32,
    pub text: String,
    pub sha256: String,
    pub created_at: Option<DateTime<Utc>>,
    pub created_by: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PurposeView {
    pub key: String,
    pub description: String,
    pub lawful_basis: Option<LawfulBasisBody>,
    pub current_version: u32,
    /// Every version, oldest first (one purpose) or the current one (lists).
    pub notices: Vec<NoticeView>,
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PurposeList {
    pub purposes: Vec<PurposeView>,
}

fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| from_timestamp("at", &t).ok())
}

fn purpose_view(p: pb::Purpose) -> PurposeView {
    PurposeView {
        key: p.key,
        description: p.description,
        lawful_basis: LawfulBasisBody::from_proto(p.lawful_basis),
        current_version: p.current_version,
        notices: p
            .notices
            .into_iter()
            .map(|n| NoticeView {
                version: n.version,
                text: n.text,
                sha256: n.sha256,
                created_at: time(n.created_at),
                created_by: n.created_by,
            })
            .collect(),
        created_at: time(p.created_at),
    }
}

/// Proof of how consent was given.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBody {
    pub form_id: Option<String>,
    /// The notice version shown; defaults to the current one.
    pub notice_version: Option<u32>,
    /// When the person acted; defaults to now.
    pub at: Option<DateTime<Utc>>,
    /// The person's address; stored only as a keyed hash.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Required for a lawful basis other than consent.
    pub justification: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionBody {
    Grant,
    Withdraw,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordConsentBody {
    pub contact_id: String,
    pub purpose: String,
    pub action: ActionBody,
    /// Defaults to the purpose's lawful basis.
    pub lawful_basis: Option<LawfulBasisBody>,
    pub source: ConsentSourceBody,
    #[serde(default)]
    pub evidence: EvidenceBody,
    /// Keep the grant pending until the person confirms (double opt-in).
    #[serde(default)]
    pub require_confirmation: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusView {
    Granted,
    Pending,
    Withdrawn,
}

fn status_view(v: i32) -> Option<StatusView> {
    Some(match pb::ConsentStatus::try_from(v).ok()? {
        pb::ConsentStatus::Unspecified => return None,
        pb::ConsentStatus::Granted => StatusView::Granted,
        pb::ConsentStatus::Pending => StatusView::Pending,
        pb::ConsentStatus::Withdrawn => StatusView::Withdrawn,
    })
}

/// One row of the consent ledger.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordView {
    pub id: String,
    pub contact_id: String,
    pub purpose: String,
    pub action: Option<ActionBody>,
    pub status: Option<StatusView>,
    pub lawful_basis: Option<LawfulBasisBody>,
    pub source: Option<ConsentSourceBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub form_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    pub actor: String,
    pub at: Option<DateTime<Utc>>,
}

fn some(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

fn record_view(r: pb::ConsentRecord) -> RecordView {
    RecordView {
        id: r.id,
        contact_id: r.contact_id,
        purpose: r.purpose,
        action: match pb::ConsentAction::try_from(r.action) {
            Ok(pb::ConsentAction::Grant) => Some(ActionBody::Grant),
            Ok(pb::ConsentAction::Withdraw) => Some(ActionBody::Withdraw),
            _ => None,
        },
        status: status_view(r.status),
        lawful_basis: LawfulBasisBody::from_proto(r.lawful_basis),
        source: ConsentSourceBody::from_proto(r.source),
        form_id: some(r.form_id),
        notice_version: Some(r.notice_version).filter(|v| *v > 0),
        notice_sha256: some(r.notice_sha256),
        ip_hash: some(r.ip_hash),
        user_agent: some(r.user_agent),
        justification: some(r.justification),
        actor: r.actor,
        at: time(r.at),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StateView {
    pub purpose: String,
    pub status: Option<StatusView>,
    pub lawful_basis: Option<LawfulBasisBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_version: Option<u32>,
    pub since: Option<DateTime<Utc>>,
}

/// A contact's current consent per purpose, and the ledger behind it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactConsentsView {
    pub current: Vec<StateView>,
    pub history: Vec<RecordView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckItem {
    pub contact_id: String,
    pub purpose: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    pub checks: Vec<CheckItem>,
}

/// One answer: allowed, and why (`granted`, `lawful_basis`, `pending`, `withdrawn`, `no_basis`,
/// `restricted`, `objected`, `unknown_contact`, `unknown_purpose`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResultView {
    pub contact_id: String,
    pub purpose: String,
    pub allowed: bool,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lawful_basis: Option<LawfulBasisBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResults {
    pub results: Vec<CheckResultView>,
}

/// Creates a purpose with its lawful basis and version 1 of its notice text.
#[utoipa::path(post, path = "/v1/purposes", tag = "consent", request_body = CreatePurposeBody,
    responses((status = 201, body = PurposeView), (status = "4XX", body = Problem)))]
pub async fn create_purpose(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreatePurposeBody>,
) -> Result<(StatusCode, Json<PurposeView>), ApiError> {
    auth.require(Permission::ConsentManage)?;
    let req = pb::CreatePurposeRequest {
        key: body.key,
        description: body.description,
        lawful_basis: body.lawful_basis.to_proto() as i32,
        notice: body.notice,
    };
    let purpose = state.consent(&auth).create_purpose(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(purpose_view(purpose))))
}

/// Lists the tenant's purposes with their current notice.
#[utoipa::path(get, path = "/v1/purposes", tag = "consent",
    responses((status = 200, body = PurposeList), (status = "4XX", body = Problem)))]
pub async fn list_purposes(State(state): State<AppState>, auth: Auth) -> Result<Json<PurposeList>, ApiError> {
    auth.require_any(&[Permission::ContactsRead, Permission::ConsentManage])?;
    let purposes = state.consent(&auth).list_purposes(pb::ListPurposesRequest {}).await?.into_inner().purposes;
    Ok(Json(PurposeList { purposes: purposes.into_iter().map(purpose_view).collect() }))
}

/// Returns a purpose with every version of its notice text.
#[utoipa::path(get, path = "/v1/purposes/{key}", tag = "consent", params(("key" = String, Path)),
    responses((status = 200, body = PurposeView), (status = "4XX", body = Problem)))]
pub async fn get_purpose(
    State(state): State<AppState>,
    auth: Auth,
    Path(key): Path<String>,
) -> Result<Json<PurposeView>, ApiError> {
    auth.require_any(&[Permission::ContactsRead, Permission::ConsentManage])?;
    let purpose = state.consent(&auth).get_purpose(pb::GetPurposeRequest { key }).await?.into_inner();
    Ok(Json(purpose_view(purpose)))
}

/// Stores a new version of the notice text; consents keep the version they were given under.
#[utoipa::path(put, path = "/v1/purposes/{key}/notice", tag = "consent", params(("key" = String, Path)), request_body = NoticeBody,
    responses((status = 200, body = PurposeView), (status = "4XX", body = Problem)))]
pub async fn put_notice(
    State(state): State<AppState>,
    auth: Auth,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<NoticeBody>,
) -> Result<Json<PurposeView>, ApiError> {
    auth.require(Permission::ConsentManage)?;
    let purpose =
        state.consent(&auth).update_notice(pb::UpdateNoticeRequest { key, notice: body.notice }).await?.into_inner();
    Ok(Json(purpose_view(purpose)))
}

/// Records a grant or a withdrawal on the append-only ledger.
#[utoipa::path(post, path = "/v1/consents", tag = "consent", request_body = RecordConsentBody,
    responses((status = 201, body = RecordView), (status = "4XX", body = Problem)))]
pub async fn record_consent(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<RecordConsentBody>,
) -> Result<(StatusCode, Json<RecordView>), ApiError> {
    auth.require(Permission::ConsentManage)?;
    let contact_id = path_id("contact_id", &body.contact_id)?;
    let e = body.evidence;
    let req = pb::RecordConsentRequest {
        contact_id: contact_id.to_string(),
        purpose: body.purpose,
        action: match body.action {
            ActionBody::Grant => pb::ConsentAction::Grant,
            ActionBody::Withdraw => pb::ConsentAction::Withdraw,
        } as i32,
        lawful_basis: body.lawful_basis.map_or(0, |b| b.to_proto() as i32),
        source: body.source.to_proto() as i32,
        evidence: Some(pb::Evidence {
            form_id: e.form_id.unwrap_or_default(),
            notice_version: e.notice_version.unwrap_or_default(),
            at: e.at.map(to_timestamp),
            ip: e.ip.unwrap_or_default(),
            user_agent: e.user_agent.unwrap_or_default(),
            justification: e.justification.unwrap_or_default(),
        }),
        require_confirmation: body.require_confirmation,
    };
    let record = state.consent(&auth).record_consent(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(record_view(record))))
}

/// A contact's current consent per purpose and the ledger behind it.
#[utoipa::path(get, path = "/v1/contacts/{id}/consents", tag = "consent", params(("id" = String, Path)),
    responses((status = 200, body = ContactConsentsView), (status = "4XX", body = Problem)))]
pub async fn contact_consents(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<ContactConsentsView>, ApiError> {
    auth.require(Permission::ContactsRead)?;
    let contact_id = path_id("id", &id)?.to_string();
    let answer =
        state.consent(&auth).get_contact_consents(pb::GetContactConsentsRequest { contact_id }).await?.into_inner();
    Ok(Json(ContactConsentsView {
        current: answer
            .current
            .into_iter()
            .map(|s| StateView {
                purpose: s.purpose,
                status: status_view(s.status),
                lawful_basis: LawfulBasisBody::from_proto(s.lawful_basis),
                notice_version: Some(s.notice_version).filter(|v| *v > 0),
                since: time(s.since),
            })
            .collect(),
        history: answer.history.into_iter().map(record_view).collect(),
    }))
}

/// May each purpose be used for each contact now? One call for many pairs.
#[utoipa::path(post, path = "/v1/consents/check", tag = "consent", request_body = CheckBody,
    responses((status = 200, body = CheckResults), (status = "4XX", body = Problem)))]
pub async fn check(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Json<CheckResults>, ApiError> {
    auth.require_any(&[Permission::ContactsRead, Permission::ConsentManage, Permission::CommsSend])?;
    let mut checks = Vec::with_capacity(body.checks.len());
    for (i, c) in body.checks.into_iter().enumerate() {
        let id = path_id(&format!("checks[{i}].contact_id"), &c.contact_id)?;
        checks.push(pb::CheckRequest { contact_id: id.to_string(), purpose: c.purpose });
    }
    let results = state.consent(&auth).check_batch(pb::CheckBatchRequest { checks }).await?.into_inner().results;
    Ok(Json(CheckResults {
        results: results
            .into_iter()
            .map(|r| CheckResultView {
                contact_id: r.contact_id,
                purpose: r.purpose,
                allowed: r.allowed,
                reason: r.reason,
                lawful_basis: LawfulBasisBody::from_proto(r.lawful_basis),
                notice_version: Some(r.notice_version).filter(|v| *v > 0),
                since: time(r.since),
            })
            .collect(),
    }))
}
