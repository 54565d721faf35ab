//! Group commit for creates: creates that arrive while the writer is busy are committed
//! together, in one transaction with one multi-row insert per table, instead of one transaction
//! each. Every create is still validated, checked for duplicates and answered on its own: a
//! refused create never holds back the others, and a create is answered only after its commit.
//!
//! Each create's subject key is made first, for the whole batch in one statement of the key
//! store, so the key exists before the values it opens. The two steps are a pipeline: while the
//! writer commits one batch to the contacts database, the next batch's keys go into the key
//! store (its own database, its own writer). The key of a create that is then refused is
//! destroyed.
//!
//! The uniqueness check (on blind indexes) runs inside the batch transaction. On SQLite the
//! single write connection serialises it with every other writer; on PostgreSQL a concurrent
//! writer elsewhere can still win the race, and the unique index then refuses the whole batch:
//! its creates are retried one by one, each in its own transaction, so only the real duplicate
//! is refused.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, SqlErr};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use carnet_kit::db::Db;
use carnet_kit::keystore::{BlindIndex, KeyStore, SubjectKey};
use carnet_kit::{ErrorCode, ServiceError, outbox};

use crate::audit::Audit;
use crate::domain::{Contact, ContactInput, FieldPolicy, Source};
use crate::entity::{contact, contact_change, contact_token};
use crate::rows::{NewContact, create_one, db_err, duplicate, load_policy, prepare_create, to_domain};

/// Most creates committed in one transaction.
pub const MAX_BATCH: usize = 64;

type Reply = oneshot::Sender<Result<Contact, ServiceError>>;

struct Job {
    tenant_id: Uuid,
    input: ContactInput,
    source: Source,
    audit: Audit,
    reply: Reply,
}

/// The handle through which creates reach the batch writer task.
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
}

impl Batcher {
    /// Spawns the key task and the writer task on the current tokio runtime; they end when every
    /// handle is dropped.
    pub fn spawn(db: Db, keys: KeyStore) -> Batcher {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        // One batch waits while the writer commits the one before: the pipeline is two deep.
        let (ready_tx, ready_rx) = mpsc::channel(1);
        tokio::spawn(prepare(keys.clone(), rx, ready_tx));
        tokio::spawn(write_batches(db, keys, ready_rx));
        Batcher { tx }
    }

    pub async fn create(
        &self,
        tenant_id: Uuid,
        input: ContactInput,
        source: Source,
        audit: Audit,
    ) -> Result<Contact, ServiceError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { tenant_id, input, source, audit, reply };
        let stopped = || ServiceError::new(ErrorCode::Unavailable, "contacts writer stopped");
        self.tx.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Stage one: takes what is queued (never waiting for more: a lone create is not delayed), gives
/// each create its id, blind-index key and subject key, and hands the batch to the writer.
async fn prepare(keys: KeyStore, mut rx: mpsc::Receiver<Job>, ready_tx: mpsc::Sender<Vec<Prepared>>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let ready = with_keys(&keys, std::mem::take(&mut jobs)).await;
        if !ready.is_empty() && ready_tx.send(ready).await.is_err() {
            return;
        }
    }
}

/// Stage two: commits each prepared batch, then destroys the keys of its refused creates.
async fn write_batches(db: Db, keys: KeyStore, mut ready_rx: mpsc::Receiver<Vec<Prepared>>) {
    while let Some(ready) = ready_rx.recv().await {
        let (_inserted, refused) = write(&db, ready).await;
        // The keys of refused creates open nothing.
        for (tenant_id, id) in refused {
            if let Err(e) = keys.destroy(tenant_id, id).await {
                tracing::warn!(%tenant_id, contact_id = %id, error = %e, "the key of a refused create is left");
            }
        }
    }
}

/// What becomes of one job of the batch.
enum Outcome {
    Insert(Box<NewContact>),
    /// Duplicate of an earlier create of the same batch: answered once that one is committed.
    SameBatchDuplicate {
        field: &'static str,
        index: usize,
    },
}

/// A job with what it was given before the transaction: its id, its tenant's blind-index key
/// and (encryption on) its subject key.
struct Prepared {
    job: Job,
    id: Uuid,
    index: BlindIndex,
    key_opt: Option<SubjectKey>,
}

/// Gives every job its id, its tenant's blind-index key and (encryption on) a new subject key,
/// made for the whole batch in one statement; answers the jobs that cannot have them.
async fn with_keys(keys: &KeyStore, jobs: Vec<Job>) -> Vec<Prepared> {
    let mut indexes: HashMap<Uuid, BlindIndex> = HashMap::new();
    let mut ready = Vec::with_capacity(jobs.len());
    for job in jobs {
        let index = match indexes.get(&job.tenant_id) {
            Some(index) => index.clone(),
            None => match keys.blind_index(job.tenant_id).await {
                Ok(index) => indexes.entry(job.tenant_id).or_insert(index).clone(),
                Err(err) => {
                    let _ = job.reply.send(Err(err.into()));
                    continue;
                }
            },
        };
        ready.push(Prepared { id: Uuid::now_v7(), job, index, key_opt: None });
    }
    if keys.encrypts() && !ready.is_empty() {
        let subjects: Vec<(Uuid, Uuid)> = ready.iter().map(|p| (p.job.tenant_id, p.id)).collect();
        match keys.create_subject_keys(&subjects).await {
            Ok(mut created) => {
                for p in &mut ready {
                    p.key_opt = created.remove(&(p.job.tenant_id, p.id));
                }
            }
            Err(err) => {
                let err: ServiceError = err.into();
                for p in ready {
                    let _ = p.job.reply.send(Err(err.clone()));
                }
                return Vec::new();
            }
        }
    }
    ready
}

/// Writes the batch and answers every job; returns (inserted, refused) (tenant, id) pairs.
async fn write(db: &Db, ready: Vec<Prepared>) -> (Vec<(Uuid, Uuid)>, Vec<(Uuid, Uuid)>) {
    let mut refused: Vec<(Uuid, Uuid)> = Vec::new();
    let txn = match db.begin_write().await {
        Ok(txn) => txn,
        Err(err) => {
            let err = db_err(err);
            for p in ready {
                refused.push((p.job.tenant_id, p.id));
                let _ = p.job.reply.send(Err(err.clone()));
            }
            return (Vec::new(), refused);
        }
    };
    let mut policies: HashMap<Uuid, FieldPolicy> = HashMap::new();
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(ready.len());
    let mut replies: Vec<Option<Reply>> = Vec::with_capacity(ready.len());
    let mut retry_inputs = Vec::with_capacity(ready.len());
    for p in ready {
        let Prepared { job, id, index, key_opt } = p;
        let policy = match policies.get(&job.tenant_id) {
            Some(p) => p,
            None => match load_policy(&txn, job.tenant_id).await {
                Ok(p) => policies.entry(job.tenant_id).or_insert(p),
                Err(err) => {
                    refused.push((job.tenant_id, id));
                    let _ = job.reply.send(Err(err));
                    continue;
                }
            },
        };
        match prepare_create(policy, job.tenant_id, id, &job.input, &job.source, &index, key_opt.as_ref(), &job.audit) {
            Ok(new) => {
                outcomes.push(Some(Outcome::Insert(Box::new(new))));
                replies.push(Some(job.reply));
                retry_inputs.push(Retry {
                    tenant_id: job.tenant_id,
                    id,
                    input: job.input,
                    source: job.source,
                    index,
                    key_opt,
                    audit: job.audit,
                });
            }
            Err(err) => {
                refused.push((job.tenant_id, id));
                let _ = job.reply.send(Err(err));
            }
        }
    }
    if let Err(err) = refuse_duplicates(&txn, &mut outcomes, &mut replies).await {
        refused.extend(retry_inputs.iter().map(|r| (r.tenant_id, r.id)));
        fail_replies(replies, err);
        return (Vec::new(), refused);
    }
    let new: Vec<&NewContact> = outcomes
        .iter()
        .flatten()
        .filter_map(|o| match o {
            Outcome::Insert(n) => Some(n.as_ref()),
            Outcome::SameBatchDuplicate { .. } => None,
        })
        .collect();
    if !new.is_empty() {
        let contacts = new.iter().map(|n| sea_orm::IntoActiveModel::into_active_model(n.model.clone()));
        let mut changes = Vec::with_capacity(new.len());
        let mut events = Vec::with_capacity(2 * new.len());
        for n in &new {
            let (change, rows) = n.rows();
            changes.push(change);
            events.extend(rows);
        }
        let tokens: Vec<_> = new.iter().flat_map(|n| n.token_rows()).collect();
        let inserted = async {
            contact::Entity::insert_many(contacts).exec_without_returning(&txn).await?;
            contact_change::Entity::insert_many(changes).exec_without_returning(&txn).await?;
            // A token row has 3 columns: far below the bound-value limit for 64 creates.
            if !tokens.is_empty() {
                contact_token::Entity::insert_many(tokens).exec_without_returning(&txn).await?;
            }
            outbox::entity::Entity::insert_many(events).exec_without_returning(&txn).await?;
            Ok::<_, sea_orm::DbErr>(())
        }
        .await;
        if let Err(err) = inserted {
            drop(txn);
            if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
                tracing::info!(
                    creates = retry_inputs.len(),
                    "batch lost a uniqueness race, retrying its creates one by one"
                );
                return retry_one_by_one(db, retry_inputs, outcomes, replies, refused).await;
            }
            refused.extend(retry_inputs.iter().map(|r| (r.tenant_id, r.id)));
            fail_replies(replies, db_err(err));
            return (Vec::new(), refused);
        }
    }
    if let Err(err) = txn.commit().await {
        refused.extend(retry_inputs.iter().map(|r| (r.tenant_id, r.id)));
        fail_replies(replies, db_err(err));
        return (Vec::new(), refused);
    }
    let ids: Vec<Option<Uuid>> = outcomes
        .iter()
        .map(|o| match o {
            Some(Outcome::Insert(n)) => Some(n.model.id),
            _ => None,
        })
        .collect();
    let mut inserted = Vec::new();
    for ((outcome_opt, reply_opt), retry) in outcomes.into_iter().zip(replies).zip(&retry_inputs) {
        let Some(outcome) = outcome_opt else {
            // Refused as a duplicate of a stored contact (already answered).
            refused.push((retry.tenant_id, retry.id));
            continue;
        };
        let answer = match outcome {
            Outcome::Insert(n) => {
                inserted.push((retry.tenant_id, retry.id));
                to_domain(n.model, Some(n.personal))
            }
            Outcome::SameBatchDuplicate { field, index } => {
                refused.push((retry.tenant_id, retry.id));
                Err(duplicate(field, ids[index].expect("a same-batch duplicate points at an insert")))
            }
        };
        if let Some(reply) = reply_opt {
            let _ = reply.send(answer);
        }
    }
    (inserted, refused)
}

/// Answers creates whose e-mail or phone another contact of the tenant holds (in the store or
/// earlier in this batch); leaves the rest to insert.
async fn refuse_duplicates<C: sea_orm::ConnectionTrait>(
    conn: &C,
    outcomes: &mut [Option<Outcome>],
    replies: &mut [Option<Reply>],
) -> Result<(), ServiceError> {
    let mut by_tenant: HashMap<Uuid, (Vec<String>, Vec<String>)> = HashMap::new();
    for outcome in outcomes.iter().flatten() {
        if let Outcome::Insert(n) = outcome {
            let entry = by_tenant.entry(n.model.tenant_id).or_default();
            entry.0.extend(n.model.email_index.clone());
            entry.1.extend(n.model.phone_index.clone());
        }
    }
    // (tenant, field, blind index) → holder: a stored contact (Err) or an earlier job (Ok).
    let mut holders: HashMap<(Uuid, &'static str, String), Result<usize, Uuid>> = HashMap::new();
    // One query per column, so each is a lookup in its (tenant_id, column) unique index: an
    // `email_index IN (…) OR phone_index IN (…)` makes SQLite scan every contact of the tenant.
    for (tenant_id, (emails, phones)) in by_tenant {
        for (field, column, values) in
            [("email", contact::Column::EmailIndex, emails), ("phone", contact::Column::PhoneIndex, phones)]
        {
            if values.is_empty() {
                continue;
            }
            let stored: Vec<(Uuid, Option<String>)> = contact::Entity::find()
                .select_only()
                .columns([contact::Column::Id, column])
                .filter(contact::Column::TenantId.eq(tenant_id))
                .filter(column.is_in(values))
                .into_tuple()
                .all(conn)
                .await
                .map_err(db_err)?;
            for (id, value_opt) in stored {
                if let Some(value) = value_opt {
                    holders.insert((tenant_id, field, value), Err(id));
                }
            }
        }
    }
    for index in 0..outcomes.len() {
        let Some(Outcome::Insert(n)) = &outcomes[index] else { continue };
        let tenant_id = n.model.tenant_id;
        let values = [("email", n.model.email_index.clone()), ("phone", n.model.phone_index.clone())];
        let mut refused = None;
        for (field, value_opt) in &values {
            let Some(value) = value_opt else { continue };
            if let Some(holder) = holders.get(&(tenant_id, *field, value.clone())) {
                refused = Some((*field, *holder));
                break;
            }
        }
        match refused {
            Some((field, Err(stored_id))) => {
                if let Some(reply) = replies[index].take() {
                    let _ = reply.send(Err(duplicate(field, stored_id)));
                }
                outcomes[index] = None;
            }
            Some((field, Ok(earlier))) => outcomes[index] = Some(Outcome::SameBatchDuplicate { field, index: earlier }),
            None => {
                for (field, value_opt) in values {
                    if let Some(value) = value_opt {
                        holders.insert((tenant_id, field, value), Ok(index));
                    }
                }
            }
        }
    }
    Ok(())
}

/// What a create needs to be tried again on its own.
struct Retry {
    tenant_id: Uuid,
    id: Uuid,
    input: ContactInput,
    source: Source,
    index: BlindIndex,
    key_opt: Option<SubjectKey>,
    audit: Audit,
}

/// After a concurrent writer made the batch insert fail: every create on its own.
async fn retry_one_by_one(
    db: &Db,
    retries: Vec<Retry>,
    outcomes: Vec<Option<Outcome>>,
    replies: Vec<Option<Reply>>,
    mut refused: Vec<(Uuid, Uuid)>,
) -> (Vec<(Uuid, Uuid)>, Vec<(Uuid, Uuid)>) {
    let mut inserted = Vec::new();
    for ((r, outcome), reply) in retries.into_iter().zip(outcomes).zip(replies) {
        let (Some(_), Some(reply)) = (outcome, reply) else {
            refused.push((r.tenant_id, r.id));
            continue;
        };
        let answer =
            create_one(db, r.tenant_id, r.id, &r.input, &r.source, &r.index, r.key_opt.as_ref(), &r.audit).await;
        if answer.is_ok() {
            inserted.push((r.tenant_id, r.id));
        } else {
            refused.push((r.tenant_id, r.id));
        }
        let _ = reply.send(answer);
    }
    (inserted, refused)
}

fn fail_replies(replies: Vec<Option<Reply>>, err: ServiceError) {
    for reply in replies.into_iter().flatten() {
        let _ = reply.send(Err(err.clone()));
    }
}
