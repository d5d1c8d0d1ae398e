//! Keeping the rank index in agreement with the records, which are the source of truth.
//!
//! A record reaches the index only after its transaction has committed, so the index can be
//! left behind: the process dies between the two (`kill -9`, an ECS task replaced), or the index
//! update fails or never runs. Every transaction that changes records therefore also writes an
//! index check (`leaderboard_index_checks`) naming them, due a few seconds later
//! ([`CHECK_AFTER_MS`]). The writer deletes it once the index took every record (see
//! `crate::writer`); a check still there when due is claimed by whichever instance's repairer
//! ([`run_repairer`], every second on every instance) comes first, which corrects the entries it
//! names with [`LeaderboardState::reconcile`]: it reads each owner's entry from the index, then the
//! owner's record, and writes the record's entry (or removes the entry when there is no record)
//! unless the entry changed between the two reads. Races with writers and other repairers are
//! harmless, because:
//!
//! - a writer writes only a version that has committed, and only over an older one, so an entry
//!   that changed after the repairer read it holds a committed version: the repairer leaves it
//!   and the check comes due again, until the two reads agree;
//! - an entry that did not change is replaced by a record read after it, which is at least as new
//!   as anything written to the index before; a writer that commits a newer version later writes
//!   it over, being newer;
//! - a second repairer finds the entry already right, or changed (and looks again).
//!
//! An erasure ([`LeaderboardState::erase_player`]) deletes the records and writes its own check
//! in one transaction, then corrects the index from that check at once. A retry after a failed
//! index step finds no record left to delete but finds the check, and finishes. The check stays
//! until it is due ([`ERASURE_RECHECK_MS`]), when a repairer looks once more: a submission that
//! committed just before the erasure, and whose index update landed just after the erasure's,
//! would otherwise put the player back.
//!
//! On embedded defaults the checks are the same (SQLite and the in-memory index): a crash loses
//! the whole in-memory index, which is rebuilt from the records on first use, and any check left
//! then finds the index unbuilt or already agreeing.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use platform::db::now_millis;
use platform::shutdown::Shutdown;

use crate::LeaderboardState;
use crate::board::Board;
use crate::index::{Correction, Entry, Found, Scope};
use crate::store::{self, Checked};

/// How long after its transaction a writer's check comes due. The index update normally follows
/// the commit within milliseconds and Redis calls time out after 2 s, so a check found due is
/// one whose writer died or failed (a repair of one that did not is harmless, only wasted).
pub const CHECK_AFTER_MS: i64 = 3_000;
/// How long after an erasure its check comes due for the last look (longer than an index update
/// that began before the erasure can take).
pub const ERASURE_RECHECK_MS: i64 = 10_000;
/// How often each instance looks for due checks.
const REPAIR_EVERY: Duration = Duration::from_secs(1);
/// A claimed check comes due again after this unless its repair finished (the repairer died, or
/// found the index changing under it or being rebuilt).
const CLAIM_MS: i64 = 3_000;
/// Most checks claimed in one round.
const CLAIM_BATCH: i64 = 100;
/// Tries of a deletion's index step (an erasure, an operator's record deletion) while the index
/// changes under it, 100 ms apart.
const ERASURE_TRIES: u32 = 20;

impl LeaderboardState {
    /// Makes the index entries of `owners` (sorted, distinct) on a board's season agree with
    /// their records: each owner's entry becomes its record's, or goes when there is none, unless
    /// the entry changes meanwhile (see the module's doc). Returns false when it must be done
    /// again later (an entry changed meanwhile, or the index is being rebuilt).
    #[tracing::instrument(skip_all, fields(board = board_id, season, owners = owners.len()))]
    pub async fn reconcile(&self, board_id: &str, season: i64, owners: &[&str]) -> anyhow::Result<bool> {
        let Some(board) = self.board_for_repair(board_id).await? else { return Ok(true) };
        let scope = Scope { board: board_id, season };
        let held = match self.index.held(scope, owners).await? {
            Found::Ready(held) => held,
            Found::Unbuilt => return Ok(true),
            Found::Rebuilding => return Ok(false),
        };
        // The records are read after the entries: see the module's doc.
        let records = {
            let mut conn = self.db.pool().acquire().await.context("acquiring a connection for a repair")?;
            store::load_records(&mut conn, board_id, season, owners, None).await?
        };
        let entries: HashMap<&str, Entry> = records.iter().map(|r| (r.owner_id.as_str(), Entry::of(&board, r))).collect();
        let corrections: Vec<Correction> = owners
            .iter()
            .zip(&held)
            .map(|(owner, seen)| Correction { owner_id: owner, seen: seen.as_deref(), target: entries.get(owner) })
            .collect();
        self.index.correct(scope, &corrections).await
    }

    /// Reconciles everything a check names; false when some of it must be done again later.
    async fn check(&self, records: &[Checked]) -> anyhow::Result<bool> {
        let mut agreed = true;
        for checked in records {
            let owners: Vec<&str> = checked.owners.iter().map(String::as_str).collect();
            agreed &= self.reconcile(&checked.board, checked.season, &owners).await?;
        }
        Ok(agreed)
    }

    /// The board, for its sort order (which never changes, so a cached copy will do); `None`
    /// when it does not exist.
    async fn board_for_repair(&self, id: &str) -> anyhow::Result<Option<Board>> {
        if let Some(board) = self.boards.get(id) {
            return Ok(Some(board));
        }
        let board = store::board_by_id(self.db.pool(), id).await?;
        if let Some(board) = &board {
            self.boards.put(board);
        }
        Ok(board)
    }

    /// Erases every record of `owner_id` (consumer of `account.deleted`) from the database, and
    /// their entries from the index, from the check the erasure wrote in its transaction: this
    /// delivery's, or an earlier one's whose index step failed after it had deleted the records.
    pub async fn erase_player(&self, owner_id: &str) -> anyhow::Result<usize> {
        let erased = store::erase_owner(&self.db, owner_id, now_millis() + ERASURE_RECHECK_MS).await?;
        if let Some(records) = store::index_check(self.db.pool(), &store::erasure_check_id(owner_id)).await? {
            self.check_until_agreed(&records).await?;
        }
        Ok(erased.len())
    }

    /// Reconciles everything `records` name (the check a deletion wrote in its transaction) until
    /// the index agrees, looking again 100 ms later while it changes under it. The check itself
    /// stays until it is due, for the repairer's last look.
    pub async fn check_until_agreed(&self, records: &[Checked]) -> anyhow::Result<()> {
        let mut tries = 1;
        while !self.check(records).await? {
            anyhow::ensure!(tries < ERASURE_TRIES, "the rank index kept changing under a deletion");
            tries += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// Repairs the index from due checks every second until shutdown. Every instance runs it; a
/// check is claimed by one at a time.
pub async fn run_repairer(state: LeaderboardState, shutdown: Shutdown) {
    let mut every = tokio::time::interval(REPAIR_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.stopped() => return,
            _ = every.tick() => {}
        }
        if let Err(err) = repair_round(&state).await {
            tracing::warn!(error = format!("{err:#}"), "repairing the rank index failed; retrying");
        }
    }
}

/// Claims the checks due now and reconciles what they name. Returns how many it finished.
pub async fn repair_round(state: &LeaderboardState) -> anyhow::Result<usize> {
    let now = now_millis();
    let until = now + CLAIM_MS;
    let claimed = store::claim_index_checks(state.db.pool(), now, until, CLAIM_BATCH).await?;
    let mut finished = 0;
    for (id, records) in &claimed {
        match state.check(records).await {
            Ok(true) => {
                store::finish_index_check(state.db.pool(), id, until).await?;
                finished += 1;
            }
            // Due again when the claim runs out.
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(
                    check = id,
                    error = format!("{err:#}"),
                    "repairing rank index entries failed; leaving them to the next round"
                );
                // Due at once, for whichever instance comes next: this one may be the one that
                // cannot reach the index.
                store::release_index_check(state.db.pool(), id, until, now_millis()).await?;
            }
        }
    }
    if !claimed.is_empty() {
        tracing::info!(claimed = claimed.len(), finished, "checked rank index entries against the records");
    }
    Ok(finished)
}
