//! Logging and tracing, set up in one place.
//!
//! Logs: JSON lines on stdout (awslogs in ECS) or pretty lines for a terminal, filtered by
//! `RUST_LOG` (default `info`). Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the `tracing`
//! spans (one per request, named by route; one per consumed event) are exported over OTLP/HTTP to
//! the collector (the ADOT sidecar in ECS, which forwards to X-Ray), with X-Ray-compatible trace
//! ids. Trace context is read from incoming `traceparent` or `X-Amzn-Trace-Id` headers, written
//! into the outbox with each event, and carried through SQS to the consumer.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;
use crate::events::TraceHeaders;

/// The X-Ray trace header, as HTTP and SQS's `AWSTraceHeader` carry it.
pub const XRAY_HEADER: &str = "X-Amzn-Trace-Id";

/// Set once spans are exported: until then the per-request and per-event trace work is skipped.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where traces go.
#[derive(Debug, Clone)]
pub struct TraceExport {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://localhost:4318`.
    pub endpoint: String,
    /// `OTEL_SERVICE_NAME`, e.g. `guildhall-leaderboard`.
    pub service_name: String,
}

/// The installed telemetry; `shutdown` flushes the spans still buffered.
#[must_use = "call shutdown() before exiting so buffered spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("guildhall: flushing traces failed: {err}");
        }
    }
}

/// Installs the global subscriber (and, with `traces`, the OTLP exporter). Call once, first thing
/// in `main`; a second call (tests starting several servers) keeps the first subscriber.
pub fn init(format: LogFormat, traces: Option<&TraceExport>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Both trace formats are read and written: W3C for OpenTelemetry, X-Ray's for AWS.
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(opentelemetry_aws::trace::XrayPropagator::default()),
    ]));
    let provider = traces.and_then(|traces| match tracer_provider(traces) {
        Ok(provider) => Some(provider),
        Err(err) => {
            eprintln!("guildhall: traces are off, the OTLP exporter failed to start: {err:#}");
            None
        }
    });
    // Traces get the spans at INFO and above plus, inside them, the DEBUG spans of external
    // calls: the AWS SDK's operations (`SQS.SendMessage`), the stores' database work
    // (`db accounts.create`) and the cache's Redis calls (`cache ranks.upsert`). So each call of a
    // request or an event shows as a child span, and idle long polls make no traces. Logs keep
    // to `RUST_LOG`.
    let otel = provider.as_ref().map(|p| {
        let filter = tracing_subscriber::filter::dynamic_filter_fn(|meta, cx| {
            let call = meta.target().starts_with("aws_sdk_") || meta.target() == "guildhall::db" || meta.target() == "guildhall::cache";
            *meta.level() <= tracing::Level::INFO || (meta.is_span() && call && cx.lookup_current().is_some())
        })
        // Without the hint, the fmt layer's INFO could turn DEBUG callsites off for every layer.
        .with_max_level_hint(tracing::level_filters::LevelFilter::DEBUG);
        tracing_opentelemetry::layer().with_tracer(p.tracer("guildhall")).with_filter(filter)
    });
    let registry = tracing_subscriber::registry().with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
    let _ = match format {
        LogFormat::Json => {
            registry.with(fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).with_filter(filter)).try_init()
        }
        LogFormat::Pretty => registry.with(fmt.with_filter(filter)).try_init(),
    };
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Telemetry { provider }
}

fn tracer_provider(traces: &TraceExport) -> anyhow::Result<SdkTracerProvider> {
    let base = traces.endpoint.trim_end_matches('/');
    let endpoint = if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") };
    let exporter =
        opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(endpoint).with_timeout(Duration::from_secs(5)).build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(traces.service_name.clone()).build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(opentelemetry_aws::trace::XrayIdGenerator::default())
        .with_resource(resource)
        .build())
}

struct MapInjector<'a>(&'a mut TraceHeaders);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // X-Ray's propagator writes its header in lower case; keep the canonical spelling.
        let key = if key.eq_ignore_ascii_case(XRAY_HEADER) { XRAY_HEADER.to_owned() } else { key.to_owned() };
        self.0.insert(key, value);
    }
}

struct MapExtractor<'a>(&'a TraceHeaders);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The propagation headers of the current span's trace (empty when tracing is off).
pub fn current_trace_headers() -> TraceHeaders {
    let mut headers = TraceHeaders::new();
    if !exporting() {
        return headers;
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut MapInjector(&mut headers)));
    headers
}

/// Makes `span` a child of the remote trace in `headers`, when there is one.
pub fn set_parent(span: &tracing::Span, headers: &TraceHeaders) {
    if headers.is_empty() || !exporting() {
        return;
    }
    let context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MapExtractor(headers)));
    let _ = span.set_parent(context);
}

/// Makes `span` a child of the trace an incoming request carries (`traceparent` or
/// `X-Amzn-Trace-Id`, as the ALB adds).
pub fn set_parent_from_http(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !exporting() {
        return;
    }
    let mut carried = TraceHeaders::new();
    for name in ["traceparent", "tracestate", XRAY_HEADER] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            carried.insert(name.to_owned(), value.to_owned());
        }
    }
    set_parent(span, &carried);
}

/// Writes the span's trace id into its `trace_id` field, so that log lines carry it.
pub fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    if !exporting() {
        return;
    }
    let context = span.context();
    let trace_id = context.span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_both_formats() {
        let _ = init(LogFormat::Json, None);
        let traceparent = "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01";
        let incoming = TraceHeaders::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MapExtractor(&incoming)));
        let mut out = TraceHeaders::new();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut MapInjector(&mut out)));
        assert_eq!(out.get("traceparent").map(String::as_str), Some(traceparent));
        // The same trace in X-Ray's notation: Root=1-<8 hex>-<24 hex>.
        assert_eq!(
            out.get(XRAY_HEADER).map(String::as_str),
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
        );
    }
}
