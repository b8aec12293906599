//! Traces across the queue: OpenTelemetry export of the `tracing` spans, and the W3C trace
//! context (`traceparent`) carried from ingest's request span through the AMQP message to the
//! worker's delivery, its transaction and the notification it sends on.
//!
//! Export is on when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: spans go in batches to that OTLP/HTTP
//! (protobuf) receiver, configured by the standard `OTEL_*` variables (`OTEL_SERVICE_NAME`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, ...).
//!
//! When it is not set, nothing is exported, and a received trace context is passed on as it
//! came, as the OpenTelemetry API does without an SDK: the processes before and after this one
//! may export to a collector of their own, and their spans still join one trace (this process's
//! part of it is missing). [`continue_trace`] keeps the received `traceparent` with the span
//! (in the span's extensions in the registry) and [`traceparent`] finds it on the span or the
//! nearest ancestor that has one. Nothing received, nothing exported: no `traceparent` is
//! invented.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::{LookupSpan, Registry};

/// The W3C trace context header, in HTTP and (by the same name) in AMQP headers.
pub const TRACEPARENT: &str = "traceparent";

/// Variables that turn export on.
const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"];

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The layer that turns `tracing` spans into OpenTelemetry spans.
pub type OtelLayer<S> = tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>;

/// The exporter, when one is configured: flushes and stops when dropped.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("traces not all exported at exit: {error}");
        }
    }
}

/// The OpenTelemetry layer for the subscriber, and the exporter behind it, when an OTLP endpoint
/// is configured; `service` names the process unless `OTEL_SERVICE_NAME` does.
pub fn layer<S>(service: &str) -> Result<Option<(OtelLayer<S>, Exporter)>, String>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let configured = ENDPOINT_VARS.iter().any(|v| std::env::var(v).is_ok_and(|e| !e.trim().is_empty()));
    if !configured {
        return Ok(None);
    }
    // The exporter reads the endpoint, headers and timeout from the standard variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("setting OTEL_EXPORTER_OTLP_ENDPOINT: cannot export traces: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let resource = Resource::builder()
        .with_service_name(service.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer(service);
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some((tracing_opentelemetry::layer().with_tracer(tracer), Exporter { provider })))
}

/// The `traceparent` of `span`, to carry its trace on: its own when spans are exported,
/// otherwise the one it (or an ancestor) received; `None` when there is neither.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !exporting() {
        return received(span);
    }
    let mut carrier = Carrier(None);
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.0
}

/// Makes `span` (just created, not yet entered) continue the trace of `traceparent`; without
/// export, keeps it to pass on. A value that is not a valid trace context is ignored: the span
/// starts a trace of its own (or, without export, passes none on).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let context = TraceContextPropagator::new().extract(&Carrier(Some(traceparent.to_string())));
    if exporting() {
        let _ = span.set_parent(context);
        return;
    }
    // Written again from what was parsed: a valid value, in the canonical form.
    let mut carrier = Carrier(None);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    let Some(valid) = carrier.0 else { return };
    span.with_subscriber(|(id, dispatch)| {
        if let Some(span) = dispatch.downcast_ref::<Registry>().and_then(|registry| registry.span(id)) {
            span.extensions_mut().replace(Received(valid));
        }
    });
}

/// A `traceparent` a span received, passed on when nothing is exported.
struct Received(String);

/// The `traceparent` `span` or its nearest ancestor received. A span the filter turned off
/// (or a subscriber without a registry) has none.
fn received(span: &tracing::Span) -> Option<String> {
    span.with_subscriber(|(id, dispatch)| {
        let span = dispatch.downcast_ref::<Registry>()?.span(id)?;
        span.scope().find_map(|span| span.extensions().get::<Received>().map(|r| r.0.clone()))
    })
    .flatten()
}

/// A carrier holding one `traceparent` value.
struct Carrier(Option<String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[cfg(test)]
mod tests;
