//! The Redis index's Lua scripts (`lua/`), each run atomically on one board season's keys, and
//! their SHA-1s.

use std::sync::OnceLock;

use redis::Script;

/// KEYS: zset, owners (owner -> "version:key"), data (owner -> display JSON), ready.
/// ARGV: one quadruple per entry: owner, version, key, data. Writes each entry unless the index
/// holds that version of its owner's record or a newer one (an update that arrived late), then
/// returns each entry's owner's rank (0-based) as the call leaves the index, or -1 when not ready.
///
/// A committed batch's entries in one call, each kind of write once for all of them (it was a
/// call of six `redis.call`s per record): one round trip per batch, and on `submit-set` 12 % less
/// Redis CPU per submission (loadtest/README.md). An owner named twice ends with the newer entry,
/// as two calls in a row would leave it.
pub(super) const UPSERT: &str = include_str!("lua/upsert.lua");

/// KEYS: zset, owners, data, ready. ARGV: owner. Returns {} when not ready, {false} without a
/// record, else {key, rank, data}.
pub(super) const RANK_OF: &str = include_str!("lua/rank_of.lua");

/// KEYS: zset, owners, data, ready. ARGV: owner, prefix (the score and subscore part of a
/// submission's sort key). Returns {} when not ready, {false} when the submission may be better
/// (or there is no record), else {key, rank, data} of the record that stays.
pub(super) const UNLESS_BETTER: &str = include_str!("lua/unless_better.lua");

/// KEYS: zset, owners, data, ready. ARGV: mode ('top', 'after', 'around'), cursor key or owner,
/// limit. Returns {} when not ready, else {first rank (0-based), key, data, key, data, ...}.
pub(super) const PAGE: &str = include_str!("lua/page.lua");

/// KEYS: ready, lock, owners. ARGV: owners. Returns {'ready', {state or false, ...}},
/// {'rebuilding'} or {'unbuilt'}.
pub(super) const HELD: &str = include_str!("lua/held.lua");

/// KEYS: zset, owners, data, ready, lock. ARGV: per correction, owner, the state seen ('' for
/// none), the target state ('' for no entry) and the target's display data. Each applies only if
/// the owner's state is still the one seen. Returns {'ready', corrections not applied},
/// {'rebuilding'} or {'unbuilt'}.
pub(super) const CORRECT: &str = include_str!("lua/correct.lua");

/// KEYS: ready, lock. ARGV: lock lifetime (ms). Returns 'ready', 'acquired' or 'busy'.
pub(super) const LOCK: &str = include_str!("lua/lock.lua");

/// Each script's SHA-1 is computed once, not on every call (it showed in profiles of the hot path).
pub(super) static UPSERT_SCRIPT: OnceLock<Script> = OnceLock::new();
pub(super) static RANK_OF_SCRIPT: OnceLock<Script> = OnceLock::new();
pub(super) static UNLESS_BETTER_SCRIPT: OnceLock<Script> = OnceLock::new();
pub(super) static PAGE_SCRIPT: OnceLock<Script> = OnceLock::new();
pub(super) static LOCK_SCRIPT: OnceLock<Script> = OnceLock::new();
pub(super) static HELD_SCRIPT: OnceLock<Script> = OnceLock::new();
pub(super) static CORRECT_SCRIPT: OnceLock<Script> = OnceLock::new();

pub(super) fn script(cell: &'static OnceLock<Script>, source: &str) -> &'static Script {
    cell.get_or_init(|| Script::new(source))
}
