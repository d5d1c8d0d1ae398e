//! The players this instance knows to have no mute or ban in force, so that their chat sends
//! do not read their sanctions from the database each time (they did: a statement per message
//! beside the batched insert, most of PostgreSQL's work per message once the inserts were
//! grouped). Nearly every player has none; one who has some is read each time, as before.
//!
//! Only the account is kept, in two generations: a player read clear on a send goes into the
//! newer, which becomes the older every `FRESH_FOR / 2`, when the older is dropped; so a player
//! is known clear for at most `FRESH_FOR` before being read again. About 100 bytes a player who
//! sent lately; a socket that only joins and reads keeps nothing here (its reads of the
//! channel's sanctions are rare), so an idle joined socket costs no more than it did.
//!
//! Kept right by notices: once a sanction issued or lifted is committed, its instance forgets
//! the player and announces `Notice::SanctionsChanged`, on which every instance does the same
//! (`Hub::apply`); when the fan-out (re)connects to Redis, notices may have been missed
//! meanwhile, and every player is forgotten. A notice lost in flight (pub/sub delivers at most
//! once) is bounded by `FRESH_FOR`. A read that started before a forgetting could bring back
//! what it meant to forget: each forgetting moves an epoch, and a read that saw it move is used
//! but not kept.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a player is known clear before being read again: how late a sanction can take
/// effect on an instance whose notice was lost.
pub const FRESH_FOR: Duration = Duration::from_secs(30);

/// Players kept in the newer generation at most; past it, the generations turn early.
const MOST: usize = 100_000;

/// The most sanctions in force read for a player at once: a player with more (banned from that
/// many channels) is judged by the channel's own (`read_here`).
pub const MOST_READ: i64 = 100;

/// A sanction in force when read: its scope (`global` or a channel id), kind, and end
/// (milliseconds; `None` for good).
pub type InForce = (String, String, Option<i64>);

/// What a player may do in a channel, by their sanctions there and everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Banned: may not join, read or send.
    pub banned: bool,
    /// Muted: may not send.
    pub muted: bool,
}

/// No sanction.
const CLEAR: Verdict = Verdict { banned: false, muted: false };

struct Generations {
    newer: HashSet<Box<str>>,
    older: HashSet<Box<str>>,
    /// When `newer` began.
    since: Instant,
}

/// The players known clear here. Shared by the instance's sockets and handlers.
pub struct KnownSanctions {
    clear: Mutex<Generations>,
    /// Moves with each forgetting (`forget`, `forget_all`).
    epoch: AtomicU64,
}

impl Default for KnownSanctions {
    fn default() -> Self {
        KnownSanctions {
            clear: Mutex::new(Generations { newer: HashSet::new(), older: HashSet::new(), since: Instant::now() }),
            epoch: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for KnownSanctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSanctions").field("len", &self.len()).finish()
    }
}

impl KnownSanctions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.clear.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `account`'s verdict in `channel` at `now` (milliseconds): clear without a read while it is
    /// known clear. Else, for a send (`keep`), from `read_all` (its sanctions in force anywhere,
    /// at most `MOST_READ` and one), and if it has none it is known clear from then on (a player
    /// with more than `MOST_READ` is judged by `read_here`); for anything else, from `read_here`
    /// (its sanctions in force in the channel or everywhere), and nothing is kept.
    pub async fn verdict<All, Here>(
        &self,
        (account, channel): (&str, &str),
        now: i64,
        keep: bool,
        (read_all, read_here): (All, Here),
    ) -> anyhow::Result<Verdict>
    where
        All: Future<Output = anyhow::Result<Vec<InForce>>>,
        Here: Future<Output = anyhow::Result<Vec<InForce>>>,
    {
        if !keep {
            if self.is_clear(account, Instant::now()) {
                return Ok(CLEAR);
            }
            return Ok(judge(&read_here.await?, channel, now));
        }
        self.verdict_at(Instant::now(), (account, channel), now, read_all, read_here).await
    }

    /// `verdict`, as at `at` on the monotonic clock (the tests' clock).
    async fn verdict_at<All, Here>(
        &self,
        at: Instant,
        (account, channel): (&str, &str),
        now: i64,
        read_all: All,
        read_here: Here,
    ) -> anyhow::Result<Verdict>
    where
        All: Future<Output = anyhow::Result<Vec<InForce>>>,
        Here: Future<Output = anyhow::Result<Vec<InForce>>>,
    {
        if self.is_clear(account, at) {
            return Ok(CLEAR);
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let in_force = read_all.await?;
        if in_force.is_empty() {
            let mut clear = self.lock();
            // Checked under the lock that forgetting takes too: a forgetting either came before
            // this check (and the read is not kept) or comes after the insert (and removes it).
            if self.epoch.load(Ordering::SeqCst) == epoch {
                if clear.newer.len() >= MOST {
                    turn(&mut clear, at);
                }
                clear.newer.insert(account.into());
            }
            return Ok(CLEAR);
        }
        if in_force.len() as i64 > MOST_READ {
            return Ok(judge(&read_here.await?, channel, now));
        }
        Ok(judge(&in_force, channel, now))
    }

    /// Whether `account` is known clear at `at` (turning the generations when it is time).
    fn is_clear(&self, account: &str, at: Instant) -> bool {
        let mut clear = self.lock();
        if at.saturating_duration_since(clear.since) >= FRESH_FOR / 2 {
            turn(&mut clear, at);
        }
        clear.newer.contains(account) || clear.older.contains(account)
    }

    /// Forgets `account`: its sanctions changed.
    pub fn forget(&self, account: &str) {
        let mut clear = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        clear.newer.remove(account);
        clear.older.remove(account);
    }

    /// Forgets every player: notices may have been missed.
    pub fn forget_all(&self) {
        let mut clear = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        clear.newer = HashSet::new();
        clear.older = HashSet::new();
    }

    /// Players known clear.
    pub fn len(&self) -> usize {
        let clear = self.lock();
        clear.newer.len() + clear.older.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The newer generation becomes the older, the older is dropped.
fn turn(clear: &mut Generations, at: Instant) {
    clear.older = std::mem::take(&mut clear.newer);
    clear.since = at;
}

/// The verdict of the sanctions in force that apply in `channel` (its own and the global ones).
fn judge(in_force: &[InForce], channel: &str, now: i64) -> Verdict {
    let holds = |kind: &str| {
        in_force
            .iter()
            .any(|(scope, k, until)| (scope == "global" || scope == channel) && k == kind && until.is_none_or(|until| until > now))
    };
    Verdict { banned: holds("ban"), muted: holds("mute") }
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

    fn sanction(scope: &str, kind: &str, until: Option<i64>) -> InForce {
        (scope.into(), kind.into(), until)
    }

    const MUTED: Verdict = Verdict { banned: false, muted: true };

    #[tokio::test]
    async fn a_clear_player_is_read_once_until_forgotten_or_stale() {
        let (known, at, count, here) = (KnownSanctions::default(), Instant::now(), AtomicUsize::new(0), AtomicUsize::new(0));
        let bob = ("bob", "room:a");
        assert_eq!(known.verdict_at(at, bob, 0, reads(&count, vec![]), reads(&here, vec![])).await.expect("verdict"), CLEAR);
        let muted = vec![sanction("global", "mute", None)];
        assert_eq!(known.verdict_at(at, bob, 0, reads(&count, muted.clone()), reads(&here, vec![])).await.expect("verdict"), CLEAR);
        assert_eq!(count.load(Ordering::SeqCst), 1, "known clear: not read again");
        // Any channel: the player is clear everywhere.
        assert_eq!(known.verdict_at(at, ("bob", "room:b"), 0, reads(&count, muted.clone()), reads(&here, vec![])).await.expect("v"), CLEAR);
        known.verdict_at(at, ("ana", "room:a"), 0, reads(&count, vec![]), reads(&here, vec![])).await.expect("verdict");
        assert_eq!(known.len(), 2);
        known.forget("bob");
        assert_eq!(known.len(), 1);
        assert_eq!(known.verdict_at(at, bob, 0, reads(&count, muted.clone()), reads(&here, vec![])).await.expect("verdict"), MUTED);
        assert_eq!(known.verdict_at(at, bob, 0, reads(&count, muted), reads(&here, vec![])).await.expect("verdict"), MUTED, "read again");
        assert_eq!(count.load(Ordering::SeqCst), 4, "a sanctioned player is read each time");
        // Ana stays known through one turn of the generations, not two.
        let later = at + FRESH_FOR / 2;
        known.verdict_at(later, ("ana", "room:a"), 0, reads(&count, vec![]), reads(&here, vec![])).await.expect("verdict");
        assert_eq!(count.load(Ordering::SeqCst), 4, "still known");
        let stale = at + FRESH_FOR;
        known.verdict_at(stale, ("ana", "room:a"), 0, reads(&count, vec![]), reads(&here, vec![])).await.expect("verdict");
        assert_eq!(count.load(Ordering::SeqCst), 5, "read again after FRESH_FOR");
        known.forget_all();
        assert!(known.is_empty());
        assert_eq!(here.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn sanctions_apply_in_their_scope_until_they_end() {
        let (known, at, count) = (KnownSanctions::default(), Instant::now(), AtomicUsize::new(0));
        let in_force =
            vec![sanction("room:a", "mute", Some(1_000)), sanction("room:a", "ban", None), sanction("global", "mute", Some(500))];
        let verdict = |channel: &'static str, now: i64| {
            known.verdict_at(at, ("bob", channel), now, reads(&count, in_force.clone()), async { Ok(vec![]) })
        };
        assert_eq!(verdict("room:a", 999).await.expect("verdict"), Verdict { banned: true, muted: true });
        assert_eq!(verdict("room:a", 1_000).await.expect("verdict"), Verdict { banned: true, muted: false });
        assert_eq!(verdict("room:b", 499).await.expect("verdict"), MUTED);
        assert_eq!(verdict("room:b", 500).await.expect("verdict"), CLEAR);
        assert!(known.is_empty(), "a player with sanctions is never known clear");
    }

    #[tokio::test]
    async fn a_player_with_more_sanctions_than_are_read_is_judged_in_the_channel() {
        let (known, count) = (KnownSanctions::default(), AtomicUsize::new(0));
        let many: Vec<InForce> = (0..=MOST_READ).map(|n| sanction(&format!("room:r{n}"), "ban", None)).collect();
        let here = vec![sanction("room:a", "mute", None)];
        let verdict = known.verdict(("bob", "room:a"), 0, true, (reads(&count, many), reads(&count, here))).await.expect("verdict");
        assert_eq!((verdict, count.load(Ordering::SeqCst)), (MUTED, 2));
    }

    #[tokio::test]
    async fn a_read_overtaken_by_a_forgetting_is_used_not_kept() {
        let known = KnownSanctions::default();
        let read = async {
            // The change lands while the read is under way.
            known.forget("bob");
            Ok(vec![])
        };
        assert_eq!(known.verdict(("bob", "room:a"), 0, true, (read, async { Ok(vec![]) })).await.expect("verdict"), CLEAR);
        assert!(known.is_empty(), "not kept");
        let failed = known.verdict(("bob", "room:a"), 0, true, (async { Err(anyhow::anyhow!("down")) }, async { Ok(vec![]) })).await;
        assert!(failed.is_err() && known.is_empty());
    }

    #[tokio::test]
    async fn past_the_most_players_the_generations_turn_early() {
        let (known, at) = (KnownSanctions::default(), Instant::now());
        for n in 0..=MOST {
            known.verdict_at(at, (&format!("p{n}"), "room:a"), 0, async { Ok(vec![]) }, async { Ok(vec![]) }).await.expect("verdict");
        }
        assert_eq!(known.len(), MOST + 1, "one turn: the first MOST are the older generation");
        for n in 0..MOST {
            known.verdict_at(at, (&format!("q{n}"), "room:a"), 0, async { Ok(vec![]) }, async { Ok(vec![]) }).await.expect("verdict");
        }
        assert_eq!(known.len(), MOST + 1, "a second turn dropped the first generation");
    }

    #[tokio::test]
    async fn a_join_or_a_read_keeps_nothing_but_uses_what_a_send_kept() {
        let (known, all, here) = (KnownSanctions::default(), AtomicUsize::new(0), AtomicUsize::new(0));
        let muted_here = vec![sanction("room:a", "mute", None)];
        let read =
            |keep: bool, in_force: Vec<InForce>| known.verdict(("bob", "room:a"), 0, keep, (reads(&all, vec![]), reads(&here, in_force)));
        assert_eq!(read(false, muted_here.clone()).await.expect("verdict"), MUTED, "judged by the channel's own");
        assert_eq!((all.load(Ordering::SeqCst), here.load(Ordering::SeqCst), known.len()), (0, 1, 0), "nothing kept");
        assert_eq!(read(true, vec![]).await.expect("verdict"), CLEAR);
        assert_eq!(read(false, muted_here).await.expect("verdict"), CLEAR, "known clear since the send");
        assert_eq!((all.load(Ordering::SeqCst), here.load(Ordering::SeqCst), known.len()), (1, 1, 1));
    }
}
