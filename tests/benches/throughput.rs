//! Throughput of Carnet next to bare baselines, measured the same way in one run:
//! `cargo bench -p carnet-tests --bench throughput`.
//!
//! gRPC scenarios are compared with a raw tonic echo RPC; HTTP scenarios (through the gateway,
//! with API-key authentication) with a bare axum handler echoing its JSON body.
//!
//! Every scenario runs with the same number of clients, each on its own HTTP/2 connection in its
//! own task, issuing its next call as soon as the previous one answers. The table gives each
//! scenario's throughput as a ratio of the echo baseline, so the numbers compare across machines.
//! Timings are reported, never asserted; the process exits non-zero only when a call failed.
//!
//! Crypto-shredding: `create` and `get` run on a node that encrypts personal data (the default),
//! and `create-plain` / `get-plain` on a second node with `keys.encrypt = false`, right after
//! each other in the same run; the encryption line gives on/off (target ≥ 0.8×).
//!
//! `CARNET_BENCH_CLIENTS` (default 32) and `CARNET_BENCH_SECONDS` (measured seconds, default 5)
//! override the defaults. A new scenario builds one call closure per client and hands them to
//! [`run`], then adds its row (and target, if the issue names one) in `main`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use carnet_kit::{Caller, CallerSigner};
use carnet_proto::bench::v1::echo_service_client::EchoServiceClient;
use carnet_proto::bench::v1::echo_service_server::{EchoService, EchoServiceServer};
use carnet_proto::bench::v1::{EchoRequest, EchoResponse};
use carnet_proto::common::v1::{Source, SourceChannel};
use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use carnet_proto::contacts::v1::{CreateContactRequest, GetContactRequest};
use carnet_tests::http::Http;
use carnet_tests::{ContactsClient, Sandbox};

/// Contacts created before the `get` scenario, read in rotation.
const GET_POOL_SIZE: usize = 1000;

/// One call of a scenario; resolves to `Ok` when the RPC succeeded.
type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// How wide and how long each scenario runs.
#[derive(Clone, Copy, Debug)]
struct Settings {
    clients: usize,
    warmup: Duration,
    measure: Duration,
}

impl Settings {
    /// Reads the settings from the environment, falling back to 32 clients, 1 s warm-up, 5 s measured.
    fn from_env() -> Settings {
        let clients: usize = env_or("CARNET_BENCH_CLIENTS", 32);
        let seconds: f64 = env_or("CARNET_BENCH_SECONDS", 5.0);
        assert!(clients > 0 && seconds > 0.0, "CARNET_BENCH_CLIENTS and CARNET_BENCH_SECONDS must be positive");
        Settings { clients, warmup: Duration::from_secs(1), measure: Duration::from_secs_f64(seconds) }
    }
}

/// Returns the parsed value of the environment variable `name`, or `default` when it is unset.
fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name} must be a number, got `{text}`")),
        Err(_) => default,
    }
}

/// What one scenario measured.
struct Report {
    name: &'static str,
    /// The scenario this one is compared with.
    baseline: &'static str,
    clients: usize,
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// Failed calls over the whole run, warm-up included.
    errors: u64,
    first_error_opt: Option<Status>,
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// Latencies of the OK calls that started and finished inside the measured period.
    latencies: Vec<Duration>,
    errors: u64,
    first_error_opt: Option<Status>,
}

/// Runs a scenario: each closure of `clients` drives one connection in its own task, calling
/// back to back through the warm-up and the measured period. Throughput counts the OK calls that
/// started and finished inside the measured period.
async fn run<F>(name: &'static str, settings: Settings, clients: Vec<F>) -> Report
where
    F: FnMut(u64) -> Call + Send + 'static,
{
    let count = clients.len();
    let started = Instant::now();
    let measure_from = started + settings.warmup;
    let measure_until = measure_from + settings.measure;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut call| {
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = 0;
                while Instant::now() < measure_until {
                    let start = Instant::now();
                    let result = call(n).await;
                    let end = Instant::now();
                    n += 1;
                    match result {
                        Ok(()) if start >= measure_from && end <= measure_until => tally.latencies.push(end - start),
                        Ok(()) => {}
                        Err(status) => {
                            tally.errors += 1;
                            tally.first_error_opt.get_or_insert(status);
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.expect("bench client task");
        total.latencies.extend(tally.latencies);
        total.errors += tally.errors;
        total.first_error_opt = total.first_error_opt.or(tally.first_error_opt);
    }
    total.latencies.sort_unstable();
    let percentile = |q: f64| match total.latencies.len() {
        0 => Duration::ZERO,
        len => total.latencies[((len - 1) as f64 * q).round() as usize],
    };
    Report {
        name,
        baseline: if name.starts_with("http") { "http-echo" } else { "echo" },
        clients: count,
        ops_per_sec: total.latencies.len() as f64 / settings.measure.as_secs_f64(),
        p50: percentile(0.50),
        p99: percentile(0.99),
        errors: total.errors,
        first_error_opt: total.first_error_opt,
    }
}

/// Opens a new HTTP/2 connection to `addr`.
async fn connect(addr: SocketAddr) -> Channel {
    carnet_kit::grpc::endpoint(&format!("http://{addr}")).expect("uri").connect().await.expect("bench client connects")
}

/// The baseline service: answers with the payload it was sent, doing no other work.
struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse { payload: request.into_inner().payload }))
    }
}

/// Serves [`Echo`] on a free loopback port with the node's transport settings; returns its address.
async fn start_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind echo server");
    let addr = listener.local_addr().expect("echo server address");
    let server = Server::builder().tcp_nodelay(true).add_service(EchoServiceServer::new(Echo));
    tokio::spawn(server.serve_with_incoming(TcpListenerStream::new(listener)));
    addr
}

/// Returns the create request the `create` scenario sends, with `email` as the unique field.
fn create_request(email: String) -> CreateContactRequest {
    CreateContactRequest {
        email: Some(email),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        phone: None,
        fields: Default::default(),
        source: Some(Source {
            channel: SourceChannel::Api as i32,
            detail: "bench".into(),
            actor: String::new(),
            collected_at: None,
        }),
        erasure_override_reason: String::new(),
    }
}

/// Returns one contacts client per bench client, each on its own connection, acting as `caller`.
async fn contacts_clients(sandbox: &Sandbox, caller: &Caller, count: usize) -> Vec<ContactsClient> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let signer = CallerSigner::new(sandbox.node.mesh_key.clone(), caller.clone());
        clients.push(ContactsServiceClient::with_interceptor(connect(sandbox.node.grpc_addr).await, signer));
    }
    clients
}

/// Measures the echo baseline with a payload as large as an encoded contact create request.
async fn bench_echo(settings: Settings) -> Report {
    let addr = start_echo().await;
    let payload = vec![b'x'; create_request("bench-00-000000@example.org".into()).encoded_len()];
    let mut clients = Vec::with_capacity(settings.clients);
    for _ in 0..settings.clients {
        let client = EchoServiceClient::new(connect(addr).await);
        let payload = payload.clone();
        clients.push(move |_n: u64| -> Call {
            let (mut client, payload) = (client.clone(), payload.clone());
            Box::pin(async move { client.echo(EchoRequest { payload }).await.map(drop) })
        });
    }
    run("echo", settings, clients).await
}

/// Measures `CreateContact`, each call with an e-mail no other call used.
async fn bench_create(settings: Settings, sandbox: &Sandbox, name: &'static str) -> Report {
    let caller = carnet_tests::new_tenant();
    let clients = contacts_clients(sandbox, &caller, settings.clients).await;
    let calls = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            move |n: u64| -> Call {
                let mut client = client.clone();
                Box::pin(async move {
                    client.create_contact(create_request(format!("bench-{i}-{n}@example.org"))).await.map(drop)
                })
            }
        })
        .collect();
    run(name, settings, calls).await
}

/// Measures `GetContact` over a pool of existing contacts, each client starting at its own offset.
async fn bench_get(settings: Settings, sandbox: &Sandbox, name: &'static str) -> Report {
    let caller = carnet_tests::new_tenant();
    let mut seeder = sandbox.contacts(&caller);
    let mut ids = Vec::with_capacity(GET_POOL_SIZE);
    for n in 0..GET_POOL_SIZE {
        let contact =
            seeder.create_contact(create_request(format!("pool-{n}@example.org"))).await.expect("seed contact");
        ids.push(contact.into_inner().id);
    }
    drain(sandbox).await;
    let ids = Arc::new(ids);
    let clients = contacts_clients(sandbox, &caller, settings.clients).await;
    let stride = GET_POOL_SIZE / clients.len().max(1);
    let calls = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let ids = Arc::clone(&ids);
            move |n: u64| -> Call {
                let id = ids[(i * stride + n as usize) % ids.len()].clone();
                let mut client = client.clone();
                Box::pin(async move { client.get_contact(GetContactRequest { id }).await.map(drop) })
            }
        })
        .collect();
    run(name, settings, calls).await
}

/// Waits until the contacts outbox of `sandbox` is published (events and audit entries, with
/// what their consumers do in this process), so a scenario's backlog does not slow the next one.
async fn drain(sandbox: &Sandbox) {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    let db = carnet_cli::node::open_database(&sandbox.config, carnet_cli::Target::Contacts, false)
        .await
        .expect("contacts database");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pending = carnet_kit::outbox::entity::Entity::find()
            .filter(carnet_kit::outbox::entity::Column::PublishedAt.is_null())
            .count(&db.read)
            .await
            .expect("outbox backlog");
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.close().await;
}

/// Prints one row per report; `targets` gives the minimum ratio to its baseline a scenario
/// should reach.
fn print_table(reports: &[Report], targets: &[(&str, f64)]) {
    let baseline = |name: &str| reports.iter().find(|r| r.name == name).map_or(f64::NAN, |r| r.ops_per_sec);
    println!(
        "{:<12} {:>7} {:>10} {:>10} {:>10} {:>7} {:>9} {:>10}  target",
        "scenario", "clients", "ops/s", "p50 ms", "p99 ms", "errors", "baseline", "ratio"
    );
    for r in reports {
        let ratio = r.ops_per_sec / baseline(r.baseline);
        let target = match targets.iter().find(|(name, _)| *name == r.name) {
            Some((_, min)) if r.errors > 0 => format!(">= {min:.2}x: not met (errors)"),
            Some((_, min)) => format!(">= {min:.2}x: {}", if ratio >= *min { "met" } else { "not met" }),
            None => String::new(),
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:<12} {:>7} {:>10.0} {:>10.2} {:>10.2} {:>7} {:>9} {:>9.3}x  {target}",
            r.name,
            r.clients,
            r.ops_per_sec,
            ms(r.p50),
            ms(r.p99),
            r.errors,
            r.baseline,
            ratio
        );
    }
}

/// Serves a bare axum handler that answers with the JSON body it was sent; returns its address.
async fn start_http_echo() -> SocketAddr {
    async fn echo(body: axum::body::Bytes) -> ([(axum::http::HeaderName, &'static str); 1], axum::body::Bytes) {
        ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http echo");
    let addr = listener.local_addr().expect("http echo address");
    let app = axum::Router::new().route("/echo", axum::routing::post(echo));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The JSON body of the HTTP create scenario.
fn http_create_body(email: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "email": email, "first_name": "Ada", "last_name": "Lovelace", "source": {"channel": "api", "detail": "bench"}
    }))
    .expect("json")
}

/// Turns a non-success HTTP answer into a failed call.
fn http_result(answer: carnet_tests::http::Answer, expected: u16) -> Result<(), Status> {
    if answer.status == expected {
        Ok(())
    } else {
        Err(Status::internal(format!("http {}: {}", answer.status, answer.code())))
    }
}

/// Measures the bare axum baseline with a body as large as the create scenario's.
async fn bench_http_echo(settings: Settings) -> Report {
    let addr = start_http_echo().await;
    let body = http_create_body("bench-00-000000@example.org");
    let calls = (0..settings.clients)
        .map(|_| {
            let (http, body) = (Http::new(addr), body.clone());
            move |_n: u64| -> Call {
                let (http, body) = (http.clone(), body.clone());
                Box::pin(async move {
                    http_result(http.raw("POST", "/echo", Some("key"), Some("application/json"), body).await, 200)
                })
            }
        })
        .collect();
    run("http-echo", settings, calls).await
}

/// Measures `POST /v1/contacts` through the gateway with an API key.
async fn bench_http_create(settings: Settings, sandbox: &Sandbox, key: &str) -> Report {
    let addr = sandbox.node.http_addr_opt.expect("gateway address");
    let calls = (0..settings.clients)
        .map(|i| {
            let (http, key) = (Http::new(addr), key.to_string());
            move |n: u64| -> Call {
                let (http, key) = (http.clone(), key.clone());
                let body = http_create_body(&format!("http-{i}-{n}@example.org"));
                Box::pin(async move {
                    http_result(http.raw("POST", "/v1/contacts", Some(&key), Some("application/json"), body).await, 201)
                })
            }
        })
        .collect();
    run("http-create", settings, calls).await
}

/// Measures `GET /v1/contacts/{id}` through the gateway over a pool of existing contacts.
async fn bench_http_get(settings: Settings, sandbox: &Sandbox, key: &str) -> Report {
    let addr = sandbox.node.http_addr_opt.expect("gateway address");
    let seeder = Http::new(addr);
    let mut ids = Vec::with_capacity(GET_POOL_SIZE);
    for n in 0..GET_POOL_SIZE {
        let body = http_create_body(&format!("http-pool-{n}@example.org"));
        let answer = seeder.raw("POST", "/v1/contacts", Some(key), Some("application/json"), body).await;
        ids.push(answer.json["id"].as_str().expect("seeded contact").to_string());
    }
    let ids = Arc::new(ids);
    let stride = GET_POOL_SIZE / settings.clients.max(1);
    let calls = (0..settings.clients)
        .map(|i| {
            let (http, key, ids) = (Http::new(addr), key.to_string(), Arc::clone(&ids));
            move |n: u64| -> Call {
                let path = format!("/v1/contacts/{}", ids[(i * stride + n as usize) % ids.len()]);
                let (http, key) = (http.clone(), key.clone());
                Box::pin(async move { http_result(http.json("GET", &path, Some(&key), None).await, 200) })
            }
        })
        .collect();
    run("http-get", settings, calls).await
}

/// Pairs per `CheckBatch` call in the batch-check scenario.
const BATCH_PAIRS: usize = 10_000;
/// Purposes of the consent scenarios; contacts × purposes = [`BATCH_PAIRS`].
const PURPOSES: usize = 5;

/// Creates contacts and purposes, and grants every other (contact, purpose) pair; returns the
/// (contact, purpose) pairs.
async fn seed_consent(sandbox: &Sandbox, caller: &Caller) -> Vec<(String, String)> {
    use carnet_proto::consent::v1::{
        ConsentAction, ConsentSource, CreatePurposeRequest, LawfulBasis, RecordConsentRequest,
    };
    let mut consent = sandbox.consent(caller);
    let purposes: Vec<String> = (0..PURPOSES).map(|p| format!("purpose_{p}")).collect();
    for key in &purposes {
        let req = CreatePurposeRequest {
            key: key.clone(),
            description: String::new(),
            lawful_basis: LawfulBasis::Consent as i32,
            notice: format!("Notice of {key}."),
        };
        consent.create_purpose(req).await.expect("seed purpose");
    }
    let contacts = contacts_clients(sandbox, caller, 1).await.remove(0);
    let ids: Vec<String> = futures::future::join_all((0..BATCH_PAIRS / PURPOSES).map(|n| {
        let mut client = contacts.clone();
        async move {
            client
                .create_contact(create_request(format!("consent-{n}@example.org")))
                .await
                .expect("seed")
                .into_inner()
                .id
        }
    }))
    .await;
    let mut pairs = Vec::with_capacity(BATCH_PAIRS);
    let mut grants = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for (j, key) in purposes.iter().enumerate() {
            pairs.push((id.clone(), key.clone()));
            if (i + j) % 2 == 0 {
                grants.push(RecordConsentRequest {
                    contact_id: id.clone(),
                    purpose: key.clone(),
                    action: ConsentAction::Grant as i32,
                    source: ConsentSource::Api as i32,
                    ..Default::default()
                });
            }
        }
    }
    for chunk in grants.chunks(64) {
        futures::future::join_all(chunk.iter().map(|g| {
            let mut client = consent.clone();
            let g = g.clone();
            async move { client.record_consent(g).await.expect("seed grant") }
        }))
        .await;
    }
    pairs
}

/// Measures single `Check` calls over the seeded pairs.
async fn bench_check(
    settings: Settings,
    sandbox: &Sandbox,
    caller: &Caller,
    pairs: &Arc<Vec<(String, String)>>,
) -> Report {
    use carnet_proto::consent::v1::CheckRequest;
    use carnet_proto::consent::v1::consent_service_client::ConsentServiceClient;
    let mut calls = Vec::with_capacity(settings.clients);
    for i in 0..settings.clients {
        let signer = CallerSigner::new(sandbox.node.mesh_key.clone(), caller.clone());
        let client = ConsentServiceClient::with_interceptor(connect(sandbox.node.grpc_addr).await, signer);
        let pairs = Arc::clone(pairs);
        calls.push(move |n: u64| -> Call {
            let (contact_id, purpose) = pairs[(i * 97 + n as usize) % pairs.len()].clone();
            let mut client = client.clone();
            Box::pin(async move { client.check(CheckRequest { contact_id, purpose }).await.map(drop) })
        });
    }
    run("check", settings, calls).await
}

/// Measures `CheckBatch` with [`BATCH_PAIRS`] pairs per call, one call at a time; returns
/// (pairs per second, calls, median call latency, errors).
async fn bench_check_batch(
    settings: Settings,
    sandbox: &Sandbox,
    caller: &Caller,
    pairs: &[(String, String)],
) -> (f64, usize, Duration, u64) {
    use carnet_proto::consent::v1::{CheckBatchRequest, CheckRequest};
    let mut client = sandbox.consent(caller);
    let request = CheckBatchRequest {
        checks: pairs.iter().map(|(c, p)| CheckRequest { contact_id: c.clone(), purpose: p.clone() }).collect(),
    };
    let warm_until = Instant::now() + settings.warmup;
    while Instant::now() < warm_until {
        let _ = client.check_batch(request.clone()).await;
    }
    let (mut latencies, mut errors) = (Vec::new(), 0u64);
    let started = Instant::now();
    while started.elapsed() < settings.measure {
        let t = Instant::now();
        match client.check_batch(request.clone()).await {
            Ok(r) if r.get_ref().results.len() == pairs.len() => latencies.push(t.elapsed()),
            _ => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let median = latencies.get(latencies.len() / 2).copied().unwrap_or_default();
    ((latencies.len() * pairs.len()) as f64 / elapsed, latencies.len(), median, errors)
}

#[tokio::main]
async fn main() {
    let settings = Settings::from_env();
    println!(
        "carnet throughput bench: {} clients, {:.1}s warm-up, {:.1}s measured per scenario",
        settings.clients,
        settings.warmup.as_secs_f64(),
        settings.measure.as_secs_f64()
    );
    let mut reports = vec![bench_echo(settings).await];
    let sandbox = Sandbox::monolith().await;
    let plain = Sandbox::start_with(carnet_tests::Backend::Sqlite, &[("keys.encrypt", "false".to_string())]).await;
    // Each scenario starts once the outbox of the one before is published (its events and audit
    // entries are relayed, and consumed, in this process).
    reports.push(bench_create(settings, &sandbox, "create").await);
    drain(&sandbox).await;
    reports.push(bench_create(settings, &plain, "create-plain").await);
    drain(&plain).await;
    reports.push(bench_get(settings, &plain, "get-plain").await);
    drain(&plain).await;
    reports.push(bench_get(settings, &sandbox, "get").await);
    drain(&sandbox).await;
    plain.stop().await;
    reports.push(bench_http_echo(settings).await);
    let (_, key) = sandbox.tenant("bench").await;
    reports.push(bench_http_create(settings, &sandbox, &key).await);
    reports.push(bench_http_get(settings, &sandbox, &key).await);
    let caller = carnet_tests::new_tenant();
    let pairs = Arc::new(seed_consent(&sandbox, &caller).await);
    reports.push(bench_check(settings, &sandbox, &caller, &pairs).await);
    let (pairs_per_sec, calls, median, batch_errors) = bench_check_batch(settings, &sandbox, &caller, &pairs).await;
    sandbox.stop().await;

    print_table(&reports, &[("create", 0.25), ("get", 0.5), ("http-create", 0.3), ("http-get", 0.5)]);
    let ops = |name: &str| reports.iter().find(|r| r.name == name).map_or(f64::NAN, |r| r.ops_per_sec);
    let (create, get) = (ops("create") / ops("create-plain"), ops("get") / ops("get-plain"));
    let met = if create >= 0.8 && get >= 0.8 { "met" } else { "not met" };
    println!(
        "encryption (keys.encrypt on / off, same run): create {create:.3}x, get {get:.3}x (target >= 0.80x: {met})"
    );
    let verdict = if batch_errors > 0 {
        "not met (errors)"
    } else if pairs_per_sec >= 200_000.0 {
        "met"
    } else {
        "not met"
    };
    println!(
        "check-batch: {BATCH_PAIRS} pairs per call, {calls} calls, median {:.2} ms per call, {pairs_per_sec:.0} pairs/s (target >= 200000: {verdict})",
        median.as_secs_f64() * 1e3
    );
    if batch_errors > 0 {
        eprintln!("check-batch had {batch_errors} failed calls");
        std::process::exit(1);
    }
    let failed: Vec<&Report> = reports.iter().filter(|r| r.errors > 0).collect();
    for r in &failed {
        let first = r.first_error_opt.as_ref().map_or_else(String::new, |s| format!("{:?}: {}", s.code(), s.message()));
        eprintln!("scenario {} had {} failed calls, first: {first}", r.name, r.errors);
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
