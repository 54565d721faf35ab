//! The test sandbox: boots real Carnet targets in this process on free ports, in monolith mode
//! (SQLite in a temporary data dir) or split mode (a fresh PostgreSQL database), and hands out
//! gRPC clients that sign a caller context like the gateway does.

pub mod console;
pub mod http;
pub mod postgres;
pub mod smtp;

use std::path::Path;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

use carnet_cli::node::{self, Mode, Node};
use carnet_cli::{CarnetConfig, Target};
use carnet_gateway::keys::KeyStore;
use carnet_gateway::roles::Role;
use carnet_kit::{Caller, CallerSigner, MeshKey, Permission};
use carnet_proto::comms::v1::comms_service_client::CommsServiceClient;
use carnet_proto::consent::v1::consent_service_client::ConsentServiceClient;
use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;

pub type Signed = InterceptedService<Channel, CallerSigner>;
pub type ContactsClient = ContactsServiceClient<Signed>;
pub type ConsentClient = ConsentServiceClient<Signed>;
pub type CommsClient = CommsServiceClient<Signed>;

/// A node running in this process, with its data dir (removed on drop).
pub struct Sandbox {
    pub node: Node,
    pub config: CarnetConfig,
    pub mode: Mode,
    _dir: tempfile::TempDir,
    channel: Channel,
}

/// Where a sandbox keeps its data.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    /// A PostgreSQL server URL (admin database); each sandbox gets a fresh database on it.
    Postgres(String),
}

impl Sandbox {
    /// Starts every target in monolith mode on SQLite.
    pub async fn monolith() -> Sandbox {
        Sandbox::start(Backend::Sqlite).await
    }

    /// Starts every target on `backend`: SQLite runs as `carnet up` does, PostgreSQL as
    /// `carnet migrate` then `carnet serve` do (split mode, mesh key from config).
    pub async fn start(backend: Backend) -> Sandbox {
        Sandbox::start_with(backend, &[]).await
    }

    /// Like [`Sandbox::start`], with extra configuration overrides (`("gateway.rate_limit_burst", "2")`).
    pub async fn start_with(backend: Backend, extra: &[(&'static str, String)]) -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut overrides = vec![
            ("node.data_dir", dir.path().display().to_string()),
            ("grpc.listen_addr", "127.0.0.1:0".to_string()),
            ("gateway.listen_addr", "127.0.0.1:0".to_string()),
            // Tests run many calls per key; the limit has a test of its own.
            ("gateway.rate_limit_per_second", "0".to_string()),
        ];
        let mode = match &backend {
            Backend::Sqlite => Mode::Monolith,
            Backend::Postgres(server) => {
                let url = postgres::fresh_database(server).await;
                overrides.push(("contacts.database_url", url));
                overrides.push(("gateway.database_url", postgres::fresh_database(server).await));
                overrides.push(("consent.database_url", postgres::fresh_database(server).await));
                overrides.push(("comms.database_url", postgres::fresh_database(server).await));
                overrides.push(("dsar.database_url", postgres::fresh_database(server).await));
                overrides.push(("enrichment.database_url", postgres::fresh_database(server).await));
                // The key store: a database of its own, and a master key (split mode needs both).
                overrides.push(("keys.database_url", postgres::fresh_database(server).await));
                overrides.push(("keys.master_key", MeshKey::generate().to_hex()));
                overrides.push(("mesh.signing_key", MeshKey::generate().to_hex()));
                Mode::Split
            }
        };
        overrides.extend(extra.iter().cloned());
        let config = CarnetConfig::load(None, &overrides).expect("sandbox config");
        if mode == Mode::Split {
            for target in Target::ALL {
                node::open_database(&config, target, true).await.expect("migrate").close().await;
            }
        }
        let node = node::start(&config, mode, &Target::ALL).await.expect("node starts");
        let channel = carnet_kit::grpc::endpoint(&format!("http://{}", node.grpc_addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect to sandbox");
        Sandbox { node, config, mode, _dir: dir, channel }
    }

    /// A consent client acting as `caller`.
    pub fn consent(&self, caller: &Caller) -> ConsentClient {
        ConsentServiceClient::with_interceptor(
            self.channel(),
            CallerSigner::new(self.node.mesh_key.clone(), caller.clone()),
        )
    }

    /// A comms client acting as `caller`.
    pub fn comms(&self, caller: &Caller) -> CommsClient {
        CommsServiceClient::with_interceptor(
            self.channel(),
            CallerSigner::new(self.node.mesh_key.clone(), caller.clone()),
        )
    }

    /// An HTTP client of the gateway.
    pub fn http(&self) -> http::Http {
        http::Http::new(self.node.http_addr_opt.expect("the sandbox runs the gateway"))
    }

    /// The key store of crypto-shredding: another handle on it than the node's, without a
    /// cache, so it sees the store as it is.
    pub async fn crypto_keys(&self) -> carnet_kit::keystore::KeyStore {
        let mut config = self.config.clone();
        config.keys.cache_capacity = 0;
        node::open_key_store(&config, self.mode, false).await.expect("key store")
    }

    /// The gateway's key store, as `carnet tenant create` and `carnet apikey create` use it.
    pub async fn key_store(&self) -> KeyStore {
        KeyStore::new(node::open_database(&self.config, Target::Gateway, false).await.expect("gateway database"))
    }

    /// Creates a tenant; returns its id and its owner key.
    pub async fn tenant(&self, name: &str) -> (Uuid, String) {
        self.key_store().await.create_tenant(name, "test").await.expect("tenant created")
    }

    /// Creates a key of `role` for `tenant_id`.
    pub async fn key(&self, tenant_id: Uuid, role: Role) -> String {
        self.key_store().await.create_key(tenant_id, role, "test", "test").await.expect("key created").1
    }

    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A contacts client acting as `caller`.
    pub fn contacts(&self, caller: &Caller) -> ContactsClient {
        ContactsServiceClient::with_interceptor(
            self.channel(),
            CallerSigner::new(self.node.mesh_key.clone(), caller.clone()),
        )
    }

    /// Closes the sandbox's connection and shuts the node down.
    pub async fn stop(self) {
        let Sandbox { node, channel, _dir, .. } = self;
        drop(channel);
        node.shutdown().await.expect("clean shutdown");
    }
}

/// Configuration overrides pointing comms at a loopback SMTP relay (plain, no TLS) that is polled
/// often, so mail tests do not wait.
pub fn smtp_overrides(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("comms.smtp.host", "127.0.0.1".to_string()),
        ("comms.smtp.port", port.to_string()),
        ("comms.smtp.tls", "none".to_string()),
        ("comms.poll_interval_ms", "100".to_string()),
        ("comms.retry_base_ms", "200".to_string()),
    ]
}

/// A caller of a brand-new tenant holding every permission.
pub fn new_tenant() -> Caller {
    Caller::all_permissions(Uuid::now_v7(), "key:test-owner")
}

/// A caller of `tenant_id` holding only `permissions`.
pub fn caller_with(tenant_id: Uuid, permissions: &[Permission]) -> Caller {
    Caller::new(tenant_id, "key:test-limited", permissions.iter().copied())
}

/// Generates `<scenario>::monolith` and `<scenario>::split` tests from `async fn
/// <scenario>(&Sandbox)`: the same scenario on SQLite as `carnet up` runs, and on PostgreSQL as
/// `carnet migrate` + `carnet serve` run (skipped without a PostgreSQL server, unless required).
#[macro_export]
macro_rules! both_modes {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn monolith() {
                let sandbox = $crate::Sandbox::start($crate::Backend::Sqlite).await;
                super::$name(&sandbox).await;
                sandbox.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn split() {
                let Some(server) = $crate::postgres::server_url() else { return };
                let sandbox = $crate::Sandbox::start($crate::Backend::Postgres(server)).await;
                super::$name(&sandbox).await;
                sandbox.stop().await;
            }
        }
    };
}
