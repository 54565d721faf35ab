//! The tonic handlers of `carnet.consent.v1.ConsentService`.

use std::collections::HashMap;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use carnet_kit::audit::Entry;
use carnet_kit::grpc::{from_timestamp, parse_id, to_timestamp};
use carnet_kit::{Caller, CallerSigner, ErrorCode, MeshKey, Permission, ServiceError};
use carnet_proto::common::v1 as pb_common;
use carnet_proto::consent::v1 as pb;
use carnet_proto::consent::v1::consent_service_server::ConsentService;
use carnet_proto::contacts::v1::GetSubjectFlagsRequest;
use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;

use crate::domain::{
    Action, ConsentSource, Decision, LawfulBasis, Notice, Purpose, Record, RecordInput, State, Status as ConsentStatus,
    SubjectFlags,
};
use crate::store::ConsentStore;

/// Most pairs one `CheckBatch` call may carry.
pub const MAX_BATCH_CHECKS: usize = 50_000;
/// Most ids one flags call to the contacts service carries.
const FLAGS_PER_CALL: usize = 10_000;

/// The gRPC face of the consent service.
#[derive(Clone, Debug)]
pub struct ConsentGrpc {
    store: ConsentStore,
    contacts: Channel,
    mesh_key: MeshKey,
    links_key: std::sync::Arc<Vec<u8>>,
}

/// How long a confirmation link stays valid.
pub const CONFIRM_LINK_DAYS: i64 = 7;
/// How long a withdraw link stays valid (it travels in every mail; withdrawing must stay easy).
pub const WITHDRAW_LINK_DAYS: i64 = 3 * 365;

/// Most links signed in one IssueLinksBatch call.
pub const MAX_BATCH_LINKS: usize = 1_000;

impl ConsentGrpc {
    /// `contacts` reaches the contacts service, asked for restriction and objection flags as
    /// `service:consent` with `contacts:read` in the caller's tenant.
    pub fn new(store: ConsentStore, contacts: Channel, mesh_key: MeshKey) -> Self {
        let links_key = std::sync::Arc::new(mesh_key.derive("consent-links"));
        ConsentGrpc { store, contacts, mesh_key, links_key }
    }

    /// Signs the links of one contact and purpose (`purposes` caches purpose lookups of a batch;
    /// `prefix` names the request in field errors).
    async fn links_for(
        &self,
        caller: &Caller,
        req: pb::IssueLinksRequest,
        purposes: &mut HashMap<String, u32>,
        prefix: &str,
    ) -> Result<pb::IssueLinksResponse, ServiceError> {
        use carnet_kit::links::{LinkClaims, LinkKind, sign};
        let contact_id = parse_id(&format!("{prefix}contact_id"), &req.contact_id)?;
        let current_version = match purposes.get(&req.purpose) {
            Some(v) => *v,
            None => {
                let purpose = self
                    .store
                    .purpose(caller.tenant_id, &req.purpose)
                    .await
                    .map_err(|e| e.with_field(format!("{prefix}purpose")))?;
                purposes.insert(req.purpose.clone(), purpose.current_version as u32);
                purpose.current_version as u32
            }
        };
        let now = chrono::Utc::now();
        let claims = |kind, record_id_opt, notice_version_opt, exp: chrono::DateTime<chrono::Utc>| LinkClaims {
            tenant_id: caller.tenant_id,
            contact_id,
            purpose: req.purpose.clone(),
            kind,
            record_id_opt,
            notice_version_opt,
            exp: exp.timestamp(),
        };
        let mut answer = pb::IssueLinksResponse::default();
        if !req.withdraw_only {
            let state_opt = self.store.state(caller.tenant_id, contact_id, &req.purpose).await?;
            match &state_opt {
                Some((state, record_id)) if state.status == ConsentStatus::Pending => {
                    let exp = now + chrono::Duration::days(CONFIRM_LINK_DAYS);
                    answer.confirm_token =
                        sign(&self.links_key, &claims(LinkKind::Confirm, Some(*record_id), None, exp));
                    answer.confirm_expires_at = Some(to_timestamp(exp));
                }
                Some((state, _)) if state.status == ConsentStatus::Granted => {}
                _ if req.offer => {
                    let exp = now + chrono::Duration::days(CONFIRM_LINK_DAYS);
                    answer.accept_token =
                        sign(&self.links_key, &claims(LinkKind::Accept, None, Some(current_version), exp));
                    answer.accept_expires_at = Some(to_timestamp(exp));
                    answer.notice_version = current_version;
                }
                _ => {}
            }
        }
        let exp = now + chrono::Duration::days(WITHDRAW_LINK_DAYS);
        answer.withdraw_token = sign(&self.links_key, &claims(LinkKind::Withdraw, None, None, exp));
        Ok(answer)
    }

    fn contacts_client(&self, caller: &Caller) -> ContactsServiceClient<InterceptedService<Channel, CallerSigner>> {
        let mut service = Caller::new(caller.tenant_id, "service:consent", [Permission::ContactsRead]);
        service.request_id = caller.request_id.clone();
        ContactsServiceClient::with_interceptor(
            self.contacts.clone(),
            CallerSigner::new(self.mesh_key.clone(), service),
        )
    }

    /// Asks the contacts service for the flags of `ids`.
    async fn flags(&self, caller: &Caller, ids: &[Uuid]) -> Result<HashMap<Uuid, SubjectFlags>, ServiceError> {
        let mut client = self.contacts_client(caller);
        let mut flags = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(FLAGS_PER_CALL) {
            let req = GetSubjectFlagsRequest { ids: chunk.iter().map(Uuid::to_string).collect() };
            let answer = client.get_subject_flags(req).await.map_err(|status| {
                let err = ServiceError::from_status(&status);
                tracing::warn!(code = err.code.as_str(), "contacts flags lookup failed");
                ServiceError::new(ErrorCode::Unavailable, "contacts service unavailable for the check")
            })?;
            for (id, f) in chunk.iter().zip(answer.into_inner().flags) {
                flags.insert(*id, SubjectFlags { exists: f.exists, restricted: f.restricted, objected: f.objected });
            }
        }
        Ok(flags)
    }

    async fn check_pairs(
        &self,
        caller: &Caller,
        checks: Vec<pb::CheckRequest>,
    ) -> Result<Vec<pb::CheckResult>, Status> {
        let mut pairs = Vec::with_capacity(checks.len());
        let mut originals = Vec::with_capacity(checks.len());
        for (i, check) in checks.into_iter().enumerate() {
            // The field path is only formatted for the (rare) malformed id.
            let contact = Uuid::parse_str(&check.contact_id)
                .map_err(|_| ServiceError::invalid_field(format!("checks[{i}].contact_id"), "is not a valid id"))?;
            pairs.push((contact, check.purpose));
            originals.push(check.contact_id);
        }
        let mut ids: Vec<Uuid> = pairs.iter().map(|(c, _)| *c).collect();
        ids.sort_unstable();
        ids.dedup();
        let flags = self.flags(caller, &ids).await?;
        let decisions = self.store.check_batch(caller.tenant_id, &pairs, &flags).await?;
        Ok(originals
            .into_iter()
            .zip(pairs)
            .zip(decisions)
            .map(|((contact_id, (_, purpose)), d)| check_result(contact_id, purpose, d))
            .collect())
    }
}

impl ConsentGrpc {
    /// A form with the current notice of each of its purposes.
    async fn form_view(&self, tenant_id: Uuid, def: crate::store::FormDef) -> Result<pb::Form, ServiceError> {
        let mut consents = Vec::with_capacity(def.consents.len());
        for key in &def.consents {
            let (purpose, notice) = self.store.current_notice(tenant_id, key).await?;
            consents.push(pb::FormConsent {
                purpose: purpose.key,
                description: purpose.description,
                notice_version: notice.version as u32,
                notice_text: notice.text,
            });
        }
        Ok(pb::Form {
            id: carnet_kit::links::form_public_id(tenant_id, def.id),
            name: def.name,
            fields: def.fields,
            consents,
            created_at: Some(to_timestamp(def.created_at)),
        })
    }
}

/// Who calls, through which method: the common part of the call's audit entries.
fn stamp(caller: &Caller, method: &str) -> Entry {
    Entry::stamp(caller, &format!("carnet.consent.v1.ConsentService/{method}"))
}

fn caller<T>(request: &Request<T>, permissions: &[Permission]) -> Result<Caller, Status> {
    let caller = Caller::of(request)?;
    caller.require_any(permissions)?;
    Ok(caller)
}

fn basis_from_proto(value: i32) -> Option<LawfulBasis> {
    use pb::LawfulBasis as P;
    Some(match P::try_from(value).ok()? {
        P::Unspecified => return None,
        P::Consent => LawfulBasis::Consent,
        P::Contract => LawfulBasis::Contract,
        P::LegalObligation => LawfulBasis::LegalObligation,
        P::VitalInterests => LawfulBasis::VitalInterests,
        P::PublicTask => LawfulBasis::PublicTask,
        P::LegitimateInterests => LawfulBasis::LegitimateInterests,
    })
}

fn basis_to_proto(basis: LawfulBasis) -> pb::LawfulBasis {
    use pb::LawfulBasis as P;
    match basis {
        LawfulBasis::Consent => P::Consent,
        LawfulBasis::Contract => P::Contract,
        LawfulBasis::LegalObligation => P::LegalObligation,
        LawfulBasis::VitalInterests => P::VitalInterests,
        LawfulBasis::PublicTask => P::PublicTask,
        LawfulBasis::LegitimateInterests => P::LegitimateInterests,
    }
}

fn source_from_proto(value: i32) -> Option<ConsentSource> {
    use pb::ConsentSource as P;
    Some(match P::try_from(value).ok()? {
        P::Unspecified => return None,
        P::WebForm => ConsentSource::WebForm,
        P::EmailOptin => ConsentSource::EmailOptin,
        P::Phone => ConsentSource::Phone,
        P::Api => ConsentSource::Api,
        P::Import => ConsentSource::Import,
    })
}

fn source_to_proto(source: ConsentSource) -> pb::ConsentSource {
    use pb::ConsentSource as P;
    match source {
        ConsentSource::WebForm => P::WebForm,
        ConsentSource::EmailOptin => P::EmailOptin,
        ConsentSource::Phone => P::Phone,
        ConsentSource::Api => P::Api,
        ConsentSource::Import => P::Import,
    }
}

fn status_to_proto(status: ConsentStatus) -> pb::ConsentStatus {
    match status {
        ConsentStatus::Granted => pb::ConsentStatus::Granted,
        ConsentStatus::Pending => pb::ConsentStatus::Pending,
        ConsentStatus::Withdrawn => pb::ConsentStatus::Withdrawn,
    }
}

fn notice_to_proto(n: Notice) -> pb::NoticeVersion {
    pb::NoticeVersion {
        version: n.version as u32,
        text: n.text,
        sha256: n.sha256,
        created_at: Some(to_timestamp(n.created_at)),
        created_by: n.created_by,
    }
}

fn purpose_to_proto(p: Purpose) -> pb::Purpose {
    pb::Purpose {
        key: p.key,
        description: p.description,
        lawful_basis: basis_to_proto(p.lawful_basis) as i32,
        current_version: p.current_version as u32,
        notices: p.notices.into_iter().map(notice_to_proto).collect(),
        created_at: Some(to_timestamp(p.created_at)),
    }
}

fn record_to_proto(r: Record) -> pb::ConsentRecord {
    pb::ConsentRecord {
        id: r.id.to_string(),
        contact_id: r.contact_id.to_string(),
        purpose: r.purpose,
        action: match r.action {
            Action::Grant => pb::ConsentAction::Grant,
            Action::Withdraw => pb::ConsentAction::Withdraw,
        } as i32,
        status: status_to_proto(r.status) as i32,
        lawful_basis: basis_to_proto(r.lawful_basis) as i32,
        source: source_to_proto(r.source) as i32,
        form_id: r.form_id.unwrap_or_default(),
        notice_version: r.notice_version.unwrap_or_default() as u32,
        notice_sha256: r.notice_sha256.unwrap_or_default(),
        ip_hash: r.ip_hash.unwrap_or_default(),
        user_agent: r.user_agent.unwrap_or_default(),
        justification: r.justification.unwrap_or_default(),
        actor: r.actor,
        at: Some(to_timestamp(r.at)),
    }
}

fn state_to_proto(s: State) -> pb::ConsentState {
    pb::ConsentState {
        purpose: s.purpose,
        status: status_to_proto(s.status) as i32,
        lawful_basis: basis_to_proto(s.lawful_basis) as i32,
        notice_version: s.notice_version.unwrap_or_default() as u32,
        since: Some(to_timestamp(s.since)),
    }
}

fn check_result(contact_id: String, purpose: String, d: Decision) -> pb::CheckResult {
    pb::CheckResult {
        contact_id,
        purpose,
        allowed: d.allowed,
        reason: d.reason.to_string(),
        lawful_basis: d.lawful_basis_opt.map_or(0, |b| basis_to_proto(b) as i32),
        notice_version: d.notice_version_opt.unwrap_or_default() as u32,
        since: d.since_opt.map(to_timestamp),
    }
}

#[tonic::async_trait]
impl ConsentService for ConsentGrpc {
    async fn create_purpose(
        &self,
        request: Request<pb::CreatePurposeRequest>,
    ) -> Result<Response<pb::Purpose>, Status> {
        let caller = caller(&request, &[Permission::ConsentManage])?;
        let req = request.into_inner();
        let basis = basis_from_proto(req.lawful_basis).ok_or_else(|| {
            ServiceError::invalid_field(
                "lawful_basis",
                "is required: consent, contract, legal_obligation, vital_interests, public_task or legitimate_interests",
            )
        })?;
        let purpose = self
            .store
            .create_purpose(
                caller.tenant_id,
                &stamp(&caller, "CreatePurpose"),
                &req.key,
                &req.description,
                basis,
                &req.notice,
            )
            .await?;
        tracing::info!(tenant_id = %caller.tenant_id, purpose = %purpose.key, "purpose created");
        Ok(Response::new(purpose_to_proto(purpose)))
    }

    async fn list_purposes(
        &self,
        request: Request<pb::ListPurposesRequest>,
    ) -> Result<Response<pb::ListPurposesResponse>, Status> {
        let caller = caller(&request, &[Permission::ContactsRead, Permission::ConsentManage])?;
        let purposes = self.store.purposes(caller.tenant_id).await?;
        Ok(Response::new(pb::ListPurposesResponse { purposes: purposes.into_iter().map(purpose_to_proto).collect() }))
    }

    async fn get_purpose(&self, request: Request<pb::GetPurposeRequest>) -> Result<Response<pb::Purpose>, Status> {
        let caller = caller(&request, &[Permission::ContactsRead, Permission::ConsentManage])?;
        let purpose = self.store.purpose(caller.tenant_id, &request.get_ref().key).await?;
        Ok(Response::new(purpose_to_proto(purpose)))
    }

    async fn update_notice(&self, request: Request<pb::UpdateNoticeRequest>) -> Result<Response<pb::Purpose>, Status> {
        let caller = caller(&request, &[Permission::ConsentManage])?;
        let req = request.into_inner();
        let purpose =
            self.store.update_notice(caller.tenant_id, &stamp(&caller, "UpdateNotice"), &req.key, &req.notice).await?;
        tracing::info!(tenant_id = %caller.tenant_id, purpose = %purpose.key, version = purpose.current_version, "notice updated");
        Ok(Response::new(purpose_to_proto(purpose)))
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::ConsentRecord>, Status> {
        let caller = caller(&request, &[Permission::ConsentManage])?;
        let req = request.into_inner();
        let contact_id = parse_id("contact_id", &req.contact_id)?;
        let action = match pb::ConsentAction::try_from(req.action).unwrap_or(pb::ConsentAction::Unspecified) {
            pb::ConsentAction::Grant => Action::Grant,
            pb::ConsentAction::Withdraw => Action::Withdraw,
            pb::ConsentAction::Unspecified => {
                return Err(ServiceError::invalid_field("action", "is required: grant or withdraw").into());
            }
        };
        let source = source_from_proto(req.source).ok_or_else(|| {
            ServiceError::invalid_field("source", "is required: web_form, email_optin, phone, api or import")
        })?;
        let lawful_basis_opt = match req.lawful_basis {
            0 => None,
            v => Some(
                basis_from_proto(v)
                    .ok_or_else(|| ServiceError::invalid_field("lawful_basis", "is not a lawful basis"))?,
            ),
        };
        let evidence = req.evidence.unwrap_or_default();
        let at_opt = evidence.at.as_ref().map(|t| from_timestamp("evidence.at", t)).transpose()?;
        let flags = self.flags(&caller, &[contact_id]).await?;
        if !flags.get(&contact_id).is_some_and(|f| f.exists) {
            return Err(ServiceError::not_found("contact", contact_id).with_field("contact_id").into());
        }
        let input = RecordInput {
            contact_id,
            purpose: req.purpose,
            action,
            lawful_basis_opt,
            source,
            form_id_opt: Some(evidence.form_id),
            notice_version_opt: (evidence.notice_version > 0).then_some(evidence.notice_version as i32),
            at_opt,
            ip_opt: Some(evidence.ip),
            user_agent_opt: Some(evidence.user_agent),
            justification_opt: Some(evidence.justification),
            require_confirmation: req.require_confirmation,
            expected_record_opt: None,
        };
        let record =
            self.store.record(caller.tenant_id, &caller.principal, input, &stamp(&caller, "RecordConsent")).await?;
        tracing::info!(tenant_id = %caller.tenant_id, contact_id = %contact_id, purpose = %record.purpose, status = record.status.as_str(), "consent recorded");
        Ok(Response::new(record_to_proto(record)))
    }

    async fn get_contact_consents(
        &self,
        request: Request<pb::GetContactConsentsRequest>,
    ) -> Result<Response<pb::GetContactConsentsResponse>, Status> {
        let caller = caller(&request, &[Permission::ContactsRead])?;
        let contact_id = parse_id("contact_id", &request.get_ref().contact_id)?;
        let (states, records) = self.store.contact_consents(caller.tenant_id, contact_id).await?;
        Ok(Response::new(pb::GetContactConsentsResponse {
            current: states.into_iter().map(state_to_proto).collect(),
            history: records.into_iter().map(record_to_proto).collect(),
        }))
    }

    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResult>, Status> {
        let caller = caller(&request, &[Permission::ContactsRead, Permission::ConsentManage, Permission::CommsSend])?;
        let check = request.into_inner();
        let id = parse_id("contact_id", &check.contact_id)?;
        let mut results =
            self.check_pairs(&caller, vec![pb::CheckRequest { contact_id: id.to_string(), ..check }]).await?;
        Ok(Response::new(results.remove(0)))
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        let caller = caller(&request, &[Permission::ContactsRead, Permission::ConsentManage, Permission::CommsSend])?;
        let checks = request.into_inner().checks;
        if checks.len() > MAX_BATCH_CHECKS {
            return Err(
                ServiceError::invalid_field("checks", format!("at most {MAX_BATCH_CHECKS} pairs per call")).into()
            );
        }
        let results = self.check_pairs(&caller, checks).await?;
        Ok(Response::new(pb::CheckBatchResponse { results }))
    }

    async fn issue_links(
        &self,
        request: Request<pb::IssueLinksRequest>,
    ) -> Result<Response<pb::IssueLinksResponse>, Status> {
        let caller = caller(&request, &[Permission::ConsentManage, Permission::CommsSend])?;
        let req = request.into_inner();
        let mut purposes = HashMap::new();
        Ok(Response::new(self.links_for(&caller, req, &mut purposes, "").await?))
    }

    async fn issue_links_batch(
        &self,
        request: Request<pb::IssueLinksBatchRequest>,
    ) -> Result<Response<pb::IssueLinksBatchResponse>, Status> {
        let caller = caller(&request, &[Permission::ConsentManage, Permission::CommsSend])?;
        let requests = request.into_inner().requests;
        if requests.len() > MAX_BATCH_LINKS {
            return Err(ServiceError::invalid_field("requests", format!("at most {MAX_BATCH_LINKS} per call")).into());
        }
        let mut purposes = HashMap::new();
        let mut responses = Vec::with_capacity(requests.len());
        for (i, req) in requests.into_iter().enumerate() {
            responses.push(self.links_for(&caller, req, &mut purposes, &format!("requests[{i}].")).await?);
        }
        Ok(Response::new(pb::IssueLinksBatchResponse { responses }))
    }

    async fn redeem_link(
        &self,
        request: Request<pb::RedeemLinkRequest>,
    ) -> Result<Response<pb::RedeemLinkResponse>, Status> {
        use carnet_kit::links::{LinkError, LinkKind, verify};
        // Any verified caller: the gateway forwards people's links as `public:link`.
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let claims = verify(&self.links_key, &req.token, chrono::Utc::now().timestamp()).map_err(|e| {
            let message = match e {
                LinkError::Expired => "has expired",
                LinkError::BadSignature => "is not a valid link",
                LinkError::Malformed => "is malformed",
            };
            ServiceError::invalid_field("token", message)
        })?;
        if claims.tenant_id != caller.tenant_id {
            return Err(ServiceError::invalid_field("token", "is not a valid link").into());
        }
        let purpose = self.store.purpose(claims.tenant_id, &claims.purpose).await?;
        // The person acts through their link (`public:link`): the ledger says `subject:link`.
        let stamp = stamp(&caller, "RedeemLink");
        let ip_opt = Some(req.ip).filter(|i| !i.is_empty());
        let ua_opt = Some(req.user_agent).filter(|u| !u.is_empty());
        let (action, status, already_done) = match claims.kind {
            LinkKind::Confirm => {
                let record_id =
                    claims.record_id_opt.ok_or_else(|| ServiceError::invalid_field("token", "is malformed"))?;
                let (status, done) = self
                    .store
                    .confirm(claims.tenant_id, claims.contact_id, &claims.purpose, record_id, ip_opt, ua_opt, &stamp)
                    .await?;
                (pb::ConsentAction::Grant, status, done)
            }
            LinkKind::Accept => {
                let current = self.store.state(claims.tenant_id, claims.contact_id, &claims.purpose).await?;
                if current.as_ref().is_some_and(|(s, _)| s.status == ConsentStatus::Granted) {
                    (pb::ConsentAction::Grant, ConsentStatus::Granted, true)
                } else {
                    let input = RecordInput {
                        contact_id: claims.contact_id,
                        purpose: claims.purpose.clone(),
                        action: Action::Grant,
                        lawful_basis_opt: None,
                        source: ConsentSource::EmailOptin,
                        form_id_opt: None,
                        notice_version_opt: claims.notice_version_opt.map(|v| v as i32),
                        at_opt: None,
                        ip_opt,
                        user_agent_opt: ua_opt,
                        justification_opt: None,
                        require_confirmation: false,
                        expected_record_opt: None,
                    };
                    let record = self.store.record(claims.tenant_id, "subject:link", input, &stamp).await?;
                    (pb::ConsentAction::Grant, record.status, false)
                }
            }
            LinkKind::Withdraw => {
                let current = self.store.state(claims.tenant_id, claims.contact_id, &claims.purpose).await?;
                if current.as_ref().is_some_and(|(s, _)| s.status == ConsentStatus::Withdrawn) {
                    (pb::ConsentAction::Withdraw, ConsentStatus::Withdrawn, true)
                } else {
                    let input = RecordInput {
                        contact_id: claims.contact_id,
                        purpose: claims.purpose.clone(),
                        action: Action::Withdraw,
                        lawful_basis_opt: None,
                        source: ConsentSource::EmailOptin,
                        form_id_opt: None,
                        notice_version_opt: None,
                        at_opt: None,
                        ip_opt,
                        user_agent_opt: ua_opt,
                        justification_opt: None,
                        require_confirmation: false,
                        expected_record_opt: None,
                    };
                    let record = self.store.record(claims.tenant_id, "subject:link", input, &stamp).await?;
                    (pb::ConsentAction::Withdraw, record.status, false)
                }
            }
        };
        tracing::info!(tenant_id = %claims.tenant_id, contact_id = %claims.contact_id, purpose = %claims.purpose, ?action, already_done, "link redeemed");
        Ok(Response::new(pb::RedeemLinkResponse {
            purpose: purpose.key,
            purpose_description: purpose.description,
            action: action as i32,
            status: status_to_proto(status) as i32,
            already_done,
            contact_id: claims.contact_id.to_string(),
        }))
    }

    async fn create_form(&self, request: Request<pb::CreateFormRequest>) -> Result<Response<pb::Form>, Status> {
        use carnet_proto::contacts::v1::GetFieldPolicyRequest;
        let caller = caller(&request, &[Permission::ConsentManage])?;
        let req = request.into_inner();
        let policy = self
            .contacts_client(&caller)
            .get_field_policy(GetFieldPolicyRequest {})
            .await
            .map_err(|_| {
                ServiceError::new(ErrorCode::Unavailable, "contacts service unavailable for the field policy")
            })?
            .into_inner();
        for (i, key) in req.fields.iter().enumerate() {
            if !policy.fields.iter().any(|f| &f.key == key) {
                return Err(
                    ServiceError::invalid_field(format!("fields[{i}]"), "is not in the tenant's field policy").into()
                );
            }
            if req.fields[..i].contains(key) {
                return Err(ServiceError::invalid_field(format!("fields[{i}]"), "is listed twice").into());
            }
        }
        let def = self
            .store
            .create_form(caller.tenant_id, &stamp(&caller, "CreateForm"), &req.name, req.fields, req.consents)
            .await?;
        tracing::info!(tenant_id = %caller.tenant_id, form_id = %def.id, "form created");
        Ok(Response::new(self.form_view(caller.tenant_id, def).await?))
    }

    async fn get_form(&self, request: Request<pb::GetFormRequest>) -> Result<Response<pb::Form>, Status> {
        // Any verified caller of the form's tenant: the gateway serves forms publicly.
        let caller = Caller::of(&request)?;
        let (tenant_id, form_id) = carnet_kit::links::parse_form_public_id(&request.get_ref().id)
            .filter(|(t, _)| *t == caller.tenant_id)
            .ok_or_else(|| ServiceError::new(ErrorCode::NotFound, "form not found").with_field("id"))?;
        let def = self.store.form(tenant_id, form_id).await?;
        Ok(Response::new(self.form_view(tenant_id, def).await?))
    }

    async fn export_subject(
        &self,
        request: Request<pb_common::ExportSubjectRequest>,
    ) -> Result<Response<pb_common::ExportSubjectResponse>, Status> {
        let caller = caller(&request, &[Permission::ContactsExport, Permission::DsarManage])?;
        let id = parse_id("subject_id", &request.get_ref().subject_id)?;
        let (doc, count) = self.store.export_subject(caller.tenant_id, id).await?;
        Ok(Response::new(pb_common::ExportSubjectResponse {
            service: crate::SERVICE_NAME.to_string(),
            schema_version: crate::EXPORT_SCHEMA_VERSION,
            document_json: serde_json::to_vec(&doc).map_err(|_| ServiceError::internal("export serialisation"))?,
            record_count: count,
        }))
    }

    async fn erase_subject(
        &self,
        request: Request<pb_common::EraseSubjectRequest>,
    ) -> Result<Response<pb_common::EraseSubjectResponse>, Status> {
        let caller = caller(&request, &[Permission::DsarManage])?;
        let id = parse_id("subject_id", &request.get_ref().subject_id)?;
        let (records, states) = self.store.erase_subject(caller.tenant_id, id).await?;
        tracing::info!(tenant_id = %caller.tenant_id, contact_id = %id, records, states, "consent data erased");
        Ok(Response::new(pb_common::EraseSubjectResponse {
            service: crate::SERVICE_NAME.to_string(),
            removed: [("consent_records".to_string(), records), ("consent_states".to_string(), states)].into(),
        }))
    }
}
