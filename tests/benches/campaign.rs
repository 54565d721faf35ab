//! A campaign to many contacts, half of them consented, against the loopback SMTP sink
//! (aiosmtpd, tests/smtp/sink.py): `cargo bench -p carnet-tests --bench campaign`.
//!
//! Reports, in one run:
//! - queue: the time to select the audience (a search over every contact), consent-check it and
//!   write one delivery per recipient (queued or skipped with its reason), as contacts per second;
//! - delivery: mails per second from the comms dispatcher to the sink (consent re-checked at
//!   send time, addresses read from contacts, links signed, hand-over recorded per mail), next to
//!   raw lettre (`AsyncSmtpTransport`, pooled, same concurrency) sending to the same sink.
//!
//! `CARNET_BENCH_CAMPAIGN_CONTACTS` (default 100000) and `CARNET_BENCH_SECONDS` (how long each
//! delivery measurement runs, default 10) override the defaults. Timings are reported, never
//! asserted.

use std::time::{Duration, Instant};

use carnet_kit::Caller;
use carnet_proto::common::v1::{Source, SourceChannel};
use carnet_proto::comms::v1::{Audience, Content, CreateCampaignRequest, GetCampaignRequest, SendCampaignRequest};
use carnet_proto::consent::v1::{
    ConsentAction, ConsentSource, CreatePurposeRequest, LawfulBasis, RecordConsentRequest,
};
use carnet_proto::contacts::v1::CreateContactRequest;
use carnet_tests::smtp::SmtpSink;
use carnet_tests::{Backend, Sandbox, smtp_overrides};

const CONCURRENCY: usize = 8;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Creates `n` contacts and grants consent to every other one; returns how long it took.
async fn seed(sb: &Sandbox, caller: &Caller, n: usize) -> Duration {
    let started = Instant::now();
    let mut consent = sb.consent(caller);
    let purpose = CreatePurposeRequest {
        key: "news".into(),
        description: "Monthly news".into(),
        lawful_basis: LawfulBasis::Consent as i32,
        notice: "Monthly news; withdraw at any time.".into(),
    };
    consent.create_purpose(purpose).await.expect("purpose");
    let contacts = sb.contacts(caller);
    let mut next = 0;
    while next < n {
        let end = (next + 256).min(n);
        let ids = futures::future::join_all((next..end).map(|i| {
            let mut client = contacts.clone();
            async move {
                let req = CreateContactRequest {
                    email: Some(format!("reader{i}@example.org")),
                    first_name: Some(format!("Reader{i}")),
                    source: Some(Source {
                        channel: SourceChannel::Import as i32,
                        detail: "bench".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                (i, client.create_contact(req).await.expect("seed contact").into_inner().id)
            }
        }))
        .await;
        futures::future::join_all(ids.into_iter().filter(|(i, _)| i % 2 == 0).map(|(_, id)| {
            let mut client = consent.clone();
            async move {
                let req = RecordConsentRequest {
                    contact_id: id,
                    purpose: "news".into(),
                    action: ConsentAction::Grant as i32,
                    source: ConsentSource::Import as i32,
                    ..Default::default()
                };
                client.record_consent(req).await.expect("seed grant");
            }
        }))
        .await;
        next = end;
    }
    started.elapsed()
}

/// Raw lettre to the same sink for `window`: mails per second.
async fn lettre_rate(port: u16, window: Duration) -> (f64, u64) {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(CONCURRENCY as u32))
        .build();
    let deadline = Instant::now() + window;
    let started = Instant::now();
    let sent = futures::future::join_all((0..CONCURRENCY).map(|w| {
        let transport = transport.clone();
        async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let m = Message::builder()
                    .from("Bench <bench@carnet.localhost>".parse().unwrap())
                    .to(format!("raw{w}-{n}@example.org").parse().unwrap())
                    .subject("News for you")
                    .body(String::from("Hello,\nthis month: nothing new.\n"))
                    .unwrap();
                transport.send(m).await.expect("raw lettre send");
                n += 1;
            }
            n
        }
    }))
    .await;
    let total: u64 = sent.iter().sum();
    (total as f64 / started.elapsed().as_secs_f64(), total)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let contacts: usize = env_or("CARNET_BENCH_CAMPAIGN_CONTACTS", 100_000);
    let window = Duration::from_secs_f64(env_or("CARNET_BENCH_SECONDS", 10.0));
    let Some(sink) = SmtpSink::start().await else {
        eprintln!("skipped: aiosmtpd is not installed (pip install aiosmtpd)");
        return;
    };
    let mut overrides = smtp_overrides(sink.port);
    overrides.push(("comms.batch_size", "500".to_string()));
    overrides.push(("comms.concurrency", CONCURRENCY.to_string()));
    overrides.push(("comms.smtp.max_connections", CONCURRENCY.to_string()));
    let sb = Sandbox::start_with(Backend::Sqlite, &overrides).await;
    let caller = carnet_tests::new_tenant();
    println!("carnet campaign bench: {contacts} contacts, half consented, {CONCURRENCY} SMTP connections");
    let seeded = seed(&sb, &caller, contacts).await;
    println!("seeded in {:.1} s", seeded.as_secs_f64());

    let mut comms = sb.comms(&caller);
    let req = CreateCampaignRequest {
        name: "bench".into(),
        purpose: "news".into(),
        content: Some(Content {
            subject: "News for {{first_name}}".into(),
            body: "Hello {{first_name}},\nthis month: nothing new.\n".into(),
            ..Default::default()
        }),
        audience: Some(Audience { query: "*".into(), ..Default::default() }),
    };
    let id = comms.create_campaign(req).await.expect("campaign").into_inner().id;
    let started = Instant::now();
    comms.send_campaign(SendCampaignRequest { id: id.clone() }).await.expect("send");
    let queued = loop {
        let c = comms.get_campaign(GetCampaignRequest { id: id.clone() }).await.expect("get").into_inner();
        if c.status != "queuing" {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let queue_time = started.elapsed();
    let sent_at_queue = queued.sent;
    println!(
        "queue: {} recipients selected, consent-checked and queued in {:.2} s ({:.0} contacts/s); skipped {:?}",
        queued.recipients,
        queue_time.as_secs_f64(),
        queued.recipients as f64 / queue_time.as_secs_f64(),
        queued.skipped
    );

    let measure_from = Instant::now();
    let c = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let c = comms.get_campaign(GetCampaignRequest { id: id.clone() }).await.expect("get").into_inner();
        if measure_from.elapsed() >= window || c.status == "completed" {
            break c;
        }
    };
    let carnet_rate = (c.sent - sent_at_queue) as f64 / measure_from.elapsed().as_secs_f64();
    println!(
        "delivery (carnet): {} mails in {:.1} s, {carnet_rate:.0} mails/s ({} failed)",
        c.sent - sent_at_queue,
        measure_from.elapsed().as_secs_f64(),
        c.failed
    );
    sb.stop().await;

    let (raw_rate, raw_sent) = lettre_rate(sink.port, window).await;
    println!("delivery (raw lettre): {raw_sent} mails in {:.1} s, {raw_rate:.0} mails/s", window.as_secs_f64());
    println!("delivery ratio carnet / raw lettre: {:.2}x", carnet_rate / raw_rate);
    sink.stop().await;
}
