//! An open chat WebSocket: RFC 6455's framing (§5) over the connection hyper hands over after the
//! upgrade (`crate::upgrade`), written here for what an idle socket costs.
//!
//! Why not tungstenite, which this replaced: its read buffer is allocated when the socket opens,
//! zero-filled and kept for the socket's whole life, and it grows to hold the largest frame the
//! socket ever read (the `auth` frame's token took every socket to 1 KiB), while a chat socket is
//! idle nearly all its life. Here an idle socket holds no buffer at all: a frame's header is read
//! into a 14-byte array inside the socket, and its payload into a vector of exactly its announced
//! length (checked against `MAX_MESSAGE` first), handed to the caller and freed with it. Reads never
//! go past the frame being read but for the few header bytes the array holds.
//!
//! What the server side of the protocol needs and no more: client frames must be masked (§5.1);
//! no extension is negotiated, so the reserved bits must be clear; control frames are final and at
//! most 125 bytes (§5.5) and may come between a fragmented message's frames (§5.4); a text
//! message must be UTF-8 (§8.1). A breach is an error whose close code (`ReadError::close`) the
//! caller sends: 1002, 1007, or 1009 for a frame or message over `MAX_MESSAGE`. Answering pings and
//! closes is the caller's, as a `Received::Ping` or `Received::Close`: reading never writes, so a
//! read can be dropped unfinished (in a `select!`) without leaving a half-written frame behind.

use std::future::poll_fn;
use std::io;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An open chat WebSocket over hyper's upgraded connection.
pub type ChatSocket = Socket<TokioIo<hyper::upgrade::Upgraded>>;

/// Largest message a client may send, and so largest frame. A larger frame is refused from its
/// header, before anything is allocated for it.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// How long one frame may take to go out. A client that stops reading fills the connection's
/// buffers, and its socket's task would wait in a write for ever, holding everything it holds:
/// the write fails instead, and the caller drops the socket.
pub const WRITE_WITHIN: Duration = Duration::from_secs(10);

/// Most bytes read and dropped after the server's close (`Socket::linger`).
const MAX_LINGER: usize = 64 * 1024;

/// The longest frame header: two bytes, a 64-bit extended length, the 4-byte mask.
const MAX_HEADER: usize = 14;
/// A control frame's payload limit (§5.5), and so a close reason's with its code.
const MAX_CONTROL: usize = 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A whole message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Text(String),
    /// The chat's frames are text: a binary message is only answered with an error, so its bytes
    /// are not kept.
    Binary,
    /// To be answered with a pong carrying the same payload (§5.5.2).
    Ping(Vec<u8>),
    Pong,
    /// The client's close, with its status code if it gave one: to be answered with a close (§5.5.1).
    Close(Option<u16>),
}

/// Why a socket cannot be read further.
#[derive(Debug)]
pub enum ReadError {
    /// The connection broke, or ended inside a frame: nothing would read a close.
    Io(io::Error),
    /// The client broke the protocol (1002).
    Protocol(&'static str),
    /// A text message that is not UTF-8 (1007).
    NotUtf8,
    /// A frame or message over `MAX_MESSAGE` (1009).
    TooBig,
}

impl ReadError {
    /// The close that answers this error, if any: none for a broken connection.
    pub fn close(&self) -> Option<(u16, &'static str)> {
        match self {
            ReadError::Io(_) => None,
            ReadError::Protocol(_) => Some((1002, "protocol_error")),
            ReadError::NotUtf8 => Some((1007, "invalid_utf8")),
            ReadError::TooBig => Some((1009, "message_too_big")),
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(err) => write!(f, "reading the socket failed: {err}"),
            ReadError::Protocol(why) => write!(f, "protocol error: {why}"),
            ReadError::NotUtf8 => f.write_str("a text message that is not UTF-8"),
            ReadError::TooBig => write!(f, "a frame or message over {MAX_MESSAGE} bytes"),
        }
    }
}

/// A frame whose header has been read and whose payload is being.
#[derive(Debug)]
struct Partial {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    payload: Vec<u8>,
    /// How much of `payload` has been read.
    filled: usize,
}

/// A WebSocket's server side over `io`.
#[derive(Debug)]
pub struct Socket<Io> {
    io: Io,
    /// Header bytes read and not yet parsed (a header read in parts, or the start of the next
    /// frame read with the end of the last one's header).
    head: [u8; MAX_HEADER],
    head_len: u8,
    /// The frame being read, once its header is in.
    frame: Option<Partial>,
    /// A fragmented message's opcode and its payload so far, until its final frame.
    message: Option<(u8, Vec<u8>)>,
}

impl<Io: AsyncRead + AsyncWrite + Unpin> Socket<Io> {
    /// A socket over a connection whose opening handshake is done.
    pub fn new(io: Io) -> Self {
        Socket { io, head: [0; MAX_HEADER], head_len: 0, frame: None, message: None }
    }

    /// The next message or control frame; `None` once the client ended the connection between
    /// frames. Cancel-safe: what was read is kept in the socket for the next call.
    pub fn receive(&mut self) -> impl Future<Output = Option<Result<Received, ReadError>>> + Send + '_
    where
        Io: Send,
    {
        poll_fn(|cx| self.poll_next(cx))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Received, ReadError>>> {
        loop {
            let Some(frame) = &mut self.frame else {
                match self.parse_header() {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(err) => return Poll::Ready(Some(Err(err))),
                }
                // Not a whole header yet: read up to a longest header's worth.
                let start = usize::from(self.head_len);
                let mut buf = ReadBuf::new(&mut self.head[start..]);
                if let Err(err) = ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                    return Poll::Ready(Some(Err(ReadError::Io(err))));
                }
                let read = buf.filled().len();
                if read == 0 {
                    return Poll::Ready(match (self.head_len, &self.message) {
                        (0, None) => None,
                        _ => Some(Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()))),
                    });
                }
                self.head_len += read as u8;
                continue;
            };
            if frame.filled < frame.payload.len() {
                let mut buf = ReadBuf::new(&mut frame.payload[frame.filled..]);
                if let Err(err) = ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                    return Poll::Ready(Some(Err(ReadError::Io(err))));
                }
                let read = buf.filled().len();
                if read == 0 {
                    return Poll::Ready(Some(Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()))));
                }
                frame.filled += read;
                continue;
            }
            let frame = self.frame.take().expect("a frame is being read");
            if let Some(received) = self.complete(frame).transpose() {
                return Poll::Ready(Some(received));
            }
        }
    }

    /// Parses the header in `head` if it is all there: true once `frame` holds it (with as much of
    /// its payload as `head` held), false if more bytes are needed.
    fn parse_header(&mut self) -> Result<bool, ReadError> {
        let head = &self.head[..usize::from(self.head_len)];
        let [first, second, ..] = *head else { return Ok(false) };
        let (fin, opcode) = (first & 0x80 != 0, first & 0x0F);
        if first & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set without an extension"));
        }
        if second & 0x80 == 0 {
            return Err(ReadError::Protocol("a client's frame must be masked"));
        }
        let control = opcode & 0x8 != 0;
        match opcode {
            OP_CONTINUATION if self.message.is_none() => return Err(ReadError::Protocol("a continuation with no message to continue")),
            OP_TEXT | OP_BINARY if self.message.is_some() => return Err(ReadError::Protocol("a new message inside a fragmented one")),
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(ReadError::Protocol("an unknown opcode")),
        }
        let (extended, short) = match second & 0x7F {
            126 => (2, None),
            127 => (8, None),
            short => (0, Some(u64::from(short))),
        };
        let header_len = 2 + extended + 4;
        if head.len() < header_len {
            return Ok(false);
        }
        let len = short.unwrap_or_else(|| head[2..2 + extended].iter().fold(0, |len, &byte| len << 8 | u64::from(byte)));
        if control && (!fin || len > MAX_CONTROL as u64) {
            return Err(ReadError::Protocol("a control frame must be final and at most 125 bytes"));
        }
        let so_far = self.message.as_ref().map_or(0, |(_, payload)| payload.len() as u64);
        if so_far.saturating_add(len) > MAX_MESSAGE as u64 {
            return Err(ReadError::TooBig);
        }
        let mask = [head[header_len - 4], head[header_len - 3], head[header_len - 2], head[header_len - 1]];
        let len = len as usize;
        let mut payload = vec![0; len];
        // Bytes read past the header belong to this payload, and what is left to the next frame.
        let surplus = &head[header_len..];
        let filled = surplus.len().min(len);
        payload[..filled].copy_from_slice(&surplus[..filled]);
        let consumed = header_len + filled;
        self.head.copy_within(consumed..usize::from(self.head_len), 0);
        self.head_len -= consumed as u8;
        self.frame = Some(Partial { opcode, fin, mask, payload, filled });
        Ok(true)
    }

    /// What a frame read whole amounts to: a message or control frame, or nothing yet (a
    /// fragment of a message still coming).
    fn complete(&mut self, frame: Partial) -> Result<Option<Received>, ReadError> {
        let Partial { opcode, fin, mask, mut payload, .. } = frame;
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        let (opcode, payload) = match opcode {
            OP_PING => return Ok(Some(Received::Ping(payload))),
            OP_PONG => return Ok(Some(Received::Pong)),
            OP_CLOSE => return close_code(&payload).map(|code| Some(Received::Close(code))),
            OP_CONTINUATION => {
                let (opcode, mut so_far) = self.message.take().expect("checked with the header");
                so_far.extend_from_slice(&payload);
                (opcode, so_far)
            }
            _ => (opcode, payload),
        };
        if !fin {
            self.message = Some((opcode, payload));
            return Ok(None);
        }
        Ok(Some(match opcode {
            OP_TEXT => Received::Text(String::from_utf8(payload).map_err(|_| ReadError::NotUtf8)?),
            _ => Received::Binary,
        }))
    }

    /// Sends `text` as one text message, written from `text` itself: the frame's header and its
    /// payload in one vectored write, with no copy and no buffer kept (a join's `ack` carries up
    /// to 100 players' presence, about 4 KiB for a room of 50).
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        let (header, used) = frame_header(OP_TEXT, text.len());
        self.write_frame(&header[..used], text.as_bytes()).await
    }

    /// Sends a ping with no payload.
    pub async fn ping(&mut self) -> io::Result<()> {
        let (header, used) = frame_header(OP_PING, 0);
        self.write_frame(&header[..used], &[]).await
    }

    /// Answers a ping with its payload (at most 125 bytes, as the ping's was).
    pub async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        let payload = &payload[..payload.len().min(MAX_CONTROL)];
        let (header, used) = frame_header(OP_PONG, payload.len());
        self.write_frame(&header[..used], payload).await
    }

    /// Sends a close frame with `code` and `reason` (cut to fit a control frame). The caller then
    /// drops the socket: a chat socket that closes has nothing left to read.
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut cut = reason.len().min(MAX_CONTROL - 2);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        // The code goes with the header, the reason from where it lies.
        let (mut header, used) = frame_header(OP_CLOSE, 2 + cut);
        header[used..used + 2].copy_from_slice(&code.to_be_bytes());
        self.write_frame(&header[..used + 2], &reason.as_bytes()[..cut]).await
    }

    /// Ends the connection after a close frame went out (`close`): shuts the write side (a FIN
    /// follows the close), then reads and drops what the client still sends until it ends the
    /// connection too, for at most `within` and `MAX_LINGER` bytes. A connection dropped with
    /// bytes unread is answered with a reset, on which the client's stack throws away what it
    /// had received and not yet read: the close frame, most likely, from a client that was
    /// sending too much.
    pub async fn linger(&mut self, within: Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.io.shutdown().await.is_err() {
            return;
        }
        let drain = async {
            let mut sink = [0u8; 512];
            let mut left = MAX_LINGER;
            while left > 0 {
                match self.io.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => left = left.saturating_sub(read),
                }
            }
        };
        let _ = Box::pin(tokio::time::timeout(within, drain)).await;
    }

    /// Writes one frame, `head` then `body`, and flushes it.
    ///
    /// Nearly always the connection takes a frame at once, and no timer is made for it. Only a
    /// client slow to read gets the rest written under `WRITE_WITHIN`'s timeout, boxed: each
    /// socket's task is as large as its largest step (a write's included) for its whole life,
    /// and a timer inside it made every socket's task larger.
    async fn write_frame(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        self.write_frame_within(head, body, WRITE_WITHIN).await
    }

    async fn write_frame_within(&mut self, head: &[u8], body: &[u8], within: Duration) -> io::Result<()> {
        let mut sent = 0;
        let at_once = poll_fn(|cx| {
            Poll::Ready(match self.poll_write_frame(cx, head, body, &mut sent) {
                Poll::Ready(result) => result.map(|()| true),
                Poll::Pending => Ok(false),
            })
        })
        .await?;
        if !at_once {
            let rest = poll_fn(|cx| self.poll_write_frame(cx, head, body, &mut sent));
            Box::pin(tokio::time::timeout(within, rest)).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
        }
        Ok(())
    }

    /// Writes what is left of a frame after its first `sent` bytes, then flushes.
    fn poll_write_frame(&mut self, cx: &mut Context<'_>, head: &[u8], body: &[u8], sent: &mut usize) -> Poll<io::Result<()>> {
        while *sent < head.len() + body.len() {
            let (head_left, body_left) = match head.get(*sent..) {
                Some(head_left) => (head_left, body),
                None => (&[][..], &body[*sent - head.len()..]),
            };
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &[IoSlice::new(head_left), IoSlice::new(body_left)]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += written;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// A close frame's status code, if it carries one (§5.5.1): a payload of one byte, a code no
/// endpoint may send (§7.4), or a reason that is not UTF-8 is a protocol error.
fn close_code(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    let [high, low, reason @ ..] = payload else {
        return if payload.is_empty() { Ok(None) } else { Err(ReadError::Protocol("a close frame of one byte")) };
    };
    let code = u16::from_be_bytes([*high, *low]);
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(ReadError::Protocol("a close code no endpoint may send"));
    }
    std::str::from_utf8(reason).map_err(|_| ReadError::NotUtf8)?;
    Ok(Some(code))
}

/// The header of an unmasked, final frame of `opcode` and `len` bytes (§5.2: a server's frames
/// are not masked) and how many of its bytes are used; two bytes to spare after a control frame's
/// (a close's code).
fn frame_header(opcode: u8, len: usize) -> ([u8; 12], usize) {
    let mut header = [0; 12];
    header[0] = 0x80 | opcode;
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
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

    /// Our server and tungstenite's client over one in-memory connection of `capacity` bytes
    /// each way (1 makes every read and write a single byte).
    async fn pair(capacity: usize) -> (Socket<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = duplex(capacity);
        let config = WebSocketConfig::default().max_frame_size(None).max_message_size(None);
        (Socket::new(server), WebSocketStream::from_raw_socket(client, Role::Client, Some(config)).await)
    }

    /// A client frame as bytes: `first` is FIN, the reserved bits and the opcode.
    fn masked(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut bytes = vec![first];
        match payload.len() {
            len @ 0..126 => bytes.push(0x80 | len as u8),
            len @ 126..=65_535 => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&mask);
        bytes.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        bytes
    }

    /// The next frame, within a second (a frame the socket misread would leave it waiting).
    async fn read(socket: &mut Socket<DuplexStream>) -> Result<Received, ReadError> {
        let next = tokio::time::timeout(std::time::Duration::from_secs(1), socket.receive()).await;
        next.expect("a frame within a second").expect("a frame, not the connection's end")
    }

    #[tokio::test]
    async fn reads_what_a_client_library_sends() {
        let (mut server, mut client) = pair(64 * 1024).await;
        let longest = "é".repeat(MAX_MESSAGE / 2);
        for text in ["", "hello", &"x".repeat(125), &"y".repeat(126), &"z".repeat(9_000), &longest] {
            client.send(Message::text(text)).await.expect("sent");
            assert_eq!(read(&mut server).await.expect("read"), Received::Text(text.to_owned()), "{} bytes", text.len());
        }
        client.send(Message::binary(vec![1, 2, 3])).await.expect("sent");
        assert_eq!(read(&mut server).await.expect("read"), Received::Binary);
        client.send(Message::Ping(vec![7, 8].into())).await.expect("sent");
        assert_eq!(read(&mut server).await.expect("read"), Received::Ping(vec![7, 8]));
        client.send(Message::Pong(Vec::new().into())).await.expect("sent");
        assert_eq!(read(&mut server).await.expect("read"), Received::Pong);
        client.send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "bye".into() }))).await.expect("sent");
        assert_eq!(read(&mut server).await.expect("read"), Received::Close(Some(1001)));
    }

    #[tokio::test]
    async fn a_fragmented_message_is_joined_around_a_ping() {
        let (mut server, mut client) = pair(64 * 1024).await;
        // "hé" split inside the two-byte "é": UTF-8 is checked on the whole message.
        let text = "hé!".as_bytes();
        client.feed(Message::Frame(Frame::message(text[..2].to_vec(), OpCode::Data(Data::Text), false))).await.expect("sent");
        client.feed(Message::Ping(vec![1].into())).await.expect("sent");
        client.feed(Message::Frame(Frame::message(text[2..3].to_vec(), OpCode::Data(Data::Continue), false))).await.expect("sent");
        client.send(Message::Frame(Frame::message(text[3..].to_vec(), OpCode::Data(Data::Continue), true))).await.expect("sent");
        assert_eq!(read(&mut server).await.expect("read"), Received::Ping(vec![1]));
        assert_eq!(read(&mut server).await.expect("read"), Received::Text("hé!".to_owned()));
    }

    #[tokio::test]
    async fn frames_read_a_byte_at_a_time_or_many_at_once_come_out_whole() {
        let frames = [
            masked(0x81, b"one", [1, 2, 3, 4]),
            masked(0x89, b"", [5, 6, 7, 8]),
            masked(0x81, &[b'a'; 300], [9, 9, 9, 9]),
            masked(0x81, b"", [0, 0, 0, 0]),
            masked(0x01, b"fr", [1, 1, 1, 1]),
            masked(0x80, b"ag", [2, 2, 2, 2]),
        ];
        let expected = [
            Received::Text("one".into()),
            Received::Ping(Vec::new()),
            Received::Text("a".repeat(300)),
            Received::Text(String::new()),
            Received::Text("frag".into()),
        ];
        // Capacity 1: every read returns one byte. Large: one read holds several frames, whose
        // next header starts in the bytes read with the last one's.
        for capacity in [1, 4096] {
            let (server, mut client) = duplex(capacity);
            let mut server = Socket::new(server);
            let all = frames.concat();
            let writer = tokio::spawn(async move {
                client.write_all(&all).await.expect("written");
                client
            });
            for want in &expected {
                assert_eq!(&read(&mut server).await.expect("read"), want, "capacity {capacity}");
            }
            drop(writer.await.expect("writer"));
            assert!(server.receive().await.is_none(), "the end between frames is the connection's end");
        }
    }

    #[tokio::test]
    async fn a_read_dropped_midway_loses_nothing() {
        let (server, mut client) = duplex(1024);
        let mut server = Socket::new(server);
        let frame = masked(0x81, b"patience", [3, 1, 4, 1]);
        // Half a header, then half the payload: each read is cut off by a timeout, as a `select!`
        // drops it when another branch is ready first.
        for part in [&frame[..3], &frame[3..10], &frame[10..]] {
            let waited = tokio::time::timeout(std::time::Duration::from_millis(20), server.receive()).await;
            assert!(waited.is_err(), "nothing whole to read yet");
            client.write_all(part).await.expect("written");
        }
        assert_eq!(read(&mut server).await.expect("read"), Received::Text("patience".into()));
    }

    async fn refused(bytes: &[u8]) -> ReadError {
        let (server, mut client) = duplex(64 * 1024);
        let mut server = Socket::new(server);
        client.write_all(bytes).await.expect("written");
        read(&mut server).await.expect_err("refused")
    }

    #[tokio::test]
    async fn breaches_of_the_protocol_are_refused_with_their_close_codes() {
        let code = |err: ReadError| err.close().map(|(code, _)| code);
        // Unmasked, as a server's frame.
        assert_eq!(code(refused(&[0x81, 0x02, b'h', b'i']).await), Some(1002));
        // A reserved bit (no extension was negotiated), an unknown opcode.
        assert_eq!(code(refused(&masked(0xC1, b"x", [1; 4])).await), Some(1002));
        assert_eq!(code(refused(&masked(0x83, b"x", [1; 4])).await), Some(1002));
        // A continuation of nothing; a new message inside a fragmented one.
        assert_eq!(code(refused(&masked(0x80, b"x", [1; 4])).await), Some(1002));
        assert_eq!(code(refused(&[masked(0x01, b"a", [1; 4]), masked(0x81, b"b", [1; 4])].concat()).await), Some(1002));
        // Control frames: fragmented, too long, a close of one byte or with a code no one sends.
        assert_eq!(code(refused(&masked(0x09, b"", [1; 4])).await), Some(1002));
        assert_eq!(code(refused(&masked(0x89, &[0; 126], [1; 4])).await), Some(1002));
        assert_eq!(code(refused(&masked(0x88, &[3], [1; 4])).await), Some(1002));
        assert_eq!(code(refused(&masked(0x88, &1005u16.to_be_bytes(), [1; 4])).await), Some(1002));
        // Text that is not UTF-8, whole or across fragments.
        assert_eq!(code(refused(&masked(0x81, &[0xFF], [1; 4])).await), Some(1007));
        assert_eq!(code(refused(&[masked(0x01, &[0xC3], [1; 4]), masked(0x80, b"x", [1; 4])].concat()).await), Some(1007));
        // One byte over the limit, in one frame or across fragments.
        assert_eq!(code(refused(&masked(0x81, &[b'a'; MAX_MESSAGE + 1], [1; 4])).await), Some(1009));
        let half = [b'a'; MAX_MESSAGE / 2];
        assert_eq!(
            code(refused(&[masked(0x01, &half, [1; 4]), masked(0x80, &[half.as_slice(), b"!"].concat(), [1; 4])].concat()).await),
            Some(1009)
        );
    }

    #[tokio::test]
    async fn a_header_announcing_a_huge_frame_is_refused_before_its_payload() {
        // Only the header is sent: the refusal comes from it, with nothing allocated for 2^62 bytes.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        assert!(matches!(refused(&header).await, ReadError::TooBig));
    }

    #[tokio::test]
    async fn the_connection_ending_inside_a_frame_or_a_message_is_an_error() {
        let whole = masked(0x81, b"cut short", [1; 4]);
        // Inside a header, inside a payload, between a fragmented message's frames.
        for sent in [&whole[..1], &whole[..8], &masked(0x01, b"cut", [1; 4])] {
            let (server, mut client) = duplex(1024);
            let mut server = Socket::new(server);
            client.write_all(sent).await.expect("written");
            drop(client);
            assert!(matches!(read(&mut server).await, Err(ReadError::Io(_))), "after {sent:?}");
        }
    }

    #[tokio::test]
    async fn what_the_server_writes_a_client_library_reads() {
        let (mut server, mut client) = pair(256 * 1024).await;
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "t".repeat(len);
            server.send_text(&text).await.expect("sent");
            let got = client.next().await.expect("a message").expect("read");
            assert_eq!(got, Message::text(text), "{len} bytes");
        }
        server.ping().await.expect("sent");
        assert!(matches!(client.next().await, Some(Ok(Message::Ping(payload))) if payload.is_empty()));
        server.pong(b"echo").await.expect("sent");
        assert!(matches!(client.next().await, Some(Ok(Message::Pong(payload))) if payload == b"echo".as_slice()));
        // A reason longer than a control frame holds is cut, at a character's boundary.
        let long = "é".repeat(100);
        server.close(4001, &long).await.expect("sent");
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 4001);
                assert_eq!(frame.reason.as_str(), "é".repeat(61));
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[test]
    fn frame_headers_are_the_ones_tungstenite_writes() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let mut expected = Vec::new();
            FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() }.format(len as u64, &mut expected).expect("format");
            let (header, used) = frame_header(OP_TEXT, len);
            assert_eq!(&header[..used], expected, "a frame of {len} bytes");
        }
    }

    /// With a shorter limit than `WRITE_WITHIN`, for the test's sake.
    #[tokio::test]
    async fn a_write_to_a_client_that_stopped_reading_fails_in_time() {
        // Bounded, so that a write that never gives up fails the test rather than hanging it.
        let test = async {
            let (mut server, client) = pair(1024).await;
            let within = Duration::from_millis(200);
            let (header, used) = frame_header(OP_TEXT, 4096);
            let started = tokio::time::Instant::now();
            let stuck = server.write_frame_within(&header[..used], &[b'x'; 4096], within).await.expect_err("the client reads nothing");
            assert_eq!(stuck.kind(), io::ErrorKind::TimedOut);
            assert!(started.elapsed() >= within);
            let (ping, ping_used) = frame_header(OP_PING, 0);
            let stuck = server.write_frame_within(&ping[..ping_used], &[], within).await.expect_err("the buffer is still full");
            assert_eq!(stuck.kind(), io::ErrorKind::TimedOut);
            // A frame the connection takes at once needs no time at all.
            drop(client);
            let (mut server, _client) = pair(1024).await;
            server.write_frame_within(&ping[..ping_used], &[], Duration::ZERO).await.expect("written at once");
        };
        tokio::time::timeout(Duration::from_secs(5), test).await.expect("the writes end in time");
    }

    #[tokio::test]
    async fn a_server_frame_is_never_masked() {
        let (server, mut client) = duplex(1024);
        let mut server = Socket::new(server);
        server.send_text("hi").await.expect("sent");
        let mut bytes = [0; 4];
        client.read_exact(&mut bytes).await.expect("read");
        assert_eq!(bytes, [0x81, 0x02, b'h', b'i']);
    }
}
