//! Ended sessions, kept where every instance checks them on each request (the cache) and where
//! they survive the loss of the cache's data (the database).
//!
//! The cache holds the set as one sorted set, `session:revocations` (member: session id, score:
//! when the entry may go, Unix ms), with one more member, `~complete`, that says "this set holds
//! every revocation still in force". The per-request check is one command, `ZMSCORE` of both
//! members: no database read while the set is complete. When `~complete` is missing (Redis was
//! flushed, failed over to an empty replica, evicted the key, or the process holding the
//! in-memory cache restarted), the check asks the `session_revocations` table, and one instance
//! loads the table back into the cache and marks it complete again.
//!
//! One key rather than a key per session with a separate sentinel: whatever removes data (a
//! flush, a failover, an eviction under `allkeys-lru`) removes the entries and the marker
//! together, so a marker can never vouch for entries that are gone; and a key without a TTL is
//! not evicted by ElastiCache's default `volatile-lru`, which could drop per-session marks.
//!
//! Revocations are written to the table and to the cache *before* the transaction that ends the
//! session commits (`record` and `add`), so a cache that cannot be written fails the request and
//! leaves nothing half done; the commit then makes it durable. A load that raced a flush is not
//! marked complete: it holds a lease in the cache taken before it read the table, and marks the
//! set complete only if the lease is still there (a flush removes it too).

use std::time::Duration;

use anyhow::Context;
use sqlx::{Any, Executor};

use crate::cache::{Cache, RedisCache};
use crate::db::Database;

/// The sorted set of revoked sessions (under the deployment's key prefix).
pub const REVOCATIONS_KEY: &str = "session:revocations";
/// The member that marks the set complete; never a session id (those are UUIDs).
const COMPLETE: &str = "~complete";
/// The lease of the instance loading the table into the cache.
const LOADING_KEY: &str = "session:revocations:loading";
/// How long a load may hold its lease; one that takes longer is not marked complete.
const LOAD_LEASE: Duration = Duration::from_secs(30);
/// Rows read per query while loading.
const LOAD_PAGE: i64 = 10_000;
/// The most revocations loaded into the cache. Beyond it the set stays incomplete and checks keep
/// reading the table (a logged error: far more sessions end within one token lifetime than any
/// game sees).
const LOAD_MAX: usize = 1_000_000;

/// KEYS: set, lease. ARGV: lease token, now (ms), then score and member pairs. Adds the entries
/// and the completeness marker only while the lease is still ours: a flush since the table was
/// read removed it, and a set loaded then would be missing revocations made in between.
const LOAD_LUA: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZADD', KEYS[1], '+inf', '~complete')
redis.call('DEL', KEYS[2])
return 1
";
static LOAD: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();

/// What the cache says about one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationStatus {
    /// The session is in the cache's set: it has ended.
    pub revoked: bool,
    /// The set is complete: a session missing from it has not ended. When false, only the
    /// database can tell.
    pub complete: bool,
}

impl RevocationStatus {
    /// From the reply of `status_cmd`.
    pub fn from_reply(reply: &[Option<String>]) -> Self {
        RevocationStatus { revoked: reply.first().is_some_and(Option::is_some), complete: reply.get(1).is_some_and(Option::is_some) }
    }
}

/// The Redis command whose reply (`Vec<Option<String>>`, read by `RevocationStatus::from_reply`)
/// tells whether `session_id` ended, for callers that pipeline it with a read of their own.
pub fn status_cmd(redis: &RedisCache, session_id: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("ZMSCORE");
    cmd.arg(redis.key(REVOCATIONS_KEY)).arg(session_id).arg(COMPLETE);
    cmd
}

/// Whether `session_id` ended, as far as the cache knows.
pub async fn status(cache: &Cache, session_id: &str) -> anyhow::Result<RevocationStatus> {
    match cache {
        Cache::Redis(redis) => {
            let mut conn = redis.connection();
            let reply: Vec<Option<String>> = status_cmd(redis, session_id).query_async(&mut conn).await.context("Redis ZMSCORE")?;
            Ok(RevocationStatus::from_reply(&reply))
        }
        Cache::Memory(memory) => {
            Ok(memory.revocations(|set| RevocationStatus { revoked: set.ended.contains_key(session_id), complete: set.complete }))
        }
    }
}

/// Adds ended sessions to the cache's set, each kept until `until_ms`, and drops entries whose
/// time has passed. The set stays incomplete if it was (a session added to a flushed Redis does
/// not make the set whole).
pub async fn add(cache: &Cache, session_ids: &[String], until_ms: i64, now_ms: i64) -> anyhow::Result<()> {
    if session_ids.is_empty() {
        return Ok(());
    }
    match cache {
        Cache::Redis(redis) => {
            let key = redis.key(REVOCATIONS_KEY);
            let mut pipe = redis::pipe();
            let zadd = pipe.cmd("ZADD").arg(&key);
            for session_id in session_ids {
                zadd.arg(until_ms).arg(session_id);
            }
            pipe.ignore().cmd("ZREMRANGEBYSCORE").arg(&key).arg("-inf").arg(now_ms).ignore();
            let mut conn = redis.connection();
            let _: () = pipe.query_async(&mut conn).await.context("Redis ZADD of revoked sessions")?;
            Ok(())
        }
        Cache::Memory(memory) => {
            memory.revocations(|set| {
                set.ended.retain(|_, until| *until > now_ms);
                for session_id in session_ids {
                    set.ended.insert(session_id.clone(), until_ms);
                }
            });
            Ok(())
        }
    }
}

/// Loads every revocation still in force from the table into the cache and marks the set
/// complete. Returns how many were loaded, or `None` when another instance holds the load's
/// lease, or the lease was lost (a flush meanwhile: the next check starts again).
pub async fn load(cache: &Cache, db: &Database, now_ms: i64) -> anyhow::Result<Option<usize>> {
    let token = match cache {
        Cache::Redis(redis) => {
            let token = uuid::Uuid::new_v4().to_string();
            let mut conn = redis.connection();
            let claimed: Option<String> = redis::cmd("SET")
                .arg(redis.key(LOADING_KEY))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOAD_LEASE.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .context("Redis SET of the revocation load's lease")?;
            if claimed.is_none() {
                return Ok(None);
            }
            Some(token)
        }
        Cache::Memory(_) => None,
    };
    let rows = in_force(db, now_ms).await?;
    let loaded = rows.len();
    match (cache, token) {
        (Cache::Redis(redis), Some(token)) => {
            let script = LOAD.get_or_init(|| redis::Script::new(LOAD_LUA));
            let mut invocation = script.key(redis.key(REVOCATIONS_KEY));
            invocation.key(redis.key(LOADING_KEY)).arg(&token).arg(now_ms);
            for (session_id, until) in &rows {
                invocation.arg(*until).arg(session_id);
            }
            let mut conn = redis.connection();
            let done: i64 = invocation.invoke_async(&mut conn).await.context("Redis load of the revoked sessions")?;
            Ok((done == 1).then_some(loaded))
        }
        (Cache::Memory(memory), _) => {
            memory.revocations(|set| {
                set.ended.extend(rows);
                set.complete = true;
            });
            Ok(Some(loaded))
        }
        (Cache::Redis(_), None) => unreachable!("a Redis load holds a lease"),
    }
}

/// Every revocation still in force, `(session id, until ms)`, read a page at a time. Fails past
/// `LOAD_MAX`, leaving the set incomplete.
async fn in_force(db: &Database, now_ms: i64) -> anyhow::Result<Vec<(String, i64)>> {
    let mut rows: Vec<(String, i64)> = Vec::new();
    loop {
        let after = rows.last().map(|(id, _)| id.clone()).unwrap_or_default();
        let page: Vec<(String, i64)> = sqlx::query_as(
            "SELECT session_id, expires_at FROM session_revocations WHERE expires_at > $1 AND session_id > $2 \
             ORDER BY session_id LIMIT $3",
        )
        .bind(now_ms)
        .bind(&after)
        .bind(LOAD_PAGE)
        .fetch_all(db.pool())
        .await
        .context("reading revoked sessions")?;
        let full = page.len() as i64 == LOAD_PAGE;
        rows.extend(page);
        anyhow::ensure!(rows.len() <= LOAD_MAX, "more than {LOAD_MAX} revoked sessions in force; checks read the database");
        if !full {
            return Ok(rows);
        }
    }
}

/// Records, in the caller's transaction, that `session_ids` ended at `now_ms` and that their
/// tokens may live until `until_ms`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db session_revocations.record", skip_all)]
pub async fn record(conn: &mut sqlx::AnyConnection, session_ids: &[String], now_ms: i64, until_ms: i64) -> anyhow::Result<()> {
    for session_id in session_ids {
        sqlx::query(
            "INSERT INTO session_revocations (session_id, revoked_at, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (session_id) DO NOTHING",
        )
        .bind(session_id)
        .bind(now_ms)
        .bind(until_ms)
        .execute(&mut *conn)
        .await
        .context("recording a revoked session")?;
    }
    Ok(())
}

/// Whether the table records `session_id` as ended: the check while the cache cannot vouch.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db session_revocations.recorded", skip_all)]
pub async fn recorded<'e>(db: impl Executor<'e, Database = Any>, session_id: &str) -> anyhow::Result<bool> {
    let found: Option<String> = sqlx::query_scalar("SELECT session_id FROM session_revocations WHERE session_id = $1")
        .bind(session_id)
        .fetch_optional(db)
        .await
        .context("reading a revoked session")?;
    Ok(found.is_some())
}

/// Deletes rows whose sessions' tokens have all expired; how many.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db session_revocations.prune", skip_all)]
pub async fn prune<'e>(db: impl Executor<'e, Database = Any>, now_ms: i64) -> anyhow::Result<u64> {
    let done = sqlx::query("DELETE FROM session_revocations WHERE expires_at <= $1")
        .bind(now_ms)
        .execute(db)
        .await
        .context("pruning revoked sessions")?;
    Ok(done.rows_affected())
}

/// The in-memory cache's set.
#[derive(Debug, Default)]
pub struct MemoryRevocations {
    ended: std::collections::HashMap<String, i64>,
    complete: bool,
}
