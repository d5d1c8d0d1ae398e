//! Every SQL statement of the chat service, one text for both dialects.

use anyhow::Context;
use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

/// A stored message.
#[derive(Debug, Clone)]
pub struct MessageRow {
    /// UUIDv7.
    pub id: String,
    /// Channel id.
    pub channel_id: String,
    /// `None` once the sender's account was deleted.
    pub sender_id: Option<String>,
    /// Name shown.
    pub sender_name: String,
    /// Text.
    pub body: String,
    /// Unix ms.
    pub created_at: i64,
}

fn message(row: &AnyRow) -> Result<MessageRow, sqlx::Error> {
    Ok(MessageRow {
        id: row.try_get("id")?,
        channel_id: row.try_get("channel_id")?,
        sender_id: row.try_get("sender_id")?,
        sender_name: row.try_get("sender_name")?,
        body: row.try_get("body")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Stores a message.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.insert_message", skip_all)]
pub async fn insert_message<'e>(db: impl Executor<'e, Database = Any>, m: &MessageRow) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO chat_messages (id, channel_id, sender_id, sender_name, body, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&m.id)
        .bind(&m.channel_id)
        .bind(&m.sender_id)
        .bind(&m.sender_name)
        .bind(&m.body)
        .bind(m.created_at)
        .execute(db)
        .await
        .context("storing message")?;
    Ok(())
}

/// A message by id.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.message_by_id", skip_all)]
pub async fn message_by_id<'e>(db: impl Executor<'e, Database = Any>, id: &str) -> anyhow::Result<Option<MessageRow>> {
    let row = sqlx::query("SELECT id, channel_id, sender_id, sender_name, body, created_at FROM chat_messages WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
        .context("loading message")?;
    row.as_ref().map(message).transpose().context("decoding message")
}

/// Up to `limit` messages of a channel older than `before` (a message id), newest first.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.history", skip_all)]
pub async fn history<'e>(
    db: impl Executor<'e, Database = Any>,
    channel: &str,
    before: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<MessageRow>> {
    let rows = sqlx::query(
        "SELECT id, channel_id, sender_id, sender_name, body, created_at FROM chat_messages \
         WHERE channel_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    )
    .bind(channel)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("reading history")?;
    rows.iter().map(|r| message(r).context("decoding message")).collect()
}

/// Anonymises every message of `account_id` (erasure): the text stays for the conversation, the
/// author goes.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.anonymise_sender", skip_all)]
pub async fn anonymise_sender<'e>(db: impl Executor<'e, Database = Any>, account_id: &str) -> anyhow::Result<u64> {
    let done = sqlx::query("UPDATE chat_messages SET sender_id = NULL, sender_name = 'deleted player' WHERE sender_id = $1")
        .bind(account_id)
        .execute(db)
        .await
        .context("anonymising messages")?;
    Ok(done.rows_affected())
}

/// Creates a group with its owner as first member.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.insert_group", skip_all)]
pub async fn insert_group(conn: &mut sqlx::AnyConnection, id: &str, name: &str, owner: &str, now: i64) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO chat_groups (id, name, owner_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(name)
        .bind(owner)
        .bind(now)
        .execute(&mut *conn)
        .await
        .context("creating group")?;
    set_member(&mut *conn, id, owner, "owner", now).await
}

/// A group's name and owner.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.group", skip_all)]
pub async fn group<'e>(db: impl Executor<'e, Database = Any>, id: &str) -> anyhow::Result<Option<(String, String, i64)>> {
    let row = sqlx::query("SELECT name, owner_id, created_at FROM chat_groups WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
        .context("loading group")?;
    row.map(|r| Ok((r.try_get("name")?, r.try_get("owner_id")?, r.try_get("created_at")?))).transpose()
}

/// Adds a member or changes their role.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.set_member", skip_all)]
pub async fn set_member<'e>(db: impl Executor<'e, Database = Any>, group: &str, account: &str, role: &str, now: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO chat_group_members (group_id, account_id, role, joined_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (group_id, account_id) DO UPDATE SET role = excluded.role",
    )
    .bind(group)
    .bind(account)
    .bind(role)
    .bind(now)
    .execute(db)
    .await
    .context("adding member")?;
    Ok(())
}

/// Removes a member; false when they were not one.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.remove_member", skip_all)]
pub async fn remove_member<'e>(db: impl Executor<'e, Database = Any>, group: &str, account: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM chat_group_members WHERE group_id = $1 AND account_id = $2")
        .bind(group)
        .bind(account)
        .execute(db)
        .await
        .context("removing member")?;
    Ok(done.rows_affected() == 1)
}

/// The member's role in the group, if a member.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.role", skip_all)]
pub async fn role<'e>(db: impl Executor<'e, Database = Any>, group: &str, account: &str) -> anyhow::Result<Option<String>> {
    sqlx::query_scalar("SELECT role FROM chat_group_members WHERE group_id = $1 AND account_id = $2")
        .bind(group)
        .bind(account)
        .fetch_optional(db)
        .await
        .context("loading membership")
}

/// The members of a group with their roles, at most `limit`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.members", skip_all)]
pub async fn members<'e>(db: impl Executor<'e, Database = Any>, group: &str, limit: i64) -> anyhow::Result<Vec<(String, String)>> {
    let rows = sqlx::query("SELECT account_id, role FROM chat_group_members WHERE group_id = $1 ORDER BY joined_at, account_id LIMIT $2")
        .bind(group)
        .bind(limit)
        .fetch_all(db)
        .await
        .context("listing members")?;
    rows.iter().map(|r| Ok((r.try_get("account_id")?, r.try_get("role")?))).collect()
}

/// How many members a group has.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.member_count", skip_all)]
pub async fn member_count<'e>(db: impl Executor<'e, Database = Any>, group: &str) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM chat_group_members WHERE group_id = $1")
        .bind(group)
        .fetch_one(db)
        .await
        .context("counting members")
}

/// Removes the account from every group (erasure).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.leave_all_groups", skip_all)]
pub async fn leave_all_groups<'e>(db: impl Executor<'e, Database = Any>, account: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM chat_group_members WHERE account_id = $1").bind(account).execute(db).await.context("leaving groups")?;
    Ok(())
}

/// A mute or ban.
pub struct SanctionRow<'a> {
    /// Who.
    pub account_id: &'a str,
    /// `global` or a channel id.
    pub scope: &'a str,
    /// `mute` or `ban`.
    pub kind: &'a str,
    /// Unix ms; `None` for good.
    pub until: Option<i64>,
    /// Why.
    pub reason: Option<&'a str>,
    /// Who decided (an account id, or `server`).
    pub by: &'a str,
    /// With what authority: `server`, `owner` or `moderator` (see `Authority`).
    pub authority: &'a str,
}

/// Records a mute or ban, replacing one of the same kind and scope only when that one is no
/// longer in force, was issued by the same issuer, or by a lower authority: false, changing
/// nothing, otherwise. One statement, so that two moderators acting at once cannot slip a
/// weaker sanction past the check.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.sanction", skip_all)]
pub async fn sanction<'e>(db: impl Executor<'e, Database = Any>, s: &SanctionRow<'_>, now: i64) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO chat_sanctions (account_id, scope, kind, until, reason, created_by, created_at, authority) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (account_id, scope, kind) DO UPDATE SET until = excluded.until, reason = excluded.reason, \
         created_by = excluded.created_by, created_at = excluded.created_at, authority = excluded.authority \
         WHERE chat_sanctions.until <= excluded.created_at OR chat_sanctions.created_by = excluded.created_by \
         OR (CASE chat_sanctions.authority WHEN 'server' THEN 3 WHEN 'owner' THEN 2 ELSE 1 END) \
          < (CASE excluded.authority WHEN 'server' THEN 3 WHEN 'owner' THEN 2 ELSE 1 END)",
    )
    .bind(s.account_id)
    .bind(s.scope)
    .bind(s.kind)
    .bind(s.until)
    .bind(s.reason)
    .bind(s.by)
    .bind(now)
    .bind(s.authority)
    .execute(db)
    .await
    .context("recording sanction")?;
    Ok(done.rows_affected() == 1)
}

/// A recorded sanction, in force or expired.
#[derive(Debug, Clone)]
pub struct SanctionRecord {
    /// `global` or a channel id.
    pub scope: String,
    /// `mute` or `ban`.
    pub kind: String,
    /// Unix ms; `None` for good.
    pub until: Option<i64>,
    /// Why.
    pub reason: Option<String>,
    /// Who decided (an account id, or `server`).
    pub created_by: String,
    /// `server`, `owner` or `moderator`.
    pub authority: String,
    /// Unix ms.
    pub created_at: i64,
}

fn sanction_record(row: &AnyRow) -> Result<SanctionRecord, sqlx::Error> {
    Ok(SanctionRecord {
        scope: row.try_get("scope")?,
        kind: row.try_get("kind")?,
        until: row.try_get("until")?,
        reason: row.try_get("reason")?,
        created_by: row.try_get("created_by")?,
        authority: row.try_get("authority")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The sanction of `kind` on `account` in `scope`, if one is recorded.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.sanction_of", skip_all)]
pub async fn sanction_of<'e>(
    db: impl Executor<'e, Database = Any>,
    account: &str,
    scope: &str,
    kind: &str,
) -> anyhow::Result<Option<SanctionRecord>> {
    let row = sqlx::query(
        "SELECT scope, kind, until, reason, created_by, authority, created_at FROM chat_sanctions \
         WHERE account_id = $1 AND scope = $2 AND kind = $3",
    )
    .bind(account)
    .bind(scope)
    .bind(kind)
    .fetch_optional(db)
    .await
    .context("loading sanction")?;
    row.as_ref().map(sanction_record).transpose().context("decoding sanction")
}

/// Deletes the sanction of `kind` on `account` in `scope` if it is still the one issued by
/// `created_by` at `created_at` (the one the caller was allowed to lift); false otherwise.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.lift_sanction", skip_all)]
pub async fn lift_sanction<'e>(
    db: impl Executor<'e, Database = Any>,
    account: &str,
    scope: &str,
    kind: &str,
    seen: &SanctionRecord,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "DELETE FROM chat_sanctions WHERE account_id = $1 AND scope = $2 AND kind = $3 AND created_by = $4 AND created_at = $5",
    )
    .bind(account)
    .bind(scope)
    .bind(kind)
    .bind(&seen.created_by)
    .bind(seen.created_at)
    .execute(db)
    .await
    .context("lifting sanction")?;
    Ok(done.rows_affected() == 1)
}

/// Up to `limit` of `account`'s sanctions, in force or expired, by scope and kind, after the
/// (scope, kind) `after`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.sanctions_of", skip_all)]
pub async fn sanctions_of<'e>(
    db: impl Executor<'e, Database = Any>,
    account: &str,
    after: Option<(&str, &str)>,
    limit: i64,
) -> anyhow::Result<Vec<SanctionRecord>> {
    let (after_scope, after_kind) = after.unzip();
    let rows = sqlx::query(
        "SELECT scope, kind, until, reason, created_by, authority, created_at FROM chat_sanctions \
         WHERE account_id = $1 AND ($2 IS NULL OR scope > $2 OR (scope = $2 AND kind > $3)) ORDER BY scope, kind LIMIT $4",
    )
    .bind(account)
    .bind(after_scope)
    .bind(after_kind)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("listing sanctions")?;
    rows.iter().map(|r| sanction_record(r).context("decoding sanction")).collect()
}

/// The kinds of sanction in force on `account` in `channel` (or everywhere).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.sanctions", skip_all)]
pub async fn sanctions<'e>(db: impl Executor<'e, Database = Any>, account: &str, channel: &str, now: i64) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT kind FROM chat_sanctions WHERE account_id = $1 AND (scope = 'global' OR scope = $2) AND (until IS NULL OR until > $3)",
    )
    .bind(account)
    .bind(channel)
    .bind(now)
    .fetch_all(db)
    .await
    .context("loading sanctions")
}
