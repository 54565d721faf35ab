//! The orchestration: access requests fan out `ExportSubject` to every participant in parallel
//! (deadline and retries per call) and assemble one document; erasure confirmations complete
//! requests; participants that have not confirmed are asked again with backoff; every service's
//! `audit.recorded` events are chained into the tenant's audit trail.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tonic::transport::Channel;
use uuid::Uuid;

use carnet_kit::{Caller, CallerSigner, MeshKey, Permission, ServiceError};
use carnet_proto::common::v1::{ExportSubjectRequest, ExportSubjectResponse};
use carnet_proto::events::v1::{Event, event::Payload};

use crate::audit_store::NewEntry;
use crate::entity::request;
use crate::store::DsarStore;
use crate::{DsarConfig, Keys};

/// Attempts per participant call of one access round.
const CALL_ATTEMPTS: u32 = 3;

/// The gRPC path of `method` on participant `service` (`/carnet.contacts.v1.ContactsService/…`):
/// every Carnet service follows this naming, so a participant added later needs no code here.
pub fn method_path(service: &str, method: &str) -> String {
    let mut chars = service.chars();
    let title: String = chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars).collect();
    format!("/carnet.{service}.v1.{title}Service/{method}")
}

struct Inner {
    store: DsarStore,
    keys: Keys,
    cfg: DsarConfig,
    channels: BTreeMap<String, Channel>,
    mesh_key: MeshKey,
    running: Mutex<HashSet<Uuid>>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    pub fn new(
        store: DsarStore,
        keys: Keys,
        cfg: DsarConfig,
        channels: BTreeMap<String, Channel>,
        mesh_key: MeshKey,
    ) -> Self {
        Engine { inner: Arc::new(Inner { store, keys, cfg, channels, mesh_key, running: Mutex::new(HashSet::new()) }) }
    }

    pub fn store(&self) -> &DsarStore {
        &self.inner.store
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn config(&self) -> &DsarConfig {
        &self.inner.cfg
    }

    /// The key signing this service's calls to the participants.
    pub fn mesh_key(&self) -> &MeshKey {
        &self.inner.mesh_key
    }

    pub fn channel(&self, service: &str) -> Option<Channel> {
        self.inner.channels.get(service).cloned()
    }

    /// Calls `ExportSubject` on one participant as `service:dsar`.
    async fn export_from(
        &self,
        tenant_id: Uuid,
        service: &str,
        subject_id: Uuid,
    ) -> Result<ExportSubjectResponse, ServiceError> {
        let req = ExportSubjectRequest { subject_id: subject_id.to_string() };
        self.call(tenant_id, service, "ExportSubject", req, &[Permission::DsarManage]).await
    }

    /// Calls `method` of `service` as `service:dsar` with `permissions`, whatever the service:
    /// every Carnet service follows the same naming ([`method_path`]).
    pub async fn call<Req, Resp>(
        &self,
        tenant_id: Uuid,
        service: &str,
        method: &str,
        message: Req,
        permissions: &[Permission],
    ) -> Result<Resp, ServiceError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let channel = self
            .inner
            .channels
            .get(service)
            .cloned()
            .ok_or_else(|| ServiceError::internal(format!("no channel to participant {service}")))?;
        let caller = Caller::new(tenant_id, "service:dsar", permissions.iter().copied());
        let mut request = tonic::Request::new(message);
        CallerSigner::new(self.inner.mesh_key.clone(), caller).apply(&mut request);
        request.set_timeout(Duration::from_millis(self.inner.cfg.call_timeout_ms));
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(256 * 1024 * 1024);
        grpc.ready()
            .await
            .map_err(|_| ServiceError::new(carnet_kit::ErrorCode::Unavailable, format!("{service} is unavailable")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::try_from(method_path(service, method))
            .map_err(|_| ServiceError::internal("bad participant name"))?;
        let codec: tonic_prost::ProstCodec<Req, Resp> = Default::default();
        grpc.unary(request, path, codec).await.map(|r| r.into_inner()).map_err(|s| ServiceError::from_status(&s))
    }

    /// Runs an access request in the background (once per request per process).
    pub fn start_access(&self, req: request::Model) {
        let this = self.clone();
        tokio::spawn(async move {
            if !this.inner.running.lock().await.insert(req.id) {
                return;
            }
            let res = this.access(&req).await;
            this.inner.running.lock().await.remove(&req.id);
            if let Err(e) = res {
                tracing::warn!(tenant_id = %req.tenant_id, request_id = %req.id, code = e.code.as_str(), "access request not complete yet; retried later");
            }
        });
    }

    async fn access(&self, req: &request::Model) -> Result<(), ServiceError> {
        let participants = self.inner.cfg.participants.clone();
        let calls = participants.iter().map(|service| async move {
            let mut last_err = None;
            for attempt in 0..CALL_ATTEMPTS {
                match self.export_from(req.tenant_id, service, req.subject_id).await {
                    Ok(r) => return Ok((service.clone(), r)),
                    Err(e) => {
                        let _ = self.inner.store.note_attempt(req.tenant_id, req.id, service).await;
                        last_err = Some(e);
                        tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
                    }
                }
            }
            Err((service.clone(), last_err.expect("an attempt ran")))
        });
        let mut parts = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for res in futures::future::join_all(calls).await {
            match res {
                Ok((service, r)) => {
                    let doc: serde_json::Value =
                        serde_json::from_slice(&r.document_json).unwrap_or(serde_json::Value::Null);
                    counts.insert(service.clone(), r.record_count);
                    parts.insert(service, doc);
                }
                Err((service, e)) => {
                    return Err(ServiceError::new(e.code, format!("participant {service}: {}", e.message)));
                }
            }
        }
        let settings_opt = self.inner.store.retention_settings(req.tenant_id).await?;
        let document = assemble(req, &parts, &counts, crate::retention::statement(settings_opt.as_ref()));
        let plain = serde_json::to_vec_pretty(&document).map_err(|_| ServiceError::internal("export failed"))?;
        let (nonce, sealed) = self.inner.keys.seal(req.tenant_id, req.id, &plain);
        let expires = carnet_kit::db::now() + chrono::Duration::hours(self.inner.cfg.export_ttl_hours as i64);
        self.inner.store.complete_access(req, nonce, sealed, expires, &counts).await?;
        tracing::info!(tenant_id = %req.tenant_id, request_id = %req.id, "access export ready");
        Ok(())
    }

    /// Handles `erasure.confirmed`, `audit.recorded` and `consent.changed` (retention's erasure
    /// on withdrawal).
    pub async fn on_event(&self, event: Event) -> Result<(), String> {
        if matches!(event.payload, Some(Payload::AuditRecorded(_))) {
            return self.on_audit(event).await;
        }
        if let Some(Payload::ConsentChanged(c)) = &event.payload {
            if c.status != "withdrawn" {
                return Ok(());
            }
            let (Ok(tenant_id), Ok(contact_id)) = (event.tenant_id.parse(), c.contact_id.parse()) else {
                return Ok(());
            };
            let at = carnet_kit::outbox::occurred_at(&event);
            return self
                .on_consent_changed(tenant_id, contact_id, at)
                .await
                .map_err(|e| format!("{}: {}", e.code, e.message));
        }
        let Some(Payload::ErasureConfirmed(c)) = event.payload else { return Ok(()) };
        let tenant_id: Uuid = event.tenant_id.parse().map_err(|_| "bad tenant id".to_string())?;
        let request_id: Uuid = c.request_id.parse().map_err(|_| "bad request id".to_string())?;
        let removed: BTreeMap<String, u64> = c.removed.into_iter().collect();
        match self.inner.store.confirm(tenant_id, request_id, &c.service, removed).await {
            Ok(Some(confirmed)) => {
                let lag = confirmed.lag.num_milliseconds().max(0) as f64 / 1000.0;
                carnet_kit::metrics::record_erasure_lag(&c.service, lag);
                tracing::info!(%tenant_id, %request_id, service = %c.service, completed = confirmed.completed, "erasure confirmed");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) if e.code == carnet_kit::ErrorCode::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {}", e.code, e.message)),
        }
    }

    /// Chains one `audit.recorded` into its tenant's trail (once per event id).
    async fn on_audit(&self, event: Event) -> Result<(), String> {
        let occurred_at = carnet_kit::outbox::occurred_at(&event);
        let Some(Payload::AuditRecorded(a)) = event.payload else { return Ok(()) };
        let (Ok(tenant_id), Ok(event_id)) = (event.tenant_id.parse::<Uuid>(), event.id.parse::<Uuid>()) else {
            // Without an id it could not be stored once only; no service writes such an event.
            tracing::error!(event_id = %event.id, "audit event without a valid tenant or id dropped");
            return Ok(());
        };
        let entry = NewEntry {
            event_id,
            occurred_at,
            service: clean(a.service),
            actor: clean(a.actor),
            action: clean(a.action),
            record_type: clean(a.record_type),
            record_id: clean(a.record_id),
            subject_id: clean(a.subject_id),
            api: clean(a.api),
            request_id: clean(a.request_id),
            fields: a.fields.into_iter().map(clean).collect(),
        };
        match self.inner.store.append_audit(tenant_id, &entry).await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{}: {}", e.code, e.message)),
        }
    }

    /// Runs until `shutdown`: asks again participants that have not confirmed, and resumes
    /// access requests left open (after a restart, or a participant that was down).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let base = chrono::Duration::milliseconds(self.inner.cfg.retry_base_ms as i64);
        let max = chrono::Duration::milliseconds(self.inner.cfg.retry_max_ms as i64);
        let tick = Duration::from_millis((self.inner.cfg.retry_base_ms / 2).clamp(50, 5_000));
        let mut rounds: u64 = 0;
        let mut retention = crate::retention::Schedule::new(self.inner.cfg.retention_interval_ms);
        loop {
            if retention.due() {
                let this = self.clone();
                tokio::spawn(async move { this.sweep_retention().await });
            }
            if let Err(e) = self.inner.store.republish_due(base, max).await {
                tracing::warn!(code = e.code.as_str(), "re-publishing erasures failed");
            }
            if rounds.is_multiple_of(10) {
                match self.inner.store.open_counts().await {
                    Ok((open, overdue)) => {
                        carnet_kit::metrics::set_gauge("carnet.dsar.open", "", open as i64);
                        carnet_kit::metrics::set_gauge("carnet.dsar.overdue", "", overdue as i64);
                    }
                    Err(e) => tracing::warn!(code = e.code.as_str(), "cannot count open requests"),
                }
            }
            // Open access requests are retried every few rounds.
            if rounds.is_multiple_of(10) {
                match self.inner.store.open_access_requests().await {
                    Ok(reqs) => reqs.into_iter().for_each(|r| self.start_access(r)),
                    Err(e) => tracing::warn!(code = e.code.as_str(), "cannot list open access requests"),
                }
            }
            rounds += 1;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }
}

/// Longest value an audit entry keeps (ids, names and keys are far shorter).
const MAX_AUDIT_CHARS: usize = 500;

/// An audit value as the chain stores it: at most [`MAX_AUDIT_CHARS`], without control
/// characters (PostgreSQL refuses NUL in text). An event that could never be stored would
/// otherwise hold up its service's outbox forever.
fn clean(value: String) -> String {
    if value.len() <= MAX_AUDIT_CHARS && !value.chars().any(char::is_control) {
        return value;
    }
    value.chars().take(MAX_AUDIT_CHARS).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

/// The access document: the services' data plus the Art. 15 facts, with a readable summary.
fn assemble(
    req: &request::Model,
    parts: &BTreeMap<String, serde_json::Value>,
    counts: &BTreeMap<String, u64>,
    retention: serde_json::Value,
) -> serde_json::Value {
    let contacts = parts.get("contacts").cloned().unwrap_or_default();
    let consent = parts.get("consent").cloned().unwrap_or_default();
    let purposes: Vec<serde_json::Value> = consent["consents"]
        .as_array()
        .map(|states| {
            states
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "purpose": s["purpose"], "status": s["status"], "lawful_basis": s["lawful_basis"],
                        "notice_version": s["notice_version"], "since": s["since"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let categories = contacts["data_categories"].clone();
    // Where the data came from: the record's source, and the sources of single values added
    // later (enrichment plugins).
    let mut sources = vec![contacts["contact"]["source"].clone()];
    if let Some(by_field) = contacts["contact"]["field_sources"].as_object() {
        for (field, source) in by_field {
            let mut entry = source.clone();
            entry["field"] = serde_json::json!(field);
            sources.push(entry);
        }
    }
    // Plugins that processed the person are recipients too; the profiling ones are listed with
    // their logic (what they read and write, for which purpose), Art. 15(1)(h).
    let plugins = parts.get("enrichment").and_then(|e| e["plugins"].as_array().cloned()).unwrap_or_default();
    let plugin_id = |p: &serde_json::Value| {
        format!("plugin {}@{}", p["name"].as_str().unwrap_or_default(), p["version"].as_str().unwrap_or_default())
    };
    let mut recipients: Vec<String> = parts.keys().cloned().collect();
    recipients.extend(plugins.iter().map(plugin_id));
    let automated: Vec<serde_json::Value> = plugins
        .iter()
        .filter(|p| p["profiling"] == true)
        .map(|p| {
            serde_json::json!({
                "kind": "profiling", "plugin": plugin_id(p), "purposes": p["purposes"],
                "reads": p["reads"], "writes": p["writes"],
                "logic": "a sandboxed scoring plugin computes the written fields from the read fields only; \
                          no decision with legal or similarly significant effect is taken by it",
            })
        })
        .collect();
    let total: u64 = counts.values().sum();
    let summary = format!(
        "This document holds everything {} services keep about you ({} records): {}. \
         It lists the purposes your data is used for and on which legal basis, the categories of \
         data, where the data came from, who received it, how long it is kept, and whether any \
         automated decision was made about you.",
        parts.len(),
        total,
        counts.iter().map(|(s, n)| format!("{s}: {n}")).collect::<Vec<_>>().join(", ")
    );
    serde_json::json!({
        "schema_version": crate::EXPORT_SCHEMA_VERSION,
        "request_id": req.id,
        "subject_id": req.subject_id,
        "generated_at": carnet_kit::db::now(),
        "summary": summary,
        "article_15": {
            "purposes": purposes,
            "data_categories": categories,
            "sources": sources,
            "recipients": recipients,
            "retention": retention,
            "automated_decisions": automated,
        },
        "services": parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_plugins_are_recipients_and_profiling_plugins_automated_processing() {
        let now = carnet_kit::db::now();
        let req = request::Model {
            tenant_id: uuid::Uuid::now_v7(),
            id: uuid::Uuid::now_v7(),
            kind: "access".into(),
            subject_id: uuid::Uuid::now_v7(),
            status: "in_progress".into(),
            verification: None,
            received_at: now,
            due_at: now,
            extended: false,
            extension_reason: None,
            completed_at: None,
            rejection_reason: None,
            details: serde_json::json!({}),
            recipients: serde_json::json!([]),
            export_expires_at: None,
            created_by: "key:x".into(),
        };
        let parts: BTreeMap<String, serde_json::Value> = [
            (
                "contacts".to_string(),
                serde_json::json!({"contact": {"source": {"channel": "api"},
                    "field_sources": {"lead_score": {"channel": "enrichment", "detail": "lead-score@1.0.0"}}}}),
            ),
            (
                "enrichment".to_string(),
                serde_json::json!({"plugins": [
                    {"name": "company-from-domain", "version": "1.0.0", "profiling": false},
                    {"name": "lead-score", "version": "1.0.0", "profiling": true, "purposes": ["profiling"],
                     "reads": ["company"], "writes": ["lead_score"]},
                ]}),
            ),
        ]
        .into();
        let doc = assemble(&req, &parts, &BTreeMap::new(), crate::retention::statement(None));
        let facts = &doc["article_15"];
        assert_eq!(
            facts["recipients"],
            serde_json::json!([
                "contacts",
                "enrichment",
                "plugin company-from-domain@1.0.0",
                "plugin lead-score@1.0.0"
            ])
        );
        assert_eq!(facts["automated_decisions"].as_array().unwrap().len(), 1);
        assert_eq!(facts["automated_decisions"][0]["plugin"], "plugin lead-score@1.0.0");
        assert_eq!(facts["sources"][1]["field"], "lead_score");
        assert_eq!(facts["sources"][1]["detail"], "lead-score@1.0.0");
    }

    #[test]
    fn test_audit_values_are_capped_and_free_of_control_characters() {
        assert_eq!(clean("key:abc".into()), "key:abc");
        assert_eq!(clean("a\0b\nc".into()), "a\u{fffd}b\u{fffd}c");
        assert_eq!(clean("x".repeat(2_000)).chars().count(), MAX_AUDIT_CHARS);
    }

    #[test]
    fn test_method_paths_follow_the_service_naming() {
        assert_eq!(method_path("contacts", "ExportSubject"), "/carnet.contacts.v1.ContactsService/ExportSubject");
        assert_eq!(method_path("comms", "ExportSubject"), "/carnet.comms.v1.CommsService/ExportSubject");
    }
}
