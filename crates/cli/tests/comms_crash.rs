//! A campaign survives a crash: `carnet up` is killed (SIGKILL) mid-campaign and started again
//! on the same data dir; every recipient ends up with exactly one mail, at the real SMTP server
//! on loopback (aiosmtpd, tests/smtp/sink.py).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/proc.rs"]
mod proc;
use proc::Reaper;

const CARNET: &str = env!("CARGO_BIN_EXE_carnet");
const RECIPIENTS: usize = 120;

/// The loopback SMTP sink, or `None` (skipped) when aiosmtpd is missing and not required.
fn sink(dir: &Path) -> Option<(Reaper, u16)> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/smtp/sink.py");
    let available = Command::new("python3").args(["-c", "import aiosmtpd"]).status().is_ok_and(|s| s.success());
    if !available {
        assert!(std::env::var("CARNET_REQUIRE_SMTP").as_deref() != Ok("1"), "aiosmtpd is required");
        eprintln!("skipped: aiosmtpd is not installed");
        return None;
    }
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--host", "127.0.0.1", "--port", "0", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the SMTP sink");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("READY ").unwrap_or_else(|| panic!("sink said {line:?}")).parse().unwrap();
    Some((Reaper(child), port))
}

/// Recipients of every mail the sink received, with their Message-IDs.
fn received(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // The sink writes `.tmp-*.json` first and renames it when complete.
        let complete = !path.file_name().unwrap().to_string_lossy().starts_with('.');
        if complete && path.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let data = v["data"].as_str().unwrap();
            let id = data
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                .map(|l| l[11..].trim().to_string())
                .unwrap_or_default();
            for rcpt in v["rcpt_tos"].as_array().unwrap() {
                out.push((rcpt.as_str().unwrap().to_string(), id.clone()));
            }
        }
    }
    out
}

fn carnet(data_dir: &Path, smtp_port: u16) -> Command {
    let mut cmd = Command::new(CARNET);
    for (key, _) in std::env::vars() {
        if key.starts_with("CARNET__") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARNET__TELEMETRY__LOG_FILTER", "warn")
        .env("CARNET__COMMS__SMTP__HOST", "127.0.0.1")
        .env("CARNET__COMMS__SMTP__PORT", smtp_port.to_string())
        .env("CARNET__COMMS__SMTP__TLS", "none")
        // Slow enough that the kill lands mid-campaign, short leases so the restart resumes fast.
        .env("CARNET__COMMS__SEND_RATE_PER_SECOND", "60")
        .env("CARNET__COMMS__BATCH_SIZE", "20")
        .env("CARNET__COMMS__CLAIM_LEASE_MS", "1500")
        .env("CARNET__COMMS__POLL_INTERVAL_MS", "100")
        // The setup makes a few hundred calls with one key.
        .env("CARNET__GATEWAY__RATE_LIMIT_PER_SECOND", "0")
        .env("CARNET__NODE__DATA_DIR", data_dir);
    cmd
}

/// Starts `carnet up` and returns it with its HTTP address.
fn up(data_dir: &Path, smtp_port: u16) -> (Reaper, String) {
    let mut cmd = carnet(data_dir, smtp_port);
    cmd.args(["up", "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    let mut child = Reaper(cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn carnet"));
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let line = lines.next().expect("carnet closed stderr").unwrap();
        if let Some(rest) = line.split("HTTP on ").nth(1) {
            let http = rest.split_whitespace().next().unwrap().to_string();
            // Keep draining stderr so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return (child, http);
        }
    }
    panic!("carnet did not start");
}

fn http(addr: &str, method: &str, path: &str, key: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: carnet\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    // Responses are small and sent with content-length (no chunking) by the gateway.
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

#[test]
fn test_killed_mid_campaign_restart_sends_each_remaining_mail_exactly_once() {
    let data = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let Some((_smtp, port)) = sink(spool.path()) else { return };
    let out = carnet(data.path(), port).args(["tenant", "create", "Crashy"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_string();

    let (mut node, addr) = up(data.path(), port);
    let purpose = r#"{"key":"news","lawful_basis":"consent","notice":"Monthly news."}"#;
    assert_eq!(http(&addr, "POST", "/v1/purposes", &key, purpose).0, 201);
    let mut ids = Vec::new();
    for i in 0..RECIPIENTS {
        let body = format!(r#"{{"email":"r{i}@example.org","source":{{"channel":"api","detail":"crash-test"}}}}"#);
        let (status, contact) = http(&addr, "POST", "/v1/contacts", &key, &body);
        assert_eq!(status, 201, "{contact}");
        let id = contact["id"].as_str().unwrap().to_string();
        let grant = format!(r#"{{"contact_id":"{id}","purpose":"news","action":"grant","source":"api"}}"#);
        assert_eq!(http(&addr, "POST", "/v1/consents", &key, &grant).0, 201);
        ids.push(id);
    }
    let campaign = serde_json::json!({"purpose": "news", "subject": "News", "body": "Hello.", "contact_ids": ids});
    let (status, created) = http(&addr, "POST", "/v1/campaigns", &key, &campaign.to_string());
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(http(&addr, "POST", &format!("/v1/campaigns/{id}/send"), &key, "").0, 202);

    // Kill the node once part of the campaign went out.
    let deadline = Instant::now() + Duration::from_secs(60);
    while received(spool.path()).len() < RECIPIENTS / 4 {
        assert!(Instant::now() < deadline, "mail did not start flowing");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A varying delay moves the kill across the send cycle (mid-transaction, mid-commit, idle).
    let jitter = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 25;
    std::thread::sleep(Duration::from_millis(jitter as u64));
    node.0.kill().unwrap();
    node.0.wait().unwrap();
    let before = received(spool.path()).len();
    assert!(before < RECIPIENTS, "the kill came after the campaign finished ({before} mails)");

    let (mut node, addr) = up(data.path(), port);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, c) = http(&addr, "GET", &format!("/v1/campaigns/{id}"), &key, "");
        if c["status"] == "completed" {
            assert_eq!(c["sent"], RECIPIENTS as u64, "{c}");
            break;
        }
        assert!(Instant::now() < deadline, "campaign did not complete after the restart: {c}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mails = received(spool.path());
    let mut per_recipient: HashMap<&str, usize> = HashMap::new();
    for (rcpt, _) in &mails {
        *per_recipient.entry(rcpt.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_recipient.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "mailed more than once: {twice:?}");
    assert_eq!(per_recipient.len(), RECIPIENTS, "every recipient got its mail ({before} before the kill)");
    let mut message_ids: Vec<&str> = mails.iter().map(|(_, id)| id.as_str()).collect();
    message_ids.sort();
    message_ids.dedup();
    assert_eq!(message_ids.len(), RECIPIENTS);

    let _ = Command::new("kill").arg("-TERM").arg(node.0.id().to_string()).status();
    assert!(node.0.wait().unwrap().success(), "a clean stop after the campaign");
}
