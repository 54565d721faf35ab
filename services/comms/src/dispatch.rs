//! The background sender.
//!
//! Two kinds of work run here, both resumable after a crash:
//! - queuing a campaign: its audience is resolved page by page, consent-checked in batches and
//!   written as deliveries (queued, or skipped with the reason), ignoring rows that exist already;
//! - sending: due deliveries are claimed under a lease, consent-checked again (the state at send
//!   time decides), their addresses read from the contacts service, and each mail handed to the
//!   relay and then recorded as sent in its own transaction.
//!
//! A delivery is claimed before it is sent and recorded after; a process that dies in between
//! leaves it `sending` until its lease expires, when it is sent again with the same Message-ID.
//! Only a crash in the instant between the relay's acceptance and that commit can duplicate a
//! mail (receivers de-duplicate on Message-ID); nothing is ever lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use lettre::Message;
use lettre::message::Mailbox;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use carnet_kit::ServiceError;
use carnet_proto::consent::v1 as pb_consent;
use carnet_proto::contacts::v1 as pb_contacts;

use crate::entity::{campaign, delivery};
use crate::mailer::{Mailer, Outcome, SendError};
use crate::peers::{Peers, peer_err};
use crate::store::{AudienceDef, CommsStore, NewDelivery, Origin, StepDef};
use crate::template::Parsed;
use crate::{AddressHasher, CommsConfig};

/// Consent pairs per CheckBatch call.
const CHECKS_PER_CALL: usize = 5_000;
/// Contacts per ListContacts page when a campaign's audience is a search.
const AUDIENCE_PAGE: u32 = 500;
/// How long purposes (descriptions, notice texts) are cached per tenant.
const PURPOSES_TTL: Duration = Duration::from_secs(30);

/// Maps a consent check's reason to the skip reason comms reports.
pub fn skip_reason(check_reason: &str) -> &'static str {
    match check_reason {
        "withdrawn" => "withdrawn",
        "restricted" => "restricted",
        "objected" => "objected",
        "unknown_contact" => "erased",
        _ => "no_consent",
    }
}

/// What a consent-request mail carries for one contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Confirm,
    Accept,
}

/// The decision for a consent-request delivery from the consent check.
fn request_kind(check: &pb_consent::CheckResult) -> Result<Request, &'static str> {
    match check.reason.as_str() {
        "pending" => Ok(Request::Confirm),
        "no_basis" => Ok(Request::Accept),
        "granted" | "lawful_basis" => Err("already_granted"),
        other => Err(skip_reason(other)),
    }
}

#[derive(Clone)]
struct PurposeInfo {
    description: String,
    notice_version: u32,
    notice: String,
}

/// (tenant, id) of a cached template or sequence.
type TenantScoped = (Uuid, Uuid);

/// A tenant's purposes and when they were read.
type CachedPurposes = (Instant, Arc<HashMap<String, PurposeInfo>>);

struct Settings {
    batch_size: u64,
    concurrency: usize,
    lease: chrono::Duration,
    max_attempts: u32,
    retry_base: Duration,
    poll: Duration,
    pace_opt: Option<Duration>,
    from: Mailbox,
    domain: String,
}

struct Inner {
    store: CommsStore,
    peers: Peers,
    mailer: Mailer,
    hasher: AddressHasher,
    settings: Settings,
    public_url: String,
    wake: Notify,
    next_slot: Mutex<Instant>,
    templates: Mutex<HashMap<TenantScoped, Arc<Parsed>>>,
    sequences: Mutex<HashMap<TenantScoped, Arc<Vec<StepDef>>>>,
    purposes: Mutex<HashMap<Uuid, CachedPurposes>>,
    queuing: Mutex<HashSet<Uuid>>,
}

/// The comms background sender; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

/// A prepared mail for one claimed delivery.
struct Outgoing {
    delivery: delivery::Model,
    message: Message,
}

impl Dispatcher {
    pub fn new(
        cfg: &CommsConfig,
        store: CommsStore,
        peers: Peers,
        mailer: Mailer,
        hasher: AddressHasher,
        public_url: String,
    ) -> Self {
        let from: Mailbox = cfg.from_address.parse().expect("validated by CommsConfig");
        let domain = from.email.domain().to_string();
        let settings = Settings {
            batch_size: cfg.batch_size as u64,
            concurrency: cfg.concurrency as usize,
            lease: chrono::Duration::milliseconds(cfg.claim_lease_ms as i64),
            max_attempts: cfg.max_attempts,
            retry_base: Duration::from_millis(cfg.retry_base_ms),
            poll: Duration::from_millis(cfg.poll_interval_ms.max(10)),
            pace_opt: (cfg.send_rate_per_second > 0)
                .then(|| Duration::from_secs_f64(1.0 / cfg.send_rate_per_second as f64)),
            from,
            domain,
        };
        Dispatcher {
            inner: Arc::new(Inner {
                store,
                peers,
                mailer,
                hasher,
                settings,
                public_url: public_url.trim_end_matches('/').to_string(),
                wake: Notify::new(),
                next_slot: Mutex::new(Instant::now()),
                templates: Mutex::new(HashMap::new()),
                sequences: Mutex::new(HashMap::new()),
                purposes: Mutex::new(HashMap::new()),
                queuing: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub fn hasher(&self) -> &AddressHasher {
        &self.inner.hasher
    }

    /// Tells the sender that new deliveries are due.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Runs until `shutdown` resolves: resumes campaigns that were being queued, then sends
    /// whatever is due. A round in progress finishes its in-flight mails before it stops.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        match self.inner.store.campaigns_queuing().await {
            Ok(campaigns) => {
                for c in campaigns {
                    self.queue_campaign(c);
                }
            }
            Err(e) => tracing::error!(code = e.code.as_str(), "could not resume queuing campaigns"),
        }
        loop {
            let worked = tokio::select! {
                _ = &mut shutdown => return,
                res = self.round() => match res {
                    Ok(n) => n > 0,
                    Err(e) => {
                        tracing::warn!(code = e.code.as_str(), "dispatch round failed");
                        false
                    }
                },
            };
            if worked {
                continue;
            }
            let wait = self.idle_wait().await;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long to sleep when nothing is due: until the next due delivery, at most a poll interval.
    async fn idle_wait(&self) -> Duration {
        let poll = self.inner.settings.poll;
        match self.inner.store.next_due().await {
            Ok(Some(at)) => (at - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO).min(poll),
            _ => poll,
        }
    }

    /// One round: release expired claims, claim a batch, send it. Returns how many were claimed.
    async fn round(&self) -> Result<usize, ServiceError> {
        let s = &self.inner.settings;
        for d in self.inner.store.expired_handed().await? {
            // The relay took these before their sender stopped: finish them, never re-send.
            tracing::warn!(delivery_id = %d.id, "a mail handed to the relay before a stop is recorded as sent");
            let next_opt = self.next_step(&d).await?;
            self.inner.store.mark_sent(&d, next_opt).await?;
        }
        let released = self.inner.store.release_expired().await?;
        if released > 0 {
            tracing::warn!(released, "deliveries whose sender stopped mid-send are queued again");
        }
        let claimed = self.inner.store.claim_due(s.batch_size, s.lease).await?;
        let n = claimed.len();
        let mut by_tenant: HashMap<Uuid, Vec<delivery::Model>> = HashMap::new();
        for d in claimed {
            by_tenant.entry(d.tenant_id).or_default().push(d);
        }
        for (tenant_id, batch) in by_tenant {
            if let Err(e) = self.send_batch(tenant_id, batch.clone()).await {
                // A peer or the database failed: what was not sent goes back for a later round
                // (a mail already handed to the relay is never put back).
                tracing::warn!(%tenant_id, code = e.code.as_str(), "batch postponed");
                let later = chrono::Utc::now() + chrono::Duration::from_std(s.retry_base).unwrap_or_default();
                for d in &batch {
                    self.inner.store.release_claim(d, later).await?;
                }
            }
        }
        Ok(n)
    }

    /// Checks, renders and sends one tenant's claimed deliveries.
    async fn send_batch(&self, tenant_id: Uuid, batch: Vec<delivery::Model>) -> Result<(), ServiceError> {
        let inner = &self.inner;
        let mut contacts_client = inner.peers.contacts(tenant_id, "");
        let mut consent_client = inner.peers.consent(tenant_id, "");
        // Addresses and fields, read now and dropped after the send.
        let mut contacts: HashMap<String, pb_contacts::Contact> = HashMap::new();
        let ids: Vec<String> =
            batch.iter().map(|d| d.contact_id.to_string()).collect::<HashSet<_>>().into_iter().collect();
        for chunk in ids.chunks(1_000) {
            let answer = contacts_client
                .batch_get_contacts(pb_contacts::BatchGetContactsRequest { ids: chunk.to_vec() })
                .await
                .map_err(|s| peer_err("contacts", s))?
                .into_inner();
            contacts.extend(answer.contacts.into_iter().map(|c| (c.id.clone(), c)));
        }
        // Consent at the moment of sending.
        let mut checks = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(CHECKS_PER_CALL) {
            let req = pb_consent::CheckBatchRequest {
                checks: chunk
                    .iter()
                    .map(|d| pb_consent::CheckRequest {
                        contact_id: d.contact_id.to_string(),
                        purpose: d.purpose.clone(),
                    })
                    .collect(),
            };
            let answer = consent_client.check_batch(req).await.map_err(|s| peer_err("consent", s))?.into_inner();
            checks.extend(answer.results);
        }
        // Suppressions of the recipients' addresses, per purpose.
        let mut hashes: HashMap<Uuid, String> = HashMap::new();
        let mut by_purpose: HashMap<&str, Vec<String>> = HashMap::new();
        for d in &batch {
            if let Some(email) = contacts.get(&d.contact_id.to_string()).and_then(|c| c.email.as_deref()) {
                let h = inner.hasher.hash(tenant_id, email);
                by_purpose.entry(d.purpose.as_str()).or_default().push(h.clone());
                hashes.insert(d.id, h);
            }
        }
        let mut suppressed = HashMap::new();
        for (purpose, hs) in by_purpose {
            for (h, v) in inner.store.suppressed(tenant_id, &hs, purpose).await? {
                suppressed.insert((purpose.to_string(), h), v);
            }
        }
        let mut skipped = Vec::new();
        let mut sendable = Vec::new();
        for (d, check) in batch.into_iter().zip(checks) {
            let Some(contact) = contacts.get(&d.contact_id.to_string()) else {
                skipped.push((d, "erased".to_string()));
                continue;
            };
            let request_opt = if d.origin == Origin::ConsentRequest.as_str() {
                match request_kind(&check) {
                    Ok(kind) => Some(kind),
                    Err(reason) => {
                        skipped.push((d, reason.to_string()));
                        continue;
                    }
                }
            } else {
                None
            };
            if request_opt.is_none() && !check.allowed {
                if check.reason == "withdrawn"
                    && let Some(h) = hashes.get(&d.id)
                {
                    // Withdrawals feed the suppression list: the address stays out of this
                    // purpose's mail even under another contact record.
                    inner.store.suppress(tenant_id, h, &d.purpose, "withdrawn").await?;
                }
                let reason = skip_reason(&check.reason).to_string();
                skipped.push((d, reason));
                continue;
            }
            let Some(h) = hashes.get(&d.id) else {
                skipped.push((d, "no_address".to_string()));
                continue;
            };
            if let Some((at, reason)) = suppressed.get(&(d.purpose.clone(), h.clone())) {
                // A purpose-scoped withdrawal is lifted by a later grant of that purpose.
                let since_opt = check.since.as_ref().and_then(|t| carnet_kit::grpc::from_timestamp("since", t).ok());
                let regranted = reason == "withdrawn" && check.allowed && since_opt.is_some_and(|since| since > *at);
                if regranted {
                    inner.store.lift(tenant_id, h, &d.purpose).await?;
                } else {
                    skipped.push((d, "suppressed".to_string()));
                    continue;
                }
            }
            sendable.push((d, request_opt, contact.clone()));
        }
        inner.store.mark_skipped(&skipped).await?;
        if sendable.is_empty() {
            return Ok(());
        }
        // The people's links, signed by the consent service in one call.
        let links = consent_client
            .issue_links_batch(pb_consent::IssueLinksBatchRequest {
                requests: sendable
                    .iter()
                    .map(|(d, request_opt, _)| pb_consent::IssueLinksRequest {
                        contact_id: d.contact_id.to_string(),
                        purpose: d.purpose.clone(),
                        withdraw_only: request_opt.is_none(),
                        offer: request_opt.is_some(),
                    })
                    .collect(),
            })
            .await
            .map_err(|s| peer_err("consent", s))?
            .into_inner()
            .responses;
        let purposes = self.purposes(tenant_id).await?;
        let mut outgoing = Vec::with_capacity(sendable.len());
        for ((d, request_opt, contact), links) in sendable.into_iter().zip(links) {
            match self.compose(&d, request_opt, &contact, &links, &purposes).await {
                Ok(message) => outgoing.push(Outgoing { delivery: d, message }),
                Err(e) => {
                    tracing::warn!(delivery_id = %d.id, code = e.code.as_str(), "mail could not be composed");
                    inner.store.mark_failed(&d, "compose_failed").await?;
                }
            }
        }
        // Each mail is sent and its outcome recorded in its own future, so the commits of some
        // overlap with the SMTP round trips of others.
        let hashes = &hashes;
        let results = futures::stream::iter(outgoing)
            .map(|o| async move {
                self.pace().await;
                let hand_over = async {
                    self.inner.store.mark_handed(&o.delivery, self.inner.settings.lease).await.map_err(|e| {
                        tracing::warn!(delivery_id = %o.delivery.id, code = e.code.as_str(), "hand-over not recorded");
                        SendError::Transient("the hand-over could not be recorded".into())
                    })
                };
                let res = self.inner.mailer.send(&o.message, &o.delivery.id.to_string(), hand_over).await;
                self.record(o.delivery, res, hashes).await
            })
            .buffer_unordered(inner.settings.concurrency);
        tokio::pin!(results);
        let mut first_err_opt = None;
        while let Some(res) = results.next().await {
            if let Err(e) = res {
                first_err_opt.get_or_insert(e);
            }
        }
        match first_err_opt {
            // The rows not recorded stay claimed and come back when their lease expires.
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records the outcome of one send.
    async fn record(
        &self,
        d: delivery::Model,
        res: Result<Outcome, SendError>,
        hashes: &HashMap<Uuid, String>,
    ) -> Result<(), ServiceError> {
        let inner = &self.inner;
        match res {
            Ok(outcome) => {
                if let Outcome::Unconfirmed(summary) = outcome {
                    tracing::warn!(delivery_id = %d.id, %summary, "relay did not confirm a written mail; kept as sent");
                }
                let next_opt = self.next_step(&d).await?;
                inner.store.mark_sent(&d, next_opt).await?;
                tracing::debug!(delivery_id = %d.id, "mail sent");
            }
            Err(SendError::Permanent(summary)) => {
                tracing::warn!(delivery_id = %d.id, %summary, "mail bounced");
                if let Some(h) = hashes.get(&d.id) {
                    inner.store.suppress(d.tenant_id, h, "*", "bounce").await?;
                }
                inner.store.mark_failed(&d, "bounced").await?;
            }
            Err(SendError::Transient(summary)) if (d.attempts as u32) < inner.settings.max_attempts => {
                let backoff = inner.settings.retry_base * 2u32.saturating_pow(d.attempts.max(1) as u32 - 1);
                tracing::info!(delivery_id = %d.id, %summary, attempts = d.attempts, "mail deferred");
                let due = chrono::Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default();
                inner.store.retry_later(&d, due).await?;
            }
            Err(SendError::Transient(summary)) => {
                tracing::warn!(delivery_id = %d.id, %summary, attempts = d.attempts, "mail failed for good");
                inner.store.mark_failed(&d, "delivery_failed").await?;
            }
        }
        Ok(())
    }

    /// The next step of a sequence after `d`, if there is one.
    async fn next_step(&self, d: &delivery::Model) -> Result<Option<NewDelivery>, ServiceError> {
        if d.origin != Origin::Sequence.as_str() {
            return Ok(None);
        }
        let steps = self.sequence_steps(d.tenant_id, d.origin_id).await?;
        let next = d.step as usize + 1;
        Ok(steps.get(next).map(|step| NewDelivery {
            origin: Origin::Sequence,
            origin_id: d.origin_id,
            step: next as u32,
            contact_id: d.contact_id,
            purpose: d.purpose.clone(),
            template_id: step.template_id,
            due_at: carnet_kit::db::now() + chrono::Duration::seconds(step.delay_seconds as i64),
            skip_reason_opt: None,
        }))
    }

    async fn sequence_steps(&self, tenant_id: Uuid, id: Uuid) -> Result<Arc<Vec<StepDef>>, ServiceError> {
        if let Some(steps) = self.inner.sequences.lock().await.get(&(tenant_id, id)) {
            return Ok(steps.clone());
        }
        let seq = self.inner.store.sequence(tenant_id, id).await?;
        let steps: Vec<StepDef> =
            serde_json::from_value(seq.steps).map_err(|_| ServiceError::internal("unreadable sequence steps"))?;
        let steps = Arc::new(steps);
        self.inner.sequences.lock().await.insert((tenant_id, id), steps.clone());
        Ok(steps)
    }

    async fn template(&self, tenant_id: Uuid, id: Uuid) -> Result<Arc<Parsed>, ServiceError> {
        if let Some(t) = self.inner.templates.lock().await.get(&(tenant_id, id)) {
            return Ok(t.clone());
        }
        let t = self.inner.store.template(tenant_id, id).await?;
        let parsed = Arc::new(Parsed::stored(&t.subject, &t.body)?);
        // A single message's own content is used once and is personal: not kept in memory.
        if t.subject_id.is_none() {
            self.inner.templates.lock().await.insert((tenant_id, id), parsed.clone());
        }
        Ok(parsed)
    }

    /// The tenant's purposes (description, current notice), cached briefly.
    async fn purposes(&self, tenant_id: Uuid) -> Result<Arc<HashMap<String, PurposeInfo>>, ServiceError> {
        if let Some((at, p)) = self.inner.purposes.lock().await.get(&tenant_id)
            && at.elapsed() < PURPOSES_TTL
        {
            return Ok(p.clone());
        }
        let list = self
            .inner
            .peers
            .consent(tenant_id, "")
            .list_purposes(pb_consent::ListPurposesRequest {})
            .await
            .map_err(|s| peer_err("consent", s))?
            .into_inner()
            .purposes;
        let map: HashMap<String, PurposeInfo> = list
            .into_iter()
            .map(|p| {
                let notice = p.notices.iter().find(|n| n.version == p.current_version).or(p.notices.last());
                let info = PurposeInfo {
                    description: p.description.clone(),
                    notice_version: p.current_version,
                    notice: notice.map(|n| n.text.clone()).unwrap_or_default(),
                };
                (p.key, info)
            })
            .collect();
        let map = Arc::new(map);
        self.inner.purposes.lock().await.insert(tenant_id, (Instant::now(), map.clone()));
        Ok(map)
    }

    /// Builds the mail of one delivery.
    async fn compose(
        &self,
        d: &delivery::Model,
        request_opt: Option<Request>,
        contact: &pb_contacts::Contact,
        links: &pb_consent::IssueLinksResponse,
        purposes: &HashMap<String, PurposeInfo>,
    ) -> Result<Message, ServiceError> {
        let s = &self.inner.settings;
        let base = &self.inner.public_url;
        let purpose = purposes.get(&d.purpose).cloned().unwrap_or(PurposeInfo {
            description: d.purpose.clone(),
            notice_version: 0,
            notice: String::new(),
        });
        let unsubscribe = format!("{base}/u/{}", links.withdraw_token);
        let (subject, mut body) = match request_opt {
            None => {
                let t = self.template(d.tenant_id, d.template_id).await?;
                let values = values_of(contact);
                (t.subject.render(&values), t.body.render(&values))
            }
            Some(Request::Confirm) if !links.confirm_token.is_empty() => (
                format!("Please confirm: {}", purpose.description),
                format!(
                    "You asked to receive: {}.\n\nWhat you agreed to (notice version {}):\n\n{}\n\n\
                     Confirm here: {base}/o/{}\n\nIf this was not you, ignore this mail: \
                     nothing more will be sent to you for this purpose.",
                    purpose.description, purpose.notice_version, purpose.notice, links.confirm_token
                ),
            ),
            Some(Request::Accept) if !links.accept_token.is_empty() => (
                format!("May we contact you about: {}?", purpose.description),
                format!(
                    "We would like your agreement for: {}.\n\nIf you agree to the following \
                     (notice version {}), open the link below:\n\n{}\n\n\
                     I agree: {base}/o/{}\n\nIf you do not agree, ignore this mail: nothing \
                     will change and we will not use your data for this purpose.",
                    purpose.description, links.notice_version, purpose.notice, links.accept_token
                ),
            ),
            Some(_) => return Err(ServiceError::internal("the consent state changed before the link was signed")),
        };
        body.push_str(&format!(
            "\n\n-- \nYou receive this e-mail for \"{}\" ({}).\nUnsubscribe from it at any time: {unsubscribe}\n",
            purpose.description, d.purpose
        ));
        let email = contact.email.as_deref().ok_or_else(|| ServiceError::internal("no address"))?;
        let to: Mailbox = email.parse().map_err(|_| ServiceError::internal("the stored address does not parse"))?;
        let header = |name: &'static str, value: String| HeaderValue::new(HeaderName::new_from_ascii_str(name), value);
        Message::builder()
            .from(s.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!("<{}@{}>", d.id, s.domain)))
            .raw_header(header("List-Unsubscribe", format!("<{unsubscribe}>")))
            .raw_header(header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".into()))
            .raw_header(header("X-Carnet-Purpose", d.purpose.clone()))
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|_| ServiceError::internal("the mail could not be built"))
    }

    /// Waits for this mail's slot under the configured send rate.
    async fn pace(&self) {
        let Some(interval) = self.inner.settings.pace_opt else { return };
        let slot = {
            let mut next = self.inner.next_slot.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Queues a started campaign's audience in the background (once per campaign per process).
    pub fn queue_campaign(&self, c: campaign::Model) {
        let this = self.clone();
        tokio::spawn(async move {
            if !this.inner.queuing.lock().await.insert(c.id) {
                return;
            }
            let started = Instant::now();
            let res = this.queue_audience(&c).await;
            this.inner.queuing.lock().await.remove(&c.id);
            match res {
                Ok(total) => {
                    tracing::info!(tenant_id = %c.tenant_id, campaign_id = %c.id, total, elapsed_ms = started.elapsed().as_millis() as u64, "campaign queued");
                    this.wake();
                }
                Err(e) => {
                    // Left in `queuing`: the next start of the dispatcher resumes it.
                    tracing::error!(tenant_id = %c.tenant_id, campaign_id = %c.id, code = e.code.as_str(), "campaign queuing failed");
                }
            }
        });
    }

    async fn queue_audience(&self, c: &campaign::Model) -> Result<u64, ServiceError> {
        let audience: AudienceDef =
            serde_json::from_value(c.audience.clone()).map_err(|_| ServiceError::internal("unreadable audience"))?;
        let mut total = 0;
        if !audience.contact_ids.is_empty() {
            for chunk in audience.contact_ids.chunks(CHECKS_PER_CALL) {
                total += self.queue_page(c, chunk).await?;
                self.wake();
            }
        } else {
            let mut client = self.inner.peers.contacts(c.tenant_id, "");
            let query = if audience.query.trim() == "*" { String::new() } else { audience.query.clone() };
            let mut cursor = String::new();
            let mut page_ids = Vec::new();
            loop {
                let page = client
                    .list_contacts(pb_contacts::ListContactsRequest {
                        query: query.clone(),
                        limit: AUDIENCE_PAGE,
                        cursor: cursor.clone(),
                    })
                    .await
                    .map_err(|s| peer_err("contacts", s))?
                    .into_inner();
                for contact in page.contacts {
                    if let Ok(id) = contact.id.parse::<Uuid>() {
                        page_ids.push(id);
                    }
                }
                if page_ids.len() >= CHECKS_PER_CALL || page.next_cursor.is_empty() {
                    total += self.queue_page(c, &page_ids).await?;
                    page_ids.clear();
                    self.wake();
                }
                if page.next_cursor.is_empty() {
                    break;
                }
                cursor = page.next_cursor;
            }
        }
        self.inner.store.set_campaign_status(c.tenant_id, c.id, "queuing", "sending").await?;
        Ok(total)
    }

    /// Consent-checks one page of a campaign's audience and writes its deliveries.
    async fn queue_page(&self, c: &campaign::Model, ids: &[Uuid]) -> Result<u64, ServiceError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let req = pb_consent::CheckBatchRequest {
            checks: ids
                .iter()
                .map(|id| pb_consent::CheckRequest { contact_id: id.to_string(), purpose: c.purpose.clone() })
                .collect(),
        };
        let checks = self
            .inner
            .peers
            .consent(c.tenant_id, "")
            .check_batch(req)
            .await
            .map_err(|s| peer_err("consent", s))?
            .into_inner()
            .results;
        let now = carnet_kit::db::now();
        let deliveries = ids
            .iter()
            .zip(checks)
            .map(|(id, check)| NewDelivery {
                origin: Origin::Campaign,
                origin_id: c.id,
                step: 0,
                contact_id: *id,
                purpose: c.purpose.clone(),
                template_id: c.template_id,
                due_at: now,
                skip_reason_opt: (!check.allowed).then(|| skip_reason(&check.reason).to_string()),
            })
            .collect();
        self.inner.store.insert_deliveries(c.tenant_id, &c.created_by, deliveries).await
    }
}

/// The template variables of a contact: its built-in and custom fields as text.
pub fn values_of(contact: &pb_contacts::Contact) -> HashMap<String, String> {
    use pb_contacts::field_value::Kind;
    let mut values = HashMap::new();
    for (key, value_opt) in [
        ("email", &contact.email),
        ("first_name", &contact.first_name),
        ("last_name", &contact.last_name),
        ("phone", &contact.phone),
    ] {
        if let Some(v) = value_opt {
            values.insert(key.to_string(), v.clone());
        }
    }
    for (key, value) in &contact.fields {
        let text = match &value.kind {
            Some(Kind::StringValue(s)) => s.clone(),
            Some(Kind::NumberValue(n)) => n.to_string(),
            Some(Kind::BoolValue(b)) => b.to_string(),
            None => continue,
        };
        values.insert(key.clone(), text);
    }
    values
}
