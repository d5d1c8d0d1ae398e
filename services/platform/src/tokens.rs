//! Access tokens: JWTs signed with Ed25519 (`alg: EdDSA`, RFC 8037) and a `kid`, which every
//! service verifies with public keys alone, and the JWKS document that publishes those keys.
//!
//! A key *set*: one key signs (on the service that issues tokens), and every key that still
//! verifies is accepted and published, so that a key can be rotated without downtime and
//! without logging anyone out: the next key is published to every verifier before it signs, and
//! the previous one keeps verifying until the last token it signed has expired (README,
//! "Rotating the signing key"). Each token names its key in the header's `kid`, and verification
//! picks the key by it.
//!
//! The JWS compact form is small enough to write here on top of `ed25519-dalek`, which does the
//! cryptography; doing so keeps RSA and NIST-curve code that Guildhall never uses out of the build.
//! Verification is strict: only `EdDSA`, only known `kid`s, `verify_strict` (no malleable
//! signatures), issuer and expiry checked.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::TokenConfig;

/// DER prefix of a PKCS#8 v1 Ed25519 private key (RFC 8410); the 32-byte seed follows.
const PKCS8_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// Clock skew tolerated between the instance that signed and the one that verifies.
pub const LEEWAY_SECS: i64 = 30;
/// The embedded signing key, under `DATA_DIR`.
pub const EMBEDDED_SIGNING_KEY: &str = "signing-key.pem";
/// The embedded set's other public keys that still verify (a previous key after
/// `guildhall keys rotate`), under `DATA_DIR`.
pub const EMBEDDED_VERIFY_KEYS: &str = "verify-keys.pem";
/// The most keys a set may hold: a rotation needs three at most (previous, current, next).
const MAX_KEYS: usize = 8;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer (`TOKEN_ISSUER`).
    pub iss: String,
    /// The account id.
    pub sub: String,
    /// The session id, which logout and reuse detection revoke.
    pub sid: String,
    /// The name other players see (display name, else username) when the token was issued, so
    /// that services can show it without reading the accounts service's tables.
    #[serde(default)]
    pub name: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

/// Why a token was refused. The message is safe to show to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or a header that does not say EdDSA.
    #[error("malformed token")]
    Malformed,
    /// Signed by a key this service does not accept: one retired by a rotation, or never ours.
    #[error("token signed by a key this server does not accept (retired by a key rotation, or not ours); refresh the access token")]
    UnknownKey,
    /// Signature does not verify.
    #[error("bad token signature")]
    BadSignature,
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// Issued by someone else.
    #[error("token from another issuer")]
    WrongIssuer,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    kid: String,
}

/// A public key that verifies, with its id.
#[derive(Clone, PartialEq, Eq)]
struct PublicKey {
    kid: String,
    key: VerifyingKey,
}

impl PublicKey {
    fn new(key: VerifyingKey) -> Self {
        PublicKey { kid: kid_of(&key), key }
    }
}

/// The key id of a public key: the first 96 bits of its SHA-256, base64url. Derived, so every
/// instance names a key alike without being told.
fn kid_of(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

/// The key set (the signing key, on the service that issues tokens, and every public key that
/// still verifies) and token settings.
pub struct TokenKeys {
    signing: Option<(SigningKey, String)>,
    /// Every key accepted, the signing key's first when there is one.
    verifying: Vec<PublicKey>,
    issuer: String,
    access_ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys").field("signing_kid", &self.signing_kid()).field("kids", &self.kids()).finish()
    }
}

/// Where a key set came from, for `guildhall keys show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `TOKEN_SIGNING_KEY`, `TOKEN_VERIFY_KEYS`, `TOKEN_VERIFY_KEY`.
    Environment,
    /// `DATA_DIR/signing-key.pem` and `DATA_DIR/verify-keys.pem` (embedded defaults).
    DataDir,
}

impl TokenKeys {
    /// Loads the key set the configuration names:
    /// - `TOKEN_SIGNING_KEY` signs (the accounts service);
    /// - `TOKEN_VERIFY_KEYS` (and the older `TOKEN_VERIFY_KEY`, which may hold a bundle too) are
    ///   the public keys accepted. Beside a signing key they must include its public half, so
    ///   that a key cannot start signing before it was published to the services that verify
    ///   (they read the same bundle);
    /// - with none of them (embedded defaults), a signing key is generated once and kept in
    ///   `data_dir/signing-key.pem` (mode 0600) so tokens survive a restart, and
    ///   `data_dir/verify-keys.pem`, when present, adds the keys `guildhall keys rotate` retired
    ///   from signing.
    pub fn load(config: &TokenConfig, data_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self::load_with(config, data_dir, true)?.0)
    }

    /// Like `load`, but never generates a key: `None` on embedded defaults before the first
    /// `serve` made one (`guildhall keys show`).
    pub fn load_existing(config: &TokenConfig, data_dir: &Path) -> anyhow::Result<Option<(Self, KeySource)>> {
        match Self::load_with(config, data_dir, false) {
            Ok(loaded) => Ok(Some(loaded)),
            Err(err) if err.downcast_ref::<NoKeyYet>().is_some() => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn load_with(config: &TokenConfig, data_dir: &Path, generate: bool) -> anyhow::Result<(Self, KeySource)> {
        let mut listed = Vec::new();
        for (name, bundle) in [("TOKEN_VERIFY_KEYS", &config.verify_keys), ("TOKEN_VERIFY_KEY", &config.verify_key)] {
            if let Some(bundle) = bundle {
                let keys = parse_public_bundle(bundle).with_context(|| format!("reading {name}"))?;
                anyhow::ensure!(!keys.is_empty(), "{name} holds no PUBLIC KEY block");
                listed.extend(keys);
            }
        }
        let (signing, source) = match &config.signing_key {
            Some(pem) => (Some(parse_private_pem(pem.expose()).context("reading TOKEN_SIGNING_KEY")?), KeySource::Environment),
            None if !listed.is_empty() => (None, KeySource::Environment),
            None => {
                let path = data_dir.join(EMBEDDED_SIGNING_KEY);
                let key = if generate { load_or_generate(&path)? } else { load_private(&path)?.ok_or(NoKeyYet)? };
                listed = match std::fs::read_to_string(data_dir.join(EMBEDDED_VERIFY_KEYS)) {
                    Ok(bundle) => parse_public_bundle(&bundle)
                        .with_context(|| format!("reading {}", data_dir.join(EMBEDDED_VERIFY_KEYS).display()))?,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(err) => return Err(err).with_context(|| format!("reading {}", data_dir.join(EMBEDDED_VERIFY_KEYS).display())),
                };
                (Some(key), KeySource::DataDir)
            }
        };
        if source == KeySource::Environment
            && let Some(key) = &signing
            && !listed.is_empty()
            && !listed.contains(&key.verifying_key())
        {
            bail!(
                "TOKEN_VERIFY_KEYS does not include the public key of TOKEN_SIGNING_KEY (kid {}): publish a new key to every \
                 service that verifies before it signs (README: Rotating the signing key)",
                kid_of(&key.verifying_key())
            );
        }
        Ok((Self::from_parts(signing, listed, config)?, source))
    }

    /// Keys from a given signing key (tests, tools).
    pub fn from_signing_key(seed: [u8; 32], config: &TokenConfig) -> Self {
        Self::from_parts(Some(SigningKey::from_bytes(&seed)), Vec::new(), config).expect("one key is within the limit")
    }

    fn from_parts(signing: Option<SigningKey>, listed: Vec<VerifyingKey>, config: &TokenConfig) -> anyhow::Result<Self> {
        let mut verifying: Vec<PublicKey> = Vec::new();
        let signing = signing.map(|key| {
            let public = PublicKey::new(key.verifying_key());
            let kid = public.kid.clone();
            verifying.push(public);
            (key, kid)
        });
        for key in listed {
            let public = PublicKey::new(key);
            if !verifying.contains(&public) {
                verifying.push(public);
            }
        }
        anyhow::ensure!(verifying.len() <= MAX_KEYS, "{} token keys configured; at most {MAX_KEYS} may verify at once", verifying.len());
        Ok(TokenKeys { signing, verifying, issuer: config.issuer.clone(), access_ttl: config.access_ttl })
    }

    /// The id of the key that signs here (`None` on a service that only verifies).
    pub fn signing_kid(&self) -> Option<&str> {
        self.signing.as_ref().map(|(_, kid)| kid.as_str())
    }

    /// The ids of every key that verifies here, the signing key's first.
    pub fn kids(&self) -> Vec<&str> {
        self.verifying.iter().map(|k| k.kid.as_str()).collect()
    }

    /// Lifetime of the access tokens this service signs.
    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// Signs an access token for `account_id`, shown as `name`, in `session_id`, valid from `now`
    /// (Unix seconds), with the signing key, whose `kid` the header names.
    pub fn sign(&self, account_id: &str, session_id: &str, name: &str, now: i64) -> anyhow::Result<String> {
        let (key, kid) = self.signing.as_ref().context("this instance has only TOKEN_VERIFY_KEYS and cannot sign tokens")?;
        let ttl = i64::try_from(self.access_ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: account_id.to_owned(),
            sid: session_id.to_owned(),
            name: name.to_owned(),
            iat: now,
            exp: now.saturating_add(ttl),
        };
        let header = Header { alg: "EdDSA".into(), typ: Some("JWT".into()), kid: kid.clone() };
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?), URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?));
        let signature = key.sign(signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes())))
    }

    /// Verifies `token` at `now` (Unix seconds) with the key its `kid` names, and returns its
    /// claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed);
        let header: Header = serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Malformed);
        }
        let key = self.verifying.iter().find(|k| k.kid == header.kid).ok_or(TokenError::UnknownKey)?;
        let signature = Signature::from_slice(&decode(signature)?).map_err(|_| TokenError::Malformed)?;
        let signing_input_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
        key.key.verify_strict(&token.as_bytes()[..signing_input_len], &signature).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&decode(payload)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if claims.exp + LEEWAY_SECS <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// Whether claims that verified earlier are still within their lifetime at `now`.
    pub fn still_valid(&self, claims: &Claims, now: i64) -> bool {
        claims.exp + LEEWAY_SECS > now
    }

    /// Every key that verifies, as a JSON Web Key Set (RFC 7517, OKP keys per RFC 8037), the
    /// signing key's first.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .verifying
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": k.kid,
                    "x": URL_SAFE_NO_PAD.encode(k.key.as_bytes()),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Every key that verifies, as a bundle of SPKI PEM blocks: the value `TOKEN_VERIFY_KEYS`
    /// takes.
    pub fn public_pems(&self) -> String {
        self.verifying.iter().map(|k| public_pem(&k.key)).collect()
    }
}

/// The key-set file names and PEM forms, for `guildhall keys`.
pub mod manage {
    use super::*;

    /// A new signing key: (PKCS#8 PEM of the private key, its kid).
    pub fn generate() -> anyhow::Result<(String, String)> {
        let (key, pem) = new_key()?;
        Ok((pem, kid_of(&key.verifying_key())))
    }

    /// The public half of a private key PEM: (SPKI PEM, kid).
    pub fn public_of(private_pem: &str) -> anyhow::Result<(String, String)> {
        let key = parse_private_pem(private_pem)?.verifying_key();
        Ok((public_pem(&key), kid_of(&key)))
    }

    /// Embedded defaults: a new key signs from the next start, and the current one moves to
    /// `verify-keys.pem`, so that the tokens it signed keep working until they expire. Returns
    /// (the retired key's kid, the new key's kid).
    pub fn rotate(data_dir: &Path) -> anyhow::Result<(String, String)> {
        let path = data_dir.join(EMBEDDED_SIGNING_KEY);
        let current = load_private(&path)?.with_context(|| format!("no {} to rotate (it is made at the first serve)", path.display()))?;
        let mut bundle = read_bundle(data_dir)?;
        let old = current.verifying_key();
        if !bundle.contains(&old) {
            bundle.push(old);
        }
        anyhow::ensure!(bundle.len() < MAX_KEYS, "{} keys already verify; retire some first (guildhall keys retire KID)", bundle.len());
        // The old key is kept verifying before the new one replaces it: a crash in between
        // leaves the old key signing and a harmless extra entry.
        write_bundle(data_dir, &bundle)?;
        let (new, pem) = new_key()?;
        let staged = data_dir.join(format!("{EMBEDDED_SIGNING_KEY}.new"));
        let _ = std::fs::remove_file(&staged);
        write_private(&staged, &pem)?;
        std::fs::rename(&staged, &path).with_context(|| format!("replacing {}", path.display()))?;
        Ok((kid_of(&old), kid_of(&new.verifying_key())))
    }

    /// Embedded defaults: `kid` no longer verifies from the next start. Refuses the signing key.
    pub fn retire(data_dir: &Path, kid: &str) -> anyhow::Result<()> {
        if let Some(current) = load_private(&data_dir.join(EMBEDDED_SIGNING_KEY))?
            && kid_of(&current.verifying_key()) == kid
        {
            bail!("{kid} is the signing key; rotate first (guildhall keys rotate)");
        }
        let mut bundle = read_bundle(data_dir)?;
        let before = bundle.len();
        bundle.retain(|key| kid_of(key) != kid);
        anyhow::ensure!(bundle.len() < before, "no key {kid} in {}", data_dir.join(EMBEDDED_VERIFY_KEYS).display());
        write_bundle(data_dir, &bundle)
    }

    fn read_bundle(data_dir: &Path) -> anyhow::Result<Vec<VerifyingKey>> {
        let path = data_dir.join(EMBEDDED_VERIFY_KEYS);
        match std::fs::read_to_string(&path) {
            Ok(bundle) => parse_public_bundle(&bundle).with_context(|| format!("reading {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Replaces the bundle through a rename, so a reader never sees half a file.
    fn write_bundle(data_dir: &Path, bundle: &[VerifyingKey]) -> anyhow::Result<()> {
        let path = data_dir.join(EMBEDDED_VERIFY_KEYS);
        let staged = data_dir.join(format!("{EMBEDDED_VERIFY_KEYS}.new"));
        let text: String = bundle.iter().map(public_pem).collect();
        std::fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
        std::fs::rename(&staged, &path).with_context(|| format!("replacing {}", path.display()))
    }
}

/// Raised by `load_existing` on embedded defaults before any key was made.
#[derive(Debug, thiserror::Error)]
#[error("no signing key yet")]
struct NoKeyYet;

fn new_key() -> anyhow::Result<(SigningKey, String)> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a signing key: {e}"))?;
    let mut der = PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    Ok((SigningKey::from_bytes(&seed), pem("PRIVATE KEY", &der)))
}

fn public_pem(key: &VerifyingKey) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    pem("PUBLIC KEY", &der)
}

/// The private key at `path`, or `None` when there is no file.
fn load_private(path: &Path) -> anyhow::Result<Option<SigningKey>> {
    match std::fs::read_to_string(path) {
        Ok(pem) => parse_private_pem(&pem).with_context(|| format!("reading {}", path.display())).map(Some),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

fn load_or_generate(path: &Path) -> anyhow::Result<SigningKey> {
    if let Some(key) = load_private(path)? {
        return Ok(key);
    }
    let (key, pem) = new_key()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(path, &pem)?;
    tracing::info!(path = %path.display(), "generated a token signing key for embedded mode");
    Ok(key)
}

#[cfg(unix)]
pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn pem(label: &str, der: &[u8]) -> String {
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", STANDARD.encode(der))
}

fn pem_body(pem: &str, label: &str) -> anyhow::Result<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    // Accept literal "\n" sequences too: keys passed through env files often arrive that way.
    let pem = pem.replace("\\n", "\n");
    let start = pem.find(&begin).with_context(|| format!("no {begin} line"))? + begin.len();
    let stop = pem[start..].find(&end).with_context(|| format!("no {end} line"))? + start;
    let body: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(body).context("PEM body is not base64")
}

fn parse_private_pem(pem: &str) -> anyhow::Result<SigningKey> {
    let der = pem_body(pem, "PRIVATE KEY")?;
    let seed: [u8; 32] = der
        .strip_prefix(&PKCS8_PREFIX[..])
        .and_then(|seed| seed.try_into().ok())
        .context("not a PKCS#8 Ed25519 private key (make one with `openssl genpkey -algorithm ed25519`)")?;
    Ok(SigningKey::from_bytes(&seed))
}

fn parse_public_pem(pem: &str) -> anyhow::Result<VerifyingKey> {
    let der = pem_body(pem, "PUBLIC KEY")?;
    let key: [u8; 32] = der
        .strip_prefix(&SPKI_PREFIX[..])
        .and_then(|key| key.try_into().ok())
        .context("not an Ed25519 public key (make one with `openssl pkey -pubout`)")?;
    VerifyingKey::from_bytes(&key).context("invalid Ed25519 public key")
}

/// Every `PUBLIC KEY` block of `bundle`, in order (text between blocks is ignored, as RFC 7468
/// allows). A private key is refused: the bundle is handed to every service.
fn parse_public_bundle(bundle: &str) -> anyhow::Result<Vec<VerifyingKey>> {
    let bundle = bundle.replace("\\n", "\n");
    anyhow::ensure!(!bundle.contains("PRIVATE KEY-----"), "holds a private key: only public keys may be given to the services that verify");
    const END: &str = "-----END PUBLIC KEY-----";
    let mut keys = Vec::new();
    let mut rest = bundle.as_str();
    while let Some(start) = rest.find("-----BEGIN PUBLIC KEY-----") {
        let stop = rest[start..].find(END).context("a PUBLIC KEY block without its END line")? + start + END.len();
        keys.push(parse_public_pem(&rest[start..stop]).with_context(|| format!("public key {} of the bundle", keys.len() + 1))?);
        rest = &rest[stop..];
    }
    anyhow::ensure!(bundle.matches("-----BEGIN ").count() == keys.len(), "holds a PEM block other than PUBLIC KEY");
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config() -> TokenConfig {
        TokenConfig {
            signing_key: None,
            verify_keys: None,
            verify_key: None,
            issuer: "guildhall".into(),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(3600),
        }
    }

    fn private_pem(seed: [u8; 32]) -> String {
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        pem("PRIVATE KEY", &der)
    }

    fn public_of(seed: [u8; 32]) -> String {
        public_pem(&SigningKey::from_bytes(&seed).verifying_key())
    }

    fn kid(token: &str) -> String {
        let header: Header =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().expect("header")).expect("b64")).expect("header JSON");
        header.kid
    }

    #[test]
    fn signed_tokens_verify_and_carry_their_claims() {
        let keys = TokenKeys::from_signing_key([7; 32], &config());
        let token = keys.sign("acct", "sess", "Ana", 1_000).expect("sign");
        let claims = keys.verify(&token, 1_100).expect("verify");
        assert_eq!(
            claims,
            Claims { iss: "guildhall".into(), sub: "acct".into(), sid: "sess".into(), name: "Ana".into(), iat: 1_000, exp: 1_900 }
        );
        assert_eq!(Some(kid(&token).as_str()), keys.signing_kid());
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let keys = TokenKeys::from_signing_key([7; 32], &config());
        let token = keys.sign("acct", "sess", "n", 1_000).expect("sign");
        assert_eq!(keys.verify(&token, 1_900 + LEEWAY_SECS), Err(TokenError::Expired));

        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"iss":"guildhall","sub":"admin","sid":"s","iat":1000,"exp":9999999999}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(keys.verify(&forged, 1_100), Err(TokenError::BadSignature));

        let other = TokenKeys::from_signing_key([8; 32], &config());
        assert_eq!(other.verify(&token, 1_100), Err(TokenError::UnknownKey));

        let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"x"}"#), parts[1]);
        assert_eq!(keys.verify(&none_alg, 1_100), Err(TokenError::Malformed));
        assert_eq!(keys.verify("a.b", 1_100), Err(TokenError::Malformed));

        let mut other_issuer = config();
        other_issuer.issuer = "someone-else".into();
        let foreign = TokenKeys::from_signing_key([7; 32], &other_issuer).sign("a", "s", "n", 1_000).expect("sign");
        assert_eq!(keys.verify(&foreign, 1_100), Err(TokenError::WrongIssuer));
    }

    #[test]
    fn a_verify_only_instance_accepts_tokens_from_the_signer_but_cannot_sign() {
        let signer = TokenKeys::from_signing_key([9; 32], &config());
        for old_name in [false, true] {
            let mut verify_config = config();
            if old_name {
                verify_config.verify_key = Some(signer.public_pems());
            } else {
                verify_config.verify_keys = Some(signer.public_pems());
            }
            let verifier = TokenKeys::load(&verify_config, Path::new("/nonexistent")).expect("load public key");
            let token = signer.sign("acct", "sess", "n", 1_000).expect("sign");
            assert_eq!(verifier.verify(&token, 1_001).expect("verify").sub, "acct");
            assert!(verifier.sign("acct", "sess", "n", 1_000).is_err());
            assert_eq!(verifier.signing_kid(), None);
            assert_eq!(verifier.jwks(), signer.jwks());
        }
    }

    /// The rotation the README describes, key by key: B is published, then signs, then A retires.
    #[test]
    fn a_rotation_keeps_every_live_token_verifying() {
        let (a, b) = ([1; 32], [2; 32]);
        let with = |signing: [u8; 32], verify: &[[u8; 32]]| {
            let mut c = config();
            c.signing_key = Some(Secret::new(private_pem(signing)));
            c.verify_keys = Some(verify.iter().map(|seed| public_of(*seed)).collect());
            TokenKeys::load(&c, Path::new("/nonexistent"))
        };
        let verifier = |verify: &[[u8; 32]]| {
            let mut c = config();
            c.verify_keys = Some(verify.iter().map(|seed| public_of(*seed)).collect());
            TokenKeys::load(&c, Path::new("/nonexistent")).expect("verifier")
        };
        let before = with(a, &[a]).expect("A signs");
        let token_a = before.sign("acct", "s1", "n", 1_000).expect("sign");

        // A key may not sign before the bundle the verifiers read includes it.
        let err = with(b, &[a]).expect_err("B signing unpublished");
        assert!(format!("{err:#}").contains("does not include the public key of TOKEN_SIGNING_KEY"), "{err:#}");

        let published = verifier(&[a, b]);
        assert_eq!(published.jwks()["keys"].as_array().expect("keys").len(), 2);
        let switched = with(b, &[a, b]).expect("B signs, A verifies");
        let token_b = switched.sign("acct", "s1", "n", 1_000).expect("sign");
        assert_ne!(kid(&token_a), kid(&token_b));
        assert_eq!(Some(kid(&token_b).as_str()), switched.signing_kid());
        for keys in [&published, &switched] {
            assert!(keys.verify(&token_a, 1_001).is_ok());
            assert!(keys.verify(&token_b, 1_001).is_ok());
        }
        // The signing key's JWK comes first.
        assert_eq!(switched.jwks()["keys"][0]["kid"], kid(&token_b));

        let retired = with(b, &[b]).expect("A retired");
        assert_eq!(retired.verify(&token_a, 1_001), Err(TokenError::UnknownKey));
        assert!(retired.verify(&token_b, 1_001).is_ok());
        assert_eq!(retired.kids(), vec![kid(&token_b).as_str()]);
    }

    #[test]
    fn bundles_refuse_private_keys_and_strange_blocks() {
        let mut c = config();
        c.verify_keys = Some(format!("{}{}", public_of([1; 32]), private_pem([2; 32])));
        assert!(format!("{:#}", TokenKeys::load(&c, Path::new("/nonexistent")).expect_err("private key")).contains("private key"));
        c.verify_keys = Some(format!("{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", public_of([1; 32])));
        assert!(TokenKeys::load(&c, Path::new("/nonexistent")).is_err());
        // Explanatory text between blocks, and literal "\n" from env files, are fine.
        c.verify_keys = Some(format!("# previous\n{}# current\n{}", public_of([1; 32]), public_of([2; 32]).replace('\n', "\\n")));
        assert_eq!(TokenKeys::load(&c, Path::new("/nonexistent")).expect("bundle").kids().len(), 2);
    }

    #[test]
    fn embedded_key_is_generated_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("gh-keys-{}", uuid::Uuid::now_v7()));
        assert!(TokenKeys::load_existing(&config(), &dir).expect("nothing yet").is_none());
        let first = TokenKeys::load(&config(), &dir).expect("generate");
        let second = TokenKeys::load(&config(), &dir).expect("reload");
        assert_eq!(first.signing_kid(), second.signing_kid());
        let token = first.sign("a", "s", "n", 1_000).expect("sign");
        assert!(second.verify(&token, 1_000).is_ok());
        let pem = std::fs::read_to_string(dir.join("signing-key.pem")).expect("key file");
        let mut from_env = config();
        from_env.signing_key = Some(Secret::new(pem));
        assert_eq!(TokenKeys::load(&from_env, Path::new("/nonexistent")).expect("env key").signing_kid(), first.signing_kid());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn embedded_rotation_keeps_the_old_key_verifying_until_retired() {
        let dir = std::env::temp_dir().join(format!("gh-keys-{}", uuid::Uuid::now_v7()));
        let before = TokenKeys::load(&config(), &dir).expect("generate");
        let old_token = before.sign("a", "s", "n", 1_000).expect("sign");
        let (old, new) = manage::rotate(&dir).expect("rotate");
        assert_eq!(Some(old.as_str()), before.signing_kid());
        let after = TokenKeys::load(&config(), &dir).expect("reload");
        assert_eq!(after.signing_kid(), Some(new.as_str()));
        assert_eq!(after.kids(), vec![new.as_str(), old.as_str()]);
        assert!(after.verify(&old_token, 1_001).is_ok());
        assert_eq!(kid(&after.sign("a", "s", "n", 1_000).expect("sign")), new);

        assert!(manage::retire(&dir, &new).is_err(), "the signing key cannot be retired");
        manage::retire(&dir, &old).expect("retire");
        assert!(manage::retire(&dir, &old).is_err(), "already gone");
        let retired = TokenKeys::load(&config(), &dir).expect("reload");
        assert_eq!(retired.verify(&old_token, 1_001), Err(TokenError::UnknownKey));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn generated_keys_parse_and_name_their_kid() {
        let (private, kid) = manage::generate().expect("generate");
        let (public, same) = manage::public_of(&private).expect("public half");
        assert_eq!(kid, same);
        let mut c = config();
        c.signing_key = Some(Secret::new(private));
        c.verify_keys = Some(public);
        assert_eq!(TokenKeys::load(&c, Path::new("/nonexistent")).expect("load").signing_kid(), Some(kid.as_str()));
    }

    #[test]
    fn openssl_generated_keys_parse() {
        // `openssl genpkey -algorithm ed25519` output for the RFC 8032 test-1 seed.
        let pem =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
        let key = parse_private_pem(pem).expect("parse");
        // RFC 8032, 7.1, test 1: the public key of that seed.
        assert_eq!(
            key.verifying_key().as_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert!(parse_private_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").is_err());
    }
}
