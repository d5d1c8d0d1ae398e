//! Access tokens: JWTs signed with Ed25519 (`alg: EdDSA`, RFC 8037) and a `kid`, which every
//! service verifies with the public key alone, and the JWKS document that publishes that key.
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
const LEEWAY_SECS: i64 = 30;

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
    /// Signed by a key this service does not know.
    #[error("token signed by an unknown key")]
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

/// The key pair (or, on a service that only verifies, the public key) and token settings.
pub struct TokenKeys {
    signing: Option<SigningKey>,
    verifying: VerifyingKey,
    kid: String,
    issuer: String,
    access_ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys").field("kid", &self.kid).field("can_sign", &self.signing.is_some()).finish()
    }
}

impl TokenKeys {
    /// Loads the keys the configuration names. Without any, on embedded defaults, a signing key
    /// is generated once and kept in `data_dir/signing-key.pem` (mode 0600) so tokens survive a
    /// restart.
    pub fn load(config: &TokenConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let signing = match (&config.signing_key, &config.verify_key) {
            (Some(pem), _) => Some(parse_private_pem(pem.expose()).context("reading TOKEN_SIGNING_KEY")?),
            (None, Some(_)) => None,
            (None, None) => Some(load_or_generate(&data_dir.join("signing-key.pem"))?),
        };
        let verifying = match (&signing, &config.verify_key) {
            (Some(key), _) => key.verifying_key(),
            (None, Some(pem)) => parse_public_pem(pem).context("reading TOKEN_VERIFY_KEY")?,
            (None, None) => unreachable!("a signing key was loaded or generated above"),
        };
        if let (Some(key), Some(pem)) = (&signing, &config.verify_key)
            && parse_public_pem(pem).context("reading TOKEN_VERIFY_KEY")? != key.verifying_key()
        {
            bail!("TOKEN_VERIFY_KEY is not the public half of TOKEN_SIGNING_KEY");
        }
        Ok(Self::from_parts(signing, verifying, config))
    }

    /// Keys from a given signing key (tests, tools).
    pub fn from_signing_key(seed: [u8; 32], config: &TokenConfig) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let verifying = signing.verifying_key();
        Self::from_parts(Some(signing), verifying, config)
    }

    fn from_parts(signing: Option<SigningKey>, verifying: VerifyingKey, config: &TokenConfig) -> Self {
        let digest = Sha256::digest(verifying.as_bytes());
        let kid = URL_SAFE_NO_PAD.encode(&digest[..12]);
        TokenKeys { signing, verifying, kid, issuer: config.issuer.clone(), access_ttl: config.access_ttl }
    }

    /// The key id written in every token's header and in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Lifetime of the access tokens this service signs.
    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// Signs an access token for `account_id`, shown as `name`, in `session_id`, valid from `now`
    /// (Unix seconds).
    pub fn sign(&self, account_id: &str, session_id: &str, name: &str, now: i64) -> anyhow::Result<String> {
        let key = self.signing.as_ref().context("this instance has only TOKEN_VERIFY_KEY and cannot sign tokens")?;
        let ttl = i64::try_from(self.access_ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: account_id.to_owned(),
            sid: session_id.to_owned(),
            name: name.to_owned(),
            iat: now,
            exp: now.saturating_add(ttl),
        };
        let header = Header { alg: "EdDSA".into(), typ: Some("JWT".into()), kid: self.kid.clone() };
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?), URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?));
        let signature = key.sign(signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes())))
    }

    /// Verifies `token` at `now` (Unix seconds) and returns its claims.
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
        if header.kid != self.kid {
            return Err(TokenError::UnknownKey);
        }
        let signature = Signature::from_slice(&decode(signature)?).map_err(|_| TokenError::Malformed)?;
        let signing_input_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
        self.verifying.verify_strict(&token.as_bytes()[..signing_input_len], &signature).map_err(|_| TokenError::BadSignature)?;
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

    /// The public key as a JSON Web Key Set (RFC 7517, OKP key per RFC 8037).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": self.kid,
                "x": URL_SAFE_NO_PAD.encode(self.verifying.as_bytes()),
            }]
        })
    }

    /// The public key as SPKI PEM, the form `TOKEN_VERIFY_KEY` takes.
    pub fn public_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.verifying.as_bytes());
        pem("PUBLIC KEY", &der)
    }
}

fn load_or_generate(path: &Path) -> anyhow::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(pem) => parse_private_pem(&pem).with_context(|| format!("reading {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a signing key: {e}"))?;
            let mut der = PKCS8_PREFIX.to_vec();
            der.extend_from_slice(&seed);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            write_private(path, &pem("PRIVATE KEY", &der))?;
            tracing::info!(path = %path.display(), "generated a token signing key for embedded mode");
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config() -> TokenConfig {
        TokenConfig {
            signing_key: None,
            verify_key: None,
            issuer: "guildhall".into(),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(3600),
        }
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
        let mut verify_config = config();
        verify_config.verify_key = Some(signer.public_pem());
        let verifier = TokenKeys::load(&verify_config, Path::new("/nonexistent")).expect("load public key");
        let token = signer.sign("acct", "sess", "n", 1_000).expect("sign");
        assert_eq!(verifier.verify(&token, 1_001).expect("verify").sub, "acct");
        assert!(verifier.sign("acct", "sess", "n", 1_000).is_err());
        assert_eq!(verifier.jwks(), signer.jwks());
    }

    #[test]
    fn embedded_key_is_generated_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("gh-keys-{}", uuid::Uuid::now_v7()));
        let first = TokenKeys::load(&config(), &dir).expect("generate");
        let second = TokenKeys::load(&config(), &dir).expect("reload");
        assert_eq!(first.kid(), second.kid());
        let token = first.sign("a", "s", "n", 1_000).expect("sign");
        assert!(second.verify(&token, 1_000).is_ok());
        let pem = std::fs::read_to_string(dir.join("signing-key.pem")).expect("key file");
        let mut from_env = config();
        from_env.signing_key = Some(Secret::new(pem));
        assert_eq!(TokenKeys::load(&from_env, Path::new("/nonexistent")).expect("env key").kid(), first.kid());
        let _ = std::fs::remove_dir_all(dir);
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
