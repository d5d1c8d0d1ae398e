//! Sign in with Google: Google's id_token, signed RS256 by a key of
//! `https://www.googleapis.com/oauth2/v3/certs`.
//!
//! Nonce: Google copies the `nonce` the client gives it (Credential Manager's
//! `GetGoogleIdOption.setNonce`, Google Identity Services' `nonce`) into the token unchanged.
//! Guildhall takes the same rule as for Apple: the client gives Google the SHA-256 of a random raw
//! nonce in lowercase hex and sends Guildhall the raw nonce, so a token that leaked carries only
//! the hash and cannot be played again by whoever found it.

use platform::ApiError;
use platform::config::GoogleSettings;

use super::jwt::{self, KeySet, Rules};
use super::{IdTokenProof, Provider};

/// The `iss` values of Google's tokens (both spellings are in use).
const ISSUERS: &[&str] = &["https://accounts.google.com", "accounts.google.com"];

/// Checks Google's id_tokens.
pub struct Google {
    keys: KeySet,
    rules: Rules,
}

impl Google {
    /// A checker for `settings`' client ids.
    pub fn new(settings: &GoogleSettings, client: reqwest::Client) -> Self {
        Self {
            keys: KeySet::new(Provider::Google, &settings.keys_url, client),
            rules: Rules { provider: Provider::Google, issuers: ISSUERS, audiences: settings.client_ids.clone() },
        }
    }

    /// The Google user id (`sub`) the token vouches for, and until when (Unix seconds).
    pub async fn verify(&self, proof: &IdTokenProof) -> Result<(String, i64), ApiError> {
        jwt::check_nonce(&proof.nonce)?;
        let claims = self.keys.verify(&self.rules, &proof.id_token, &proof.nonce, platform::db::now_millis() / 1000).await?;
        Ok((claims.subject, claims.expires_at))
    }
}
