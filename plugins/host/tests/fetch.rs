//! The plugins' HTTP fetch against a loopback server run by the test: a declared host is fetched
//! and its body reaches the plugin, an undeclared one is refused before any connection, and the
//! body cap, the fetch timeout, the run's deadline and the fetches-per-run cap hold. The plugins
//! are components built here from WAT, as in `hostile.rs`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carnet_plugin_host::{FetchLimits, Host, Limits, Manifest, Plugin, RunError, RunReport};

/// The canonical-ABI plumbing: the imports (before any definition), memory, a bump
/// `cabi_realloc` (the host writes the response body through it), and the return area of
/// `enrich` at 16 (`result<list<field>, enrich-error>`: tag at 16, payload at 20..32).
const PRELUDE: &str = r#"
  (import "carnet:enricher/http@0.1.0" "fetch" (func $fetch (param i32 i32 i32)))
  (import "carnet:enricher/log@0.1.0" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    global.get $heap
    local.get 2 i32.const 1 i32.sub i32.add
    local.get 2 i32.const 1 i32.sub i32.const -1 i32.xor i32.and
    local.set $p
    local.get $p local.get 3 i32.add global.set $heap
    (block $ok
      global.get $heap memory.size i32.const 65536 i32.mul i32.le_u br_if $ok
      global.get $heap memory.size i32.const 65536 i32.mul i32.sub
      i32.const 65535 i32.add i32.const 65536 i32.div_u memory.grow drop)
    local.get $p)
"#;

/// A plugin that logs a line, fetches `url` `times` times, and returns what the last fetch gave:
/// `[{status: "200"}, {body: <body>}]` or `[{error: <message>}]`.
///
/// `fetch` returns through the area at 64: tag at 64, then `{status: u16 at 68, body at 72/76}`
/// or the error string at 68/72. Keys live at 100 (`statusbodyerror`), the URL at 1024.
fn fetcher(url: &str, times: u32) -> Vec<u8> {
    let body = format!(
        r#"
  (data (i32.const 100) "statusbodyerrorfetching")
  (data (i32.const 1024) "{url}")
  (func (export "enrich") (param i32 i32) (result i32)
    (local $i i32)
    i32.const 1 i32.const 115 i32.const 8 call $log
    (block $done
      (loop $again
        local.get $i i32.const {times} i32.ge_u br_if $done
        i32.const 1024 i32.const {len} i32.const 64 call $fetch
        local.get $i i32.const 1 i32.add local.set $i
        br $again))
    (if (i32.eqz (i32.load8_u (i32.const 64)))
      (then
        i32.const 300 (i32.load16_u (i32.const 68)) i32.const 100 i32.div_u i32.const 48 i32.add i32.store8
        i32.const 301 (i32.load16_u (i32.const 68)) i32.const 10 i32.div_u i32.const 10 i32.rem_u
        i32.const 48 i32.add i32.store8
        i32.const 302 (i32.load16_u (i32.const 68)) i32.const 10 i32.rem_u i32.const 48 i32.add i32.store8
        i32.const 200 i32.const 100 i32.store
        i32.const 204 i32.const 6 i32.store
        i32.const 208 i32.const 300 i32.store
        i32.const 212 i32.const 3 i32.store
        i32.const 216 i32.const 106 i32.store
        i32.const 220 i32.const 4 i32.store
        i32.const 224 (i32.load (i32.const 72)) i32.store
        i32.const 228 (i32.load (i32.const 76)) i32.store
        i32.const 24 i32.const 2 i32.store)
      (else
        i32.const 200 i32.const 110 i32.store
        i32.const 204 i32.const 5 i32.store
        i32.const 208 (i32.load (i32.const 68)) i32.store
        i32.const 212 (i32.load (i32.const 72)) i32.store
        i32.const 24 i32.const 1 i32.store))
    i32.const 16 i32.const 0 i32.store8
    i32.const 20 i32.const 200 i32.store
    i32.const 16)
"#,
        len = url.len()
    );
    let wat = format!("(module {PRELUDE} {body})");
    let mut module = wat::parse_str(&wat).expect("valid wat");
    let mut resolve = wit_parser::Resolve::default();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let (pkg, _) = resolve.push_dir(&dir).expect("the WIT package parses");
    let world = resolve.select_world(&[pkg], Some("enricher")).expect("world");
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8, false)
        .expect("metadata");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("module")
        .validate(true)
        .encode()
        .expect("component")
}

fn manifest(hosts: &[String]) -> Manifest {
    Manifest {
        name: "fetcher".into(),
        version: "1.0.0".into(),
        api_version: "0.1.0".into(),
        reads: vec!["email".into()],
        writes: vec!["status".into(), "body".into(), "error".into()],
        categories: vec![],
        purposes: vec![],
        profiling: false,
        hosts: hosts.to_vec(),
    }
}

fn contact() -> BTreeMap<String, String> {
    BTreeMap::from([("email".to_string(), "ada@analytical-engines.org".to_string())])
}

fn host(timeout: Duration, fetch: FetchLimits) -> Host {
    Host::with_fetch_limits(Limits { timeout, pool_size: 4, memory_bytes: 16 << 20, ..Limits::default() }, fetch)
        .unwrap()
}

/// Fetch limits for loopback: plain http allowed.
fn loopback() -> FetchLimits {
    FetchLimits { allow_plain_http: true, ..FetchLimits::default() }
}

fn load(host: &Host, hosts: &[String], url: &str, times: u32) -> Plugin {
    host.load(manifest(hosts), &fetcher(url, times)).unwrap()
}

/// Runs the plugin and returns its fields as a map, with the report.
fn run(host: &Host, plugin: &Plugin) -> Result<(BTreeMap<String, String>, RunReport), RunError> {
    host.run(plugin, &contact()).map(|(fields, report)| (fields.into_iter().collect(), report))
}

fn error_of(fields: &BTreeMap<String, String>) -> &str {
    fields.get("error").map(String::as_str).unwrap_or_else(|| panic!("the fetch did not fail: {fields:?}"))
}

/// How the loopback server answers.
#[derive(Clone)]
enum Reply {
    /// With this status line, headers and body, then closes the connection.
    Answer { status: &'static str, headers: &'static str, body: Vec<u8>, with_length: bool },
    /// Reads the request and never answers.
    Never,
}

/// A loopback HTTP/1.1 server on its own threads, counting connections and keeping the heads of
/// the requests it read.
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(reply: Reply) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let (reply, seen) = (reply.clone(), seen.clone());
                std::thread::spawn(move || answer(stream, reply, seen));
            }
        });
        Server { addr, connections, requests }
    }

    fn answering(body: &str) -> Server {
        Server::start(Reply::Answer { status: "200 OK", headers: "", body: body.into(), with_length: true })
    }

    fn authority(&self) -> String {
        self.addr.to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn answer(mut stream: TcpStream, reply: Reply, seen: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
    match reply {
        Reply::Answer { status, headers, body, with_length } => {
            let length = if with_length { format!("content-length: {}\r\n", body.len()) } else { String::new() };
            let _ = write!(stream, "HTTP/1.1 {status}\r\n{headers}{length}connection: close\r\n\r\n");
            let _ = stream.write_all(&body);
        }
        Reply::Never => std::thread::sleep(Duration::from_secs(60)),
    }
}

#[test]
fn test_a_declared_host_is_fetched_and_its_body_reaches_the_plugin() {
    let server = Server::answering("Analytical Engines");
    let host = host(Duration::from_secs(5), loopback());
    let plugin = load(&host, &[server.authority()], &server.url("/company?domain=analytical-engines.org"), 1);
    let (fields, report) = run(&host, &plugin).unwrap();
    assert_eq!(fields.get("status").map(String::as_str), Some("200"), "{fields:?}");
    assert_eq!(fields.get("body").map(String::as_str), Some("Analytical Engines"));
    assert_eq!((report.fetches, report.log_lines), (1, 1));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].starts_with("GET /company?domain=analytical-engines.org HTTP/1.1\r\n"), "{}", requests[0]);
    assert!(requests[0].to_ascii_lowercase().contains(&format!("host: {}", server.authority())), "{}", requests[0]);
}

#[test]
fn test_a_redirect_is_returned_to_the_plugin_not_followed() {
    let target = Server::answering("elsewhere");
    let location: &'static str = format!("location: {}\r\n", target.url("/")).leak();
    let server =
        Server::start(Reply::Answer { status: "302 Found", headers: location, body: vec![], with_length: true });
    let host = host(Duration::from_secs(5), loopback());
    let plugin = load(&host, &[server.authority(), target.authority()], &server.url("/"), 1);
    let (fields, report) = run(&host, &plugin).unwrap();
    assert_eq!(fields.get("status").map(String::as_str), Some("302"), "{fields:?}");
    assert_eq!(fields.get("body").map(String::as_str), Some(""));
    assert_eq!(report.fetches, 1);
    assert_eq!(target.connections(), 0, "the redirect was followed");
}

#[test]
fn test_an_undeclared_host_is_refused_without_a_connection() {
    let server = Server::answering("Analytical Engines");
    let port = server.addr.port();
    let declared = server.authority();
    let cases: Vec<(Vec<String>, String, FetchLimits, &str)> = vec![
        // The same server under a name the manifest does not declare.
        (vec![declared.clone()], format!("http://localhost:{port}/"), loopback(), "not declared"),
        // The declared host without its port stands for port 80.
        (vec!["127.0.0.1".into()], server.url("/"), loopback(), "not declared"),
        (vec![format!("127.0.0.1:{}", port.wrapping_add(1))], server.url("/"), loopback(), "not declared"),
        (vec![], server.url("/"), loopback(), "not declared"),
        (vec![declared.clone()], format!("http://ada@{declared}/"), loopback(), "credentials"),
        (vec![declared.clone()], server.url("/"), FetchLimits::default(), "only https://"),
    ];
    let mut hosts = BTreeMap::new();
    for (declared, url, limits, why) in cases {
        let allow = limits.allow_plain_http;
        let host = hosts.entry(allow).or_insert_with(|| host(Duration::from_secs(5), limits));
        let plugin = load(host, &declared, &url, 1);
        let (fields, report) = run(host, &plugin).unwrap();
        assert!(error_of(&fields).contains(why), "{url} with {declared:?}: {fields:?}");
        assert_eq!(report.fetches, 0, "{url}");
    }
    assert_eq!(server.connections(), 0, "a refused fetch reached the server");
}

#[test]
fn test_a_body_over_the_cap_fails_the_fetch() {
    let limits = FetchLimits { max_body_bytes: 1024, ..loopback() };
    let host = host(Duration::from_secs(5), limits);
    for with_length in [true, false] {
        let big = Server::start(Reply::Answer { status: "200 OK", headers: "", body: vec![b'a'; 4096], with_length });
        let plugin = load(&host, &[big.authority()], &big.url("/"), 1);
        let (fields, report) = run(&host, &plugin).unwrap();
        assert_eq!(error_of(&fields), "the response body is larger than 1024 bytes", "length known: {with_length}");
        assert_eq!(report.fetches, 1);
        // A body at the cap passes.
        let at_cap =
            Server::start(Reply::Answer { status: "200 OK", headers: "", body: vec![b'a'; 1024], with_length });
        let plugin = load(&host, &[at_cap.authority()], &at_cap.url("/"), 1);
        let (fields, _) = run(&host, &plugin).unwrap();
        assert_eq!(fields.get("body").map(String::len), Some(1024), "length known: {with_length}");
    }
}

#[test]
fn test_a_server_that_never_answers_ends_with_the_fetch_timeout() {
    let silent = Server::start(Reply::Never);
    let host = host(Duration::from_secs(5), FetchLimits { timeout: Duration::from_millis(150), ..loopback() });
    let plugin = load(&host, &[silent.authority()], &silent.url("/"), 1);
    let started = Instant::now();
    let (fields, report) = run(&host, &plugin).unwrap();
    let took = started.elapsed();
    assert_eq!(error_of(&fields), "the fetch timed out after 150 ms");
    assert_eq!(report.fetches, 1);
    // The message names the fetch timeout, not the run's 5 s deadline: that is what fired.
    assert!(took >= Duration::from_millis(150), "took {took:?}");
    assert_eq!(silent.requests().len(), 1);
}

#[test]
fn test_a_server_that_never_answers_fails_its_run_alone_at_the_run_deadline() {
    let silent = Server::start(Reply::Never);
    let healthy = Server::answering("Analytical Engines");
    let run_timeout = Duration::from_millis(300);
    let host = Arc::new(host(run_timeout, FetchLimits { timeout: Duration::from_secs(30), ..loopback() }));
    let stuck = load(&host, &[silent.authority()], &silent.url("/"), 1);
    let fine = Arc::new(load(&host, &[healthy.authority()], &healthy.url("/"), 1));
    // A healthy run alongside, on another thread, while the stuck one waits.
    let alongside = {
        let (host, fine) = (host.clone(), fine.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            run(&host, &fine)
        })
    };
    let started = Instant::now();
    let err = run(&host, &stuck).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, RunError::Timeout);
    // Far from the 30 s fetch timeout: the run's deadline ended it (no tight bound: CI is noisy).
    assert!(took >= run_timeout && took < Duration::from_secs(10), "took {took:?}");
    let (fields, _) = alongside.join().unwrap().unwrap();
    assert_eq!(fields.get("body").map(String::as_str), Some("Analytical Engines"));
    // And the host keeps working after.
    let (fields, _) = run(&host, &fine).unwrap();
    assert_eq!(fields.get("status").map(String::as_str), Some("200"));
}

#[test]
fn test_fetches_past_the_cap_per_run_are_refused() {
    let server = Server::answering("ok");
    let host = host(Duration::from_secs(5), FetchLimits { max_fetches: 2, ..loopback() });
    let plugin = load(&host, &[server.authority()], &server.url("/"), 3);
    let (fields, report) = run(&host, &plugin).unwrap();
    assert_eq!(error_of(&fields), "the plugin has used its 2 fetches for this run");
    assert_eq!(report.fetches, 2);
    assert_eq!(server.requests().len(), 2);
    // The cap is per run: the next run fetches again.
    let (_, report) = run(&host, &plugin).unwrap();
    assert_eq!(report.fetches, 2);
    assert_eq!(server.requests().len(), 4);
}

#[test]
fn test_the_fetch_works_from_a_runtime_worker_and_a_blocking_thread() {
    let server = Server::answering("Analytical Engines");
    let host = Arc::new(host(Duration::from_secs(5), loopback()));
    let plugin = Arc::new(load(&host, &[server.authority()], &server.url("/"), 1));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (on_worker, on_blocking) = runtime.block_on(async {
        // As the CLI does: straight from async code.
        let on_worker = run(&host, &plugin);
        let (host, plugin) = (host.clone(), plugin.clone());
        let on_blocking = tokio::task::spawn_blocking(move || run(&host, &plugin)).await.unwrap();
        (on_worker, on_blocking)
    });
    for result in [on_worker, on_blocking] {
        let (fields, report) = result.unwrap();
        assert_eq!(fields.get("body").map(String::as_str), Some("Analytical Engines"));
        assert_eq!(report.fetches, 1);
    }
    // The host (and its fetch runtime) may be dropped from async code.
    runtime.block_on(async move { drop(host) });
}
