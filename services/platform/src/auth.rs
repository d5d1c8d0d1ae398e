//! Who is calling: the `Player` extractor verifies the bearer access token locally with the
//! public keys (no call to the accounts service) and checks the cache for a revoked session, so a
//! logout reaches every instance that shares the cache. When the cache has lost the set of revoked
//! sessions (`crate::revocations`), the check reads the database instead until it is back. Server
//! keys (`Admin`, with their scopes) live in `crate::admin::keys` and are re-exported here;
//! `Caller` takes either.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::cache::Cache;
use crate::db::Database;
use crate::error::ApiError;
use crate::revocations::{self, RevocationStatus};
use crate::tokens::{TokenError, TokenKeys};

/// Verifies access tokens and records revoked sessions. Cheap to clone (one reference count:
/// extractors take it from the state on every request).
#[derive(Clone, Debug)]
pub struct Authenticator(Arc<AuthInner>);

struct AuthInner {
    keys: Arc<TokenKeys>,
    cache: Cache,
    db: Database,
    verified: VerifiedTokens,
    /// Revocations announced in this process, for a cache that cannot publish (memory).
    revoked_here: tokio::sync::broadcast::Sender<String>,
    /// A load of the revocations into the cache is running in this process.
    loading: AtomicBool,
    /// When the last load started, so that a failing one is not retried on every request.
    last_load: std::sync::Mutex<Option<Instant>>,
    /// Access tokens issued before this (Unix milliseconds) are refused: the database went back
    /// to an earlier point (`crate::restore`), so sessions may exist in no table any more.
    not_before: tokio::sync::watch::Sender<i64>,
}

impl std::fmt::Debug for AuthInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("keys", &self.keys).field("cache", &self.cache).finish()
    }
}

/// The Redis pub/sub channel (under the deployment's key prefix) on which `Revoked::announce`
/// tells every instance each ended session's id, so that long-lived connections (chat sockets)
/// end with it at once instead of at their next check.
pub const REVOCATION_CHANNEL: &str = "session:revoked";

/// Loads of the revocations into the cache start at most this often per process.
const LOAD_EVERY: Duration = Duration::from_secs(1);
/// A revocation is kept this long past the access-token lifetime: more than the verifiers' clock
/// leeway (`tokens::LEEWAY_SECS`), so no token of the session can outlive it.
const REVOCATION_MARGIN: Duration = Duration::from_secs(60);

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
    /// An authenticator over `keys`, recording revocations in `cache` and `db`.
    pub fn new(keys: Arc<TokenKeys>, cache: Cache, db: Database) -> Self {
        // Announcements are small and handled at once; a listener that lags this far behind
        // is told so by the channel and falls back to its periodic check.
        let (revoked_here, _) = tokio::sync::broadcast::channel(1024);
        Self(Arc::new(AuthInner {
            keys,
            cache,
            db,
            verified: VerifiedTokens::default(),
            revoked_here,
            loading: AtomicBool::new(false),
            last_load: std::sync::Mutex::new(None),
            not_before: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// Refuses from now on every access token issued before `at_ms` (Unix milliseconds), as
    /// `database_history.tokens_not_before_ms` says (`crate::restore`). Never moves back.
    pub fn set_tokens_not_before(&self, at_ms: i64) {
        self.0.not_before.send_if_modified(|current| {
            let raise = at_ms > *current;
            if raise {
                *current = at_ms;
            }
            raise
        });
    }

    /// The cut-off of `set_tokens_not_before` (Unix milliseconds; 0 when none): a token signed
    /// now must not carry an issue time before it.
    pub fn tokens_not_before_ms(&self) -> i64 {
        *self.0.not_before.borrow()
    }

    /// Follows the cut-off of `set_tokens_not_before`, for long-lived connections (chat sockets).
    pub fn tokens_not_before(&self) -> tokio::sync::watch::Receiver<i64> {
        self.0.not_before.subscribe()
    }

    /// Whether a token issued at `issued_at` (Unix seconds) falls before the cut-off (a whole
    /// second: `crate::restore::after_restore`).
    pub fn issued_before_cutoff(&self, issued_at: i64) -> bool {
        issued_at < *self.0.not_before.borrow() / 1000
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
    /// checked: `confirm`, or `confirm_with_status` after reading the revocation status in a
    /// round trip the caller makes anyway.
    pub fn verify(&self, token: &str) -> Result<Unconfirmed, ApiError> {
        let now = now_secs();
        let claims = match self.0.verified.get(token) {
            Some(claims) if self.0.keys.still_valid(&claims, now) => claims,
            _ => {
                let claims = self.0.keys.verify(token, now).map_err(|err| match err {
                    TokenError::Expired => ApiError::Unauthenticated { code: "token_expired", message: err.to_string() },
                    TokenError::UnknownKey => ApiError::Unauthenticated { code: "unknown_signing_key", message: err.to_string() },
                    other => ApiError::invalid_token(other.to_string()),
                })?;
                self.0.verified.put(token, &claims);
                claims
            }
        };
        if self.issued_before_cutoff(claims.iat) {
            return Err(session_revoked());
        }
        Ok(Unconfirmed {
            expires_at: claims.exp,
            issued_at: claims.iat,
            player: Player { account_id: claims.sub, session_id: claims.sid, name: claims.name },
            writer_slot: None,
        })
    }

    /// Checks whether `unconfirmed`'s session was revoked: one cache read, or, when the cache
    /// cannot vouch for its set of revocations, a database read too.
    pub async fn confirm(&self, unconfirmed: Unconfirmed) -> Result<Player, ApiError> {
        let status = revocations::status(&self.0.cache, &unconfirmed.player.session_id)
            .await
            .map_err(|err| ApiError::Internal(err.context("checking the session's revocation")))?;
        self.confirm_with_status(unconfirmed, status).await
    }

    /// The player, unless `status` (read by the caller, `revocations::status_cmd`) or, when the
    /// cache's set is incomplete, the database says the session was revoked.
    pub async fn confirm_with_status(&self, unconfirmed: Unconfirmed, status: RevocationStatus) -> Result<Player, ApiError> {
        let revoked = status.revoked
            || (!status.complete && self.recorded_revoked(&unconfirmed.player.session_id).await.map_err(ApiError::Internal)?);
        if revoked {
            return Err(session_revoked());
        }
        // A state-changing request: its player's next reads come from the database writer.
        if let Some(slot) = &unconfirmed.writer_slot {
            slot.fill(&unconfirmed.player.account_id);
        }
        Ok(unconfirmed.player)
    }

    /// Ends `session_ids`, inside the transaction `conn` that ends them: records them in the
    /// database and adds them to the cache's set, so that every access token of theirs fails
    /// from now on, on every instance. Called before the commit, so a cache that cannot be
    /// written fails the whole change; the returned `Revoked` announces them after the commit.
    pub async fn revoke_sessions(&self, conn: &mut sqlx::AnyConnection, session_ids: Vec<String>) -> anyhow::Result<Revoked> {
        let now = crate::db::now_millis();
        let lifetime = self.0.keys.access_ttl() + REVOCATION_MARGIN;
        let until = now.saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX));
        revocations::record(conn, &session_ids, now, until).await?;
        revocations::add(&self.0.cache, &session_ids, until, now).await?;
        Ok(Revoked { auth: self.clone(), session_ids })
    }

    /// The session ids revoked in this process from now on, when the cache is in memory (with
    /// Redis, subscribe to `REVOCATION_CHANNEL` instead: revocations come from every instance).
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.0.revoked_here.subscribe()
    }

    /// Whether `session_id` has been revoked: the periodic re-check of a long-lived connection.
    pub async fn is_revoked(&self, session_id: &str) -> anyhow::Result<bool> {
        let status = revocations::status(&self.0.cache, session_id).await.context("checking the session's revocation")?;
        Ok(status.revoked || (!status.complete && self.recorded_revoked(session_id).await?))
    }

    /// The database's answer while the cache's set is incomplete; starts a load of the set into
    /// the cache, so that the next requests are answered by the cache again.
    async fn recorded_revoked(&self, session_id: &str) -> anyhow::Result<bool> {
        self.start_load();
        revocations::recorded(self.0.db.pool(), session_id).await
    }

    /// Loads the revocations into the cache in the background: one load at a time per process,
    /// at most one a `LOAD_EVERY`, and one at a time across instances (the load's lease).
    fn start_load(&self) {
        {
            let mut last = self.0.last_load.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < LOAD_EVERY) || self.0.loading.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        let auth = self.clone();
        tokio::spawn(async move {
            match revocations::load(&auth.0.cache, &auth.0.db, crate::db::now_millis()).await {
                Ok(Some(loaded)) => tracing::info!(loaded, "revoked sessions loaded into the cache from the database"),
                Ok(None) => tracing::debug!("another instance is loading the revoked sessions, or a flush interrupted the load"),
                Err(err) => tracing::warn!(
                    error = format!("{err:#}"),
                    "loading the revoked sessions into the cache failed; checks read the database"
                ),
            }
            auth.0.loading.store(false, Ordering::Release);
        });
    }
}

/// Sessions ended in a transaction that is to commit; `announce` them once it has.
#[must_use = "announce the revoked sessions once the transaction has committed"]
#[derive(Debug)]
pub struct Revoked {
    auth: Authenticator,
    session_ids: Vec<String>,
}

impl Revoked {
    /// Tells every instance (`REVOCATION_CHANNEL` on Redis, `Authenticator::revocations` in
    /// process), so that open sockets of the sessions close within moments rather than at their
    /// next check. Never fails: the cache's set is what enforces the revocation, and listeners
    /// re-check it periodically, so a lost announcement delays a socket's close, it does not
    /// cancel it.
    pub async fn announce(self) {
        let inner = &self.auth.0;
        for session_id in self.session_ids {
            match inner.cache.redis() {
                Some(redis) => {
                    let mut conn = redis.connection();
                    let published: redis::RedisResult<i64> =
                        redis::cmd("PUBLISH").arg(redis.key(REVOCATION_CHANNEL)).arg(&session_id).query_async(&mut conn).await;
                    if let Err(err) = published {
                        tracing::warn!(error = %err, "announcing a revoked session failed; sockets close at their next check");
                    }
                }
                None => {
                    // No receiver (no chat here) is not an error.
                    let _ = inner.revoked_here.send(session_id);
                }
            }
        }
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

impl Caller {
    /// The server key, when a server key calls: whose actions go in the audit log.
    pub fn admin(&self) -> Option<&Admin> {
        match self {
            Caller::Player(_) => None,
            Caller::Server(admin) => Some(admin),
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Authenticator: FromRef<S>,
    AdminKey: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match UnconfirmedCaller::from_request_parts(parts, state).await? {
            UnconfirmedCaller::Server(admin) => Ok(Caller::Server(admin)),
            UnconfirmedCaller::Player(unconfirmed) => Authenticator::from_ref(state).confirm(unconfirmed).await.map(Caller::Player),
        }
    }
}

/// A [`Caller`] whose player's session may have been revoked since the token was issued: for a
/// handler that reads the revocation status pipelined with its own cache call
/// (`Authenticator::confirm_with_status`), as [`Unconfirmed`] is for players alone. A server key
/// is checked in full.
#[derive(Debug)]
pub enum UnconfirmedCaller {
    /// A player whose access token verified; to confirm before anything read is answered or
    /// anything is written.
    Player(Unconfirmed),
    /// A game server or operator with a server key.
    Server(Admin),
}

impl<S> FromRequestParts<S> for UnconfirmedCaller
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
            return Admin::from_request_parts(parts, state).await.map(UnconfirmedCaller::Server);
        }
        Unconfirmed::from_request_parts(parts, state).await.map(UnconfirmedCaller::Player)
    }
}

/// A caller whose access token verified, but whose session may have been revoked since: no
/// player until the revocation status was read (`Authenticator::confirm`, or
/// `Authenticator::confirm_with_status` when a handler read it itself, pipelined with its own
/// cache call to save a round trip).
#[derive(Debug)]
pub struct Unconfirmed {
    player: Player,
    expires_at: i64,
    issued_at: i64,
    /// Where a state-changing request names its player once confirmed (`crate::replica`).
    writer_slot: Option<crate::replica::WriterSlot>,
}

impl Unconfirmed {
    /// The token's account, for a handler's read pipelined with the revocation check. Whatever
    /// it read must not be answered unless `confirm_with_status` then succeeds.
    pub fn account_id(&self) -> &str {
        &self.player.account_id
    }

    /// The name other players see, as of the token's issue.
    pub fn name(&self) -> &str {
        &self.player.name
    }

    /// The token's session, whose revocation status (`revocations::status_cmd`) a handler may
    /// read pipelined with its own cache call.
    pub fn session_id(&self) -> &str {
        &self.player.session_id
    }

    /// When the token expires, Unix seconds (a socket authenticated with it closes then).
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// When the token was issued, Unix seconds (held against a restore's cut-off later).
    pub fn issued_at(&self) -> i64 {
        self.issued_at
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
        let mut unconfirmed = Authenticator::from_ref(state).verify(token)?;
        unconfirmed.writer_slot = parts.extensions.get::<crate::replica::WriterSlot>().cloned();
        Ok(unconfirmed)
    }
}

/// 401 `session_revoked`.
pub fn session_revoked() -> ApiError {
    ApiError::Unauthenticated { code: "session_revoked", message: "this session has ended; sign in again".into() }
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
        // Confirming names a state-changing request's player for `crate::replica`.
        Authenticator::from_ref(state).confirm(unconfirmed).await
    }
}
