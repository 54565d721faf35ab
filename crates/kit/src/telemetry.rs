//! Logging and tracing: `tracing` to stderr (text or JSON), plus OpenTelemetry OTLP export of
//! spans when `telemetry.otlp_endpoint` is set. Span attributes and log fields carry ids only.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{ConfigError, Validate};

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `carnet=debug,info`.
    pub log_filter: String,
    /// OTLP/gRPC endpoint (`http://collector:4317`); empty turns export off.
    pub otlp_endpoint: String,
    /// `service.name` of exported spans.
    pub service_name: String,
    /// Fraction of traces sampled, 0.0..=1.0.
    pub sample_ratio: f64,
    /// How often metrics are exported (with the spans, to `otlp_endpoint`).
    pub metrics_interval_ms: u64,
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError("telemetry.sample_ratio must be between 0.0 and 1.0".into()));
        }
        EnvFilter::try_new(&self.log_filter)
            .map_err(|e| ConfigError(format!("telemetry.log_filter is not a valid filter: {e}")))?;
        if self.metrics_interval_ms < 100 {
            return Err(ConfigError("telemetry.metrics_interval_ms must be at least 100".into()));
        }
        if !self.otlp_endpoint.is_empty() && !self.otlp_endpoint.starts_with("http") {
            return Err(ConfigError("telemetry.otlp_endpoint must be an http(s) URL".into()));
        }
        Ok(())
    }
}

/// Flushes and shuts the exporter down when dropped.
pub struct TelemetryGuard {
    provider_opt: Option<SdkTracerProvider>,
    meter_provider_opt: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl TelemetryGuard {
    /// Exports every span ended so far.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider_opt {
            let _ = provider.force_flush();
        }
        if let Some(provider) = &self.meter_provider_opt {
            let _ = provider.force_flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider_opt.take() {
            let _ = provider.shutdown();
        }
        if let Some(provider) = self.meter_provider_opt.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. Must run inside a tokio runtime when OTLP export is on.
/// A second call (tests) keeps the first subscriber.
pub fn init(cfg: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    use anyhow::Context as _;
    let filter = EnvFilter::try_new(&cfg.log_filter).context("failed to parse telemetry.log_filter")?;
    let fmt_layer = match cfg.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let mut provider_opt = None;
    let mut meter_provider_opt = None;
    let otel_layer_opt = if cfg.otlp_endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.otlp_endpoint.clone())
            .build()
            .context("failed to build the otlp span exporter")?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(cfg.sample_ratio),
            )))
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(cfg.service_name.clone()).build())
            .build();
        let tracer = provider.tracer("carnet");
        opentelemetry::global::set_tracer_provider(provider.clone());
        provider_opt = Some(provider);
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.otlp_endpoint.clone())
            .build()
            .context("failed to build the otlp metric exporter")?;
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metric_exporter)
            .with_interval(std::time::Duration::from_millis(cfg.metrics_interval_ms))
            .build();
        let meter_provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(cfg.service_name.clone()).build())
            .build();
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        crate::metrics::register_gauges();
        meter_provider_opt = Some(meter_provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    };
    let _ = tracing_subscriber::registry().with(filter).with(fmt_layer).with(otel_layer_opt).try_init();
    Ok(TelemetryGuard { provider_opt, meter_provider_opt })
}

/// Reads W3C trace context headers.
struct HeaderExtractor<'a>(&'a tonic::codegen::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes W3C trace context into gRPC metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(&value))
        {
            self.0.insert(key, value);
        }
    }
}

/// Makes `span` a child of the W3C trace context (`traceparent`, `tracestate`) in `headers`,
/// when there is one: an HTTP request or a gRPC call continues its caller's trace.
pub fn continue_trace(span: &tracing::Span, headers: &tonic::codegen::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if headers.contains_key("traceparent") {
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        let parent = opentelemetry::propagation::TextMapPropagator::extract(&propagator, &HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }
}

/// Writes the trace context of the current span into outgoing gRPC metadata.
pub fn propagate_trace(metadata: &mut tonic::metadata::MetadataMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
    opentelemetry::propagation::TextMapPropagator::inject_context(
        &propagator,
        &context,
        &mut MetadataInjector(metadata),
    );
}

/// The W3C trace context of the current span, as the map events carry it
/// (`carnet.events.v1.Event.trace_context`, NATS headers).
pub fn current_trace_context() -> std::collections::HashMap<String, String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
    let mut map = std::collections::HashMap::new();
    opentelemetry::propagation::TextMapPropagator::inject_context(&propagator, &context, &mut map);
    map
}

/// Makes `span` a child of the trace context an event carries, when it carries one.
pub fn continue_trace_from_map(span: &tracing::Span, map: &std::collections::HashMap<String, String>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if map.contains_key("traceparent") {
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        let parent = opentelemetry::propagation::TextMapPropagator::extract(&propagator, map);
        let _ = span.set_parent(parent);
    }
}

/// The span of one event handled by a consumer: named and attributed after the OpenTelemetry
/// messaging conventions, a child of the event's trace context (ids only).
pub fn event_span(
    kind: &str,
    consumer: &str,
    event_id: &str,
    trace_context: &std::collections::HashMap<String, String>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "event.process",
        otel.name = %format!("{kind} process"),
        otel.kind = "consumer",
        messaging.system = "carnet",
        messaging.operation = "process",
        messaging.destination.name = %kind,
        messaging.consumer.group.name = %consumer,
        messaging.message.id = %event_id,
    );
    continue_trace_from_map(&span, trace_context);
    span
}

/// The span of one event published by an outbox relay.
pub fn publish_span(
    kind: &str,
    event_id: &str,
    trace_context: &std::collections::HashMap<String, String>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "event.publish",
        otel.name = %format!("{kind} publish"),
        otel.kind = "producer",
        messaging.system = "carnet",
        messaging.operation = "publish",
        messaging.destination.name = %kind,
        messaging.message.id = %event_id,
    );
    continue_trace_from_map(&span, trace_context);
    span
}
