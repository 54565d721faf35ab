//! `carnet backup` and `carnet restore` as an operator runs them on the embedded mode: a backup
//! taken while `carnet up` runs, an erasure after it, the older backup restored: the ledger
//! replay erases the person again in every service (SQL against each SQLite file, and the API),
//! the other person is intact and the DSAR state keeps the erasure. A damaged backup file and a
//! running node are refused with nothing changed; the key store never lands beside the data.

#[path = "../../../plugins/host/tests/support/wat.rs"]
mod wat_components;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/proc.rs"]
mod proc;
use proc::Reaper;

const CARNET: &str = env!("CARGO_BIN_EXE_carnet");
const WAIT: Duration = Duration::from_secs(60);

fn carnet() -> Command {
    let mut cmd = Command::new(CARNET);
    for (key, _) in std::env::vars() {
        if key.starts_with("CARNET__") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARNET__TELEMETRY__LOG_FILTER", "warn")
        .env("CARNET__GATEWAY__RATE_LIMIT_PER_SECOND", "0")
        .env("CARNET__DSAR__RETRY_BASE_MS", "500")
        .env("CARNET__DSAR__RETRY_MAX_MS", "2000");
    cmd
}

/// Runs `carnet ARGS --data-dir DATA` to completion.
fn run(data: &Path, args: &[&str]) -> Output {
    carnet().args(args).arg("--data-dir").arg(data).output().unwrap()
}

fn ok_json(out: Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `carnet up` on `data`, with the owner key of its tenant.
struct Node {
    child: Reaper,
    http: String,
    key: String,
}

impl Node {
    fn up(data: &Path, key: &str) -> Node {
        let mut cmd = carnet();
        cmd.args(["up", "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--data-dir"]).arg(data);
        let mut child = Reaper(cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn carnet"));
        let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let line = lines.next().expect("carnet closed stderr").unwrap();
            if let Some(rest) = line.split("HTTP on ").nth(1) {
                let http = rest.split_whitespace().next().unwrap().to_string();
                std::thread::spawn(move || for _ in lines.by_ref() {});
                return Node { child, http, key: key.to_string() };
            }
        }
        panic!("carnet did not start");
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.0.id().to_string()).status();
        assert!(self.child.0.wait().unwrap().success(), "a clean stop");
    }

    fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = std::net::TcpStream::connect(&self.http).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: carnet\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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

    /// A contact with data in every participant: a consent, a mail, a call and a plugin run.
    fn person(&self, email: &str, name: &str) -> String {
        let body = json!({"email": email, "first_name": name, "source": {"channel": "api", "detail": "backup-test"}});
        let (status, c) = self.http("POST", "/v1/contacts", Some(body));
        assert_eq!(status, 201, "{c}");
        let id = c["id"].as_str().unwrap().to_string();
        let grant = json!({"contact_id": id, "purpose": "news", "action": "grant", "source": "api"});
        assert_eq!(self.http("POST", "/v1/consents", Some(grant)).0, 201);
        let mail = json!({"contact_id": id, "purpose": "news", "subject": "Hello", "body": "News."});
        let (status, m) = self.http("POST", "/v1/messages", Some(mail));
        assert_eq!(status, 202, "{m}");
        let call = json!({"contact_id": id, "direction": "inbound", "started_at": "2026-11-29T09:00:00Z",
            "duration_seconds": 30, "outcome": "connected", "notes": format!("{name} called")});
        assert_eq!(self.http("POST", "/v1/calls", Some(call)).0, 201);
        let (status, runs) = self.http("POST", &format!("/v1/contacts/{id}/enrich"), None);
        assert_eq!((status, &runs["runs"][0]["outcome"]), (200, &json!("unchanged")), "{runs}");
        id
    }
}

/// A data dir with a tenant, and carnet running on it with a purpose and an enabled plugin.
fn setup(data: &Path) -> Node {
    let out = ok_json(run(data, &["tenant", "create", "Backup"]));
    let node = Node::up(data, out["api_key"].as_str().unwrap());
    let purpose = json!({"key": "news", "lawful_basis": "consent", "notice": "News."});
    assert_eq!(node.http("POST", "/v1/purposes", Some(purpose)).0, 201);
    use base64::Engine as _;
    let echo = wat_components::component(wat_components::ECHO);
    let manifest =
        "name = \"echo\"\nversion = \"1.0.0\"\napi_version = \"0.1.0\"\nreads = [\"email\"]\nwrites = [\"email\"]\n";
    let body = json!({"manifest": manifest, "component": base64::engine::general_purpose::STANDARD.encode(echo),
        "enabled": true});
    let (status, plugin) = node.http("POST", "/v1/plugins", Some(body));
    assert_eq!(status, 201, "{plugin}");
    node
}

/// Rows of `id` per table of every participant, by SQL against each SQLite file.
fn rows_of(data: &Path, id: &str) -> Vec<(String, i64)> {
    let tables: [(&str, &[(&str, &str)]); 4] = [
        ("contacts", &[("contacts", "id"), ("contact_changes", "contact_id")]),
        ("consent", &[("consent_records", "contact_id"), ("consent_states", "contact_id")]),
        ("comms", &[("deliveries", "contact_id"), ("calls", "contact_id")]),
        ("enrichment", &[("enrichment_runs", "contact_id")]),
    ];
    let id: uuid::Uuid = id.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sea_orm::ConnectionTrait as _;
        let mut out = Vec::new();
        for (service, list) in tables {
            let url = carnet_kit::db::sqlite_url(&data.join(format!("{service}.db")));
            let db = carnet_kit::db::connect(&url, 1).await.unwrap();
            for (table, column) in list {
                let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = ?");
                let stmt = sea_orm::Statement::from_sql_and_values(
                    sea_orm::DbBackend::Sqlite,
                    sql,
                    [sea_orm::Value::Uuid(Some(id))],
                );
                let row = db.read.query_one_raw(stmt).await.unwrap().unwrap();
                out.push((format!("{service}.{table}"), row.try_get::<i64>("", "n").unwrap()));
            }
            db.close().await;
        }
        out
    })
}

/// Every file of a directory with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn test_restore_of_an_older_backup_then_the_ledger_replay_leaves_the_erased_person_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, backup, keys) = (tmp.path().join("data"), tmp.path().join("backup"), tmp.path().join("keys"));
    let node = setup(&data);
    let ada = node.person("ada@example.org", "Ada");
    let bob = node.person("bob@example.org", "Bob");

    // A backup while carnet runs; the key store goes to its own directory.
    let out = ok_json(
        carnet()
            .args(["backup", "--out"])
            .arg(&backup)
            .arg("--keys-out")
            .arg(&keys)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
    );
    let names: Vec<&str> = out["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["contacts.db", "consent.db", "comms.db", "enrichment.db", "gateway.db", "dsar.db", "mesh.key"]);
    assert_eq!(out["ledger_entries"], 0, "{out}");
    let manifest: Value = serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["carnet_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["files"][0]["sha256"].as_str().unwrap().len(), 64);
    assert!(!backup.join("keys.db").exists() && !backup.join("master.key").exists(), "no key store beside the data");

    // Ada is erased after the backup.
    let (status, r) = node.http("POST", "/v1/dsar", Some(json!({"kind": "erasure", "contact_id": ada})));
    assert_eq!(status, 201, "{r}");
    let rid = r["id"].as_str().unwrap().to_string();
    node.wait_until(&format!("/v1/dsar/{rid}"), |r| r["status"] == "completed");
    let key = node.key.clone();
    node.stop();
    assert!(rows_of(&data, &ada).iter().all(|(_, n)| *n == 0), "{:?}", rows_of(&data, &ada));

    // The backup predates the erasure: restoring it brings Ada back, and the replay erases her
    // again. First with the key store copied with the backup (it still holds Ada's key), then
    // with the current key store (where her key is destroyed).
    for keys_from in [Some(&keys), None] {
        let mut cmd = carnet();
        cmd.args(["restore", "--from"]).arg(&backup).arg("--data-dir").arg(&data);
        if let Some(dir) = keys_from {
            cmd.arg("--keys-from").arg(dir);
        }
        let out = ok_json(cmd.output().unwrap());
        let replay = &out["replay"];
        assert_eq!((replay["matched"].as_u64(), replay["entries"].as_u64()), (Some(1), Some(1)), "{out}");
        assert_eq!(out["dsar_rows_kept"]["erasure_ledger"]["added"], 1, "{out}");
        assert_eq!(out["dsar_state"], "kept", "{out}");
        assert!(!data.join("dsar.kept-by-restore.db").exists());
        assert_gone_and_kept(&data, &key, &ada, &bob, &rid);
    }
}

/// After a restore: Ada (erased by request `rid`) is gone from every service, Bob is intact, and
/// the DSAR state still holds the erasure.
fn assert_gone_and_kept(data: &Path, key: &str, ada: &str, bob: &str, rid: &str) {
    for (table, n) in rows_of(data, ada) {
        assert_eq!(n, 0, "{table} still holds the erased person");
    }
    for (table, n) in rows_of(data, bob) {
        assert!(n > 0, "{table} lost the other person");
    }
    let node = Node::up(data, key);
    assert_eq!(node.http("GET", &format!("/v1/contacts/{ada}"), None).0, 404);
    let (status, b) = node.http("GET", &format!("/v1/contacts/{bob}"), None);
    assert_eq!((status, b["email"].as_str()), (200, Some("bob@example.org")), "{b}");
    // The erasure's tombstone is back too: the person cannot be created again by accident.
    let again = json!({"email": "ada@example.org", "source": {"channel": "api", "detail": "backup-test"}});
    let (status, refused) = node.http("POST", "/v1/contacts", Some(again));
    assert_eq!((status, refused["code"].as_str()), (409, Some("failed_precondition")), "{refused}");
    // The DSAR state was not rolled back: the request and its ledger entry are there.
    let (_, request) = node.http("GET", &format!("/v1/dsar/{rid}"), None);
    assert_eq!(request["status"], "completed", "{request}");
    let (_, ledger) = node.http("GET", "/v1/erasure-ledger", None);
    assert!(
        ledger["entries"].as_array().unwrap().iter().any(|e| e["request_id"] == rid && e["completed_at"].is_string()),
        "{ledger}"
    );
    node.stop();
}

#[test]
fn test_restore_refuses_a_damaged_backup_and_a_running_node_changing_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, backup) = (tmp.path().join("data"), tmp.path().join("backup"));
    let node = setup(&data);
    node.person("cy@example.org", "Cy");
    // A data-only backup: a restore keeps the data dir's key store.
    let mut cmd = carnet();
    cmd.args(["backup", "--without-keys", "--out"]).arg(&backup).arg("--data-dir").arg(&data);
    ok_json(cmd.output().unwrap());

    // While carnet runs on the data dir.
    let out = carnet().args(["restore", "--from"]).arg(&backup).arg("--data-dir").arg(&data).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use by another process"), "{err}");
    node.stop();

    // Into a new data dir: nothing there tells which erasures came after the backup.
    let fresh = tmp.path().join("fresh");
    let out = carnet().args(["restore", "--from"]).arg(&backup).arg("--data-dir").arg(&fresh).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--discard-current-dsar"), "{err}");
    assert!(!fresh.join("contacts.db").exists(), "nothing restored when refused");
    let mut cmd = carnet();
    cmd.args(["restore", "--discard-current-dsar", "--from"]).arg(&backup).arg("--data-dir").arg(&fresh);
    let out = ok_json(cmd.output().unwrap());
    assert_eq!(out["dsar_state"], "discarded", "{out}");
    assert_eq!(std::fs::read(fresh.join("mesh.key")).unwrap(), std::fs::read(data.join("mesh.key")).unwrap());

    // One changed byte in one file of the backup.
    let before = snapshot(&data);
    let file = backup.join("consent.db");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    let out = carnet().args(["restore", "--from"]).arg(&backup).arg("--data-dir").arg(&data).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a damaged backup was restored");
    assert!(err.contains("consent.db") && err.contains("does not match the manifest"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(snapshot(&data), before, "the data dir changed");
}

#[test]
fn test_backup_keeps_the_key_store_apart_from_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(&data, &["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let master = data.join("master.key");
    if !master.exists() {
        std::fs::write(&master, "a-master-key-for-the-backup-test-0123456789").unwrap();
    }

    let out =
        carnet().args(["backup", "--out"]).arg(tmp.path().join("b1")).arg("--data-dir").arg(&data).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--keys-out") && err.contains("master.key"), "{err}");
    assert!(!tmp.path().join("b1").exists(), "nothing written when refused");

    let b2 = tmp.path().join("b2");
    let out = carnet()
        .args(["backup", "--out"])
        .arg(&b2)
        .arg("--keys-out")
        .arg(b2.join("keys"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("apart"), "{err}");

    let (b3, keys) = (tmp.path().join("b3"), tmp.path().join("keys3"));
    let out = ok_json(
        carnet()
            .args(["backup", "--out"])
            .arg(&b3)
            .arg("--keys-out")
            .arg(&keys)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
    );
    assert!(!b3.join("master.key").exists());
    assert_eq!(std::fs::read(keys.join("master.key")).unwrap(), std::fs::read(&master).unwrap());
    let key_manifest: Value = serde_json::from_slice(&std::fs::read(keys.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(key_manifest["contents"], "key-store");
    assert_eq!(key_manifest["backup_id"], out["backup_id"]);
    let data_manifest: Value = serde_json::from_slice(&std::fs::read(b3.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(data_manifest["key_store"], "separate");
}
