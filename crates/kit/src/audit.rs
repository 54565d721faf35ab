//! The audit trail's write side: every service records who viewed, changed, exported, erased
//! or enriched which record as an `audit.recorded` event in its outbox, in the transaction of
//! the change (a read: right after it), so an entry exists if and only if the change does. The
//! DSAR service keeps them centrally in a hash chain (`GET /v1/audit`). Ids only.

use sea_orm::{ConnectionTrait, DbErr};
use uuid::Uuid;

use carnet_proto::events::v1::AuditRecorded;
use carnet_proto::events::v1::event::Payload;

use crate::Caller;

/// One audit entry, before it is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub actor: String,
    pub action: &'static str,
    pub record_type: &'static str,
    pub record_id: String,
    /// The contact the record belongs to, when there is one.
    pub subject_id_opt: Option<Uuid>,
    /// The gRPC method (`carnet.contacts.v1.ContactsService/GetContact`) or `bus`.
    pub api: String,
    pub request_id: String,
    /// Field keys touched (never values).
    pub fields: Vec<String>,
}

impl Entry {
    /// An entry for `caller` doing `action` on a record through `api`.
    pub fn new(
        caller: &Caller,
        action: &'static str,
        record_type: &'static str,
        record_id: impl ToString,
        api: &str,
    ) -> Self {
        Entry {
            actor: caller.principal.clone(),
            action,
            record_type,
            record_id: record_id.to_string(),
            subject_id_opt: None,
            api: api.to_string(),
            request_id: caller.request_id.clone(),
            fields: Vec::new(),
        }
    }

    /// The stamp of a call: who asked, through which API, with the request id. Each action of
    /// the call then becomes an entry with [`Entry::of`].
    pub fn stamp(caller: &Caller, api: &str) -> Self {
        Entry::new(caller, "", "", "", api)
    }

    /// The entry of `action` on a record, from this stamp.
    pub fn of(&self, action: &'static str, record_type: &'static str, record_id: impl ToString) -> Self {
        Entry { action, record_type, record_id: record_id.to_string(), ..self.clone() }
    }

    /// The contact the record belongs to.
    pub fn subject(mut self, subject_id: Uuid) -> Self {
        self.subject_id_opt = Some(subject_id);
        self
    }

    /// The field keys the action touched.
    pub fn fields(mut self, fields: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.fields = fields.into_iter().map(Into::into).collect();
        self
    }

    fn payload(self, service: &str) -> Payload {
        Payload::AuditRecorded(AuditRecorded {
            actor: self.actor,
            action: self.action.to_string(),
            record_type: self.record_type.to_string(),
            record_id: self.record_id,
            subject_id: self.subject_id_opt.map(|s| s.to_string()).unwrap_or_default(),
            api: self.api,
            request_id: self.request_id,
            service: service.to_string(),
            fields: self.fields,
        })
    }
}

/// Writes `entry` as an `audit.recorded` event of `service` on `conn` (the change's
/// transaction, or the write pool for a read).
pub async fn record<C: ConnectionTrait>(conn: &C, tenant_id: Uuid, service: &str, entry: Entry) -> Result<(), DbErr> {
    crate::outbox::enqueue(conn, tenant_id, entry.payload(service)).await.map(|_| ())
}

/// The outbox row of `entry`, for callers that insert many rows at once.
pub fn row(tenant_id: Uuid, service: &str, entry: Entry) -> crate::outbox::entity::ActiveModel {
    crate::outbox::row(tenant_id, entry.payload(service))
}
