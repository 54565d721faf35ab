//! The import RPCs: `CreateImport` and `UploadImport` need `contacts:write`; `GetImport`,
//! `ListImports` and `ImportReport` need `contacts:read` (the report holds line numbers, codes
//! and contact ids, no values).

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use carnet_kit::grpc::parse_id;
use carnet_kit::{Caller, Permission, ServiceError};
use carnet_proto::contacts::v1 as pb;

use crate::audit::Audit;
use crate::import::{terms_of, to_proto};
use crate::store::ContactStore;

/// Report lines per chunk.
const REPORT_PAGE: u64 = 2_000;

pub type ReportStream = Pin<Box<dyn Stream<Item = Result<pb::ImportReportChunk, Status>> + Send>>;

fn caller<T>(request: &Request<T>, permission: Permission) -> Result<Caller, Status> {
    let caller = Caller::of(request)?;
    caller.require(permission)?;
    Ok(caller)
}

pub async fn create(
    store: &ContactStore,
    request: Request<pb::CreateImportRequest>,
) -> Result<Response<pb::Import>, Status> {
    let caller = caller(&request, Permission::ContactsWrite)?;
    let policy = store.field_policy(caller.tenant_id).await?;
    let (file_name, format, terms) = terms_of(request.get_ref(), &policy)?;
    let audit = Audit::grpc(&caller, "CreateImport");
    let job = store.create_import(caller.tenant_id, &audit, file_name, format, terms).await?;
    tracing::info!(tenant_id = %caller.tenant_id, import_id = %job.id, "import created");
    Ok(Response::new(to_proto(job)))
}

pub async fn upload(
    store: &ContactStore,
    request: Request<Streaming<pb::ImportChunk>>,
) -> Result<Response<pb::Import>, Status> {
    let caller = caller(&request, Permission::ContactsWrite)?;
    let mut incoming = request.into_inner();
    let first = incoming
        .next()
        .await
        .ok_or_else(|| ServiceError::invalid_field("import_id", "is required in the first chunk"))?
        .map_err(|s| ServiceError::from_status(&s))?;
    let id = parse_id("import_id", &first.import_id)?;
    let chunks = futures::stream::once(async move { Ok((first.data, first.last)) })
        .chain(incoming.map(|m| m.map(|c| (c.data, c.last)).map_err(|s| ServiceError::from_status(&s))));
    let audit = Audit::grpc(&caller, "UploadImport");
    let job = store.upload_import(caller.tenant_id, id, &audit, Box::pin(chunks)).await?;
    tracing::info!(tenant_id = %caller.tenant_id, import_id = %id, status = %job.status, lines = job.lines_done, "import upload ended");
    Ok(Response::new(to_proto(job)))
}

pub async fn get(store: &ContactStore, request: Request<pb::GetImportRequest>) -> Result<Response<pb::Import>, Status> {
    let caller = caller(&request, Permission::ContactsRead)?;
    let id = parse_id("id", &request.get_ref().id)?;
    Ok(Response::new(to_proto(store.import_job(caller.tenant_id, id).await?)))
}

pub async fn list(
    store: &ContactStore,
    request: Request<pb::ListImportsRequest>,
) -> Result<Response<pb::ListImportsResponse>, Status> {
    let caller = caller(&request, Permission::ContactsRead)?;
    let imports = store.import_jobs(caller.tenant_id).await?.into_iter().map(to_proto).collect();
    Ok(Response::new(pb::ListImportsResponse { imports }))
}

/// One report line as CSV (the reason holds codes, fields and line numbers: quoted anyway).
fn csv_line(line: i64, outcome: &str, reason: &str, contact_opt: Option<uuid::Uuid>) -> String {
    let reason = if reason.contains([',', '"', '\n']) {
        format!("\"{}\"", reason.replace('"', "\"\""))
    } else {
        reason.to_string()
    };
    format!("{line},{outcome},{reason},{}\n", contact_opt.map(|c| c.to_string()).unwrap_or_default())
}

pub async fn report(
    store: &ContactStore,
    request: Request<pb::ImportReportRequest>,
) -> Result<Response<ReportStream>, Status> {
    let caller = caller(&request, Permission::ContactsRead)?;
    let id = parse_id("id", &request.get_ref().id)?;
    store.import_job(caller.tenant_id, id).await?;
    let store = store.clone();
    let tenant_id = caller.tenant_id;
    let stream = futures::stream::unfold(Some(-1i64), move |after_opt| {
        let store = store.clone();
        async move {
            let after = after_opt?;
            if after < 0 {
                let header = pb::ImportReportChunk { csv: b"line,outcome,reason,contact_id\n".to_vec() };
                return Some((Ok(header), Some(0)));
            }
            match store.import_report(tenant_id, id, after, REPORT_PAGE).await {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = rows.last().map(|r| r.line).unwrap_or(after);
                    let csv: String =
                        rows.iter().map(|r| csv_line(r.line, &r.outcome, &r.reason, r.contact_id)).collect();
                    Some((Ok(pb::ImportReportChunk { csv: csv.into_bytes() }), Some(next)))
                }
                Err(e) => Some((Err(Status::from(e)), None)),
            }
        }
    });
    Ok(Response::new(Box::pin(stream)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_report_lines_quote_what_needs_it() {
        assert_eq!(super::csv_line(3, "failed", "invalid_argument:email", None), "3,failed,invalid_argument:email,\n");
        assert_eq!(
            super::csv_line(9, "skipped", "duplicate_in_file:email@line 2", Some(uuid::Uuid::nil())),
            "9,skipped,duplicate_in_file:email@line 2,00000000-0000-0000-0000-000000000000\n"
        );
        assert_eq!(super::csv_line(4, "failed", "a,\"b\"", None), "4,failed,\"a,\"\"b\"\"\",\n");
    }
}
