//! The audit trail of the contacts service: who created, changed, viewed, exported, deleted or
//! erased which contact, through which API (ids and field keys only). Changes write their entry
//! in their own transaction; reads right after the read, on the write pool, committed together
//! with the entries of concurrent reads (one insert per batch) before the read answers.
//!
//! `ListContacts` and `BatchGetContacts` record one `view` per contact returned only when a person
//! asked: a `service:` principal reading addresses to send mail, or walking contacts to replay
//! erasures, is not a person viewing them (its own action is audited where it happens, e.g. the
//! mail's `send`). `GetContact` always records a `view`.

use sea_orm::EntityTrait as _;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use carnet_kit::audit::Entry;
use carnet_kit::db::Db;
use carnet_kit::outbox::entity as outbox_row;
use carnet_kit::{Caller, ServiceError};

use crate::SERVICE_NAME;

/// The gRPC service whose methods name the API of an entry.
const GRPC_SERVICE: &str = "carnet.contacts.v1.ContactsService";

/// Who asked, and through which API: what every audit entry of a store call names.
#[derive(Clone, Debug)]
pub struct Audit {
    caller: Caller,
    api: String,
}

impl Audit {
    /// `caller` through `api` (a gRPC method path, `bus`, or a tool's name).
    pub fn new(caller: &Caller, api: impl Into<String>) -> Audit {
        Audit { caller: caller.clone(), api: api.into() }
    }

    /// `caller` through the contacts service's gRPC method `method` (`GetContact`).
    pub fn grpc(caller: &Caller, method: &str) -> Audit {
        Audit::new(caller, format!("{GRPC_SERVICE}/{method}"))
    }

    /// An erasure requested over the bus by the DSAR service; the DSAR request id stands in
    /// for the request id.
    pub fn bus(tenant_id: Uuid, request_id: &str) -> Audit {
        let mut caller = Caller::new(tenant_id, "service:dsar", []);
        caller.request_id = request_id.to_string();
        Audit::new(&caller, "bus")
    }

    /// The principal, as the change history names it.
    pub fn actor(&self) -> &str {
        &self.caller.principal
    }

    /// Whether another service (not a person) is asking.
    pub fn is_service(&self) -> bool {
        self.caller.principal.starts_with("service:")
    }

    /// An entry of `action` on contact `id` (its own subject).
    pub fn entry(&self, action: &'static str, record_type: &'static str, id: Uuid) -> Entry {
        Entry::new(&self.caller, action, record_type, id, &self.api).subject(id)
    }
}

type Batch = (Vec<outbox_row::ActiveModel>, oneshot::Sender<Result<(), ServiceError>>);

/// Most entries written by one statement.
const MAX_ROWS: usize = 1_000;

/// The writer of read entries: concurrent reads share one insert.
#[derive(Clone, Debug)]
pub struct ReadLog {
    tx: mpsc::Sender<Batch>,
}

impl ReadLog {
    /// Spawns the writer on the current tokio runtime; it ends when every handle is dropped.
    pub fn spawn(db: Db) -> ReadLog {
        let (tx, mut rx) = mpsc::channel::<Batch>(256);
        tokio::spawn(async move {
            let mut batches = Vec::with_capacity(64);
            while rx.recv_many(&mut batches, 64).await > 0 {
                let (rows, replies): (Vec<_>, Vec<_>) = std::mem::take(&mut batches).into_iter().unzip();
                let rows: Vec<outbox_row::ActiveModel> = rows.into_iter().flatten().collect();
                let mut result = Ok(());
                for chunk in rows.chunks(MAX_ROWS) {
                    if let Err(e) =
                        outbox_row::Entity::insert_many(chunk.to_vec()).exec_without_returning(&db.write).await
                    {
                        result = Err(crate::rows::db_err(e));
                        break;
                    }
                }
                for reply in replies {
                    let _ = reply.send(result.clone());
                }
            }
        });
        ReadLog { tx }
    }

    /// Records `entries` of `tenant_id` and returns once they are committed.
    pub async fn record(&self, tenant_id: Uuid, entries: Vec<Entry>) -> Result<(), ServiceError> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = entries.into_iter().map(|e| carnet_kit::audit::row(tenant_id, SERVICE_NAME, e)).collect();
        let (reply, answer) = oneshot::channel();
        let stopped = || ServiceError::new(carnet_kit::ErrorCode::Unavailable, "contacts audit writer stopped");
        self.tx.send((rows, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
