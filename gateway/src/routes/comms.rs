//! `/v1/messages`, `/v1/campaigns…`, `/v1/sequences…`, `/v1/templates…`, `/v1/consent-requests`,
//! `/v1/bounces`, `/v1/suppressions`, `/v1/calls…` and `/v1/contacts/{id}/timeline`: REST over
//! `carnet.comms.v1.CommsService`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use carnet_kit::Permission;
use carnet_kit::grpc::{from_timestamp, to_timestamp};
use carnet_proto::comms::v1 as pb;

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery, path_id};

fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| from_timestamp("at", &t).ok())
}

fn content(template_id: Option<String>, subject: Option<String>, body: Option<String>) -> Option<pb::Content> {
    Some(pb::Content {
        template_id: template_id.unwrap_or_default(),
        subject: subject.unwrap_or_default(),
        body: body.unwrap_or_default(),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateBody {
    pub name: String,
    /// The consent purpose every mail of this template is sent for.
    pub purpose: String,
    /// `{{key}}` variables name fields of the tenant's field policy.
    pub subject: String,
    pub body: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub id: String,
    pub name: String,
    pub purpose: String,
    pub subject: String,
    pub body: String,
    pub variables: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
}

fn template_view(t: pb::Template) -> TemplateView {
    TemplateView {
        id: t.id,
        name: t.name,
        purpose: t.purpose,
        subject: t.subject,
        body: t.body,
        variables: t.variables,
        created_at: time(t.created_at),
    }
}

/// One mail to one contact. Give `template_id`, or `subject` and `body`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    pub contact_id: String,
    pub purpose: String,
    pub template_id: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
}

/// A mail to one recipient and its delivery state.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub id: String,
    pub contact_id: String,
    pub purpose: String,
    /// `message`, `campaign`, `sequence`, `consent_request`.
    pub origin: String,
    pub origin_id: String,
    pub step: u32,
    /// `queued`, `sending`, `sent`, `skipped`, `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub attempts: u32,
    pub subject: String,
    pub created_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
}

fn message_view(m: pb::Message) -> MessageView {
    MessageView {
        id: m.id,
        contact_id: m.contact_id,
        purpose: m.purpose,
        origin: m.origin,
        origin_id: m.origin_id,
        step: m.step,
        status: m.status,
        reason: Some(m.reason).filter(|r| !r.is_empty()),
        attempts: m.attempts,
        subject: m.subject,
        created_at: time(m.created_at),
        due_at: time(m.due_at),
        sent_at: time(m.sent_at),
    }
}

/// A campaign: one mail per recipient, for one purpose. The audience is `contact_ids` or a
/// `query` (the contact search; `*` is every contact). Give `template_id`, or `subject` and `body`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignBody {
    /// Defaults to the subject.
    pub name: Option<String>,
    pub purpose: String,
    pub template_id: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    #[serde(default)]
    pub contact_ids: Vec<String>,
    pub query: Option<String>,
}

/// A campaign and its progress: recipients so far, sent, failed, and skipped by reason
/// (`no_consent`, `withdrawn`, `restricted`, `objected`, `suppressed`, `erased`, `no_address`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    pub id: String,
    pub name: String,
    pub purpose: String,
    pub template_id: String,
    /// `draft`, `queuing`, `sending`, `completed`.
    pub status: String,
    pub recipients: u64,
    /// Waiting or being handed to the relay.
    pub queued: u64,
    pub sent: u64,
    pub failed: u64,
    pub skipped: HashMap<String, u64>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

fn campaign_view(c: pb::Campaign) -> CampaignView {
    CampaignView {
        id: c.id,
        name: c.name,
        purpose: c.purpose,
        template_id: c.template_id,
        status: c.status,
        recipients: c.recipients,
        queued: c.queued,
        sent: c.sent,
        failed: c.failed,
        skipped: c.skipped,
        created_at: time(c.created_at),
        started_at: time(c.started_at),
        completed_at: time(c.completed_at),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignList {
    pub campaigns: Vec<CampaignView>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepBody {
    /// Seconds after the previous step was sent (after enrolment for the first).
    #[serde(default)]
    pub delay_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A sequence of mails with delays; each step is consent-checked when it is due, and a contact
/// who may no longer be mailed leaves the sequence.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SequenceBody {
    pub name: String,
    pub purpose: String,
    pub steps: Vec<StepBody>,
    #[serde(default)]
    pub contact_ids: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollBody {
    pub contact_ids: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentView {
    pub contact_id: String,
    /// `active`, `completed`, `stopped`.
    pub status: String,
    pub step: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SequenceView {
    pub id: String,
    pub name: String,
    pub purpose: String,
    pub steps: Vec<StepBody>,
    pub enrollments: Vec<EnrollmentView>,
    pub created_at: Option<DateTime<Utc>>,
}

fn sequence_view(s: pb::Sequence) -> SequenceView {
    SequenceView {
        id: s.id,
        name: s.name,
        purpose: s.purpose,
        steps: s
            .steps
            .into_iter()
            .map(|st| {
                let c = st.content.unwrap_or_default();
                StepBody {
                    delay_seconds: st.delay_seconds,
                    template_id: Some(c.template_id),
                    subject: Some(c.subject),
                    body: Some(c.body),
                }
            })
            .collect(),
        enrollments: s
            .enrollments
            .into_iter()
            .map(|e| EnrollmentView {
                contact_id: e.contact_id,
                status: e.status,
                step: e.step,
                reason: Some(e.reason).filter(|r| !r.is_empty()),
                updated_at: time(e.updated_at),
            })
            .collect(),
        created_at: time(s.created_at),
    }
}

/// Asks contacts for consent by mail: a pending grant gets its confirmation link, a contact
/// without consent the notice text with an acceptance link.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequestBody {
    pub purpose: String,
    pub contact_ids: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    pub messages: Vec<MessageView>,
}

/// A bounce or complaint the relay reported: the address is suppressed for every purpose.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BounceBody {
    pub email: String,
    /// `hard` (default) or `complaint`.
    #[serde(default)]
    pub kind: String,
}

/// Suppresses a contact's address for one purpose (or all, when `purpose` is absent).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressionBody {
    pub contact_id: String,
    pub purpose: Option<String>,
    /// `withdrawn` (default) or `manual`.
    #[serde(default)]
    pub reason: String,
}

/// The suppression list entry: a keyed hash, never the address.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuppressionView {
    pub hash: String,
    pub already_suppressed: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    pub contact_id: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: u64,
    /// `connected`, `no_answer`, `busy`, `voicemail`, `failed`.
    pub outcome: String,
    #[serde(default)]
    pub notes: String,
    /// Accepted only with consent for the call-recording purpose, or `verbal_consent`.
    #[serde(default)]
    pub recording: bool,
    /// The person agreed to the recording on this call: recorded as a consent (source `phone`).
    #[serde(default)]
    pub verbal_consent: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallPatch {
    pub recording: Option<bool>,
    #[serde(default)]
    pub verbal_consent: bool,
    pub outcome: Option<String>,
    pub notes: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallView {
    pub id: String,
    pub contact_id: String,
    pub direction: String,
    pub started_at: Option<DateTime<Utc>>,
    pub duration_seconds: u64,
    pub outcome: String,
    pub notes: String,
    pub recording: bool,
    /// What made the recording lawful: `verbal:<consent record id>` or `consent:<grant time>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_basis: Option<String>,
    pub created_by: String,
    pub created_at: Option<DateTime<Utc>>,
}

fn call_view(c: pb::Call) -> CallView {
    CallView {
        id: c.id,
        contact_id: c.contact_id,
        direction: c.direction,
        started_at: time(c.started_at),
        duration_seconds: c.duration_seconds,
        outcome: c.outcome,
        notes: c.notes,
        recording: c.recording,
        recording_basis: Some(c.recording_consent_id).filter(|r| !r.is_empty()),
        created_by: c.created_by,
        created_at: time(c.created_at),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntryView {
    pub at: Option<DateTime<Utc>>,
    /// `mail`, `call`, `consent`.
    pub kind: String,
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    pub ref_id: String,
    pub summary: String,
}

/// A contact's activity, newest first: mails, calls and consent events.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineView {
    pub entries: Vec<TimelineEntryView>,
}

/// Stores a reusable template.
#[utoipa::path(post, path = "/v1/templates", tag = "comms", request_body = TemplateBody,
    responses((status = 201, body = TemplateView), (status = "4XX", body = Problem)))]
pub async fn create_template(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<TemplateBody>,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    auth.require(Permission::CommsSend)?;
    let req =
        pb::CreateTemplateRequest { name: body.name, purpose: body.purpose, subject: body.subject, body: body.body };
    let t = state.comms(&auth)?.create_template(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(template_view(t))))
}

#[utoipa::path(get, path = "/v1/templates/{id}", tag = "comms", params(("id" = String, Path)),
    responses((status = 200, body = TemplateView), (status = "4XX", body = Problem)))]
pub async fn get_template(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TemplateView>, ApiError> {
    auth.require_any(&[Permission::CommsSend, Permission::ContactsRead])?;
    path_id("id", &id)?;
    let t = state.comms(&auth)?.get_template(pb::GetTemplateRequest { id }).await?.into_inner();
    Ok(Json(template_view(t)))
}

/// Queues one mail; refused with `consent_required` (422) when the contact may not be mailed
/// for the purpose. Delivery runs in the background: follow it with `GET /v1/messages/{id}`.
#[utoipa::path(post, path = "/v1/messages", tag = "comms", request_body = MessageBody,
    responses((status = 202, body = MessageView), (status = "4XX", body = Problem)))]
pub async fn send_message(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<MessageBody>,
) -> Result<(StatusCode, Json<MessageView>), ApiError> {
    auth.require(Permission::CommsSend)?;
    let req = pb::SendMessageRequest {
        contact_id: body.contact_id,
        purpose: body.purpose,
        content: content(body.template_id, body.subject, body.body),
    };
    let m = state.comms(&auth)?.send_message(req).await?.into_inner();
    Ok((StatusCode::ACCEPTED, Json(message_view(m))))
}

#[utoipa::path(get, path = "/v1/messages/{id}", tag = "comms", params(("id" = String, Path)),
    responses((status = 200, body = MessageView), (status = "4XX", body = Problem)))]
pub async fn get_message(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    auth.require_any(&[Permission::CommsSend, Permission::ContactsRead])?;
    path_id("id", &id)?;
    let m = state.comms(&auth)?.get_message(pb::GetMessageRequest { id }).await?.into_inner();
    Ok(Json(message_view(m)))
}

/// Creates a draft campaign; nothing is sent until `POST /v1/campaigns/{id}/send`.
#[utoipa::path(post, path = "/v1/campaigns", tag = "comms", request_body = CampaignBody,
    responses((status = 201, body = CampaignView), (status = "4XX", body = Problem)))]
pub async fn create_campaign(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CampaignBody>,
) -> Result<(StatusCode, Json<CampaignView>), ApiError> {
    auth.require(Permission::CommsSend)?;
    let name = body.name.or_else(|| body.subject.clone()).unwrap_or_else(|| "campaign".into());
    let req = pb::CreateCampaignRequest {
        name,
        purpose: body.purpose,
        content: content(body.template_id, body.subject, body.body),
        audience: Some(pb::Audience { contact_ids: body.contact_ids, query: body.query.unwrap_or_default() }),
    };
    let c = state.comms(&auth)?.create_campaign(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(campaign_view(c))))
}

/// Starts a campaign: its audience is consent-checked and queued, then mailed in the background.
/// Sending twice mails nobody twice.
#[utoipa::path(post, path = "/v1/campaigns/{id}/send", tag = "comms", params(("id" = String, Path)),
    responses((status = 202, body = CampaignView), (status = "4XX", body = Problem)))]
pub async fn send_campaign(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CampaignView>), ApiError> {
    auth.require(Permission::CommsSend)?;
    path_id("id", &id)?;
    let c = state.comms(&auth)?.send_campaign(pb::SendCampaignRequest { id }).await?.into_inner();
    Ok((StatusCode::ACCEPTED, Json(campaign_view(c))))
}

#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "comms", params(("id" = String, Path)),
    responses((status = 200, body = CampaignView), (status = "4XX", body = Problem)))]
pub async fn get_campaign(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    auth.require_any(&[Permission::CommsSend, Permission::ContactsRead])?;
    path_id("id", &id)?;
    let c = state.comms(&auth)?.get_campaign(pb::GetCampaignRequest { id }).await?.into_inner();
    Ok(Json(campaign_view(c)))
}

#[utoipa::path(get, path = "/v1/campaigns", tag = "comms",
    responses((status = 200, body = CampaignList), (status = "4XX", body = Problem)))]
pub async fn list_campaigns(State(state): State<AppState>, auth: Auth) -> Result<Json<CampaignList>, ApiError> {
    auth.require_any(&[Permission::CommsSend, Permission::ContactsRead])?;
    let list = state.comms(&auth)?.list_campaigns(pb::ListCampaignsRequest {}).await?.into_inner();
    Ok(Json(CampaignList { campaigns: list.campaigns.into_iter().map(campaign_view).collect() }))
}

fn steps(steps: Vec<StepBody>) -> Vec<pb::SequenceStep> {
    steps
        .into_iter()
        .map(|s| pb::SequenceStep {
            delay_seconds: s.delay_seconds,
            content: content(s.template_id, s.subject, s.body),
        })
        .collect()
}

/// Creates a sequence and enrols `contact_ids`; the first step is due after its delay.
#[utoipa::path(post, path = "/v1/sequences", tag = "comms", request_body = SequenceBody,
    responses((status = 201, body = SequenceView), (status = "4XX", body = Problem)))]
pub async fn create_sequence(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<SequenceBody>,
) -> Result<(StatusCode, Json<SequenceView>), ApiError> {
    auth.require(Permission::CommsSend)?;
    let req = pb::CreateSequenceRequest {
        name: body.name,
        purpose: body.purpose,
        steps: steps(body.steps),
        contact_ids: body.contact_ids,
    };
    let s = state.comms(&auth)?.create_sequence(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(sequence_view(s))))
}

#[utoipa::path(get, path = "/v1/sequences/{id}", tag = "comms", params(("id" = String, Path)),
    responses((status = 200, body = SequenceView), (status = "4XX", body = Problem)))]
pub async fn get_sequence(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<SequenceView>, ApiError> {
    auth.require_any(&[Permission::CommsSend, Permission::ContactsRead])?;
    path_id("id", &id)?;
    let s = state.comms(&auth)?.get_sequence(pb::GetSequenceRequest { id }).await?.into_inner();
    Ok(Json(sequence_view(s)))
}

/// Enrols more contacts (those already enrolled are left as they are).
#[utoipa::path(post, path = "/v1/sequences/{id}/enrollments", tag = "comms", params(("id" = String, Path)),
    request_body = EnrollBody, responses((status = 200, body = SequenceView), (status = "4XX", body = Problem)))]
pub async fn enroll(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<EnrollBody>,
) -> Result<Json<SequenceView>, ApiError> {
    auth.require(Permission::CommsSend)?;
    path_id("id", &id)?;
    let req = pb::EnrollContactsRequest { sequence_id: id, contact_ids: body.contact_ids };
    let s = state.comms(&auth)?.enroll_contacts(req).await?.into_inner();
    Ok(Json(sequence_view(s)))
}

/// Mails consent requests (double opt-in confirmations or acceptance links).
#[utoipa::path(post, path = "/v1/consent-requests", tag = "comms", request_body = ConsentRequestBody,
    responses((status = 202, body = MessageList), (status = "4XX", body = Problem)))]
pub async fn request_consent(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<ConsentRequestBody>,
) -> Result<(StatusCode, Json<MessageList>), ApiError> {
    auth.require(Permission::CommsSend)?;
    let req = pb::RequestConsentRequest { purpose: body.purpose, contact_ids: body.contact_ids };
    let r = state.comms(&auth)?.request_consent(req).await?.into_inner();
    Ok((StatusCode::ACCEPTED, Json(MessageList { messages: r.messages.into_iter().map(message_view).collect() })))
}

/// Reports a bounce or complaint: the address's keyed hash goes on the suppression list.
#[utoipa::path(post, path = "/v1/bounces", tag = "comms", request_body = BounceBody,
    responses((status = 200, body = SuppressionView), (status = "4XX", body = Problem)))]
pub async fn report_bounce(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<BounceBody>,
) -> Result<Json<SuppressionView>, ApiError> {
    auth.require(Permission::CommsSend)?;
    let r = state
        .comms(&auth)?
        .report_bounce(pb::ReportBounceRequest { email: body.email, kind: body.kind })
        .await?
        .into_inner();
    Ok(Json(SuppressionView { hash: r.hash, already_suppressed: r.already_suppressed }))
}

/// Suppresses a contact's address.
#[utoipa::path(post, path = "/v1/suppressions", tag = "comms", request_body = SuppressionBody,
    responses((status = 200, body = SuppressionView), (status = "4XX", body = Problem)))]
pub async fn suppress(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<SuppressionBody>,
) -> Result<Json<SuppressionView>, ApiError> {
    auth.require_any(&[Permission::CommsSend, Permission::ConsentManage])?;
    let req = pb::SuppressContactRequest {
        contact_id: body.contact_id,
        purpose: body.purpose.unwrap_or_default(),
        reason: body.reason,
    };
    let r = state.comms(&auth)?.suppress_contact(req).await?.into_inner();
    Ok(Json(SuppressionView { hash: r.hash, already_suppressed: r.already_suppressed }))
}

/// Logs a call; `recording: true` needs consent for the call-recording purpose or
/// `verbal_consent: true` (refused with `consent_required` otherwise).
#[utoipa::path(post, path = "/v1/calls", tag = "comms", request_body = CallBody,
    responses((status = 201, body = CallView), (status = "4XX", body = Problem)))]
pub async fn log_call(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CallBody>,
) -> Result<(StatusCode, Json<CallView>), ApiError> {
    auth.require(Permission::CommsSend)?;
    let req = pb::LogCallRequest {
        contact_id: body.contact_id,
        direction: body.direction,
        started_at: Some(to_timestamp(body.started_at)),
        duration_seconds: body.duration_seconds,
        outcome: body.outcome,
        notes: body.notes,
        recording: body.recording,
        verbal_consent: body.verbal_consent,
    };
    let c = state.comms(&auth)?.log_call(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(call_view(c))))
}

/// Toggles recording (consent-gated) or corrects the outcome and notes.
#[utoipa::path(patch, path = "/v1/calls/{id}", tag = "comms", params(("id" = String, Path)), request_body = CallPatch,
    responses((status = 200, body = CallView), (status = "4XX", body = Problem)))]
pub async fn update_call(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CallPatch>,
) -> Result<Json<CallView>, ApiError> {
    auth.require(Permission::CommsSend)?;
    path_id("id", &id)?;
    let req = pb::UpdateCallRequest {
        id,
        recording: body.recording,
        verbal_consent: body.verbal_consent,
        outcome: body.outcome,
        notes: body.notes,
    };
    let c = state.comms(&auth)?.update_call(req).await?.into_inner();
    Ok(Json(call_view(c)))
}

/// A contact's activity, newest first.
#[utoipa::path(get, path = "/v1/contacts/{id}/timeline", tag = "comms", params(("id" = String, Path), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = TimelineView), (status = "4XX", body = Problem)))]
pub async fn timeline(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TimelineQuery>,
) -> Result<Json<TimelineView>, ApiError> {
    auth.require(Permission::ContactsRead)?;
    path_id("id", &id)?;
    let r = state
        .comms(&auth)?
        .timeline(pb::TimelineRequest { contact_id: id, limit: q.limit.unwrap_or(0) })
        .await?
        .into_inner();
    Ok(Json(TimelineView {
        entries: r
            .entries
            .into_iter()
            .map(|e| TimelineEntryView {
                at: time(e.at),
                kind: e.kind,
                status: e.status,
                purpose: e.purpose,
                ref_id: e.ref_id,
                summary: e.summary,
            })
            .collect(),
    }))
}
