//! The measured requests' HTTP/1.1 client: each worker owns one keep-alive connection, writes the
//! request the scenario describes into a buffer it reuses, and parses the answer in place.
//!
//! Why not the general client the setup uses: on a two-core machine the load tool shares the CPU
//! with the server it measures, and a pooled general client (shared pool, per-request timers,
//! header maps, body streams) cost about as much CPU per request as the server itself did. This
//! one does what `redis-benchmark` does beside Redis: send, read, count, and little else, so the
//! figures describe the server. It speaks exactly what the scenarios need: plain `http://`,
//! `GET`/`POST` with a JSON body, answers framed by `Content-Length`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most header lines an answer may carry.
const MAX_HEADERS: usize = 32;
/// Largest answer accepted (head and body).
const MAX_ANSWER: usize = 1 << 20;

/// Where the measured requests go: the server's address and the `Host` it is called by.
#[derive(Debug, Clone)]
pub struct Target {
    addr: SocketAddr,
    host: String,
}

impl Target {
    /// Resolves `base` (`http://host:port`, no path) once for the whole run.
    pub async fn resolve(base: &str) -> anyhow::Result<Self> {
        let Some(authority) = base.strip_prefix("http://") else {
            bail!("--base {base}: the measured requests go over plain http:// (run the tool next to the server, not through TLS)")
        };
        let authority = authority.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("--base {base}: give the server's root, e.g. http://127.0.0.1:8080")
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .with_context(|| format!("{with_port} resolves to no address"))?;
        Ok(Self { addr, host: authority.to_owned() })
    }
}

/// A request method the scenarios use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`, without a body.
    Get,
    /// `POST`, with a JSON body.
    Post,
}

/// One request, as a scenario describes it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path: &'a str,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<&'a [u8]>,
    /// The JSON body (`POST`).
    pub json: Option<Vec<u8>>,
}

impl Request<'_> {
    /// Writes the request's bytes for `host` into `out`.
    fn encode(&self, host: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(match self.method {
            Method::Get => b"GET ",
            Method::Post => b"POST ",
        });
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(host.as_bytes());
        if let Some(authorization) = self.authorization {
            out.extend_from_slice(b"\r\nauthorization: ");
            out.extend_from_slice(authorization);
        }
        if let Some(json) = &self.json {
            out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
            out.extend_from_slice(json.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(json);
        } else {
            out.extend_from_slice(b"\r\n\r\n");
        }
    }
}

/// What went wrong with an exchange that got no answer.
#[derive(Debug)]
pub enum Trouble {
    /// The connection could not be made.
    Connect(std::io::Error),
    /// The connection failed, or the answer was not HTTP this client reads.
    Transport(anyhow::Error),
}

impl std::fmt::Display for Trouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trouble::Connect(err) => write!(f, "connecting: {err}"),
            Trouble::Transport(err) => write!(f, "{err:#}"),
        }
    }
}

/// An answer: its status and body (borrowed from the connection's buffer).
#[derive(Debug)]
pub struct Answer<'a> {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: &'a [u8],
}

/// One worker's connection, opened on first use and again after a failure.
#[derive(Debug)]
pub struct Connection {
    target: Target,
    stream: Option<TcpStream>,
    out: Vec<u8>,
    input: Vec<u8>,
}

impl Connection {
    /// A connection to `target`, not yet open.
    pub fn new(target: Target) -> Self {
        Self { target, stream: None, out: Vec::with_capacity(2048), input: Vec::with_capacity(16 * 1024) }
    }

    /// Sends `request` and reads its whole answer, within `timeout` (after which the connection
    /// is dropped, as its answer may still come). A kept-alive connection that the server closed
    /// before answering is reopened and the request sent once more, as general clients do.
    pub async fn exchange(&mut self, request: &Request<'_>, timeout: Duration) -> Result<Option<Answer<'_>>, Trouble> {
        self.out.clear();
        request.encode(&self.target.host, &mut self.out);
        match tokio::time::timeout(timeout, self.exchange_encoded()).await {
            Ok(Ok(head)) => Ok(Some(Answer { status: head.status, body: &self.input[head.body_start..head.body_end] })),
            Ok(Err(trouble)) => {
                self.stream = None;
                Err(trouble)
            }
            Err(_elapsed) => {
                self.stream = None;
                Ok(None)
            }
        }
    }

    async fn exchange_encoded(&mut self) -> Result<Head, Trouble> {
        let reused = self.stream.is_some();
        match self.try_once().await {
            Err(Attempt::ClosedBeforeAnswer) if reused => {
                self.stream = None;
                self.try_once().await.map_err(Attempt::into_trouble)
            }
            other => other.map_err(Attempt::into_trouble),
        }
    }

    async fn try_once(&mut self) -> Result<Head, Attempt> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.target.addr).await.map_err(|err| Attempt::Failed(Trouble::Connect(err)))?;
            stream.set_nodelay(true).map_err(|err| Attempt::Failed(Trouble::Connect(err)))?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else { unreachable!("opened above") };
        if let Err(err) = stream.write_all(&self.out).await {
            return Err(Attempt::closed_or(err));
        }
        self.input.clear();
        let head = loop {
            if self.input.capacity() - self.input.len() < 4096 {
                self.input.reserve(16 * 1024);
            }
            match stream.read_buf(&mut self.input).await {
                Ok(0) if self.input.is_empty() => return Err(Attempt::ClosedBeforeAnswer),
                Ok(0) => return Err(Attempt::transport(anyhow::anyhow!("the server closed the connection mid-answer"))),
                Ok(_) => {}
                Err(err) if self.input.is_empty() => return Err(Attempt::closed_or(err)),
                Err(err) => return Err(Attempt::transport(err.into())),
            }
            if let Some(head) = parse_head(&self.input).map_err(Attempt::transport)? {
                break head;
            }
            if self.input.len() > MAX_ANSWER {
                return Err(Attempt::transport(anyhow::anyhow!("an answer's head is larger than {MAX_ANSWER} bytes")));
            }
        };
        if head.body_end > MAX_ANSWER {
            return Err(Attempt::transport(anyhow::anyhow!("an answer of {} bytes is larger than {MAX_ANSWER}", head.body_end)));
        }
        while self.input.len() < head.body_end {
            self.input.reserve(head.body_end - self.input.len());
            match stream.read_buf(&mut self.input).await {
                Ok(0) => return Err(Attempt::transport(anyhow::anyhow!("the server closed the connection mid-body"))),
                Ok(_) => {}
                Err(err) => return Err(Attempt::transport(err.into())),
            }
        }
        if self.input.len() > head.body_end {
            return Err(Attempt::transport(anyhow::anyhow!("the server sent more than one answer")));
        }
        if head.close {
            self.stream = None;
        }
        Ok(head)
    }
}

/// How one attempt ended, when it did not get an answer.
enum Attempt {
    /// The connection was closed (or reset) before any byte of an answer: a kept-alive connection
    /// the server had let go.
    ClosedBeforeAnswer,
    Failed(Trouble),
}

impl Attempt {
    fn transport(err: anyhow::Error) -> Self {
        Attempt::Failed(Trouble::Transport(err))
    }

    fn closed_or(err: std::io::Error) -> Self {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        if matches!(err.kind(), BrokenPipe | ConnectionReset | ConnectionAborted) {
            Attempt::ClosedBeforeAnswer
        } else {
            Attempt::transport(err.into())
        }
    }

    fn into_trouble(self) -> Trouble {
        match self {
            Attempt::ClosedBeforeAnswer => Trouble::Transport(anyhow::anyhow!("the server closed the connection before answering")),
            Attempt::Failed(trouble) => trouble,
        }
    }
}

/// Where an answer's parts are in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    body_start: usize,
    body_end: usize,
    /// The server will close the connection after this answer.
    close: bool,
}

/// The head of the answer at the start of `input`, or `None` while it is incomplete.
fn parse_head(input: &[u8]) -> anyhow::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let body_start = match response.parse(input).context("reading an answer's head")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.context("an answer without a status")?;
    let mut length = None;
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            length = Some(value.context("an answer with an unreadable Content-Length")?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a chunked answer (status {status}): this client reads answers framed by Content-Length only");
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = header.value.eq_ignore_ascii_case(b"close");
        }
    }
    // Answers that cannot have a body.
    let length = if status == 204 || status == 304 { 0 } else { length.context("an answer without Content-Length")? };
    Ok(Some(Head { status, body_start, body_end: body_start + length, close }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn requests_are_encoded_with_host_authorization_and_body() {
        let mut out = Vec::new();
        Request { method: Method::Get, path: "/v1/x?y=1", authorization: Some(b"Bearer t"), json: None }.encode("h:1", &mut out);
        assert_eq!(out, b"GET /v1/x?y=1 HTTP/1.1\r\nhost: h:1\r\nauthorization: Bearer t\r\n\r\n");
        out.clear();
        Request { method: Method::Post, path: "/p", authorization: None, json: Some(b"{\"a\":1}".to_vec()) }.encode("h", &mut out);
        assert_eq!(out, b"POST /p HTTP/1.1\r\nhost: h\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}");
    }

    #[test]
    fn heads_are_read_when_complete() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_head(&answer[..20]).expect("valid so far"), None);
        assert_eq!(parse_head(answer).expect("valid"), Some(Head { status: 200, body_start: 70, body_end: 72, close: false }));
        let closing = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(parse_head(closing).expect("valid").expect("complete").close);
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(format!("{:#}", parse_head(chunked).expect_err("chunked")).contains("chunked"));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no length");
        assert!(parse_head(b"NOT HTTP\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn bases_must_be_plain_http_roots() {
        assert!(Target::resolve("https://example.com").await.is_err());
        assert!(Target::resolve("http://127.0.0.1:1/v1").await.is_err());
        let target = Target::resolve("http://127.0.0.1:8080/").await.expect("loopback");
        assert_eq!((target.addr.port(), target.host.as_str()), (8080, "127.0.0.1:8080"));
    }

    /// A server that answers each request on a connection, closes the first connection after
    /// its first answer without saying so, and answers in two pieces.
    #[tokio::test]
    async fn answers_in_pieces_and_closed_keepalives_are_handled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback");
        let addr = listener.local_addr().expect("loopback");
        let server = tokio::spawn(async move {
            for connection in 0..2 {
                let (mut socket, _) = listener.accept().await.expect("loopback");
                let mut served = 0;
                loop {
                    let mut buf = [0u8; 1024];
                    let n = socket.read(&mut buf).await.expect("loopback");
                    if n == 0 {
                        break;
                    }
                    assert!(buf[..n].ends_with(b"\r\n\r\n"), "one whole GET per read here");
                    socket.write_all(b"HTTP/1.1 201 Created\r\ncontent-le").await.expect("loopback");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    socket.write_all(b"ngth: 5\r\n\r\nhello").await.expect("loopback");
                    served += 1;
                    if connection == 0 && served == 1 {
                        break;
                    }
                }
            }
        });
        let mut connection = Connection::new(Target::resolve(&format!("http://{addr}")).await.expect("loopback"));
        let request = Request { method: Method::Get, path: "/", authorization: None, json: None };
        for _ in 0..3 {
            let answer = connection.exchange(&request, Duration::from_secs(5)).await.expect("loopback").expect("answered in time");
            assert_eq!((answer.status, answer.body), (201, &b"hello"[..]));
        }
        drop(connection);
        server.await.expect("loopback");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback");
        let addr = listener.local_addr().expect("loopback");
        let _server = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.expect("loopback");
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let mut connection = Connection::new(Target::resolve(&format!("http://{addr}")).await.expect("loopback"));
        let request = Request { method: Method::Get, path: "/", authorization: None, json: None };
        assert!(connection.exchange(&request, Duration::from_millis(100)).await.expect("loopback").is_none());
    }
}
