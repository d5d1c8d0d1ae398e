//! Sessions and their token pairs: a session is opened at sign-in, renewed by exchanging its
//! single-use refresh token, and ended by logout, by deletion, or by a refresh token presented a
//! second time (reuse detection: the token was stolen or replayed, so the whole session goes).
//!
//! A client whose refresh answer was lost on the network retries with the same token. Within
//! `REFRESH_REUSE_GRACE_SECS` of the exchange that retry gets the same new pair rather than ending
//! the session: the successor refresh token is derived from the exchanged token and a stored
//! random salt (HMAC-SHA256 keyed by the token), so it can be given again without being stored,
//! and only a holder of the exchanged token can obtain it; the access token is signed again with
//! the first answer's issue time, which gives the same token (Ed25519 signatures are
//! deterministic). Past the grace, a second presentation ends the session as before.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::ApiError;
use platform::db::{Tx, now_millis};
use sha2::Sha256;

use crate::AccountsState;
use crate::model::TokenPair;
use crate::password::getrandom_fill;
use crate::store;

/// Prefix that makes a leaked refresh token recognisable to secret scanners.
const REFRESH_PREFIX: &str = "ghr_";

/// A refresh token minted inside a transaction, to be turned into a pair after commit.
pub struct Minted {
    session_id: String,
    account_id: String,
    name: String,
    refresh_token: String,
}

/// A session about to be opened (`AccountsState::opening`): what its rows store, and the refresh
/// token only the client gets.
pub struct Opening {
    session_id: String,
    refresh_token: String,
    refresh_hash: String,
    now: i64,
    expires_at: i64,
}

impl Opening {
    /// The values of its session row and refresh token row.
    pub(crate) fn row(&self) -> store::NewSession<'_> {
        store::NewSession { id: &self.session_id, refresh_hash: &self.refresh_hash, now: self.now, expires_at: self.expires_at }
    }

    /// The session, stored for `account`, to be turned into a pair.
    pub(crate) fn minted(self, account: &store::AccountRow) -> Minted {
        Minted {
            session_id: self.session_id,
            account_id: account.id.clone(),
            name: account.public_name().to_owned(),
            refresh_token: self.refresh_token,
        }
    }
}

fn new_refresh_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom_fill(&mut bytes)?;
    Ok(format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// A fresh salt for a successor, as stored (hex).
fn new_successor_salt() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom_fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The refresh token that succeeds `token`: HMAC-SHA256 keyed by `token` over `salt`. Keyed by
/// the exchanged token, which the database never holds, so neither the stored hash nor the salt
/// yields it; 256 bits of pseudo-random output, like a fresh token.
fn successor_token(token: &str, salt: &str) -> anyhow::Result<String> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes()).map_err(|e| anyhow::anyhow!("keying the successor: {e}"))?;
    mac.update(salt.as_bytes());
    Ok(format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())))
}

/// The stored form of a refresh token: its SHA-256 in hex. The token has 256 random bits, so a
/// fast hash is enough (there is nothing to brute-force).
fn hash_refresh_token(token: &str) -> String {
    platform::digest::sha256_hex(token)
}

impl AccountsState {
    fn refresh_ttl_ms(&self) -> i64 {
        i64::try_from(self.refresh_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// A new session's values and its first refresh token, not yet stored.
    pub(crate) fn opening(&self) -> anyhow::Result<Opening> {
        let now = now_millis();
        let refresh_token = new_refresh_token()?;
        Ok(Opening {
            session_id: uuid::Uuid::now_v7().to_string(),
            refresh_hash: hash_refresh_token(&refresh_token),
            refresh_token,
            now,
            expires_at: now.saturating_add(self.refresh_ttl_ms()),
        })
    }

    /// Opens a session for `account` inside `tx`.
    pub(crate) async fn open_session(&self, tx: &mut Tx, account: &store::AccountRow) -> anyhow::Result<Minted> {
        let opening = self.opening()?;
        let row = opening.row();
        store::insert_session(&mut **tx, row.id, &account.id, row.now, row.expires_at).await?;
        store::insert_refresh_token(&mut **tx, row.refresh_hash, row.id, row.now, row.expires_at).await?;
        Ok(opening.minted(account))
    }

    /// Signs the access token of a minted session (after its transaction committed).
    pub(crate) fn pair(&self, minted: Minted) -> anyhow::Result<TokenPair> {
        // Right after a restore the cut-off is the start of the next second (`platform::restore`);
        // a token signed before it would be refused, so it is dated from the cut-off (under a
        // second ahead; no verifier checks `iat` against its clock).
        self.pair_issued_at(minted, now_millis().max(self.auth.tokens_not_before_ms()))
    }

    /// Signs the access token of a minted session as issued at `issued_at_ms`.
    fn pair_issued_at(&self, minted: Minted, issued_at_ms: i64) -> anyhow::Result<TokenPair> {
        let keys = self.auth.keys();
        let access_token = keys.sign(&minted.account_id, &minted.session_id, &minted.name, issued_at_ms / 1000)?;
        // What is left of the access token's life: the whole of it, except on a retried refresh.
        let age = u64::try_from((now_millis() / 1000 - issued_at_ms / 1000).max(0)).unwrap_or(0);
        let expires_in = keys.access_ttl().as_secs().saturating_sub(age);
        Ok(TokenPair { access_token, refresh_token: minted.refresh_token, token_type: "Bearer", expires_in })
    }

    /// Exchanges a refresh token for a new pair; within the grace after its exchange, answers the
    /// same pair again; later, ends the session (the token was used before).
    pub(crate) async fn refresh(&self, token: &str) -> Result<TokenPair, ApiError> {
        let invalid = || ApiError::Unauthenticated { code: "invalid_token", message: "unknown refresh token".into() };
        if !token.starts_with(REFRESH_PREFIX) || token.len() > 128 {
            return Err(invalid());
        }
        let hash = hash_refresh_token(token);
        let now = now_millis();
        let mut tx = self.db.begin().await?;
        let mut row = store::refresh_token(&mut *tx, &hash).await?.ok_or_else(invalid)?;
        if row.session_revoked_at.is_some() {
            return Err(session_ended());
        }
        // A ban ends the account's sessions as it is issued; this refuses one a refresh raced in.
        if let Some(ban) = row.ban.as_ref().filter(|ban| ban.in_force(now)) {
            return Err(crate::api::banned(ban));
        }
        if row.used_at.is_none() {
            if row.expires_at <= now {
                return Err(ApiError::Unauthenticated { code: "token_expired", message: "refresh token expired; sign in again".into() });
            }
            let salt = new_successor_salt()?;
            if store::use_refresh_token(&mut *tx, &hash, now, &salt).await? {
                let expires_at = now.saturating_add(self.refresh_ttl_ms());
                store::touch_session(&mut *tx, &row.session_id, now, expires_at).await?;
                let refresh_token = successor_token(token, &salt)?;
                store::insert_refresh_token(&mut *tx, &hash_refresh_token(&refresh_token), &row.session_id, now, expires_at).await?;
                tx.commit().await?;
                return Ok(self.pair(Minted { session_id: row.session_id, account_id: row.account_id, name: row.name, refresh_token })?);
            }
            // A concurrent request (the same retry, sent twice) exchanged it first and has
            // committed: read what it stored.
            row = store::refresh_token(&mut *tx, &hash).await?.ok_or_else(invalid)?;
        }
        let grace_ms = i64::try_from(self.refresh_reuse_grace.as_millis()).unwrap_or(i64::MAX);
        if let (Some(used_at), Some(salt)) = (row.used_at, row.successor_salt.as_deref())
            && now.saturating_sub(used_at) < grace_ms
            && row.session_revoked_at.is_none()
        {
            tx.rollback().await?;
            tracing::info!(session_id = row.session_id, "refresh retried within the grace; same pair answered");
            let refresh_token = successor_token(token, salt)?;
            let minted = Minted { session_id: row.session_id, account_id: row.account_id, name: row.name, refresh_token };
            return Ok(self.pair_issued_at(minted, used_at)?);
        }
        // Someone holds a copy of a token already exchanged: end the session for both.
        store::revoke_session(&mut *tx, &row.session_id, now, "refresh_token_reused").await?;
        let revoked = self.auth.revoke_sessions(&mut tx, vec![row.session_id.clone()]).await?;
        tx.commit().await?;
        revoked.announce().await;
        tracing::warn!(session_id = row.session_id, account_id = row.account_id, "refresh token reused; session revoked");
        Err(ApiError::Unauthenticated {
            code: "token_reused",
            message: "this refresh token was already used; the session has been ended".into(),
        })
    }

    /// Ends a session everywhere: in the database (no more refreshes, and its revocation kept
    /// for the verifiers) and in the cache (its access tokens fail on every instance).
    pub(crate) async fn end_session(&self, session_id: &str, reason: &str) -> Result<(), ApiError> {
        let mut tx = self.db.begin().await?;
        store::revoke_session(&mut *tx, session_id, now_millis(), reason).await?;
        let revoked = self.auth.revoke_sessions(&mut tx, vec![session_id.to_owned()]).await?;
        tx.commit().await?;
        revoked.announce().await;
        Ok(())
    }
}

fn session_ended() -> ApiError {
    ApiError::Unauthenticated { code: "session_revoked", message: "this session has ended; sign in again".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_random_prefixed_and_hashed() {
        let a = new_refresh_token().expect("token");
        let b = new_refresh_token().expect("token");
        assert!(a.starts_with(REFRESH_PREFIX) && a.len() == 4 + 43);
        assert_ne!(a, b);
        assert_eq!(hash_refresh_token(&a).len(), 64);
        assert_ne!(hash_refresh_token(&a), a);
    }

    #[test]
    fn successors_depend_on_the_token_and_the_salt() {
        let token = new_refresh_token().expect("token");
        let salt = new_successor_salt().expect("salt");
        let next = successor_token(&token, &salt).expect("successor");
        assert!(next.starts_with(REFRESH_PREFIX) && next.len() == 4 + 43, "{next}");
        assert_eq!(next, successor_token(&token, &salt).expect("again"), "the same inputs give the same successor");
        assert_ne!(next, successor_token(&token, &new_successor_salt().expect("salt")).expect("other salt"));
        assert_ne!(next, successor_token(&new_refresh_token().expect("token"), &salt).expect("other token"));
    }
}
