//! The transactional outbox: a service writes each event in the same database transaction as the
//! change it describes, so a committed change always has its event and a rolled-back one never
//! does. A relay publishes pending rows and marks them published (it arrives with the event
//! bus; until then rows stay pending).
//!
//! Every service's migrations create an `outbox` table of this shape.

use prost::Message;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, Set};
use uuid::Uuid;

use carnet_proto::events::v1::{Event, event::Payload};

pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub kind: String,
        pub payload: Vec<u8>,
        pub created_at: DateTimeUtc,
        pub published_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Returns the event kind (`contact.upserted`, …): the last token of the subject
/// `carnet.<tenant>.<kind>`.
pub fn kind_of(payload: &Payload) -> &'static str {
    match payload {
        Payload::ContactUpserted(_) => "contact.upserted",
        Payload::ContactErased(_) => "contact.erased",
        Payload::ContactMerged(_) => "contact.merged",
        Payload::ConsentChanged(_) => "consent.changed",
        Payload::ErasureRequested(_) => "erasure.requested",
        Payload::ErasureConfirmed(_) => "erasure.confirmed",
    }
}

/// Writes `payload` as a pending event of `tenant_id` on `conn` (a transaction).
pub async fn enqueue<C: ConnectionTrait>(conn: &C, tenant_id: Uuid, payload: Payload) -> Result<Uuid, DbErr> {
    let row = row(tenant_id, payload);
    let id = row.id.clone().unwrap();
    entity::Entity::insert(row).exec_without_returning(conn).await?;
    Ok(id)
}

/// Returns the outbox row of a pending event, for callers that insert many rows at once.
pub fn row(tenant_id: Uuid, payload: Payload) -> entity::ActiveModel {
    let id = Uuid::now_v7();
    let now = crate::db::now();
    let kind = kind_of(&payload);
    let event = Event {
        id: id.to_string(),
        tenant_id: tenant_id.to_string(),
        occurred_at: Some(crate::grpc::to_timestamp(now)),
        trace_context: Default::default(),
        payload: Some(payload),
    };
    entity::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant_id),
        kind: Set(kind.to_string()),
        payload: Set(event.encode_to_vec()),
        created_at: Set(now),
        published_at: Set(None),
    }
}
