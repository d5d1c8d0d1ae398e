//! Sign in with Apple: Apple's id_token, signed RS256 by a key of `https://appleid.apple.com/auth/keys`.
//!
//! Nonce: the app gives `ASAuthorizationAppleIDRequest.nonce` (or the JS SDK's `nonce`) the
//! SHA-256 of a random raw nonce in lowercase hex, which Apple copies into the token's `nonce`
//! claim; the app sends Guildhall the raw nonce. A token seen in a log or on the wire is then of
//! no use without the raw value, which never left the device before this call.

use platform::ApiError;
use platform::config::AppleSettings;

use super::jwt::{self, KeySet, Rules};
use super::{IdTokenProof, Provider};

/// The `iss` of Apple's tokens.
const ISSUER: &str = "https://appleid.apple.com";

/// Checks Apple's id_tokens.
pub struct Apple {
    keys: KeySet,
    rules: Rules,
}

impl Apple {
    /// A checker for `settings`' client ids.
    pub fn new(settings: &AppleSettings, client: reqwest::Client) -> Self {
        Self {
            keys: KeySet::new(Provider::Apple, &settings.keys_url, client),
            rules: Rules { provider: Provider::Apple, issuers: &[ISSUER], audiences: settings.client_ids.clone() },
        }
    }

    /// The Apple user id (`sub`) the token vouches for, and until when (Unix seconds).
    pub async fn verify(&self, proof: &IdTokenProof) -> Result<(String, i64), ApiError> {
        jwt::check_nonce(&proof.nonce)?;
        let claims = self.keys.verify(&self.rules, &proof.id_token, &proof.nonce, platform::db::now_millis() / 1000).await?;
        Ok((claims.subject, claims.expires_at))
    }
}
