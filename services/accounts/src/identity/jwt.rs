//! OpenID Connect id_tokens signed RS256 (Apple, Google): the signature checked with `ring`
//! against the provider's published JSON Web Key Set, then the claims.
//!
//! The key set is fetched on first use and kept; it is fetched again when it is older than
//! `KEYS_MAX_AGE` (providers rotate keys over days, publishing the new one before signing with
//! it), and when a token names a `kid` the set lacks, at most once a `UNKNOWN_KID_REFETCH`, so
//! that tokens with made-up kids cannot make Guildhall hammer the provider. When a fetch fails,
//! the keys already held go on verifying.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::ApiError;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::{Provider, provider_down, refused};

/// How long a fetched key set is used before it is fetched again.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The least time between two fetches caused by unknown kids.
const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(60);
/// Clock difference allowed on `exp` and `iat`.
const LEEWAY_SECS: i64 = 60;
/// The longest id_token taken; real ones are 1-2 KiB.
const MAX_TOKEN_CHARS: usize = 8192;

/// What an id_token must be to be taken.
pub struct Rules {
    /// Which provider (for messages and logs).
    pub provider: Provider,
    /// `iss` values accepted.
    pub issuers: &'static [&'static str],
    /// `aud` values accepted: the configured client ids.
    pub audiences: Vec<String>,
}

/// The claims of a verified token Guildhall uses.
#[derive(Debug)]
pub struct Claims {
    /// The provider's stable id of the player.
    pub subject: String,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims {
    iss: String,
    aud: Audience,
    sub: String,
    exp: i64,
    iat: i64,
    nonce: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(default)]
    n: String,
    #[serde(default)]
    e: String,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
}

/// An RSA public key as (n, e), big-endian.
#[derive(Clone)]
struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

#[derive(Default)]
struct Held {
    keys: HashMap<String, RsaKey>,
    fetched_at: Option<Instant>,
}

/// A provider's key set, fetched from `url` and kept.
pub struct KeySet {
    provider: Provider,
    url: String,
    client: reqwest::Client,
    held: RwLock<Held>,
    /// One fetch at a time: concurrent sign-ins that need one wait for it.
    fetching: Mutex<()>,
}

impl KeySet {
    /// The key set published at `url`; nothing is fetched until a token needs it.
    pub fn new(provider: Provider, url: &str, client: reqwest::Client) -> Self {
        Self { provider, url: url.to_owned(), client, held: RwLock::default(), fetching: Mutex::new(()) }
    }

    /// The key `kid`: from the held set when it is fresh and has it, else after a fetch (see the
    /// module's comment). `Ok(None)`: the provider does not publish such a key.
    async fn key(&self, kid: &str) -> Result<Option<RsaKey>, ApiError> {
        let fresh = |held: &Held| held.fetched_at.is_some_and(|at| at.elapsed() < KEYS_MAX_AGE);
        {
            let held = self.held.read().await;
            if let Some(key) = held.keys.get(kid).filter(|_| fresh(&held)) {
                return Ok(Some(key.clone()));
            }
        }
        let _one_at_a_time = self.fetching.lock().await;
        let (stale, recently) = {
            let held = self.held.read().await;
            if let Some(key) = held.keys.get(kid).filter(|_| fresh(&held)) {
                return Ok(Some(key.clone()));
            }
            (held.keys.get(kid).cloned(), held.fetched_at.is_some_and(|at| at.elapsed() < UNKNOWN_KID_REFETCH))
        };
        if recently {
            // Fetched under a minute ago and still without this kid: not the provider's.
            return Ok(stale);
        }
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(provider = %self.provider, keys = keys.len(), "identity provider keys fetched");
                let key = keys.get(kid).cloned();
                *self.held.write().await = Held { keys, fetched_at: Some(Instant::now()) };
                Ok(key)
            }
            // The keys held go on verifying until the provider answers again.
            Err(err) if stale.is_some() => {
                tracing::warn!(provider = %self.provider, error = err, "refreshing identity provider keys failed; using those held");
                Ok(stale)
            }
            Err(err) => Err(provider_down(self.provider, format!("fetching {}: {err}", self.url))),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, RsaKey>, String> {
        let response = self.client.get(&self.url).send().await.map_err(|e| format!("request failed: {e}"))?;
        let (status, jwks) = super::http::json::<Jwks>(response).await?;
        if status != 200 {
            return Err(format!("status {status}"));
        }
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok().filter(|b| !b.is_empty());
        let keys: HashMap<String, RsaKey> = jwks
            .keys
            .into_iter()
            .filter(|k| k.kty == "RSA" && k.usage.as_deref().is_none_or(|u| u == "sig") && k.alg.as_deref().is_none_or(|a| a == "RS256"))
            .filter_map(|k| Some((k.kid?, RsaKey { n: decode(&k.n)?, e: decode(&k.e)? })))
            .collect();
        if keys.is_empty() {
            return Err("no RS256 signing key in the set".into());
        }
        Ok(keys)
    }

    /// Verifies `token` by `rules` and that its `nonce` claim is the SHA-256 (lowercase hex) of
    /// `raw_nonce`; its claims when all holds, 401 `invalid_provider_token` when not.
    pub async fn verify(&self, rules: &Rules, token: &str, raw_nonce: &str, now_secs: i64) -> Result<Claims, ApiError> {
        let no = |why: &str| refused(rules.provider, why);
        if token.len() > MAX_TOKEN_CHARS {
            return Err(no("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(no("not a JWS compact token"));
        };
        let header: Header = decode_json(header_b64).ok_or_else(|| no("unreadable header"))?;
        if header.alg != "RS256" {
            return Err(no("not signed RS256"));
        }
        let kid = header.kid.ok_or_else(|| no("no key id"))?;
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| no("unreadable signature"))?;
        let key = self.key(&kid).await?.ok_or_else(|| no("signed by a key the provider does not publish"))?;
        let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
        RsaPublicKeyComponents { n: &key.n, e: &key.e }
            .verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &signature)
            .map_err(|_| no("bad signature"))?;

        let claims: RawClaims = decode_json(claims_b64).ok_or_else(|| no("unreadable claims"))?;
        if !rules.issuers.contains(&claims.iss.as_str()) {
            return Err(no("issued by someone else"));
        }
        let audience_ok = match &claims.aud {
            Audience::One(aud) => rules.audiences.contains(aud),
            Audience::Many(auds) => !auds.is_empty() && auds.iter().all(|aud| rules.audiences.contains(aud)),
        };
        if !audience_ok {
            return Err(no("issued for another app"));
        }
        if claims.exp + LEEWAY_SECS <= now_secs {
            return Err(no("expired"));
        }
        if claims.iat - LEEWAY_SECS > now_secs {
            return Err(no("issued in the future"));
        }
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(no("no subject"));
        }
        let expected = platform::digest::sha256_hex(raw_nonce);
        if claims.nonce.as_deref() != Some(expected.as_str()) {
            return Err(no("nonce does not match"));
        }
        Ok(Claims { subject: claims.sub, expires_at: claims.exp })
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// Validates a raw nonce: 16 to 128 printable ASCII characters.
pub fn check_nonce(nonce: &str) -> Result<(), ApiError> {
    if !(16..=128).contains(&nonce.len()) || !nonce.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Err(ApiError::invalid("nonce", "nonce must be 16 to 128 printable ASCII characters, no spaces"));
    }
    Ok(())
}
