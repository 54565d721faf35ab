//! Import throughput and memory: `cargo bench -p carnet-tests --bench import`.
//!
//! Generates a CSV file of `CARNET_BENCH_IMPORT_ROWS` contacts (default 1,000,000; e-mail, first
//! and last name, company), imports it through the gateway as `carnet import contacts` does
//! (POST /v1/imports, then the file streamed into PUT /v1/imports/{id}/data) on a node in this
//! process, on SQLite and — with `CARNET_TEST_POSTGRES_URL` — on PostgreSQL, and reports rows per
//! second and the process's resident memory while the import runs (sampled every 250 ms: the
//! peak in each tenth of the file, so a flat memory shows as equal tenths).
//!
//! The baseline, measured in the same run on the same node: the same kind of contacts created
//! one by one over gRPC (`CreateContact`, 32 clients for 5 s, group-committed by the service).
//! Timings are reported, never asserted.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use carnet_kit::{Caller, CallerSigner, Permission};
use carnet_proto::common::v1::{Source, SourceChannel};
use carnet_proto::contacts::v1::CreateContactRequest;
use carnet_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use carnet_tests::{Backend, Sandbox};
use serde_json::json;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn generate(path: &std::path::Path, rows: u64) -> u64 {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    writeln!(f, "email,first_name,last_name,company").unwrap();
    for i in 0..rows {
        writeln!(f, "person{i}@example.org,First{i},Last{},Company {}", i % 9_973, i % 101).unwrap();
    }
    f.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// Single creates per second over gRPC with 32 clients for 5 s.
async fn baseline(sb: &Sandbox, tenant_id: uuid::Uuid) -> f64 {
    let caller = Caller::new(tenant_id, "key:bench", [Permission::ContactsWrite]);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for c in 0..32u64 {
        let mut client = ContactsServiceClient::with_interceptor(
            sb.channel(),
            CallerSigner::new(sb.node.mesh_key.clone(), caller.clone()),
        );
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                let req = CreateContactRequest {
                    email: Some(format!("base{c}-{n}@example.org")),
                    first_name: Some(format!("First{n}")),
                    last_name: Some(format!("Last{n}")),
                    source: Some(Source {
                        channel: SourceChannel::Api as i32,
                        detail: "bench".into(),
                        ..Source::default()
                    }),
                    ..CreateContactRequest::default()
                };
                client.create_contact(req).await.expect("create");
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn run(name: &str, backend: Backend, file: &std::path::Path, rows: u64, size: u64) {
    let sb = Sandbox::start(backend).await;
    let http = sb.http();
    let (tenant_id, key) = sb.tenant("Bench").await;
    let policy = json!({"fields": [
        {"key": "email", "type": "email", "category": "contact"},
        {"key": "first_name", "type": "string", "category": "identity"},
        {"key": "last_name", "type": "string", "category": "identity"},
        {"key": "company", "type": "string", "category": "professional"}]});
    assert_eq!(http.json("PUT", "/v1/field-policy", Some(&key), Some(policy)).await.status, 200);
    let purpose = json!({"key": "news", "description": "News", "lawful_basis": "consent", "notice": "News by mail."});
    assert_eq!(http.json("POST", "/v1/purposes", Some(&key), Some(purpose)).await.status, 201);
    let create_rate = baseline(&sb, tenant_id).await;

    let api = carnet_cli::api::Api::new(&format!("http://{}", sb.node.http_addr_opt.expect("gateway")), &key).unwrap();
    let terms = json!({"file_name": "bench.csv", "format": "csv", "lawful_basis": "consent", "purposes": ["news"],
        "evidence": {"collected_at": "2026-10-01T09:00:00Z", "collected_where": "bench", "notice_version": 1}});
    let job = api.json("POST", "/v1/imports", Some(terms)).await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let before = rss_mib();
    // Peak resident memory per tenth of the file.
    let tenths = Arc::new(std::sync::Mutex::new([0f64; 10]));
    let sampler = {
        let tenths = tenths.clone();
        let http = sb.http();
        let key = key.clone();
        let id = id.clone();
        tokio::spawn(async move {
            loop {
                let p = http.json("GET", &format!("/v1/imports/{id}"), Some(&key), None).await.json;
                let done = p["bytes_done"].as_u64().unwrap_or(0);
                let tenth = ((done * 10) / size.max(1)).min(9) as usize;
                let rss = rss_mib();
                {
                    let mut t = tenths.lock().unwrap();
                    t[tenth] = t[tenth].max(rss);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let done = api.upload(&format!("/v1/imports/{id}/data"), file, "text/csv", sent).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    sampler.abort();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["created"].as_u64(), Some(rows), "{done}");
    let rate = rows as f64 / secs;
    let t = *tenths.lock().unwrap();
    let peaks: Vec<String> = t.iter().map(|m| format!("{m:.0}")).collect();
    println!(
        "{name:<10} import {rows} rows in {secs:.1} s = {rate:>8.0} rows/s | single creates {create_rate:>7.0}/s | import/creates {:.2}x | RSS before {before:.0} MiB, peak per tenth [{}] MiB",
        rate / create_rate,
        peaks.join(", ")
    );
    sb.stop().await;
}

fn main() {
    let rows: u64 = env_or("CARNET_BENCH_IMPORT_ROWS", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.csv");
    let size = generate(&file, rows);
    println!(
        "import bench: {rows} rows, {:.1} MB of CSV (target: >= 20,000 rows/s on SQLite, memory flat)",
        size as f64 / 1e6
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        run("sqlite", Backend::Sqlite, &file, rows, size).await;
        if let Some(server) = carnet_tests::postgres::server_url() {
            run("postgres", Backend::Postgres(server), &file, rows, size).await;
        } else {
            println!("postgres   skipped (set CARNET_TEST_POSTGRES_URL)");
        }
    });
}
