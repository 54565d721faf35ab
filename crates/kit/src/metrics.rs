//! Metrics, exported over OTLP with the spans when `telemetry.otlp_endpoint` is set (no-ops
//! otherwise). Attributes are method names, routes, service and plugin names, status codes and
//! outcome reasons: never personal data, never ids of people.
//!
//! | name | kind | unit | attributes |
//! |---|---|---|---|
//! | `rpc.server.call.duration` | histogram | s | `rpc.service`, `rpc.method`, `rpc.grpc.status_code` |
//! | `http.server.request.duration` | histogram | s | `http.request.method`, `http.route`, `http.response.status_code` |
//! | `carnet.dsar.open` / `carnet.dsar.overdue` | gauge | {request} | |
//! | `carnet.erasure.confirmation_lag` | histogram | s | `service` |
//! | `carnet.outbox.backlog` | gauge | {event} | `service` |
//! | `carnet.plugin.run.duration` | histogram | s | `plugin`, `version`, `outcome` |
//! | `carnet.plugin.failures` | counter | {run} | `plugin`, `reason` (`trap`, `timeout`, `memory_limit`, …) |

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

/// The instruments every service records into.
pub struct Instruments {
    pub rpc_duration: Histogram<f64>,
    pub http_duration: Histogram<f64>,
    pub erasure_lag: Histogram<f64>,
    pub plugin_duration: Histogram<f64>,
    pub plugin_failures: Counter<u64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Latency buckets in seconds, from a fast RPC to a slow erasure.
const SECONDS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0];

/// The instruments, created on first use from the global meter provider (so telemetry must be
/// initialised before the first record for the values to be exported).
pub fn instruments() -> &'static Instruments {
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("carnet");
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS.to_vec())
                .build()
        };
        Instruments {
            rpc_duration: seconds("rpc.server.call.duration", "Duration of gRPC calls served"),
            http_duration: seconds("http.server.request.duration", "Duration of HTTP requests served by the gateway"),
            erasure_lag: seconds(
                "carnet.erasure.confirmation_lag",
                "Time from an erasure request to a participant's confirmation",
            ),
            plugin_duration: seconds("carnet.plugin.run.duration", "Duration of one enrichment plugin run"),
            plugin_failures: meter
                .u64_counter("carnet.plugin.failures")
                .with_description("Plugin runs that failed (trap, timeout, limits, bad output)")
                .build(),
        }
    })
}

/// Gauges whose values the services set and the exporter reads: (name, service) → value.
fn gauges() -> &'static Mutex<BTreeMap<(&'static str, &'static str), i64>> {
    static GAUGES: OnceLock<Mutex<BTreeMap<(&'static str, &'static str), i64>>> = OnceLock::new();
    GAUGES.get_or_init(Default::default)
}

/// Sets a gauge (`carnet.outbox.backlog` of `service`, `carnet.dsar.open`, …).
pub fn set_gauge(name: &'static str, service: &'static str, value: i64) {
    gauges().lock().unwrap_or_else(|e| e.into_inner()).insert((name, service), value);
}

/// The gauges' current values, for the exporter's callbacks and tests.
pub fn gauge_values(name: &str) -> Vec<(&'static str, i64)> {
    let gauges = gauges().lock().unwrap_or_else(|e| e.into_inner());
    gauges.iter().filter(|((n, _), _)| *n == name).map(|((_, s), v)| (*s, *v)).collect()
}

/// Registers the observable gauges on the global meter (called once the provider is set).
pub(crate) fn register_gauges() {
    let meter = opentelemetry::global::meter("carnet");
    for (name, unit, description) in [
        ("carnet.outbox.backlog", "{event}", "Events written to a service's outbox and not yet published"),
        ("carnet.dsar.open", "{request}", "Data subject requests received and not completed or rejected"),
        ("carnet.dsar.overdue", "{request}", "Open data subject requests past their deadline"),
    ] {
        let _gauge = meter
            .i64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer| {
                for (service, value) in gauge_values(name) {
                    let attributes: &[KeyValue] =
                        if service.is_empty() { &[] } else { &[KeyValue::new("service", service)] };
                    observer.observe(value, attributes);
                }
            })
            .build();
    }
}

/// Records one served gRPC call.
pub fn record_rpc(path: &str, status_code: i64, seconds: f64) {
    let full = path.trim_start_matches('/');
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    instruments().rpc_duration.record(
        seconds,
        &[
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_string()),
            KeyValue::new("rpc.method", method.to_string()),
            KeyValue::new("rpc.grpc.status_code", status_code),
        ],
    );
}

/// Records one HTTP request; `route` is the matched template (`/v1/contacts/{id}`), never the
/// path with ids.
pub fn record_http(method: &str, route: &str, status: u16, seconds: f64) {
    instruments().http_duration.record(
        seconds,
        &[
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route.to_string()),
            KeyValue::new("http.response.status_code", status as i64),
        ],
    );
}

/// Records one plugin run; failures also count by reason.
pub fn record_plugin_run(plugin: &str, version: &str, outcome: &str, reason: &str, seconds: f64) {
    let i = instruments();
    i.plugin_duration.record(
        seconds,
        &[
            KeyValue::new("plugin", plugin.to_string()),
            KeyValue::new("version", version.to_string()),
            KeyValue::new("outcome", outcome.to_string()),
        ],
    );
    if outcome == "failed" {
        i.plugin_failures
            .add(1, &[KeyValue::new("plugin", plugin.to_string()), KeyValue::new("reason", reason.to_string())]);
    }
}

/// Records the time from an erasure request to `service`'s confirmation.
pub fn record_erasure_lag(service: &str, seconds: f64) {
    instruments().erasure_lag.record(seconds, &[KeyValue::new("service", service.to_string())]);
}

/// A tower layer recording [`record_rpc`] for every call a tonic server serves. The status is
/// the `grpc-status` of a trailers-only answer (how tonic answers an error), else OK.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<tonic::codegen::http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>, Response = tonic::codegen::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let started = std::time::Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let status = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0),
                Err(_) => 2,
            };
            record_rpc(&path, status, started.elapsed().as_secs_f64());
            result
        })
    }
}
