//! One batch of an import: every row checked like a single create, then the batch's contacts,
//! history, events, report lines and the job's progress committed in one transaction.
//!
//! Duplicates: a row whose e-mail or phone a contact held before the import is skipped,
//! updated onto that contact or failed, as the import says. A row repeating an e-mail or phone
//! of an earlier row of the same file is always skipped (`duplicate_in_file`, naming that line):
//! the first occurrence counts, whatever the batch boundaries, so a resumed import ends as an
//! uninterrupted one.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QuerySelect, Set};
use uuid::Uuid;

use carnet_kit::keystore::{BlindIndex, SubjectKey};
use carnet_kit::{ErrorCode, ServiceError, audit, outbox};

use crate::SERVICE_NAME;
use crate::audit::Audit;
use crate::domain::{ContactInput, ContactPatch, FieldPolicy};
use crate::entity::{contact, contact_change, contact_token, import, import_row, tombstone};
use crate::import::{Progress, Terms, input_of, reason, source_of};
use crate::import_parse::Record;
use crate::rows::{change_row, db_err, prepare_create, tombstone_hash};
use crate::sealed::{email_hash, phone_hash};
use crate::store::ContactStore;
use crate::validate;

/// What one upload works with.
pub struct Context<'a> {
    pub tenant_id: Uuid,
    pub job: &'a import::Model,
    pub terms: &'a Terms,
    pub policy: &'a FieldPolicy,
    pub index: &'a BlindIndex,
    pub audit: &'a Audit,
}

/// A row that passed the checks of a create, with its blind indexes.
struct Valid {
    input: ContactInput,
    email_ix: Option<String>,
    phone_ix: Option<String>,
}

impl Valid {
    fn keys(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [("email", self.email_ix.as_ref()), ("phone", self.phone_ix.as_ref())]
            .into_iter()
            .filter_map(|(f, v)| v.map(|v| (f, v)))
    }
}

/// What becomes of a row.
enum Plan {
    Create { valid: Valid, overridden: bool },
    Update { valid: Valid, holder: Uuid },
    Skip { reason: String, holder: Uuid },
    Fail(String),
}

fn check(ctx: &Context<'_>, r: &Record) -> Result<Valid, String> {
    let cells = r.cells.clone()?;
    let input = input_of(ctx.terms, ctx.policy, cells)?;
    let valid = validate::validate_input(ctx.policy, &input).map_err(|e| reason(&e))?;
    let keys = valid.keys();
    validate::check_required(ctx.policy, &|k| keys.iter().any(|p| p == k)).map_err(|e| reason(&e))?;
    if input.email_opt.is_none()
        && input.phone_opt.is_none()
        && input.first_name_opt.is_none()
        && input.last_name_opt.is_none()
        && input.fields.is_empty()
    {
        return Err("invalid_argument:empty_row".into());
    }
    Ok(Valid {
        email_ix: valid.email_opt.as_deref().map(|e| email_hash(ctx.index, e)),
        phone_ix: valid.phone_opt.as_deref().map(|p| phone_hash(ctx.index, p)),
        input,
    })
}

impl ContactStore {
    pub(crate) async fn import_batch(
        &self,
        ctx: &Context<'_>,
        progress: &mut Progress,
        records: Vec<Record>,
    ) -> Result<(), ServiceError> {
        let tenant_id = ctx.tenant_id;
        let checked: Vec<Result<Valid, String>> = records.iter().map(|r| check(ctx, r)).collect();
        let all: Vec<(&'static str, String)> =
            checked.iter().flatten().flat_map(|v| v.keys().map(|(f, k)| (f, k.clone()))).collect();
        let holders = self.holders(tenant_id, &all).await?;
        let erased = self.erased(tenant_id, &all).await?;
        let earlier = self.earlier_rows(tenant_id, ctx.job.id, holders.values().copied().collect()).await?;
        // (field, index) → (line, contact) of rows of this batch.
        let mut seen: HashMap<(&'static str, String), (u64, Uuid)> = HashMap::new();
        let mut plans = Vec::with_capacity(records.len());
        let mut ids = Vec::with_capacity(records.len());
        for (r, c) in records.iter().zip(checked) {
            let id = Uuid::now_v7();
            ids.push(id);
            let valid = match c {
                Ok(v) => v,
                Err(why) => {
                    plans.push(Plan::Fail(why));
                    continue;
                }
            };
            let in_file = valid.keys().find_map(|(f, k)| {
                seen.get(&(f, k.clone()))
                    .map(|(line, holder)| (f, *line, *holder))
                    .or_else(|| holders.get(&(f, k.clone())).and_then(|h| earlier.get(h).map(|line| (f, *line, *h))))
            });
            if let Some((field, line, holder)) = in_file {
                plans.push(Plan::Skip { reason: format!("duplicate_in_file:{field}@line {line}"), holder });
                continue;
            }
            let erased_field = valid.keys().find(|(f, k)| erased.contains(&(*f, (*k).clone()))).map(|(f, _)| f);
            if erased_field.is_some() && ctx.terms.erasure_override_reason.is_empty() {
                plans.push(Plan::Fail(format!("erased:{}", erased_field.unwrap_or_default())));
                continue;
            }
            let holder = valid.keys().find_map(|(f, k)| holders.get(&(f, k.clone())).map(|h| (f, *h)));
            let keys: Vec<(&'static str, String)> = valid.keys().map(|(f, k)| (f, k.clone())).collect();
            let plan = match (holder, ctx.terms.on_duplicate.as_str()) {
                (None, _) => Plan::Create { valid, overridden: erased_field.is_some() },
                (Some((field, holder)), "update") => {
                    let _ = field;
                    Plan::Update { valid, holder }
                }
                (Some((field, holder)), "fail") => {
                    let _ = holder;
                    Plan::Fail(format!("already_exists:{field}"))
                }
                (Some((field, holder)), _) => Plan::Skip { reason: format!("already_exists:{field}"), holder },
            };
            let target = match &plan {
                Plan::Create { .. } => Some(id),
                Plan::Update { holder, .. } | Plan::Skip { holder, .. } => Some(*holder),
                Plan::Fail(_) => None,
            };
            if let Some(t) = target {
                for k in keys {
                    seen.entry(k).or_insert((r.line, t));
                }
            }
            plans.push(plan);
        }
        self.commit_batch(ctx, progress, &records, ids, plans).await
    }

    /// The contacts holding these e-mail / phone indexes: (field, index) → id. One query per
    /// column, each on its unique index (an `OR` of the two would scan the tenant's contacts).
    async fn holders(
        &self,
        tenant_id: Uuid,
        keys: &[(&'static str, String)],
    ) -> Result<HashMap<(&'static str, String), Uuid>, ServiceError> {
        let mut out = HashMap::new();
        for (field, column) in [("email", contact::Column::EmailIndex), ("phone", contact::Column::PhoneIndex)] {
            let values: Vec<&str> = keys.iter().filter(|(f, _)| *f == field).map(|(_, k)| k.as_str()).collect();
            if values.is_empty() {
                continue;
            }
            let rows: Vec<(Uuid, Option<String>)> = contact::Entity::find()
                .select_only()
                .column(contact::Column::Id)
                .column(column)
                .filter(contact::Column::TenantId.eq(tenant_id))
                .filter(column.is_in(values))
                .into_tuple()
                .all(&self.db().read)
                .await
                .map_err(db_err)?;
            for (id, value_opt) in rows {
                if let Some(v) = value_opt {
                    out.insert((field, v), id);
                }
            }
        }
        Ok(out)
    }

    /// The (field, index) pairs that belong to people erased on request.
    async fn erased(
        &self,
        tenant_id: Uuid,
        keys: &[(&'static str, String)],
    ) -> Result<HashSet<(&'static str, String)>, ServiceError> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let by_hash: HashMap<String, (&'static str, String)> = keys
            .iter()
            .map(|(f, k)| (tombstone_hash(self.tombstone_key(), tenant_id, f, k), (*f, k.clone())))
            .collect();
        let found: Vec<String> = tombstone::Entity::find()
            .select_only()
            .column(tombstone::Column::Hash)
            .filter(tombstone::Column::TenantId.eq(tenant_id))
            .filter(tombstone::Column::Hash.is_in(by_hash.keys().map(String::as_str)))
            .into_tuple()
            .all(&self.db().read)
            .await
            .map_err(db_err)?;
        Ok(found.into_iter().filter_map(|h| by_hash.get(&h).cloned()).collect())
    }

    /// Of these contacts, those an earlier row of this import created, updated or matched:
    /// contact → that row's line.
    async fn earlier_rows(
        &self,
        tenant_id: Uuid,
        import_id: Uuid,
        ids: Vec<Uuid>,
    ) -> Result<HashMap<Uuid, u64>, ServiceError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(Option<Uuid>, i64)> = import_row::Entity::find()
            .select_only()
            .column(import_row::Column::ContactId)
            .column(import_row::Column::Line)
            .filter(import_row::Column::TenantId.eq(tenant_id))
            .filter(import_row::Column::ImportId.eq(import_id))
            .filter(import_row::Column::ContactId.is_in(ids))
            .into_tuple()
            .all(&self.db().read)
            .await
            .map_err(db_err)?;
        let mut out = HashMap::new();
        for (id_opt, line) in rows {
            if let Some(id) = id_opt {
                let e = out.entry(id).or_insert(line.max(0) as u64);
                *e = (*e).min(line.max(0) as u64);
            }
        }
        Ok(out)
    }

    async fn commit_batch(
        &self,
        ctx: &Context<'_>,
        progress: &mut Progress,
        records: &[Record],
        ids: Vec<Uuid>,
        plans: Vec<Plan>,
    ) -> Result<(), ServiceError> {
        let tenant_id = ctx.tenant_id;
        let source = source_of(ctx.job, ctx.terms);
        // Subject keys of the new contacts, in one statement of the key store.
        let creating: Vec<(Uuid, Uuid)> = plans
            .iter()
            .zip(&ids)
            .filter(|(p, _)| matches!(p, Plan::Create { .. }))
            .map(|(_, id)| (tenant_id, *id))
            .collect();
        let mut keys: HashMap<(Uuid, Uuid), SubjectKey> = if self.keys().encrypts() && !creating.is_empty() {
            self.keys().create_subject_keys(&creating).await.map_err(ServiceError::from)?
        } else {
            HashMap::new()
        };
        let mut contacts = Vec::new();
        let mut tokens = Vec::new();
        let mut changes = Vec::new();
        let mut events = Vec::new();
        let mut report = Vec::with_capacity(records.len());
        let mut counts = [0u64; 4];
        // Keys made for creates that failed after all: destroyed once the batch is written.
        let mut orphans = Vec::new();
        for ((r, id), plan) in records.iter().zip(ids).zip(plans) {
            let (outcome, why, contact_opt) = match plan {
                Plan::Create { valid, overridden } => {
                    let key_opt = keys.remove(&(tenant_id, id));
                    match prepare_create(
                        ctx.policy,
                        tenant_id,
                        id,
                        &valid.input,
                        &source,
                        ctx.index,
                        key_opt.as_ref(),
                        ctx.audit,
                    ) {
                        Ok(mut new) => {
                            new.import_id_opt = Some(ctx.job.id);
                            let (change, [upserted, _]) = new.rows();
                            changes.push(change);
                            events.push(upserted);
                            tokens.extend(new.token_rows());
                            if overridden {
                                let why = Some(ctx.terms.erasure_override_reason.clone());
                                let row = change_row(
                                    tenant_id,
                                    id,
                                    "erasure_override",
                                    &[],
                                    &source.actor,
                                    why,
                                    None,
                                    None,
                                    key_opt.as_ref(),
                                );
                                changes.push(row);
                                let entry = ctx.audit.entry("erasure_override", "contact", id);
                                events.push(audit::row(tenant_id, SERVICE_NAME, entry));
                            }
                            contacts.push(new.model.into_active_model());
                            (
                                crate::import::CREATED,
                                if overridden { "erasure_override".to_string() } else { String::new() },
                                Some(id),
                            )
                        }
                        Err(e) => {
                            orphans.push(id);
                            ("failed", reason(&e), None)
                        }
                    }
                }
                Plan::Update { valid, holder } => {
                    let patch = ContactPatch {
                        set: valid.input,
                        reason_opt: Some(format!("import {}", ctx.job.id)),
                        source_opt: Some(source.clone()),
                        import_id_opt: Some(ctx.job.id),
                        ..ContactPatch::default()
                    };
                    match self.update(tenant_id, holder, ctx.audit, patch).await {
                        Ok(_) => ("updated", String::new(), Some(holder)),
                        Err(e) if e.code == ErrorCode::Internal || e.code == ErrorCode::Unavailable => return Err(e),
                        Err(e) => ("failed", reason(&e), None),
                    }
                }
                Plan::Skip { reason, holder } => ("skipped", reason, Some(holder)),
                Plan::Fail(why) => ("failed", why, None),
            };
            let slot = match outcome {
                "created" => 0,
                "updated" => 1,
                "skipped" => 2,
                _ => 3,
            };
            counts[slot] += 1;
            report.push(import_row::ActiveModel {
                tenant_id: Set(tenant_id),
                import_id: Set(ctx.job.id),
                line: Set(r.line as i64),
                outcome: Set(outcome.to_string()),
                reason: Set(why),
                contact_id: Set(contact_opt),
            });
        }
        let Some(last) = records.last() else { return Ok(()) };
        let before = progress.lines_done;
        let mut next = progress.clone();
        next.lines_done = last.line;
        next.bytes_done = last.end_offset;
        next.chain_sha256 = hex::encode(last.sha256);
        for (n, c) in next.counts.iter_mut().zip(counts) {
            *n += c;
        }
        let res = self.write_batch(ctx, before, &next, contacts, tokens, changes, events, report).await;
        if let Err(e) = res {
            // The keys of contacts never committed open nothing; best effort.
            for (t, id) in creating {
                let _ = self.keys().destroy(t, id).await;
            }
            return Err(e);
        }
        *progress = next;
        for id in orphans {
            let _ = self.keys().destroy(tenant_id, id).await;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_batch(
        &self,
        ctx: &Context<'_>,
        lines_before: u64,
        next: &Progress,
        contacts: Vec<contact::ActiveModel>,
        tokens: Vec<contact_token::ActiveModel>,
        changes: Vec<contact_change::ActiveModel>,
        events: Vec<outbox::entity::ActiveModel>,
        report: Vec<import_row::ActiveModel>,
    ) -> Result<(), ServiceError> {
        let txn = self.db().begin_write().await.map_err(db_err)?;
        if !contacts.is_empty() {
            contact::Entity::insert_many(contacts).exec_without_returning(&txn).await.map_err(|e| {
                if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) {
                    ServiceError::new(
                        ErrorCode::Conflict,
                        "a contact with one of these e-mails or phones was created meanwhile; upload again to resume",
                    )
                } else {
                    db_err(e)
                }
            })?;
        }
        for chunk in [tokens].into_iter().filter(|t| !t.is_empty()) {
            contact_token::Entity::insert_many(chunk).exec_without_returning(&txn).await.map_err(db_err)?;
        }
        if !changes.is_empty() {
            contact_change::Entity::insert_many(changes).exec_without_returning(&txn).await.map_err(db_err)?;
        }
        if !events.is_empty() {
            outbox::entity::Entity::insert_many(events).exec_without_returning(&txn).await.map_err(db_err)?;
        }
        import_row::Entity::insert_many(report).exec_without_returning(&txn).await.map_err(db_err)?;
        let [created, updated, skipped, failed] = next.counts.map(|n| n as i64);
        let res = import::Entity::update_many()
            .col_expr(import::Column::LinesDone, Expr::value(next.lines_done as i64))
            .col_expr(import::Column::BytesDone, Expr::value(next.bytes_done as i64))
            .col_expr(import::Column::HeaderSha256, Expr::value(next.header_sha256.clone()))
            .col_expr(import::Column::ChainSha256, Expr::value(next.chain_sha256.clone()))
            .col_expr(import::Column::Created, Expr::value(created))
            .col_expr(import::Column::Updated, Expr::value(updated))
            .col_expr(import::Column::Skipped, Expr::value(skipped))
            .col_expr(import::Column::Failed, Expr::value(failed))
            .col_expr(import::Column::UpdatedAt, Expr::value(carnet_kit::db::now()))
            .filter(import::Column::TenantId.eq(ctx.tenant_id))
            .filter(import::Column::Id.eq(ctx.job.id))
            .filter(import::Column::LinesDone.eq(lines_before as i64))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        if res.rows_affected != 1 {
            return Err(ServiceError::new(ErrorCode::Conflict, format!("import {} moved on meanwhile", ctx.job.id))
                .with_field("import_id"));
        }
        txn.commit().await.map_err(db_err)
    }
}
