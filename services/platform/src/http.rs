//! HTTP plumbing every service shares: the JSON extractor that answers bad bodies with our error
//! format, the client IP, the common middleware stack and the server loop with graceful shutdown.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::shutdown::Shutdown;

/// Largest JSON body any endpoint accepts unless it sets its own limit.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// A JSON body, parsed with errors in Guildhall's format (400 with the field, 413, 415).
///
/// Every request body of the API is a JSON object; anything else is refused 400. serde's derived
/// structs would also take an array of the fields in order (`[null, null]` as an update of two
/// fields), which no client means and the OpenAPI document does not allow.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType("send the body as JSON with `Content-Type: application/json`".into()));
        }
        let body = match axum::body::Bytes::from_request(req, state).await {
            Ok(body) => body,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(ApiError::PayloadTooLarge),
            Err(rejection) => return Err(ApiError::InvalidRequest { field: None, message: rejection.body_text() }),
        };
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::InvalidRequest { field: None, message: "the body must be a JSON object".into() });
        }
        match axum::Json::<T>::from_bytes(&body) {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `application/json` or a `+json` type, as axum's own `Json` accepts.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind == "application" && (subtype == "json" || subtype.ends_with("+json"))
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::UnsupportedMediaType("send the body as JSON with `Content-Type: application/json`".into())
        }
        _ => {
            let text = rejection.body_text();
            ApiError::InvalidRequest { field: field_of(&text), message: text }
        }
    }
}

/// Finds the field serde complained about in a message such as "missing field `email`" or
/// "email: invalid type".
fn field_of(message: &str) -> Option<String> {
    for marker in ["missing field `", "unknown field `"] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            return rest.split('`').next().map(str::to_owned);
        }
    }
    let detail = message.rsplit_once("target type: ").map(|(_, d)| d)?;
    let (path, _) = detail.split_once(": ")?;
    (!path.contains(' ')).then(|| path.to_owned())
}

/// For a field of an update body that may be absent (keep), `null` (clear) or a value (set):
/// `#[serde(default, deserialize_with = "platform::http::present")]` on an `Option<Option<T>>`
/// makes a field sent as `null` `Some(None)`, and one not sent stays `None` (by `default`).
pub fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(deserializer: D) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// Query parameters, parsed with errors in Guildhall's format.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => {
                let rejection: QueryRejection = rejection;
                let text = rejection.body_text();
                Err(ApiError::InvalidRequest { field: field_of(&text), message: text })
            }
        }
    }
}

/// The client's IP address: the peer address, or, when `TRUST_FORWARDED_FOR` is set (behind the
/// ALB), the last address in `X-Forwarded-For`, which is the one the ALB itself appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<ClientIp>().copied().ok_or_else(|| ApiError::Internal(anyhow::anyhow!("client IP layer is not installed")))
    }
}

/// The client's IP address of `request`: see [`ClientIp`].
fn resolve_client_ip(trust_forwarded_for: bool, request: &Request) -> IpAddr {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    // Only the last hop is trusted: it is the one the ALB appended; anything before it came from
    // the client and may be forged.
    let forwarded = trust_forwarded_for
        .then(|| {
            let last_header = request.headers().get_all("x-forwarded-for").iter().next_back()?;
            last_header.to_str().ok()?.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        })
        .flatten();
    forwarded.or(peer).unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// Puts the [`ClientIp`] into every request's extensions. A plain layer rather than
/// `middleware::from_fn`, which clones the inner service and boxes a future per request.
#[derive(Debug, Clone, Copy)]
struct ClientIpLayer {
    trust_forwarded_for: bool,
}

impl<S> tower::Layer<S> for ClientIpLayer {
    type Service = ClientIpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientIpService { inner, trust_forwarded_for: self.trust_forwarded_for }
    }
}

#[derive(Debug, Clone)]
struct ClientIpService<S> {
    inner: S,
    trust_forwarded_for: bool,
}

impl<S: tower::Service<Request>> tower::Service<Request> for ClientIpService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let ip = resolve_client_ip(self.trust_forwarded_for, &request);
        request.extensions_mut().insert(ClientIp(ip));
        self.inner.call(request)
    }
}

#[derive(Clone, Copy)]
struct UuidRequestId;

impl MakeRequestId for UuidRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = request_uuid().hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(text).ok().map(RequestId::new)
    }
}

/// A UUIDv7 for a request id: the time in milliseconds and random bits from a generator per
/// thread, seeded once from the operating system. `Uuid::now_v7` asks the operating system for
/// every id, a system call per request; request ids need to be unique, not unpredictable.
fn request_uuid() -> uuid::Uuid {
    use std::cell::Cell;
    thread_local! {
        // Seeded from the random bits of one OS-random UUIDv7 (74 of its 128 bits are random).
        static STATE: Cell<u64> = Cell::new({
            let seed = uuid::Uuid::now_v7().as_u128();
            (seed as u64) ^ ((seed >> 64) as u64).rotate_left(32)
        });
    }
    // splitmix64 (Steele, Lea and Flood, 2014), twice: 128 bits, of which the UUID keeps 74.
    let next = || {
        STATE.with(|state| {
            let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let random = (u128::from(next()) << 64 | u128::from(next())).to_le_bytes();
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&random[..10]);
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
}

/// Settings of the common middleware stack.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// A request that takes longer is answered 408 and dropped.
    pub request_timeout: Duration,
    /// Take the client IP from `X-Forwarded-For`.
    pub trust_forwarded_for: bool,
    /// Browser origins allowed to call the API (`CORS_ALLOWED_ORIGINS`); empty for none.
    pub cors_allowed_origins: Vec<String>,
    /// Where every request is counted and timed by its route.
    pub metrics: crate::metrics::Metrics,
    /// Refuses writes while the region is read-only (`crate::region`), innermost; `None` where
    /// no region is followed (commands other than `serve`).
    pub region_gate: Option<crate::region::RegionGate>,
    /// Opens a player's read-your-writes window after a write (`crate::replica::mark_writers`),
    /// when reads go to a replica.
    pub read_routing: Option<crate::replica::ReadRouting>,
}

/// How long a browser may cache a preflight answer: ten minutes, the most Chromium honours.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer for `origins`, or none when the list is empty: then no response carries CORS
/// headers and browsers keep other origins out (the same-origin default).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    use axum::http::{Method, header};
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()).collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("idempotency-key")])
            // A browser game reads these: when to retry after a 429 or 503, and the id to quote
            // in a bug report.
            .expose_headers([header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
            .max_age(CORS_MAX_AGE),
    )
}

/// Wraps the service routers with what every request gets: JSON 404/405 answers, a body limit, a
/// timeout, CORS when origins are configured (answering preflights of every route, and adding its
/// headers to errors too, so a browser can read them), a request id (`x-request-id`, kept when
/// the ALB or a client sent one), a span named by the matched route, panic capture, the client
/// IP, and, outermost, the request counters and timings by route (`crate::metrics`); innermost,
/// where configured, the region's write gate and the replica's read-your-writes marking.
///
/// One `Router::layer` of one stack, not one call per layer: axum wraps every route in a boxed
/// service for each call, and a request clones the chain of boxes below each one it passes, so
/// ten calls cost some fifty allocations and clones a request (`loadtest/instructions.sh`
/// counted the nesting at a tenth of a rank read's instructions). The layers are the route's,
/// not the router's, as before: the span and the counters see the matched route.
///
/// The result has every route turned into its final service at once (`with_state(())`):
/// otherwise the handlers added without state (health, fallbacks) would have every layer
/// applied again on each request.
pub fn with_common_layers(router: Router, settings: HttpSettings) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &axum::http::Request<_>| {
            // Borrowed: the span's fields are only evaluated when it is enabled (not at
            // `RUST_LOG=warn`), so a disabled span costs no allocation.
            let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            let span = tracing::info_span!(
                "request",
                otel.name = format!("{} {}", request.method(), route),
                otel.kind = "server",
                http.method = %request.method(),
                http.route = route,
                request_id = id,
                trace_id = tracing::field::Empty,
            );
            crate::telemetry::set_parent_from_http(&span, request.headers());
            crate::telemetry::record_trace_id(&span);
            span
        })
        .on_request(())
        .on_response(|response: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
            tracing::info!(status = response.status().as_u16(), latency_ms = latency.as_millis() as u64, "request done");
        });
    // Outermost first.
    let layers = tower::ServiceBuilder::new()
        .layer(settings.metrics.http_layer())
        .layer(SetRequestIdLayer::new(request_id.clone(), UuidRequestId))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(trace)
        .option_layer(cors(&settings.cors_allowed_origins))
        .layer(CatchPanicLayer::custom(|_panic| ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, settings.request_timeout))
        .layer(ClientIpLayer { trust_forwarded_for: settings.trust_forwarded_for })
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        .option_layer(settings.read_routing.map(|routing| axum::middleware::from_fn_with_state(routing, crate::replica::mark_writers)))
        .option_layer(settings.region_gate);
    router
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(layers)
        .with_state(())
}

/// Limits of the HTTP server on its connections, before any request reaches the router.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A request's head (request line and headers) must arrive within this, counted from the
    /// connection's opening for its first request and from the first byte for later ones, so a
    /// client that trickles its headers (slowloris) is cut off.
    pub header_read_timeout: Duration,
    /// A keep-alive connection may wait this long for its next request.
    pub idle_timeout: Duration,
    /// Connections open at once (WebSockets included); at the cap, new ones wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` stops, then lets in-flight requests finish for
/// up to `grace` before returning.
///
/// The loop is ours rather than `axum::serve`, which builds hyper's connections without a timer,
/// so hyper's header-read timeout never runs there, and accepts without bound. HTTP/1 only, as
/// before (the ALB speaks HTTP/1.1 to targets); upgrades (chat's WebSockets) are served.
pub async fn serve(listener: TcpListener, router: Router, shutdown: Shutdown, grace: Duration, limits: ServerLimits) -> anyhow::Result<()> {
    let max = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    let mut warned_full_at: Option<std::time::Instant> = None;
    loop {
        // A slot first, so that at the cap connections queue in the kernel's backlog instead of
        // being accepted and left unserved.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.map_err(|_| anyhow::anyhow!("connection slots closed"))?,
            () = shutdown.stopped() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            () = shutdown.stopped() => break,
        };
        if slots.available_permits() == 0 && warned_full_at.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            warned_full_at = Some(std::time::Instant::now());
            tracing::warn!(max_connections = max, "connection cap reached; new connections wait");
        }
        tokio::spawn(serve_connection(stream, peer, router.clone(), shutdown.clone(), limits, slot));
    }
    drop(listener);
    // Every connection holds a slot until it ends: all slots back means all connections closed.
    tokio::select! {
        _ = slots.acquire_many(max) => Ok(()),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests outlived the grace period; closing them");
            Ok(())
        }
    }
}

/// What to do when `accept` fails: a connection that died in the backlog is nothing; running out
/// of file descriptors or memory is logged, and accepting pauses a moment rather than spinning.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(err.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused) {
        return;
    }
    tracing::error!(error = %err, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Serves one connection until it closes, or, once `shutdown` stops, until its request in flight
/// is answered. Its `slot` goes with the socket (`CountedReads`), so it returns to the cap when
/// the socket closes: after hyper's connection ends, or, for an upgrade, when the WebSocket that
/// took the socket over ends.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    shutdown: Shutdown,
    limits: ServerLimits,
    slot: OwnedSemaphorePermit,
) {
    let reads = Arc::new(AtomicU64::new(0));
    let io = hyper_util::rt::TokioIo::new(CountedReads { inner: stream, reads: reads.clone(), _slot: slot });
    let service = hyper::service::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
        // Where `ClientIp` finds the peer, as `into_make_service_with_connect_info` puts it.
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { router.call(request.map(axum::body::Body::new)).await }
    });
    let timer = HeadTimer { reads, header_read: limits.header_read_timeout, idle: limits.idle_timeout };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(timer).header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(io, service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.stopped() => {
            // Finish the request in flight, then close; an idle connection closes at once.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Timeouts, resets and malformed requests: the client's doing, not worth a warning.
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// A connection's socket, counting the reads that brought bytes, for its `HeadTimer`, and holding
/// its slot of the connection cap. An upgrade moves the socket, slot included, into the
/// WebSocket (hyper's `Upgraded` owns it), so a WebSocket counts against `HTTP_MAX_CONNECTIONS`
/// for its whole life, not just for its HTTP handshake.
struct CountedReads {
    inner: TcpStream,
    reads: Arc<AtomicU64>,
    _slot: OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for CountedReads {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for CountedReads {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The timer of one HTTP/1 connection. hyper's server asks its timer for one thing: the deadline
/// of the next request head, set when it starts waiting for one, which makes a keep-alive
/// connection's idle wait part of the head's time (hyper/hyper#3185). Behind the ALB that would
/// close idle connections long before the ALB's idle timeout (350 s), and a request the ALB sends
/// on a connection as it closes is a 502 (AWS advises targets to outlast the ALB). So: for the
/// first request the head must arrive within `header_read` of the connection opening (a client
/// that connects and says nothing is cut off too); for a later one the wait is `idle` until a byte
/// arrives and `header_read` from then.
#[derive(Clone)]
struct HeadTimer {
    reads: Arc<AtomicU64>,
    header_read: Duration,
    idle: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(std::time::Instant::now() + duration)
    }

    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let now = tokio::time::Instant::now();
        let reads_at_start = self.reads.load(Ordering::Relaxed);
        let fresh = reads_at_start == 0;
        let first_deadline = now + if fresh { self.header_read } else { self.idle };
        Box::pin(HeadSleep {
            reads: self.reads.clone(),
            reads_at_start,
            header_read: self.header_read,
            head_started: fresh,
            sleep: Box::pin(tokio::time::sleep_until(first_deadline)),
        })
    }
}

/// The deadline of one request head (see `HeadTimer`).
struct HeadSleep {
    reads: Arc<AtomicU64>,
    reads_at_start: u64,
    header_read: Duration,
    /// Whether the head's own deadline is set (else the idle one is).
    head_started: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl std::future::Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        // hyper polls this each time it has read and still lacks a whole head, so the first
        // poll after bytes arrived is about when the head began.
        if !self.head_started && self.reads.load(Ordering::Relaxed) != self.reads_at_start {
            self.head_started = true;
            let deadline = tokio::time::Instant::now() + self.header_read;
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::{Json, field_of, request_uuid};

    /// What the `Json` extractor answers to a body: status and error code ("" for success).
    async fn answer(content_type: &str, body: &'static str) -> (u16, String) {
        use tower::ServiceExt as _;
        #[derive(serde::Deserialize)]
        #[allow(dead_code)] // read by serde only
        struct Update {
            name: Option<String>,
            locale: Option<String>,
        }
        let app = axum::Router::new().route("/", axum::routing::post(|Json(_): Json<Update>| async { "ok" }));
        let request =
            axum::http::Request::post("/").header("content-type", content_type).body(axum::body::Body::from(body)).expect("request");
        let response = app.oneshot(request).await.expect("response");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        let code = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        (status, code.unwrap_or_default())
    }

    #[tokio::test]
    async fn a_json_body_must_be_an_object_sent_as_json() {
        assert_eq!(answer("application/json", r#" {"name": "ana"}"#).await, (200, String::new()));
        assert_eq!(answer("application/json; charset=utf-8", "{}").await, (200, String::new()));
        // serde would read an array as the struct's fields in order.
        assert_eq!(answer("application/json", "[null, null]").await, (400, "invalid_request".into()));
        assert_eq!(answer("application/json", "null").await, (400, "invalid_request".into()));
        assert_eq!(answer("application/json", r#"{"name": 5}"#).await, (400, "invalid_request".into()));
        assert_eq!(answer("text/plain", "{}").await, (415, "unsupported_media_type".into()));
    }

    #[test]
    fn request_ids_are_distinct_v7_uuids() {
        let ids: Vec<uuid::Uuid> = (0..10_000).map(|_| request_uuid()).collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7 && id.get_variant() == uuid::Variant::RFC4122));
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
        let (secs, _) = ids[0].get_timestamp().expect("v7 has a timestamp").to_unix();
        assert!(now.abs_diff(secs) < 5, "the id carries the time");
        // Another thread has its own generator, seeded apart.
        let other = std::thread::spawn(request_uuid).join().expect("thread");
        assert!(!distinct.contains(&other));
    }

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: missing field `email` at line 1 column 2"),
            Some("email".into())
        );
        assert_eq!(
            field_of(
                "Failed to deserialize the JSON body into the target type: password: invalid type: integer `5`, expected a string at line 1 column 14"
            ),
            Some("password".into())
        );
        assert_eq!(field_of("Failed to parse the request body as JSON: expected value at line 1 column 1"), None);
    }
}
