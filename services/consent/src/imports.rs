//! Consent records that follow a bulk import (docs/import.md): when an import creates or updates
//! a contact (`contact.upserted` naming the import), the import's lawful basis is recorded for
//! each of its purposes, with its evidence (when and where it was collected, the notice version
//! or text), source `import` and the import id as the record's form id.
//!
//! An import never overrides a withdrawal: a purpose the person withdrew is left alone. A
//! record of the same import is written once, however often the event is delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tonic::transport::Channel;
use uuid::Uuid;

use carnet_kit::audit::Entry;
use carnet_kit::{Caller, CallerSigner, ErrorCode, MeshKey, Permission, ServiceError};
use carnet_proto::contacts::v1 as pb_contacts;
use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use carnet_proto::events::v1::{Event, event::Payload};

use crate::domain::{Action, ConsentSource, LawfulBasis, RecordInput};
use crate::entity::{record, state};
use crate::store::ConsentStore;
use crate::store::db_err;

/// Import terms kept per process (an import's terms never change).
const CACHED_IMPORTS: usize = 256;

/// Import terms by (tenant, import).
type TermsCache = Arc<Mutex<HashMap<(Uuid, Uuid), Arc<pb_contacts::Import>>>>;

#[derive(Clone)]
pub struct ImportFollower {
    store: ConsentStore,
    contacts: Channel,
    mesh_key: MeshKey,
    terms: TermsCache,
}

impl ImportFollower {
    pub fn new(store: ConsentStore, contacts: Channel, mesh_key: MeshKey) -> Self {
        ImportFollower { store, contacts, mesh_key, terms: Arc::new(Mutex::new(HashMap::new())) }
    }

    async fn import(&self, tenant_id: Uuid, id: Uuid) -> Result<Arc<pb_contacts::Import>, ServiceError> {
        if let Some(t) = self.terms.lock().expect("import terms").get(&(tenant_id, id)) {
            return Ok(t.clone());
        }
        let caller = Caller::new(tenant_id, "service:consent", [Permission::ContactsRead]);
        let mut client = ContactsServiceClient::with_interceptor(
            self.contacts.clone(),
            CallerSigner::new(self.mesh_key.clone(), caller),
        );
        let job = client
            .get_import(pb_contacts::GetImportRequest { id: id.to_string() })
            .await
            .map_err(|s| ServiceError::from_status(&s))?
            .into_inner();
        let job = Arc::new(job);
        let mut cache = self.terms.lock().expect("import terms");
        if cache.len() >= CACHED_IMPORTS {
            cache.clear();
        }
        cache.insert((tenant_id, id), job.clone());
        Ok(job)
    }

    /// Handles one `contact.upserted`; events without an import are acknowledged untouched.
    pub async fn on_event(&self, event: &Event) -> Result<(), ServiceError> {
        let Some(Payload::ContactUpserted(u)) = &event.payload else { return Ok(()) };
        if u.import_id.is_empty() {
            return Ok(());
        }
        let (Ok(tenant_id), Ok(import_id), Ok(contact_id)) =
            (event.tenant_id.parse::<Uuid>(), u.import_id.parse::<Uuid>(), u.contact_id.parse::<Uuid>())
        else {
            return Ok(());
        };
        let job = self.import(tenant_id, import_id).await?;
        let Some(basis) = LawfulBasis::parse(&job.lawful_basis) else { return Ok(()) };
        let evidence = job.evidence.clone().unwrap_or_default();
        let form_id = format!("import:{import_id}");
        for purpose in &job.purposes {
            if self.recorded(tenant_id, contact_id, purpose, &form_id).await? {
                continue;
            }
            let mut justification = vec![format!("imported from {} (import {import_id})", job.file_name)];
            if !evidence.collected_where.is_empty() {
                justification.push(format!("collected at: {}", evidence.collected_where));
            }
            if !evidence.notice_text.is_empty() {
                justification.push(format!("notice shown: {}", evidence.notice_text));
            }
            if !evidence.justification.is_empty() {
                justification.push(evidence.justification.clone());
            }
            let input = RecordInput {
                contact_id,
                purpose: purpose.clone(),
                action: Action::Grant,
                lawful_basis_opt: Some(basis),
                source: ConsentSource::Import,
                form_id_opt: Some(form_id.clone()),
                notice_version_opt: (evidence.notice_version > 0).then_some(evidence.notice_version as i32),
                at_opt: evidence.collected_at.as_ref().and_then(|t| carnet_kit::grpc::from_timestamp("at", t).ok()),
                ip_opt: None,
                user_agent_opt: None,
                justification_opt: Some(justification.join("; ").chars().take(2000).collect()),
                require_confirmation: false,
                expected_record_opt: None,
            };
            let stamp = Entry { actor: job.actor.clone(), api: "bus".into(), ..Entry::default() };
            match self.store.record(tenant_id, &job.actor, input, &stamp).await {
                Ok(_) => {}
                // A purpose deleted since, or an erased contact: nothing to record.
                Err(e)
                    if matches!(
                        e.code,
                        ErrorCode::InvalidArgument | ErrorCode::NotFound | ErrorCode::FailedPrecondition
                    ) =>
                {
                    tracing::warn!(%tenant_id, %import_id, %contact_id, code = e.code.as_str(), "import consent not recorded");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether this import's record exists already, or the person withdrew the purpose (which an
    /// import must not override).
    async fn recorded(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        purpose: &str,
        form_id: &str,
    ) -> Result<bool, ServiceError> {
        let db = &self.store.db().read;
        let withdrawn = state::Entity::find()
            .filter(state::Column::TenantId.eq(tenant_id))
            .filter(state::Column::ContactId.eq(contact_id))
            .filter(state::Column::PurposeKey.eq(purpose))
            .filter(state::Column::Status.eq("withdrawn"))
            .count(db)
            .await
            .map_err(db_err)?;
        if withdrawn > 0 {
            return Ok(true);
        }
        let mine = record::Entity::find()
            .filter(record::Column::TenantId.eq(tenant_id))
            .filter(record::Column::ContactId.eq(contact_id))
            .filter(record::Column::PurposeKey.eq(purpose))
            .filter(record::Column::FormId.eq(form_id))
            .count(db)
            .await
            .map_err(db_err)?;
        Ok(mine > 0)
    }
}
