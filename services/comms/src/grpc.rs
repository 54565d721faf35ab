//! The comms gRPC service. Every handler checks the caller's permission, validates the whole
//! request before it writes anything, and logs ids only.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use carnet_kit::grpc::{from_timestamp, parse_id, to_timestamp};
use carnet_kit::{Caller, ErrorCode, Permission, ServiceError};
use carnet_proto::common::v1 as pb_common;
use carnet_proto::comms::v1 as pb;
use carnet_proto::comms::v1::comms_service_server::CommsService;
use carnet_proto::consent::v1 as pb_consent;
use carnet_proto::contacts::v1 as pb_contacts;

use crate::audit::Audit;
use crate::dispatch::Dispatcher;
use crate::entity::{call, campaign, delivery, enrollment, sequence, template};
use crate::peers::{Peers, peer_err};
use crate::store::{AudienceDef, CommsStore, NewCall, NewDelivery, NewTemplate, Origin, StepDef, TemplateRef};
use crate::template::Parsed;

/// Most contacts named in one request (larger audiences are a search).
pub const MAX_CONTACT_IDS: usize = 100_000;
/// Most contacts one consent request mails.
pub const MAX_REQUEST_CONTACTS: usize = 1_000;
pub const MAX_STEPS: usize = 20;
/// A step's delay is at most a year.
pub const MAX_DELAY_SECONDS: u64 = 366 * 24 * 3600;
pub const MAX_NOTES_CHARS: usize = 10_000;
pub const MAX_NAME_CHARS: usize = 200;
/// A logged call lasts at most a day.
pub const MAX_CALL_SECONDS: u64 = 24 * 3600;
pub const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];
pub const OUTCOMES: [&str; 5] = ["connected", "no_answer", "busy", "voicemail", "failed"];

pub struct CommsGrpc {
    store: CommsStore,
    peers: Peers,
    dispatcher: Dispatcher,
    recording_purpose: String,
}

fn caller<T>(request: &Request<T>, permissions: &[Permission]) -> Result<Caller, Status> {
    let caller = Caller::of(request)?;
    caller.require_any(permissions)?;
    Ok(caller)
}

fn required_text(field: &str, value: &str, max: usize) -> Result<String, ServiceError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ServiceError::invalid_field(field, "is required"));
    }
    if v.chars().count() > max {
        return Err(ServiceError::invalid_field(field, format!("is longer than {max} characters")));
    }
    Ok(v.to_string())
}

fn parse_ids(field: &str, ids: &[String], max: usize) -> Result<Vec<Uuid>, ServiceError> {
    if ids.len() > max {
        return Err(ServiceError::invalid_field(field, format!("at most {max} contacts per request")));
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let id = parse_id(&format!("{field}[{i}]"), id)?;
        if seen.insert(id) {
            out.push(id);
        }
    }
    Ok(out)
}

fn ts_opt(at: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    at.map(to_timestamp)
}

impl CommsGrpc {
    pub fn new(store: CommsStore, peers: Peers, dispatcher: Dispatcher, recording_purpose: String) -> Self {
        CommsGrpc { store, peers, dispatcher, recording_purpose }
    }

    /// The keys of the tenant's field policy: what a template may use.
    async fn policy_keys(&self, caller: &Caller) -> Result<Vec<String>, ServiceError> {
        let policy = self
            .peers
            .contacts(caller.tenant_id, &caller.request_id)
            .get_field_policy(pb_contacts::GetFieldPolicyRequest {})
            .await
            .map_err(|s| peer_err("contacts", s))?
            .into_inner();
        Ok(policy.fields.into_iter().map(|f| f.key).collect())
    }

    /// Checks that `key` names one of the tenant's purposes.
    async fn check_purpose(
        &self,
        caller: &Caller,
        field: &str,
        key: &str,
    ) -> Result<pb_consent::Purpose, ServiceError> {
        if key.trim().is_empty() {
            return Err(ServiceError::invalid_field(field, "is required"));
        }
        self.peers
            .consent(caller.tenant_id, &caller.request_id)
            .get_purpose(pb_consent::GetPurposeRequest { key: key.to_string() })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| {
                let err = peer_err("consent", s);
                if err.code == ErrorCode::NotFound {
                    ServiceError::invalid_field(field, "is not one of the tenant's purposes")
                } else {
                    err
                }
            })
    }

    /// Resolves a request's content to a template: a stored one (its purpose must match) or an
    /// inline subject and body checked against the field policy.
    async fn content(
        &self,
        caller: &Caller,
        prefix: &str,
        purpose: &str,
        name: &str,
        content_opt: Option<pb::Content>,
    ) -> Result<TemplateRef, ServiceError> {
        let content =
            content_opt.ok_or_else(|| ServiceError::invalid_field(prefix.trim_end_matches('.'), "is required"))?;
        if !content.template_id.is_empty() {
            if !content.subject.is_empty() || !content.body.is_empty() {
                return Err(ServiceError::invalid_field(
                    format!("{prefix}template_id"),
                    "give either a template_id or a subject and body, not both",
                ));
            }
            let id = parse_id(&format!("{prefix}template_id"), &content.template_id)?;
            let t = self
                .store
                .template(caller.tenant_id, id)
                .await
                .map_err(|e| e.with_field(format!("{prefix}template_id")))?;
            if t.purpose != purpose {
                return Err(ServiceError::invalid_field(
                    format!("{prefix}template_id"),
                    format!("is a template for purpose `{}`, not `{purpose}`", t.purpose),
                ));
            }
            return Ok(TemplateRef::Existing(id));
        }
        let keys = self.policy_keys(caller).await?;
        Parsed::check(prefix, &content.subject, &content.body, &keys)?;
        Ok(TemplateRef::New(NewTemplate {
            name: name.to_string(),
            purpose: purpose.to_string(),
            subject: content.subject,
            body: content.body,
            subject_id_opt: None,
        }))
    }

    async fn check_one(
        &self,
        caller: &Caller,
        contact_id: Uuid,
        purpose: &str,
    ) -> Result<pb_consent::CheckResult, ServiceError> {
        self.peers
            .consent(caller.tenant_id, &caller.request_id)
            .check(pb_consent::CheckRequest { contact_id: contact_id.to_string(), purpose: purpose.to_string() })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| peer_err("consent", s))
    }

    async fn message_view(&self, d: delivery::Model) -> Result<pb::Message, ServiceError> {
        let subject = if d.template_id.is_nil() {
            "consent request".to_string()
        } else {
            self.store.template(d.tenant_id, d.template_id).await.map(|t| t.subject).unwrap_or_default()
        };
        Ok(message_to_proto(d, subject))
    }

    async fn campaign_view(&self, c: campaign::Model) -> Result<pb::Campaign, ServiceError> {
        let counts = self.store.counts(c.tenant_id, c.id).await?;
        let mut c = c;
        if c.status == "sending"
            && counts.queued + counts.sending == 0
            && self.store.set_campaign_status(c.tenant_id, c.id, "sending", "completed").await?
        {
            c = self.store.campaign(c.tenant_id, c.id).await?;
        }
        Ok(pb::Campaign {
            id: c.id.to_string(),
            name: c.name,
            purpose: c.purpose,
            template_id: c.template_id.to_string(),
            status: c.status,
            recipients: counts.total(),
            queued: counts.queued + counts.sending,
            sent: counts.sent,
            failed: counts.failed,
            skipped: counts.skipped,
            created_at: Some(to_timestamp(c.created_at)),
            started_at: ts_opt(c.started_at),
            completed_at: ts_opt(c.completed_at),
        })
    }

    async fn sequence_view(&self, s: sequence::Model) -> Result<pb::Sequence, ServiceError> {
        let defs: Vec<StepDef> =
            serde_json::from_value(s.steps.clone()).map_err(|_| ServiceError::internal("unreadable sequence steps"))?;
        let ids: Vec<Uuid> = defs.iter().map(|d| d.template_id).collect();
        let templates: HashMap<Uuid, template::Model> =
            self.store.templates(s.tenant_id, &ids).await?.into_iter().map(|t| (t.id, t)).collect();
        let steps = defs
            .iter()
            .map(|d| pb::SequenceStep {
                delay_seconds: d.delay_seconds,
                content: templates.get(&d.template_id).map(|t| pb::Content {
                    template_id: t.id.to_string(),
                    subject: t.subject.clone(),
                    body: t.body.clone(),
                }),
            })
            .collect();
        let enrollments =
            self.store.enrollments(s.tenant_id, s.id).await?.into_iter().map(enrollment_to_proto).collect();
        Ok(pb::Sequence {
            id: s.id.to_string(),
            name: s.name,
            purpose: s.purpose,
            steps,
            enrollments,
            created_at: Some(to_timestamp(s.created_at)),
        })
    }

    /// What makes recording this call lawful, or `consent_required`.
    async fn recording_basis(
        &self,
        caller: &Caller,
        contact_id: Uuid,
        verbal_consent: bool,
        at: DateTime<Utc>,
    ) -> Result<String, ServiceError> {
        let purpose = &self.recording_purpose;
        if verbal_consent {
            let record = self
                .peers
                .consent_as_agent(caller)
                .record_consent(pb_consent::RecordConsentRequest {
                    contact_id: contact_id.to_string(),
                    purpose: purpose.clone(),
                    action: pb_consent::ConsentAction::Grant as i32,
                    lawful_basis: pb_consent::LawfulBasis::Consent as i32,
                    source: pb_consent::ConsentSource::Phone as i32,
                    evidence: Some(pb_consent::Evidence {
                        at: Some(to_timestamp(at)),
                        justification: "verbal consent to call recording, given during the call".into(),
                        ..Default::default()
                    }),
                    require_confirmation: false,
                })
                .await
                .map_err(|s| {
                    let err = peer_err("consent", s);
                    if err.code == ErrorCode::NotFound || err.code == ErrorCode::InvalidArgument {
                        ServiceError::new(
                            ErrorCode::FailedPrecondition,
                            format!("the tenant has no call-recording purpose `{purpose}`; create it first"),
                        )
                        .with_field("verbal_consent")
                    } else {
                        err
                    }
                })?
                .into_inner();
            return Ok(format!("verbal:{}", record.id));
        }
        let check = self.check_one(caller, contact_id, purpose).await?;
        if check.reason == "unknown_contact" {
            return Err(ServiceError::not_found("contact", contact_id).with_field("contact_id"));
        }
        if check.allowed {
            let since = check
                .since
                .as_ref()
                .and_then(|t| from_timestamp("since", t).ok())
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                .unwrap_or_default();
            return Ok(format!("consent:{since}"));
        }
        Err(ServiceError::new(
            ErrorCode::ConsentRequired,
            format!(
                "contact {contact_id} has not consented to call recording (purpose `{purpose}`: {}); \
                 record verbal consent with verbal_consent=true or leave recording off",
                check.reason
            ),
        )
        .with_field("recording"))
    }

    async fn contact_exists(
        &self,
        caller: &Caller,
        contact_id: Uuid,
    ) -> Result<Option<pb_contacts::Contact>, ServiceError> {
        let answer = self
            .peers
            .contacts(caller.tenant_id, &caller.request_id)
            .batch_get_contacts(pb_contacts::BatchGetContactsRequest { ids: vec![contact_id.to_string()] })
            .await
            .map_err(|s| peer_err("contacts", s))?
            .into_inner();
        Ok(answer.contacts.into_iter().next())
    }
}

fn message_to_proto(d: delivery::Model, subject: String) -> pb::Message {
    pb::Message {
        id: d.id.to_string(),
        contact_id: d.contact_id.to_string(),
        purpose: d.purpose,
        origin: d.origin,
        origin_id: d.origin_id.to_string(),
        step: d.step as u32,
        status: d.status,
        reason: d.reason.unwrap_or_default(),
        attempts: d.attempts as u32,
        created_at: Some(to_timestamp(d.created_at)),
        due_at: Some(to_timestamp(d.due_at)),
        sent_at: ts_opt(d.sent_at),
        subject,
    }
}

fn enrollment_to_proto(e: enrollment::Model) -> pb::Enrollment {
    pb::Enrollment {
        contact_id: e.contact_id.to_string(),
        status: e.status,
        step: e.step as u32,
        reason: e.reason.unwrap_or_default(),
        updated_at: Some(to_timestamp(e.updated_at)),
    }
}

fn call_to_proto(c: call::Model, notes_opt: Option<String>) -> pb::Call {
    pb::Call {
        id: c.id.to_string(),
        contact_id: c.contact_id.to_string(),
        direction: c.direction,
        started_at: Some(to_timestamp(c.started_at)),
        duration_seconds: c.duration_seconds as u64,
        outcome: c.outcome,
        notes: notes_opt.unwrap_or_default(),
        recording: c.recording,
        recording_consent_id: c.recording_consent_id.unwrap_or_default(),
        created_by: c.created_by,
        created_at: Some(to_timestamp(c.created_at)),
    }
}

fn template_to_proto(t: template::Model) -> pb::Template {
    let variables = Parsed::stored(&t.subject, &t.body).map(|p| p.variables()).unwrap_or_default();
    pb::Template {
        id: t.id.to_string(),
        name: t.name,
        purpose: t.purpose,
        subject: t.subject,
        body: t.body,
        variables,
        created_at: Some(to_timestamp(t.created_at)),
    }
}

fn validate_outcome(field: &str, outcome: &str) -> Result<(), ServiceError> {
    if !OUTCOMES.contains(&outcome) {
        return Err(ServiceError::invalid_field(field, format!("must be one of: {}", OUTCOMES.join(", "))));
    }
    Ok(())
}

fn validate_notes(notes: &str) -> Result<Option<String>, ServiceError> {
    if notes.chars().count() > MAX_NOTES_CHARS {
        return Err(ServiceError::invalid_field("notes", format!("is longer than {MAX_NOTES_CHARS} characters")));
    }
    Ok(Some(notes.to_string()).filter(|n| !n.trim().is_empty()))
}

#[tonic::async_trait]
impl CommsService for CommsGrpc {
    async fn create_template(
        &self,
        request: Request<pb::CreateTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        let caller = caller(&request, &[Permission::CommsSend])?;
        let req = request.into_inner();
        let name = required_text("name", &req.name, MAX_NAME_CHARS)?;
        self.check_purpose(&caller, "purpose", &req.purpose).await?;
        let keys = self.policy_keys(&caller).await?;
        Parsed::check("", &req.subject, &req.body, &keys)?;
        let t = self
            .store
            .create_template(
                caller.tenant_id,
                &caller.principal,
                NewTemplate { name, purpose: req.purpose, subject: req.subject, body: req.body, subject_id_opt: None },
            )
            .await?;
        tracing::info!(tenant_id = %caller.tenant_id, template_id = %t.id, "template created");
        Ok(Response::new(template_to_proto(t)))
    }

    async fn get_template(&self, request: Request<pb::GetTemplateRequest>) -> Result<Response<pb::Template>, Status> {
        let caller = caller(&request, &[Permission::CommsSend, Permission::ContactsRead])?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(template_to_proto(self.store.template(caller.tenant_id, id).await?)))
    }

    async fn send_message(&self, request: Request<pb::SendMessageRequest>) -> Result<Response<pb::Message>, Status> {
        let caller = caller(&request, &[Permission::CommsSend])?;
        let req = request.into_inner();
        let contact_id = parse_id("contact_id", &req.contact_id)?;
        self.check_purpose(&caller, "purpose", &req.purpose).await?;
        let mut template = self.content(&caller, "content.", &req.purpose, "single message", req.content).await?;
        // Inline content written for one person is theirs: sealed with their key, erased with them.
        if let TemplateRef::New(t) = &mut template {
            t.subject_id_opt = Some(contact_id);
        }
        let check = self.check_one(&caller, contact_id, &req.purpose).await?;
        if check.reason == "unknown_contact" {
            return Err(ServiceError::not_found("contact", contact_id).with_field("contact_id").into());
        }
        if !check.allowed {
            return Err(ServiceError::new(
                ErrorCode::ConsentRequired,
                format!(
                    "contact {contact_id} may not be mailed for purpose `{}`: {}",
                    req.purpose,
                    crate::dispatch::skip_reason(&check.reason)
                ),
            )
            .with_field("contact_id")
            .into());
        }
        let id = Uuid::now_v7();
        let template_id = match &template {
            TemplateRef::Existing(id) => *id,
            TemplateRef::New(_) => Uuid::nil(),
        };
        let new_opt = matches!(template, TemplateRef::New(_)).then_some(template);
        let d = NewDelivery {
            origin: Origin::Message,
            origin_id: id,
            step: 0,
            contact_id,
            purpose: req.purpose,
            template_id,
            due_at: carnet_kit::db::now(),
            skip_reason_opt: None,
        };
        let audit = Audit::grpc(&caller, "SendMessage");
        let rows = self.store.queue(caller.tenant_id, &audit, new_opt, vec![d]).await?;
        let d = rows.into_iter().next().ok_or_else(|| ServiceError::internal("nothing queued"))?;
        self.dispatcher.wake();
        tracing::info!(tenant_id = %caller.tenant_id, message_id = %d.id, contact_id = %contact_id, "message queued");
        Ok(Response::new(self.message_view(d).await?))
    }

    async fn get_message(&self, request: Request<pb::GetMessageRequest>) -> Result<Response<pb::Message>, Status> {
        let caller = caller(&request, &[Permission::CommsSend, Permission::ContactsRead])?;
        let id = parse_id("id", &request.get_ref().id)?;
        let d = self.store.delivery(caller.tenant_id, id).await?;
        Ok(Response::new(self.message_view(d).await?))
    }

    async fn create_campaign(
        &self,
        request: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let caller = caller(&request, &[Permission::CommsSend])?;
        let req = request.into_inner();
        let name = required_text("name", &req.name, MAX_NAME_CHARS)?;
        self.check_purpose(&caller, "purpose", &req.purpose).await?;
        let audience = req.audience.unwrap_or_default();
        let contact_ids = parse_ids("audience.contact_ids", &audience.contact_ids, MAX_CONTACT_IDS)?;
        if contact_ids.is_empty() == audience.query.trim().is_empty() {
            return Err(ServiceError::invalid_field(
                "audience",
                "give either contact_ids or a query (`*` for every contact), not both",
            )
            .into());
        }
        let template = self.content(&caller, "content.", &req.purpose, &name, req.content).await?;
        let c = self
            .store
            .create_campaign(
                caller.tenant_id,
                &caller.principal,
                name,
                req.purpose,
                template,
                AudienceDef { contact_ids, query: audience.query.trim().to_string() },
            )
            .await?;
        tracing::info!(tenant_id = %caller.tenant_id, campaign_id = %c.id, "campaign created");
        Ok(Response::new(self.campaign_view(c).await?))
    }

    async fn send_campaign(&self, request: Request<pb::SendCampaignRequest>) -> Result<Response<pb::Campaign>, Status> {
        let caller = caller(&request, &[Permission::CommsSend])?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.store.campaign(caller.tenant_id, id).await?;
        if self.store.start_campaign(caller.tenant_id, id, &Audit::grpc(&caller, "SendCampaign")).await? {
            let c = self.store.campaign(caller.tenant_id, id).await?;
            tracing::info!(tenant_id = %caller.tenant_id, campaign_id = %id, "campaign started");
            self.dispatcher.queue_campaign(c);
        }
        let c = self.store.campaign(caller.tenant_id, id).await?;
        Ok(Response::new(self.campaign_view(c).await?))
    }

    async fn get_campaign(&self, request: Request<pb::GetCampaignRequest>) -> Result<Response<pb::Campaign>, Status> {
        let caller = caller(&request, &[Permission::CommsSend, Permission::ContactsRead])?;
        let id = parse_id("id", &request.get_ref().id)?;
        let c = self.store.campaign(caller.tenant_id, id).await?;
        Ok(Response::new(self.campaign_view(c).await?))
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        let caller = caller(&request, &[Permission::CommsSend, Permission::ContactsRead])?;
        let mut campaigns = Vec::new();
        for c in self.store.campaigns(caller.tenant_id).await? {
            campaigns.push(self.campaign_view(c).await?);
        }
        Ok(Response::new(pb::ListCampaignsResponse { campaigns }))
    }

    async fn create_sequence(
        &self,
        request: Request<pb::CreateSequenceRequest>,
    ) -> Result<Response<pb::Sequence>, Status> {
        let caller = caller(&request, &[Permission::CommsSend])?;
        let req = request.into_inner();
        let name = required_text("name", &req.name, MAX_NAME_CHARS)?;
        self.check_purpose(&caller, "purpose", &req.purpose).await?;
        if req.steps.is_empty() || req.steps.len() > MAX_STEPS {
            return Err(ServiceError::invalid_field("steps", format!("needs 1 to {MAX_STEPS} steps")).into());
        }
        let contact_ids = parse_ids("contact_ids", &req.contact_ids, MAX_CONTACT_IDS)?;
        let mut steps = Vec::with_capacity(req.steps.len());
        for (i, step) in req.steps.into_iter().enumerate() {
            if step.delay_seconds > MAX_DELAY_SECONDS {
                return Err(ServiceError::invalid_field(
                    format!("steps[{i}].delay_seconds"),
                    format!("is more than {MAX_DELAY_SECONDS}"),
                )
                .into());
            }
            let prefix = format!("steps[{i}].content.");
            let t =
                self.content(&caller, &prefix, &req.purpose, &format!("{name}, step {}", i + 1), step.content).await?;
            steps.push((step.delay_seconds, t));
        }
        let s = self.store.create_sequence(caller.tenant_id, &caller.principal, name, req.purpose, steps).await?;
        let audit = Audit::grpc(&caller, "CreateSequence");
        let enrolled = self.store.enroll(caller.tenant_id, &audit, &s, &contact_ids).await?;
        self.dispatcher.wake();
        tracing::info!(tenant_id = %caller.tenant_id, sequence_id = %s.id, enrolled, "sequence created");
        Ok(Response::new(self.sequence_view(s).await?))
    }

    async fn enroll_contacts(
        &self,
        request: Request<pb::EnrollContactsRequest>,
    ) -> Result<Response<pb::Sequence>, Status> {
        let caller = caller(&request, &[Permission::CommsSend])?;
        let req = request.into_inner();
        let id = parse_id("sequence_id", &req.sequence_id)?;
        let contact_ids = parse_ids("contact_ids", &req.contact_ids, MAX_CONTACT_IDS)?;
        if contact_ids.is_empty() {
            return Err(ServiceError::invalid_field("contact_ids", "is required").into());
        }
        let s = self.store.sequence(caller.tenant_id, id).await?;
        let audit = Audit::grpc(&caller, "EnrollContacts");
        let enrolled = self.store.enroll(caller.tenant_id, &audit, &s, &contact_ids).await?;
        self.dispatcher.wake();
        tracing::info!(tenant_id = %caller.tenant_id, sequence_id = %id, enrolled, "contacts enrolled");
        Ok(Response::new(self.sequence_view(s).await?))
    }

    async fn get_sequence(&self, request: Request<pb::GetSequenceRequest>) -> Result<Response<pb::Sequence>, Status> {
        let caller = caller(&request, &[Permission::CommsSend, Permission::ContactsRead])?;
        let id = parse_id("id", &request.get_ref().id)?;
        let s = self.store.sequence(caller.tenant_id, id).await?;
        Ok(Response::new(self.sequence_view(s).await?))
    }

    async fn request_consent(
        &self,
        request: Request<pb::RequestConsentRequest>,
    ) -> Result<Response<pb::RequestConsentResponse>, Status> {
        let caller = caller(&request, &[Permission::CommsSend, Permission::ConsentManage])?;
        let req = request.into_inner();
        self.check_purpose(&caller, "purpose", &req.purpose).await?;
        let contact_ids = parse_ids("contact_ids", &req.contact_ids, MAX_REQUEST_CONTACTS)?;
        if contact_ids.is_empty() {
            return Err(ServiceError::invalid_field("contact_ids", "is required").into());
        }
        let origin_id = Uuid::now_v7();
        let now = carnet_kit::db::now();
        let deliveries = contact_ids
            .into_iter()
            .map(|contact_id| NewDelivery {
                origin: Origin::ConsentRequest,
                origin_id,
                step: 0,
                contact_id,
                purpose: req.purpose.clone(),
                template_id: Uuid::nil(),
                due_at: now,
                skip_reason_opt: None,
            })
            .collect();
        let audit = Audit::grpc(&caller, "RequestConsent");
        let rows = self.store.queue(caller.tenant_id, &audit, None, deliveries).await?;
        self.dispatcher.wake();
        tracing::info!(tenant_id = %caller.tenant_id, request_id = %origin_id, count = rows.len(), "consent requests queued");
        let messages = rows.into_iter().map(|d| message_to_proto(d, "consent request".into())).collect();
        Ok(Response::new(pb::RequestConsentResponse { messages }))
    }

    async fn report_bounce(
        &self,
        request: Request<pb::ReportBounceRequest>,
    ) -> Result<Response<pb::ReportBounceResponse>, Status> {
        let caller = caller(&request, &[Permission::CommsSend])?;
        let req = request.into_inner();
        let reason = match req.kind.as_str() {
            "hard" | "" => "bounce",
            "complaint" => "complaint",
            _ => return Err(ServiceError::invalid_field("kind", "must be `hard` or `complaint`").into()),
        };
        if req.email.parse::<lettre::Address>().is_err() {
            return Err(ServiceError::invalid_field("email", "is not an e-mail address").into());
        }
        let hash = self.dispatcher.hasher().hash(caller.tenant_id, &req.email);
        let audit = Audit::grpc(&caller, "ReportBounce");
        let already = self.store.suppress_audited(caller.tenant_id, &hash, "*", reason, &audit, None).await?;
        tracing::info!(tenant_id = %caller.tenant_id, reason, already, "address suppressed");
        Ok(Response::new(pb::ReportBounceResponse { hash, already_suppressed: already }))
    }

    async fn suppress_contact(
        &self,
        request: Request<pb::SuppressContactRequest>,
    ) -> Result<Response<pb::ReportBounceResponse>, Status> {
        let caller = caller(&request, &[Permission::CommsSend, Permission::ConsentManage])?;
        let req = request.into_inner();
        let contact_id = parse_id("contact_id", &req.contact_id)?;
        let reason = match req.reason.as_str() {
            "" | "withdrawn" => "withdrawn",
            "manual" => "manual",
            _ => return Err(ServiceError::invalid_field("reason", "must be `withdrawn` or `manual`").into()),
        };
        let purpose = if req.purpose.is_empty() { "*".to_string() } else { req.purpose };
        let contact = self
            .contact_exists(&caller, contact_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("contact", contact_id).with_field("contact_id"))?;
        let Some(email) = contact.email else {
            return Ok(Response::new(pb::ReportBounceResponse::default()));
        };
        let hash = self.dispatcher.hasher().hash(caller.tenant_id, &email);
        let audit = Audit::grpc(&caller, "SuppressContact");
        let already =
            self.store.suppress_audited(caller.tenant_id, &hash, &purpose, reason, &audit, Some(contact_id)).await?;
        tracing::info!(tenant_id = %caller.tenant_id, %contact_id, reason, already, "contact suppressed");
        Ok(Response::new(pb::ReportBounceResponse { hash, already_suppressed: already }))
    }

    async fn log_call(&self, request: Request<pb::LogCallRequest>) -> Result<Response<pb::Call>, Status> {
        let caller = caller(&request, &[Permission::CommsSend])?;
        let req = request.into_inner();
        let contact_id = parse_id("contact_id", &req.contact_id)?;
        if !DIRECTIONS.contains(&req.direction.as_str()) {
            return Err(ServiceError::invalid_field("direction", "must be `inbound` or `outbound`").into());
        }
        let started_at = match &req.started_at {
            Some(ts) => from_timestamp("started_at", ts)?,
            None => return Err(ServiceError::invalid_field("started_at", "is required").into()),
        };
        if started_at > Utc::now() + chrono::Duration::minutes(5) {
            return Err(ServiceError::invalid_field("started_at", "is in the future").into());
        }
        if req.duration_seconds > MAX_CALL_SECONDS {
            return Err(
                ServiceError::invalid_field("duration_seconds", format!("is more than {MAX_CALL_SECONDS}")).into()
            );
        }
        validate_outcome("outcome", &req.outcome)?;
        let notes_opt = validate_notes(&req.notes)?;
        if req.verbal_consent && !req.recording {
            return Err(ServiceError::invalid_field("verbal_consent", "only applies with recording=true").into());
        }
        if self.contact_exists(&caller, contact_id).await?.is_none() {
            return Err(ServiceError::not_found("contact", contact_id).with_field("contact_id").into());
        }
        let basis_opt = if req.recording {
            Some(self.recording_basis(&caller, contact_id, req.verbal_consent, started_at).await?)
        } else {
            None
        };
        let c = self
            .store
            .log_call(
                caller.tenant_id,
                &Audit::grpc(&caller, "LogCall"),
                NewCall {
                    contact_id,
                    direction: req.direction,
                    started_at: carnet_kit::db::truncate(started_at),
                    duration_seconds: req.duration_seconds,
                    outcome: req.outcome,
                    notes_opt: notes_opt.clone(),
                    recording: req.recording,
                    recording_consent_id_opt: basis_opt,
                },
            )
            .await?;
        tracing::info!(tenant_id = %caller.tenant_id, call_id = %c.id, %contact_id, recording = c.recording, "call logged");
        Ok(Response::new(call_to_proto(c, notes_opt)))
    }

    async fn update_call(&self, request: Request<pb::UpdateCallRequest>) -> Result<Response<pb::Call>, Status> {
        let caller = caller(&request, &[Permission::CommsSend])?;
        let req = request.into_inner();
        let id = parse_id("id", &req.id)?;
        let mut c = self.store.call(caller.tenant_id, id).await?;
        if let Some(outcome) = &req.outcome {
            validate_outcome("outcome", outcome)?;
        }
        let notes_opt = req.notes.as_deref().map(validate_notes).transpose()?;
        if req.verbal_consent && req.recording != Some(true) {
            return Err(ServiceError::invalid_field("verbal_consent", "only applies with recording=true").into());
        }
        let mut changed = Vec::new();
        match req.recording {
            Some(true) if !c.recording => {
                let basis = self.recording_basis(&caller, c.contact_id, req.verbal_consent, Utc::now()).await?;
                c.recording = true;
                c.recording_consent_id = Some(basis);
                changed.push("recording");
            }
            Some(false) if c.recording => {
                c.recording = false;
                c.recording_consent_id = None;
                changed.push("recording");
            }
            _ => {}
        }
        if let Some(outcome) = req.outcome
            && outcome != c.outcome
        {
            c.outcome = outcome;
            changed.push("outcome");
        }
        if notes_opt.is_some() {
            changed.push("notes");
        }
        let notes_shown = match &notes_opt {
            Some(notes) => notes.clone(),
            None => self.store.notes(&c).await?,
        };
        let c = self.store.update_call(c, notes_opt, &Audit::grpc(&caller, "UpdateCall"), changed).await?;
        tracing::info!(tenant_id = %caller.tenant_id, call_id = %c.id, recording = c.recording, "call updated");
        Ok(Response::new(call_to_proto(c, notes_shown)))
    }

    async fn timeline(&self, request: Request<pb::TimelineRequest>) -> Result<Response<pb::TimelineResponse>, Status> {
        let caller = caller(&request, &[Permission::ContactsRead])?;
        let req = request.into_inner();
        let contact_id = parse_id("contact_id", &req.contact_id)?;
        let limit = match req.limit {
            0 => 100,
            n if n > 500 => return Err(ServiceError::invalid_field("limit", "must be 1..=500").into()),
            n => n as usize,
        };
        if self.contact_exists(&caller, contact_id).await?.is_none() {
            return Err(ServiceError::not_found("contact", contact_id).with_field("contact_id").into());
        }
        let audit = Audit::grpc(&caller, "Timeline");
        if !audit.is_service() {
            self.store.record_view(caller.tenant_id, &audit, "view", "timeline", contact_id).await?;
        }
        let mut entries = Vec::new();
        let deliveries = self.store.subject_deliveries(caller.tenant_id, contact_id, Some(limit as u64)).await?;
        let template_ids: Vec<Uuid> = deliveries.iter().map(|d| d.template_id).filter(|id| !id.is_nil()).collect();
        let subjects: HashMap<Uuid, String> = self
            .store
            .templates(caller.tenant_id, &template_ids)
            .await?
            .into_iter()
            .map(|t| (t.id, t.subject))
            .collect();
        for d in deliveries {
            let summary = if d.template_id.is_nil() {
                "consent request".to_string()
            } else {
                subjects.get(&d.template_id).cloned().unwrap_or_default()
            };
            let status = match &d.reason {
                Some(reason) if d.status != "sent" => format!("{}:{reason}", d.status),
                _ => d.status.clone(),
            };
            entries.push(pb::TimelineEntry {
                at: Some(to_timestamp(d.sent_at.unwrap_or(d.created_at))),
                kind: "mail".into(),
                status,
                purpose: d.purpose,
                ref_id: d.id.to_string(),
                summary,
            });
        }
        for c in self.store.subject_calls(caller.tenant_id, contact_id, Some(limit as u64)).await? {
            entries.push(pb::TimelineEntry {
                at: Some(to_timestamp(c.started_at)),
                kind: "call".into(),
                status: c.outcome,
                purpose: String::new(),
                ref_id: c.id.to_string(),
                summary: format!(
                    "{} call, {} s{}",
                    c.direction,
                    c.duration_seconds,
                    if c.recording { ", recorded" } else { "" }
                ),
            });
        }
        let consents = self
            .peers
            .consent(caller.tenant_id, &caller.request_id)
            .get_contact_consents(pb_consent::GetContactConsentsRequest { contact_id: contact_id.to_string() })
            .await
            .map_err(|s| peer_err("consent", s))?
            .into_inner();
        for r in consents.history {
            let status = pb_consent::ConsentStatus::try_from(r.status)
                .map(|s| s.as_str_name().trim_start_matches("CONSENT_STATUS_").to_lowercase())
                .unwrap_or_default();
            let source = pb_consent::ConsentSource::try_from(r.source)
                .map(|s| s.as_str_name().trim_start_matches("CONSENT_SOURCE_").to_lowercase())
                .unwrap_or_default();
            entries.push(pb::TimelineEntry {
                at: r.at,
                kind: "consent".into(),
                status,
                purpose: r.purpose,
                ref_id: r.id,
                summary: format!("via {source}, notice v{}", r.notice_version),
            });
        }
        entries.sort_by(|a, b| {
            let key = |e: &pb::TimelineEntry| e.at.as_ref().map(|t| (t.seconds, t.nanos)).unwrap_or_default();
            key(b).cmp(&key(a))
        });
        entries.truncate(limit);
        Ok(Response::new(pb::TimelineResponse { entries }))
    }

    async fn export_subject(
        &self,
        request: Request<pb_common::ExportSubjectRequest>,
    ) -> Result<Response<pb_common::ExportSubjectResponse>, Status> {
        let caller = caller(&request, &[Permission::ContactsExport, Permission::DsarManage])?;
        let contact_id = parse_id("subject_id", &request.get_ref().subject_id)?;
        let deliveries = self.store.subject_deliveries(caller.tenant_id, contact_id, None).await?;
        let calls = self.store.subject_calls(caller.tenant_id, contact_id, None).await?;
        let key_opt =
            self.store.keys().find_subject_key(caller.tenant_id, contact_id).await.map_err(ServiceError::from)?;
        let notes = calls.iter().map(|c| self.store.open_notes(key_opt.as_ref(), c)).collect::<Result<Vec<_>, _>>()?;
        let enrollments = self.store.subject_enrollments(caller.tenant_id, contact_id).await?;
        let count = (deliveries.len() + calls.len() + enrollments.len()) as u64;
        let doc = serde_json::json!({
            "service": crate::SERVICE_NAME,
            "schema_version": crate::EXPORT_SCHEMA_VERSION,
            "subject_id": contact_id,
            "messages": deliveries.iter().map(|d| serde_json::json!({
                "id": d.id, "purpose": d.purpose, "origin": d.origin, "origin_id": d.origin_id,
                "step": d.step, "status": d.status, "reason": d.reason, "created_at": d.created_at,
                "sent_at": d.sent_at,
            })).collect::<Vec<_>>(),
            "calls": calls.iter().zip(&notes).map(|(c, notes)| serde_json::json!({
                "id": c.id, "direction": c.direction, "started_at": c.started_at,
                "duration_seconds": c.duration_seconds, "outcome": c.outcome, "notes": notes,
                "recording": c.recording, "recording_basis": c.recording_consent_id,
            })).collect::<Vec<_>>(),
            "sequence_enrollments": enrollments.iter().map(|e| serde_json::json!({
                "sequence_id": e.sequence_id, "status": e.status, "step": e.step, "reason": e.reason,
            })).collect::<Vec<_>>(),
        });
        let audit = Audit::grpc(&caller, "ExportSubject");
        self.store.record_view(caller.tenant_id, &audit, "export", "contact", contact_id).await?;
        tracing::info!(tenant_id = %caller.tenant_id, %contact_id, records = count, "subject exported");
        Ok(Response::new(pb_common::ExportSubjectResponse {
            service: crate::SERVICE_NAME.into(),
            schema_version: crate::EXPORT_SCHEMA_VERSION,
            document_json: serde_json::to_vec(&doc).map_err(|_| ServiceError::internal("export failed"))?,
            record_count: count,
        }))
    }

    async fn purge_expired(
        &self,
        request: Request<pb_common::PurgeExpiredRequest>,
    ) -> Result<Response<pb_common::PurgeExpiredResponse>, Status> {
        let caller = caller(&request, &[Permission::DsarManage])?;
        let req = request.into_inner();
        let before = carnet_kit::grpc::purge_cutoff(&req)?;
        let purged = self.store.purge_expired(caller.tenant_id, &req.record_type, before, req.dry_run).await?;
        tracing::info!(tenant_id = %caller.tenant_id, record_type = %req.record_type, purged, dry_run = req.dry_run, "retention purge");
        Ok(Response::new(pb_common::PurgeExpiredResponse {
            service: crate::SERVICE_NAME.into(),
            record_type: req.record_type,
            purged,
        }))
    }

    async fn erase_subject(
        &self,
        request: Request<pb_common::EraseSubjectRequest>,
    ) -> Result<Response<pb_common::EraseSubjectResponse>, Status> {
        let caller = caller(&request, &[Permission::DsarManage])?;
        let contact_id = parse_id("subject_id", &request.get_ref().subject_id)?;
        // While the contact still exists, its address goes on the suppression list (as a keyed
        // hash): an erased person is not mailed again if the address comes back in an import.
        let mut suppressed = 0;
        if let Some(email) = self.contact_exists(&caller, contact_id).await.ok().flatten().and_then(|c| c.email) {
            let hash = self.dispatcher.hasher().hash(caller.tenant_id, &email);
            self.store.suppress(caller.tenant_id, &hash, "*", "erased").await?;
            suppressed = 1;
        }
        let erased =
            self.store.erase_subject(caller.tenant_id, contact_id, &Audit::grpc(&caller, "EraseSubject")).await?;
        tracing::info!(tenant_id = %caller.tenant_id, %contact_id, "subject erased");
        Ok(Response::new(pb_common::EraseSubjectResponse {
            service: crate::SERVICE_NAME.into(),
            removed: HashMap::from([
                ("messages".to_string(), erased.deliveries),
                ("calls".to_string(), erased.calls),
                ("sequence_enrollments".to_string(), erased.enrollments),
                ("message_contents".to_string(), erased.contents),
                ("suppressions_added".to_string(), suppressed),
            ]),
        }))
    }
}
