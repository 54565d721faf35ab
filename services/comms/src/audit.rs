//! The audit trail of the comms service (ids and field keys only): mails sent (one `send` per
//! message and per consent request; a campaign or a sequence enrolment is one entry for all its
//! recipients, their mails being recorded as deliveries), calls logged and updated (with the
//! recording switch among the fields), suppressions, exports and erasures, and a person viewing
//! a contact's timeline. Changes write their entry in their own transaction.

use uuid::Uuid;

use carnet_kit::Caller;
use carnet_kit::audit::Entry;

const GRPC_SERVICE: &str = "carnet.comms.v1.CommsService";

/// Who asked, and through which API.
#[derive(Clone, Debug)]
pub struct Audit {
    caller: Caller,
    api: String,
}

impl Audit {
    pub fn new(caller: &Caller, api: impl Into<String>) -> Audit {
        Audit { caller: caller.clone(), api: api.into() }
    }

    /// `caller` through the comms service's gRPC method `method` (`LogCall`).
    pub fn grpc(caller: &Caller, method: &str) -> Audit {
        Audit::new(caller, format!("{GRPC_SERVICE}/{method}"))
    }

    /// An erasure requested over the bus by the DSAR service (its request id as request id).
    pub fn bus(tenant_id: Uuid, request_id: &str) -> Audit {
        let mut caller = Caller::new(tenant_id, "service:dsar", []);
        caller.request_id = request_id.to_string();
        Audit::new(&caller, "bus")
    }

    pub fn actor(&self) -> &str {
        &self.caller.principal
    }

    /// Whether another service (not a person) is asking.
    pub fn is_service(&self) -> bool {
        self.caller.principal.starts_with("service:")
    }

    /// An entry of `action` on a record, about `subject_opt` when it belongs to one contact.
    pub fn entry(
        &self,
        action: &'static str,
        record_type: &'static str,
        record_id: impl ToString,
        subject_opt: Option<Uuid>,
    ) -> Entry {
        let entry = Entry::new(&self.caller, action, record_type, record_id, &self.api);
        match subject_opt {
            Some(subject) => entry.subject(subject),
            None => entry,
        }
    }
}
