//! Every SQL statement of friends and blocks. A relation between two players is two rows of
//! `friend_links`, one per direction, written together (see migration 0018).

use anyhow::Context;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Executor, Row};

/// Where a relation stands, seen from one of its players.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Both accepted.
    Friends,
    /// This player asked; the other has not answered.
    Outgoing,
    /// The other asked this player.
    Incoming,
}

impl LinkState {
    /// As stored and as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Friends => "friends",
            LinkState::Outgoing => "outgoing",
            LinkState::Incoming => "incoming",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "friends" => Ok(LinkState::Friends),
            "outgoing" => Ok(LinkState::Outgoing),
            "incoming" => Ok(LinkState::Incoming),
            other => anyhow::bail!("unknown friend link state {other:?}"),
        }
    }
}

/// Locks the rows of accounts `a` and `b`, in id order so that two transactions on the same pair
/// cannot deadlock, by an update that changes nothing; every change to a relation takes these
/// locks first, so requests, accepts, blocks and the counts under the caps are serialised per
/// player. Returns how many of the two exist.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.lock_pair", skip_all)]
pub async fn lock_pair(conn: &mut AnyConnection, a: &str, b: &str) -> anyhow::Result<u64> {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut found = 0;
    for id in [first, second] {
        found += sqlx::query("UPDATE accounts SET id = id WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await
            .context("locking an account")?
            .rows_affected();
    }
    Ok(found)
}

/// How `account_id` stands with `other_id`, and since when (Unix ms).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.link", skip_all)]
pub async fn link<'e>(db: impl Executor<'e, Database = Any>, account_id: &str, other_id: &str) -> anyhow::Result<Option<(LinkState, i64)>> {
    let row = sqlx::query("SELECT state, since FROM friend_links WHERE account_id = $1 AND other_id = $2")
        .bind(account_id)
        .bind(other_id)
        .fetch_optional(db)
        .await
        .context("loading a friend link")?;
    let Some(row) = row else { return Ok(None) };
    let state: String = row.try_get("state")?;
    Ok(Some((LinkState::parse(&state)?, row.try_get("since")?)))
}

/// How many relations of `state` `account_id` has.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.count_links", skip_all)]
pub async fn count_links<'e>(db: impl Executor<'e, Database = Any>, account_id: &str, state: LinkState) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM friend_links WHERE account_id = $1 AND state = $2")
        .bind(account_id)
        .bind(state.as_str())
        .fetch_one(db)
        .await
        .context("counting friend links")
}

/// Sets the relation of `a` and `b`: `a_state` as `a` sees it, its mirror for `b`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.put_link_pair", skip_all)]
pub async fn put_link_pair(conn: &mut AnyConnection, a: &str, b: &str, a_state: LinkState, since: i64) -> anyhow::Result<()> {
    let b_state = match a_state {
        LinkState::Friends => LinkState::Friends,
        LinkState::Outgoing => LinkState::Incoming,
        LinkState::Incoming => LinkState::Outgoing,
    };
    for (account, other, state) in [(a, b, a_state), (b, a, b_state)] {
        sqlx::query(
            "INSERT INTO friend_links (account_id, other_id, state, since) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, other_id) DO UPDATE SET state = excluded.state, since = excluded.since",
        )
        .bind(account)
        .bind(other)
        .bind(state.as_str())
        .bind(since)
        .execute(&mut *conn)
        .await
        .context("writing a friend link")?;
    }
    Ok(())
}

/// Ends any relation of `a` and `b` (friendship or request, either way); true when there was one.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.delete_link_pair", skip_all)]
pub async fn delete_link_pair<'e>(db: impl Executor<'e, Database = Any>, a: &str, b: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM friend_links WHERE (account_id = $1 AND other_id = $2) OR (account_id = $2 AND other_id = $1)")
        .bind(a)
        .bind(b)
        .execute(db)
        .await
        .context("deleting a friend link")?;
    Ok(done.rows_affected() > 0)
}

/// Whether `blocker_id` has blocked `blocked_id`.
pub async fn is_blocked<'e>(db: impl Executor<'e, Database = Any>, blocker_id: &str, blocked_id: &str) -> anyhow::Result<bool> {
    Ok(block_since(db, blocker_id, blocked_id).await?.is_some())
}

/// Since when (Unix ms) `blocker_id` has blocked `blocked_id`, if they have.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.block_since", skip_all)]
pub async fn block_since<'e>(db: impl Executor<'e, Database = Any>, blocker_id: &str, blocked_id: &str) -> anyhow::Result<Option<i64>> {
    let found: Option<i64> = sqlx::query_scalar("SELECT created_at FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
        .bind(blocker_id)
        .bind(blocked_id)
        .fetch_optional(db)
        .await
        .context("loading a block")?;
    Ok(found)
}

/// How many players `blocker_id` has blocked.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.count_blocks", skip_all)]
pub async fn count_blocks<'e>(db: impl Executor<'e, Database = Any>, blocker_id: &str) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM blocks WHERE blocker_id = $1").bind(blocker_id).fetch_one(db).await.context("counting blocks")
}

/// Records a block; false when it was there already.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.insert_block", skip_all)]
pub async fn insert_block<'e>(db: impl Executor<'e, Database = Any>, blocker_id: &str, blocked_id: &str, now: i64) -> anyhow::Result<bool> {
    let done = sqlx::query("INSERT INTO blocks (blocker_id, blocked_id, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(blocker_id)
        .bind(blocked_id)
        .bind(now)
        .execute(db)
        .await
        .context("inserting a block")?;
    Ok(done.rows_affected() == 1)
}

/// Lifts a block; false when there was none.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.delete_block", skip_all)]
pub async fn delete_block<'e>(db: impl Executor<'e, Database = Any>, blocker_id: &str, blocked_id: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
        .bind(blocker_id)
        .bind(blocked_id)
        .execute(db)
        .await
        .context("deleting a block")?;
    Ok(done.rows_affected() == 1)
}

/// A player in one of a player's lists.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Their account.
    pub account_id: String,
    /// Their public name now.
    pub name: String,
    /// Unix ms: since when they are on the list.
    pub since: i64,
}

fn listed(row: &AnyRow) -> Result<Listed, sqlx::Error> {
    Ok(Listed { account_id: row.try_get("other_id")?, name: row.try_get("name")?, since: row.try_get("since")? })
}

/// Up to `limit` of `account_id`'s relations of `state`, by account id, after `after`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.list_links", skip_all)]
pub async fn list_links<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    state: LinkState,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<Listed>> {
    let rows = sqlx::query(
        "SELECT l.other_id, COALESCE(a.display_name, a.username) AS name, l.since FROM friend_links l \
         JOIN accounts a ON a.id = l.other_id WHERE l.account_id = $1 AND l.state = $2 AND l.other_id > $3 \
         ORDER BY l.other_id LIMIT $4",
    )
    .bind(account_id)
    .bind(state.as_str())
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(db)
    .await
    .context("listing friend links")?;
    rows.iter().map(listed).collect::<Result<_, _>>().context("decoding friend links")
}

/// Up to `limit` of the players `blocker_id` blocked, by account id, after `after`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.list_blocks", skip_all)]
pub async fn list_blocks<'e>(
    db: impl Executor<'e, Database = Any>,
    blocker_id: &str,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<Listed>> {
    let rows = sqlx::query(
        "SELECT b.blocked_id AS other_id, COALESCE(a.display_name, a.username) AS name, b.created_at AS since FROM blocks b \
         JOIN accounts a ON a.id = b.blocked_id WHERE b.blocker_id = $1 AND b.blocked_id > $2 ORDER BY b.blocked_id LIMIT $3",
    )
    .bind(blocker_id)
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(db)
    .await
    .context("listing blocks")?;
    rows.iter().map(listed).collect::<Result<_, _>>().context("decoding blocks")
}

/// Forgets every relation and block of an erased account, both ways.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.erase_social", skip_all)]
pub async fn erase_social(conn: &mut AnyConnection, account_id: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM friend_links WHERE account_id = $1 OR other_id = $1")
        .bind(account_id)
        .execute(&mut *conn)
        .await
        .context("deleting an account's friend links")?;
    sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 OR blocked_id = $1")
        .bind(account_id)
        .execute(&mut *conn)
        .await
        .context("deleting an account's blocks")?;
    Ok(())
}

/// How many friends, requests and blocks an account has (the admin view).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Friends.
    pub friends: i64,
    /// Requests received, unanswered.
    pub incoming: i64,
    /// Requests sent, unanswered.
    pub outgoing: i64,
    /// Players it blocked.
    pub blocks: i64,
}

/// The account's counts.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.social_counts", skip_all)]
pub async fn counts(conn: &mut AnyConnection, account_id: &str) -> anyhow::Result<Counts> {
    Ok(Counts {
        friends: count_links(&mut *conn, account_id, LinkState::Friends).await?,
        incoming: count_links(&mut *conn, account_id, LinkState::Incoming).await?,
        outgoing: count_links(&mut *conn, account_id, LinkState::Outgoing).await?,
        blocks: count_blocks(&mut *conn, account_id).await?,
    })
}
