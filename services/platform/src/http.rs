//! HTTP plumbing every service shares: the JSON extractor that answers bad bodies with our error
//! format, the client IP, the common middleware stack and the server loop with graceful shutdown.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
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
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// A request that takes longer is answered 408 and dropped.
    pub request_timeout: Duration,
    /// Take the client IP from `X-Forwarded-For`.
    pub trust_forwarded_for: bool,
}

/// Wraps the service routers with what every request gets: JSON 404/405 answers, a body limit, a
/// timeout, a request id (`x-request-id`, kept when the ALB or a client sent one), a span named
/// by the matched route, panic capture and the client IP.
pub fn with_common_layers(router: Router, settings: HttpSettings) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let trust = settings.trust_forwarded_for;
    router
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        .layer(ClientIpLayer { trust_forwarded_for: trust })
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, settings.request_timeout))
        .layer(CatchPanicLayer::custom(|_panic| ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
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
                .on_response(|response: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(status = response.status().as_u16(), latency_ms = latency.as_millis() as u64, "request done");
                }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, UuidRequestId))
}

/// Serves `router` on `listener` until `shutdown` stops, then lets in-flight requests finish for
/// up to `grace` before returning.
pub async fn serve(listener: TcpListener, router: Router, shutdown: Shutdown, grace: Duration) -> anyhow::Result<()> {
    let stop = shutdown.clone();
    let server = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { stop.stopped().await });
    let server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = server => result.map_err(anyhow::Error::from),
        () = async { shutdown.stopped().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests outlived the grace period; closing them");
            Ok(())
        }
    }
}

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
