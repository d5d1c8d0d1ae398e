//! Noticing that the database went back to an earlier point (a point-in-time restore, a snapshot
//! restored, a dump loaded), and making Guildhall correct again after it.
//!
//! Redis outlives such a restore: it still holds ranks computed from records the restored
//! database no longer has, and players still hold access tokens of sessions that no table
//! remembers. So the database keeps a history position (`database_history.position`), which
//! every instance advances every `CHECK_EVERY`; the cache remembers the highest it saw
//! (`SEEN_KEY`, raised only after the database committed it). A value in the cache was committed
//! before it was written there, so a database of the same history always holds at least that
//! much; one that holds less was restored. Reading the cache first, then the database, keeps
//! instances advancing at once from being taken for a restore.
//!
//! On a restore (`after_restore`, which `guildhall after-restore` runs too): the history moves
//! past what the cache saw, and `tokens_not_before_ms` becomes now, so that every access token
//! issued before is refused (`crate::auth`): players whose sessions the restored database holds
//! refresh and carry on; those whose sessions came after the restore point (their refresh tokens
//! are gone with it) sign in again. Every instance sees the new cut-off at its next check, applies
//! it to tokens and open sockets, and runs the process's hooks (the leaderboard forgets its rank
//! index, which is rebuilt from the restored records on first use).

use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;

use crate::auth::Authenticator;
use crate::cache::Cache;
use crate::db::{Database, now_millis};
use crate::shutdown::Shutdown;

/// How often each instance advances the history and compares it with the cache's.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// The cache key of the highest history position seen.
pub const SEEN_KEY: &str = "db:history:seen";
/// How long the cache remembers the position: far longer than any outage between two checks.
const SEEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// What the database's history row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// The position, which only grows in one history.
    pub position: i64,
    /// Access tokens issued before this (Unix milliseconds) are refused.
    pub tokens_not_before_ms: i64,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same history, advanced to `History::position`.
    Continuing(History),
    /// The database holds `database`, behind the `seen` the cache remembers: it was restored.
    Restored {
        /// The database's position.
        database: i64,
        /// The highest the cache saw.
        seen: i64,
    },
}

/// Something a process does once the cut-off of a restore reaches it (forget the rank index).
pub type Hook = Box<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// The database's history row (the writer's).
pub async fn history(db: &Database) -> anyhow::Result<History> {
    let (position, tokens_not_before_ms): (i64, i64) =
        sqlx::query_as("SELECT position, tokens_not_before_ms FROM database_history WHERE id = 1")
            .fetch_one(db.pool())
            .await
            .context("reading the database's history")?;
    Ok(History { position, tokens_not_before_ms })
}

/// The highest history position the cache saw, if it remembers one.
pub async fn seen(cache: &Cache) -> anyhow::Result<Option<i64>> {
    Ok(cache.get(SEEN_KEY).await?.and_then(|v| v.parse().ok()))
}

/// Compares without changing anything (`guildhall restore-check`).
pub async fn compare(db: &Database, cache: &Cache) -> anyhow::Result<(History, Option<i64>)> {
    let seen = seen(cache).await?;
    Ok((history(db).await?, seen))
}

/// One check: a restore when the database is behind what the cache saw; else advances the
/// history and raises what the cache saw to it.
pub async fn check(db: &Database, cache: &Cache) -> anyhow::Result<Verdict> {
    // The cache first (see the module's documentation).
    let seen = seen(cache).await?;
    let now = history(db).await?;
    if let Some(seen) = seen
        && now.position < seen
    {
        return Ok(Verdict::Restored { database: now.position, seen });
    }
    let (position, tokens_not_before_ms): (i64, i64) =
        sqlx::query_as("UPDATE database_history SET position = position + 1 WHERE id = 1 RETURNING position, tokens_not_before_ms")
            .fetch_one(db.pool())
            .await
            .context("advancing the database's history")?;
    raise_seen(cache, position).await?;
    Ok(Verdict::Continuing(History { position, tokens_not_before_ms }))
}

/// Raises the cache's position to `position` unless it holds a higher one already.
async fn raise_seen(cache: &Cache, position: i64) -> anyhow::Result<()> {
    match cache.redis() {
        Some(redis) => {
            let script = redis::Script::new(
                "local v = tonumber(redis.call('GET', KEYS[1]) or '-1') if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end return 1",
            );
            let mut conn = redis.connection();
            let ttl = u64::try_from(SEEN_TTL.as_millis()).unwrap_or(u64::MAX);
            let _: i64 =
                script.key(redis.key(SEEN_KEY)).arg(position).arg(ttl).invoke_async(&mut conn).await.context("raising the history seen")?;
            Ok(())
        }
        // One process: nobody else raises it between the read and the write.
        None => {
            if seen(cache).await?.is_none_or(|seen| seen < position) {
                cache.set_ex(SEEN_KEY, &position.to_string(), SEEN_TTL).await?;
            }
            Ok(())
        }
    }
}

/// Makes the restored database the history from now on: its position moves past `seen` (what
/// the cache saw, if known), and access tokens issued until the end of this second are refused. Returns the new
/// row. Idempotent enough to run on several instances at once, or by hand after the watchers.
pub async fn after_restore(db: &Database, cache: &Cache) -> anyhow::Result<History> {
    let seen = seen(cache).await?.unwrap_or(0);
    let (position, tokens_not_before_ms): (i64, i64) = sqlx::query_as(
        "UPDATE database_history SET position = (CASE WHEN position < $1 THEN $1 ELSE position END) + 1, \
         tokens_not_before_ms = CASE WHEN tokens_not_before_ms < $2 THEN $2 ELSE tokens_not_before_ms END \
         WHERE id = 1 RETURNING position, tokens_not_before_ms",
    )
    .bind(seen)
    // The start of the next second: tokens carry their issue time in whole seconds, so every
    // token of the current second is refused, those issued before the restore was noticed among
    // them. Tokens signed once the cut-off is known are dated from it (accounts' `pair`).
    .bind((now_millis() / 1000 + 1) * 1000)
    .fetch_one(db.pool())
    .await
    .context("starting the database's history again")?;
    cache.set_ex(SEEN_KEY, &position.to_string(), SEEN_TTL).await?;
    Ok(History { position, tokens_not_before_ms })
}

/// Checks every `every` until shutdown; on a restore, runs `after_restore`. Whenever the
/// database's cut-off rises (here or on another instance), applies it to `auth` and runs
/// `hooks`. The first check only loads the cut-off (a process starting after a restore was
/// handled must not run the hooks again).
pub async fn run_watch(
    db: Database,
    cache: Cache,
    auth: Authenticator,
    hooks: std::sync::Arc<Vec<Hook>>,
    every: Duration,
    shutdown: Shutdown,
) {
    let mut cutoff: Option<i64> = None;
    loop {
        let verdict = check(&db, &cache).await;
        let restored = matches!(verdict, Ok(Verdict::Restored { .. }));
        let outcome = match verdict {
            Ok(Verdict::Continuing(history)) => Ok(history),
            Ok(Verdict::Restored { database, seen }) => {
                tracing::error!(
                    database,
                    seen,
                    "the database is behind the history the cache saw: it was restored to an earlier point; ending the sessions issued before now and rebuilding the rank index"
                );
                after_restore(&db, &cache).await
            }
            Err(err) => Err(err),
        };
        match outcome {
            Ok(history) => {
                auth.set_tokens_not_before(history.tokens_not_before_ms);
                if restored || cutoff.is_some_and(|known| history.tokens_not_before_ms > known) {
                    for hook in hooks.iter() {
                        if let Err(err) = hook().await {
                            tracing::error!(
                                error = format!("{err:#}"),
                                "a step after the database's restore failed; run `guildhall after-restore`"
                            );
                        }
                    }
                }
                cutoff = Some(history.tokens_not_before_ms);
            }
            Err(err) => tracing::debug!(error = format!("{err:#}"), "checking the database's history failed"),
        }
        tokio::select! {
            () = shutdown.stopped() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
