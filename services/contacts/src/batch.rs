//! Group commit for creates: creates that arrive while the writer is busy are committed
//! together, in one transaction with one multi-row insert per table, instead of one transaction
//! each. Every create is still validated, checked for duplicates and answered on its own: a
//! refused create never holds back the others, and a create is answered only after its commit.
//!
//! The uniqueness check runs inside the batch transaction. On SQLite the single write
//! connection serialises it with every other writer; on PostgreSQL a concurrent writer elsewhere
//! can still win the race, and the unique index then refuses the whole batch: its creates are
//! retried one by one, each in its own transaction, so only the real duplicate is refused.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, SqlErr};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use carnet_kit::db::Db;
use carnet_kit::{ErrorCode, ServiceError, outbox};

use crate::domain::{Contact, ContactInput, FieldPolicy, Source};
use crate::entity::{contact, contact_change};
use crate::store::{NewContact, create_one, db_err, duplicate, load_policy, prepare_create, to_domain};

/// Most creates committed in one transaction.
pub const MAX_BATCH: usize = 64;

struct Job {
    tenant_id: Uuid,
    input: ContactInput,
    source: Source,
    reply: oneshot::Sender<Result<Contact, ServiceError>>,
}

/// The handle through which creates reach the batch writer task.
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
}

impl Batcher {
    /// Spawns the writer task on the current tokio runtime; it ends when every handle is dropped.
    pub fn spawn(db: Db) -> Batcher {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(db, rx));
        Batcher { tx }
    }

    pub async fn create(&self, tenant_id: Uuid, input: ContactInput, source: Source) -> Result<Contact, ServiceError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { tenant_id, input, source, reply };
        let stopped = || ServiceError::new(ErrorCode::Unavailable, "contacts writer stopped");
        self.tx.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(db: Db, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    // Takes what is already queued, never waits for more: a lone create is not delayed.
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        commit_batch(&db, std::mem::take(&mut jobs)).await;
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

async fn commit_batch(db: &Db, jobs: Vec<Job>) {
    let txn = match db.begin_write().await {
        Ok(txn) => txn,
        Err(err) => return fail_all(jobs, db_err(err)),
    };
    let mut policies: HashMap<Uuid, FieldPolicy> = HashMap::new();
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(jobs.len());
    let mut replies: Vec<Option<oneshot::Sender<Result<Contact, ServiceError>>>> = Vec::with_capacity(jobs.len());
    let mut retry_inputs = Vec::with_capacity(jobs.len());
    for job in jobs {
        let policy = match policies.get(&job.tenant_id) {
            Some(p) => p,
            None => match load_policy(&txn, job.tenant_id).await {
                Ok(p) => policies.entry(job.tenant_id).or_insert(p),
                Err(err) => {
                    let _ = job.reply.send(Err(err));
                    continue;
                }
            },
        };
        match prepare_create(policy, job.tenant_id, &job.input, &job.source) {
            Ok(new) => {
                outcomes.push(Some(Outcome::Insert(Box::new(new))));
                replies.push(Some(job.reply));
                retry_inputs.push((job.tenant_id, job.input, job.source));
            }
            Err(err) => {
                let _ = job.reply.send(Err(err));
            }
        }
    }
    if let Err(err) = refuse_duplicates(&txn, &mut outcomes, &mut replies).await {
        return fail_replies(replies, err);
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
        let (changes, events): (Vec<_>, Vec<_>) = new.iter().map(|n| n.rows()).unzip();
        let inserted = async {
            contact::Entity::insert_many(contacts).exec_without_returning(&txn).await?;
            contact_change::Entity::insert_many(changes).exec_without_returning(&txn).await?;
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
                return retry_one_by_one(db, retry_inputs, outcomes, replies).await;
            }
            return fail_replies(replies, db_err(err));
        }
    }
    if let Err(err) = txn.commit().await {
        return fail_replies(replies, db_err(err));
    }
    let ids: Vec<Option<Uuid>> = outcomes
        .iter()
        .map(|o| match o {
            Some(Outcome::Insert(n)) => Some(n.model.id),
            _ => None,
        })
        .collect();
    for (outcome, reply) in outcomes.into_iter().zip(replies) {
        let (Some(outcome), Some(reply)) = (outcome, reply) else { continue };
        let answer = match outcome {
            Outcome::Insert(n) => to_domain(n.model),
            Outcome::SameBatchDuplicate { field, index } => {
                Err(duplicate(field, ids[index].expect("a same-batch duplicate points at an insert")))
            }
        };
        let _ = reply.send(answer);
    }
}

/// Answers creates whose e-mail or phone another contact of the tenant holds (in the store or
/// earlier in this batch); leaves the rest to insert.
async fn refuse_duplicates<C: sea_orm::ConnectionTrait>(
    conn: &C,
    outcomes: &mut [Option<Outcome>],
    replies: &mut [Option<oneshot::Sender<Result<Contact, ServiceError>>>],
) -> Result<(), ServiceError> {
    let mut by_tenant: HashMap<Uuid, (Vec<String>, Vec<String>)> = HashMap::new();
    for outcome in outcomes.iter().flatten() {
        if let Outcome::Insert(n) = outcome {
            let entry = by_tenant.entry(n.model.tenant_id).or_default();
            entry.0.extend(n.model.email.clone());
            entry.1.extend(n.model.phone.clone());
        }
    }
    // (tenant, field, value) → holder: a stored contact (Err) or an earlier job of the batch (Ok).
    let mut holders: HashMap<(Uuid, &'static str, String), Result<usize, Uuid>> = HashMap::new();
    // One query per column, so each is a lookup in its (tenant_id, column) unique index: an
    // `email IN (…) OR phone IN (…)` makes SQLite scan every contact of the tenant.
    for (tenant_id, (emails, phones)) in by_tenant {
        for (field, column, values) in
            [("email", contact::Column::Email, emails), ("phone", contact::Column::Phone, phones)]
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
        let values = [("email", n.model.email.clone()), ("phone", n.model.phone.clone())];
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

/// After a concurrent writer made the batch insert fail: every create on its own.
async fn retry_one_by_one(
    db: &Db,
    inputs: Vec<(Uuid, ContactInput, Source)>,
    outcomes: Vec<Option<Outcome>>,
    replies: Vec<Option<oneshot::Sender<Result<Contact, ServiceError>>>>,
) {
    for (((tenant_id, input, source), outcome), reply) in inputs.into_iter().zip(outcomes).zip(replies) {
        let (Some(_), Some(reply)) = (outcome, reply) else { continue };
        let _ = reply.send(create_one(db, tenant_id, &input, &source).await);
    }
}

fn fail_all(jobs: Vec<Job>, err: ServiceError) {
    for job in jobs {
        let _ = job.reply.send(Err(err.clone()));
    }
}

fn fail_replies(replies: Vec<Option<oneshot::Sender<Result<Contact, ServiceError>>>>, err: ServiceError) {
    for reply in replies.into_iter().flatten() {
        let _ = reply.send(Err(err.clone()));
    }
}
