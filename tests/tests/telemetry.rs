//! OpenTelemetry export, switched on by configuration: spans of gRPC calls reach an OTLP
//! collector, and carry ids and method names, never personal data. One test per process,
//! since telemetry installs the global subscriber.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use carnet_kit::telemetry::{LogFormat, TelemetryConfig};
use carnet_proto::common::v1::{Source, SourceChannel};
use carnet_proto::contacts::v1::CreateContactRequest;
use carnet_tests::{Sandbox, new_tenant};

/// An OTLP trace receiver that keeps what it is sent.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_grpc_calls_are_exported_as_spans_without_personal_data() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let guard = carnet_kit::telemetry::init(&TelemetryConfig {
        log_format: LogFormat::Text,
        log_filter: "info".into(),
        otlp_endpoint: format!("http://{addr}"),
        service_name: "carnet-test".into(),
        sample_ratio: 1.0,
        metrics_interval_ms: 10000,
    })
    .unwrap();

    let sandbox = Sandbox::monolith().await;
    let mut contacts = sandbox.contacts(&new_tenant());
    let created = contacts
        .create_contact(CreateContactRequest {
            email: Some("otel-secret-person@example.org".into()),
            first_name: Some("Secretname".into()),
            source: Some(Source { channel: SourceChannel::Api as i32, detail: "otel".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    guard.flush();

    let deadline = Instant::now() + Duration::from_secs(10);
    let span = loop {
        let found = collector.received.lock().unwrap().iter().flat_map(|r| r.resource_spans.clone()).find_map(|rs| {
            rs.scope_spans
                .into_iter()
                .flat_map(|ss| ss.spans)
                .find(|s| s.name == "carnet.contacts.v1.ContactsService/CreateContact")
        });
        if let Some(span) = found {
            break span;
        }
        assert!(Instant::now() < deadline, "no CreateContact span reached the collector");
        tokio::time::sleep(Duration::from_millis(50)).await;
        guard.flush();
    };
    let attr = |key: &str| {
        span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value).map(|v| {
            match v {
                Value::StringValue(s) => s,
                other => format!("{other:?}"),
            }
        })
    };
    assert_eq!(attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attr("rpc.method").as_deref(), Some("CreateContact"));
    // The handler's event, inside the span, names the contact by id.
    let events: Vec<String> = span.events.iter().map(|e| format!("{e:?}")).collect();
    assert!(events.iter().any(|e| e.contains(&created.id)), "{events:?}");
    // Nothing personal anywhere in what was exported.
    let everything = format!("{:?}", collector.received.lock().unwrap());
    assert!(!everything.contains("otel-secret-person"), "e-mail leaked into telemetry");
    assert!(!everything.contains("Secretname"), "name leaked into telemetry");

    // One trace from the HTTP edge through the gRPC call, continuing the caller's traceparent.
    let (_, key) = sandbox.tenant("Traced").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let http = sandbox.http();
    let body =
        serde_json::json!({"email": "traced-person@example.org", "source": {"channel": "api", "detail": "otel"}});
    let answer = http
        .raw_with_headers(
            "POST",
            "/v1/contacts",
            &[
                ("authorization", format!("Bearer {key}")),
                ("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01")),
            ],
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(answer.status, 201, "{:?}", answer.json);
    guard.flush();
    let wanted = hex_to_bytes(trace_id);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (http_span, grpc_span) = loop {
        let spans: Vec<_> = collector
            .received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.clone())
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .filter(|s| s.trace_id == wanted)
            .collect();
        let http_span = spans.iter().find(|s| s.name == "POST /v1/contacts").cloned();
        let grpc_span = spans.iter().find(|s| s.name == "carnet.contacts.v1.ContactsService/CreateContact").cloned();
        if let (Some(h), Some(g)) = (http_span, grpc_span) {
            break (h, g);
        }
        assert!(Instant::now() < deadline, "the request's spans did not arrive in trace {trace_id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        guard.flush();
    };
    assert_eq!(http_span.parent_span_id, hex_to_bytes("00f067aa0ba902b7"), "the edge continues the caller's trace");
    assert!(!grpc_span.parent_span_id.is_empty(), "the service span has a parent in the same trace");
    let everything = format!("{:?}", collector.received.lock().unwrap());
    assert!(!everything.contains("traced-person"), "e-mail leaked into telemetry");

    // One erasure request is one trace: the edge, the DSAR call, the event published through
    // the outbox, each participant handling it, and the confirmations handled by DSAR.
    let contact_id = answer.json["id"].as_str().unwrap().to_string();
    let erase_trace = "0af7651916cd43dd8448eb211c80319c";
    let erased = http
        .raw_with_headers(
            "POST",
            "/v1/dsar",
            &[
                ("authorization", format!("Bearer {key}")),
                ("traceparent", format!("00-{erase_trace}-b7ad6b7169203331-01")),
            ],
            Some("application/json"),
            serde_json::to_vec(&serde_json::json!({"kind": "erasure", "contact_id": contact_id})).unwrap(),
        )
        .await;
    assert_eq!(erased.status, 201, "{:?}", erased.json);
    let wanted = hex_to_bytes(erase_trace);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        guard.flush();
        let names: Vec<String> = collector
            .received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.clone())
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .filter(|s| s.trace_id == wanted)
            .map(|s| s.name)
            .collect();
        let has = |n: &str| names.iter().filter(|x| x.as_str() == n).count();
        if has("POST /v1/dsar") == 1
            && has("carnet.dsar.v1.DsarService/CreateRequest") == 1
            && has("erasure.requested publish") >= 1
            && has("erasure.requested process") >= 3
            && has("erasure.confirmed process") >= 3
        {
            break;
        }
        assert!(Instant::now() < deadline, "the erasure's spans are not one trace: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sandbox.stop().await;
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}
