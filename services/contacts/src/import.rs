//! Bulk import of contacts (docs/import.md): a job with its terms — the column mapping, the
//! lawful basis with its evidence, what to do with duplicates — then the file, streamed in.
//!
//! Every row passes the checks of a single create (field policy, e-mail and phone, required
//! fields, duplicates against the store and within the file, people erased on request) and
//! gets one report line: `created`, `updated`, `skipped` or `failed`, with a reason code and
//! field (never a value). Rows are written in batches: a batch's contacts, history, events,
//! report lines and the job's progress commit in one transaction, so a failed row leaves
//! nothing and an interrupted upload resumes after the last committed line, without duplicates.

use std::collections::{BTreeMap, HashSet};
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use carnet_kit::{ErrorCode, ServiceError, audit};
use carnet_proto::contacts::v1 as pb;

use crate::SERVICE_NAME;
use crate::audit::Audit;
use crate::domain::{Channel, ContactInput, FieldPolicy, FieldType, FieldValue, Source};
use crate::entity::{import, import_row};
use crate::import_parse::{Cell, Parser, Record};
use crate::rows::{db_err, load_policy};
use crate::store::ContactStore;

pub const FORMATS: [&str; 2] = ["csv", "jsonl"];
pub const BASES: [&str; 6] =
    ["consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"];
pub const ON_DUPLICATE: [&str; 3] = ["skip", "update", "fail"];
pub const CREATED: &str = "created";
pub const RUNNING: &str = "running";
pub const COMPLETED: &str = "completed";
const MAX_TEXT: usize = 1_000;

/// Why the people of an import may be processed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub collected_at: Option<DateTime<Utc>>,
    pub collected_where: String,
    pub notice_version: u32,
    pub notice_text: String,
    pub justification: String,
}

/// An import's terms, as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Terms {
    pub mapping: BTreeMap<String, String>,
    pub lawful_basis: String,
    pub purposes: Vec<String>,
    pub evidence: Evidence,
    pub on_duplicate: String,
    pub erasure_override_reason: String,
}

fn text(field: &str, value: &str) -> Result<String, ServiceError> {
    let v = value.trim();
    if v.chars().count() > MAX_TEXT {
        return Err(ServiceError::invalid_field(field, format!("is longer than {MAX_TEXT} characters")));
    }
    Ok(v.to_string())
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<String, ServiceError> {
    if allowed.contains(&value) {
        Ok(value.to_string())
    } else {
        Err(ServiceError::invalid_field(field, format!("must be one of: {}", allowed.join(", "))))
    }
}

/// Checks a `CreateImportRequest` against the tenant's policy; every refusal names its field.
pub fn terms_of(req: &pb::CreateImportRequest, policy: &FieldPolicy) -> Result<(String, String, Terms), ServiceError> {
    let file_name = text("file_name", &req.file_name)?;
    if file_name.is_empty() {
        return Err(ServiceError::invalid_field("file_name", "is required"));
    }
    let format = one_of("format", &req.format, &FORMATS)?;
    let mut mapping = BTreeMap::new();
    for (column, key) in &req.mapping {
        let field = format!("mapping.{column}");
        let key = text(&field, key)?;
        if !key.is_empty() && policy.get(&key).is_none() {
            return Err(ServiceError::invalid_field(field, format!("`{key}` is not in the tenant's field policy")));
        }
        mapping.insert(text("mapping", column)?, key);
    }
    let lawful_basis = one_of("lawful_basis", &req.lawful_basis, &BASES)?;
    let e = req.evidence.clone().unwrap_or_default();
    let collected_at = match &e.collected_at {
        Some(t) => Some(carnet_kit::grpc::from_timestamp("evidence.collected_at", t)?),
        None => None,
    };
    let evidence = Evidence {
        collected_at,
        collected_where: text("evidence.collected_where", &e.collected_where)?,
        notice_version: e.notice_version,
        notice_text: text("evidence.notice_text", &e.notice_text)?,
        justification: text("evidence.justification", &e.justification)?,
    };
    let mut purposes = Vec::new();
    for (i, p) in req.purposes.iter().enumerate() {
        let p = text(&format!("purposes[{i}]"), p)?;
        if p.is_empty() || purposes.contains(&p) {
            return Err(ServiceError::invalid_field(format!("purposes[{i}]"), "is empty or repeated"));
        }
        purposes.push(p);
    }
    if lawful_basis == "consent" {
        // Art. 7(1): the controller must be able to show that each person consented.
        if purposes.is_empty() {
            return Err(ServiceError::invalid_field("purposes", "is required when the lawful basis is consent"));
        }
        if evidence.collected_at.is_none() {
            return Err(ServiceError::invalid_field(
                "evidence.collected_at",
                "is required for consent: when it was given",
            ));
        }
        if evidence.collected_where.is_empty() {
            return Err(ServiceError::invalid_field(
                "evidence.collected_where",
                "is required for consent: where it was given",
            ));
        }
        if evidence.notice_version == 0 && evidence.notice_text.is_empty() {
            return Err(ServiceError::invalid_field(
                "evidence.notice_version",
                "is required for consent (or evidence.notice_text): what the people were told",
            ));
        }
    } else if evidence.justification.is_empty() {
        return Err(ServiceError::invalid_field("evidence.justification", "is required: why the lawful basis applies"));
    }
    if evidence.collected_at.is_some_and(|t| t > Utc::now()) {
        return Err(ServiceError::invalid_field("evidence.collected_at", "is in the future"));
    }
    let on_duplicate = if req.on_duplicate.is_empty() { "skip".to_string() } else { req.on_duplicate.clone() };
    let on_duplicate = one_of("on_duplicate", &on_duplicate, &ON_DUPLICATE)?;
    let erasure_override_reason = text("erasure_override_reason", &req.erasure_override_reason)?;
    let terms = Terms { mapping, lawful_basis, purposes, evidence, on_duplicate, erasure_override_reason };
    Ok((file_name, format, terms))
}

pub fn terms(job: &import::Model) -> Terms {
    serde_json::from_value(job.terms.clone()).unwrap_or_default()
}

pub fn to_proto(job: import::Model) -> pb::Import {
    let t = terms(&job);
    let ts = carnet_kit::grpc::to_timestamp;
    pb::Import {
        id: job.id.to_string(),
        status: job.status,
        file_name: job.file_name,
        format: job.format,
        mapping: t.mapping.into_iter().collect(),
        lawful_basis: t.lawful_basis,
        purposes: t.purposes,
        evidence: Some(pb::ImportEvidence {
            collected_at: t.evidence.collected_at.map(ts),
            collected_where: t.evidence.collected_where,
            notice_version: t.evidence.notice_version,
            notice_text: t.evidence.notice_text,
            justification: t.evidence.justification,
        }),
        on_duplicate: t.on_duplicate,
        erasure_override_reason: t.erasure_override_reason,
        actor: job.actor,
        created_at: Some(ts(job.created_at)),
        updated_at: Some(ts(job.updated_at)),
        finished_at: job.finished_at.map(ts),
        lines_done: job.lines_done.max(0) as u64,
        bytes_done: job.bytes_done.max(0) as u64,
        created: job.created.max(0) as u64,
        updated: job.updated.max(0) as u64,
        skipped: job.skipped.max(0) as u64,
        failed: job.failed.max(0) as u64,
    }
}

/// A row's text as a field value of the policy's type (the checks of a create follow).
fn value_of(def_type: Option<FieldType>, cell: Cell) -> Result<FieldValue, ()> {
    match (def_type, cell) {
        (Some(FieldType::Number), Cell::Text(s)) => s.parse::<f64>().map(FieldValue::Number).map_err(|_| ()),
        (Some(FieldType::Boolean), Cell::Text(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(FieldValue::Bool(true)),
            "false" | "no" | "0" => Ok(FieldValue::Bool(false)),
            _ => Err(()),
        },
        (_, Cell::Text(s)) => Ok(FieldValue::String(s)),
        (_, Cell::Number(n)) => Ok(FieldValue::Number(n)),
        (_, Cell::Bool(b)) => Ok(FieldValue::Bool(b)),
    }
}

fn builtin_text(cell: Cell) -> String {
    match cell {
        Cell::Text(s) => s,
        Cell::Number(n) => n.to_string(),
        Cell::Bool(b) => b.to_string(),
    }
}

/// A row's cells as a create's input, through the mapping. With no mapping every column is the
/// field of its name (a column outside the policy fails the row, as a create would); with one,
/// only the mapped columns are read.
pub fn input_of(terms: &Terms, policy: &FieldPolicy, cells: BTreeMap<String, Cell>) -> Result<ContactInput, String> {
    let mut input = ContactInput::default();
    for (column, cell) in cells {
        let key = if terms.mapping.is_empty() {
            column
        } else {
            match terms.mapping.get(&column) {
                Some(k) if !k.is_empty() => k.clone(),
                _ => continue,
            }
        };
        match key.as_str() {
            "email" => input.email_opt = Some(builtin_text(cell)),
            "first_name" => input.first_name_opt = Some(builtin_text(cell)),
            "last_name" => input.last_name_opt = Some(builtin_text(cell)),
            "phone" => input.phone_opt = Some(builtin_text(cell)),
            _ => {
                let def_type = policy.get(&key).map(|d| d.field_type);
                let value = value_of(def_type, cell).map_err(|_| format!("invalid_argument:fields.{key}"))?;
                input.fields.insert(key, value);
            }
        }
    }
    Ok(input)
}

/// The report reason of a refusal: its code and field, never its message (which may quote the
/// value).
pub fn reason(e: &ServiceError) -> String {
    match &e.field_opt {
        Some(f) => format!("{}:{f}", e.code.as_str()),
        None => e.code.as_str().to_string(),
    }
}

/// Imports being uploaded in this process (a second upload of the same import is refused).
static UPLOADING: LazyLock<Mutex<HashSet<Uuid>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// Holds an import's upload slot until dropped.
pub struct UploadGuard(Uuid);

impl UploadGuard {
    pub fn take(id: Uuid) -> Result<UploadGuard, ServiceError> {
        if !UPLOADING.lock().expect("upload set").insert(id) {
            return Err(ServiceError::new(ErrorCode::Conflict, format!("import {id} is being uploaded already"))
                .with_field("import_id"));
        }
        Ok(UploadGuard(id))
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        UPLOADING.lock().expect("upload set").remove(&self.0);
    }
}

/// Where an upload stands: what the job's row will say after the next commit.
#[derive(Clone, Debug)]
pub struct Progress {
    pub lines_done: u64,
    pub bytes_done: u64,
    pub header_sha256: String,
    pub chain_sha256: String,
    pub counts: [u64; 4],
}

impl Progress {
    pub fn of(job: &import::Model) -> Progress {
        Progress {
            lines_done: job.lines_done.max(0) as u64,
            bytes_done: job.bytes_done.max(0) as u64,
            header_sha256: job.header_sha256.clone(),
            chain_sha256: job.chain_sha256.clone(),
            counts: [job.created, job.updated, job.skipped, job.failed].map(|n| n.max(0) as u64),
        }
    }
}

/// Rows committed per transaction.
pub const BATCH: usize = 500;

impl ContactStore {
    /// Creates an import job (status `created`) and audits it.
    pub async fn create_import(
        &self,
        tenant_id: Uuid,
        audit: &Audit,
        file_name: String,
        format: String,
        terms: Terms,
    ) -> Result<import::Model, ServiceError> {
        let now = carnet_kit::db::now();
        let id = Uuid::now_v7();
        let row = import::Model {
            tenant_id,
            id,
            status: CREATED.into(),
            file_name,
            format,
            terms: serde_json::to_value(&terms).map_err(|_| ServiceError::internal("import terms"))?,
            actor: audit.actor().to_string(),
            created_at: now,
            updated_at: now,
            finished_at: None,
            lines_done: 0,
            bytes_done: 0,
            header_sha256: String::new(),
            chain_sha256: String::new(),
            created: 0,
            updated: 0,
            skipped: 0,
            failed: 0,
        };
        let txn = self.db().begin_write().await.map_err(db_err)?;
        import::Entity::insert(row.clone().into_active_model()).exec_without_returning(&txn).await.map_err(db_err)?;
        let mut entry =
            audit.entry("create", "import", id).fields(terms.mapping.values().filter(|k| !k.is_empty()).cloned());
        entry.subject_id_opt = None;
        audit::record(&txn, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(row)
    }

    pub async fn import_job(&self, tenant_id: Uuid, id: Uuid) -> Result<import::Model, ServiceError> {
        import::Entity::find_by_id((tenant_id, id))
            .one(&self.db().read)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("import", id).with_field("id"))
    }

    pub async fn import_jobs(&self, tenant_id: Uuid) -> Result<Vec<import::Model>, ServiceError> {
        import::Entity::find()
            .filter(import::Column::TenantId.eq(tenant_id))
            .order_by_desc(import::Column::Id)
            .limit(200)
            .all(&self.db().read)
            .await
            .map_err(db_err)
    }

    /// A page of the report after `after_line`, in line order.
    pub async fn import_report(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        after_line: i64,
        limit: u64,
    ) -> Result<Vec<import_row::Model>, ServiceError> {
        import_row::Entity::find()
            .filter(import_row::Column::TenantId.eq(tenant_id))
            .filter(import_row::Column::ImportId.eq(id))
            .filter(import_row::Column::Line.gt(after_line))
            .order_by_asc(import_row::Column::Line)
            .limit(limit)
            .all(&self.db().read)
            .await
            .map_err(db_err)
    }

    /// Runs one upload: `chunks` are the file's bytes from its start (`last` on the final one).
    /// Lines already committed by an earlier upload are checked (same file) and skipped.
    pub async fn upload_import<S>(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        audit: &Audit,
        mut chunks: S,
    ) -> Result<import::Model, ServiceError>
    where
        S: futures::Stream<Item = Result<(Vec<u8>, bool), ServiceError>> + Unpin,
    {
        use futures::StreamExt as _;
        let _guard = UploadGuard::take(id)?;
        let job = self.import_job(tenant_id, id).await?;
        if job.status == COMPLETED {
            return Err(ServiceError::new(ErrorCode::FailedPrecondition, format!("import {id} is completed"))
                .with_field("import_id"));
        }
        let terms = terms(&job);
        let policy = load_policy(&self.db().read, tenant_id).await?;
        let index = self.keys().blind_index(tenant_id).await?;
        let mut parser = Parser::new(&job.format).ok_or_else(|| ServiceError::internal("stored import format"))?;
        let mut progress = Progress::of(&job);
        let resume_after = progress.lines_done;
        let mut header_checked = false;
        let mut chain = [0u8; 32];
        let mut reached = resume_after == 0;
        let ctx =
            crate::import_batch::Context { tenant_id, job: &job, terms: &terms, policy: &policy, index: &index, audit };
        let mut pending: Vec<Record> = Vec::with_capacity(BATCH);
        self.mark_running(tenant_id, id).await?;
        let mut complete = false;
        while let Some(next) = chunks.next().await {
            let (data, last) = next?;
            let mut records =
                parser.feed(&data, false).map_err(|e| ServiceError::invalid_field("file", e.to_string()))?;
            if last {
                records.extend(parser.feed(&[], true).map_err(|e| ServiceError::invalid_field("file", e.to_string()))?);
            }
            if !header_checked && let Some(h) = parser.header_sha256() {
                header_checked = true;
                chain = link(&chain, &h);
                let h = hex::encode(h);
                if progress.header_sha256.is_empty() {
                    progress.header_sha256 = h;
                } else if progress.header_sha256 != h {
                    return Err(differs());
                }
            }
            for mut r in records {
                // Each record's hash chains every byte before it: a resumed file must match the
                // processed part line for line, not only at the resume point.
                chain = link(&chain, &r.sha256);
                r.sha256 = chain;
                if r.line <= resume_after {
                    if r.line == resume_after {
                        if hex::encode(r.sha256) != progress.chain_sha256 {
                            return Err(differs());
                        }
                        reached = true;
                    }
                    continue;
                }
                if !reached {
                    return Err(differs());
                }
                pending.push(r);
                if pending.len() >= BATCH {
                    self.import_batch(&ctx, &mut progress, std::mem::take(&mut pending)).await?;
                }
            }
            if last {
                complete = true;
                break;
            }
        }
        if !pending.is_empty() {
            self.import_batch(&ctx, &mut progress, pending).await?;
        }
        if complete {
            if !reached {
                return Err(differs());
            }
            self.finish_import(tenant_id, &job, audit, &progress).await?;
        }
        self.import_job(tenant_id, id).await
    }

    async fn mark_running(&self, tenant_id: Uuid, id: Uuid) -> Result<(), ServiceError> {
        import::Entity::update_many()
            .col_expr(import::Column::Status, sea_orm::sea_query::Expr::value(RUNNING))
            .filter(import::Column::TenantId.eq(tenant_id))
            .filter(import::Column::Id.eq(id))
            .filter(import::Column::Status.eq(CREATED))
            .exec(&self.db().write)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn finish_import(
        &self,
        tenant_id: Uuid,
        job: &import::Model,
        audit: &Audit,
        progress: &Progress,
    ) -> Result<(), ServiceError> {
        let txn = self.db().begin_write().await.map_err(db_err)?;
        let now = carnet_kit::db::now();
        let mut row = import::Entity::find_by_id((tenant_id, job.id))
            .one(&txn)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ServiceError::not_found("import", job.id))?
            .into_active_model();
        row.status = Set(COMPLETED.into());
        row.finished_at = Set(Some(now));
        row.updated_at = Set(now);
        row.bytes_done = Set(progress.bytes_done as i64);
        sea_orm::ActiveModelTrait::update(row, &txn).await.map_err(db_err)?;
        let mut entry = audit.entry("import", "import", job.id);
        entry.subject_id_opt = None;
        audit::record(&txn, tenant_id, SERVICE_NAME, entry).await.map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        tracing::info!(%tenant_id, import_id = %job.id, created = progress.counts[0], updated = progress.counts[1],
            skipped = progress.counts[2], failed = progress.counts[3], "import completed");
        Ok(())
    }
}

/// The next link of the chain of record hashes.
fn link(chain: &[u8; 32], record: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(chain);
    h.update(record);
    h.finalize().into()
}

fn differs() -> ServiceError {
    ServiceError::new(ErrorCode::FailedPrecondition, "the file differs from the one this import started with")
        .with_field("file")
}

/// The source every contact of an import gets: channel `import`, the file and the job.
pub fn source_of(job: &import::Model, terms: &Terms) -> Source {
    Source {
        channel: Channel::Import,
        detail: format!("{} (import {})", job.file_name, job.id),
        actor: job.actor.clone(),
        collected_at: carnet_kit::db::truncate(terms.evidence.collected_at.unwrap_or(job.created_at)),
    }
}
