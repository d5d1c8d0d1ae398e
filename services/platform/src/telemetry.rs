//! Logging and tracing, set up in one place.
//!
//! Logs: JSON lines on stdout (awslogs in ECS) or pretty lines for a terminal, filtered by
//! `RUST_LOG` (default `info`). Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the `tracing`
//! spans (one per request, named by route; one per consumed event) are exported over OTLP/HTTP to
//! the collector (the ADOT sidecar in ECS, which forwards to X-Ray), with X-Ray-compatible trace
//! ids. Trace context is read from incoming `traceparent` or `X-Amzn-Trace-Id` headers, written
//! into the outbox with each event, and carried through SQS to the consumer.
//!
//! Sampling follows `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`), with one addition for
//! the ALB: it starts a trace for every request but sends `X-Amzn-Trace-Id: Root=...` with neither
//! `Parent` (it records no segment) nor `Sampled` (it leaves the decision to its target). Passed
//! to the SDK as opentelemetry-aws parses it (no valid parent, flags without "sampled"), no such
//! request exported anything (issue 12 measured 20; the ALB-header test in
//! `tests/it/trace_propagation.rs` failed the same way). Here a header without a decision (`Sampled`
//! missing or `?`) is decided as a new trace would be, by the configured ratio, and a header
//! without `Parent` makes the request the root of the trace the ALB named, under its trace id (the
//! one the ALB writes into its access log). An explicit `Sampled=0` or `Sampled=1` is followed.

use std::cell::Cell;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator as _};
use opentelemetry::trace::{Link, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample};
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
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub sampling: Sampling,
}

/// Which traces are exported: `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, with the names
/// and defaults of the OpenTelemetry specification's SDK environment variables (`always_on`,
/// `always_off`, `traceidratio`, and each of them `parentbased_`; default
/// `parentbased_always_on`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// `parentbased_*`: a request or event whose caller decided (`traceparent`, `Sampled=0|1`)
    /// keeps that decision; only new traces are decided by `ratio`.
    pub parent_based: bool,
    /// The share of new traces that are sampled, 0 to 1: 1 for `always_on`, 0 for `always_off`,
    /// `OTEL_TRACES_SAMPLER_ARG` for `traceidratio` (default 1).
    pub ratio: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { parent_based: true, ratio: 1.0 }
    }
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
        .with_sampler(TraceSampler::new(traces.sampling))
        .with_id_generator(TraceIds::default())
        .with_resource(resource)
        .build())
}

/// What an X-Ray header said about sampling, kept in the remote context for [`TraceSampler`]
/// where the span context cannot say it: a header without a decision (the span context has only
/// "sampled" or "not"), or one without `Parent` (there is no valid span context at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XrayDecision {
    /// `Sampled` missing or `?`: the caller asks us to decide.
    Undecided,
    /// `Sampled=1` or `Sampled=0` on a header without `Parent`.
    Decided(bool),
}

/// The sampler `Sampling` describes, which also knows [`XrayDecision`]s.
#[derive(Debug, Clone)]
struct TraceSampler {
    parent_based: bool,
    /// Decides new traces: always, never, or by trace id ratio.
    root: Sampler,
    /// `root`, or `root` behind the parent's decision.
    configured: Sampler,
}

impl TraceSampler {
    fn new(sampling: Sampling) -> Self {
        let root = if sampling.ratio >= 1.0 {
            Sampler::AlwaysOn
        } else if sampling.ratio <= 0.0 {
            Sampler::AlwaysOff
        } else {
            Sampler::TraceIdRatioBased(sampling.ratio)
        };
        let configured = if sampling.parent_based { Sampler::ParentBased(Box::new(root.clone())) } else { root.clone() };
        TraceSampler { parent_based: sampling.parent_based, root, configured }
    }
}

impl ShouldSample for TraceSampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        // The note is for the span that continues the remote context. Spans inside it inherit
        // the context, note included, but have a local parent, whose decision they follow.
        let xray = parent
            .filter(|cx| {
                let parent = cx.span();
                !parent.span_context().is_valid() || parent.span_context().is_remote()
            })
            .and_then(|cx| cx.get::<XrayDecision>().copied());
        match xray {
            Some(XrayDecision::Undecided) => self.root.should_sample(parent, trace_id, name, kind, attributes, links),
            Some(XrayDecision::Decided(sampled)) if self.parent_based => SamplingResult {
                decision: if sampled { SamplingDecision::RecordAndSample } else { SamplingDecision::Drop },
                attributes: Vec::new(),
                trace_state: parent.map(|cx| cx.span().span_context().trace_state().clone()).unwrap_or_default(),
            },
            _ => self.configured.should_sample(parent, trace_id, name, kind, attributes, links),
        }
    }
}

thread_local! {
    /// The trace id the next root span started on this thread takes instead of a new one: see
    /// [`TraceIds`].
    static ADOPTED_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// X-Ray's trace ids (the time in the first 32 bits), except for a span that continues an X-Ray
/// header without `Parent` (the ALB's): it is a root span, yet its trace is the one the header
/// named. The SDK takes a root span's trace id only from the id generator, so `set_parent` leaves
/// the header's id here, for this thread, while it starts that span.
#[derive(Debug, Default)]
struct TraceIds {
    xray: opentelemetry_aws::trace::XrayIdGenerator,
}

impl IdGenerator for TraceIds {
    fn new_trace_id(&self) -> TraceId {
        ADOPTED_TRACE_ID.take().unwrap_or_else(|| self.xray.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.xray.new_span_id()
    }
}

/// The trace a span continues, read from propagation headers.
struct RemoteParent {
    /// The parent context, with an [`XrayDecision`] where the span context cannot carry it.
    context: Context,
    /// The trace id to start a root span in (an X-Ray header without `Parent`).
    adopt: Option<TraceId>,
}

/// Reads the trace `headers` carry. A valid `traceparent` wins: it is the trace a client or
/// another service started, while an `X-Amzn-Trace-Id` beside it may be one the ALB added in
/// front of us. Our own events carry both, for the same span.
fn remote_parent(headers: &TraceHeaders) -> Option<RemoteParent> {
    let extractor = MapExtractor(headers);
    let w3c = TraceContextPropagator::new().extract_with_context(&Context::new(), &extractor);
    if w3c.span().span_context().is_valid() {
        return Some(RemoteParent { context: w3c, adopt: None });
    }
    let header = extractor.get(XRAY_HEADER)?.trim();
    // The trace id, the parent and the other fields (kept as trace state); its flags are
    // replaced below, since opentelemetry-aws marks "no decision" with a flag of its own that
    // would otherwise be copied into our spans and propagated as `Sampled=?`.
    let parsed = opentelemetry_aws::trace::xray_propagator::span_context_from_str(header)?;
    let decision = xray_sampled(header);
    let flags = if decision == Some(true) { TraceFlags::SAMPLED } else { TraceFlags::default() };
    let span_context = SpanContext::new(parsed.trace_id(), parsed.span_id(), flags, true, parsed.trace_state().clone());
    let has_parent = span_context.is_valid();
    let mut context = if has_parent { Context::new().with_remote_span_context(span_context) } else { Context::new() };
    match decision {
        None => context = context.with_value(XrayDecision::Undecided),
        Some(sampled) if !has_parent => context = context.with_value(XrayDecision::Decided(sampled)),
        Some(_) => {}
    }
    Some(RemoteParent { context, adopt: (!has_parent).then(|| parsed.trace_id()) })
}

/// The `Sampled` field of an X-Ray header: `Some` for `1` or `0`, `None` when it is missing or
/// `?` (X-Ray's "the receiver decides").
fn xray_sampled(header: &str) -> Option<bool> {
    let (_, value) = header.split(';').filter_map(|field| field.split_once('=')).find(|(key, _)| key.trim() == "Sampled")?;
    match value.trim() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
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

/// Makes `span` a child of the remote trace in `headers`, when there is one (or that trace's
/// root, for an X-Ray header without `Parent`).
pub fn set_parent(span: &tracing::Span, headers: &TraceHeaders) {
    if headers.is_empty() || !exporting() {
        return;
    }
    let Some(remote) = remote_parent(headers) else {
        return;
    };
    match remote.adopt {
        None => {
            let _ = span.set_parent(remote.context);
        }
        Some(trace_id) => {
            ADOPTED_TRACE_ID.set(Some(trace_id));
            let _ = span.set_parent(remote.context);
            // Starts the OpenTelemetry span now, on this thread, so that it takes the adopted id.
            let _ = span.context();
            ADOPTED_TRACE_ID.set(None);
        }
    }
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

    fn xray(header: &str) -> TraceHeaders {
        TraceHeaders::from([(XRAY_HEADER.to_owned(), header.to_owned())])
    }

    /// Starts a span as `set_parent` would on `headers` with a tracer sampling as `sampling` says:
    /// (its trace id, sampled).
    fn start(sampling: Sampling, headers: &TraceHeaders) -> (TraceId, bool) {
        use opentelemetry::trace::{Span as _, Tracer as _};
        let provider =
            SdkTracerProvider::builder().with_sampler(TraceSampler::new(sampling)).with_id_generator(TraceIds::default()).build();
        let tracer = provider.tracer("test");
        let remote = remote_parent(headers).expect("a trace");
        ADOPTED_TRACE_ID.set(remote.adopt);
        let span = tracer.start_with_context("request", &remote.context);
        ADOPTED_TRACE_ID.set(None);
        let context = span.span_context().clone();
        (context.trace_id(), context.is_sampled())
    }

    const ROOT: &str = "5759e988bd862e3fe1be46a994272793";

    #[test]
    fn the_load_balancers_header_starts_a_sampled_root_in_its_trace() {
        let on = Sampling::default();
        let trace = TraceId::from_hex(ROOT).expect("hex");
        assert_eq!(start(on, &xray("Root=1-5759e988-bd862e3fe1be46a994272793")), (trace, true));
        // `Sampled=?` and a `Self` field, as the ALB sends when the caller had a header already.
        assert_eq!(
            start(on, &xray("Self=1-67891234-abcdef012345678912345678;Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=?")),
            (trace, true)
        );
        // No decision is decided by the ratio, as a new trace is.
        let never = Sampling { parent_based: true, ratio: 0.0 };
        assert_eq!(start(never, &xray("Root=1-5759e988-bd862e3fe1be46a994272793")), (trace, false));
        assert_eq!(start(never, &xray("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8")), (trace, false));
        assert_eq!(start(on, &xray("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8")), (trace, true));
    }

    #[test]
    fn an_explicit_decision_is_followed_unless_the_sampler_ignores_parents() {
        let on = Sampling::default();
        let trace = TraceId::from_hex(ROOT).expect("hex");
        for header in [
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0",
        ] {
            assert_eq!(start(on, &xray(header)), (trace, false), "{header}");
            assert_eq!(start(Sampling { parent_based: false, ratio: 1.0 }, &xray(header)), (trace, true), "{header}");
        }
        let never = Sampling { parent_based: true, ratio: 0.0 };
        assert_eq!(start(never, &xray("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1")), (trace, true));
    }

    #[test]
    fn a_traceparent_wins_over_an_x_ray_header_beside_it() {
        let mut headers = xray("Root=1-5759e988-0123456789abcdef01234567");
        headers.insert("traceparent".into(), format!("00-{ROOT}-53995c3f42cd8ad8-00"));
        assert_eq!(start(Sampling::default(), &headers), (TraceId::from_hex(ROOT).expect("hex"), false));
    }

    #[test]
    fn spans_inside_a_decided_request_follow_it() {
        use opentelemetry::trace::{Span as _, Tracer as _};
        // A request without a decision, sampled (by a sampler with ratio 1); its context keeps
        // the header's note, which must not make the spans inside decide anew by a ratio of 0.
        let remote = remote_parent(&xray("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8")).expect("trace");
        let sampled = SdkTracerProvider::builder().with_sampler(TraceSampler::new(Sampling::default())).build();
        let request = sampled.tracer("test").start_with_context("request", &remote.context);
        assert!(request.span_context().is_sampled());
        let inside = remote.context.with_span(request);
        let never = SdkTracerProvider::builder().with_sampler(TraceSampler::new(Sampling { parent_based: true, ratio: 0.0 })).build();
        let child = never.tracer("test").start_with_context("db", &inside);
        assert!(child.span_context().is_sampled());
    }

    #[test]
    fn our_spans_propagate_a_decision_never_a_question() {
        let _ = init(LogFormat::Json, None);
        use opentelemetry::trace::Tracer as _;
        let provider = SdkTracerProvider::builder()
            .with_sampler(TraceSampler::new(Sampling::default()))
            .with_id_generator(TraceIds::default())
            .build();
        let tracer = provider.tracer("test");
        let remote = remote_parent(&xray("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=?")).expect("trace");
        let span = tracer.start_with_context("request", &remote.context);
        let context = Context::new().with_span(span);
        let mut out = TraceHeaders::new();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut MapInjector(&mut out)));
        assert!(out[XRAY_HEADER].ends_with(";Sampled=1"), "{out:?}");
        assert!(out["traceparent"].ends_with("-01"), "{out:?}");
    }

    #[test]
    fn the_sampled_field_is_read_exactly() {
        assert_eq!(xray_sampled("Root=1-5759e988-bd862e3fe1be46a994272793"), None);
        assert_eq!(xray_sampled("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=?"), None);
        assert_eq!(xray_sampled("Root=1-5759e988-bd862e3fe1be46a994272793; Sampled=1"), Some(true));
        assert_eq!(xray_sampled("Sampled=0;Root=1-5759e988-bd862e3fe1be46a994272793"), Some(false));
    }
}
