//! HTTP plumbing every service shares: the JSON extractor that answers bad bodies with our error
//! format, the client IP, the common middleware stack and the server loop with graceful shutdown.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
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
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
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

async fn resolve_client_ip(trust_forwarded_for: bool, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    // Only the last hop is trusted: it is the one the ALB appended; anything before it came from
    // the client and may be forged.
    let forwarded = trust_forwarded_for
        .then(|| {
            let last_header = request.headers().get_all("x-forwarded-for").iter().next_back()?;
            last_header.to_str().ok()?.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        })
        .flatten();
    let ip = forwarded.or(peer).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    request.extensions_mut().insert(ClientIp(ip));
    next.run(request).await
}

#[derive(Clone, Copy)]
struct UuidRequestId;

impl MakeRequestId for UuidRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()).ok().map(RequestId::new)
    }
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
        .layer(middleware::from_fn(move |req, next| resolve_client_ip(trust, req, next)))
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
    use super::field_of;

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
