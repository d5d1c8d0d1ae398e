//! Players' mutes and bans as this instance last read them, so that a chat send does not read
//! them from the database each time (it did: a statement per message beside the batched insert,
//! most of PostgreSQL's work per message once the inserts were grouped).
//!
//! Kept right by notices: once a sanction issued or lifted is committed, its instance forgets
//! the player's entries and announces `Notice::SanctionsChanged`, on which every instance does
//! the same (`Hub::apply`); when the fan-out (re)connects to Redis, notices may have been missed
//! meanwhile, and every entry is forgotten. A notice lost in flight (pub/sub delivers at most
//! once) is bounded by `FRESH_FOR`: an entry is read again once it is that old. A read that
//! started before a forgetting could bring back what it meant to forget: each forgetting moves an
//! epoch, and a read that saw the epoch move is used but not kept. A sanction's end in time
//! needs no notice: an entry keeps each sanction's `until`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long an entry is used before it is read again: how late a sanction can take effect on an
/// instance whose notice was lost.
pub const FRESH_FOR: Duration = Duration::from_secs(30);

/// Entries kept at most (a player's sanctions in one channel each); past it the stale ones go,
/// and all of them if that is not enough.
const MOST: usize = 50_000;

/// A sanction in force when read: its kind and when it ends (milliseconds; `None` for good).
pub type InForce = (String, Option<i64>);

/// What a player may do in a channel, by their sanctions there and everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Banned: may not join, read or send.
    pub banned: bool,
    /// Muted: may not send.
    pub muted: bool,
}

struct Entry {
    read_at: Instant,
    in_force: Vec<InForce>,
}

#[derive(Default)]
struct Entries {
    /// By account, then by channel.
    by_account: HashMap<String, HashMap<String, Entry>>,
    len: usize,
}

/// The players' sanctions known here. Shared by the instance's sockets and handlers.
#[derive(Default)]
pub struct KnownSanctions {
    entries: Mutex<Entries>,
    /// Moves with each forgetting (`forget`, `forget_all`).
    epoch: AtomicU64,
}

impl std::fmt::Debug for KnownSanctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSanctions").field("len", &self.lock().len).finish()
    }
}

impl KnownSanctions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `account`'s verdict in `channel` at `now` (milliseconds), from its entry while that is
    /// fresh, else from `read` (the sanctions in force there and everywhere, as the database has
    /// them), which is then kept.
    pub async fn verdict<F>(&self, account: &str, channel: &str, now: i64, read: F) -> anyhow::Result<Verdict>
    where
        F: Future<Output = anyhow::Result<Vec<InForce>>>,
    {
        self.verdict_at(Instant::now(), (account, channel), now, read).await
    }

    /// `verdict`, as at `at` on the monotonic clock (the tests' clock).
    async fn verdict_at<F>(&self, at: Instant, (account, channel): (&str, &str), now: i64, read: F) -> anyhow::Result<Verdict>
    where
        F: Future<Output = anyhow::Result<Vec<InForce>>>,
    {
        let known = {
            let entries = self.lock();
            let entry = entries.by_account.get(account).and_then(|channels| channels.get(channel));
            entry.filter(|e| fresh(e, at)).map(|e| judge(&e.in_force, now))
        };
        if let Some(verdict) = known {
            return Ok(verdict);
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let read_at = at;
        let in_force = read.await?;
        let verdict = judge(&in_force, now);
        let mut entries = self.lock();
        // Checked under the lock that forgetting takes too: a forgetting either came before
        // this check (and the read is not kept) or comes after the insert (and removes it).
        if self.epoch.load(Ordering::SeqCst) == epoch {
            if entries.len >= MOST {
                prune(&mut entries, at);
            }
            let channels = entries.by_account.entry(account.to_owned()).or_default();
            if channels.insert(channel.to_owned(), Entry { read_at, in_force }).is_none() {
                entries.len += 1;
            }
        }
        Ok(verdict)
    }

    /// Forgets `account`'s entries: its sanctions changed.
    pub fn forget(&self, account: &str) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(channels) = entries.by_account.remove(account) {
            entries.len -= channels.len();
        }
    }

    /// Forgets every entry: notices may have been missed.
    pub fn forget_all(&self) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        *entries = Entries::default();
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn fresh(entry: &Entry, at: Instant) -> bool {
    at.saturating_duration_since(entry.read_at) < FRESH_FOR
}

fn judge(in_force: &[InForce], now: i64) -> Verdict {
    let holds = |kind: &str| in_force.iter().any(|(k, until)| k == kind && until.is_none_or(|until| until > now));
    Verdict { banned: holds("ban"), muted: holds("mute") }
}

/// Drops the stale entries, or every entry if none is stale.
fn prune(entries: &mut Entries, at: Instant) {
    for channels in entries.by_account.values_mut() {
        channels.retain(|_, entry| fresh(entry, at));
    }
    entries.by_account.retain(|_, channels| !channels.is_empty());
    entries.len = entries.by_account.values().map(HashMap::len).sum();
    if entries.len >= MOST {
        *entries = Entries::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A read of `in_force` that counts itself in `count` when it runs.
    async fn reads(count: &AtomicUsize, in_force: Vec<InForce>) -> anyhow::Result<Vec<InForce>> {
        count.fetch_add(1, Ordering::SeqCst);
        Ok(in_force)
    }

    const CLEAR: Verdict = Verdict { banned: false, muted: false };
    const MUTED: Verdict = Verdict { banned: false, muted: true };

    #[tokio::test]
    async fn an_entry_is_used_while_fresh_and_forgotten_on_a_change() {
        let known = KnownSanctions::default();
        let at = Instant::now();
        let count = AtomicUsize::new(0);
        assert_eq!(known.verdict_at(at, ("bob", "room:a"), 0, reads(&count, vec![])).await.expect("a verdict"), CLEAR);
        assert_eq!(
            known.verdict_at(at, ("bob", "room:a"), 0, reads(&count, vec![("mute".into(), None)])).await.expect("a verdict"),
            CLEAR,
            "kept"
        );
        assert_eq!(count.load(Ordering::SeqCst), 1, "read once");
        // Another channel, another account: their own entries.
        assert_eq!(known.verdict_at(at, ("bob", "room:b"), 0, reads(&count, vec![("mute".into(), None)])).await.expect("a verdict"), MUTED);
        known.verdict_at(at, ("ana", "room:a"), 0, reads(&count, vec![])).await.expect("a verdict");
        assert_eq!(known.len(), 3);
        known.forget("bob");
        assert_eq!(known.len(), 1);
        assert_eq!(
            known.verdict_at(at, ("bob", "room:a"), 0, reads(&count, vec![("mute".into(), None)])).await.expect("a verdict"),
            MUTED,
            "read again"
        );
        // Stale after FRESH_FOR: read again.
        let at = at + FRESH_FOR;
        assert_eq!(known.verdict_at(at, ("bob", "room:a"), 0, reads(&count, vec![])).await.expect("a verdict"), CLEAR);
        assert_eq!(count.load(Ordering::SeqCst), 5);
        known.forget_all();
        assert!(known.is_empty());
    }

    #[tokio::test]
    async fn a_sanction_ends_on_time_without_a_read() {
        let known = KnownSanctions::default();
        let at = Instant::now();
        let count = AtomicUsize::new(0);
        let in_force = vec![("mute".into(), Some(1_000)), ("ban".into(), None)];
        assert_eq!(
            known.verdict_at(at, ("bob", "room:a"), 999, reads(&count, in_force)).await.expect("a verdict"),
            Verdict { banned: true, muted: true }
        );
        assert_eq!(
            known.verdict_at(at, ("bob", "room:a"), 1_000, reads(&count, vec![])).await.expect("a verdict"),
            Verdict { banned: true, muted: false }
        );
    }

    #[tokio::test]
    async fn a_read_overtaken_by_a_forgetting_is_used_not_kept() {
        let known = KnownSanctions::default();
        let at = Instant::now();
        let read = async {
            // The change lands while the read is under way.
            known.forget("bob");
            Ok(vec![])
        };
        assert_eq!(known.verdict_at(at, ("bob", "room:a"), 0, read).await.expect("a verdict"), CLEAR);
        assert!(known.is_empty(), "not kept");
        let failed = known.verdict_at(at, ("bob", "room:a"), 0, async { Err(anyhow::anyhow!("down")) }).await;
        assert!(failed.is_err() && known.is_empty());
    }

    #[tokio::test]
    async fn past_the_most_entries_the_stale_ones_go_then_all() {
        let known = KnownSanctions::default();
        let at = Instant::now();
        for n in 0..MOST {
            known.verdict_at(at, (&format!("p{n}"), "room:a"), 0, async { Ok(vec![]) }).await.expect("a verdict");
        }
        assert_eq!(known.len(), MOST);
        let at = at + FRESH_FOR;
        known.verdict_at(at, ("fresh", "room:a"), 0, async { Ok(vec![]) }).await.expect("a verdict");
        assert_eq!(known.len(), 1, "the stale ones went");
    }
}
