//! Every SQL statement of the chat service, one text for both dialects.

use anyhow::Context;
use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

use crate::known_sanctions::InForce;

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

/// Stores messages in one statement: all of them or, when it fails, none (a statement is atomic
/// on both dialects, and outside a transaction it commits on its own: one commit, one fsync).
/// The statement's text follows the number of rows, so a connection keeps at most
/// `crate::writer::MAX_BATCH` of them prepared.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.insert_messages", skip_all, fields(messages = rows.len()))]
pub async fn insert_messages<'e>(db: impl Executor<'e, Database = Any>, rows: &[&MessageRow]) -> anyhow::Result<()> {
    const COLUMNS: usize = 6;
    if rows.is_empty() {
        return Ok(());
    }
    let mut sql = String::from("INSERT INTO chat_messages (id, channel_id, sender_id, sender_name, body, created_at) VALUES ");
    for i in 0..rows.len() {
        let n = i * COLUMNS;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${}, ${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4, n + 5, n + 6));
    }
    let mut query = sqlx::query(&sql);
    for m in rows {
        query = query.bind(&m.id).bind(&m.channel_id).bind(&m.sender_id).bind(&m.sender_name).bind(&m.body).bind(m.created_at);
    }
    let done = query.execute(db).await.context("storing messages")?;
    anyhow::ensure!(done.rows_affected() == rows.len() as u64, "stored {} of {} messages", done.rows_affected(), rows.len());
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

/// A stored notification, as its player sees it.
#[derive(Debug, Clone)]
pub struct NotificationRow {
    /// UUIDv7.
    pub id: String,
    /// `friend_request`, `friend_accepted`, `dm` or `season_result`.
    pub kind: String,
    /// JSON object, by kind.
    pub data: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; `None` while unread.
    pub read_at: Option<i64>,
}

const NOTIFICATION_COLUMNS: &str = "id, kind, data, created_at, read_at";

fn notification(row: &AnyRow) -> Result<NotificationRow, sqlx::Error> {
    Ok(NotificationRow {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        data: row.try_get("data")?,
        created_at: row.try_get("created_at")?,
        read_at: row.try_get("read_at")?,
    })
}

/// A notification to store.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    /// The player notified.
    pub account_id: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// What made it, unique per player: an event's id, or a message's.
    pub source: &'a str,
    /// A conversation's channel (`dm`): while unread, later messages update the one notification.
    pub thread: Option<&'a str>,
    /// The other player it is about, if any.
    pub actor_id: Option<&'a str>,
    /// JSON object.
    pub data: String,
    /// Unix ms.
    pub created_at: i64,
}

/// Stores `n` unless its player has one from the same source already; with a `thread`, updates
/// the thread's unread notification instead when there is one. The row stored or updated, or
/// `None` when the source was seen before (a redelivered event).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.upsert_notification", skip_all)]
pub async fn upsert_notification(conn: &mut sqlx::AnyConnection, n: &NewNotification<'_>) -> anyhow::Result<Option<NotificationRow>> {
    // Only the conflict clause differs (which unique index decides), and it is a constant.
    let on_conflict = if n.thread.is_some() {
        "ON CONFLICT (account_id, thread) WHERE read_at IS NULL AND thread IS NOT NULL DO UPDATE SET data = excluded.data"
    } else {
        "ON CONFLICT (account_id, source) DO NOTHING"
    };
    let row = sqlx::query(&format!(
        "INSERT INTO chat_notifications (id, account_id, kind, source, thread, actor_id, data, created_at, read_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL) {on_conflict} RETURNING {NOTIFICATION_COLUMNS}"
    ))
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(n.account_id)
    .bind(n.kind)
    .bind(n.source)
    .bind(n.thread)
    .bind(n.actor_id)
    .bind(&n.data)
    .bind(n.created_at)
    .fetch_optional(&mut *conn)
    .await
    .context("storing a notification")?;
    row.as_ref().map(notification).transpose().context("decoding a notification")
}

/// Deletes `account`'s notifications beyond the newest `keep`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.cap_notifications", skip_all)]
pub async fn cap_notifications<'e>(db: impl Executor<'e, Database = Any>, account: &str, keep: i64) -> anyhow::Result<u64> {
    // The subquery finds the newest one beyond the cap (NULL, deleting nothing, while under it).
    let done = sqlx::query(
        "DELETE FROM chat_notifications WHERE account_id = $1 AND id <= \
         (SELECT id FROM chat_notifications WHERE account_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
    )
    .bind(account)
    .bind(keep)
    .execute(db)
    .await
    .context("capping notifications")?;
    Ok(done.rows_affected())
}

/// Up to `limit` of `account`'s notifications made after `since` (Unix ms), newest first, older
/// than the notification `before`; only unread ones with `unread_only`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.notifications", skip_all)]
pub async fn notifications<'e>(
    db: impl Executor<'e, Database = Any>,
    account: &str,
    since: i64,
    unread_only: bool,
    before: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<NotificationRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM chat_notifications WHERE account_id = $1 AND created_at > $2 \
         AND ($3 = 0 OR read_at IS NULL) AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
    ))
    .bind(account)
    .bind(since)
    .bind(i64::from(unread_only))
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("listing notifications")?;
    rows.iter().map(|r| notification(r).context("decoding a notification")).collect()
}

/// How many of `account`'s notifications made after `since` are unread (at most the cap per
/// player, so a bounded count).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.unread_notifications", skip_all)]
pub async fn unread_notifications<'e>(db: impl Executor<'e, Database = Any>, account: &str, since: i64) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM chat_notifications WHERE account_id = $1 AND read_at IS NULL AND created_at > $2")
        .bind(account)
        .bind(since)
        .fetch_one(db)
        .await
        .context("counting unread notifications")
}

/// Which of a player's notifications to mark read.
#[derive(Debug, Clone)]
pub enum ReadMark<'a> {
    /// These ids.
    Ids(&'a [String]),
    /// Every one up to this id, inclusive.
    UpTo(&'a str),
}

/// Marks `account`'s unread notifications chosen by `mark` read at `now`; how many were.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.mark_notifications_read", skip_all)]
pub async fn mark_notifications_read<'e>(
    db: impl Executor<'e, Database = Any>,
    account: &str,
    mark: &ReadMark<'_>,
    now: i64,
) -> anyhow::Result<u64> {
    let done = match mark {
        ReadMark::UpTo(id) => {
            sqlx::query("UPDATE chat_notifications SET read_at = $2 WHERE account_id = $1 AND read_at IS NULL AND id <= $3")
                .bind(account)
                .bind(now)
                .bind(*id)
                .execute(db)
                .await
        }
        ReadMark::Ids(ids) => {
            if ids.is_empty() {
                return Ok(0);
            }
            // Only the placeholders are formatted in; the ids are bound.
            let placeholders: Vec<String> = (3..ids.len() + 3).map(|n| format!("${n}")).collect();
            let sql = format!(
                "UPDATE chat_notifications SET read_at = $2 WHERE account_id = $1 AND read_at IS NULL AND id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(account).bind(now);
            for id in *ids {
                query = query.bind(id);
            }
            query.execute(db).await
        }
    }
    .context("marking notifications read")?;
    Ok(done.rows_affected())
}

/// Marks `account`'s unread `dm` notification of `channel` read (the conversation was read).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.mark_thread_read", skip_all)]
pub async fn mark_thread_read<'e>(db: impl Executor<'e, Database = Any>, account: &str, channel: &str, now: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE chat_notifications SET read_at = $3 WHERE account_id = $1 AND thread = $2 AND read_at IS NULL")
        .bind(account)
        .bind(channel)
        .bind(now)
        .execute(db)
        .await
        .context("marking a conversation's notification read")?;
    Ok(())
}

/// Deletes up to `batch` notifications made before `before` (Unix ms); how many went.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.prune_notifications", skip_all)]
pub async fn prune_notifications<'e>(db: impl Executor<'e, Database = Any>, before: i64, batch: i64) -> anyhow::Result<u64> {
    let done = sqlx::query("DELETE FROM chat_notifications WHERE id IN (SELECT id FROM chat_notifications WHERE created_at < $1 LIMIT $2)")
        .bind(before)
        .bind(batch)
        .execute(db)
        .await
        .context("pruning old notifications")?;
    Ok(done.rows_affected())
}

/// Erasure: the player's notifications, those about them in other players' streams, their
/// conversations' rows, and their name in their partners' rows.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.erase_inbox", skip_all)]
pub async fn erase_inbox(conn: &mut sqlx::AnyConnection, account: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM chat_notifications WHERE account_id = $1 OR actor_id = $1")
        .bind(account)
        .execute(&mut *conn)
        .await
        .context("erasing notifications")?;
    sqlx::query("DELETE FROM chat_conversations WHERE account_id = $1")
        .bind(account)
        .execute(&mut *conn)
        .await
        .context("erasing conversations")?;
    sqlx::query("UPDATE chat_conversations SET other_name = 'deleted player' WHERE other_id = $1")
        .bind(account)
        .execute(&mut *conn)
        .await
        .context("anonymising conversation partners")?;
    Ok(())
}

/// Updates both players' rows of the direct conversation `m` was sent in (the caller's
/// transaction, the message's): for the sender it is read up to it (writing in a conversation
/// reads it), for the recipient one more unread. A message older than the row's newest (two
/// sent at once, committed out of order) does not move the newest back.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.record_direct", skip_all)]
pub async fn record_direct(conn: &mut sqlx::AnyConnection, m: &MessageRow, sender: &str, recipient: &str) -> anyhow::Result<()> {
    const NEWEST: &str = "CASE WHEN excluded.last_message_id > chat_conversations.last_message_id \
                          THEN excluded.last_message_id ELSE chat_conversations.last_message_id END";
    sqlx::query(&format!(
        "INSERT INTO chat_conversations (account_id, channel_id, other_id, other_name, last_message_id, unread_count, read_up_to) \
         VALUES ($1, $2, $3, NULL, $4, 0, $4) ON CONFLICT (account_id, channel_id) DO UPDATE SET \
         last_message_id = {NEWEST}, unread_count = 0, read_up_to = {NEWEST}"
    ))
    .bind(sender)
    .bind(&m.channel_id)
    .bind(recipient)
    .bind(&m.id)
    .execute(&mut *conn)
    .await
    .context("updating the sender's conversation")?;
    sqlx::query(&format!(
        "INSERT INTO chat_conversations (account_id, channel_id, other_id, other_name, last_message_id, unread_count, read_up_to) \
         VALUES ($1, $2, $3, $4, $5, 1, NULL) ON CONFLICT (account_id, channel_id) DO UPDATE SET \
         last_message_id = {NEWEST}, other_name = excluded.other_name, unread_count = chat_conversations.unread_count + 1"
    ))
    .bind(recipient)
    .bind(&m.channel_id)
    .bind(sender)
    .bind(&m.sender_name)
    .bind(&m.id)
    .execute(&mut *conn)
    .await
    .context("updating the recipient's conversation")?;
    Ok(())
}

/// A player's row of a direct conversation, with its newest message when still stored.
#[derive(Debug, Clone)]
pub struct ConversationRow {
    /// `dm:<a>:<b>`.
    pub channel_id: String,
    /// The other player.
    pub other_id: String,
    /// Their name as their last message showed it.
    pub other_name: Option<String>,
    /// The newest message's id (the cursor).
    pub last_message_id: String,
    /// The newest message, unless an operator deleted it.
    pub last_message: Option<MessageRow>,
    /// Messages from the other player after the read mark.
    pub unread_count: i64,
    /// The newest message read.
    pub read_up_to: Option<String>,
}

/// Up to `limit` of `account`'s direct conversations, newest message first, after the one whose
/// newest message is `before`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.conversations", skip_all)]
pub async fn conversations<'e>(
    db: impl Executor<'e, Database = Any>,
    account: &str,
    before: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<ConversationRow>> {
    // One primary-key lookup per row for its newest message: the inbox reads no history.
    let rows = sqlx::query(
        "SELECT c.channel_id, c.other_id, c.other_name, c.last_message_id, c.unread_count, c.read_up_to, \
         m.id, m.channel_id AS message_channel, m.sender_id, m.sender_name, m.body, m.created_at \
         FROM chat_conversations c LEFT JOIN chat_messages m ON m.id = c.last_message_id \
         WHERE c.account_id = $1 AND ($2 IS NULL OR c.last_message_id < $2) ORDER BY c.last_message_id DESC LIMIT $3",
    )
    .bind(account)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("listing conversations")?;
    rows.iter()
        .map(|r| {
            let id: Option<String> = r.try_get("id")?;
            let last_message = match id {
                Some(id) => Some(MessageRow {
                    id,
                    channel_id: r.try_get("message_channel")?,
                    sender_id: r.try_get("sender_id")?,
                    sender_name: r.try_get("sender_name")?,
                    body: r.try_get("body")?,
                    created_at: r.try_get("created_at")?,
                }),
                None => None,
            };
            Ok(ConversationRow {
                channel_id: r.try_get("channel_id")?,
                other_id: r.try_get("other_id")?,
                other_name: r.try_get("other_name")?,
                last_message_id: r.try_get("last_message_id")?,
                last_message,
                unread_count: r.try_get("unread_count")?,
                read_up_to: r.try_get("read_up_to")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding a conversation")
}

/// Marks `account`'s row of conversation `channel` read up to message `up_to` (its newest when
/// `None`), recounting what is left unread (at most `max_unread`, from the channel's index);
/// a mark never moves back. False when the player has no such conversation.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.mark_conversation_read", skip_all)]
pub async fn mark_conversation_read(
    conn: &mut sqlx::AnyConnection,
    account: &str,
    channel: &str,
    up_to: Option<&str>,
    max_unread: i64,
) -> anyhow::Result<bool> {
    let exists: Option<String> =
        sqlx::query_scalar("SELECT last_message_id FROM chat_conversations WHERE account_id = $1 AND channel_id = $2")
            .bind(account)
            .bind(channel)
            .fetch_optional(&mut *conn)
            .await
            .context("loading a conversation")?;
    if exists.is_none() {
        return Ok(false);
    }
    match up_to {
        None => sqlx::query(
            "UPDATE chat_conversations SET read_up_to = last_message_id, unread_count = 0 WHERE account_id = $1 AND channel_id = $2",
        )
        .bind(account)
        .bind(channel)
        .execute(&mut *conn)
        .await
        .context("marking a conversation read")?,
        Some(up_to) => sqlx::query(
            "UPDATE chat_conversations SET read_up_to = $3, unread_count = (SELECT COUNT(*) FROM (SELECT 1 FROM chat_messages \
               WHERE channel_id = $2 AND id > $3 AND (sender_id IS NULL OR sender_id <> $1) LIMIT $4) later) \
             WHERE account_id = $1 AND channel_id = $2 AND (read_up_to IS NULL OR read_up_to < $3)",
        )
        .bind(account)
        .bind(channel)
        .bind(up_to)
        .bind(max_unread)
        .execute(&mut *conn)
        .await
        .context("marking a conversation read")?,
    };
    Ok(true)
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

/// The sanctions in force on `account` in `channel` (or everywhere) at `now`: each one's scope,
/// kind and end (`crate::known_sanctions::InForce`).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.sanctions", skip_all)]
pub async fn sanctions<'e>(db: impl Executor<'e, Database = Any>, account: &str, channel: &str, now: i64) -> anyhow::Result<Vec<InForce>> {
    sqlx::query_as(
        "SELECT scope, kind, until FROM chat_sanctions WHERE account_id = $1 AND (scope = 'global' OR scope = $2) \
         AND (until IS NULL OR until > $3)",
    )
    .bind(account)
    .bind(channel)
    .bind(now)
    .fetch_all(db)
    .await
    .context("loading sanctions")
}

/// The sanctions in force on `account` anywhere at `now`, at most `limit`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.sanctions_in_force", skip_all)]
pub async fn sanctions_in_force<'e>(
    db: impl Executor<'e, Database = Any>,
    account: &str,
    now: i64,
    limit: i64,
) -> anyhow::Result<Vec<InForce>> {
    sqlx::query_as("SELECT scope, kind, until FROM chat_sanctions WHERE account_id = $1 AND (until IS NULL OR until > $2) LIMIT $3")
        .bind(account)
        .bind(now)
        .bind(limit)
        .fetch_all(db)
        .await
        .context("loading sanctions")
}

/// Deletes a message; its channel when there was one. Players' marks of having reported it go
/// with it (a deleted message cannot be reported again anyway); its reports keep their copy.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.delete_message", skip_all)]
pub async fn delete_message(conn: &mut sqlx::AnyConnection, id: &str) -> anyhow::Result<Option<String>> {
    let channel: Option<String> = sqlx::query_scalar("DELETE FROM chat_messages WHERE id = $1 RETURNING channel_id")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .context("deleting a message")?;
    if channel.is_some() {
        sqlx::query("DELETE FROM chat_message_reporters WHERE message_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await
            .context("forgetting a deleted message's reporters")?;
    }
    Ok(channel)
}

/// Deletes every message `sender` sent in `channel`, and the marks of their having been
/// reported; how many messages went.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.delete_sender_messages", skip_all)]
pub async fn delete_sender_messages(conn: &mut sqlx::AnyConnection, channel: &str, sender: &str) -> anyhow::Result<u64> {
    sqlx::query(
        "DELETE FROM chat_message_reporters WHERE message_id IN \
         (SELECT id FROM chat_messages WHERE sender_id = $1 AND channel_id = $2)",
    )
    .bind(sender)
    .bind(channel)
    .execute(&mut *conn)
    .await
    .context("forgetting deleted messages' reporters")?;
    let done = sqlx::query("DELETE FROM chat_messages WHERE sender_id = $1 AND channel_id = $2")
        .bind(sender)
        .bind(channel)
        .execute(&mut *conn)
        .await
        .context("deleting a sender's messages")?;
    Ok(done.rows_affected())
}

/// Marks that `account` reported `message`; false, marking nothing, when they already had.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.mark_reporter", skip_all)]
pub async fn mark_reporter<'e>(db: impl Executor<'e, Database = Any>, message: &str, account: &str, now: i64) -> anyhow::Result<bool> {
    let done =
        sqlx::query("INSERT INTO chat_message_reporters (message_id, account_id, reported_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(message)
            .bind(account)
            .bind(now)
            .execute(db)
            .await
            .context("marking a reporter")?;
    Ok(done.rows_affected() == 1)
}

/// One player's report of a message, as the consumer files it.
#[derive(Debug, Clone)]
pub struct NewReport {
    /// The reported message.
    pub message_id: String,
    /// Its channel.
    pub channel_id: String,
    /// Its sender, `None` once erased.
    pub sender_id: Option<String>,
    /// The sender's name as shown.
    pub sender_name: String,
    /// The text when reported.
    pub body: String,
    /// When it was sent, Unix ms, if known.
    pub sent_at: Option<i64>,
    /// The reporter.
    pub reported_by: String,
    /// Their reason.
    pub reason: String,
    /// When they reported it, Unix ms.
    pub reported_at: i64,
}

/// A new case's id: a UUIDv7 of the time of its report (not of its filing, which may come later
/// and in another order: an SQS batch is handled in parallel), so newest-first is by report time.
fn case_id(reported_at: i64) -> String {
    let millis = u64::try_from(reported_at).unwrap_or(0);
    let at = uuid::Timestamp::from_unix(uuid::NoContext, millis / 1000, (millis % 1000) as u32 * 1_000_000);
    uuid::Uuid::new_v7(at).to_string()
}

/// Files the report carried by event `event_id` into the open case of its message (opening one
/// when there is none), inside the caller's transaction. False when it was filed already (the
/// same event, or the same reporter through another one): the caller must then roll back, as the
/// case's count was raised before the report's row turned out to exist.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.file_report", skip_all)]
pub async fn file_report(conn: &mut sqlx::AnyConnection, event_id: &str, report: &NewReport) -> anyhow::Result<bool> {
    // Concurrent reports of one message meet on the open case's row (the partial unique index);
    // the first report's copy of the message stays.
    let case: String = sqlx::query_scalar(
        "INSERT INTO chat_reports (id, message_id, channel_id, sender_id, sender_name, body, sent_at, status, report_count, \
         first_reported_at, last_reported_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', 1, $8, $8) \
         ON CONFLICT (message_id) WHERE status = 'open' DO UPDATE SET report_count = chat_reports.report_count + 1, \
         first_reported_at = CASE WHEN excluded.first_reported_at < chat_reports.first_reported_at \
           THEN excluded.first_reported_at ELSE chat_reports.first_reported_at END, \
         last_reported_at = CASE WHEN excluded.last_reported_at > chat_reports.last_reported_at \
           THEN excluded.last_reported_at ELSE chat_reports.last_reported_at END \
         RETURNING id",
    )
    .bind(case_id(report.reported_at))
    .bind(&report.message_id)
    .bind(&report.channel_id)
    .bind(&report.sender_id)
    .bind(&report.sender_name)
    .bind(&report.body)
    .bind(report.sent_at)
    .bind(report.reported_at)
    .fetch_one(&mut *conn)
    .await
    .context("opening or joining a report case")?;
    let filed = sqlx::query(
        "INSERT INTO chat_report_entries (event_id, report_id, message_id, reported_by, reason, reported_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(&case)
    .bind(&report.message_id)
    .bind(&report.reported_by)
    .bind(&report.reason)
    .bind(report.reported_at)
    .execute(&mut *conn)
    .await
    .context("filing a report")?;
    Ok(filed.rows_affected() == 1)
}

/// A report case: one message, the reports of it, and what was done.
#[derive(Debug, Clone)]
pub struct ReportCaseRow {
    /// UUIDv7.
    pub id: String,
    /// The reported message.
    pub message_id: String,
    /// Its channel.
    pub channel_id: String,
    /// Its sender; `None` once erased.
    pub sender_id: Option<String>,
    /// The sender's name.
    pub sender_name: String,
    /// The text when first reported.
    pub body: String,
    /// Unix ms, if known.
    pub sent_at: Option<i64>,
    /// `open` or `resolved`.
    pub status: String,
    /// Reports in the case.
    pub report_count: i64,
    /// Unix ms.
    pub first_reported_at: i64,
    /// Unix ms.
    pub last_reported_at: i64,
    /// Whether the message is still stored.
    pub message_present: bool,
    /// What was done.
    pub resolution: Option<String>,
    /// The moderator's note.
    pub resolution_note: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// Unix ms.
    pub resolved_at: Option<i64>,
}

const CASE_COLUMNS: &str = "id, message_id, channel_id, sender_id, sender_name, body, sent_at, status, report_count, \
     first_reported_at, last_reported_at, resolution, resolution_note, resolved_by, resolved_at, \
     (SELECT COUNT(*) FROM chat_messages m WHERE m.id = chat_reports.message_id) AS message_present";

fn report_case(row: &AnyRow) -> Result<ReportCaseRow, sqlx::Error> {
    Ok(ReportCaseRow {
        id: row.try_get("id")?,
        message_id: row.try_get("message_id")?,
        channel_id: row.try_get("channel_id")?,
        sender_id: row.try_get("sender_id")?,
        sender_name: row.try_get("sender_name")?,
        body: row.try_get("body")?,
        sent_at: row.try_get("sent_at")?,
        status: row.try_get("status")?,
        report_count: row.try_get("report_count")?,
        first_reported_at: row.try_get("first_reported_at")?,
        last_reported_at: row.try_get("last_reported_at")?,
        message_present: row.try_get::<i64, _>("message_present")? > 0,
        resolution: row.try_get("resolution")?,
        resolution_note: row.try_get("resolution_note")?,
        resolved_by: row.try_get("resolved_by")?,
        resolved_at: row.try_get("resolved_at")?,
    })
}

/// Where a page of report cases starts: after this case, in the list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseCursor {
    /// Newest first: cases opened before this one.
    Newest {
        /// The last case of the previous page.
        id: String,
    },
    /// Most reported first: cases with fewer reports, or as many and opened before.
    MostReported {
        /// Its report count when the previous page was read.
        count: i64,
        /// The last case of the previous page.
        id: String,
    },
}

/// Up to `limit` cases in `status` (`open`, `resolved`), newest first or (with `most_reported`)
/// most reported first, after `after`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.report_cases", skip_all)]
pub async fn report_cases<'e>(
    db: impl Executor<'e, Database = Any>,
    status: &str,
    most_reported: bool,
    after: Option<&CaseCursor>,
    limit: i64,
) -> anyhow::Result<Vec<ReportCaseRow>> {
    let rows = if most_reported {
        let (count, id) = match after {
            Some(CaseCursor::MostReported { count, id }) => (Some(*count), Some(id.as_str())),
            _ => (None, None),
        };
        sqlx::query(&format!(
            "SELECT {CASE_COLUMNS} FROM chat_reports WHERE status = $1 \
             AND ($2 IS NULL OR report_count < $2 OR (report_count = $2 AND id < $3)) \
             ORDER BY report_count DESC, id DESC LIMIT $4"
        ))
        .bind(status)
        .bind(count)
        .bind(id)
        .bind(limit)
        .fetch_all(db)
        .await
    } else {
        let id = match after {
            Some(CaseCursor::Newest { id }) => Some(id.as_str()),
            _ => None,
        };
        sqlx::query(&format!(
            "SELECT {CASE_COLUMNS} FROM chat_reports WHERE status = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(status)
        .bind(id)
        .bind(limit)
        .fetch_all(db)
        .await
    }
    .context("listing report cases")?;
    rows.iter().map(|r| report_case(r).context("decoding a report case")).collect()
}

/// One report case.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.report_case", skip_all)]
pub async fn report_case_by_id<'e>(db: impl Executor<'e, Database = Any>, id: &str) -> anyhow::Result<Option<ReportCaseRow>> {
    let row = sqlx::query(&format!("SELECT {CASE_COLUMNS} FROM chat_reports WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
        .context("loading a report case")?;
    row.as_ref().map(report_case).transpose().context("decoding a report case")
}

/// One player's report in a case.
#[derive(Debug, Clone)]
pub struct ReportEntryRow {
    /// The case.
    pub report_id: String,
    /// The event that carried it: the cursor of a case's reports.
    pub event_id: String,
    /// The reporter; `None` once erased.
    pub reported_by: Option<String>,
    /// Their reason.
    pub reason: String,
    /// Unix ms.
    pub reported_at: i64,
}

fn report_entry(row: &AnyRow) -> Result<ReportEntryRow, sqlx::Error> {
    Ok(ReportEntryRow {
        report_id: row.try_get("report_id")?,
        event_id: row.try_get("event_id")?,
        reported_by: row.try_get("reported_by")?,
        reason: row.try_get("reason")?,
        reported_at: row.try_get("reported_at")?,
    })
}

/// The `per_case` latest reports of each of `cases`, latest first, in one query.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.latest_reports", skip_all)]
pub async fn latest_reports<'e>(
    db: impl Executor<'e, Database = Any>,
    cases: &[&str],
    per_case: i64,
) -> anyhow::Result<Vec<ReportEntryRow>> {
    if cases.is_empty() {
        return Ok(Vec::new());
    }
    // Only the placeholders are formatted in; the ids are bound.
    let placeholders: Vec<String> = (2..cases.len() + 2).map(|n| format!("${n}")).collect();
    let sql = format!(
        "SELECT report_id, event_id, reported_by, reason, reported_at FROM (\
           SELECT report_id, event_id, reported_by, reason, reported_at, \
             ROW_NUMBER() OVER (PARTITION BY report_id ORDER BY reported_at DESC, event_id DESC) AS n \
           FROM chat_report_entries WHERE report_id IN ({})) ranked \
         WHERE n <= $1 ORDER BY report_id, n",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql).bind(per_case);
    for case in cases {
        query = query.bind(*case);
    }
    let rows = query.fetch_all(db).await.context("loading the latest reports")?;
    rows.iter().map(|r| report_entry(r).context("decoding a report")).collect()
}

/// Up to `limit` reports of a case, latest first, before the report `before` (its
/// (reported_at, event_id)).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.case_reports", skip_all)]
pub async fn case_reports<'e>(
    db: impl Executor<'e, Database = Any>,
    case: &str,
    before: Option<(i64, &str)>,
    limit: i64,
) -> anyhow::Result<Vec<ReportEntryRow>> {
    let (at, event) = before.unzip();
    let rows = sqlx::query(
        "SELECT report_id, event_id, reported_by, reason, reported_at FROM chat_report_entries \
         WHERE report_id = $1 AND ($2 IS NULL OR reported_at < $2 OR (reported_at = $2 AND event_id < $3)) \
         ORDER BY reported_at DESC, event_id DESC LIMIT $4",
    )
    .bind(case)
    .bind(at)
    .bind(event)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("listing a case's reports")?;
    rows.iter().map(|r| report_entry(r).context("decoding a report")).collect()
}

/// Resolves an open case; false when it is not open (resolved already, or no such case).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.resolve_report", skip_all)]
pub async fn resolve_report<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    action: &str,
    note: Option<&str>,
    by: &str,
    now: i64,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE chat_reports SET status = 'resolved', resolution = $2, resolution_note = $3, resolved_by = $4, resolved_at = $5 \
         WHERE id = $1 AND status = 'open'",
    )
    .bind(id)
    .bind(action)
    .bind(note)
    .bind(by)
    .bind(now)
    .execute(db)
    .await
    .context("resolving a report case")?;
    Ok(done.rows_affected() == 1)
}

/// Erasure of an account from the reports: as a sender its name goes (the reported text stays,
/// as in the history), as a reporter its id; its marks of having reported go too.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.anonymise_reports", skip_all)]
pub async fn anonymise_reports(conn: &mut sqlx::AnyConnection, account_id: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE chat_reports SET sender_id = NULL, sender_name = 'deleted player' WHERE sender_id = $1")
        .bind(account_id)
        .execute(&mut *conn)
        .await
        .context("anonymising reported senders")?;
    sqlx::query("UPDATE chat_report_entries SET reported_by = NULL WHERE reported_by = $1")
        .bind(account_id)
        .execute(&mut *conn)
        .await
        .context("anonymising reporters")?;
    sqlx::query("DELETE FROM chat_message_reporters WHERE account_id = $1")
        .bind(account_id)
        .execute(&mut *conn)
        .await
        .context("forgetting a reporter's marks")?;
    Ok(())
}

/// A recorded sanction with its player, for the admin list.
#[derive(Debug, Clone)]
pub struct AccountSanction {
    /// The sanctioned player.
    pub account_id: String,
    /// The sanction.
    pub record: SanctionRecord,
}

/// What the admin list of sanctions keeps; `None` keeps all.
#[derive(Debug, Default, Clone)]
pub struct SanctionFilter<'a> {
    /// One player's.
    pub account_id: Option<&'a str>,
    /// `global` or one channel's.
    pub scope: Option<&'a str>,
    /// `mute` or `ban`.
    pub kind: Option<&'a str>,
    /// `Some(true)`: in force at `now`; `Some(false)`: expired.
    pub in_force: Option<bool>,
}

/// Where a page of the admin list of sanctions starts: after this one, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanctionCursor {
    /// Unix ms it was issued.
    pub created_at: i64,
    /// The player.
    pub account_id: String,
    /// Its scope.
    pub scope: String,
    /// Its kind.
    pub kind: String,
}

/// Up to `limit` sanctions matching `filter`, newest first, after `after`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.all_sanctions", skip_all)]
pub async fn all_sanctions<'e>(
    db: impl Executor<'e, Database = Any>,
    filter: &SanctionFilter<'_>,
    after: Option<&SanctionCursor>,
    now: i64,
    limit: i64,
) -> anyhow::Result<Vec<AccountSanction>> {
    // 0: any; 1: in force; 2: expired.
    let state: i64 = match filter.in_force {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    };
    let rows = sqlx::query(
        "SELECT account_id, scope, kind, until, reason, created_by, authority, created_at FROM chat_sanctions \
         WHERE ($1 IS NULL OR account_id = $1) AND ($2 IS NULL OR scope = $2) AND ($3 IS NULL OR kind = $3) \
         AND ($4 = 0 OR ($4 = 1 AND (until IS NULL OR until > $5)) OR ($4 = 2 AND until <= $5)) \
         AND ($6 IS NULL OR created_at < $6 OR (created_at = $6 AND (account_id < $7 OR (account_id = $7 \
           AND (scope < $8 OR (scope = $8 AND kind < $9)))))) \
         ORDER BY created_at DESC, account_id DESC, scope DESC, kind DESC LIMIT $10",
    )
    .bind(filter.account_id)
    .bind(filter.scope)
    .bind(filter.kind)
    .bind(state)
    .bind(now)
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.account_id.as_str()))
    .bind(after.map(|c| c.scope.as_str()))
    .bind(after.map(|c| c.kind.as_str()))
    .bind(limit)
    .fetch_all(db)
    .await
    .context("listing sanctions")?;
    rows.iter()
        .map(|r| Ok(AccountSanction { account_id: r.try_get("account_id")?, record: sanction_record(r)? }))
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding a sanction")
}

/// Records a block's new state (`active`) as of `changed_at` (Unix ms, the event's time), unless
/// the row already holds a later change: events may arrive out of order. At equal times the
/// block wins.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.put_block", skip_all)]
pub async fn put_block<'e>(
    db: impl Executor<'e, Database = Any>,
    blocker_id: &str,
    blocked_id: &str,
    active: bool,
    changed_at: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO chat_blocks (blocker_id, blocked_id, active, changed_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (blocker_id, blocked_id) DO UPDATE SET active = excluded.active, changed_at = excluded.changed_at \
         WHERE chat_blocks.changed_at < excluded.changed_at OR (chat_blocks.changed_at = excluded.changed_at AND excluded.active = 1)",
    )
    .bind(blocker_id)
    .bind(blocked_id)
    .bind(i64::from(active))
    .bind(changed_at)
    .execute(db)
    .await
    .context("recording a block")?;
    Ok(())
}

/// Whether either of `a` and `b` has blocked the other.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.blocked_between", skip_all)]
pub async fn blocked_between<'e>(db: impl Executor<'e, Database = Any>, a: &str, b: &str) -> anyhow::Result<bool> {
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM chat_blocks WHERE active = 1 AND ((blocker_id = $1 AND blocked_id = $2) OR (blocker_id = $2 AND blocked_id = $1))",
    )
    .bind(a)
    .bind(b)
    .fetch_one(db)
    .await
    .context("checking blocks")?;
    Ok(count > 0)
}

/// Why a direct conversation between `a` and `b` is refused, if it is: a block either way
/// (`DmRefusal::Blocked`), or either player erased (`DmRefusal::Erased`). One round trip.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.dm_refusal", skip_all)]
pub async fn dm_refusal<'e>(db: impl Executor<'e, Database = Any>, a: &str, b: &str) -> anyhow::Result<Option<DmRefusal>> {
    let (erased, blocked): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM chat_erased_players WHERE account_id IN ($1, $2)), \
         (SELECT COUNT(*) FROM chat_blocks WHERE active = 1 AND ((blocker_id = $1 AND blocked_id = $2) OR (blocker_id = $2 AND blocked_id = $1)))",
    )
    .bind(a)
    .bind(b)
    .fetch_one(db)
    .await
    .context("checking a direct conversation")?;
    Ok(if erased > 0 {
        Some(DmRefusal::Erased)
    } else if blocked > 0 {
        Some(DmRefusal::Blocked)
    } else {
        None
    })
}

/// Why a direct conversation is refused (`dm_refusal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmRefusal {
    /// One of the players blocked the other.
    Blocked,
    /// One of the players was erased.
    Erased,
}

/// Whether chat erased `account` (`chat_erased_players`).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.erased", skip_all)]
pub async fn erased<'e>(db: impl Executor<'e, Database = Any>, account: &str) -> anyhow::Result<bool> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chat_erased_players WHERE account_id = $1")
        .bind(account)
        .fetch_one(db)
        .await
        .context("checking an erased player")?;
    Ok(count > 0)
}

/// Remembers that chat erased `account`, at `now` (once: a second erasure keeps the first time).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.remember_erased", skip_all)]
pub async fn remember_erased<'e>(db: impl Executor<'e, Database = Any>, account: &str, now: i64) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO chat_erased_players (account_id, erased_at) VALUES ($1, $2) ON CONFLICT (account_id) DO NOTHING")
        .bind(account)
        .bind(now)
        .execute(db)
        .await
        .context("remembering an erased player")?;
    Ok(())
}

/// The players `account` blocked or was blocked by (at most `limit`): each is hidden from the
/// other in chat presence.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.blocked_either_way", skip_all)]
pub async fn blocked_either_way<'e>(db: impl Executor<'e, Database = Any>, account: &str, limit: i64) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT blocked_id FROM chat_blocks WHERE blocker_id = $1 AND active = 1 \
         UNION SELECT blocker_id FROM chat_blocks WHERE blocked_id = $1 AND active = 1 LIMIT $2",
    )
    .bind(account)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("listing blocks")
}

/// Forgets an erased player's blocks, both ways.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db chat.forget_blocks", skip_all)]
pub async fn forget_blocks<'e>(db: impl Executor<'e, Database = Any>, account: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM chat_blocks WHERE blocker_id = $1 OR blocked_id = $1")
        .bind(account)
        .execute(db)
        .await
        .context("forgetting blocks")?;
    Ok(())
}
