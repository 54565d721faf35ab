//! Bulk export throughput (docs/export.md): `cargo bench -p carnet-tests --bench export`.
//!
//! Seeds a tenant with contacts (four built-in fields and two custom ones), then, in one run:
//! - baseline `list-walk`: the fastest way to read every contact before the bulk export existed,
//!   `ListContacts` pages of 500 over gRPC as a `service:` principal (which records no views),
//!   decoding the pages and nothing more;
//! - `export-csv` and `export-jsonl`: `GET /v1/contacts/export` through the gateway (API-key
//!   authenticated), the body read as it streams;
//!
//! reported as contacts per second and as a ratio of the baseline, with the growth of the
//! process's resident memory while each runs (the node runs in this process, so that is the
//! server's memory too). `CARNET_BENCH_EXPORT_CONTACTS` (default 100000) overrides the size.
//! Timings are reported, never asserted.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use carnet_kit::Caller;
use carnet_proto::common::v1::{Source, SourceChannel};
use carnet_proto::contacts::v1::{
    CreateContactRequest, FieldDefinition, FieldType, FieldValue, ListContactsRequest, SetFieldPolicyRequest,
    field_value,
};
use carnet_tests::{Backend, Sandbox};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The resident memory of this process, in KiB (Linux; 0 elsewhere).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `work` while sampling resident memory; returns its result, its duration and the largest
/// growth over the memory at its start, in MiB.
async fn measured<T>(work: impl std::future::Future<Output = T>) -> (T, Duration, f64) {
    let start = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(start));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let out = work.await;
    let elapsed = started.elapsed();
    sampler.abort();
    let grown = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(start);
    (out, elapsed, grown as f64 / 1024.0)
}

fn custom(key: &str, field_type: FieldType) -> FieldDefinition {
    FieldDefinition {
        key: key.into(),
        r#type: field_type as i32,
        category: "professional".into(),
        ..Default::default()
    }
}

async fn seed(sb: &Sandbox, caller: &Caller, n: usize) -> Duration {
    let started = Instant::now();
    let mut client = sb.contacts(caller);
    let mut fields = ["email", "first_name", "last_name"].map(|k| custom(k, FieldType::String)).to_vec();
    fields[0].r#type = FieldType::Email as i32;
    fields.push(custom("phone", FieldType::Phone));
    fields.push(custom("company", FieldType::String));
    fields.push(custom("employees", FieldType::Number));
    client.set_field_policy(SetFieldPolicyRequest { fields }).await.expect("policy");
    futures::stream::iter(0..n)
        .map(|i| {
            let mut client = client.clone();
            async move {
                let text = |s: String| FieldValue { kind: Some(field_value::Kind::StringValue(s)) };
                let number = FieldValue { kind: Some(field_value::Kind::NumberValue(i as f64)) };
                let req = CreateContactRequest {
                    email: Some(format!("reader{i}@example.org")),
                    first_name: Some(format!("Reader {i}")),
                    last_name: Some("Lovelace, Byron".into()),
                    phone: Some(format!("+4477009{i:05}")),
                    fields: [
                        ("company".to_string(), text(format!("Company \"{}\"", i % 97))),
                        ("employees".into(), number),
                    ]
                    .into(),
                    source: Some(Source {
                        channel: SourceChannel::Import as i32,
                        detail: "bench.csv".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                client.create_contact(req).await.expect("seed contact");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

/// Reads every contact with `ListContacts`; returns how many.
async fn list_walk(sb: &Sandbox, caller: &Caller) -> u64 {
    let mut client = sb.contacts(caller);
    let (mut cursor, mut n) = (String::new(), 0u64);
    loop {
        let page = client
            .list_contacts(ListContactsRequest { limit: 500, cursor: cursor.clone(), ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        n += page.contacts.len() as u64;
        if page.next_cursor.is_empty() {
            return n;
        }
        cursor = page.next_cursor;
    }
}

/// Downloads the export; returns (records, bytes).
async fn export(sb: &Sandbox, key: &str, format: &str) -> (u64, u64) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let addr = sb.node.http_addr_opt.expect("gateway");
    let req = hyper::Request::get(format!("http://{addr}/v1/contacts/export?format={format}"))
        .header("authorization", format!("Bearer {key}"))
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.expect("export");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut bytes, mut lines) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body").into_data() {
            bytes += data.len() as u64;
            // No value of this data set holds a line feed: every one ends a record.
            lines += data.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    let records = if format == "csv" { lines - 1 } else { lines };
    (records, bytes)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = env_or("CARNET_BENCH_EXPORT_CONTACTS", 100_000);
    let sb = Sandbox::start(Backend::Sqlite).await;
    let (tenant_id, key) = sb.tenant("Bench").await;
    let owner = Caller::all_permissions(tenant_id, "key:bench");
    let seeded = seed(&sb, &owner, n).await;
    println!("seeded {n} contacts in {:.1} s ({:.0}/s)", seeded.as_secs_f64(), n as f64 / seeded.as_secs_f64());
    // Let the outbox relays publish the seed's events, so they do not compete with the runs.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let service = Caller::all_permissions(tenant_id, "service:bench");
    let mut rows = Vec::new();
    let (count, took, grown) = measured(list_walk(&sb, &service)).await;
    assert_eq!(count, n as u64);
    let baseline = count as f64 / took.as_secs_f64();
    rows.push(("list-walk (baseline)", count, 0, took, grown, baseline));
    for format in ["csv", "jsonl"] {
        let ((records, bytes), took, grown) = measured(export(&sb, &key, format)).await;
        assert_eq!(records, n as u64, "{format}");
        rows.push((if format == "csv" { "export-csv" } else { "export-jsonl" }, records, bytes, took, grown, 0.0));
    }
    println!(
        "\n{:<22} {:>9} {:>12} {:>9} {:>12} {:>10} {:>7}",
        "scenario", "contacts", "bytes", "seconds", "contacts/s", "rss +MiB", "ratio"
    );
    for (name, count, bytes, took, grown, _) in &rows {
        let rate = *count as f64 / took.as_secs_f64();
        println!(
            "{name:<22} {count:>9} {bytes:>12} {:>9.2} {rate:>12.0} {grown:>10.1} {:>7.3}",
            took.as_secs_f64(),
            rate / baseline
        );
    }
    sb.stop().await;
}
