//! A small SMTP client (RFC 5321) over tokio, for the one thing Guildhall mails: a message to one
//! recipient through a relay (SES's SMTP interface on AWS). It speaks EHLO, STARTTLS (RFC 3207)
//! or implicit TLS (RFC 8314), AUTH PLAIN or LOGIN (RFC 4954), MAIL FROM, RCPT TO, DATA with
//! dot-stuffing, and QUIT, with a timeout on every step. Credentials are never sent over a
//! connection that is not encrypted: `smtp://` requires the relay to offer STARTTLS.
//!
//! Written here rather than taken from lettre: lettre without its default features still brings
//! `nom`, `email_address`, a second `base64` and `url`, for a protocol whose part we use is a
//! dozen commands.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::{Credentials, SmtpRelay, SmtpTls};

/// The longest reply line accepted, and the most lines in one reply: a relay that sends more is
/// not one (RFC 5321 §4.5.3.1.5 allows 512 octets a line).
const MAX_LINE: usize = 4096;
const MAX_LINES: usize = 100;

/// Why a mail was not sent.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SmtpError {
    /// Whether trying again later may succeed: a 4xx reply, a connection or TLS failure, a
    /// timeout. A 5xx reply (the relay refuses this mail or these credentials) is permanent.
    pub transient: bool,
    /// What happened, for the logs (no credentials, no message content).
    pub message: String,
}

impl SmtpError {
    fn transient(message: impl Into<String>) -> Self {
        SmtpError { transient: true, message: message.into() }
    }

    fn permanent(message: impl Into<String>) -> Self {
        SmtpError { transient: false, message: message.into() }
    }
}

/// An SMTP reply: its code and the text of its lines.
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        self.lines.join(" / ")
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection to the relay.
struct Session {
    io: Box<dyn Io>,
    /// Bytes read and not yet consumed as reply lines.
    buffer: Vec<u8>,
    timeout: Duration,
}

impl Session {
    async fn read_line(&mut self) -> Result<String, SmtpError> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..end + 2).take(end).collect();
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buffer.len() > MAX_LINE {
                return Err(SmtpError::transient("the relay sent a reply line that is too long"));
            }
            let mut chunk = [0u8; 1024];
            let n = self.io.read(&mut chunk).await.map_err(|e| SmtpError::transient(format!("reading from the relay: {e}")))?;
            if n == 0 {
                return Err(SmtpError::transient("the relay closed the connection"));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one reply, its continuation lines (`250-…`) included.
    async fn read_reply(&mut self) -> Result<Reply, SmtpError> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok()).filter(|c| (200..600).contains(c));
            let Some(code) = code else {
                return Err(SmtpError::transient(format!("the relay sent something that is not an SMTP reply: {:.80}", line)));
            };
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or_default().to_owned());
            if !more {
                return Ok(Reply { code, lines });
            }
            if lines.len() >= MAX_LINES {
                return Err(SmtpError::transient("the relay sent a reply of too many lines"));
            }
        }
    }

    async fn reply(&mut self, what: &str) -> Result<Reply, SmtpError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read_reply())
            .await
            .unwrap_or_else(|_| Err(SmtpError::transient(format!("the relay did not answer {what} within {timeout:?}"))))
    }

    async fn write(&mut self, bytes: &[u8], what: &str) -> Result<(), SmtpError> {
        let io = &mut self.io;
        let written = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        tokio::time::timeout(self.timeout, written)
            .await
            .map_err(|_| SmtpError::transient(format!("sending {what} to the relay timed out")))?
            .map_err(|e| SmtpError::transient(format!("sending {what} to the relay: {e}")))
    }

    /// Sends `line` (without CRLF) and expects a reply whose code is in `expected`. `what` names
    /// the command in errors (never the line itself, which may hold credentials).
    async fn command(&mut self, line: &str, what: &str, expected: &[u16]) -> Result<Reply, SmtpError> {
        self.write(format!("{line}\r\n").as_bytes(), what).await?;
        let reply = self.reply(what).await?;
        expect(reply, what, expected)
    }
}

fn expect(reply: Reply, what: &str, expected: &[u16]) -> Result<Reply, SmtpError> {
    if expected.contains(&reply.code) {
        return Ok(reply);
    }
    let message = format!("the relay answered {what} with {} {}", reply.code, reply.text());
    Err(if reply.code >= 500 { SmtpError::permanent(message) } else { SmtpError::transient(message) })
}

/// What the relay said it supports in its EHLO reply.
#[derive(Debug, Default)]
struct Extensions {
    starttls: bool,
    auth_plain: bool,
    auth_login: bool,
    smtputf8: bool,
}

impl Extensions {
    fn of(reply: &Reply) -> Self {
        let mut found = Extensions::default();
        // The first line is the relay's greeting; each further one names an extension.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace().map(str::to_ascii_uppercase);
            match words.next().as_deref() {
                Some("STARTTLS") => found.starttls = true,
                Some("SMTPUTF8") => found.smtputf8 = true,
                Some("AUTH") => {
                    for mechanism in words {
                        found.auth_plain |= mechanism == "PLAIN";
                        found.auth_login |= mechanism == "LOGIN";
                    }
                }
                _ => {}
            }
        }
        found
    }
}

/// One mail to hand to the relay.
pub struct Envelope<'a> {
    /// The envelope sender (`MAIL FROM`).
    pub from: &'a str,
    /// The one recipient (`RCPT TO`).
    pub to: &'a str,
    /// The whole message (headers and body), lines ending in CRLF.
    pub data: &'a [u8],
}

/// A relay and how to reach it: its address, TLS, credentials, and the roots its certificate
/// must chain to.
pub struct Client {
    relay: SmtpRelay,
    tls: TlsConnector,
    helo_name: String,
    timeout: Duration,
}

impl Client {
    /// A client of `relay`, trusting `roots`, naming itself `helo_name` in EHLO, giving every
    /// step (connecting, each command and its reply, the handshake) `timeout`.
    pub fn new(relay: SmtpRelay, roots: tokio_rustls::rustls::RootCertStore, helo_name: String, timeout: Duration) -> Self {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client { relay, tls: TlsConnector::from(Arc::new(config)), helo_name, timeout }
    }

    /// Sends `envelope` in one connection: connect, (TLS), EHLO, (STARTTLS, EHLO), (AUTH), MAIL,
    /// RCPT, DATA, QUIT.
    pub async fn send(&self, envelope: &Envelope<'_>) -> Result<(), SmtpError> {
        for address in [envelope.from, envelope.to] {
            if address.is_empty() || address.bytes().any(|b| b.is_ascii_control() || b == b'<' || b == b'>' || b == b' ') {
                return Err(SmtpError::permanent("an address holds characters SMTP cannot carry"));
            }
        }
        let relay = &self.relay;
        let address = (relay.host.as_str(), relay.port);
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(address))
            .await
            .map_err(|_| SmtpError::transient(format!("connecting to the relay {}:{} timed out", relay.host, relay.port)))?
            .map_err(|e| SmtpError::transient(format!("connecting to the relay {}:{}: {e}", relay.host, relay.port)))?;
        let mut session = Session { io: Box::new(tcp), buffer: Vec::new(), timeout: self.timeout };
        if relay.tls == SmtpTls::Implicit {
            session = self.handshake(session).await?;
        }
        expect(session.reply("its greeting").await?, "its greeting", &[220])?;
        let ehlo = format!("EHLO {}", self.helo_name);
        let mut extensions = Extensions::of(&session.command(&ehlo, "EHLO", &[250]).await?);
        if relay.tls == SmtpTls::StartTls {
            if !extensions.starttls {
                // Refused rather than sent in the clear: a relay that does not offer it, or
                // someone on the path who took it out of the reply.
                return Err(SmtpError::transient("the relay does not offer STARTTLS, which smtp:// requires"));
            }
            session.command("STARTTLS", "STARTTLS", &[220]).await?;
            if !session.buffer.is_empty() {
                // Bytes sent before the handshake would be read as if they came over TLS (the
                // STARTTLS command injection of CVE-2011-0411).
                return Err(SmtpError::transient("the relay sent data before the TLS handshake"));
            }
            session = self.handshake(session).await?;
            extensions = Extensions::of(&session.command(&ehlo, "EHLO", &[250]).await?);
        }
        if let Some(credentials) = &relay.credentials {
            self.authenticate(&mut session, &extensions, credentials.expose()).await?;
        }
        let utf8 = !(envelope.from.is_ascii() && envelope.to.is_ascii());
        if utf8 && !extensions.smtputf8 {
            return Err(SmtpError::permanent("the address is not ASCII and the relay does not offer SMTPUTF8"));
        }
        let mail_from = format!("MAIL FROM:<{}>{}", envelope.from, if utf8 { " SMTPUTF8" } else { "" });
        session.command(&mail_from, "MAIL FROM", &[250]).await?;
        session.command(&format!("RCPT TO:<{}>", envelope.to), "RCPT TO", &[250, 251]).await?;
        session.command("DATA", "DATA", &[354]).await?;
        let mut data = dot_stuffed(envelope.data);
        data.extend_from_slice(b".\r\n");
        session.write(&data, "the message").await?;
        let accepted = session.reply("the message").await?;
        expect(accepted, "the message", &[250])?;
        // The mail is the relay's now; a QUIT that fails changes nothing.
        let _ = session.command("QUIT", "QUIT", &[221]).await;
        Ok(())
    }

    async fn handshake(&self, session: Session) -> Result<Session, SmtpError> {
        let name = ServerName::try_from(self.relay.host.clone())
            .map_err(|_| SmtpError::permanent(format!("{:?} is not a host name TLS can check", self.relay.host)))?;
        let timeout = session.timeout;
        let tls = tokio::time::timeout(timeout, self.tls.connect(name, session.io))
            .await
            .map_err(|_| SmtpError::transient("the TLS handshake with the relay timed out"))?
            .map_err(|e| SmtpError::transient(format!("the TLS handshake with the relay failed: {e}")))?;
        Ok(Session { io: Box::new(tls), buffer: Vec::new(), timeout })
    }

    async fn authenticate(&self, session: &mut Session, extensions: &Extensions, credentials: &Credentials) -> Result<(), SmtpError> {
        if extensions.auth_plain {
            let token = STANDARD.encode(format!("\0{}\0{}", credentials.username, credentials.password));
            session.command(&format!("AUTH PLAIN {token}"), "AUTH PLAIN", &[235]).await?;
            return Ok(());
        }
        if extensions.auth_login {
            session.command("AUTH LOGIN", "AUTH LOGIN", &[334]).await?;
            session.command(&STANDARD.encode(&credentials.username), "the AUTH LOGIN user name", &[334]).await?;
            session.command(&STANDARD.encode(&credentials.password), "the AUTH LOGIN password", &[235]).await?;
            return Ok(());
        }
        Err(SmtpError::permanent("the relay offers neither AUTH PLAIN nor AUTH LOGIN"))
    }
}

/// `data` with CRLF line ends (a bare LF becomes CRLF), a dot doubled at the start of every line
/// (RFC 5321 §4.5.2), and a final CRLF.
fn dot_stuffed(data: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::with_capacity(data.len() + 64);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // `split` gives an empty last piece after a final line end: drop its CRLF.
    if text.ends_with('\n') {
        out.truncate(out.len() - 2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_starting_with_a_dot_are_stuffed_and_ends_are_crlf() {
        assert_eq!(dot_stuffed(b"a\n.b\r\n..c\n"), b"a\r\n..b\r\n...c\r\n");
        assert_eq!(dot_stuffed(b"no end"), b"no end\r\n");
        assert_eq!(dot_stuffed(b".\r\n"), b"..\r\n", "a lone dot would end the DATA");
    }

    #[test]
    fn extensions_are_read_from_the_ehlo_reply() {
        let reply = Reply {
            code: 250,
            lines: vec!["relay.example greets you".into(), "STARTTLS".into(), "AUTH LOGIN PLAIN".into(), "8BITMIME".into()],
        };
        let found = Extensions::of(&reply);
        assert!(found.starttls && found.auth_plain && found.auth_login && !found.smtputf8, "{found:?}");
    }
}
