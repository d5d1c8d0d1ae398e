//! Who is calling: the `Player` extractor verifies the bearer access token locally with the
//! public key (no call to the accounts service) and checks the cache for a revoked session, so a
//! logout reaches every instance that shares the cache. Server keys (`Admin`, with their scopes)
//! live in `crate::admin::keys` and are re-exported here; `Caller` takes either.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::cache::Cache;
use crate::error::ApiError;
use crate::tokens::{TokenError, TokenKeys};

/// Verifies access tokens and records revoked sessions. Cheap to clone (one reference count:
/// extractors take it from the state on every request).
#[derive(Clone, Debug)]
pub struct Authenticator(Arc<AuthInner>);

#[derive(Debug)]
struct AuthInner {
    keys: Arc<TokenKeys>,
    cache: Cache,
    verified: VerifiedTokens,
    /// Revocations announced in this process, for a cache that cannot publish (memory).
    revoked_here: tokio::sync::broadcast::Sender<String>,
}

/// The Redis pub/sub channel (under the deployment's key prefix) on which `revoke_session`
/// announces each ended session's id, so that long-lived connections (chat sockets) on every
/// instance end with it at once instead of at their next check.
pub const REVOCATION_CHANNEL: &str = "session:revoked";

/// Tokens whose signature already verified, with their claims: a player sends the same token for
/// up to 15 minutes, and an Ed25519 verification costs tens of microseconds of CPU on every
/// request. Expiry and revocation are still checked on every use. Bounded: when full it is
/// emptied (cheaper than LRU bookkeeping, and refilled within a second under load).
#[derive(Debug, Default)]
struct VerifiedTokens(std::sync::Mutex<std::collections::HashMap<String, crate::tokens::Claims>>);

/// Most tokens remembered at once (about 400 bytes each).
const VERIFIED_CAPACITY: usize = 50_000;

impl VerifiedTokens {
    fn get(&self, token: &str) -> Option<crate::tokens::Claims> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(token).cloned()
    }

    fn put(&self, token: &str, claims: &crate::tokens::Claims) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= VERIFIED_CAPACITY {
            map.clear();
        }
        map.insert(token.to_owned(), claims.clone());
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Player {
    /// The account the token was issued to.
    pub account_id: String,
    /// The session the token belongs to.
    pub session_id: String,
    /// The name other players see, as of the token's issue.
    pub name: String,
}

impl Authenticator {
    /// An authenticator over `keys`, recording revocations in `cache`.
    pub fn new(keys: Arc<TokenKeys>, cache: Cache) -> Self {
        // Announcements are small and handled at once; a listener that lags this far behind
        // is told so by the channel and falls back to its periodic check.
        let (revoked_here, _) = tokio::sync::broadcast::channel(1024);
        Self(Arc::new(AuthInner { keys, cache, verified: VerifiedTokens::default(), revoked_here }))
    }

    /// The token keys, for services that sign (accounts) or publish the JWKS.
    pub fn keys(&self) -> &Arc<TokenKeys> {
        &self.0.keys
    }

    /// Verifies `token` and refuses it when its session has been revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Player, ApiError> {
        self.confirm(self.verify(token)?).await
    }

    /// Verifies `token`'s signature and expiry (no I/O). Its session's revocation is still to be
    /// checked: `confirm`, or `Unconfirmed::confirm_with` after reading the revocation mark in a
    /// round trip the caller makes anyway.
    pub fn verify(&self, token: &str) -> Result<Unconfirmed, ApiError> {
        let now = now_secs();
        let claims = match self.0.verified.get(token) {
            Some(claims) if self.0.keys.still_valid(&claims, now) => claims,
            _ => {
                let claims = self.0.keys.verify(token, now).map_err(|err| match err {
                    TokenError::Expired => ApiError::Unauthenticated { code: "token_expired", message: err.to_string() },
                    other => ApiError::invalid_token(other.to_string()),
                })?;
                self.0.verified.put(token, &claims);
                claims
            }
        };
        Ok(Unconfirmed {
            revocation_key: revoked_key(&claims.sid),
            expires_at: claims.exp,
            player: Player { account_id: claims.sub, session_id: claims.sid, name: claims.name },
        })
    }

    /// Checks the cache for `unconfirmed`'s session's revocation mark.
    pub async fn confirm(&self, unconfirmed: Unconfirmed) -> Result<Player, ApiError> {
        let revoked = self
            .0
            .cache
            .exists(&unconfirmed.revocation_key)
            .await
            .map_err(|err| ApiError::Internal(err.context("checking the session's revocation")))?;
        unconfirmed.confirm_with(revoked)
    }

    /// Makes every access token of `session_id` fail from now on, on every instance that shares
    /// the cache. The mark lives as long as the longest-lived token it must stop.
    /// Then announces it (`REVOCATION_CHANNEL` on Redis, `revocations` in process), so that
    /// open sockets of the session close within moments rather than at their next check.
    pub async fn revoke_session(&self, session_id: &str) -> anyhow::Result<()> {
        let ttl = self.0.keys.access_ttl() + Duration::from_secs(60);
        self.0.cache.set_ex(&revoked_key(session_id), "1", ttl).await?;
        match self.0.cache.redis() {
            Some(redis) => {
                let mut conn = redis.connection();
                let published: redis::RedisResult<i64> =
                    redis::cmd("PUBLISH").arg(redis.key(REVOCATION_CHANNEL)).arg(session_id).query_async(&mut conn).await;
                // The mark is what enforces the revocation; the announcement only hurries it.
                // Listeners re-check the marks of their sessions periodically, so a lost one
                // delays a socket's close, it does not cancel it.
                if let Err(err) = published {
                    tracing::warn!(error = %err, "announcing a revoked session failed; sockets close at their next check");
                }
            }
            None => {
                // No receiver (no chat here) is not an error.
                let _ = self.0.revoked_here.send(session_id.to_owned());
            }
        }
        Ok(())
    }

    /// The session ids revoked in this process from now on, when the cache is in memory (with
    /// Redis, subscribe to `REVOCATION_CHANNEL` instead: revocations come from every instance).
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.0.revoked_here.subscribe()
    }

    /// Whether `session_id` has been revoked: the periodic re-check of a long-lived connection.
    pub async fn is_revoked(&self, session_id: &str) -> anyhow::Result<bool> {
        self.0.cache.exists(&revoked_key(session_id)).await.context("checking the session's revocation")
    }
}

pub use crate::admin::keys::{Admin, AdminKey, Scope, Scopes};

/// Whoever calls an endpoint that both players and game servers use.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A player with an access token.
    Player(Player),
    /// A game server or operator with a server key; a handler acting for a player requires
    /// `Scope::GameServer` of it (`Admin::require`).
    Server(Admin),
}

impl<S> FromRequestParts<S> for Caller
where
    Authenticator: FromRef<S>,
    AdminKey: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // A server key is the bootstrap key or shaped as a named one (`ghk_…`); anything else is
        // taken for an access token.
        if bearer_token(parts).is_some_and(|token| AdminKey::from_ref(state).is_server_key(token)) {
            return Admin::from_request_parts(parts, state).await.map(Caller::Server);
        }
        Player::from_request_parts(parts, state).await.map(Caller::Player)
    }
}

/// A caller whose access token verified, but whose session may have been revoked since: no
/// player until the revocation mark was read (`Authenticator::confirm`, or `confirm_with` when a
/// handler read it itself, pipelined with its own cache call to save a round trip).
#[derive(Debug)]
pub struct Unconfirmed {
    player: Player,
    revocation_key: String,
    expires_at: i64,
}

impl Unconfirmed {
    /// The token's account, for a handler's read pipelined with the revocation check. Whatever
    /// it read must not be answered unless `confirm_with` then succeeds.
    pub fn account_id(&self) -> &str {
        &self.player.account_id
    }

    /// The cache key (without the deployment's prefix) whose presence means the session ended.
    pub fn revocation_key(&self) -> &str {
        &self.revocation_key
    }

    /// When the token expires, Unix seconds (a socket authenticated with it closes then).
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// The player, unless `revoked`.
    pub fn confirm_with(self, revoked: bool) -> Result<Player, ApiError> {
        if revoked {
            return Err(session_revoked());
        }
        Ok(self.player)
    }
}

impl<S> FromRequestParts<S> for Unconfirmed
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts).ok_or_else(|| ApiError::Unauthenticated {
            code: "missing_token",
            message: "send the access token as `Authorization: Bearer <token>`".into(),
        })?;
        Authenticator::from_ref(state).verify(token)
    }
}

/// 401 `session_revoked`.
pub fn session_revoked() -> ApiError {
    ApiError::Unauthenticated { code: "session_revoked", message: "this session has ended; sign in again".into() }
}

fn revoked_key(session_id: &str) -> String {
    format!("session:revoked:{session_id}")
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    crate::db::now_millis() / 1000
}

/// The bearer token of a request, if it has an `Authorization: Bearer ...` header.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl<S> FromRequestParts<S> for Player
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let unconfirmed = Unconfirmed::from_request_parts(parts, state).await?;
        Authenticator::from_ref(state).confirm(unconfirmed).await
    }
}
