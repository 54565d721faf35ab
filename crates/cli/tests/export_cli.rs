//! `carnet export contacts` as users run it: `carnet tenant create`, `carnet up`, then the
//! export into a file through the gateway (docs/export.md).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const CARNET: &str = env!("CARGO_BIN_EXE_carnet");

fn carnet() -> Command {
    let mut cmd = Command::new(CARNET);
    for (key, _) in std::env::vars() {
        if key.starts_with("CARNET__") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARNET__TELEMETRY__LOG_FILTER", "warn");
    cmd
}

/// Kills the node when dropped, so a failing test leaves no process behind.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `carnet up` on `dir` and returns it with its HTTP address.
fn up(dir: &Path) -> (Node, String) {
    let mut child = carnet()
        .args(["up", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn carnet");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let node = Node(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && let Some(rest) = line.split("HTTP on ").nth(1)
        {
            return (node, rest.split_whitespace().next().unwrap().to_string());
        }
    }
    panic!("carnet did not start");
}

fn ok_json(out: Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap()
}

/// Sends one HTTP/1.1 request over a plain TCP connection and returns the whole response.
fn http_request(addr: &str, method: &str, path: &str, key: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: carnet\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn export(dir: &Path, http: &str, key: &str, args: &[&str]) -> Output {
    carnet()
        .args(["export", "contacts", "--url", &format!("http://{http}"), "--api-key", key])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn test_export_contacts_writes_the_file_and_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let created = ok_json(carnet().args(["tenant", "create", "Export CLI", "--data-dir"]).arg(&data).output().unwrap());
    let (tenant, owner) = (created["tenant_id"].as_str().unwrap(), created["api_key"].as_str().unwrap().to_string());
    let sales = ok_json(
        carnet()
            .args(["apikey", "create", "--tenant", tenant, "--role", "sales", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap(),
    )["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (node, http) = up(&data);
    let mut ids = Vec::new();
    for (email, first) in [("ada@example.org", "Ada, Countess"), ("bob@example.org", "Bob"), ("cy@example.org", "Cy")] {
        let body = format!(
            r#"{{"email":"{email}","first_name":"{first}","source":{{"channel":"import","detail":"cli-test"}}}}"#
        );
        let response = http_request(&http, "POST", "/v1/contacts", &owner, &body);
        assert!(response.starts_with("HTTP/1.1 201"), "{response}");
        ids.push(response.split("\"id\":\"").nth(1).unwrap().split('"').next().unwrap().to_string());
    }

    // CSV: the file holds the header and every contact; the summary counts them.
    let out = export(dir.path(), &http, &owner, &["--format", "csv", "--out", "contacts.csv"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let summary = ok_json(out);
    assert_eq!(summary["contacts"], 3, "{summary}");
    assert_eq!(summary["format"], "csv");
    assert_eq!(summary["export_id"].as_str().map(str::len), Some(36), "{summary}");
    assert!(stderr.contains("exported 3 contacts"), "{stderr}");
    let file = dir.path().join("contacts.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(summary["bytes"], text.len() as u64);
    let records: Vec<&str> = text.split_terminator("\r\n").collect();
    assert_eq!(records.len(), 4, "{text}");
    assert!(records[0].starts_with("id,email,first_name,last_name,phone,source_channel,"), "{text}");
    assert!(
        records[1].starts_with(&format!("{},ada@example.org,\"Ada, Countess\",,,import,cli-test,", ids[0])),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "personal data: owner only");
    }

    // JSON lines with two columns.
    let summary =
        ok_json(export(dir.path(), &http, &owner, &["--format", "jsonl", "--out", "c.jsonl", "--fields", "email,id"]));
    assert_eq!(summary["contacts"], 3, "{summary}");
    let text = std::fs::read_to_string(dir.path().join("c.jsonl")).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first, serde_json::json!({"email": "ada@example.org", "id": ids[0]}));

    // Refused: a sales key, an unknown column, an unknown format. No file is left behind.
    let out = export(dir.path(), &http, &sales, &["--format", "csv", "--out", "sales.csv"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403 permission_denied"), "{out:?}");
    let out = export(dir.path(), &http, &owner, &["--format", "csv", "--out", "bad.csv", "--fields", "id,shoe_size"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("400 invalid_argument (fields[1])"), "{out:?}");
    let out = export(dir.path(), &http, &owner, &["--format", "xml", "--out", "bad.xml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("xml"), "{out:?}");
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    names.sort();
    assert_eq!(names, ["c.jsonl", "contacts.csv", "data"]);

    // The trail holds one entry per export handed out.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = http_request(&http, "GET", "/v1/audit?action=export&record_type=contact_list", &owner, "");
        if response.matches("\"record_type\":\"contact_list\"").count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{response}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(node);
}
