//! Clients of the services comms relies on, each call signed as `service:comms` in the caller's
//! tenant with only the permissions that call needs.

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

use carnet_kit::{Caller, CallerSigner, ErrorCode, MeshKey, Permission, ServiceError};
use carnet_proto::consent::v1::consent_service_client::ConsentServiceClient;
use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;

pub type ContactsClient = ContactsServiceClient<InterceptedService<Channel, CallerSigner>>;
pub type ConsentClient = ConsentServiceClient<InterceptedService<Channel, CallerSigner>>;

pub const PRINCIPAL: &str = "service:comms";

#[derive(Clone)]
pub struct Peers {
    contacts: Channel,
    consent: Channel,
    mesh_key: MeshKey,
}

impl Peers {
    pub fn new(contacts: Channel, consent: Channel, mesh_key: MeshKey) -> Self {
        Peers { contacts, consent, mesh_key }
    }

    fn signer(&self, tenant_id: Uuid, principal: &str, request_id: &str, perms: &[Permission]) -> CallerSigner {
        let mut caller = Caller::new(tenant_id, principal, perms.iter().copied());
        caller.request_id = request_id.to_string();
        CallerSigner::new(self.mesh_key.clone(), caller)
    }

    /// Reads contacts (addresses at send time, the field policy, audience searches).
    pub fn contacts(&self, tenant_id: Uuid, request_id: &str) -> ContactsClient {
        ContactsServiceClient::with_interceptor(
            self.contacts.clone(),
            self.signer(tenant_id, PRINCIPAL, request_id, &[Permission::ContactsRead]),
        )
        .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Checks consent and signs the people's links.
    pub fn consent(&self, tenant_id: Uuid, request_id: &str) -> ConsentClient {
        ConsentServiceClient::with_interceptor(
            self.consent.clone(),
            self.signer(tenant_id, PRINCIPAL, request_id, &[Permission::CommsSend, Permission::ContactsRead]),
        )
        .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Records a consent heard on a call, in the name of the agent who heard it.
    pub fn consent_as_agent(&self, caller: &Caller) -> ConsentClient {
        ConsentServiceClient::with_interceptor(
            self.consent.clone(),
            self.signer(caller.tenant_id, &caller.principal, &caller.request_id, &[Permission::ConsentManage]),
        )
    }
}

/// Maps a peer's failure: its own client errors (a field at fault, not found) pass through;
/// anything else reads as the peer being unavailable.
pub fn peer_err(service: &str, status: tonic::Status) -> ServiceError {
    let err = ServiceError::from_status(&status);
    match err.code {
        ErrorCode::InvalidArgument | ErrorCode::NotFound | ErrorCode::PermissionDenied => err,
        _ => {
            tracing::warn!(peer = service, code = err.code.as_str(), "peer call failed");
            ServiceError::new(ErrorCode::Unavailable, format!("the {service} service is unavailable"))
        }
    }
}
