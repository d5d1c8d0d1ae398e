//! The WebSocket opening handshake (RFC 6455 §4.2) and the socket it leaves, made here rather than
//! by axum's `WebSocketUpgrade` so that the chat holds tokio-tungstenite's stream itself and can
//! write a large frame in fragments (`send_text`).
//!
//! Why fragments: tungstenite formats each frame into a write buffer that keeps the capacity of
//! the largest frame it ever held, for the socket's whole life. A join's `ack` carries up to 100
//! players' presence (about 4 KiB for a room of 50), so every idle joined socket kept that much;
//! written in fragments of at most [`FRAGMENT`] bytes, the buffer keeps at most one fragment.
//! RFC 6455 §5.4 lets a server fragment any message, and every client library reassembles them
//! (control frames, which tungstenite may send between fragments, are allowed there too).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use futures_util::SinkExt;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::{Role, WebSocketConfig};

/// An open chat WebSocket.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Largest fragment of a text message written to a client. Most frames (acks, a short message's
/// event, presence) are far smaller and go out whole.
pub const FRAGMENT: usize = 1024;

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

/// The socket over a connection hyper has handed over after the 101.
pub async fn open(upgraded: hyper::upgrade::Upgraded, config: WebSocketConfig) -> Socket {
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await
}

/// Sends `text` as one text message: whole when it fits in a [`FRAGMENT`], in fragments of at most
/// that size (split between characters) otherwise, each written out before the next is formatted.
pub async fn send_text(socket: &mut Socket, text: &str) -> Result<(), tungstenite::Error> {
    if text.len() <= FRAGMENT {
        return socket.send(Message::Text(text.into())).await;
    }
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + FRAGMENT).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let opcode = if start == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        socket.send(Message::Frame(Frame::message(text.as_bytes()[start..end].to_vec(), opcode, end == text.len()))).await?;
        start = end;
    }
    Ok(())
}
