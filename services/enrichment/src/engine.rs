//! Running plugins on contacts: the switches, the field filter, the write-back through the
//! contacts service with provenance, and the run ledger.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument as _;
use uuid::Uuid;

use carnet_kit::audit::Entry;
use carnet_kit::{Caller, CallerSigner, ErrorCode, MeshKey, Permission, ServiceError};
use carnet_plugin_host::{Host, Manifest, Plugin, RunError};
use carnet_proto::common::v1 as pb_common;
use carnet_proto::consent::v1::consent_service_client::ConsentServiceClient;
use carnet_proto::contacts::v1 as pb_contacts;
use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;

use crate::entity::{plugin, run};
use crate::store::EnrichmentStore;

/// The principal of automatic runs.
pub const PRINCIPAL: &str = "service:enrichment";
/// The API of manual runs, as the audit trail names it.
pub const ENRICH_API: &str = "carnet.enrichment.v1.EnrichmentService/EnrichContact";

/// What started a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A contact changed (at the time given) and the tenant has auto-enrichment on.
    Auto(chrono::DateTime<chrono::Utc>),
    /// Someone asked for it (`POST /v1/contacts/{id}/enrich`).
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Auto(_) => "auto",
            Trigger::Manual => "manual",
        }
    }
}

/// A plugin ready to run: its stored row's identity and the compiled component.
struct Ready {
    name: String,
    version: String,
    profiling: bool,
    enabled: bool,
    plugin_opt: Option<Arc<Plugin>>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: EnrichmentStore,
    host: Host,
    /// Compiled components by (component hash, manifest hash): compiled once per process.
    loaded: Mutex<HashMap<(String, String), Arc<Plugin>>>,
    contacts: Channel,
    consent: Channel,
    mesh_key: MeshKey,
    profiling_purpose: String,
    max_component_bytes: usize,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A run's reason code for a host error (stable, machine-readable; the plugin's own text is
/// not kept).
pub fn reason_of(error: &RunError) -> &'static str {
    match error {
        RunError::Trap(_) => "trap",
        RunError::Timeout => "timeout",
        RunError::MemoryLimit => "memory_limit",
        RunError::StackOverflow => "stack_overflow",
        RunError::OutputTooLarge(_) => "output_too_large",
        RunError::UndeclaredWrite(_) => "undeclared_write",
        RunError::Malformed(_) => "malformed_output",
        RunError::Unsupported(_) => "unsupported",
        RunError::Unavailable(_) => "unavailable",
        RunError::Failed(_) => "failed",
        RunError::Closed => "shutting_down",
        #[allow(unreachable_patterns)]
        _ => "failed",
    }
}

/// A contact's values as plugins see them: text, keyed like the field policy.
pub fn contact_fields(contact: &pb_contacts::Contact) -> BTreeMap<String, String> {
    use pb_contacts::field_value::Kind;
    let mut fields = BTreeMap::new();
    for (key, value) in [
        ("email", &contact.email),
        ("first_name", &contact.first_name),
        ("last_name", &contact.last_name),
        ("phone", &contact.phone),
    ] {
        if let Some(v) = value {
            fields.insert(key.to_string(), v.clone());
        }
    }
    for (key, value) in &contact.fields {
        let text = match &value.kind {
            Some(Kind::StringValue(s)) => s.clone(),
            Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
            Some(Kind::NumberValue(n)) => n.to_string(),
            Some(Kind::BoolValue(b)) => b.to_string(),
            None => continue,
        };
        fields.insert(key.clone(), text);
    }
    fields
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: EnrichmentStore,
        host: Host,
        contacts: Channel,
        consent: Channel,
        mesh_key: MeshKey,
        profiling_purpose: String,
        max_component_bytes: usize,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                store,
                host,
                loaded: Mutex::new(HashMap::new()),
                contacts,
                consent,
                mesh_key,
                profiling_purpose,
                max_component_bytes,
            }),
        }
    }

    pub fn store(&self) -> &EnrichmentStore {
        &self.inner.store
    }

    fn signer(&self, tenant_id: Uuid, principal: &str, perms: &[Permission]) -> CallerSigner {
        CallerSigner::new(self.inner.mesh_key.clone(), Caller::new(tenant_id, principal, perms.iter().copied()))
    }

    /// A contacts client acting as `principal`, carrying the edge's request id (so the contacts
    /// service's audit entries of the write-back correlate with the run's).
    fn contacts(
        &self,
        tenant_id: Uuid,
        principal: &str,
        request_id: &str,
    ) -> ContactsServiceClient<InterceptedService<Channel, CallerSigner>> {
        let mut caller = Caller::new(tenant_id, principal, [Permission::ContactsRead, Permission::ContactsWrite]);
        caller.request_id = request_id.to_string();
        let signer = CallerSigner::new(self.inner.mesh_key.clone(), caller);
        ContactsServiceClient::with_interceptor(self.inner.contacts.clone(), signer)
    }

    /// Checks, compiles and stores a plugin. The component may be a core module with its
    /// component-type section (what `cargo build` leaves), which is lifted first.
    pub async fn install(
        &self,
        tenant_id: Uuid,
        stamp: &Entry,
        manifest_text: &str,
        component: &[u8],
        enabled_opt: Option<bool>,
    ) -> Result<plugin::Model, ServiceError> {
        if component.len() > self.inner.max_component_bytes {
            return Err(ServiceError::invalid_field(
                "component",
                format!("is {} bytes, more than the limit of {}", component.len(), self.inner.max_component_bytes),
            ));
        }
        if component.is_empty() {
            return Err(ServiceError::invalid_field("component", "is required (the .wasm file)"));
        }
        let manifest = Manifest::parse(manifest_text)
            .map_err(|e| ServiceError::invalid_field(format!("manifest.{}", e.field), e.message))?;
        let lifted = carnet_plugin_host::componentize(component)
            .map_err(|e| ServiceError::invalid_field("component", e.to_string()))?;
        let sha = sha256_hex(&lifted);
        // Compiling validates the component against the world; the result is kept.
        self.compiled(&manifest, manifest_text, &sha, &lifted).await?;
        let new = crate::store::NewPlugin {
            name: &manifest.name,
            version: &manifest.version,
            manifest: manifest_text,
            sha256: &sha,
            component: &lifted,
            enabled_opt,
        };
        self.inner.store.install(tenant_id, stamp, new).await
    }

    fn cached(&self, sha: &str, manifest_text: &str) -> (Option<Arc<Plugin>>, (String, String)) {
        let key = (sha.to_string(), sha256_hex(manifest_text.as_bytes()));
        (self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned(), key)
    }

    /// The compiled plugin for a component, compiling it on first use in this process.
    async fn compiled(
        &self,
        manifest: &Manifest,
        manifest_text: &str,
        sha: &str,
        component: &[u8],
    ) -> Result<Arc<Plugin>, ServiceError> {
        let (found, key) = self.cached(sha, manifest_text);
        if let Some(found) = found {
            return Ok(found);
        }
        let (inner, manifest, component) = (self.inner.clone(), manifest.clone(), component.to_vec());
        let plugin = tokio::task::spawn_blocking(move || inner.host.load(manifest, &component))
            .await
            .map_err(|_| ServiceError::internal("plugin compilation stopped"))?
            .map_err(|e| ServiceError::invalid_field("component", e.to_string()))?;
        let plugin = Arc::new(plugin);
        self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(key, plugin.clone());
        Ok(plugin)
    }

    /// The tenant's plugins in run order: enrichers before profilers (a score may use what an
    /// enricher found), then by name.
    async fn ready(&self, tenant_id: Uuid) -> Result<Vec<Ready>, ServiceError> {
        let mut out = Vec::new();
        for row in self.inner.store.plugins(tenant_id).await? {
            let manifest = Manifest::parse(&row.manifest)
                .map_err(|_| ServiceError::internal("a stored plugin manifest is unreadable"))?;
            let plugin_opt = match (row.enabled, self.cached(&row.sha256, &row.manifest).0) {
                (false, _) => None,
                (true, Some(ready)) => Some(ready),
                (true, None) => {
                    // First use in this process (a restart, another replica): read and compile.
                    let component = self.inner.store.component(tenant_id, &row.name, &row.sha256).await?;
                    Some(self.compiled(&manifest, &row.manifest, &row.sha256, &component).await?)
                }
            };
            out.push(Ready {
                name: row.name,
                version: row.version,
                profiling: manifest.profiling,
                enabled: row.enabled,
                plugin_opt,
            });
        }
        out.sort_by(|a, b| (a.profiling, &a.name).cmp(&(b.profiling, &b.name)));
        Ok(out)
    }

    /// Runs the tenant's plugins on one contact, as the switches allow, and records the runs.
    /// Returns one run per plugin considered (automatic runs leave out plugins the tenant
    /// switched off).
    pub async fn enrich(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        trigger: Trigger,
        principal: &str,
    ) -> Result<Vec<run::Model>, ServiceError> {
        let api = match trigger {
            Trigger::Auto(_) => "bus",
            Trigger::Manual => ENRICH_API,
        };
        let stamp = Entry { actor: principal.to_string(), api: api.to_string(), ..Entry::default() };
        self.enrich_as(tenant_id, contact_id, trigger, &stamp).await
    }

    /// [`Engine::enrich`] for the caller of `stamp` (its principal acts; runs that wrote values
    /// are audited under it).
    pub async fn enrich_as(
        &self,
        tenant_id: Uuid,
        contact_id: Uuid,
        trigger: Trigger,
        stamp: &Entry,
    ) -> Result<Vec<run::Model>, ServiceError> {
        let principal = stamp.actor.as_str();
        let settings = self.inner.store.settings(tenant_id).await?;
        if let Trigger::Auto(changed_at) = trigger {
            // Off, or switched on only after this change: nothing runs on its own.
            match settings.auto_since_opt {
                Some(since) if settings.auto_enrichment && changed_at >= since => {}
                _ => return Ok(Vec::new()),
            }
        }
        let plugins = self.ready(tenant_id).await?;
        if plugins.is_empty() {
            return Ok(Vec::new());
        }
        let mut contacts = self.contacts(tenant_id, principal, &stamp.request_id);
        let mut contact =
            match contacts.get_contact(pb_contacts::GetContactRequest { id: contact_id.to_string() }).await {
                Ok(found) => found.into_inner(),
                Err(status) => return Err(ServiceError::from_status(&status)),
            };
        let policy = contacts
            .get_field_policy(pb_contacts::GetFieldPolicyRequest {})
            .await
            .map_err(|s| ServiceError::from_status(&s))?
            .into_inner();
        let types: HashMap<String, i32> = policy.fields.iter().map(|f| (f.key.clone(), f.r#type)).collect();
        let person_reason_opt = if contact.objection.as_ref().is_some_and(|f| f.active) {
            Some("objected")
        } else if contact.restriction.as_ref().is_some_and(|f| f.active) {
            Some("restricted")
        } else {
            None
        };
        let mut profiling_basis_opt: Option<bool> = None;
        let mut runs = Vec::new();
        for ready in plugins {
            let skip = |reason: &str| run_row(tenant_id, contact_id, &ready, trigger, "skipped", reason, &[], &[], 0);
            if !ready.enabled {
                if matches!(trigger, Trigger::Manual) {
                    runs.push(skip("plugin_disabled"));
                }
                continue;
            }
            if ready.profiling && !settings.profiling_allowed {
                if matches!(trigger, Trigger::Manual) {
                    runs.push(skip("profiling_off"));
                }
                continue;
            }
            if let Some(reason) = person_reason_opt {
                runs.push(skip(reason));
                continue;
            }
            if ready.profiling {
                let allowed = match profiling_basis_opt {
                    Some(allowed) => allowed,
                    None => {
                        let allowed = self.profiling_basis(tenant_id, contact_id).await?;
                        profiling_basis_opt = Some(allowed);
                        allowed
                    }
                };
                if !allowed {
                    runs.push(skip("no_profiling_basis"));
                    continue;
                }
            }
            let plugin = ready.plugin_opt.clone().expect("enabled plugins are compiled");
            let row =
                self.run_one(tenant_id, &mut contacts, &mut contact, &types, &ready, plugin, trigger, principal).await;
            runs.push(row);
        }
        self.inner.store.record_runs(runs.clone(), stamp).await?;
        Ok(runs)
    }

    /// Whether the person has consent (or another lawful basis) for the profiling purpose.
    async fn profiling_basis(&self, tenant_id: Uuid, contact_id: Uuid) -> Result<bool, ServiceError> {
        let signer = self.signer(tenant_id, PRINCIPAL, &[Permission::ContactsRead]);
        let mut consent = ConsentServiceClient::with_interceptor(self.inner.consent.clone(), signer);
        let check = carnet_proto::consent::v1::CheckRequest {
            contact_id: contact_id.to_string(),
            purpose: self.inner.profiling_purpose.clone(),
        };
        let result = consent.check(check).await.map_err(|s| ServiceError::from_status(&s))?.into_inner();
        Ok(result.allowed)
    }

    /// Runs one plugin and writes what it found back through contacts. A failure of the plugin
    /// or of the write is the run's outcome, never the caller's error: other plugins go on.
    #[allow(clippy::too_many_arguments)]
    async fn run_one(
        &self,
        tenant_id: Uuid,
        contacts: &mut ContactsServiceClient<InterceptedService<Channel, CallerSigner>>,
        contact: &mut pb_contacts::Contact,
        types: &HashMap<String, i32>,
        ready: &Ready,
        plugin: Arc<Plugin>,
        trigger: Trigger,
        principal: &str,
    ) -> run::Model {
        let contact_id = contact.id.parse::<Uuid>().unwrap_or_default();
        let started = Instant::now();
        let fields = contact_fields(contact);
        let inner = self.inner.clone();
        let span = tracing::info_span!("enrichment.run", plugin = %ready.name, version = %ready.version);
        let outcome = tokio::task::spawn_blocking(move || inner.host.run(&plugin, &fields)).instrument(span).await;
        let row = |outcome: &str, reason: &str, read: &[String], written: &[String]| {
            let us = started.elapsed().as_micros() as u64;
            carnet_kit::metrics::record_plugin_run(&ready.name, &ready.version, outcome, reason, us as f64 / 1e6);
            run_row(tenant_id, contact_id, ready, trigger, outcome, reason, read, written, us)
        };
        let (updates, report) = match outcome {
            Err(_) => return row("failed", "trap", &[], &[]),
            Ok(Err(RunError::Unsupported(_))) => return row("declined", "unsupported", &[], &[]),
            Ok(Err(e)) => {
                tracing::warn!(plugin = %ready.name, version = %ready.version, %contact_id, reason = reason_of(&e), "plugin run failed");
                return row("failed", reason_of(&e), &[], &[]);
            }
            Ok(Ok(done)) => done,
        };
        // Values a person entered or rectified stay theirs: a plugin fills empty fields and
        // refreshes its own (enrichment-sourced) values only.
        let current = contact_fields(contact);
        let enrichment = pb_common::SourceChannel::Enrichment as i32;
        let mut request = pb_contacts::UpdateContactRequest {
            id: contact.id.clone(),
            expected_version: Some(contact.version),
            source: Some(pb_common::Source {
                channel: enrichment,
                detail: format!("{}@{}", ready.name, ready.version),
                actor: principal.to_string(),
                collected_at: None,
            }),
            ..Default::default()
        };
        let mut written = Vec::new();
        for (key, value) in updates {
            let owned_by_plugin = contact.field_sources.get(&key).is_some_and(|s| s.channel == enrichment);
            match current.get(&key) {
                Some(v) if *v == value => continue,
                Some(_) if !owned_by_plugin => continue,
                _ => {}
            }
            match key.as_str() {
                "email" => request.email = Some(value),
                "first_name" => request.first_name = Some(value),
                "last_name" => request.last_name = Some(value),
                "phone" => request.phone = Some(value),
                _ => {
                    let Some(typed) = typed_value(types.get(&key).copied(), &value) else {
                        return row("failed", "invalid_value", &report.read, &[]);
                    };
                    request.fields.insert(key.clone(), typed);
                }
            }
            written.push(key);
        }
        if written.is_empty() {
            return row("unchanged", "", &report.read, &[]);
        }
        match contacts.update_contact(request).await {
            Ok(updated) => {
                *contact = updated.into_inner();
                row("written", "", &report.read, &written)
            }
            Err(status) => {
                let reason = match ServiceError::from_status(&status).code {
                    ErrorCode::InvalidArgument => "invalid_value",
                    ErrorCode::Conflict => "conflict",
                    ErrorCode::AlreadyExists => "conflict",
                    ErrorCode::NotFound => "contact_gone",
                    _ => "write_failed",
                };
                row("failed", reason, &report.read, &[])
            }
        }
    }
}

/// A plugin's text as the field's type in the policy; `None` when it does not parse (an
/// unknown key goes as text and the contacts service refuses it).
fn typed_value(type_opt: Option<i32>, value: &str) -> Option<pb_contacts::FieldValue> {
    use pb_contacts::FieldType;
    use pb_contacts::field_value::Kind;
    let kind = match type_opt.and_then(|t| FieldType::try_from(t).ok()) {
        Some(FieldType::Number) => Kind::NumberValue(value.trim().parse::<f64>().ok().filter(|n| n.is_finite())?),
        Some(FieldType::Boolean) => Kind::BoolValue(value.trim().parse::<bool>().ok()?),
        _ => Kind::StringValue(value.to_string()),
    };
    Some(pb_contacts::FieldValue { kind: Some(kind) })
}

#[allow(clippy::too_many_arguments)]
fn run_row(
    tenant_id: Uuid,
    contact_id: Uuid,
    ready: &Ready,
    trigger: Trigger,
    outcome: &str,
    reason: &str,
    read: &[String],
    written: &[String],
    duration_us: u64,
) -> run::Model {
    run::Model {
        tenant_id,
        id: Uuid::now_v7(),
        contact_id,
        plugin: ready.name.clone(),
        version: ready.version.clone(),
        trigger: trigger.as_str().to_string(),
        outcome: outcome.to_string(),
        reason: reason.to_string(),
        fields_read: serde_json::json!(read),
        fields_written: serde_json::json!(written),
        duration_us: duration_us as i64,
        at: carnet_kit::db::now(),
    }
}
