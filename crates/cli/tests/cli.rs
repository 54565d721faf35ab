//! The `carnet` binary as users run it: `config show`, `up`, `migrate` and `serve`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CARNET: &str = env!("CARGO_BIN_EXE_carnet");

fn carnet() -> Command {
    let mut cmd = Command::new(CARNET);
    // Start from a clean configuration environment.
    for (key, _) in std::env::vars() {
        if key.starts_with("CARNET__") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARNET__TELEMETRY__LOG_FILTER", "warn");
    cmd
}

/// Starts `carnet` with `args` and waits for its `gRPC on ADDR` start line on stderr.
fn start(cmd: Command) -> (Child, String) {
    let (child, line) = start_line(cmd);
    let grpc = line.split("gRPC on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    (child, grpc)
}

/// Starts `carnet` and returns its start line (`… HTTP on ADDR gRPC on ADDR …`).
fn start_line(mut cmd: Command) -> (Child, String) {
    let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn carnet");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if line.contains("gRPC on ") {
                    return (child, line);
                }
                seen.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("carnet exited with {status}: {}", seen.join("\n"));
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("carnet closed stderr: {}", seen.join("\n"));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("carnet did not start: {}", seen.join("\n"));
}

fn stop(mut child: Child) {
    // SIGTERM, as Kubernetes and Ctrl-C do; the node must exit cleanly.
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "carnet exited with {status}");
}

/// Asks the node's health service over a connection that is closed again before returning
/// (its runtime is dropped), so a graceful shutdown has no idle client to wait for.
fn serving(addr: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(health_check(addr))
}

async fn health_check(addr: &str) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else { return false };
    let Ok(channel) = endpoint.connect().await else { return false };
    let mut client = HealthClient::new(channel);
    let req = HealthCheckRequest { service: "carnet.contacts.v1.ContactsService".into() };
    matches!(client.check(req).await, Ok(r) if r.get_ref().status == 1)
}

#[test]
fn test_config_show_redacts_secrets() {
    let out = carnet()
        .args(["config", "show"])
        .env("CARNET__MESH__SIGNING_KEY", "0123456789abcdef0123456789abcdef-very-secret")
        .env("CARNET__CONTACTS__DATABASE_URL", "postgres://carnet:hunter2@db:5432/contacts")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("very-secret"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("postgres://carnet:[redacted]@db:5432/contacts"), "{text}");
    assert!(text.contains("listen_addr = \"127.0.0.1:50051\""), "{text}");
}

#[test]
fn test_unknown_config_key_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("carnet.toml");
    std::fs::write(&file, "[contacts]\nmax_conections = 4\n").unwrap();
    let out = carnet().args(["config", "show", "--config"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("max_conections"), "{err}");
    let out = carnet().args(["config", "show"]).env("CARNET__GRPC__LISTEN", "x").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("listen"));
}

#[test]
fn test_unknown_target_lists_the_valid_ones() {
    let out = carnet().args(["serve", "--target", "billing"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("billing") && err.contains("contacts"), "{err}");
}

#[test]
fn test_up_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = carnet();
    cmd.args(["up", "--grpc-addr", "127.0.0.1:0", "--data-dir"]).arg(dir.path());
    let (child, addr) = start(cmd);
    assert!(serving(&addr), "health check on {addr}");
    let stopping = Instant::now();
    stop(child);
    assert!(stopping.elapsed() < Duration::from_secs(5), "graceful shutdown took {:?}", stopping.elapsed());
    assert!(dir.path().join("contacts.db").exists());
    assert!(dir.path().join("mesh.key").exists());
}

#[test]
fn test_serve_requires_a_mesh_key() {
    let out = carnet().args(["serve", "--target", "contacts"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("mesh.signing_key"));
}

#[test]
fn test_migrate_then_serve_on_postgres() {
    let server = match std::env::var("CARNET_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("CARNET_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("CARNET_TEST_POSTGRES_URL is not set")
        }
        _ => return eprintln!("skipped: CARNET_TEST_POSTGRES_URL is not set"),
    };
    let name = format!("carnet_cli_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = rt.block_on(carnet_kit::db::create_postgres_database(&server, &name)).unwrap();
    let keys_url = rt.block_on(carnet_kit::db::create_postgres_database(&server, &format!("{name}_keys"))).unwrap();
    drop(rt);
    let env = [
        ("CARNET__CONTACTS__DATABASE_URL", url.as_str()),
        ("CARNET__KEYS__DATABASE_URL", keys_url.as_str()),
        ("CARNET__KEYS__MASTER_KEY", "a-key-store-master-key-of-at-least-32-bytes"),
        ("CARNET__MESH__SIGNING_KEY", "a-mesh-signing-key-of-at-least-32-bytes"),
        ("CARNET__GRPC__LISTEN_ADDR", "127.0.0.1:0"),
    ];
    // Split mode does not migrate by itself: it refuses to start on a stale schema.
    let out = carnet().args(["serve", "--target", "contacts"]).envs(env).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("carnet migrate"));
    let out = carnet().args(["migrate", "--target", "contacts"]).envs(env).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut cmd = carnet();
    cmd.args(["serve", "--target", "contacts"]).envs(env);
    let (contacts, addr) = start(cmd);
    assert!(serving(&addr));

    // Consent and the gateway as processes of their own, each on its own database, reaching the
    // services they need over the network.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let gateway_url = rt.block_on(carnet_kit::db::create_postgres_database(&server, &format!("{name}_gw"))).unwrap();
    let consent_url = rt.block_on(carnet_kit::db::create_postgres_database(&server, &format!("{name}_cs"))).unwrap();
    drop(rt);
    let contacts_endpoint = format!("http://{addr}");
    let consent_env = [
        ("CARNET__CONSENT__DATABASE_URL", consent_url.as_str()),
        ("CARNET__CONSENT__CONTACTS_ENDPOINT", contacts_endpoint.as_str()),
        ("CARNET__MESH__SIGNING_KEY", "a-mesh-signing-key-of-at-least-32-bytes"),
        ("CARNET__GRPC__LISTEN_ADDR", "127.0.0.1:0"),
    ];
    let out = carnet().args(["migrate", "--target", "consent"]).envs(consent_env).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut cmd = carnet();
    cmd.args(["serve", "--target", "consent"]).envs(consent_env);
    let (consent, consent_addr) = start(cmd);
    let consent_endpoint = format!("http://{consent_addr}");
    let gateway_env = [
        ("CARNET__GATEWAY__DATABASE_URL", gateway_url.as_str()),
        ("CARNET__GATEWAY__CONTACTS_ENDPOINT", contacts_endpoint.as_str()),
        ("CARNET__GATEWAY__CONSENT_ENDPOINT", consent_endpoint.as_str()),
        ("CARNET__GATEWAY__LISTEN_ADDR", "127.0.0.1:0"),
        ("CARNET__MESH__SIGNING_KEY", "a-mesh-signing-key-of-at-least-32-bytes"),
        ("CARNET__GRPC__LISTEN_ADDR", "127.0.0.1:0"),
    ];
    let out = carnet().args(["migrate", "--target", "gateway"]).envs(gateway_env).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = carnet().args(["tenant", "create", "Split Inc"]).envs(gateway_env).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["api_key"].as_str().unwrap().to_string();
    let mut cmd = carnet();
    cmd.args(["serve", "--target", "gateway"]).envs(gateway_env);
    let (gateway, line) = start_line(cmd);
    let http = line.split("HTTP on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let body = r#"{"email":"split@example.org","source":{"channel":"api","detail":"cli-test"}}"#;
    let response = http_request(&http, "POST", "/v1/contacts", &key, body);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let response = http_request(&http, "GET", "/v1/contacts?q=split@example.org", &key, "");
    assert!(response.starts_with("HTTP/1.1 200") && response.contains("split@example.org"), "{response}");
    let id = response.split("\"id\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let purpose = r#"{"key":"newsletter","lawful_basis":"consent","notice":"Monthly news."}"#;
    let response = http_request(&http, "POST", "/v1/purposes", &key, purpose);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let grant = format!(r#"{{"contact_id":"{id}","purpose":"newsletter","action":"grant","source":"api"}}"#);
    let response = http_request(&http, "POST", "/v1/consents", &key, &grant);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    // The check crosses three processes: gateway → consent → contacts (for the flags).
    let check = format!(r#"{{"checks":[{{"contact_id":"{id}","purpose":"newsletter"}}]}}"#);
    let response = http_request(&http, "POST", "/v1/consents/check", &key, &check);
    assert!(response.contains("\"allowed\":true"), "{response}");
    stop(gateway);
    stop(consent);
    stop(contacts);
}

/// Sends one HTTP/1.1 request over a plain TCP connection and returns the whole response.
fn http_request(addr: &str, method: &str, path: &str, key: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let content = if body.is_empty() { String::new() } else { "content-type: application/json\r\n".to_string() };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: carnet\r\nauthorization: Bearer {key}\r\n{content}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// `carnet keys rotate`: a new tenant-key version rewraps the person's key, the old version goes,
/// and the contact still reads after a restart.
#[test]
fn test_keys_rotate_rewraps_and_the_data_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = carnet().args(["tenant", "create", "Rotate Inc", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (tenant, key) = (created["tenant_id"].as_str().unwrap().to_string(), created["api_key"].as_str().unwrap());
    let up = |dir: &std::path::Path| {
        let mut cmd = carnet();
        cmd.args(["up", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"]).arg(dir);
        let (child, line) = start_line(cmd);
        let http = line.split("HTTP on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        (child, http)
    };
    let (node, http) = up(dir.path());
    let body = r#"{"email":"rotate@example.org","source":{"channel":"api","detail":"cli-test"}}"#;
    let response = http_request(&http, "POST", "/v1/contacts", key, body);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let id = response.split("\"id\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    stop(node);

    let rotate = || {
        let out = carnet().args(["keys", "rotate", "--data-dir"]).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = rotate();
    assert_eq!(first["tenant"], tenant);
    assert_eq!((first["version"].as_i64(), first["rewrapped"].as_u64()), (Some(2), Some(1)), "{first}");
    assert_eq!(first["removed_versions"], serde_json::json!([1]));
    let bad = carnet().args(["keys", "rotate", "--tenant", "nope", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--tenant must be a tenant id"));

    let (node, http) = up(dir.path());
    let response = http_request(&http, "GET", &format!("/v1/contacts/{id}"), key, "");
    assert!(response.starts_with("HTTP/1.1 200") && response.contains("rotate@example.org"), "{response}");
    stop(node);
}

/// `carnet import contacts`: a CSV through the gateway, the summary on stdout and the report
/// beside the file.
#[test]
fn test_import_contacts_prints_the_counts_and_saves_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = carnet().args(["tenant", "create", "Import Inc", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["api_key"].as_str().unwrap().to_string();
    let mut cmd = carnet();
    cmd.args(["up", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"]).arg(dir.path());
    let (node, line) = start_line(cmd);
    let http = line.split("HTTP on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let file = dir.path().join("customers.csv");
    std::fs::write(&file, "E-mail,Name\nada@example.org,Ada\nnot-an-email,Bob\nada@example.org,Ada twice\n").unwrap();
    let out = carnet()
        .args(["import", "contacts"])
        .arg(&file)
        .args(["--url", &format!("http://{http}"), "--map", "E-mail=email", "--map", "Name=first_name"])
        .args(["--basis", "contract", "--justification", "existing customers", "--quiet"])
        .env("CARNET_API_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(
        (summary["created"].as_u64(), summary["skipped"].as_u64(), summary["failed"].as_u64()),
        (Some(1), Some(1), Some(1))
    );
    let report = std::fs::read_to_string(summary["report"].as_str().unwrap()).unwrap();
    let lines: Vec<&str> = report.lines().map(|l| l.rsplit_once(',').unwrap().0).collect();
    assert_eq!(
        lines,
        [
            "line,outcome,reason",
            "2,created,",
            "3,failed,invalid_argument:email",
            "4,skipped,duplicate_in_file:email@line 2"
        ]
    );
    // A refused term is named: no basis evidence.
    let out = carnet()
        .args(["import", "contacts"])
        .arg(&file)
        .args(["--url", &format!("http://{http}"), "--basis", "contract", "--quiet"])
        .env("CARNET_API_KEY", &key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("evidence.justification"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(node);
}
