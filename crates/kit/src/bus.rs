//! The event bus: `carnet.events.v1.Event`s on subjects `carnet.<tenant>.<kind>`, published by
//! each service's outbox relay and consumed by durable, idempotent handlers.
//!
//! Two implementations behind [`EventBus`]:
//! - [`EmbeddedBus`] (monolith): publishing runs every matching handler of this process and
//!   succeeds only when all of them did; the outbox row stays pending until then, so the outbox
//!   is the durable queue and a crash re-delivers.
//! - [`NatsBus`] (split mode): JetStream stream `CARNET` (file storage) over `carnet.>`, one durable
//!   pull consumer per service with explicit acks, the event id as `Nats-Msg-Id` (the server drops
//!   a re-publish inside its duplicate window), the trace context in the message headers. A
//!   failed handler is redelivered after a delay.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::RwLock;
use tokio::task::JoinHandle;

use carnet_proto::events::v1::Event;

/// The stream every Carnet event goes to.
pub const STREAM: &str = "CARNET";

/// Returns the subject of an event kind in a tenant.
pub fn subject(tenant_id: &str, kind: &str) -> String {
    format!("carnet.{tenant_id}.{kind}")
}

/// The kind (`erasure.requested`) of a subject `carnet.<tenant>.<kind>`.
pub fn kind_of_subject(subject: &str) -> &str {
    subject.splitn(3, '.').nth(2).unwrap_or("")
}

#[derive(Debug, thiserror::Error)]
#[error("event bus: {0}")]
pub struct BusError(pub String);

/// One event on its way out: subject, id (de-duplication), headers (trace context), payload.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub subject: String,
    pub id: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// The envelope of an encoded `Event` whose kind is `kind`.
    pub fn of(event_bytes: Vec<u8>, kind: &str) -> Result<Outgoing, BusError> {
        let event = Event::decode(event_bytes.as_slice()).map_err(|e| BusError(format!("undecodable event: {e}")))?;
        Ok(Outgoing {
            subject: subject(&event.tenant_id, kind),
            id: event.id.clone(),
            headers: event.trace_context.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            payload: event_bytes,
        })
    }
}

/// What a handler returns: `Err` asks for a redelivery later (the error text is logged; ids only).
pub type HandlerResult = Result<(), String>;
/// A consumer's handler of one decoded event.
pub type Handler = Arc<dyn Fn(Event) -> Pin<Box<dyn Future<Output = HandlerResult> + Send>> + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |e| Box::pin(f(e)))
}

/// A durable consumer: its name (one per service) and the event kinds it wants.
#[derive(Clone)]
pub struct Consumer {
    pub durable: String,
    pub kinds: Vec<String>,
    pub handler: Handler,
}

#[async_trait::async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes one event; `Ok` once it is durably accepted (or, embedded, handled).
    async fn publish(&self, event: &Outgoing) -> Result<(), BusError>;
    /// Starts a durable consumer; it runs until the bus is closed.
    async fn consume(&self, consumer: Consumer) -> Result<(), BusError>;
    /// Stops the consumers.
    async fn close(&self);
}

/// The in-process bus of `carnet up`.
#[derive(Clone, Default)]
pub struct EmbeddedBus {
    consumers: Arc<RwLock<Vec<Consumer>>>,
}

impl EmbeddedBus {
    pub fn new() -> Self {
        EmbeddedBus::default()
    }
}

#[async_trait::async_trait]
impl EventBus for EmbeddedBus {
    async fn publish(&self, event: &Outgoing) -> Result<(), BusError> {
        let kind = kind_of_subject(&event.subject);
        let decoded = Event::decode(event.payload.as_slice()).map_err(|e| BusError(format!("undecodable: {e}")))?;
        let consumers: Vec<Consumer> =
            self.consumers.read().await.iter().filter(|c| c.kinds.iter().any(|k| k == kind)).cloned().collect();
        for c in consumers {
            let span = crate::telemetry::event_span(kind, &c.durable, &decoded.id, &decoded.trace_context);
            tracing::Instrument::instrument((c.handler)(decoded.clone()), span)
                .await
                .map_err(|e| BusError(format!("consumer {} failed on {kind}: {e}", c.durable)))?;
        }
        Ok(())
    }

    async fn consume(&self, consumer: Consumer) -> Result<(), BusError> {
        self.consumers.write().await.push(consumer);
        Ok(())
    }

    async fn close(&self) {
        self.consumers.write().await.clear();
    }
}

/// NATS JetStream.
pub struct NatsBus {
    js: async_nats::jetstream::Context,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    redeliver_after: Duration,
}

impl NatsBus {
    /// Connects to `url` and makes sure the stream exists.
    pub async fn connect(url: &str) -> Result<NatsBus, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("carnet")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| BusError(format!("cannot connect to NATS: {e}")))?;
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: STREAM.to_string(),
            subjects: vec!["carnet.>".to_string()],
            storage: async_nats::jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .map_err(|e| BusError(format!("cannot create the stream {STREAM}: {e}")))?;
        Ok(NatsBus { js, tasks: std::sync::Mutex::new(Vec::new()), redeliver_after: Duration::from_secs(2) })
    }
}

#[async_trait::async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: &Outgoing) -> Result<(), BusError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.as_str());
        for (k, v) in &event.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(event.subject.clone(), headers, event.payload.clone().into())
            .await
            .map_err(|e| BusError(format!("publish failed: {e}")))?;
        ack.await.map_err(|e| BusError(format!("publish not acknowledged: {e}")))?;
        Ok(())
    }

    async fn consume(&self, consumer: Consumer) -> Result<(), BusError> {
        use async_nats::jetstream::consumer::{AckPolicy, pull};
        use futures::StreamExt as _;
        let stream = self.js.get_stream(STREAM).await.map_err(|e| BusError(format!("no stream: {e}")))?;
        let filter_subjects: Vec<String> = consumer.kinds.iter().map(|k| format!("carnet.*.{k}")).collect();
        let config = pull::Config {
            durable_name: Some(consumer.durable.clone()),
            filter_subjects,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        let mut pull = stream
            .get_or_create_consumer(&consumer.durable, config.clone())
            .await
            .map_err(|e| BusError(format!("consumer {}: {e}", consumer.durable)))?;
        // A durable consumer made by an older version keeps its old filter: a service that now
        // handles another kind (the DSAR service and `audit.recorded`) updates it in place.
        let mut have = pull.cached_info().config.filter_subjects.clone();
        let mut want = config.filter_subjects.clone();
        have.sort();
        want.sort();
        if have != want {
            tracing::info!(consumer = %consumer.durable, "updating the durable consumer's subjects");
            pull = stream
                .update_consumer(config)
                .await
                .map_err(|e| BusError(format!("consumer {}: {e}", consumer.durable)))?;
        }
        let redeliver_after = self.redeliver_after;
        let task = tokio::spawn(async move {
            loop {
                let mut messages = match pull.messages().await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(consumer = %consumer.durable, error = %e, "cannot pull, retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(next) = messages.next().await {
                    let msg = match next {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(consumer = %consumer.durable, error = %e, "pull stream error");
                            break;
                        }
                    };
                    let event = match Event::decode(msg.payload.as_ref()) {
                        Ok(e) => e,
                        Err(_) => {
                            tracing::error!(consumer = %consumer.durable, subject = %msg.subject, "undecodable event dropped");
                            let _ = msg.ack().await;
                            continue;
                        }
                    };
                    let event_id = event.id.clone();
                    let kind = kind_of_subject(&msg.subject).to_string();
                    let span = crate::telemetry::event_span(&kind, &consumer.durable, &event_id, &event.trace_context);
                    match tracing::Instrument::instrument((consumer.handler)(event), span).await {
                        Ok(()) => {
                            if let Err(e) = msg.double_ack().await {
                                tracing::warn!(consumer = %consumer.durable, %event_id, error = %e, "ack failed");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(consumer = %consumer.durable, %event_id, error = %e, "handler failed, redelivery later");
                            let nak = async_nats::jetstream::AckKind::Nak(Some(redeliver_after));
                            let _ = msg.ack_with(nak).await;
                        }
                    }
                }
            }
        });
        self.tasks.lock().expect("tasks lock").push(task);
        Ok(())
    }

    async fn close(&self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
    }
}

/// A type-erased bus.
pub type SharedBus = Arc<dyn EventBus>;

/// The consumer of a participant that only erases: on `erasure.requested` naming `service`,
/// calls `erase(tenant, request id, subject)`, which erases and writes `erasure.confirmed` in one
/// transaction. Events for other participants are acknowledged untouched.
pub fn erasure_consumer<F, Fut>(service: &'static str, erase: F) -> Consumer
where
    F: Fn(uuid::Uuid, String, uuid::Uuid) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), crate::ServiceError>> + Send + 'static,
{
    let erase = Arc::new(erase);
    Consumer {
        durable: service.to_string(),
        kinds: vec!["erasure.requested".to_string()],
        handler: handler(move |event| {
            let erase = erase.clone();
            async move {
                let Some((tenant_id, request_id, subject_id)) = crate::outbox::erasure_for(&event, service) else {
                    return Ok(());
                };
                erase(tenant_id, request_id.clone(), subject_id)
                    .await
                    .map_err(|e| format!("{}: {}", e.code, e.message))?;
                tracing::info!(%tenant_id, %request_id, contact_id = %subject_id, service, "subject erased for a request");
                Ok(())
            }
        }),
    }
}
