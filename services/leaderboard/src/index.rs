//! The rank index: every record of a board's season ordered by sort key, answering ranks in
//! O(log n). Redis (a sorted set whose members all score 0, so they order by the sort key's bytes,
//! beside hashes of each owner's current key and display data) when Redis is configured; an
//! in-memory sorted vector on embedded defaults. The database is the source of truth: an index
//! that is empty or lost (restart, failover, FLUSHALL) is rebuilt from it on first use, and
//! until then it answers `NotReady`; entries a writer may have left stale are corrected from it
//! by `crate::repair` through [`RankIndex::held`] and [`RankIndex::correct`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use platform::cache::{Cache, RedisCache};
use redis::{Script, Value};

use crate::board::Board;
use crate::store::RecordRow;

/// One record as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The owner (account id).
    pub owner_id: String,
    /// The sort key (see `Board::sort_key`); it also encodes score, subscore and time.
    pub key: String,
    /// Bumped on every change of the record.
    pub version: i64,
    /// Display data: `{"n": name, "m": metadata}` as JSON text.
    pub data: String,
}

impl Entry {
    /// The entry of `record` on `board`.
    pub fn of(board: &Board, record: &RecordRow) -> Self {
        Entry {
            owner_id: record.owner_id.clone(),
            key: board.sort_key(record.score, record.subscore, record.updated_at, &record.owner_id),
            version: record.version,
            data: entry_data(&record.owner_name, record.metadata.as_deref()),
        }
    }

    /// What the index holds for the owner with this entry: `version:key` (as the Redis index's
    /// owners hash stores it), compared by repairs.
    pub fn state(&self) -> String {
        format!("{}:{}", self.version, self.key)
    }
}

/// The display data kept in the index beside each sort key: the owner's name and the metadata
/// (`api::EntryData` reads it).
fn entry_data(name: &str, metadata: Option<&str>) -> String {
    let metadata = metadata.and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok());
    serde_json::json!({ "n": name, "m": metadata }).to_string()
}

/// What a repair finds in a board season's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The index is ready; each owner asked about has this entry state ([`Entry::state`]), or
    /// none.
    Ready(Vec<Option<String>>),
    /// Not built, and no rebuild under way: whoever builds it reads the records from now on, so
    /// there is nothing to correct.
    Unbuilt,
    /// Being rebuilt from records read at some earlier moment: check again later.
    Rebuilding,
}

/// One correction of a repair: the owner's entry becomes `target` (none: no entry) if the index
/// still holds `seen` for that owner, the state a repair read before it read the record.
#[derive(Debug, Clone, Copy)]
pub struct Correction<'a> {
    /// The owner.
    pub owner_id: &'a str,
    /// The state read before the record was read ([`Found::Ready`]).
    pub seen: Option<&'a str>,
    /// The entry of the record as read, or none when there is no record.
    pub target: Option<&'a Entry>,
}

/// An entry with its 1-based rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    /// The sort key.
    pub key: String,
    /// Display data JSON.
    pub data: String,
    /// 1 is the best.
    pub rank: u64,
}

/// The index of one board's season has not been (re)built yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReady;

/// The answer to a request for the right to rebuild a board season's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildLock {
    /// This caller must rebuild, then `install` (or `unlock_rebuild` on failure).
    Acquired,
    /// Another instance is rebuilding: wait and retry.
    Busy,
    /// The index is ready already (someone else rebuilt it): just retry.
    Ready,
}

/// Which board season an operation is about.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// Board id.
    pub board: &'a str,
    /// Season number.
    pub season: i64,
}

/// The index backend. Cheap to clone.
#[derive(Clone)]
pub enum RankIndex {
    /// Sorted sets in Redis, shared by every instance.
    Redis(RedisIndex),
    /// In process memory, for the embedded tier.
    Memory(MemoryIndex),
}

impl RankIndex {
    /// The index that goes with the cache backend.
    pub fn for_cache(cache: &Cache) -> Self {
        match cache.redis() {
            Some(redis) => RankIndex::Redis(RedisIndex { redis: redis.clone(), keys: Arc::default() }),
            None => RankIndex::Memory(MemoryIndex::default()),
        }
    }

    /// Writes `entry` unless the index already holds a newer version of that owner's record;
    /// returns the owner's rank afterwards.
    pub async fn upsert(&self, scope: Scope<'_>, entry: &Entry) -> anyhow::Result<Result<u64, NotReady>> {
        let ranks = self.upsert_all(scope, std::slice::from_ref(entry)).await?;
        Ok(ranks.map(|ranks| ranks[0]))
    }

    /// Writes each of `entries` unless the index already holds that version of its owner's record
    /// or a newer one, in one step (an owner named twice ends with the newer entry); returns each
    /// entry's owner's rank once all are written.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.upsert", skip_all)]
    pub async fn upsert_all(&self, scope: Scope<'_>, entries: &[Entry]) -> anyhow::Result<Result<Vec<u64>, NotReady>> {
        match self {
            RankIndex::Redis(r) => r.upsert_all(scope, entries).await,
            RankIndex::Memory(m) => Ok(m.with_ready(scope, |b| b.upsert_all(entries))),
        }
    }

    /// The owner's entry and rank, if they have a record.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.rank_of", skip_all)]
    pub async fn rank_of(&self, scope: Scope<'_>, owner_id: &str) -> anyhow::Result<Result<Option<Ranked>, NotReady>> {
        match self {
            RankIndex::Redis(r) => r.rank_of(scope, owner_id).await,
            RankIndex::Memory(m) => Ok(m.with_ready(scope, |b| b.rank_of(owner_id))),
        }
    }

    /// On Redis: the owner's entry and rank, and the revocation status of `session_id`, in one
    /// round trip. `None` on the in-memory index, where the two cost nothing to read apart.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.rank_of_unless_revoked", skip_all)]
    pub async fn rank_of_unless_revoked(
        &self,
        scope: Scope<'_>,
        owner_id: &str,
        session_id: &str,
    ) -> anyhow::Result<Option<RankAndRevocation>> {
        match self {
            RankIndex::Redis(r) => r.rank_of_unless_revoked(scope, owner_id, session_id).await.map(Some),
            RankIndex::Memory(_) => Ok(None),
        }
    }

    /// For a `best` board: the owner's entry and rank when the index already holds a record at
    /// least as good as a submission whose sort key starts with `prefix` (score and subscore), so
    /// the submission changes nothing. Sound even if the index lags the database: a `best`
    /// record only improves, so the database holds something at least as good as the index.
    /// `None` when the submission may improve the record (or there is none): go to the database.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.unless_better", skip_all)]
    pub async fn unless_better(&self, scope: Scope<'_>, owner_id: &str, prefix: &str) -> anyhow::Result<Result<Option<Ranked>, NotReady>> {
        match self {
            RankIndex::Redis(r) => r.unless_better(scope, owner_id, prefix).await,
            RankIndex::Memory(m) => Ok(m.with_ready(scope, |b| {
                let current = b.owners.get(owner_id)?;
                (current.key.get(..prefix.len()).unwrap_or(current.key.as_str()) <= prefix).then(|| b.rank_of(owner_id)).flatten()
            })),
        }
    }

    /// On Redis: `unless_better`'s answer and the revocation status of `session_id`, in one round
    /// trip. `None` on the in-memory index, where the two cost nothing to read apart.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.unless_better_unless_revoked", skip_all)]
    pub async fn unless_better_unless_revoked(
        &self,
        scope: Scope<'_>,
        owner_id: &str,
        prefix: &str,
        session_id: &str,
    ) -> anyhow::Result<Option<RankAndRevocation>> {
        match self {
            RankIndex::Redis(r) => r.unless_better_unless_revoked(scope, owner_id, prefix, session_id).await.map(Some),
            RankIndex::Memory(_) => Ok(None),
        }
    }

    /// Up to `limit` entries from the top, or from just after the sort key `after`.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.page", skip_all)]
    pub async fn page(&self, scope: Scope<'_>, after: Option<&str>, limit: usize) -> anyhow::Result<Result<Vec<Ranked>, NotReady>> {
        match self {
            RankIndex::Redis(r) => r.page(scope, after, limit).await,
            RankIndex::Memory(m) => Ok(m.with_ready(scope, |b| b.page(after, limit))),
        }
    }

    /// Up to `limit` entries centred on the owner's, shifted to stay `limit` long at the top and
    /// the bottom of the board. Empty when the owner has no record.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.around", skip_all)]
    pub async fn around(&self, scope: Scope<'_>, owner_id: &str, limit: usize) -> anyhow::Result<Result<Vec<Ranked>, NotReady>> {
        match self {
            RankIndex::Redis(r) => r.around(scope, owner_id, limit).await,
            RankIndex::Memory(m) => Ok(m.with_ready(scope, |b| b.around(owner_id, limit))),
        }
    }

    /// Takes the right to rebuild this board season, so that one instance does it, and only while
    /// the index is not ready: a rebuild that started after another finished would wipe the
    /// updates made since.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.try_lock_rebuild", skip_all)]
    pub async fn try_lock_rebuild(&self, scope: Scope<'_>) -> anyhow::Result<RebuildLock> {
        match self {
            RankIndex::Redis(r) => r.try_lock(scope).await,
            RankIndex::Memory(m) => Ok(m.with(scope, |b| {
                if b.ready {
                    RebuildLock::Ready
                } else if std::mem::replace(&mut b.rebuilding, true) {
                    RebuildLock::Busy
                } else {
                    RebuildLock::Acquired
                }
            })),
        }
    }

    /// Replaces the index of the season with `entries` (all records, from the database) and
    /// marks it ready.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.install", skip_all)]
    pub async fn install(&self, scope: Scope<'_>, entries: Vec<Entry>) -> anyhow::Result<()> {
        match self {
            RankIndex::Redis(r) => r.install(scope, entries).await,
            RankIndex::Memory(m) => {
                m.with(scope, |b| b.install(entries));
                Ok(())
            }
        }
    }

    /// Releases the rebuild right without installing (the rebuild failed).
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.unlock_rebuild", skip_all)]
    pub async fn unlock_rebuild(&self, scope: Scope<'_>) -> anyhow::Result<()> {
        match self {
            RankIndex::Redis(r) => r.unlock(scope).await,
            RankIndex::Memory(m) => {
                m.with(scope, |b| b.rebuilding = false);
                Ok(())
            }
        }
    }

    /// For a repair: the entry state of each of `owners` (see [`Found`]).
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.held", skip_all)]
    pub async fn held(&self, scope: Scope<'_>, owners: &[&str]) -> anyhow::Result<Found> {
        match self {
            RankIndex::Redis(r) => r.held(scope, owners).await,
            RankIndex::Memory(m) => Ok(m.with(scope, |b| match (b.ready, b.rebuilding) {
                (true, _) => Found::Ready(owners.iter().map(|o| b.owners.get(*o).map(Entry::state)).collect()),
                (false, true) => Found::Rebuilding,
                (false, false) => Found::Unbuilt,
            })),
        }
    }

    /// Applies the corrections of a repair, each only if the owner's entry is still the one the
    /// repair saw before it read the record (see `crate::repair` for why that makes races
    /// harmless). Returns true when the index now agrees with the records read (or is unbuilt),
    /// false when it must be checked again later (an entry changed meanwhile, or a rebuild is
    /// under way).
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.correct", skip_all)]
    pub async fn correct(&self, scope: Scope<'_>, corrections: &[Correction<'_>]) -> anyhow::Result<bool> {
        match self {
            RankIndex::Redis(r) => r.correct(scope, corrections).await,
            RankIndex::Memory(m) => Ok(m.with(scope, |b| match (b.ready, b.rebuilding) {
                // Every correction is tried, whether or not one before it applied.
                (true, _) => corrections.iter().filter(|c| !b.correct(c)).count() == 0,
                (false, rebuilding) => !rebuilding,
            })),
        }
    }

    /// Forgets every board season's index, to be rebuilt from the records on first use: after
    /// the database went back to an earlier point (`platform::restore`), the index holds ranks
    /// from records the database no longer has. Returns how many keys (Redis) or seasons
    /// (memory) it dropped.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.forget_all", skip_all)]
    pub async fn forget_all(&self) -> anyhow::Result<usize> {
        match self {
            RankIndex::Redis(r) => r.forget_all().await,
            RankIndex::Memory(m) => {
                let mut boards = m.boards.lock().unwrap_or_else(|p| p.into_inner());
                let dropped = boards.len();
                boards.clear();
                Ok(dropped)
            }
        }
    }

    /// Drops a whole season's index (after it was archived).
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.drop_season", skip_all)]
    pub async fn drop_season(&self, scope: Scope<'_>) -> anyhow::Result<()> {
        match self {
            RankIndex::Redis(r) => r.drop_season(scope).await,
            RankIndex::Memory(m) => {
                m.boards.lock().unwrap_or_else(|p| p.into_inner()).remove(&(scope.board.to_owned(), scope.season));
                Ok(())
            }
        }
    }
}

/// In-memory index: per board season, the sort keys in order and each owner's entry.
#[derive(Clone, Default)]
pub struct MemoryIndex {
    boards: Arc<Mutex<HashMap<(String, i64), MemoryBoard>>>,
}

#[derive(Default)]
struct MemoryBoard {
    ready: bool,
    rebuilding: bool,
    /// Sorted ascending (best first). Inserts shift the tail: O(n), fine for the embedded tier's
    /// few thousand players; ranks are binary searches.
    keys: Vec<String>,
    owners: HashMap<String, Entry>,
}

impl MemoryIndex {
    fn with<R>(&self, scope: Scope<'_>, f: impl FnOnce(&mut MemoryBoard) -> R) -> R {
        let mut boards = self.boards.lock().unwrap_or_else(|p| p.into_inner());
        f(boards.entry((scope.board.to_owned(), scope.season)).or_default())
    }

    fn with_ready<R>(&self, scope: Scope<'_>, f: impl FnOnce(&mut MemoryBoard) -> R) -> Result<R, NotReady> {
        self.with(scope, |b| if b.ready { Ok(f(b)) } else { Err(NotReady) })
    }
}

impl MemoryBoard {
    fn position(&self, key: &str) -> Result<usize, usize> {
        self.keys.binary_search_by(|k| k.as_str().cmp(key))
    }

    fn ranked(&self, index: usize) -> Option<Ranked> {
        let key = self.keys.get(index)?;
        let owner = key.rsplit('|').next().unwrap_or_default();
        let data = self.owners.get(owner).map(|e| e.data.clone()).unwrap_or_default();
        Some(Ranked { key: key.clone(), data, rank: index as u64 + 1 })
    }

    fn upsert_all(&mut self, entries: &[Entry]) -> Vec<u64> {
        for entry in entries {
            if self.owners.get(&entry.owner_id).is_none_or(|current| entry.version > current.version) {
                self.put(entry);
            }
        }
        entries
            .iter()
            .map(|entry| {
                let current = &self.owners[&entry.owner_id].key;
                self.position(current).map_or(0, |at| at as u64 + 1)
            })
            .collect()
    }

    /// Makes `entry` the owner's, whatever it had.
    fn put(&mut self, entry: &Entry) {
        if let Some(old) = self.owners.insert(entry.owner_id.clone(), entry.clone())
            && let Ok(at) = self.position(&old.key)
        {
            self.keys.remove(at);
        }
        let at = self.position(&entry.key).unwrap_or_else(|at| at);
        self.keys.insert(at, entry.key.clone());
    }

    /// One correction (see `RankIndex::correct`); false when the entry changed since it was seen.
    fn correct(&mut self, c: &Correction<'_>) -> bool {
        let current = self.owners.get(c.owner_id).map(Entry::state);
        if current == c.target.map(Entry::state) {
            return true;
        }
        if current.as_deref() != c.seen {
            return false;
        }
        match c.target {
            Some(entry) => self.put(entry),
            None => self.remove(c.owner_id),
        }
        true
    }

    fn rank_of(&self, owner_id: &str) -> Option<Ranked> {
        let entry = self.owners.get(owner_id)?;
        self.ranked(self.position(&entry.key).ok()?)
    }

    fn page(&self, after: Option<&str>, limit: usize) -> Vec<Ranked> {
        let start = match after {
            None => 0,
            Some(after) => match self.position(after) {
                Ok(at) => at + 1,
                Err(at) => at,
            },
        };
        (start..self.keys.len().min(start + limit)).filter_map(|i| self.ranked(i)).collect()
    }

    fn around(&self, owner_id: &str, limit: usize) -> Vec<Ranked> {
        let Some(at) = self.owners.get(owner_id).and_then(|e| self.position(&e.key).ok()) else { return Vec::new() };
        let (start, end) = window(at, self.keys.len(), limit);
        (start..end).filter_map(|i| self.ranked(i)).collect()
    }

    fn remove(&mut self, owner_id: &str) {
        if let Some(old) = self.owners.remove(owner_id)
            && let Ok(at) = self.position(&old.key)
        {
            self.keys.remove(at);
        }
    }

    fn install(&mut self, entries: Vec<Entry>) {
        self.keys = entries.iter().map(|e| e.key.clone()).collect();
        self.keys.sort();
        self.owners = entries.into_iter().map(|e| (e.owner_id.clone(), e)).collect();
        self.ready = true;
        self.rebuilding = false;
    }
}

/// The [start, end) window of `limit` positions around position `at` in a board of `len`.
fn window(at: usize, len: usize, limit: usize) -> (usize, usize) {
    let limit = limit.min(len);
    let start = at.saturating_sub(limit / 2).min(len - limit);
    (start, start + limit)
}

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
    fn get(&self, redis: &RedisCache, scope: Scope<'_>) -> Arc<Keys> {
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

/// KEYS: zset, owners (owner -> "version:key"), data (owner -> display JSON), ready.
/// ARGV: one quadruple per entry: owner, version, key, data. Writes each entry unless the index
/// holds that version of its owner's record or a newer one (an update that arrived late), then
/// returns each entry's owner's rank (0-based) as the call leaves the index, or -1 when not ready.
///
/// A committed batch's entries in one call, each kind of write once for all of them (it was a
/// call of six `redis.call`s per record): one round trip per batch, and on `submit-set` 12 % less
/// Redis CPU per submission (loadtest/README.md). An owner named twice ends with the newer entry,
/// as two calls in a row would leave it.
const UPSERT: &str = r"
if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
local n = #ARGV / 4
local owners = {}
for i = 1, n do owners[i] = ARGV[4 * i - 3] end
local stored = redis.call('HMGET', KEYS[2], unpack(owners))
-- owner -> 'version:key' and display data where this call changes them
local latest, data, removed = {}, {}, {}
for i = 1, n do
  local owner, version, key = owners[i], ARGV[4 * i - 2], ARGV[4 * i - 1]
  local current = latest[owner] or stored[i]
  local apply = true
  if current then
    local sep = string.find(current, ':', 1, true)
    if tonumber(version) > tonumber(string.sub(current, 1, sep - 1)) then
      removed[#removed + 1] = string.sub(current, sep + 1)
    else
      apply = false
    end
  end
  if apply then
    latest[owner] = version .. ':' .. key
    data[owner] = ARGV[4 * i]
  end
end
if #removed > 0 then redis.call('ZREM', KEYS[1], unpack(removed)) end
local members, fields, shown = {}, {}, {}
for owner, value in pairs(latest) do
  members[#members + 1] = 0
  members[#members + 1] = string.sub(value, string.find(value, ':', 1, true) + 1)
  fields[#fields + 1] = owner
  fields[#fields + 1] = value
  shown[#shown + 1] = owner
  shown[#shown + 1] = data[owner]
end
if #fields > 0 then
  redis.call('ZADD', KEYS[1], unpack(members))
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('HSET', KEYS[3], unpack(shown))
end
local ranks = {}
for i = 1, n do
  local current = latest[owners[i]] or stored[i]
  ranks[i] = redis.call('ZRANK', KEYS[1], string.sub(current, string.find(current, ':', 1, true) + 1))
end
return ranks
";

/// KEYS: zset, owners, data, ready. ARGV: owner. Returns {} when not ready, {false} without a
/// record, else {key, rank, data}.
const RANK_OF: &str = r"
if redis.call('EXISTS', KEYS[4]) == 0 then return {} end
local current = redis.call('HGET', KEYS[2], ARGV[1])
if not current then return {false} end
local key = string.sub(current, string.find(current, ':', 1, true) + 1)
return {key, redis.call('ZRANK', KEYS[1], key), redis.call('HGET', KEYS[3], ARGV[1])}
";

/// KEYS: zset, owners, data, ready. ARGV: owner, prefix (the score and subscore part of a
/// submission's sort key). Returns {} when not ready, {false} when the submission may be better
/// (or there is no record), else {key, rank, data} of the record that stays.
const UNLESS_BETTER: &str = r"
if redis.call('EXISTS', KEYS[4]) == 0 then return {} end
local current = redis.call('HGET', KEYS[2], ARGV[1])
if not current then return {false} end
local key = string.sub(current, string.find(current, ':', 1, true) + 1)
if string.sub(key, 1, #ARGV[2]) > ARGV[2] then return {false} end
return {key, redis.call('ZRANK', KEYS[1], key), redis.call('HGET', KEYS[3], ARGV[1])}
";

/// KEYS: zset, owners, data, ready. ARGV: mode ('top', 'after', 'around'), cursor key or owner,
/// limit. Returns {} when not ready, else {first rank (0-based), key, data, key, data, ...}.
const PAGE: &str = r"
if redis.call('EXISTS', KEYS[4]) == 0 then return {} end
local limit = tonumber(ARGV[3])
local start = 0
local members
if ARGV[1] == 'after' then
  members = redis.call('ZRANGE', KEYS[1], '(' .. ARGV[2], '+', 'BYLEX', 'LIMIT', 0, limit)
  if #members > 0 then start = redis.call('ZRANK', KEYS[1], members[1]) end
else
  if ARGV[1] == 'around' then
    local current = redis.call('HGET', KEYS[2], ARGV[2])
    if not current then return {0} end
    local at = redis.call('ZRANK', KEYS[1], string.sub(current, string.find(current, ':', 1, true) + 1))
    local len = redis.call('ZCARD', KEYS[1])
    if limit > len then limit = len end
    start = at - math.floor(limit / 2)
    if start > len - limit then start = len - limit end
    if start < 0 then start = 0 end
  end
  members = redis.call('ZRANGE', KEYS[1], start, start + limit - 1)
end
local out = {start}
for _, key in ipairs(members) do
  local owner = string.sub(key, string.find(key, '|', 1, true) + 1)
  out[#out + 1] = key
  out[#out + 1] = redis.call('HGET', KEYS[3], owner)
end
return out
";

/// KEYS: ready, lock, owners. ARGV: owners. Returns {'ready', {state or false, ...}},
/// {'rebuilding'} or {'unbuilt'}.
const HELD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {'rebuilding'} end
  return {'unbuilt'}
end
return {'ready', redis.call('HMGET', KEYS[3], unpack(ARGV))}
";

/// KEYS: zset, owners, data, ready, lock. ARGV: per correction, owner, the state seen ('' for
/// none), the target state ('' for no entry) and the target's display data. Each applies only if
/// the owner's state is still the one seen. Returns {'ready', corrections not applied},
/// {'rebuilding'} or {'unbuilt'}.
const CORRECT: &str = r"
if redis.call('EXISTS', KEYS[4]) == 0 then
  if redis.call('EXISTS', KEYS[5]) == 1 then return {'rebuilding'} end
  return {'unbuilt'}
end
local conflicts = 0
for i = 1, #ARGV, 4 do
  local owner, seen, target = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('HGET', KEYS[2], owner) or ''
  if current ~= target then
    if current ~= seen then
      conflicts = conflicts + 1
    else
      if current ~= '' then
        redis.call('ZREM', KEYS[1], string.sub(current, string.find(current, ':', 1, true) + 1))
      end
      if target == '' then
        redis.call('HDEL', KEYS[2], owner)
        redis.call('HDEL', KEYS[3], owner)
      else
        redis.call('ZADD', KEYS[1], 0, string.sub(target, string.find(target, ':', 1, true) + 1))
        redis.call('HSET', KEYS[2], owner, target)
        redis.call('HSET', KEYS[3], owner, ARGV[i + 3])
      end
    end
  end
end
return {'ready', conflicts}
";

/// KEYS: ready, lock. ARGV: lock lifetime (ms). Returns 'ready', 'acquired' or 'busy'.
const LOCK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'ready' end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 'acquired' end
return 'busy'
";

/// How long one instance may hold the rebuild of a board season before another may take over.
const REBUILD_LOCK_MS: u64 = 60_000;
/// Entries written per round trip while installing.
const INSTALL_BATCH: usize = 1000;

/// Each script's SHA-1 is computed once, not on every call (it showed in profiles of the hot path).
static UPSERT_SCRIPT: OnceLock<Script> = OnceLock::new();
static RANK_OF_SCRIPT: OnceLock<Script> = OnceLock::new();
static UNLESS_BETTER_SCRIPT: OnceLock<Script> = OnceLock::new();
static PAGE_SCRIPT: OnceLock<Script> = OnceLock::new();
static LOCK_SCRIPT: OnceLock<Script> = OnceLock::new();
static HELD_SCRIPT: OnceLock<Script> = OnceLock::new();
static CORRECT_SCRIPT: OnceLock<Script> = OnceLock::new();

fn script(cell: &'static OnceLock<Script>, source: &str) -> &'static Script {
    cell.get_or_init(|| Script::new(source))
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
    async fn upsert_all(&self, scope: Scope<'_>, entries: &[Entry]) -> anyhow::Result<Result<Vec<u64>, NotReady>> {
        if entries.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let k = self.keys.get(&self.redis, scope);
        let mut invocation = script(&UPSERT_SCRIPT, UPSERT).prepare_invoke();
        invocation.key(&k.zset).key(&k.owners).key(&k.data).key(&k.ready);
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

    async fn rank_of(&self, scope: Scope<'_>, owner_id: &str) -> anyhow::Result<Result<Option<Ranked>, NotReady>> {
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let reply: Vec<Value> = script(&RANK_OF_SCRIPT, RANK_OF)
            .key(&k.zset)
            .key(&k.owners)
            .key(&k.data)
            .key(&k.ready)
            .arg(owner_id)
            .invoke_async(&mut conn)
            .await
            .context("Redis leaderboard rank")?;
        Self::ranked_reply(reply)
    }

    /// The session's revocation status and the rank script, pipelined: one round trip. (Not one
    /// script: the revocations live in another hash slot than the board's keys.)
    async fn rank_of_unless_revoked(&self, scope: Scope<'_>, owner_id: &str, session_id: &str) -> anyhow::Result<RankAndRevocation> {
        self.ranked_unless_revoked(scope, script(&RANK_OF_SCRIPT, RANK_OF), &[owner_id], session_id).await
    }

    async fn unless_better_unless_revoked(
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
    async fn ranked_unless_revoked(
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

    async fn unless_better(&self, scope: Scope<'_>, owner_id: &str, prefix: &str) -> anyhow::Result<Result<Option<Ranked>, NotReady>> {
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let reply: Vec<Value> = script(&UNLESS_BETTER_SCRIPT, UNLESS_BETTER)
            .key(&k.zset)
            .key(&k.owners)
            .key(&k.data)
            .key(&k.ready)
            .arg(owner_id)
            .arg(prefix)
            .invoke_async(&mut conn)
            .await
            .context("Redis leaderboard check")?;
        Self::ranked_reply(reply)
    }

    /// Reads `{}` (not ready), `{false}` (none) or `{key, rank, data}`.
    fn ranked_reply(reply: Vec<Value>) -> anyhow::Result<Result<Option<Ranked>, NotReady>> {
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

    async fn run_page(&self, scope: Scope<'_>, mode: &str, from: &str, limit: usize) -> anyhow::Result<Result<Vec<Ranked>, NotReady>> {
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let reply: Vec<Value> = script(&PAGE_SCRIPT, PAGE)
            .key(&k.zset)
            .key(&k.owners)
            .key(&k.data)
            .key(&k.ready)
            .arg(mode)
            .arg(from)
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .context("Redis leaderboard page")?;
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

    async fn page(&self, scope: Scope<'_>, after: Option<&str>, limit: usize) -> anyhow::Result<Result<Vec<Ranked>, NotReady>> {
        match after {
            Some(after) => self.run_page(scope, "after", after, limit).await,
            None => self.run_page(scope, "top", "", limit).await,
        }
    }

    async fn around(&self, scope: Scope<'_>, owner_id: &str, limit: usize) -> anyhow::Result<Result<Vec<Ranked>, NotReady>> {
        self.run_page(scope, "around", owner_id, limit).await
    }

    async fn held(&self, scope: Scope<'_>, owners: &[&str]) -> anyhow::Result<Found> {
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

    async fn correct(&self, scope: Scope<'_>, corrections: &[Correction<'_>]) -> anyhow::Result<bool> {
        if corrections.is_empty() {
            return Ok(true);
        }
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let mut invocation = script(&CORRECT_SCRIPT, CORRECT).prepare_invoke();
        invocation.key(&k.zset).key(&k.owners).key(&k.data).key(&k.ready).key(&k.lock);
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

    async fn try_lock(&self, scope: Scope<'_>) -> anyhow::Result<RebuildLock> {
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

    async fn unlock(&self, scope: Scope<'_>) -> anyhow::Result<()> {
        let k = self.keys.get(&self.redis, scope);
        let mut conn = self.redis.connection();
        let _: i64 = redis::cmd("DEL").arg(&k.lock).query_async(&mut conn).await.context("Redis rebuild unlock")?;
        Ok(())
    }

    async fn install(&self, scope: Scope<'_>, entries: Vec<Entry>) -> anyhow::Result<()> {
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

    async fn forget_all(&self) -> anyhow::Result<usize> {
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

    async fn drop_season(&self, scope: Scope<'_>) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::{Correction, Entry, MemoryBoard, window};

    fn entry(owner: &str, version: i64, key: &str) -> Entry {
        Entry { owner_id: owner.into(), key: format!("{key}|{owner}"), version, data: "{}".into() }
    }

    #[test]
    fn corrections_apply_only_over_the_entry_seen() {
        let mut board = MemoryBoard { ready: true, ..MemoryBoard::default() };
        board.put(&entry("a", 1, "5"));
        board.put(&entry("b", 2, "3"));
        let newer = entry("a", 2, "1");
        // Still the entry the repair saw: it becomes the record's.
        assert!(board.correct(&Correction { owner_id: "a", seen: Some("1:5|a"), target: Some(&newer) }));
        assert_eq!(board.rank_of("a").map(|r| r.rank), Some(1));
        // Changed since the repair saw it (a writer wrote another version): left for a later look.
        assert!(!board.correct(&Correction { owner_id: "b", seen: Some("1:9|b"), target: None }));
        assert!(board.owners.contains_key("b"));
        // Already what the record says.
        assert!(board.correct(&Correction { owner_id: "a", seen: None, target: Some(&newer) }));
        // No record: the entry goes.
        assert!(board.correct(&Correction { owner_id: "b", seen: Some("2:3|b"), target: None }));
        assert_eq!(board.keys, ["1|a"]);
        assert!(!board.owners.contains_key("b"));
    }

    #[test]
    fn windows_stay_full_at_the_edges() {
        assert_eq!(window(0, 100, 5), (0, 5));
        assert_eq!(window(50, 100, 5), (48, 53));
        assert_eq!(window(99, 100, 5), (95, 100));
        assert_eq!(window(1, 3, 10), (0, 3));
        assert_eq!(window(0, 1, 1), (0, 1));
    }
}
