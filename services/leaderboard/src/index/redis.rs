//! The Redis index: a sorted set per board season whose members all score 0, so that they order
//! by the sort key's bytes, beside hashes of each owner's current key and display data. Keys share
//! a hash tag per board season, so the scripts (`super::scripts`) also run on a cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use platform::cache::RedisCache;
use redis::{Script, ScriptInvocation, Value};

use super::scripts::*;
use super::{Correction, Entry, Found, NotReady, Ranked, RebuildLock, Scope};

/// How long one instance may hold the rebuild of a board season before another may take over.
const REBUILD_LOCK_MS: u64 = 60_000;
/// Entries written per round trip while installing.
const INSTALL_BATCH: usize = 1000;

/// A session's revocation status, and the owner's rank (see `rank_of_unless_revoked`).
pub type RankAndRevocation = (platform::revocations::RevocationStatus, Result<Option<Ranked>, NotReady>);

/// The Redis index. Keys share a hash tag per board season, so the scripts also run on a cluster.
#[derive(Clone)]
pub struct RedisIndex {
    redis: RedisCache,
    keys: Arc<KeyCache>,
}

/// Each board's keys for the season last asked for (the live one, on the hot paths), built once
/// rather than formatted on every call (they showed in profiles of the rank read). Asking for
/// another season (erasure from an archive) replaces the entry; the next call builds it again.
#[derive(Default)]
struct KeyCache(Mutex<HashMap<String, (i64, Arc<Keys>)>>);

/// Boards whose keys are kept; past it the cache starts over.
const KEY_CACHE_BOARDS: usize = 10_000;

impl KeyCache {
    pub(super) fn get(&self, redis: &RedisCache, scope: Scope<'_>) -> Arc<Keys> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((season, keys)) = map.get(scope.board)
            && *season == scope.season
        {
            return keys.clone();
        }
        let made = Arc::new(keys(redis, scope));
        if map.len() >= KEY_CACHE_BOARDS {
            map.clear();
        }
        map.insert(scope.board.to_owned(), (scope.season, made.clone()));
        made
    }
}

struct Keys {
    zset: String,
    owners: String,
    data: String,
    ready: String,
    lock: String,
}

impl Keys {
    /// `script` prepared on the board season's four keys, as most scripts take them: zset,
    /// owners, data, ready.
    fn board(&self, script: &'static Script) -> ScriptInvocation<'static> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.zset).key(&self.owners).key(&self.data).key(&self.ready);
        invocation
    }
}

fn keys(redis: &RedisCache, scope: Scope<'_>) -> Keys {
    let base = redis.key(&format!("lb:{{{}:{}}}", scope.board, scope.season));
    Keys {
        zset: format!("{base}:z"),
        owners: format!("{base}:k"),
        data: format!("{base}:d"),
        ready: format!("{base}:ready"),
        lock: format!("{base}:lock"),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

impl RedisIndex {
    /// The index on `redis`.
    pub(super) fn new(redis: RedisCache) -> Self {
        RedisIndex { redis, keys: Arc::default() }
    }

    pub(super) async fn upsert_all(&self, scope: Scope<'_>, entries: &[Entry]) -> anyhow::Result<Result<Vec<u64>, NotReady>> {
        if entries.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let k = self.keys.get(&self.redis, scope);
        let mut invocation = k.board(script(&UPSERT_SCRIPT, UPSERT));
        for entry in entries {
            invocation.arg(&entry.owner_id).arg(entry.version).arg(&entry.key).arg(&entry.data);
        }
        let mut conn = self.redis.connection();
        let reply: Value = invocation.invoke_async(&mut conn).await.context("Redis leaderboard upsert")?;
        match reply {
            Value::Int(-1) => Ok(Err(NotReady)),
            Value::Array(ranks) if ranks.len() == entries.len() => ranks
                .iter()
                .map(|rank| int(rank).and_then(|r| u64::try_from(r).ok()).map(|r| r + 1))
                .collect::<Option<Vec<u64>>>()
                .map(Ok)
                .context("unexpected reply to the Redis leaderboard upsert"),
            other => anyhow::bail!("unexpected reply to the Redis leaderboard upsert: {other:?}"),
        }
    }

    pub(super) async fn rank_of(&self, scope: Scope<'_>, owner_id: &str) -> anyhow::Result<Result<Option<Ranked>, NotReady>> {
        self.ranked(scope, script(&RANK_OF_SCRIPT, RANK_OF), &[owner_id]).await.context("Redis leaderboard rank")
    }

    /// Runs `script` (one that answers as `ranked_reply` reads) on the board season's four keys
    /// with `args`.
    async fn ranked(&self, scope: Scope<'_>, script: &'static Script, args: &[&str]) -> anyhow::Result<Result<Option<Ranked>, NotReady>> {
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let mut invocation = k.board(script);
        invocation.arg(args);
        let reply: Vec<Value> = invocation.invoke_async(&mut conn).await?;
        Self::ranked_reply(reply)
    }

    /// The session's revocation status and the rank script, pipelined: one round trip. (Not one
    /// script: the revocations live in another hash slot than the board's keys.)
    pub(super) async fn rank_of_unless_revoked(
        &self,
        scope: Scope<'_>,
        owner_id: &str,
        session_id: &str,
    ) -> anyhow::Result<RankAndRevocation> {
        self.ranked_unless_revoked(scope, script(&RANK_OF_SCRIPT, RANK_OF), &[owner_id], session_id).await
    }

    pub(super) async fn unless_better_unless_revoked(
        &self,
        scope: Scope<'_>,
        owner_id: &str,
        prefix: &str,
        session_id: &str,
    ) -> anyhow::Result<RankAndRevocation> {
        self.ranked_unless_revoked(scope, script(&UNLESS_BETTER_SCRIPT, UNLESS_BETTER), &[owner_id, prefix], session_id).await
    }

    /// Runs `script` (one that answers as `ranked_reply` reads) on the board season's four keys
    /// with `args`, pipelined after the revocation status of `session_id`: one round trip.
    pub(super) async fn ranked_unless_revoked(
        &self,
        scope: Scope<'_>,
        script: &Script,
        args: &[&str],
        session_id: &str,
    ) -> anyhow::Result<RankAndRevocation> {
        let k = self.keys.get(&self.redis, scope);
        let mut pipe = redis::pipe();
        pipe.add_command(platform::revocations::status_cmd(&self.redis, session_id));
        pipe.cmd("EVALSHA").arg(script.get_hash()).arg(4).arg(&k.zset).arg(&k.owners).arg(&k.data).arg(&k.ready).arg(args);
        let mut conn = self.redis.connection();
        let reply: redis::RedisResult<(Vec<Option<String>>, Vec<Value>)> = pipe.query_async(&mut conn).await;
        let (revocation, reply) = match reply {
            Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // The server does not know the script yet (first use, restart, flush): load it
                // and ask once more.
                script.prepare_invoke().load_async(&mut conn).await.context("loading a rank script")?;
                pipe.query_async(&mut conn).await.context("Redis leaderboard rank")?
            }
            other => other.context("Redis leaderboard rank")?,
        };
        Ok((platform::revocations::RevocationStatus::from_reply(&revocation), Self::ranked_reply(reply)?))
    }

    pub(super) async fn unless_better(
        &self,
        scope: Scope<'_>,
        owner_id: &str,
        prefix: &str,
    ) -> anyhow::Result<Result<Option<Ranked>, NotReady>> {
        self.ranked(scope, script(&UNLESS_BETTER_SCRIPT, UNLESS_BETTER), &[owner_id, prefix]).await.context("Redis leaderboard check")
    }

    /// Reads `{}` (not ready), `{false}` (none) or `{key, rank, data}`.
    pub(super) fn ranked_reply(reply: Vec<Value>) -> anyhow::Result<Result<Option<Ranked>, NotReady>> {
        match reply.as_slice() {
            [] => Ok(Err(NotReady)),
            [key, rank, data] => {
                let key = text(key).context("rank reply without key")?;
                let rank = int(rank).and_then(|r| u64::try_from(r).ok()).context("rank reply without rank")?;
                Ok(Ok(Some(Ranked { key, rank: rank + 1, data: text(data).unwrap_or_default() })))
            }
            _ => Ok(Ok(None)),
        }
    }

    pub(super) async fn run_page(
        &self,
        scope: Scope<'_>,
        mode: &str,
        from: &str,
        limit: usize,
    ) -> anyhow::Result<Result<Vec<Ranked>, NotReady>> {
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let mut invocation = k.board(script(&PAGE_SCRIPT, PAGE));
        invocation.arg(mode).arg(from).arg(limit);
        let reply: Vec<Value> = invocation.invoke_async(&mut conn).await.context("Redis leaderboard page")?;
        let Some((first, rest)) = reply.split_first() else { return Ok(Err(NotReady)) };
        let first = int(first).and_then(|r| u64::try_from(r).ok()).context("page reply without rank")?;
        let ranked = rest
            .chunks(2)
            .enumerate()
            .filter_map(|(i, pair)| {
                let key = text(pair.first()?)?;
                let data = pair.get(1).and_then(text).unwrap_or_default();
                Some(Ranked { key, data, rank: first + i as u64 + 1 })
            })
            .collect();
        Ok(Ok(ranked))
    }

    pub(super) async fn page(&self, scope: Scope<'_>, after: Option<&str>, limit: usize) -> anyhow::Result<Result<Vec<Ranked>, NotReady>> {
        match after {
            Some(after) => self.run_page(scope, "after", after, limit).await,
            None => self.run_page(scope, "top", "", limit).await,
        }
    }

    pub(super) async fn around(&self, scope: Scope<'_>, owner_id: &str, limit: usize) -> anyhow::Result<Result<Vec<Ranked>, NotReady>> {
        self.run_page(scope, "around", owner_id, limit).await
    }

    pub(super) async fn held(&self, scope: Scope<'_>, owners: &[&str]) -> anyhow::Result<Found> {
        if owners.is_empty() {
            return Ok(Found::Ready(Vec::new()));
        }
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let mut invocation = script(&HELD_SCRIPT, HELD).prepare_invoke();
        invocation.key(&k.ready).key(&k.lock).key(&k.owners).arg(owners);
        let reply: Vec<Value> = invocation.invoke_async(&mut conn).await.context("Redis leaderboard read for a repair")?;
        match reply.as_slice() {
            [status, Value::Array(states)] if text(status).as_deref() == Some("ready") => {
                anyhow::ensure!(states.len() == owners.len(), "a repair read {} states for {} owners", states.len(), owners.len());
                Ok(Found::Ready(states.iter().map(text).collect()))
            }
            [status] if text(status).as_deref() == Some("rebuilding") => Ok(Found::Rebuilding),
            _ => Ok(Found::Unbuilt),
        }
    }

    pub(super) async fn correct(&self, scope: Scope<'_>, corrections: &[Correction<'_>]) -> anyhow::Result<bool> {
        if corrections.is_empty() {
            return Ok(true);
        }
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let mut invocation = k.board(script(&CORRECT_SCRIPT, CORRECT));
        invocation.key(&k.lock);
        for c in corrections {
            let target = c.target.map(Entry::state).unwrap_or_default();
            let data = c.target.map(|e| e.data.as_str()).unwrap_or_default();
            invocation.arg(c.owner_id).arg(c.seen.unwrap_or_default()).arg(target).arg(data);
        }
        let reply: Vec<Value> = invocation.invoke_async(&mut conn).await.context("Redis leaderboard repair")?;
        Ok(match reply.as_slice() {
            [_, conflicts] => int(conflicts) == Some(0),
            [status] => text(status).as_deref() == Some("unbuilt"),
            _ => false,
        })
    }

    pub(super) async fn try_lock(&self, scope: Scope<'_>) -> anyhow::Result<RebuildLock> {
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let answer: String = script(&LOCK_SCRIPT, LOCK)
            .key(&k.ready)
            .key(&k.lock)
            .arg(REBUILD_LOCK_MS)
            .invoke_async(&mut conn)
            .await
            .context("Redis rebuild lock")?;
        Ok(match answer.as_str() {
            "ready" => RebuildLock::Ready,
            "acquired" => RebuildLock::Acquired,
            _ => RebuildLock::Busy,
        })
    }

    pub(super) async fn unlock(&self, scope: Scope<'_>) -> anyhow::Result<()> {
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let _: i64 = redis::cmd("DEL").arg(&k.lock).query_async(&mut conn).await.context("Redis rebuild unlock")?;
        Ok(())
    }

    pub(super) async fn install(&self, scope: Scope<'_>, entries: Vec<Entry>) -> anyhow::Result<()> {
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let _: () = redis::pipe()
            .cmd("DEL")
            .arg(&k.zset)
            .arg(&k.owners)
            .arg(&k.data)
            .arg(&k.ready)
            .ignore()
            .query_async(&mut conn)
            .await
            .context("Redis rebuild clear")?;
        for batch in entries.chunks(INSTALL_BATCH) {
            let mut pipe = redis::pipe();
            let zadd = pipe.cmd("ZADD").arg(&k.zset);
            for entry in batch {
                zadd.arg(0).arg(&entry.key);
            }
            pipe.ignore();
            let hset = pipe.cmd("HSET").arg(&k.owners);
            for entry in batch {
                hset.arg(&entry.owner_id).arg(format!("{}:{}", entry.version, entry.key));
            }
            pipe.ignore();
            let hset = pipe.cmd("HSET").arg(&k.data);
            for entry in batch {
                hset.arg(&entry.owner_id).arg(&entry.data);
            }
            pipe.ignore();
            let _: () = pipe.query_async(&mut conn).await.context("Redis rebuild batch")?;
        }
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(&k.ready)
            .arg("1")
            .ignore()
            .cmd("DEL")
            .arg(&k.lock)
            .ignore()
            .query_async(&mut conn)
            .await
            .context("Redis rebuild finish")?;
        Ok(())
    }

    pub(super) async fn forget_all(&self) -> anyhow::Result<usize> {
        // Every index key starts so (`keys`); SCAN walks them in bounded batches, never blocking
        // Redis the way KEYS would.
        let pattern = self.redis.key("lb:{*");
        let mut conn = self.redis.connection();
        let mut cursor: u64 = 0;
        let mut dropped = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .context("Redis scan of the rank index")?;
            // One key at a time: in a cluster, keys of different seasons live on different slots.
            for key in batch {
                let removed: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.context("Redis drop of the rank index")?;
                dropped += usize::try_from(removed).unwrap_or(0);
            }
            if next == 0 {
                return Ok(dropped);
            }
            cursor = next;
        }
    }

    pub(super) async fn drop_season(&self, scope: Scope<'_>) -> anyhow::Result<()> {
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let _: i64 = redis::cmd("DEL")
            .arg(&k.zset)
            .arg(&k.owners)
            .arg(&k.data)
            .arg(&k.ready)
            .query_async(&mut conn)
            .await
            .context("Redis drop season")?;
        Ok(())
    }
}
