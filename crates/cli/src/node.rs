//! Starting a node: the targets of this process behind one gRPC server, with the health and
//! reflection services, the caller-context check on every service, and a graceful shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use carnet_consent::{ConsentGrpc, ConsentStore};
use carnet_contacts::{ContactStore, ContactsGrpc};
use carnet_kit::db::{self, Db};
use carnet_kit::keystore::{KeyStore, LocalKms};
use carnet_kit::{CallerInterceptor, MeshKey};
use carnet_migrations::MigratorTrait;
use carnet_proto::comms::v1::comms_service_server::CommsServiceServer;
use carnet_proto::consent::v1::consent_service_server::ConsentServiceServer;
use carnet_proto::contacts::v1::contacts_service_server::ContactsServiceServer;
use carnet_proto::dsar::v1::dsar_service_server::DsarServiceServer;
use carnet_proto::enrichment::v1::enrichment_service_server::EnrichmentServiceServer;

use crate::config::CarnetConfig;
use crate::target::Target;

/// How a node runs: everything in one process on SQLite, or named targets on configured databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `carnet up`: migrations run at start, a missing mesh key is generated into the data dir.
    Monolith,
    /// `carnet serve`: migrations must have been run by `carnet migrate`; the mesh key is required.
    Split,
}

/// A running node.
pub struct Node {
    pub grpc_addr: SocketAddr,
    /// The REST gateway's address, when this node runs the gateway target.
    pub http_addr_opt: Option<SocketAddr>,
    pub mesh_key: MeshKey,
    pub targets: Vec<Target>,
    shutdown_tx_opt: Option<oneshot::Sender<()>>,
    shutdown_grace: Duration,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    http_opt: Option<(oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)>,
    /// Background work (the comms sender, the DSAR engine, the outbox relays), stopped after
    /// the gateway and before the gRPC server.
    background: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
    bus_opt: Option<carnet_kit::bus::SharedBus>,
    /// Where comms delivers mail, when this node runs it (said at start).
    pub mail_note_opt: Option<String>,
    dbs: Vec<Db>,
}

impl Node {
    /// Stops accepting calls, lets running calls finish for up to the grace period (idle
    /// client connections do not hold it open longer), and closes the databases.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        // The gateway first, so no new call enters the services while they drain.
        if let Some((tx, mut task)) = self.http_opt.take() {
            let _ = tx.send(());
            if tokio::time::timeout(self.shutdown_grace, &mut task).await.is_err() {
                task.abort();
            }
        }
        for (tx, mut task) in self.background.drain(..) {
            let _ = tx.send(());
            if tokio::time::timeout(self.shutdown_grace, &mut task).await.is_err() {
                task.abort();
            }
        }
        if let Some(bus) = self.bus_opt.take() {
            bus.close().await;
        }
        if let Some(tx) = self.shutdown_tx_opt.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(self.shutdown_grace, &mut self.server).await {
            Ok(res) => res.context("grpc server task failed")?.context("grpc server failed")?,
            Err(_) => {
                tracing::warn!(
                    grace_ms = self.shutdown_grace.as_millis() as u64,
                    "calls still open after the grace period, closing"
                );
                self.server.abort();
            }
        }
        for db in self.dbs.drain(..) {
            db.close().await;
        }
        Ok(())
    }

    /// Waits until the server stops on its own (an error) or `signal` resolves, then shuts down.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            res = &mut self.server => {
                res.context("grpc server task failed")?.context("grpc server failed")?;
                bail!("grpc server stopped unexpectedly");
            }
            _ = signal => self.shutdown().await,
        }
    }
}

/// Returns the mesh key from config, or in monolith mode the one kept in the data dir
/// (generated on first start, readable by the owner only).
pub fn mesh_key(cfg: &CarnetConfig, mode: Mode) -> anyhow::Result<MeshKey> {
    if !cfg.mesh.signing_key.is_empty() {
        return MeshKey::from_text(&cfg.mesh.signing_key).map_err(|e| anyhow::anyhow!("mesh.signing_key: {e}"));
    }
    if mode == Mode::Split {
        bail!("mesh.signing_key is required in split mode (set CARNET__MESH__SIGNING_KEY)");
    }
    let path = cfg.data_dir().join("mesh.key");
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        return MeshKey::from_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    std::fs::create_dir_all(cfg.data_dir()).context("failed to create the data dir")?;
    let key = MeshKey::generate();
    write_private(&path, &key.to_hex())?;
    Ok(key)
}

/// Returns the local KMS over the master key from config, or in monolith mode the one kept in
/// the data dir (generated on first start, readable by the owner only).
pub fn master_key(cfg: &CarnetConfig, mode: Mode) -> anyhow::Result<LocalKms> {
    if !cfg.keys.master_key.is_empty() {
        return LocalKms::from_text(&cfg.keys.master_key).map_err(|e| anyhow::anyhow!("keys.master_key: {e}"));
    }
    if mode == Mode::Split {
        bail!("keys.master_key is required in split mode (set CARNET__KEYS__MASTER_KEY)");
    }
    let path = cfg.data_dir().join("master.key");
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        return LocalKms::from_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    std::fs::create_dir_all(cfg.data_dir()).context("failed to create the data dir")?;
    let (kms, hex) = LocalKms::generate();
    write_private(&path, &hex)?;
    Ok(kms)
}

/// Returns the key store's database URL: its configured URL, or (monolith mode) a SQLite file
/// in the data dir. Split mode needs a configured one: contacts and comms share it, and it must
/// outlive every pod.
pub fn keys_database_url(cfg: &CarnetConfig, mode: Mode) -> anyhow::Result<String> {
    if !cfg.keys.database_url.is_empty() {
        return Ok(cfg.keys.database_url.clone());
    }
    if mode == Mode::Split {
        bail!("keys.database_url is required in split mode (set CARNET__KEYS__DATABASE_URL)");
    }
    std::fs::create_dir_all(cfg.data_dir()).context("failed to create the data dir")?;
    Ok(db::sqlite_url(&cfg.data_dir().join("keys.db")))
}

/// Opens the key store (once per process: its caches are shared by contacts and comms), running
/// (`apply`) or checking its migrations.
pub async fn open_key_store(cfg: &CarnetConfig, mode: Mode, apply: bool) -> anyhow::Result<KeyStore> {
    let kms = master_key(cfg, mode)?;
    let url = keys_database_url(cfg, mode)?;
    let db = db::connect(&url, cfg.keys.max_connections).await.context("failed to connect to the keys database")?;
    migrate_keys(&db, apply).await?;
    Ok(KeyStore::new(db, std::sync::Arc::new(kms), carnet_kit::keystore::Options::of(&cfg.keys)))
}

async fn migrate_keys(db: &Db, apply: bool) -> anyhow::Result<()> {
    type M = carnet_migrations::keys::Migrator;
    if apply {
        M::up(&db.write, None).await.context("failed to migrate the keys database")?;
        return Ok(());
    }
    let pending = M::get_pending_migrations(&db.write).await.context("failed to read migration state")?;
    if !pending.is_empty() {
        bail!(
            "the keys database has {} pending migrations: run `carnet migrate --target contacts` (or comms) first",
            pending.len()
        );
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut file = opts.open(path).with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(text.as_bytes()).context("failed to write the mesh key")?;
    Ok(())
}

/// Returns the database URL of a target: its configured URL, or a SQLite file in the data dir.
pub fn database_url(cfg: &CarnetConfig, target: Target) -> anyhow::Result<(String, u32)> {
    let (url, max) = match target {
        Target::Contacts => (&cfg.contacts.database_url, cfg.contacts.max_connections),
        Target::Consent => (&cfg.consent.database_url, cfg.consent.max_connections),
        Target::Comms => (&cfg.comms.database_url, cfg.comms.max_connections),
        Target::Dsar => (&cfg.dsar.database_url, cfg.dsar.max_connections),
        Target::Enrichment => (&cfg.enrichment.database_url, cfg.enrichment.max_connections),
        Target::Gateway => (&cfg.gateway.database_url, cfg.gateway.max_connections),
    };
    if !url.is_empty() {
        return Ok((url.clone(), max));
    }
    std::fs::create_dir_all(cfg.data_dir()).context("failed to create the data dir")?;
    Ok((db::sqlite_url(&cfg.data_dir().join(format!("{target}.db"))), max))
}

/// Connects to a target's database and runs (`apply`) or checks its migrations. Applying the
/// migrations of contacts or comms also applies the key store's (`carnet migrate` of either
/// prepares the key store both use).
pub async fn open_database(cfg: &CarnetConfig, target: Target, apply: bool) -> anyhow::Result<Db> {
    let (url, max) = database_url(cfg, target)?;
    let db = db::connect(&url, max).await.with_context(|| format!("failed to connect to the {target} database"))?;
    if apply && matches!(target, Target::Contacts | Target::Comms) {
        // Like the targets' own databases, an empty URL is the data dir's file here; `carnet
        // serve` then refuses to start without a configured one.
        let keys_url = keys_database_url(cfg, Mode::Monolith)?;
        let keys = db::connect(&keys_url, 1).await.context("failed to connect to the keys database")?;
        let migrated = migrate_keys(&keys, true).await;
        keys.close().await;
        migrated?;
    }
    match target {
        Target::Contacts => migrate::<carnet_migrations::contacts::Migrator>(&db, target, apply).await?,
        Target::Consent => migrate::<carnet_migrations::consent::Migrator>(&db, target, apply).await?,
        Target::Comms => migrate::<carnet_migrations::comms::Migrator>(&db, target, apply).await?,
        Target::Dsar => migrate::<carnet_migrations::dsar::Migrator>(&db, target, apply).await?,
        Target::Enrichment => migrate::<carnet_migrations::enrichment::Migrator>(&db, target, apply).await?,
        Target::Gateway => migrate::<carnet_migrations::gateway::Migrator>(&db, target, apply).await?,
    }
    Ok(db)
}

async fn migrate<M: MigratorTrait>(db: &Db, target: Target, apply: bool) -> anyhow::Result<()> {
    if apply {
        M::up(&db.write, None).await.with_context(|| format!("failed to migrate the {target} database"))?;
        return Ok(());
    }
    let pending = M::get_pending_migrations(&db.write).await.context("failed to read migration state")?;
    if !pending.is_empty() {
        bail!(
            "the {target} database has {} pending migrations: run `carnet migrate --target {target}` first",
            pending.len()
        );
    }
    Ok(())
}

/// Starts the REST gateway; returns its address, its shutdown trigger and its task.
async fn start_gateway(
    cfg: &CarnetConfig,
    targets: &[Target],
    grpc_addr: SocketAddr,
    mesh_key: MeshKey,
    db: Db,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<(SocketAddr, oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)> {
    let upstreams = carnet_gateway::Upstreams {
        contacts: peer_channel(
            &cfg.gateway.contacts_endpoint,
            targets.contains(&Target::Contacts),
            grpc_addr,
            "gateway.contacts_endpoint",
        )?,
        consent: peer_channel(
            &cfg.gateway.consent_endpoint,
            targets.contains(&Target::Consent),
            grpc_addr,
            "gateway.consent_endpoint",
        )?,
        dsar_opt: optional_peer(
            &cfg.gateway.dsar_endpoint,
            targets.contains(&Target::Dsar),
            grpc_addr,
            "gateway.dsar_endpoint",
        )?,
        enrichment_opt: optional_peer(
            &cfg.gateway.enrichment_endpoint,
            targets.contains(&Target::Enrichment),
            grpc_addr,
            "gateway.enrichment_endpoint",
        )?,
        // Optional: a gateway without comms answers its routes with `unavailable`.
        comms_opt: if cfg.gateway.comms_endpoint.is_empty() && !targets.contains(&Target::Comms) {
            None
        } else {
            Some(peer_channel(
                &cfg.gateway.comms_endpoint,
                targets.contains(&Target::Comms),
                grpc_addr,
                "gateway.comms_endpoint",
            )?)
        },
    };
    let jwt_opt = carnet_gateway::jwt::JwtVerifier::from_config(&cfg.gateway.oidc)
        .await
        .context("failed to load the OIDC keys")?;
    let state = carnet_gateway::AppState::new(
        cfg.gateway.clone(),
        carnet_gateway::keys::KeyStore::with_cache(db, Duration::from_millis(cfg.gateway.key_cache_ms)),
        jwt_opt,
        mesh_key,
        upstreams,
    );
    let http_addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = carnet_gateway::router(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    Ok((http_addr, tx, task))
}

/// Returns a lazily connected channel to another target: `endpoint` when configured, else this
/// process's own gRPC listener when it runs that target (monolith mode, or several targets in
/// one process).
fn peer_channel(
    endpoint: &str,
    runs_locally: bool,
    grpc_addr: SocketAddr,
    key: &str,
) -> anyhow::Result<tonic::transport::Channel> {
    let uri = if endpoint.is_empty() {
        if !runs_locally {
            bail!("{key} is required when this process does not run that target");
        }
        format!("http://{grpc_addr}")
    } else {
        endpoint.to_string()
    };
    Ok(carnet_kit::grpc::endpoint(&uri).with_context(|| format!("{key} is not a valid URL"))?.connect_lazy())
}

/// A peer the gateway can live without: `None` when it is neither configured nor local.
fn optional_peer(
    endpoint: &str,
    runs_locally: bool,
    grpc_addr: SocketAddr,
    key: &str,
) -> anyhow::Result<Option<tonic::transport::Channel>> {
    if endpoint.is_empty() && !runs_locally {
        return Ok(None);
    }
    peer_channel(endpoint, runs_locally, grpc_addr, key).map(Some)
}

/// Returns the span of one incoming call, named and attributed after the OpenTelemetry RPC
/// conventions; the method path is its only attribute (never request data).
fn grpc_span(path: &str) -> tracing::Span {
    let full = path.trim_start_matches('/');
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    tracing::info_span!(
        "grpc.server",
        otel.name = %full,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    )
}

/// Starts the given targets behind one gRPC server on `cfg.grpc.listen_addr` (port 0 picks a
/// free port; see [`Node::grpc_addr`]).
pub async fn start(cfg: &CarnetConfig, mode: Mode, targets: &[Target]) -> anyhow::Result<Node> {
    if targets.is_empty() {
        bail!("no target to run");
    }
    let mesh_key = mesh_key(cfg, mode)?;
    let interceptor = CallerInterceptor::new(mesh_key.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(carnet_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("failed to build the reflection service")?;
    let mut server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(carnet_kit::metrics::RpcMetricsLayer)
        // Every method's deadline but an import's upload (tonic's `timeout` would cut it off).
        .layer(carnet_kit::deadline::DeadlineLayer::new(Duration::from_millis(cfg.grpc.request_timeout_ms)))
        .trace_fn(|request| {
            let span = grpc_span(request.uri().path());
            carnet_kit::telemetry::continue_trace(&span, request.headers());
            span
        });
    let mut router = server.add_service(health_service).add_service(reflection);
    // Bound first: services of this process that call each other dial this address.
    let addr: SocketAddr = cfg.grpc.listen_addr.parse().context("grpc.listen_addr")?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("failed to bind {addr}"))?;
    let grpc_addr = listener.local_addr()?;
    // The gateway's listener too: comms puts its address in people's links in monolith mode.
    let http_listener_opt = if targets.contains(&Target::Gateway) {
        let addr: SocketAddr = cfg.gateway.listen_addr.parse().context("gateway.listen_addr")?;
        Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("failed to bind {addr}"))?)
    } else {
        None
    };
    let mut dispatcher_opt = None;
    let mut mail_note_opt = None;
    let mut dbs = Vec::new();
    let bus_opt: Option<carnet_kit::bus::SharedBus> = if !cfg.bus.nats_url.is_empty() {
        let nats = carnet_kit::bus::NatsBus::connect(&cfg.bus.nats_url).await.context("bus.nats_url")?;
        Some(std::sync::Arc::new(nats))
    } else if mode == Mode::Monolith || Target::ALL.iter().all(|t| targets.contains(t)) {
        Some(std::sync::Arc::new(carnet_kit::bus::EmbeddedBus::new()))
    } else {
        tracing::warn!(
            "no event bus (bus.nats_url is empty): events stay in the outbox and nothing propagates between processes"
        );
        None
    };
    let mut consumers: Vec<carnet_kit::bus::Consumer> = Vec::new();
    let mut relays: Vec<(Db, &'static str)> = Vec::new();
    let mut engine_opt = None;
    let mut gateway_db_opt = None;
    let mut sorted = targets.to_vec();
    sorted.sort();
    sorted.dedup();
    // One key store per process, for the services that seal personal data.
    let keys_opt = if sorted.iter().any(|t| matches!(t, Target::Contacts | Target::Comms)) {
        Some(open_key_store(cfg, mode, mode == Mode::Monolith).await?)
    } else {
        None
    };
    for target in &sorted {
        let db = open_database(cfg, *target, mode == Mode::Monolith).await?;
        match target {
            Target::Contacts => {
                let keys = keys_opt.clone().expect("the key store is open when contacts runs");
                let store =
                    ContactStore::new(db.clone(), keys).with_tombstone_key(mesh_key.derive("contacts-tombstones"));
                consumers.push(carnet_contacts::consumer(store.clone()));
                relays.push((db.clone(), "contacts"));
                let grpc = ContactsGrpc::new(store);
                let svc = ContactsServiceServer::new(grpc).max_decoding_message_size(cfg.grpc.max_message_bytes);
                router =
                    router.add_service(tonic::service::interceptor::InterceptedService::new(svc, interceptor.clone()));
                health_reporter
                    .set_service_status("carnet.contacts.v1.ContactsService", tonic_health::ServingStatus::Serving)
                    .await;
            }
            Target::Consent => {
                let contacts = peer_channel(
                    &cfg.consent.contacts_endpoint,
                    sorted.contains(&Target::Contacts),
                    grpc_addr,
                    "consent.contacts_endpoint",
                )?;
                let store = ConsentStore::new(db.clone(), mesh_key.derive("consent-ip-hash"));
                let imports =
                    carnet_consent::imports::ImportFollower::new(store.clone(), contacts.clone(), mesh_key.clone());
                consumers.push(carnet_consent::consumer(store.clone(), imports));
                relays.push((db.clone(), "consent"));
                let grpc = ConsentGrpc::new(store, contacts, mesh_key.clone());
                let svc = ConsentServiceServer::new(grpc).max_decoding_message_size(cfg.grpc.max_message_bytes);
                router =
                    router.add_service(tonic::service::interceptor::InterceptedService::new(svc, interceptor.clone()));
                health_reporter
                    .set_service_status("carnet.consent.v1.ConsentService", tonic_health::ServingStatus::Serving)
                    .await;
            }
            Target::Comms => {
                let peer = |endpoint: &str, target: Target, key: &str| {
                    peer_channel(endpoint, sorted.contains(&target), grpc_addr, key)
                };
                let contacts = peer(&cfg.comms.contacts_endpoint, Target::Contacts, "comms.contacts_endpoint")?;
                let consent = peer(&cfg.comms.consent_endpoint, Target::Consent, "comms.consent_endpoint")?;
                let public_url = match (&cfg.comms.public_url, &http_listener_opt) {
                    (url, _) if !url.is_empty() => url.clone(),
                    (_, Some(l)) => format!("http://{}", l.local_addr()?),
                    (_, None) => bail!("comms.public_url is required when this process does not run the gateway"),
                };
                let mailer = carnet_comms::Mailer::from_config(&cfg.comms.smtp, cfg.data_dir().join("mail"))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                mail_note_opt = Some(match &mailer {
                    carnet_comms::Mailer::Files(dir) => {
                        format!("no SMTP relay configured: mail is written as .eml files under {}", dir.display())
                    }
                    carnet_comms::Mailer::Smtp(_) => {
                        format!("mail goes to the SMTP relay {}:{}", cfg.comms.smtp.host, cfg.comms.smtp.port)
                    }
                });
                let keys = keys_opt.clone().expect("the key store is open when comms runs");
                let store = carnet_comms::CommsStore::new(db.clone(), keys);
                let peers = carnet_comms::peers::Peers::new(contacts, consent, mesh_key.clone());
                let hasher = carnet_comms::AddressHasher::new(mesh_key.derive("comms-suppression"));
                let dispatcher = carnet_comms::Dispatcher::new(
                    &cfg.comms,
                    store.clone(),
                    peers.clone(),
                    mailer,
                    hasher.clone(),
                    public_url,
                );
                consumers.push(carnet_comms::consumer(store.clone(), peers.clone(), hasher.clone()));
                relays.push((db.clone(), "comms"));
                let grpc =
                    carnet_comms::CommsGrpc::new(store, peers, dispatcher.clone(), cfg.comms.recording_purpose.clone());
                let svc = CommsServiceServer::new(grpc).max_decoding_message_size(cfg.grpc.max_message_bytes);
                router =
                    router.add_service(tonic::service::interceptor::InterceptedService::new(svc, interceptor.clone()));
                health_reporter
                    .set_service_status("carnet.comms.v1.CommsService", tonic_health::ServingStatus::Serving)
                    .await;
                dispatcher_opt = Some(dispatcher);
            }
            Target::Enrichment => {
                let peer = |endpoint: &str, target: Target, key: &str| {
                    peer_channel(endpoint, sorted.contains(&target), grpc_addr, key)
                };
                let contacts =
                    peer(&cfg.enrichment.contacts_endpoint, Target::Contacts, "enrichment.contacts_endpoint")?;
                let consent = peer(&cfg.enrichment.consent_endpoint, Target::Consent, "enrichment.consent_endpoint")?;
                let host =
                    carnet_plugin_host::Host::with_fetch_limits(cfg.enrichment.limits(), cfg.enrichment.fetch_limits())
                        .map_err(|e| anyhow::anyhow!(e))?;
                let engine = carnet_enrichment::Engine::new(
                    carnet_enrichment::EnrichmentStore::new(db.clone()),
                    host,
                    contacts,
                    consent,
                    mesh_key.clone(),
                    cfg.enrichment.profiling_purpose.clone(),
                    cfg.enrichment.max_component_bytes as usize,
                );
                consumers.push(carnet_enrichment::consumer(engine.clone()));
                relays.push((db.clone(), "enrichment"));
                let grpc = carnet_enrichment::EnrichmentGrpc::new(engine);
                // Components travel in InstallPlugin: room for the largest one accepted.
                let max_bytes = cfg.grpc.max_message_bytes.max(cfg.enrichment.max_component_bytes as usize + (1 << 20));
                let svc = EnrichmentServiceServer::new(grpc).max_decoding_message_size(max_bytes);
                router =
                    router.add_service(tonic::service::interceptor::InterceptedService::new(svc, interceptor.clone()));
                health_reporter
                    .set_service_status("carnet.enrichment.v1.EnrichmentService", tonic_health::ServingStatus::Serving)
                    .await;
            }
            Target::Dsar => {
                let mut channels = std::collections::BTreeMap::new();
                for p in &cfg.dsar.participants {
                    let endpoint = cfg.dsar.endpoints.get(p).cloned().unwrap_or_default();
                    let local = p.parse::<Target>().is_ok_and(|t| sorted.contains(&t));
                    channels
                        .insert(p.clone(), peer_channel(&endpoint, local, grpc_addr, &format!("dsar.endpoints.{p}"))?);
                }
                if !channels.contains_key("contacts") {
                    let endpoint = cfg.dsar.endpoints.get("contacts").cloned().unwrap_or_default();
                    let local = sorted.contains(&Target::Contacts);
                    channels.insert(
                        "contacts".into(),
                        peer_channel(&endpoint, local, grpc_addr, "dsar.endpoints.contacts")?,
                    );
                }
                let keys = carnet_dsar::Keys::new(mesh_key.derive("dsar-pseudonym"), mesh_key.derive("dsar-exports"));
                let engine = carnet_dsar::Engine::new(
                    carnet_dsar::DsarStore::new(db.clone()),
                    keys,
                    cfg.dsar.clone(),
                    channels,
                    mesh_key.clone(),
                );
                consumers.push(carnet_dsar::consumer(engine.clone()));
                relays.push((db.clone(), "dsar"));
                let grpc = carnet_dsar::DsarGrpc::new(engine.clone());
                let svc = DsarServiceServer::new(grpc).max_decoding_message_size(cfg.grpc.max_message_bytes);
                router =
                    router.add_service(tonic::service::interceptor::InterceptedService::new(svc, interceptor.clone()));
                health_reporter
                    .set_service_status("carnet.dsar.v1.DsarService", tonic_health::ServingStatus::Serving)
                    .await;
                engine_opt = Some(engine);
            }
            Target::Gateway => {
                gateway_db_opt = Some(db.clone());
                // API key and tenant changes are audited through the gateway's outbox.
                relays.push((db.clone(), "gateway"));
            }
        }
        dbs.push(db);
    }
    if let Some(keys) = &keys_opt {
        dbs.push(keys.db().clone());
    }
    // `Server::tcp_nodelay` does not reach connections of a listener handed in: set it here, or
    // every answer written in two segments waits ~40 ms for the peer's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = shutdown_rx.await;
    }));
    let http_opt = match (gateway_db_opt, http_listener_opt) {
        (Some(db), Some(listener)) => {
            Some(start_gateway(cfg, &sorted, grpc_addr, mesh_key.clone(), db, listener).await?)
        }
        _ => None,
    };
    // Background work starts once the services it calls are serving: consumers first, then the
    // relays that feed them, the comms sender and the DSAR engine.
    let mut background = Vec::new();
    let spawn = |fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = rx => {}
            }
        });
        (tx, task)
    };
    if let Some(bus) = &bus_opt {
        for c in consumers {
            bus.consume(c).await.context("failed to start an event consumer")?;
        }
        let interval = Duration::from_millis(cfg.bus.relay_interval_ms.max(5));
        for (db, service) in relays {
            let relay = carnet_kit::outbox::Relay::new(db, bus.clone(), service, interval);
            background.push(spawn(Box::pin(relay.run(std::future::pending::<()>()))));
        }
    }
    if let Some(dispatcher) = dispatcher_opt {
        background.push(spawn(Box::pin(dispatcher.run(std::future::pending::<()>()))));
    }
    if let Some(engine) = engine_opt {
        background.push(spawn(Box::pin(engine.run(std::future::pending::<()>()))));
    }
    if let Some(note) = &mail_note_opt {
        tracing::info!("{note}");
    }
    let http_addr_opt = http_opt.as_ref().map(|(addr, _, _)| *addr);
    tracing::info!(%grpc_addr, ?http_addr_opt, targets = ?sorted, ?mode, "carnet node started");
    let shutdown_grace = Duration::from_millis(cfg.grpc.shutdown_grace_ms);
    Ok(Node {
        grpc_addr,
        http_addr_opt,
        mesh_key,
        targets: sorted,
        shutdown_tx_opt: Some(shutdown_tx),
        shutdown_grace,
        server,
        http_opt: http_opt.map(|(_, tx, task)| (tx, task)),
        background,
        bus_opt,
        mail_note_opt,
        dbs,
    })
}
