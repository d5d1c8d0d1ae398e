//! An SMTP relay on loopback for the tests: it speaks enough of RFC 5321 for a client to hand it
//! a mail (EHLO, STARTTLS or implicit TLS with a certificate of a CA made at start, AUTH PLAIN
//! and LOGIN, MAIL, RCPT, DATA with dot-stuffing, QUIT), and keeps what it received.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// How the relay speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    /// Offers STARTTLS (`smtp://`).
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
    /// Offers no TLS at all: a client that requires it must not send.
    Never,
}

/// A mail the relay accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: String,
    /// The message, dot-stuffing undone, lines joined with CRLF.
    pub data: String,
    /// Whether it came over TLS.
    pub tls: bool,
    /// The user that authenticated, if one did.
    pub user: Option<String>,
}

impl Received {
    /// The reset token in the mail's link (`…token=ghpr_…`).
    pub fn token(&self) -> String {
        let at = self.data.find("token=").unwrap_or_else(|| panic!("no link with a token in the mail: {}", self.data));
        self.data[at + "token=".len()..].split(|c: char| c.is_whitespace()).next().expect("a token").to_owned()
    }
}

/// A running relay.
pub struct Relay {
    /// `smtp://user:pass@localhost:PORT` (or `smtps://`), for `SMTP_URL`.
    pub url: String,
    /// The PEM file of the CA that signed the relay's certificate, for `SMTP_CA_FILE`.
    pub ca_file: PathBuf,
    mails: Mutex<mpsc::UnboundedReceiver<Received>>,
    /// While above zero, each MAIL FROM is answered 451 (and this counts down).
    pub temporary_failures: Arc<AtomicU32>,
    /// RCPT TO is answered 550 (no such mailbox) when set.
    pub refuse_recipients: Arc<std::sync::atomic::AtomicBool>,
    /// Offers AUTH LOGIN alone (not PLAIN) when set.
    pub login_only: Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
    /// The relay's own temporary folder (`ca_file`'s), removed when the relay is dropped.
    dir: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const USER: &str = "relay-user";
const PASSWORD: &str = "relay/pass+word";

impl Relay {
    /// Starts a relay on a free loopback port, writing its CA's certificate into a temporary
    /// folder of its own.
    pub async fn start(tls: RelayTls) -> Relay {
        let dir = std::env::temp_dir().join(format!("guildhall-smtp-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("relay folder");
        let (acceptor, ca_pem) = test_ca();
        let ca_file = dir.join("smtp-ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("CA file written");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let port = listener.local_addr().expect("relay address").port();
        let scheme = if tls == RelayTls::Implicit { "smtps" } else { "smtp" };
        // The password escaped as a URL needs it: SES's hold `/` and `+`.
        let url = format!("{scheme}://{USER}:relay%2Fpass%2Bword@localhost:{port}");
        let (sender, mails) = mpsc::unbounded_channel();
        let temporary_failures = Arc::new(AtomicU32::new(0));
        let refuse_recipients = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let login_only = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shared = (temporary_failures.clone(), refuse_recipients.clone(), login_only.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conversation = Conversation {
                    acceptor: acceptor.clone(),
                    offer: tls,
                    sender: sender.clone(),
                    temporary_failures: shared.0.clone(),
                    refuse_recipients: shared.1.clone(),
                    login_only: shared.2.clone(),
                };
                tokio::spawn(async move {
                    let _ = conversation.run(stream).await;
                });
            }
        });
        Relay { url, ca_file, mails: Mutex::new(mails), temporary_failures, refuse_recipients, login_only, accept, dir }
    }

    /// The next mail received, waiting up to `within`.
    pub async fn mail_within(&self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.mails.lock().await.recv()).await.ok().flatten()
    }

    /// The next mail, which must come within 10 s.
    pub async fn mail(&self) -> Received {
        self.mail_within(Duration::from_secs(10)).await.expect("a mail reached the relay within 10 s")
    }

    /// The environment that sends mail through this relay.
    pub fn configure(&self, env: &mut platform::testing::TestEnv) {
        env.set("SMTP_URL", self.url.clone())
            .set("SMTP_CA_FILE", self.ca_file.display().to_string())
            .set("SMTP_TIMEOUT_SECS", "5")
            .set("MAIL_FROM", "Guildhall <no-reply@game.example>")
            .set("PASSWORD_RESET_URL", "https://game.example/reset?token={token}");
    }
}

/// A CA made now, and an acceptor whose certificate (for `localhost`) it signed; the CA's PEM.
fn test_ca() -> (TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Guildhall test relay CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("relay key");
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned()]).expect("params").signed_by(&leaf_key, &issuer).expect("relay certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("server config");
    let body = STANDARD.encode(ca_cert.der());
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"));
    (TlsAcceptor::from(Arc::new(config)), pem)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conversation {
    acceptor: TlsAcceptor,
    offer: RelayTls,
    sender: mpsc::UnboundedSender<Received>,
    temporary_failures: Arc<AtomicU32>,
    refuse_recipients: Arc<std::sync::atomic::AtomicBool>,
    login_only: Arc<std::sync::atomic::AtomicBool>,
}

struct Line {
    io: Box<dyn Io>,
    buffer: Vec<u8>,
}

impl Line {
    async fn read(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..end + 2).take(end).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(30), self.io.read(&mut chunk)).await.ok()?.ok()?;
            if n == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    async fn say(&mut self, text: &str) -> Option<()> {
        self.io.write_all(text.as_bytes()).await.ok()?;
        self.io.flush().await.ok()
    }
}

impl Conversation {
    async fn run(self, stream: tokio::net::TcpStream) -> Option<()> {
        let mut tls = self.offer == RelayTls::Implicit;
        let io: Box<dyn Io> = if tls { Box::new(self.acceptor.accept(stream).await.ok()?) } else { Box::new(stream) };
        let mut conn = Line { io, buffer: Vec::new() };
        conn.say("220 relay.test ESMTP ready\r\n").await?;
        let (mut user, mut from, mut to) = (None::<String>, None::<String>, None::<String>);
        loop {
            let line = conn.read().await?;
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                let mut reply = String::from("250-relay.test greets you\r\n");
                if self.offer == RelayTls::StartTls && !tls {
                    reply.push_str("250-STARTTLS\r\n");
                }
                if tls {
                    let login_only = self.login_only.load(Ordering::SeqCst);
                    reply.push_str(if login_only { "250-AUTH LOGIN\r\n" } else { "250-AUTH PLAIN LOGIN\r\n" });
                }
                reply.push_str("250 8BITMIME\r\n");
                conn.say(&reply).await?;
            } else if upper == "STARTTLS" && self.offer == RelayTls::StartTls && !tls {
                conn.say("220 go ahead\r\n").await?;
                let plain = conn.io;
                conn = Line { io: Box::new(self.acceptor.accept(plain).await.ok()?), buffer: Vec::new() };
                tls = true;
            } else if let Some(token) = (upper.starts_with("AUTH PLAIN ") && !self.login_only.load(Ordering::SeqCst))
                .then(|| line["AUTH PLAIN ".len()..].to_owned())
            {
                let decoded = STANDARD.decode(token.trim()).ok()?;
                let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
                if parts.len() == 3 && parts[1] == USER.as_bytes() && parts[2] == PASSWORD.as_bytes() {
                    user = Some(USER.to_owned());
                    conn.say("235 authenticated\r\n").await?;
                } else {
                    conn.say("535 bad credentials\r\n").await?;
                }
            } else if upper == "AUTH LOGIN" {
                conn.say("334 VXNlcm5hbWU6\r\n").await?;
                let name = STANDARD.decode(conn.read().await?.trim()).ok()?;
                conn.say("334 UGFzc3dvcmQ6\r\n").await?;
                let password = STANDARD.decode(conn.read().await?.trim()).ok()?;
                if name == USER.as_bytes() && password == PASSWORD.as_bytes() {
                    user = Some(USER.to_owned());
                    conn.say("235 authenticated\r\n").await?;
                } else {
                    conn.say("535 bad credentials\r\n").await?;
                }
            } else if upper.starts_with("MAIL FROM:") {
                if user.is_none() {
                    conn.say("530 authentication required\r\n").await?;
                } else if self.temporary_failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    conn.say("451 try again later\r\n").await?;
                } else {
                    from = Some(address(&line));
                    conn.say("250 sender ok\r\n").await?;
                }
            } else if upper.starts_with("RCPT TO:") {
                if self.refuse_recipients.load(Ordering::SeqCst) {
                    conn.say("550 no such mailbox\r\n").await?;
                } else {
                    to = Some(address(&line));
                    conn.say("250 recipient ok\r\n").await?;
                }
            } else if upper == "DATA" && from.is_some() && to.is_some() {
                conn.say("354 end with .\r\n").await?;
                let mut lines = Vec::new();
                loop {
                    let line = conn.read().await?;
                    if line == "." {
                        break;
                    }
                    lines.push(line.strip_prefix('.').map_or(line.clone(), str::to_owned));
                }
                let mail = Received { from: from.take()?, to: to.take()?, data: lines.join("\r\n"), tls, user: user.clone() };
                let _ = self.sender.send(mail);
                conn.say("250 queued\r\n").await?;
            } else if upper == "QUIT" {
                conn.say("221 bye\r\n").await?;
                return Some(());
            } else {
                conn.say("502 not here\r\n").await?;
            }
        }
    }
}

fn address(line: &str) -> String {
    line.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(address, _)| address.to_owned()).unwrap_or_default()
}
