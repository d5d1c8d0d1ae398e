//! The WebSocket opening handshake (RFC 6455 §4.2) and the socket it leaves, made here rather than
//! by axum's `WebSocketUpgrade` so that the chat holds tokio-tungstenite's stream itself and can
//! write its text frames straight from their text (`send_text`).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use std::io::IoSlice;

use futures_util::SinkExt;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

/// An open chat WebSocket.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

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

/// Sends `text` as one text message, written from `text` itself rather than through tungstenite's
/// write buffer: the frame's header and its payload in one vectored write.
///
/// Why not `socket.send`: tungstenite formats each frame into a write buffer that keeps the
/// capacity of the largest frame it ever held, for the socket's whole life; a join's `ack` carries
/// up to 100 players' presence (about 4 KiB for a room of 50). Written here, a data frame costs
/// the socket no memory once it is out, and needs no copy and no fragments. tungstenite still
/// writes what it writes itself (pongs, pings, the close): it is flushed first, so its frames and
/// these never interleave, and only this task writes to the socket.
pub async fn send_text(socket: &mut Socket, text: &str) -> Result<(), tungstenite::Error> {
    socket.flush().await?;
    let (header, used) = text_header(text.len());
    let (mut head, mut body) = (&header[..used], text.as_bytes());
    let io = socket.get_mut();
    while !head.is_empty() || !body.is_empty() {
        let written = io.write_vectored(&[IoSlice::new(head), IoSlice::new(body)]).await?;
        if written == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
        }
        let from_head = written.min(head.len());
        head = &head[from_head..];
        body = &body[written - from_head..];
    }
    Ok(())
}

/// The header of an unmasked, final text frame of `len` bytes (RFC 6455 §5.2: a server's frames
/// are not masked) and how many of its bytes are used.
fn text_header(len: usize) -> ([u8; 10], usize) {
    let mut header = [0; 10];
    // FIN and the text opcode.
    header[0] = 0x81;
    let used = if len < 126 {
        header[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    #[test]
    fn text_headers_are_the_ones_tungstenite_writes() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            let mut expected = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Text), true).format(&mut expected).expect("format");
            let (header, used) = text_header(len);
            let mut ours = header[..used].to_vec();
            ours.extend_from_slice(&payload);
            assert_eq!(ours, expected, "a frame of {len} bytes");
        }
    }
}
