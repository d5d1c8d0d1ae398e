//! The WebSocket opening handshake (RFC 6455 §4.2), made here rather than by axum's
//! `WebSocketUpgrade` so that the chat holds the upgraded connection itself and frames it with its
//! own `crate::socket`.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine;

use sha1::{Digest, Sha1};

/// The GUID RFC 6455 §1.3 appends to a client's key before hashing it for `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether a header's comma-separated tokens include `token`, in any case (`Connection: keep-alive,
/// Upgrade`).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// Checks an HTTP/1.1 upgrade request and returns its `Sec-WebSocket-Accept`, or what is wrong
/// with it.
pub fn accept_key(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    if method != Method::GET {
        return Err("the upgrade must be a GET");
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err("`Connection` must include `upgrade`");
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err("`Upgrade` must be `websocket`");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|version| version.as_bytes() != b"13") {
        return Err("`Sec-WebSocket-Version` must be 13");
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or("`Sec-WebSocket-Key` is missing")?;
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(ACCEPT_GUID);
    let accept = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    HeaderValue::from_str(&accept).map_err(|_| "`Sec-WebSocket-Key` is not a header value")
}

/// The `101 Switching Protocols` answer to an upgrade whose key gave `accept`.
pub fn switching_protocols(accept: HeaderValue) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}
