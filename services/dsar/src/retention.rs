//! Retention (Art. 5(1)(e), docs/retention.md): each tenant's policies per record type, applied
//! by a scheduler in the DSAR engine (and on demand); every purge is recorded with its policy,
//! cutoff and count, and audited.
//!
//! - `contacts`: contacts inactive for `days` (no creation, change by a person, flag, consent
//!   change or logged call since) are erased through an ordinary erasure request, so every
//!   participant erases and confirms and the ledger proves it. With `warn_days`, the person is
//!   mailed a warning first and erased no sooner than `warn_days` after it; activity since the
//!   warning starts the count again. Legal holds and restrictions keep a contact.
//! - `calls`, `messages` (comms), `enrichment_runs` (enrichment): the owning service deletes its
//!   records older than the cutoff (`PurgeExpired`).
//! - `dsar_artefacts`: closed requests and their export documents; the erasure ledger stays.
//! - `erase_on_withdrawal`: when consent was the only lawful basis held for a contact and it is
//!   withdrawn for every purpose, the contact is erased (trigger `consent_withdrawn`). Withdrawals
//!   made before the settings were last saved are not acted on.

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use carnet_kit::audit::Entry;
use carnet_kit::grpc::to_timestamp;
use carnet_kit::{ErrorCode, Permission, ServiceError};
use carnet_proto::common::v1::{PurgeExpiredRequest, PurgeExpiredResponse};
use carnet_proto::comms::v1 as pb_comms;
use carnet_proto::consent::v1 as pb_consent;
use carnet_proto::contacts::v1 as pb_contacts;
use carnet_proto::dsar::v1 as pb;

use crate::engine::Engine;
use crate::entity::{retention_purge, retention_settings};
use crate::retention_store::NewPurge;
use crate::store::{NewRequest, service_stamp};

/// Record types and the service that holds them.
pub const RECORD_TYPES: [(&str, &str); 5] = [
    ("contacts", "contacts"),
    ("calls", "comms"),
    ("messages", "comms"),
    ("enrichment_runs", "enrichment"),
    ("dsar_artefacts", "dsar"),
];
pub const MAX_DAYS: u32 = 36_500;
/// Erasure requests one run opens per tenant at most; the next run goes on.
pub const MAX_ERASURES_PER_RUN: usize = 1_000;
const MAX_TEXT_CHARS: usize = 5_000;
pub const DEFAULT_SUBJECT: &str = "We will delete your data on {deletion_date}";
pub const DEFAULT_BODY: &str = "Hello,\n\nwe have not been in touch for a long time, so we will delete the data we hold \
about you on {deletion_date}, as our retention policy says ({days} days without contact).\n\nIf you would like us \
to keep it, reply to this message or get in touch before that date.\n";

/// One policy as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub record_type: String,
    pub days: u32,
    #[serde(default)]
    pub warn_days: u32,
}

/// What started a purge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
    ConsentWithdrawn,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::ConsentWithdrawn => "consent_withdrawn",
        }
    }
}

fn policies_of(row: &retention_settings::Model) -> Vec<Policy> {
    serde_json::from_value(row.policies.clone()).unwrap_or_default()
}

fn text(field: &str, value: &str) -> Result<String, ServiceError> {
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(ServiceError::invalid_field(field, format!("is longer than {MAX_TEXT_CHARS} characters")));
    }
    Ok(value.trim().to_string())
}

/// Checks a `Retention` message; each refusal names its field.
pub fn validate(r: &pb::Retention) -> Result<(Vec<Policy>, String, String, String), ServiceError> {
    let mut policies: Vec<Policy> = Vec::new();
    for (i, p) in r.policies.iter().enumerate() {
        let field = |name: &str| format!("retention.policies[{i}].{name}");
        if !RECORD_TYPES.iter().any(|(t, _)| *t == p.record_type) {
            let known: Vec<&str> = RECORD_TYPES.iter().map(|(t, _)| *t).collect();
            return Err(ServiceError::invalid_field(
                field("record_type"),
                format!("must be one of: {}", known.join(", ")),
            ));
        }
        if policies.iter().any(|q| q.record_type == p.record_type) {
            return Err(ServiceError::invalid_field(
                field("record_type"),
                format!("`{}` has a policy already", p.record_type),
            ));
        }
        if p.days == 0 || p.days > MAX_DAYS {
            return Err(ServiceError::invalid_field(field("days"), format!("must be 1 to {MAX_DAYS}")));
        }
        if p.warn_days > 0 && p.record_type != "contacts" {
            return Err(ServiceError::invalid_field(field("warn_days"), "only a `contacts` policy warns"));
        }
        if p.warn_days >= p.days {
            return Err(ServiceError::invalid_field(field("warn_days"), "must be less than days"));
        }
        policies.push(Policy { record_type: p.record_type.clone(), days: p.days, warn_days: p.warn_days });
    }
    let purpose = text("retention.warning_purpose", &r.warning_purpose)?;
    if purpose.is_empty() && policies.iter().any(|p| p.warn_days > 0) {
        return Err(ServiceError::invalid_field("retention.warning_purpose", "is required when a policy warns"));
    }
    let subject = text("retention.warning_subject", &r.warning_subject)?;
    let body = text("retention.warning_body", &r.warning_body)?;
    Ok((policies, purpose, subject, body))
}

pub fn settings_to_proto(row_opt: Option<retention_settings::Model>) -> pb::Retention {
    let Some(row) = row_opt else { return pb::Retention::default() };
    pb::Retention {
        policies: policies_of(&row)
            .into_iter()
            .map(|p| pb::RetentionPolicy { record_type: p.record_type, days: p.days, warn_days: p.warn_days })
            .collect(),
        erase_on_withdrawal: row.erase_on_withdrawal,
        warning_purpose: row.warning_purpose,
        warning_subject: row.warning_subject,
        warning_body: row.warning_body,
        updated_by: row.updated_by,
        updated_at: Some(to_timestamp(row.updated_at)),
    }
}

pub fn purge_to_proto(row: retention_purge::Model) -> pb::Purge {
    let request_ids: Vec<String> = serde_json::from_value(row.request_ids).unwrap_or_default();
    pb::Purge {
        id: row.id.to_string(),
        record_type: row.record_type,
        service: row.service,
        trigger: row.trigger,
        days: row.days.max(0) as u32,
        cutoff: Some(to_timestamp(row.cutoff)),
        purged: row.purged.max(0) as u64,
        warned: row.warned.max(0) as u64,
        skipped: row.skipped.max(0) as u64,
        request_ids,
        actor: row.actor,
        ran_at: Some(to_timestamp(row.ran_at)),
    }
}

/// How long the person's data is kept (Art. 15(1)(d)), for the access document: the tenant's
/// policies, in days.
pub fn statement(row_opt: Option<&retention_settings::Model>) -> serde_json::Value {
    let policies: Vec<Policy> = row_opt.map(policies_of).unwrap_or_default();
    serde_json::json!({
        "rule": "kept until the person asks for erasure, or until a retention policy below removes it",
        "policies": policies,
        "erased_when_every_consent_is_withdrawn": row_opt.is_some_and(|r| r.erase_on_withdrawal),
    })
}

/// The warning text with its placeholders filled in.
fn fill(template: &str, default: &str, deletion: DateTime<Utc>, days: u32) -> String {
    let t = if template.is_empty() { default } else { template };
    t.replace("{deletion_date}", &deletion.format("%Y-%m-%d").to_string()).replace("{days}", &days.to_string())
}

/// What the contacts sweep did (or, on a dry run, would do).
#[derive(Default)]
struct Swept {
    opened: Vec<Uuid>,
    would_erase: u64,
    warned: u64,
    skipped: u64,
}

/// One scheduler round at a time per process.
static SWEEPING: AtomicBool = AtomicBool::new(false);

impl Engine {
    /// The scheduler's round: every tenant's policies, recorded with trigger `schedule`.
    pub async fn sweep_retention(&self) {
        if SWEEPING.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.store().all_retention_settings().await {
            Ok(rows) => {
                for row in rows {
                    let tenant_id = row.tenant_id;
                    let stamp = service_stamp("retention");
                    if let Err(e) = self.apply_retention(&row, Trigger::Schedule, &stamp, false).await {
                        tracing::warn!(%tenant_id, code = e.code.as_str(), "retention run incomplete; retried next round");
                    }
                }
            }
            Err(e) => tracing::warn!(code = e.code.as_str(), "cannot read retention settings"),
        }
        SWEEPING.store(false, Ordering::Release);
    }

    /// Applies one tenant's policies. Each policy's purge is recorded (not on a dry run); a
    /// participant that fails leaves its policy for the next run and the others still apply.
    pub async fn apply_retention(
        &self,
        row: &retention_settings::Model,
        trigger: Trigger,
        stamp: &Entry,
        dry_run: bool,
    ) -> Result<Vec<pb::Purge>, ServiceError> {
        let tenant_id = row.tenant_id;
        let mut out = Vec::new();
        let mut first_err = None;
        for policy in policies_of(row) {
            let service = RECORD_TYPES.iter().find(|(t, _)| *t == policy.record_type).map(|(_, s)| *s).unwrap_or("");
            let cutoff = carnet_kit::db::now() - Duration::days(i64::from(policy.days));
            let res = match policy.record_type.as_str() {
                "contacts" => self.sweep_contacts(row, &policy, dry_run).await,
                "dsar_artefacts" => self
                    .store()
                    .purge_artefacts(tenant_id, cutoff, dry_run)
                    .await
                    .map(|n| Swept { would_erase: n, ..Swept::default() }),
                record_type => {
                    let req = PurgeExpiredRequest {
                        record_type: record_type.to_string(),
                        before: Some(to_timestamp(cutoff)),
                        dry_run,
                    };
                    self.call::<_, PurgeExpiredResponse>(
                        tenant_id,
                        service,
                        "PurgeExpired",
                        req,
                        &[Permission::DsarManage],
                    )
                    .await
                    .map(|r| Swept { would_erase: r.purged, ..Swept::default() })
                }
            };
            let swept = match res {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%tenant_id, record_type = %policy.record_type, code = e.code.as_str(), "retention policy not applied");
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let purged = if policy.record_type == "contacts" && !dry_run {
                swept.opened.len() as u64
            } else {
                swept.would_erase
            };
            let new = NewPurge {
                record_type: policy.record_type.clone(),
                service: service.to_string(),
                trigger: trigger.as_str().to_string(),
                days: policy.days,
                cutoff,
                purged,
                warned: swept.warned,
                skipped: swept.skipped,
                request_ids: swept.opened,
            };
            if dry_run {
                out.push(pb::Purge {
                    record_type: new.record_type,
                    service: new.service,
                    trigger: new.trigger,
                    days: new.days,
                    cutoff: Some(to_timestamp(cutoff)),
                    purged: new.purged,
                    warned: new.warned,
                    skipped: new.skipped,
                    actor: stamp.actor.clone(),
                    ..pb::Purge::default()
                });
            } else {
                let recorded = self.store().record_purge(tenant_id, stamp, new).await?;
                tracing::info!(%tenant_id, purge_id = %recorded.id, record_type = %recorded.record_type, purged = recorded.purged, "retention purge recorded");
                out.push(purge_to_proto(recorded));
            }
        }
        match (first_err, out.is_empty()) {
            (Some(e), true) => Err(e),
            _ => Ok(out),
        }
    }

    /// `contacts`: warns, then opens erasure requests for contacts inactive past the policy.
    async fn sweep_contacts(
        &self,
        row: &retention_settings::Model,
        policy: &Policy,
        dry_run: bool,
    ) -> Result<Swept, ServiceError> {
        let tenant_id = row.tenant_id;
        let now = carnet_kit::db::now();
        let delete_cutoff = now - Duration::days(i64::from(policy.days));
        let warn = Duration::days(i64::from(policy.warn_days));
        let list_before = delete_cutoff + warn;
        let mut swept = Swept::default();
        let mut after_id = String::new();
        loop {
            let req = pb_contacts::ListInactiveRequest {
                before: Some(to_timestamp(list_before)),
                limit: 500,
                after_id: after_id.clone(),
            };
            let page: pb_contacts::ListInactiveResponse =
                self.call(tenant_id, "contacts", "ListInactive", req, &[Permission::DsarManage]).await?;
            for c in &page.contacts {
                if swept.opened.len() >= MAX_ERASURES_PER_RUN {
                    return Ok(swept);
                }
                let id: Uuid = c.id.parse().map_err(|_| ServiceError::internal("contacts sent a bad id"))?;
                let last = c
                    .last_activity_at
                    .as_ref()
                    .and_then(|t| carnet_kit::grpc::from_timestamp("last_activity_at", t).ok())
                    .unwrap_or(now);
                if self.store().held(tenant_id, id).await? {
                    swept.skipped += 1;
                    continue;
                }
                if self.store().erasure_open(tenant_id, id).await? {
                    continue;
                }
                if policy.warn_days > 0 {
                    // A warning counts once it followed the last activity.
                    let fresh_opt = self.store().warning(tenant_id, id).await?.filter(|w| w.warned_at >= last);
                    match fresh_opt {
                        None => {
                            swept.warned += 1;
                            if !dry_run {
                                self.warn(row, policy, id).await?;
                            }
                            continue;
                        }
                        Some(w) if w.warned_at > now - warn => continue,
                        Some(_) => {}
                    }
                }
                if last >= delete_cutoff {
                    continue;
                }
                if dry_run {
                    swept.would_erase += 1;
                    continue;
                }
                let verification = format!("retention policy: no activity for {} days", policy.days);
                match self.open_erasure(tenant_id, id, verification).await {
                    Ok(request_id) => swept.opened.push(request_id),
                    // A hold placed since the check above.
                    Err(e) if e.code == ErrorCode::FailedPrecondition => swept.skipped += 1,
                    Err(e) => return Err(e),
                }
            }
            if page.next_after_id.is_empty() {
                return Ok(swept);
            }
            after_id = page.next_after_id;
        }
    }

    /// Mails the inactivity warning through comms (for the tenant's warning purpose) and records
    /// it, sent or not: a person without an address, or who objected, is still erased in time.
    async fn warn(
        &self,
        row: &retention_settings::Model,
        policy: &Policy,
        contact_id: Uuid,
    ) -> Result<(), ServiceError> {
        let deletion = carnet_kit::db::now() + Duration::days(i64::from(policy.warn_days));
        let content = pb_comms::Content {
            template_id: String::new(),
            subject: fill(&row.warning_subject, DEFAULT_SUBJECT, deletion, policy.days),
            body: fill(&row.warning_body, DEFAULT_BODY, deletion, policy.days),
        };
        let req = pb_comms::SendMessageRequest {
            contact_id: contact_id.to_string(),
            purpose: row.warning_purpose.clone(),
            content: Some(content),
        };
        let outcome = match self
            .call::<_, pb_comms::Message>(row.tenant_id, "comms", "SendMessage", req, &[Permission::CommsSend])
            .await
        {
            Ok(m) => format!("queued:{}", m.id),
            Err(e) if e.code == ErrorCode::Unavailable || e.code == ErrorCode::Internal => return Err(e),
            Err(e) => e.code.as_str().to_string(),
        };
        tracing::info!(tenant_id = %row.tenant_id, %contact_id, outcome = %outcome, "retention warning");
        self.store().record_warning(row.tenant_id, contact_id, &outcome).await
    }

    /// Opens an erasure of `subject_id` on the DSAR service's own initiative.
    async fn open_erasure(
        &self,
        tenant_id: Uuid,
        subject_id: Uuid,
        verification: String,
    ) -> Result<Uuid, ServiceError> {
        let new = NewRequest {
            kind: "erasure".into(),
            subject_id,
            verification,
            details: serde_json::json!({}),
            recipients: Vec::new(),
            participants: self.config().participants.clone(),
            pseudonym_opt: Some(self.keys().pseudonym(tenant_id, subject_id)),
            completed: false,
            changed_fields: Vec::new(),
        };
        let retry = Duration::milliseconds(self.config().retry_base_ms as i64);
        let created = self.store().create(tenant_id, &service_stamp("retention"), new, retry).await?;
        self.store().forget_warning(tenant_id, subject_id).await?;
        Ok(created.id)
    }

    /// `consent.changed`: with `erase_on_withdrawal`, erases a contact whose every consent state
    /// is a withdrawn consent (no purpose with another lawful basis, none granted or pending).
    /// Counts from the moment the switch was set: a withdrawal made before is not acted on.
    pub async fn on_consent_changed(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        withdrawn_at: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        let Some(row) = self.store().retention_settings(tenant_id).await? else { return Ok(()) };
        if !row.erase_on_withdrawal || withdrawn_at < row.updated_at {
            return Ok(());
        }
        if self.store().erasure_open(tenant_id, contact_id).await? {
            return Ok(());
        }
        let req = pb_consent::GetContactConsentsRequest { contact_id: contact_id.to_string() };
        let consents: pb_consent::GetContactConsentsResponse =
            match self.call(tenant_id, "consent", "GetContactConsents", req, &[Permission::ContactsRead]).await {
                Ok(c) => c,
                // Erased meanwhile.
                Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
        let only_withdrawn_consent = !consents.current.is_empty()
            && consents.current.iter().all(|s| {
                s.lawful_basis == pb_consent::LawfulBasis::Consent as i32
                    && s.status == pb_consent::ConsentStatus::Withdrawn as i32
            });
        if !only_withdrawn_consent {
            return Ok(());
        }
        let stamp = service_stamp("bus");
        let mut new = NewPurge {
            record_type: "contacts".into(),
            service: "contacts".into(),
            trigger: Trigger::ConsentWithdrawn.as_str().into(),
            days: 0,
            cutoff: carnet_kit::db::now(),
            purged: 0,
            warned: 0,
            skipped: 0,
            request_ids: Vec::new(),
        };
        let verification = "consent, the only lawful basis, withdrawn for every purpose (tenant setting)".to_string();
        match self.open_erasure(tenant_id, contact_id, verification).await {
            Ok(request_id) => {
                new.purged = 1;
                new.request_ids.push(request_id);
            }
            Err(e) if e.code == ErrorCode::FailedPrecondition => new.skipped = 1,
            Err(e) => return Err(e),
        }
        let recorded = self.store().record_purge(tenant_id, &stamp, new).await?;
        tracing::info!(%tenant_id, %contact_id, purge_id = %recorded.id, "erasure after withdrawal of every consent");
        Ok(())
    }
}

/// Runs `sweep` when the scheduler is due: `interval` after the last round.
pub struct Schedule {
    interval: std::time::Duration,
    last_opt: Option<std::time::Instant>,
}

impl Schedule {
    pub fn new(interval_ms: u64) -> Self {
        Schedule { interval: std::time::Duration::from_millis(interval_ms), last_opt: None }
    }

    /// Whether a round is due now (and, if so, marks it started). Never with a zero interval.
    pub fn due(&mut self) -> bool {
        if self.interval.is_zero() {
            return false;
        }
        let due = self.last_opt.is_none_or(|at| at.elapsed() >= self.interval);
        if due {
            self.last_opt = Some(std::time::Instant::now());
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(record_type: &str, days: u32, warn_days: u32) -> pb::RetentionPolicy {
        pb::RetentionPolicy { record_type: record_type.into(), days, warn_days }
    }

    #[test]
    fn test_each_bad_policy_is_refused_with_its_field() {
        let cases = [
            (vec![policy("notes", 30, 0)], "retention.policies[0].record_type"),
            (vec![policy("calls", 30, 0), policy("calls", 60, 0)], "retention.policies[1].record_type"),
            (vec![policy("calls", 0, 0)], "retention.policies[0].days"),
            (vec![policy("calls", 30, 5)], "retention.policies[0].warn_days"),
            (vec![policy("contacts", 30, 30)], "retention.policies[0].warn_days"),
            (vec![policy("contacts", 30, 5)], "retention.warning_purpose"),
        ];
        for (policies, field) in cases {
            let r = pb::Retention { policies, ..pb::Retention::default() };
            let err = validate(&r).expect_err(field);
            assert_eq!(err.field_opt.as_deref(), Some(field));
        }
        let ok = pb::Retention {
            policies: vec![policy("contacts", 30, 5), policy("calls", 90, 0)],
            warning_purpose: "service_notices".into(),
            ..pb::Retention::default()
        };
        assert_eq!(validate(&ok).unwrap().0.len(), 2);
    }

    #[test]
    fn test_warning_text_names_the_date_and_the_policy() {
        let at = DateTime::parse_from_rfc3339("2027-01-31T10:00:00Z").unwrap().with_timezone(&Utc);
        let text = fill("", DEFAULT_SUBJECT, at, 365);
        assert_eq!(text, "We will delete your data on 2027-01-31");
        assert!(fill("", DEFAULT_BODY, at, 365).contains("(365 days without contact)"));
        assert_eq!(fill("Bye {deletion_date} after {days}", DEFAULT_SUBJECT, at, 7), "Bye 2027-01-31 after 7");
    }

    #[test]
    fn test_access_document_states_the_tenant_policies() {
        let row = retention_settings::Model {
            tenant_id: Uuid::nil(),
            policies: serde_json::json!([{"record_type": "contacts", "days": 730, "warn_days": 30}]),
            erase_on_withdrawal: true,
            warning_purpose: "notices".into(),
            warning_subject: String::new(),
            warning_body: String::new(),
            updated_by: "key:1".into(),
            updated_at: Utc::now(),
        };
        let s = statement(Some(&row));
        assert_eq!(s["policies"][0]["days"], 730);
        assert_eq!(s["erased_when_every_consent_is_withdrawn"], true);
        assert_eq!(statement(None)["policies"], serde_json::json!([]));
    }

    #[test]
    fn test_schedule_runs_at_once_then_after_the_interval_and_never_when_off() {
        let mut s = Schedule::new(60_000);
        assert!(s.due());
        assert!(!s.due());
        let mut off = Schedule::new(0);
        assert!(!off.due());
    }
}
