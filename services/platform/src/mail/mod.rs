//! Outgoing mail: through an SMTP relay configured by URL (`SMTP_URL`; SES's SMTP interface on
//! AWS), or, on embedded defaults, into a folder (`DATA_DIR/mail`) where a studio running locally
//! opens each message as a `.eml` file.

pub mod smtp;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Secret;

/// Whether the connection to the relay is encrypted from the start or upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `smtp://` (port 587 by default): STARTTLS, required; a relay that does not offer it gets
    /// nothing.
    StartTls,
    /// `smtps://` (port 465 by default): TLS from the first byte.
    Implicit,
}

/// A relay's user name and password (SES: the SMTP credentials derived from an IAM user's key).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (SES: an access key id).
    pub username: String,
    /// The password.
    pub password: String,
}

/// An SMTP relay, from `SMTP_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpRelay {
    /// Host name, checked against the relay's certificate.
    pub host: String,
    /// Port.
    pub port: u16,
    /// STARTTLS or implicit TLS.
    pub tls: SmtpTls,
    /// AUTH PLAIN/LOGIN credentials, when the URL has them; `Debug` shows neither part.
    pub credentials: Option<Secret<Credentials>>,
}

/// Where mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailTransport {
    /// Through a relay.
    Smtp(SmtpRelay),
    /// Written as `.eml` files into a folder (no `SMTP_URL`: embedded defaults, local work).
    Folder(PathBuf),
}

/// A mailbox: an address with an optional display name (`Guildhall <no-reply@game.example>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Shown by mail clients; ASCII without quotes or angle brackets.
    pub name: Option<String>,
    /// The address.
    pub address: String,
}

impl Mailbox {
    /// Reads `Name <address>` or a bare `address`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        let (name, address) = match text.strip_suffix('>').and_then(|t| t.rsplit_once('<')) {
            Some((name, address)) => (Some(name.trim().trim_matches('"').trim().to_owned()).filter(|n| !n.is_empty()), address.trim()),
            None => (None, text),
        };
        let address_ok = address.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
            && address.bytes().all(|b| b.is_ascii_graphic() && !b"<>\"(),;:\\[]".contains(&b));
        if !address_ok {
            bail!("{text:?} is not a mail address such as no-reply@game.example");
        }
        if name.as_ref().is_some_and(|n| n.bytes().any(|b| !(b.is_ascii_graphic() || b == b' ') || b"<>\"\\".contains(&b))) {
            bail!("the name in {text:?} must be ASCII without quotes or angle brackets");
        }
        Ok(Mailbox { name, address: address.to_owned() })
    }

    /// The mailbox as a header shows it.
    fn header(&self) -> String {
        match &self.name {
            Some(name) => format!("\"{name}\" <{}>", self.address),
            None => format!("<{}>", self.address),
        }
    }
}

/// How and from whom mail is sent.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `SMTP_URL`, or the folder `MAIL_DIR` (default `DATA_DIR/mail`).
    pub transport: MailTransport,
    /// `MAIL_FROM`: the sender (SES: an identity verified in the account).
    pub from: Mailbox,
    /// `SMTP_TIMEOUT_SECS`: each step of a relay conversation (connecting, each command's reply,
    /// the TLS handshake).
    pub timeout: Duration,
    /// `SMTP_CA_FILE`: PEM certificates trusted besides the system's roots (a relay with a
    /// private CA; the tests' relay).
    pub ca_file: Option<PathBuf>,
}

impl MailConfig {
    /// Reads `SMTP_URL`, `SMTP_TIMEOUT_SECS`, `SMTP_CA_FILE`, `MAIL_FROM` and `MAIL_DIR` through
    /// `get` (trimmed, empty as unset).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>, data_dir: &Path) -> anyhow::Result<Self> {
        let transport = match get("SMTP_URL") {
            Some(url) => MailTransport::Smtp(parse_smtp_url(&url)?),
            None => MailTransport::Folder(get("MAIL_DIR").map_or_else(|| data_dir.join("mail"), PathBuf::from)),
        };
        let from = match (get("MAIL_FROM"), &transport) {
            (Some(from), _) => Mailbox::parse(&from).context("MAIL_FROM")?,
            (None, MailTransport::Folder(_)) => Mailbox { name: Some("Guildhall".into()), address: "no-reply@guildhall.localhost".into() },
            (None, MailTransport::Smtp(_)) => {
                bail!("SMTP_URL needs MAIL_FROM, the sender (e.g. `Guildhall <no-reply@game.example>`, an identity verified in SES)")
            }
        };
        let timeout = match get("SMTP_TIMEOUT_SECS") {
            None => 15,
            Some(v) => v.parse::<u64>().ok().filter(|s| (1..=120).contains(s)).context("SMTP_TIMEOUT_SECS must be between 1 and 120")?,
        };
        Ok(MailConfig { transport, from, timeout: Duration::from_secs(timeout), ca_file: get("SMTP_CA_FILE").map(PathBuf::from) })
    }
}

/// Reads `smtp://[user:password@]host[:port]` (STARTTLS, port 587) or `smtps://…` (implicit
/// TLS, port 465). User and password are percent-decoded (SES passwords hold `/` and `+`).
pub fn parse_smtp_url(url: &str) -> anyhow::Result<SmtpRelay> {
    let problem = |why: &str| anyhow::anyhow!("SMTP_URL {why}; e.g. smtp://USER:PASSWORD@email-smtp.eu-west-1.amazonaws.com:587");
    let (tls, rest) = if let Some(rest) = url.strip_prefix("smtp://") {
        (SmtpTls::StartTls, rest)
    } else if let Some(rest) = url.strip_prefix("smtps://") {
        (SmtpTls::Implicit, rest)
    } else {
        return Err(problem("must start with smtp:// (STARTTLS) or smtps:// (TLS)"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains(['/', '?', '#']) {
        return Err(problem("takes no path or query"));
    }
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, rest),
    };
    let credentials = match userinfo {
        None => None,
        Some(userinfo) => {
            let (user, password) = userinfo.split_once(':').ok_or_else(|| problem("has a user without a password"))?;
            let username = percent_decode(user).ok_or_else(|| problem("has a badly escaped user"))?;
            let password = percent_decode(password).ok_or_else(|| problem("has a badly escaped password"))?;
            if username.is_empty() || password.is_empty() {
                return Err(problem("has an empty user or password"));
            }
            Some(Secret::new(Credentials { username, password }))
        }
    };
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| problem("has an unclosed [ in its host"))?;
            (host, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        },
    };
    if host.is_empty() {
        return Err(problem("names no host"));
    }
    let port = match port {
        None => {
            if tls == SmtpTls::StartTls {
                587
            } else {
                465
            }
        }
        Some(port) => port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| problem("has a port that is not a number"))?,
    };
    Ok(SmtpRelay { host: host.to_owned(), port, tls, credentials })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A plain-text message to one recipient.
#[derive(Debug, Clone)]
pub struct Message {
    /// The recipient's address.
    pub to: String,
    /// The subject (ASCII).
    pub subject: String,
    /// The text (ASCII; lines of at most 998 characters).
    pub body: String,
}

impl Message {
    /// The message as RFC 5322 text from `from`, dated `now_ms` (Unix milliseconds), lines ending
    /// in CRLF.
    pub fn render(&self, from: &Mailbox, now_ms: i64) -> String {
        let domain = from.address.rsplit_once('@').map_or("guildhall.localhost", |(_, d)| d);
        let mut text = String::new();
        for (name, value) in [
            ("Date", rfc5322_date(now_ms)),
            ("From", from.header()),
            ("To", format!("<{}>", self.to)),
            ("Subject", self.subject.clone()),
            ("Message-ID", format!("<{}@{domain}>", uuid::Uuid::now_v7().simple())),
            ("MIME-Version", "1.0".into()),
            ("Content-Type", "text/plain; charset=utf-8".into()),
            ("Content-Transfer-Encoding", if self.body.is_ascii() { "7bit" } else { "8bit" }.into()),
            // RFC 3834: an automatic message; vacation responders should not answer it.
            ("Auto-Submitted", "auto-generated".into()),
        ] {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        for line in self.body.lines() {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text
    }
}

/// `Sun, 29 Nov 2026 16:37:23 +0000` (RFC 5322 §3.3).
fn rfc5322_date(millis: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = millis.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = crate::time::civil_from_days(days);
    let weekday = DAYS[usize::try_from(crate::time::weekday(days)).unwrap_or(0) % 7];
    let month = MONTHS[usize::try_from(month - 1).unwrap_or(0) % 12];
    format!("{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} +0000", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Where a message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Accepted by the relay.
    Relayed,
    /// Written to this file.
    Written(PathBuf),
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The relay did not take it (see `SmtpError::transient`).
    #[error(transparent)]
    Smtp(#[from] smtp::SmtpError),
    /// The folder could not be written.
    #[error("writing the mail file: {0:#}")]
    Folder(anyhow::Error),
}

impl MailError {
    /// Whether a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            MailError::Smtp(err) => err.transient,
            MailError::Folder(_) => true,
        }
    }
}

/// Sends messages as configured. Cheap to clone.
#[derive(Clone)]
pub struct Mailer(Arc<MailerInner>);

struct MailerInner {
    from: Mailbox,
    transport: Transport,
}

enum Transport {
    Smtp(smtp::Client),
    Folder(PathBuf),
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.transport {
            Transport::Smtp(_) => f.write_str("Mailer(smtp)"),
            Transport::Folder(dir) => write!(f, "Mailer(folder {})", dir.display()),
        }
    }
}

impl Mailer {
    /// The mailer `config` describes; the relay's roots are the system's and `SMTP_CA_FILE`'s.
    pub fn new(config: &MailConfig) -> anyhow::Result<Self> {
        let transport = match &config.transport {
            MailTransport::Folder(dir) => Transport::Folder(dir.clone()),
            MailTransport::Smtp(relay) => {
                let mut roots = tokio_rustls::rustls::RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if let Some(file) = &config.ca_file {
                    use tokio_rustls::rustls::pki_types::CertificateDer;
                    use tokio_rustls::rustls::pki_types::pem::PemObject;
                    let pem = std::fs::read(file).with_context(|| format!("reading SMTP_CA_FILE {}", file.display()))?;
                    let mut count = 0;
                    for cert in CertificateDer::pem_slice_iter(&pem) {
                        let cert = cert.with_context(|| format!("SMTP_CA_FILE {} holds a bad certificate", file.display()))?;
                        roots.add(cert).context("adding an SMTP_CA_FILE certificate")?;
                        count += 1;
                    }
                    if count == 0 {
                        bail!("SMTP_CA_FILE {} holds no certificate", file.display());
                    }
                } else if added == 0 {
                    bail!(
                        "no trusted root certificates found on this system for SMTP_URL's TLS; install ca-certificates or set SMTP_CA_FILE"
                    );
                }
                let helo = config.from.address.rsplit_once('@').map_or("localhost", |(_, d)| d).to_owned();
                Transport::Smtp(smtp::Client::new(relay.clone(), roots, helo, config.timeout))
            }
        };
        Ok(Mailer(Arc::new(MailerInner { from: config.from.clone(), transport })))
    }

    /// Whether mail goes to a relay (rather than a folder).
    pub fn is_relay(&self) -> bool {
        matches!(self.0.transport, Transport::Smtp(_))
    }

    /// Sends `message`.
    pub async fn send(&self, message: &Message) -> Result<Sent, MailError> {
        let now = crate::db::now_millis();
        let text = message.render(&self.0.from, now);
        match &self.0.transport {
            Transport::Smtp(client) => {
                let envelope = smtp::Envelope { from: &self.0.from.address, to: &message.to, data: text.as_bytes() };
                client.send(&envelope).await?;
                Ok(Sent::Relayed)
            }
            Transport::Folder(dir) => {
                let name = format!("{}-{}.eml", crate::time::rfc3339(now).replace([':', '.'], ""), uuid::Uuid::now_v7().simple());
                let path = dir.join(name);
                write_private(dir, &path, text.as_bytes()).await.map_err(MailError::Folder)?;
                Ok(Sent::Written(path))
            }
        }
    }
}

/// Writes `bytes` to a new file `path` in `dir` (made if missing) that only this user may read:
/// the mail holds a link that signs in.
async fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating {}", dir.display()))?;
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await.with_context(|| format!("creating {}", path.display()))?;
    tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await.with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_choose_tls_and_ports_and_decode_credentials() {
        let ses = parse_smtp_url("smtp://AKIAEXAMPLE:BPa%2Fsecret%2Bkey@email-smtp.eu-west-1.amazonaws.com:587").expect("valid");
        assert_eq!((ses.host.as_str(), ses.port, ses.tls), ("email-smtp.eu-west-1.amazonaws.com", 587, SmtpTls::StartTls));
        let credentials = ses.credentials.as_ref().expect("credentials").expose();
        assert_eq!((credentials.username.as_str(), credentials.password.as_str()), ("AKIAEXAMPLE", "BPa/secret+key"));
        let printed = format!("{ses:?}");
        assert!(!printed.contains("AKIAEXAMPLE") && !printed.contains("secret"), "{printed}");
        let implicit = parse_smtp_url("smtps://relay.example").expect("valid");
        assert_eq!((implicit.port, implicit.tls, implicit.credentials), (465, SmtpTls::Implicit, None));
        assert_eq!(parse_smtp_url("smtp://[::1]:2525").expect("v6").host, "::1");
        for bad in ["http://relay", "smtp://", "smtp://u@relay", "smtp://relay:port", "smtp://relay/path", "smtp://u:%zz@relay"] {
            assert!(parse_smtp_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mailboxes_and_the_configuration() {
        let named = Mailbox::parse("Guildhall <no-reply@game.example>").expect("named");
        assert_eq!((named.name.as_deref(), named.address.as_str()), (Some("Guildhall"), "no-reply@game.example"));
        assert_eq!(Mailbox::parse("no-reply@game.example").expect("bare").name, None);
        assert!(Mailbox::parse("not an address").is_err() && Mailbox::parse("A <b@c.d>x").is_err());
        let get = |vars: &'static [(&'static str, &'static str)]| {
            move |key: &str| vars.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned())
        };
        let local = MailConfig::from_lookup(&get(&[]), Path::new("/srv/gh")).expect("defaults");
        assert_eq!(local.transport, MailTransport::Folder(PathBuf::from("/srv/gh/mail")));
        let err = MailConfig::from_lookup(&get(&[("SMTP_URL", "smtp://relay.example")]), Path::new("d")).expect_err("no MAIL_FROM");
        assert!(err.to_string().contains("MAIL_FROM"), "{err}");
        assert!(MailConfig::from_lookup(&get(&[("SMTP_TIMEOUT_SECS", "0")]), Path::new("d")).is_err());
    }

    #[test]
    fn messages_render_with_crlf_and_a_date() {
        let from = Mailbox::parse("Guildhall <no-reply@game.example>").expect("from");
        let message = Message { to: "ana@example.com".into(), subject: "Hello".into(), body: "one\ntwo".into() };
        let text = message.render(&from, 1_795_960_434_645);
        assert!(text.starts_with("Date: Sun, 29 Nov 2026 "), "{text}");
        assert!(text.contains("\r\nFrom: \"Guildhall\" <no-reply@game.example>\r\nTo: <ana@example.com>\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\none\r\ntwo\r\n"), "{text}");
    }
}
