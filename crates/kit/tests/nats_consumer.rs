//! The NATS bus against a real `nats-server -js`: a durable consumer created by an older
//! version with fewer kinds is updated in place when the service now handles more.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carnet_kit::bus::{Consumer, EventBus, NatsBus, Outgoing, handler};
use carnet_proto::events::v1::event::Payload;
use carnet_proto::events::v1::{AuditRecorded, ContactUpserted};
use prost::Message as _;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn event(kind: &str, payload: Payload) -> Outgoing {
    let row = carnet_kit::outbox::row(uuid::Uuid::now_v7(), payload);
    let bytes = match row.payload {
        sea_orm::ActiveValue::Set(b) | sea_orm::ActiveValue::Unchanged(b) => b,
        _ => unreachable!(),
    };
    assert!(carnet_proto::events::v1::Event::decode(bytes.as_slice()).is_ok());
    Outgoing::of(bytes, kind).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_durable_consumer_gains_the_kinds_a_newer_version_handles() {
    if std::process::Command::new("nats-server").arg("--version").output().is_err() {
        assert!(
            std::env::var("CARNET_REQUIRE_NATS").as_deref() != Ok("1"),
            "CARNET_REQUIRE_NATS=1 but nats-server is not installed"
        );
        eprintln!("skipped: nats-server is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = Server(
        std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("nats://127.0.0.1:{port}");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let consumer = |kinds: &[&str]| {
        let seen = seen.clone();
        Consumer {
            durable: "dsar".into(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            handler: handler(move |e| {
                let seen = seen.clone();
                async move {
                    let kind = match e.payload {
                        Some(Payload::ContactUpserted(_)) => "contact.upserted",
                        Some(Payload::AuditRecorded(_)) => "audit.recorded",
                        _ => "other",
                    };
                    seen.lock().unwrap().push(kind.to_string());
                    Ok(())
                }
            }),
        }
    };
    // The older version: only contact.upserted.
    let old = NatsBus::connect(&url).await.unwrap();
    old.consume(consumer(&["contact.upserted"])).await.unwrap();
    old.close().await;
    // The newer version, same durable name, one more kind.
    let new = NatsBus::connect(&url).await.unwrap();
    new.consume(consumer(&["contact.upserted", "audit.recorded"])).await.unwrap();
    new.publish(&event("audit.recorded", Payload::AuditRecorded(AuditRecorded::default()))).await.unwrap();
    new.publish(&event("contact.upserted", Payload::ContactUpserted(ContactUpserted::default()))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = seen.lock().unwrap().clone();
        if got.contains(&"audit.recorded".to_string()) && got.contains(&"contact.upserted".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "the updated consumer did not get both kinds: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    new.close().await;
}
