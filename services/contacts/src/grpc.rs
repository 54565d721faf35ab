//! The tonic handlers of `carnet.contacts.v1.ContactsService`. Each handler reads the verified
//! caller, checks its permission, and delegates to the store with the caller's tenant.

use futures::StreamExt as _;
use tonic::{Request, Response, Status};

use carnet_kit::grpc::parse_id;
use carnet_kit::{Caller, Permission, ServiceError};
use carnet_proto::common::v1 as pb_common;
use carnet_proto::contacts::v1 as pb;
use carnet_proto::contacts::v1::contacts_service_server::ContactsService;

use crate::audit::Audit;
use crate::bulk_export::ExportFormat;
use crate::convert;
use crate::domain::{ContactInput, ContactPatch, FlagKind};
use crate::store::ContactStore;

/// The gRPC face of the contacts service.
#[derive(Clone, Debug)]
pub struct ContactsGrpc {
    store: ContactStore,
}

impl ContactsGrpc {
    pub fn new(store: ContactStore) -> Self {
        ContactsGrpc { store }
    }
}

fn caller<T>(request: &Request<T>, permission: Permission) -> Result<Caller, Status> {
    let caller = Caller::of(request)?;
    caller.require(permission)?;
    Ok(caller)
}

fn reason_opt(reason: String) -> Option<String> {
    Some(reason.trim().to_string()).filter(|r| !r.is_empty())
}

#[tonic::async_trait]
impl ContactsService for ContactsGrpc {
    async fn create_contact(
        &self,
        request: Request<pb::CreateContactRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let caller = caller(&request, Permission::ContactsWrite)?;
        let mut req = request.into_inner();
        let source = convert::source_from_proto(req.source.take(), &caller.principal)?;
        let input = convert::input_from_create(&mut req)?;
        let override_opt = Some(std::mem::take(&mut req.erasure_override_reason)).filter(|r| !r.trim().is_empty());
        let audit = Audit::grpc(&caller, "CreateContact");
        let contact = self.store.create_with(caller.tenant_id, input, source, override_opt, &audit).await?;
        tracing::info!(tenant_id = %caller.tenant_id, contact_id = %contact.id, "contact created");
        Ok(Response::new(convert::contact_to_proto(contact)))
    }

    async fn get_contact(&self, request: Request<pb::GetContactRequest>) -> Result<Response<pb::Contact>, Status> {
        let caller = caller(&request, Permission::ContactsRead)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let contact = self.store.get(caller.tenant_id, id, &Audit::grpc(&caller, "GetContact")).await?;
        Ok(Response::new(convert::contact_to_proto(contact)))
    }

    async fn update_contact(
        &self,
        request: Request<pb::UpdateContactRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let caller = caller(&request, Permission::ContactsWrite)?;
        let req = request.into_inner();
        let id = parse_id("id", &req.id)?;
        let patch = ContactPatch {
            set: ContactInput {
                email_opt: req.email,
                first_name_opt: req.first_name,
                last_name_opt: req.last_name,
                phone_opt: req.phone,
                fields: convert::fields_from_proto(req.fields)?,
            },
            clear: req.clear_fields,
            reason_opt: reason_opt(req.reason),
            expected_version_opt: req.expected_version,
            source_opt: match req.source {
                Some(source) => Some(convert::source_from_proto(Some(source), &caller.principal)?),
                None => None,
            },
            import_id_opt: None,
        };
        let contact = self.store.update(caller.tenant_id, id, &Audit::grpc(&caller, "UpdateContact"), patch).await?;
        tracing::info!(tenant_id = %caller.tenant_id, contact_id = %id, "contact rectified");
        Ok(Response::new(convert::contact_to_proto(contact)))
    }

    async fn delete_contact(
        &self,
        request: Request<pb::DeleteContactRequest>,
    ) -> Result<Response<pb::DeleteContactResponse>, Status> {
        let caller = caller(&request, Permission::ContactsDelete)?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.store.delete(caller.tenant_id, id, &Audit::grpc(&caller, "DeleteContact")).await?;
        tracing::info!(tenant_id = %caller.tenant_id, contact_id = %id, "contact deleted");
        Ok(Response::new(pb::DeleteContactResponse {}))
    }

    async fn list_contacts(
        &self,
        request: Request<pb::ListContactsRequest>,
    ) -> Result<Response<pb::ListContactsResponse>, Status> {
        let caller = caller(&request, Permission::ContactsRead)?;
        let req = request.into_inner();
        let audit = Audit::grpc(&caller, "ListContacts");
        let page = self.store.list(caller.tenant_id, &req.query, req.limit, &req.cursor, &audit).await?;
        Ok(Response::new(pb::ListContactsResponse {
            contacts: page.contacts.into_iter().map(convert::contact_to_proto).collect(),
            next_cursor: page.next_cursor_opt.unwrap_or_default(),
        }))
    }

    async fn merge_contacts(
        &self,
        request: Request<pb::MergeContactsRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let caller = caller(&request, Permission::ContactsWrite)?;
        let req = request.get_ref();
        let id = parse_id("id", &req.id)?;
        let other_id = parse_id("other_id", &req.other_id)?;
        let audit = Audit::grpc(&caller, "MergeContacts");
        let contact = self.store.merge(caller.tenant_id, id, other_id, &audit).await?;
        tracing::info!(tenant_id = %caller.tenant_id, contact_id = %id, merged_id = %other_id, "contacts merged");
        Ok(Response::new(convert::contact_to_proto(contact)))
    }

    async fn get_contact_history(
        &self,
        request: Request<pb::GetContactHistoryRequest>,
    ) -> Result<Response<pb::GetContactHistoryResponse>, Status> {
        let caller = caller(&request, Permission::ContactsRead)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let changes = self.store.history(caller.tenant_id, id, &Audit::grpc(&caller, "GetContactHistory")).await?;
        Ok(Response::new(pb::GetContactHistoryResponse {
            changes: changes.into_iter().map(convert::change_to_proto).collect(),
        }))
    }

    async fn get_field_policy(
        &self,
        request: Request<pb::GetFieldPolicyRequest>,
    ) -> Result<Response<pb::FieldPolicy>, Status> {
        let caller = caller(&request, Permission::ContactsRead)?;
        let policy = self.store.field_policy(caller.tenant_id).await?;
        Ok(Response::new(convert::policy_to_proto(policy)))
    }

    async fn set_field_policy(
        &self,
        request: Request<pb::SetFieldPolicyRequest>,
    ) -> Result<Response<pb::FieldPolicy>, Status> {
        let caller = caller(&request, Permission::PolicyManage)?;
        let fields = convert::definitions_from_proto(request.into_inner().fields)?;
        let audit = Audit::grpc(&caller, "SetFieldPolicy");
        let policy = self.store.set_field_policy(caller.tenant_id, &audit, fields).await?;
        tracing::info!(tenant_id = %caller.tenant_id, version = policy.version, "field policy set");
        Ok(Response::new(convert::policy_to_proto(policy)))
    }

    async fn set_restriction(&self, request: Request<pb::SetFlagRequest>) -> Result<Response<pb::Contact>, Status> {
        self.set_flag(request, FlagKind::Restriction).await
    }

    async fn set_objection(&self, request: Request<pb::SetFlagRequest>) -> Result<Response<pb::Contact>, Status> {
        self.set_flag(request, FlagKind::Objection).await
    }

    async fn batch_get_contacts(
        &self,
        request: Request<pb::BatchGetContactsRequest>,
    ) -> Result<Response<pb::BatchGetContactsResponse>, Status> {
        let caller = caller(&request, Permission::ContactsRead)?;
        let req = request.into_inner();
        if req.ids.len() > crate::store::MAX_BATCH_GET {
            return Err(
                ServiceError::invalid_field("ids", format!("at most {} ids", crate::store::MAX_BATCH_GET)).into()
            );
        }
        let ids = req
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| parse_id(&format!("ids[{i}]"), id))
            .collect::<Result<Vec<_>, _>>()?;
        let contacts = self.store.get_many(caller.tenant_id, &ids, &Audit::grpc(&caller, "BatchGetContacts")).await?;
        Ok(Response::new(pb::BatchGetContactsResponse {
            contacts: contacts.into_iter().map(convert::contact_to_proto).collect(),
        }))
    }

    async fn get_subject_flags(
        &self,
        request: Request<pb::GetSubjectFlagsRequest>,
    ) -> Result<Response<pb::GetSubjectFlagsResponse>, Status> {
        let caller = caller(&request, Permission::ContactsRead)?;
        let req = request.into_inner();
        if req.ids.len() > crate::store::MAX_FLAG_IDS {
            return Err(
                ServiceError::invalid_field("ids", format!("at most {} ids", crate::store::MAX_FLAG_IDS)).into()
            );
        }
        let ids = req
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| parse_id(&format!("ids[{i}]"), id))
            .collect::<Result<Vec<_>, _>>()?;
        let found = self.store.subject_flags(caller.tenant_id, &ids).await?;
        let flags = ids
            .iter()
            .map(|id| {
                let (exists, (restricted, objected)) = match found.get(id) {
                    Some(f) => (true, *f),
                    None => (false, (false, false)),
                };
                pb::SubjectFlags { id: id.to_string(), exists, restricted, objected }
            })
            .collect();
        Ok(Response::new(pb::GetSubjectFlagsResponse { flags }))
    }

    async fn export_subject(
        &self,
        request: Request<pb_common::ExportSubjectRequest>,
    ) -> Result<Response<pb_common::ExportSubjectResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_any(&[Permission::ContactsExport, Permission::DsarManage])?;
        let id = parse_id("subject_id", &request.get_ref().subject_id)?;
        let (doc, count) =
            self.store.export_subject(caller.tenant_id, id, &Audit::grpc(&caller, "ExportSubject")).await?;
        tracing::info!(tenant_id = %caller.tenant_id, contact_id = %id, records = count, "subject exported");
        Ok(Response::new(pb_common::ExportSubjectResponse {
            service: crate::SERVICE_NAME.to_string(),
            schema_version: crate::EXPORT_SCHEMA_VERSION,
            document_json: serde_json::to_vec(&doc).map_err(|_| ServiceError::internal("export serialisation"))?,
            record_count: count,
        }))
    }

    async fn list_inactive(
        &self,
        request: Request<pb::ListInactiveRequest>,
    ) -> Result<Response<pb::ListInactiveResponse>, Status> {
        let caller = caller(&request, Permission::DsarManage)?;
        let req = request.into_inner();
        let before = req
            .before
            .as_ref()
            .ok_or_else(|| ServiceError::invalid_field("before", "is required"))
            .and_then(|t| carnet_kit::grpc::from_timestamp("before", t))?;
        let after_opt = if req.after_id.is_empty() { None } else { Some(parse_id("after_id", &req.after_id)?) };
        let limit = match req.limit {
            0 => 500,
            n if u64::from(n) <= crate::activity::MAX_INACTIVE_PAGE => u64::from(n),
            _ => return Err(ServiceError::invalid_field("limit", "is at most 1000").into()),
        };
        let rows = self.store.inactive(caller.tenant_id, before, after_opt, limit).await?;
        let next_after_id = if rows.len() as u64 == limit {
            rows.last().map(|(id, _)| id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        let contacts = rows
            .into_iter()
            .map(|(id, at)| pb::InactiveContact {
                id: id.to_string(),
                last_activity_at: Some(carnet_kit::grpc::to_timestamp(at)),
            })
            .collect();
        Ok(Response::new(pb::ListInactiveResponse { contacts, next_after_id }))
    }

    async fn erase_subject(
        &self,
        request: Request<pb_common::EraseSubjectRequest>,
    ) -> Result<Response<pb_common::EraseSubjectResponse>, Status> {
        let caller = caller(&request, Permission::DsarManage)?;
        let req = request.get_ref();
        let id = parse_id("subject_id", &req.subject_id)?;
        let audit = Audit::grpc(&caller, "EraseSubject");
        let erased = self.store.erase_subject(caller.tenant_id, id, &req.request_id, &audit).await?;
        tracing::info!(tenant_id = %caller.tenant_id, contact_id = %id, contacts = erased.contacts, changes = erased.contact_changes, "subject erased");
        Ok(Response::new(pb_common::EraseSubjectResponse {
            service: crate::SERVICE_NAME.to_string(),
            removed: [
                ("contacts".to_string(), erased.contacts),
                ("contact_changes".to_string(), erased.contact_changes),
            ]
            .into(),
        }))
    }

    async fn create_import(&self, request: Request<pb::CreateImportRequest>) -> Result<Response<pb::Import>, Status> {
        crate::import_grpc::create(&self.store, request).await
    }

    async fn upload_import(
        &self,
        request: Request<tonic::Streaming<pb::ImportChunk>>,
    ) -> Result<Response<pb::Import>, Status> {
        crate::import_grpc::upload(&self.store, request).await
    }

    async fn get_import(&self, request: Request<pb::GetImportRequest>) -> Result<Response<pb::Import>, Status> {
        crate::import_grpc::get(&self.store, request).await
    }

    async fn list_imports(
        &self,
        request: Request<pb::ListImportsRequest>,
    ) -> Result<Response<pb::ListImportsResponse>, Status> {
        crate::import_grpc::list(&self.store, request).await
    }

    type ImportReportStream = crate::import_grpc::ReportStream;

    async fn import_report(
        &self,
        request: Request<pb::ImportReportRequest>,
    ) -> Result<Response<Self::ImportReportStream>, Status> {
        crate::import_grpc::report(&self.store, request).await
    }

    type ExportContactsStream = ExportStream;

    async fn export_contacts(
        &self,
        request: Request<pb::ExportContactsRequest>,
    ) -> Result<Response<Self::ExportContactsStream>, Status> {
        let caller = caller(&request, Permission::ContactsExport)?;
        let req = request.into_inner();
        let format = ExportFormat::parse(&req.format)?;
        let audit = Audit::grpc(&caller, "ExportContacts");
        let export = self.store.bulk_export(caller.tenant_id, format, &req.fields, &audit).await?;
        tracing::info!(tenant_id = %caller.tenant_id, export_id = %export.export_id, "bulk export started");
        // The first chunk names the export and its columns; the rest carry the lines.
        let first = pb::ExportContactsChunk {
            data: Vec::new(),
            count: 0,
            export_id: export.export_id.to_string(),
            columns: export.columns,
        };
        let rest = futures::stream::unfold(export.chunks, |mut rx| async move {
            let item = rx.recv().await?.map(|c| pb::ExportContactsChunk {
                data: c.data,
                count: c.count,
                ..Default::default()
            });
            Some((item.map_err(Status::from), rx))
        });
        Ok(Response::new(Box::pin(futures::stream::once(async { Ok(first) }).chain(rest))))
    }
}

/// The stream of a bulk export: the export's id and columns, then whole lines.
pub type ExportStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ExportContactsChunk, Status>> + Send>>;

impl ContactsGrpc {
    async fn set_flag(
        &self,
        request: Request<pb::SetFlagRequest>,
        kind: FlagKind,
    ) -> Result<Response<pb::Contact>, Status> {
        let caller = caller(&request, Permission::ContactsWrite)?;
        let req = request.into_inner();
        let id = parse_id("id", &req.id)?;
        let method = match kind {
            FlagKind::Restriction => "SetRestriction",
            FlagKind::Objection => "SetObjection",
        };
        let audit = Audit::grpc(&caller, method);
        let contact =
            self.store.set_flag(caller.tenant_id, id, &audit, kind, req.active, reason_opt(req.reason)).await?;
        tracing::info!(tenant_id = %caller.tenant_id, contact_id = %id, ?kind, active = req.active, "contact flag set");
        Ok(Response::new(convert::contact_to_proto(contact)))
    }
}
