//! The rank index: every record of a board's season ordered by sort key, answering ranks in
//! O(log n). Redis (a sorted set whose members all score 0, so they order by the sort key's bytes,
//! beside hashes of each owner's current key and display data) when Redis is configured; an
//! in-memory sorted vector on embedded defaults. The database is the source of truth: an index
//! that is empty or lost (restart, failover, FLUSHALL) is rebuilt from it on first use, and
//! until then it answers `NotReady`; entries a writer may have left stale are corrected from it
//! by `crate::repair` through [`RankIndex::held`] and [`RankIndex::correct`].

use platform::cache::Cache;

mod memory;
mod redis;
mod scripts;

pub use memory::MemoryIndex;
pub use redis::{RankAndRevocation, RedisIndex};

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
            Some(redis) => RankIndex::Redis(RedisIndex::new(redis.clone())),
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
            RankIndex::Memory(m) => Ok(m.forget_all()),
        }
    }

    /// Drops a whole season's index (after it was archived).
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ranks.drop_season", skip_all)]
    pub async fn drop_season(&self, scope: Scope<'_>) -> anyhow::Result<()> {
        match self {
            RankIndex::Redis(r) => r.drop_season(scope).await,
            RankIndex::Memory(m) => {
                m.drop_season(scope);
                Ok(())
            }
        }
    }
}
