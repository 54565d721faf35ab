//! The audit trail's RPCs (`QueryAudit`, `VerifyAudit`, `ExportAudit`), all behind `audit:read`.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use carnet_kit::audit::Entry;
use carnet_kit::grpc::{from_timestamp, to_timestamp};
use carnet_kit::{Caller, Permission, ServiceError};
use carnet_proto::dsar::v1 as pb;

use crate::audit::{Line, fields_of};
use crate::audit_store::{AuditQuery, CHAIN_PAGE};
use crate::engine::Engine;
use crate::entity::audit;

/// Entries per page when the caller names no limit, and the most it may ask for.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1_000;
/// Longest value a filter may carry (ids, principals, method names are far shorter).
const MAX_FILTER_CHARS: usize = 200;

/// The stream of an export: whole JSON lines, a page of the chain per chunk.
pub type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportAuditChunk, Status>> + Send>>;

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = Caller::of(request)?;
    caller.require(Permission::AuditRead)?;
    Ok(caller)
}

fn to_proto(row: audit::Model) -> pb::AuditEntry {
    pb::AuditEntry {
        seq: row.seq.max(0) as u64,
        event_id: row.event_id.to_string(),
        occurred_at: Some(to_timestamp(row.occurred_at)),
        recorded_at: Some(to_timestamp(row.recorded_at)),
        fields: fields_of(&row.fields),
        actor: row.actor,
        action: row.action,
        record_type: row.record_type,
        record_id: row.record_id,
        subject_id: row.subject_id,
        api: row.api,
        request_id: row.request_id,
        service: row.service,
        prev_hash: row.prev_hash,
        hash: row.hash,
    }
}

fn filter(field: &str, value: String) -> Result<Option<String>, ServiceError> {
    let value = value.trim().to_string();
    if value.chars().count() > MAX_FILTER_CHARS {
        return Err(ServiceError::invalid_field(field, format!("is longer than {MAX_FILTER_CHARS} characters")));
    }
    // Ids are stored in their canonical form (lowercase, hyphenated), whatever form was asked.
    let value = Uuid::try_parse(&value).map_or(value, |id| id.to_string());
    Ok(Some(value).filter(|v| !v.is_empty()))
}

/// Parses a query's filters, page and order.
pub fn query_of(req: pb::QueryAuditRequest) -> Result<AuditQuery, ServiceError> {
    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n @ 1..=MAX_LIMIT => n,
        _ => return Err(ServiceError::invalid_field("limit", format!("must be between 1 and {MAX_LIMIT}"))),
    };
    let newest_first = match req.order.as_str() {
        "" | "newest" => true,
        "seq" => false,
        _ => return Err(ServiceError::invalid_field("order", "must be `newest` or `seq`")),
    };
    let cursor_opt = match req.cursor.trim() {
        "" => None,
        c => Some(
            c.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ServiceError::invalid_field("cursor", "is not a cursor of this trail"))?,
        ),
    };
    Ok(AuditQuery {
        subject_id_opt: filter("subject_id", req.subject_id)?,
        record_id_opt: filter("record_id", req.record_id)?,
        actor_opt: filter("actor", req.actor)?,
        action_opt: filter("action", req.action)?,
        record_type_opt: filter("record_type", req.record_type)?,
        service_opt: filter("service", req.service)?,
        since_opt: req.since.as_ref().map(|t| from_timestamp("since", t)).transpose()?,
        until_opt: req.until.as_ref().map(|t| from_timestamp("until", t)).transpose()?,
        cursor_opt,
        limit: limit as u64,
        newest_first,
    })
}

pub async fn query(
    engine: &Engine,
    request: Request<pb::QueryAuditRequest>,
) -> Result<Response<pb::QueryAuditResponse>, Status> {
    let caller = caller(&request)?;
    let q = query_of(request.into_inner())?;
    let (rows, next_opt) = engine.store().query_audit(caller.tenant_id, &q).await?;
    Ok(Response::new(pb::QueryAuditResponse {
        entries: rows.into_iter().map(to_proto).collect(),
        next_cursor: next_opt.map(|s| s.to_string()).unwrap_or_default(),
    }))
}

pub async fn verify(
    engine: &Engine,
    request: Request<pb::VerifyAuditRequest>,
) -> Result<Response<pb::VerifyAuditResponse>, Status> {
    let caller = caller(&request)?;
    let v = engine.store().verify_audit(caller.tenant_id).await?;
    let (head_seq, head_hash) = v.head_opt.unwrap_or_default();
    if let Some((seq, why)) = v.broken_opt {
        tracing::error!(tenant_id = %caller.tenant_id, seq, reason = why.as_str(), "audit chain broken");
    }
    Ok(Response::new(pb::VerifyAuditResponse {
        ok: v.broken_opt.is_none(),
        entries: v.checked,
        broken_seq: v.broken_opt.map_or(0, |(seq, _)| seq),
        reason: v.broken_opt.map(|(_, why)| why.as_str().to_string()).unwrap_or_default(),
        head_seq,
        head_hash,
    }))
}

/// The JSON lines of some rows.
fn ndjson(rows: &[audit::Model]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 512);
    for row in rows {
        serde_json::to_writer(&mut out, &Line::of(row)).expect("a line serialises");
        out.push(b'\n');
    }
    out
}

pub async fn export(
    engine: &Engine,
    request: Request<pb::ExportAuditRequest>,
) -> Result<Response<ExportStream>, Status> {
    let caller = caller(&request)?;
    let req = request.into_inner();
    let since_opt = req.since.as_ref().map(|t| from_timestamp("since", t)).transpose()?;
    let until_opt = req.until.as_ref().map(|t| from_timestamp("until", t)).transpose()?;
    let tenant_id: Uuid = caller.tenant_id;
    let range_opt = engine.store().audit_range(tenant_id, since_opt, until_opt).await?;
    // Handing the trail out is itself recorded (it names who read whose records).
    let stamp = Entry::new(&caller, "export", "audit_trail", tenant_id, "carnet.dsar.v1.DsarService/ExportAudit");
    engine.store().record_audit(tenant_id, stamp).await?;
    tracing::info!(%tenant_id, ?range_opt, "audit trail exported");
    let store = engine.store().clone();
    // State: the seq after which the next page starts, and the range's last seq.
    let start = range_opt.map(|(first, last)| (first - 1, last));
    let pages = futures::stream::try_unfold(start, move |state| {
        let store = store.clone();
        async move {
            let Some((after, last)) = state else { return Ok(None) };
            let rows = store.audit_chain_page(tenant_id, after, Some(last), CHAIN_PAGE).await.map_err(Status::from)?;
            let Some(end) = rows.last().map(|r| r.seq) else { return Ok(None) };
            let next = (end < last).then_some((end, last));
            Ok(Some((pb::ExportAuditChunk { ndjson: ndjson(&rows) }, next)))
        }
    });
    Ok(Response::new(Box::pin(pages)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_query_parameters_are_checked_and_named() {
        let q = query_of(pb::QueryAuditRequest { actor: " key:a ".into(), ..Default::default() }).unwrap();
        assert_eq!((q.actor_opt.as_deref(), q.limit, q.newest_first), (Some("key:a"), 100, true));
        let id = Uuid::now_v7();
        let q = query_of(pb::QueryAuditRequest { subject_id: id.simple().to_string(), ..Default::default() });
        assert_eq!(q.unwrap().subject_id_opt, Some(id.to_string()));
        let q = query_of(pb::QueryAuditRequest { order: "seq".into(), cursor: "41".into(), ..Default::default() });
        assert_eq!(q.map(|q| (q.newest_first, q.cursor_opt)).unwrap(), (false, Some(41)));
        for (req, field) in [
            (pb::QueryAuditRequest { limit: 5_000, ..Default::default() }, "limit"),
            (pb::QueryAuditRequest { order: "oldest".into(), ..Default::default() }, "order"),
            (pb::QueryAuditRequest { cursor: "abc".into(), ..Default::default() }, "cursor"),
            (pb::QueryAuditRequest { record_id: "x".repeat(300), ..Default::default() }, "record_id"),
        ] {
            assert_eq!(query_of(req).unwrap_err().field_opt.as_deref(), Some(field));
        }
    }
}
