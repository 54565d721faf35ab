//! The DSAR gRPC service. Every handler needs `dsar:manage` (the audit trail's: `audit:read`, see
//! `audit_grpc`) and logs ids only; every change and every download is audited.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use carnet_kit::audit::Entry;
use carnet_kit::grpc::{from_timestamp, parse_id, to_timestamp};
use carnet_kit::{Caller, CallerSigner, ErrorCode, Permission, ServiceError};
use carnet_proto::contacts::v1 as pb_contacts;
use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use carnet_proto::dsar::v1 as pb;
use carnet_proto::dsar::v1::dsar_service_server::DsarService;

use crate::engine::Engine;
use crate::entity::{hold, request, task};
use crate::store::NewRequest;

pub const KINDS: [&str; 5] = ["access", "erasure", "rectification", "restriction", "objection"];
const MAX_REASON_CHARS: usize = 1_000;

pub struct DsarGrpc {
    engine: Engine,
}

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = Caller::of(request)?;
    caller.require(Permission::DsarManage)?;
    Ok(caller)
}

/// Who calls, through which method: the common part of the audit entries of one call.
fn stamp(caller: &Caller, method: &str) -> Entry {
    Entry::stamp(caller, &format!("carnet.dsar.v1.DsarService/{method}"))
}

fn reason(field: &str, text: &str) -> Result<String, ServiceError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ServiceError::invalid_field(field, "is required"));
    }
    if t.chars().count() > MAX_REASON_CHARS {
        return Err(ServiceError::invalid_field(field, format!("is longer than {MAX_REASON_CHARS} characters")));
    }
    Ok(t.to_string())
}

fn task_to_proto(t: task::Model) -> pb::Task {
    pb::Task {
        service: t.service,
        status: t.status,
        attempts: t.attempts as u32,
        confirmed_at: t.confirmed_at.map(to_timestamp),
        records: serde_json::from_value(t.records).unwrap_or_default(),
    }
}

fn hold_to_proto(h: hold::Model) -> pb::LegalHold {
    pb::LegalHold {
        id: h.id.to_string(),
        contact_id: h.subject_id.to_string(),
        reason: h.reason,
        placed_by: h.placed_by,
        placed_at: Some(to_timestamp(h.placed_at)),
        lifted_at: h.lifted_at.map(to_timestamp),
        lifted_by: h.lifted_by.unwrap_or_default(),
        lift_reason: h.lift_reason.unwrap_or_default(),
    }
}

pub fn request_to_proto(r: request::Model, tasks: Vec<task::Model>) -> pb::DsarRequest {
    let open = r.status != crate::store::COMPLETED && r.status != crate::store::REJECTED;
    pb::DsarRequest {
        id: r.id.to_string(),
        kind: r.kind,
        contact_id: r.subject_id.to_string(),
        overdue: open && r.due_at < chrono::Utc::now(),
        status: r.status,
        received_at: Some(to_timestamp(r.received_at)),
        due_at: Some(to_timestamp(r.due_at)),
        extended: r.extended,
        extension_reason: r.extension_reason.unwrap_or_default(),
        verification: r.verification.unwrap_or_default(),
        completed_at: r.completed_at.map(to_timestamp),
        rejection_reason: r.rejection_reason.unwrap_or_default(),
        tasks: tasks.into_iter().map(task_to_proto).collect(),
        recipients: serde_json::from_value(r.recipients).unwrap_or_default(),
        export_expires_at: r.export_expires_at.map(to_timestamp),
    }
}

impl DsarGrpc {
    pub fn new(engine: Engine) -> Self {
        DsarGrpc { engine }
    }

    fn contacts(
        &self,
        caller: &Caller,
        perms: &[Permission],
    ) -> Result<
        ContactsServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, CallerSigner>>,
        ServiceError,
    > {
        let channel = self
            .engine
            .channel("contacts")
            .ok_or_else(|| ServiceError::new(ErrorCode::Unavailable, "no contacts service is configured"))?;
        let mut service = Caller::new(caller.tenant_id, "service:dsar", perms.iter().copied());
        service.request_id = caller.request_id.clone();
        Ok(ContactsServiceClient::with_interceptor(channel, CallerSigner::new(self.engine.mesh_key().clone(), service)))
    }

    /// The subject of a request: its contact id, or the contact holding `email`.
    async fn subject(&self, caller: &Caller, contact_id: &str, email: &str) -> Result<Uuid, ServiceError> {
        let mut client = self.contacts(caller, &[Permission::ContactsRead])?;
        let unavailable = |_| ServiceError::new(ErrorCode::Unavailable, "the contacts service is unavailable");
        if !contact_id.is_empty() {
            let id = parse_id("contact_id", contact_id)?;
            let found = client
                .batch_get_contacts(pb_contacts::BatchGetContactsRequest { ids: vec![id.to_string()] })
                .await
                .map_err(unavailable)?
                .into_inner();
            if found.contacts.is_empty() {
                return Err(ServiceError::not_found("contact", id).with_field("contact_id"));
            }
            return Ok(id);
        }
        let wanted = email.trim().to_lowercase();
        if wanted.is_empty() {
            return Err(ServiceError::invalid_field("contact_id", "give a contact_id or an email"));
        }
        let page = client
            .list_contacts(pb_contacts::ListContactsRequest {
                query: wanted.clone(),
                limit: 500,
                cursor: String::new(),
            })
            .await
            .map_err(unavailable)?
            .into_inner();
        let hit = page.contacts.into_iter().find(|c| c.email.as_deref() == Some(wanted.as_str()));
        let id = hit.ok_or_else(|| {
            ServiceError::new(ErrorCode::NotFound, "no contact holds that e-mail address").with_field("email")
        })?;
        parse_id("contact_id", &id.id)
    }

    async fn view(&self, r: request::Model) -> Result<pb::DsarRequest, ServiceError> {
        let tasks = self.engine.store().tasks(r.tenant_id, r.id).await?;
        Ok(request_to_proto(r, tasks))
    }
}

#[tonic::async_trait]
impl DsarService for DsarGrpc {
    async fn create_request(
        &self,
        request: Request<pb::CreateRequestRequest>,
    ) -> Result<Response<pb::DsarRequest>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        if !KINDS.contains(&req.kind.as_str()) {
            return Err(ServiceError::invalid_field("kind", format!("must be one of: {}", KINDS.join(", "))).into());
        }
        // The caller holds `dsar:manage`: without a stated method, they attest the identity.
        let verification = if req.verification.trim().is_empty() {
            "attested by the caller".to_string()
        } else {
            reason("verification", &req.verification)?
        };
        let subject_id = self.subject(&caller, &req.contact_id, &req.email).await?;
        let cfg = self.engine.config();
        let retry = chrono::Duration::milliseconds(cfg.retry_base_ms as i64);
        let mut new = NewRequest {
            kind: req.kind.clone(),
            subject_id,
            verification,
            details: serde_json::json!({}),
            recipients: Vec::new(),
            participants: Vec::new(),
            pseudonym_opt: None,
            completed: false,
            changed_fields: Vec::new(),
        };
        match req.kind.as_str() {
            "erasure" => {
                new.participants = cfg.participants.clone();
                new.pseudonym_opt = Some(self.engine.keys().pseudonym(caller.tenant_id, subject_id));
            }
            "access" => new.participants = cfg.participants.clone(),
            "rectification" => {
                if req.changes.is_empty() {
                    return Err(ServiceError::invalid_field("changes", "is required for a rectification").into());
                }
                let mut update = pb_contacts::UpdateContactRequest {
                    id: subject_id.to_string(),
                    reason: "rectification request (Art. 16)".into(),
                    ..Default::default()
                };
                for (key, value) in &req.changes {
                    match key.as_str() {
                        "email" => update.email = Some(value.clone()),
                        "first_name" => update.first_name = Some(value.clone()),
                        "last_name" => update.last_name = Some(value.clone()),
                        "phone" => update.phone = Some(value.clone()),
                        other => {
                            update.fields.insert(
                                other.to_string(),
                                pb_contacts::FieldValue {
                                    kind: Some(pb_contacts::field_value::Kind::StringValue(value.clone())),
                                },
                            );
                        }
                    }
                }
                self.contacts(&caller, &[Permission::ContactsWrite])?
                    .update_contact(update)
                    .await
                    .map_err(|s| ServiceError::from_status(&s))?;
                // Every service holding a copy learns of it from `contact.upserted`.
                new.recipients = cfg.participants.clone();
                new.completed = true;
                new.changed_fields =
                    req.changes.keys().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            }
            _ => {
                let flag = pb_contacts::SetFlagRequest {
                    id: subject_id.to_string(),
                    active: req.active.unwrap_or(true),
                    reason: format!("{} request", req.kind),
                };
                let mut client = self.contacts(&caller, &[Permission::ContactsWrite])?;
                let res = if req.kind == "restriction" {
                    client.set_restriction(flag).await
                } else {
                    client.set_objection(flag).await
                };
                res.map_err(|s| ServiceError::from_status(&s))?;
                // Consent checks read the flag from contacts, so every consent-gated use stops.
                new.recipients = cfg.participants.clone();
                new.completed = true;
            }
        }
        let created =
            self.engine.store().create(caller.tenant_id, &stamp(&caller, "CreateRequest"), new, retry).await?;
        tracing::info!(tenant_id = %caller.tenant_id, request_id = %created.id, kind = %created.kind, contact_id = %subject_id, "dsar request created");
        if created.kind == "access" {
            self.engine.start_access(created.clone());
        }
        Ok(Response::new(self.view(created).await?))
    }

    async fn get_request(&self, request: Request<pb::GetRequestRequest>) -> Result<Response<pb::DsarRequest>, Status> {
        let caller = caller(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let r = self.engine.store().request(caller.tenant_id, id).await?;
        Ok(Response::new(self.view(r).await?))
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let caller = caller(&request)?;
        let rows = self.engine.store().requests(caller.tenant_id, request.get_ref().open_only).await?;
        let mut requests = Vec::with_capacity(rows.len());
        for r in rows {
            requests.push(self.view(r).await?);
        }
        // Overdue first, then by deadline.
        requests.sort_by_key(|r| (!r.overdue, r.due_at.as_ref().map(|t| (t.seconds, t.nanos))));
        Ok(Response::new(pb::ListRequestsResponse { requests }))
    }

    async fn extend(&self, request: Request<pb::ExtendRequest>) -> Result<Response<pb::DsarRequest>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = parse_id("id", &req.id)?;
        let why = reason("reason", &req.reason)?;
        let months = match req.months {
            0 | 2 => 2,
            1 => 1,
            _ => return Err(ServiceError::invalid_field("months", "is 1 or 2 (Art. 12(3))").into()),
        };
        let r = self.engine.store().extend(caller.tenant_id, &stamp(&caller, "Extend"), id, months, &why).await?;
        tracing::info!(tenant_id = %caller.tenant_id, request_id = %id, months, "deadline extended");
        Ok(Response::new(self.view(r).await?))
    }

    async fn reject(&self, request: Request<pb::RejectRequest>) -> Result<Response<pb::DsarRequest>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = parse_id("id", &req.id)?;
        let why = reason("reason", &req.reason)?;
        let r = self.engine.store().reject(caller.tenant_id, &stamp(&caller, "Reject"), id, &why).await?;
        tracing::info!(tenant_id = %caller.tenant_id, request_id = %id, "dsar request rejected");
        Ok(Response::new(self.view(r).await?))
    }

    async fn place_hold(&self, request: Request<pb::PlaceHoldRequest>) -> Result<Response<pb::LegalHold>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let why = reason("reason", &req.reason)?;
        let subject_id = self.subject(&caller, &req.contact_id, "").await?;
        let h =
            self.engine.store().place_hold(caller.tenant_id, &stamp(&caller, "PlaceHold"), subject_id, &why).await?;
        tracing::info!(tenant_id = %caller.tenant_id, hold_id = %h.id, contact_id = %subject_id, "legal hold placed");
        Ok(Response::new(hold_to_proto(h)))
    }

    async fn list_holds(
        &self,
        request: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        let caller = caller(&request)?;
        let subject_opt = if request.get_ref().contact_id.is_empty() {
            None
        } else {
            Some(parse_id("contact_id", &request.get_ref().contact_id)?)
        };
        let holds = self.engine.store().holds(caller.tenant_id, subject_opt).await?;
        Ok(Response::new(pb::ListHoldsResponse { holds: holds.into_iter().map(hold_to_proto).collect() }))
    }

    async fn lift_hold(&self, request: Request<pb::LiftHoldRequest>) -> Result<Response<pb::LegalHold>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = parse_id("id", &req.id)?;
        let why = reason("reason", &req.reason)?;
        let h = self.engine.store().lift_hold(caller.tenant_id, &stamp(&caller, "LiftHold"), id, &why).await?;
        tracing::info!(tenant_id = %caller.tenant_id, hold_id = %id, "legal hold lifted");
        Ok(Response::new(hold_to_proto(h)))
    }

    async fn download_export(
        &self,
        request: Request<pb::DownloadExportRequest>,
    ) -> Result<Response<pb::DownloadExportResponse>, Status> {
        let caller = caller(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let r = self.engine.store().request(caller.tenant_id, id).await?;
        if r.kind != "access" {
            return Err(ServiceError::invalid_field("id", "is not an access request").into());
        }
        if r.status != crate::store::COMPLETED {
            return Err(
                ServiceError::new(ErrorCode::FailedPrecondition, format!("request {id} is {}", r.status)).into()
            );
        }
        let e = self.engine.store().export(caller.tenant_id, id).await?;
        if e.expires_at < chrono::Utc::now() {
            return Err(ServiceError::new(
                ErrorCode::FailedPrecondition,
                format!("the export of request {id} has expired"),
            )
            .into());
        }
        let plain = self
            .engine
            .keys()
            .open(caller.tenant_id, id, &e.nonce, &e.ciphertext)
            .ok_or_else(|| ServiceError::internal("the export cannot be decrypted"))?;
        let downloaded = stamp(&caller, "DownloadExport").of("export", "dsar_request", id).subject(r.subject_id);
        self.engine.store().record_audit(caller.tenant_id, downloaded).await?;
        tracing::info!(tenant_id = %caller.tenant_id, request_id = %id, "export downloaded");
        Ok(Response::new(pb::DownloadExportResponse { document_json: plain }))
    }

    async fn list_ledger(
        &self,
        request: Request<pb::ListLedgerRequest>,
    ) -> Result<Response<pb::ListLedgerResponse>, Status> {
        let caller = caller(&request)?;
        let rows = self.engine.store().ledger(caller.tenant_id, None).await?;
        let entries = rows
            .into_iter()
            .map(|l| pb::LedgerEntry {
                request_id: l.request_id.to_string(),
                subject_pseudonym: l.subject_pseudonym,
                participants: serde_json::from_value(l.participants).unwrap_or_default(),
                removed: serde_json::from_value::<BTreeMap<String, u64>>(l.removed)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                requested_at: Some(to_timestamp(l.requested_at)),
                completed_at: l.completed_at.map(to_timestamp),
            })
            .collect();
        Ok(Response::new(pb::ListLedgerResponse { entries }))
    }

    async fn replay_erasures(
        &self,
        request: Request<pb::ReplayErasuresRequest>,
    ) -> Result<Response<pb::ReplayErasuresResponse>, Status> {
        let caller = caller(&request)?;
        let since_opt = request.get_ref().since.as_ref().map(|t| from_timestamp("since", t)).transpose()?;
        let entries = self.engine.store().ledger(caller.tenant_id, since_opt).await?;
        let wanted: BTreeMap<String, (Uuid, Vec<String>)> = entries
            .iter()
            .map(|l| {
                (
                    l.subject_pseudonym.clone(),
                    (l.request_id, serde_json::from_value(l.participants.clone()).unwrap_or_default()),
                )
            })
            .collect();
        let stamp = stamp(&caller, "ReplayErasures");
        // Walk every contact of the restored store and match its pseudonym against the ledger.
        let mut client = self.contacts(&caller, &[Permission::ContactsRead])?;
        let mut cursor = String::new();
        let mut matched = 0;
        loop {
            let page = client
                .list_contacts(pb_contacts::ListContactsRequest { query: String::new(), limit: 500, cursor })
                .await
                .map_err(|s| ServiceError::from_status(&s))?
                .into_inner();
            for c in &page.contacts {
                let Ok(id) = c.id.parse::<Uuid>() else { continue };
                if let Some((request_id, participants)) =
                    wanted.get(&self.engine.keys().pseudonym(caller.tenant_id, id))
                {
                    self.engine.store().replay(caller.tenant_id, &stamp, *request_id, id, participants.clone()).await?;
                    matched += 1;
                }
            }
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        let replayed = stamp.of("replay", "erasure_ledger", caller.tenant_id);
        self.engine.store().record_audit(caller.tenant_id, replayed).await?;
        tracing::info!(tenant_id = %caller.tenant_id, entries = entries.len(), matched, "erasure ledger replayed");
        Ok(Response::new(pb::ReplayErasuresResponse { matched, entries: entries.len() as u64 }))
    }

    async fn query_audit(
        &self,
        request: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<pb::QueryAuditResponse>, Status> {
        crate::audit_grpc::query(&self.engine, request).await
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        crate::audit_grpc::verify(&self.engine, request).await
    }

    type ExportAuditStream = crate::audit_grpc::ExportStream;

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        crate::audit_grpc::export(&self.engine, request).await
    }

    async fn get_retention(
        &self,
        request: Request<pb::GetRetentionRequest>,
    ) -> Result<Response<pb::Retention>, Status> {
        crate::retention_grpc::get(&self.engine, request).await
    }

    async fn set_retention(
        &self,
        request: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::Retention>, Status> {
        crate::retention_grpc::set(&self.engine, request).await
    }

    async fn run_retention(
        &self,
        request: Request<pb::RunRetentionRequest>,
    ) -> Result<Response<pb::RunRetentionResponse>, Status> {
        crate::retention_grpc::run(&self.engine, request).await
    }

    async fn list_purges(
        &self,
        request: Request<pb::ListPurgesRequest>,
    ) -> Result<Response<pb::ListPurgesResponse>, Status> {
        crate::retention_grpc::list(&self.engine, request).await
    }
}
