//! The retention RPCs (`GetRetention`, `SetRetention`, `RunRetention`, `ListPurges`), all behind
//! `dsar:manage` (docs/retention.md).

use tonic::{Request, Response, Status};

use carnet_kit::audit::Entry;
use carnet_kit::{Caller, ErrorCode, Permission, ServiceError};
use carnet_proto::consent::v1 as pb_consent;
use carnet_proto::dsar::v1 as pb;

use crate::engine::Engine;
use crate::entity::retention_settings;
use crate::retention::{Trigger, purge_to_proto, settings_to_proto, validate};

const DEFAULT_PURGES: u32 = 100;
const MAX_PURGES: u32 = 500;

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = Caller::of(request)?;
    caller.require(Permission::DsarManage)?;
    Ok(caller)
}

fn stamp(caller: &Caller, method: &str) -> Entry {
    Entry::stamp(caller, &format!("carnet.dsar.v1.DsarService/{method}"))
}

pub async fn get(
    engine: &Engine,
    request: Request<pb::GetRetentionRequest>,
) -> Result<Response<pb::Retention>, Status> {
    let caller = caller(&request)?;
    let row_opt = engine.store().retention_settings(caller.tenant_id).await?;
    Ok(Response::new(settings_to_proto(row_opt)))
}

pub async fn set(
    engine: &Engine,
    request: Request<pb::SetRetentionRequest>,
) -> Result<Response<pb::Retention>, Status> {
    let caller = caller(&request)?;
    let r = request.into_inner().retention.ok_or_else(|| ServiceError::invalid_field("retention", "is required"))?;
    let (policies, warning_purpose, warning_subject, warning_body) = validate(&r)?;
    if !warning_purpose.is_empty() {
        // The warning is mailed for this purpose: it must exist (its lawful basis decides whether
        // comms may send it).
        let req = pb_consent::GetPurposeRequest { key: warning_purpose.clone() };
        let res: Result<pb_consent::Purpose, ServiceError> =
            engine.call(caller.tenant_id, "consent", "GetPurpose", req, &[Permission::ConsentManage]).await;
        match res {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::NotFound => {
                return Err(ServiceError::invalid_field(
                    "retention.warning_purpose",
                    format!("`{warning_purpose}` is not a purpose of this tenant"),
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let row = retention_settings::Model {
        tenant_id: caller.tenant_id,
        policies: serde_json::to_value(&policies).map_err(|_| ServiceError::internal("policies"))?,
        erase_on_withdrawal: r.erase_on_withdrawal,
        warning_purpose,
        warning_subject,
        warning_body,
        updated_by: caller.principal.clone(),
        updated_at: carnet_kit::db::now(),
    };
    let saved = engine.store().set_retention_settings(&stamp(&caller, "SetRetention"), row).await?;
    tracing::info!(tenant_id = %caller.tenant_id, policies = policies.len(), "retention settings changed");
    Ok(Response::new(settings_to_proto(Some(saved))))
}

pub async fn run(
    engine: &Engine,
    request: Request<pb::RunRetentionRequest>,
) -> Result<Response<pb::RunRetentionResponse>, Status> {
    let caller = caller(&request)?;
    let dry_run = request.get_ref().dry_run;
    let Some(row) = engine.store().retention_settings(caller.tenant_id).await? else {
        return Ok(Response::new(pb::RunRetentionResponse::default()));
    };
    let purges = engine.apply_retention(&row, Trigger::Manual, &stamp(&caller, "RunRetention"), dry_run).await?;
    Ok(Response::new(pb::RunRetentionResponse { purges }))
}

pub async fn list(
    engine: &Engine,
    request: Request<pb::ListPurgesRequest>,
) -> Result<Response<pb::ListPurgesResponse>, Status> {
    let caller = caller(&request)?;
    let req = request.into_inner();
    let limit = match req.limit {
        0 => DEFAULT_PURGES,
        n if n <= MAX_PURGES => n,
        _ => return Err(ServiceError::invalid_field("limit", format!("is at most {MAX_PURGES}")).into()),
    };
    let type_opt = Some(req.record_type.as_str()).filter(|t| !t.is_empty());
    let rows = engine.store().purges(caller.tenant_id, type_opt, u64::from(limit)).await?;
    Ok(Response::new(pb::ListPurgesResponse { purges: rows.into_iter().map(purge_to_proto).collect() }))
}
