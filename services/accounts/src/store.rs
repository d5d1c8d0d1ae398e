//! Every SQL statement of the accounts service. One text per query for both dialects (see
//! `platform::db`); values are always bound.

use anyhow::Context;
use platform::db::lanes::PaddedTexts;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Executor, Row};

/// An account as stored.
#[derive(Debug, Clone)]
pub struct AccountRow {
    /// UUIDv7.
    pub id: String,
    /// As chosen, case kept.
    pub username: String,
    /// Normalised email; `None` for a guest.
    pub email: Option<String>,
    /// Argon2id PHC string; `None` for a guest.
    pub password_hash: Option<String>,
    /// Shown instead of the username when set.
    pub display_name: Option<String>,
    /// Asset id of the avatar.
    pub avatar_asset_id: Option<String>,
    /// BCP 47 tag.
    pub locale: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

impl AccountRow {
    /// The name other players see: the display name, else the username.
    pub fn public_name(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.username)
    }
}

/// The columns `account` decodes, in order.
pub(crate) const ACCOUNT_COLUMNS: &str =
    "id, username, email, password_hash, display_name, avatar_asset_id, locale, created_at, updated_at";

/// Decodes a row of `ACCOUNT_COLUMNS`.
pub(crate) fn account(row: &AnyRow) -> Result<AccountRow, sqlx::Error> {
    Ok(AccountRow {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        display_name: row.try_get("display_name")?,
        avatar_asset_id: row.try_get("avatar_asset_id")?,
        locale: row.try_get("locale")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A session to store, with its first refresh token (by hash).
pub struct NewSession<'a> {
    /// UUIDv7.
    pub id: &'a str,
    /// SHA-256 of the refresh token, in hex.
    pub refresh_hash: &'a str,
    /// Unix ms: opened (and the token issued).
    pub now: i64,
    /// Unix ms: when the session and the token expire unless refreshed.
    pub expires_at: i64,
}

/// A new account; with credentials, or without (its identity is inserted beside it).
pub struct NewAccount<'a> {
    /// UUIDv7.
    pub id: &'a str,
    /// Validated username.
    pub username: &'a str,
    /// Normalised email.
    pub email: Option<&'a str>,
    /// Argon2id PHC string.
    pub password_hash: Option<&'a str>,
    /// Unix ms.
    pub now: i64,
}

/// Inserts an account. A unique violation (username, email) comes back as the error.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.insert_account", skip_all)]
pub async fn insert_account<'e>(db: impl Executor<'e, Database = Any>, new: &NewAccount<'_>) -> anyhow::Result<()> {
    bind_new_account(sqlx::query(INSERT_ACCOUNT), new).execute(db).await.context("inserting account")?;
    Ok(())
}

/// The insert of a `NewAccount`, its values bound as `$1` to `$6` (`bind_new_account`).
pub(crate) const INSERT_ACCOUNT: &str = "INSERT INTO accounts (id, username, username_key, email, password_hash, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $6)";

/// Binds `new` as `$1` to `$6` of `INSERT_ACCOUNT`.
pub(crate) fn bind_new_account<'q>(query: Query<'q, Any, AnyArguments<'q>>, new: &NewAccount<'q>) -> Query<'q, Any, AnyArguments<'q>> {
    query.bind(new.id).bind(new.username).bind(new.username.to_lowercase()).bind(new.email).bind(new.password_hash).bind(new.now)
}

impl NewAccount<'_> {
    /// The account as `insert_account` stores it (no profile yet), so that it need not be read
    /// back.
    pub fn stored(&self) -> AccountRow {
        AccountRow {
            id: self.id.to_owned(),
            username: self.username.to_owned(),
            email: self.email.map(str::to_owned),
            password_hash: self.password_hash.map(str::to_owned),
            display_name: None,
            avatar_asset_id: None,
            locale: None,
            created_at: self.now,
            updated_at: self.now,
        }
    }
}

async fn account_where<'e>(db: impl Executor<'e, Database = Any>, column: &'static str, value: &str) -> anyhow::Result<Option<AccountRow>> {
    // `column` is one of the fixed names below, never input.
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {column} = $1");
    let row = sqlx::query(&sql).bind(value).fetch_optional(db).await.with_context(|| format!("loading account by {column}"))?;
    row.as_ref().map(account).transpose().context("decoding account")
}

/// The account with `id`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.account_by_id", skip_all)]
pub async fn account_by_id<'e>(db: impl Executor<'e, Database = Any>, id: &str) -> anyhow::Result<Option<AccountRow>> {
    account_where(db, "id", id).await
}

/// Most ids `accounts_by_ids` reads in one statement.
pub const MAX_ACCOUNTS_AT_ONCE: usize = 64;

/// `SELECT ... WHERE id IN ($1, ..., $n)` for n = 1, 2, 4, ... `MAX_ACCOUNTS_AT_ONCE`; a batch is
/// padded by repeating its last id.
static ACCOUNTS_BY_IDS: std::sync::LazyLock<PaddedTexts> = std::sync::LazyLock::new(|| {
    PaddedTexts::new(MAX_ACCOUNTS_AT_ONCE, |n| {
        let placeholders: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
        format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id IN ({})", placeholders.join(", "))
    })
});

/// The accounts among `ids` (at most `MAX_ACCOUNTS_AT_ONCE`), in no particular order; ids with
/// no account have no row.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.accounts_by_ids", skip_all, fields(ids = ids.len()))]
pub async fn accounts_by_ids<'e>(db: impl Executor<'e, Database = Any>, ids: &[&str]) -> anyhow::Result<Vec<AccountRow>> {
    let (Some(last), true) = (ids.last(), ids.len() <= MAX_ACCOUNTS_AT_ONCE) else {
        anyhow::bail!("accounts_by_ids takes 1 to {MAX_ACCOUNTS_AT_ONCE} ids, not {}", ids.len());
    };
    let (sql, size) = ACCOUNTS_BY_IDS.for_batch(ids.len());
    let mut query = sqlx::query(sql);
    for id in ids.iter().chain(std::iter::repeat_n(last, size - ids.len())) {
        query = query.bind(*id);
    }
    let rows = query.fetch_all(db).await.context("loading accounts by id")?;
    rows.iter().map(account).collect::<Result<_, _>>().context("decoding account")
}

/// The account with the normalised `email`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.account_by_email", skip_all)]
pub async fn account_by_email<'e>(db: impl Executor<'e, Database = Any>, email: &str) -> anyhow::Result<Option<AccountRow>> {
    account_where(db, "email", email).await
}

/// Gives a guest account an email, password and optionally a new username, and retires its
/// device key (the device id alone no longer signs in to an account with a password). `None`
/// when the account already has credentials (or is gone).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.attach_credentials", skip_all)]
pub async fn attach_credentials<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    email: &str,
    password_hash: &str,
    username: Option<&str>,
    now: i64,
) -> anyhow::Result<Option<AccountRow>> {
    let sql = format!(
        "UPDATE accounts SET email = $2, password_hash = $3, \
         username = COALESCE($4, username), username_key = COALESCE($5, username_key), updated_at = $6 \
         WHERE id = $1 AND email IS NULL RETURNING {ACCOUNT_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(id)
        .bind(email)
        .bind(password_hash)
        .bind(username)
        .bind(username.map(str::to_lowercase))
        .bind(now)
        .fetch_optional(db)
        .await
        .context("attaching credentials")?;
    row.as_ref().map(account).transpose().context("decoding account")
}

/// A profile change: for each field, `None` keeps it, `Some(None)` clears it, `Some(Some(v))` sets it.
#[derive(Debug, Default)]
pub struct ProfilePatch {
    /// New display name.
    pub display_name: Option<Option<String>>,
    /// New avatar asset id.
    pub avatar_asset_id: Option<Option<String>>,
    /// New locale.
    pub locale: Option<Option<String>>,
}

/// Applies `patch` in one statement (no read-modify-write race) and returns the account.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.update_profile", skip_all)]
pub async fn update_profile<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    patch: ProfilePatch,
    now: i64,
) -> anyhow::Result<Option<AccountRow>> {
    let flag = |f: &Option<Option<String>>| i64::from(f.is_some());
    let sql = format!(
        "UPDATE accounts SET \
         display_name = CASE WHEN $2 = 1 THEN $3 ELSE display_name END, \
         avatar_asset_id = CASE WHEN $4 = 1 THEN $5 ELSE avatar_asset_id END, \
         locale = CASE WHEN $6 = 1 THEN $7 ELSE locale END, \
         updated_at = $8 WHERE id = $1 RETURNING {ACCOUNT_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(id)
        .bind(flag(&patch.display_name))
        .bind(patch.display_name.flatten())
        .bind(flag(&patch.avatar_asset_id))
        .bind(patch.avatar_asset_id.flatten())
        .bind(flag(&patch.locale))
        .bind(patch.locale.flatten())
        .bind(now)
        .fetch_optional(db)
        .await
        .context("updating profile")?;
    row.as_ref().map(account).transpose().context("decoding account")
}

/// Deletes the account (its sessions and refresh tokens go with it by cascade) and returns the
/// ids of its sessions that were still live, for the caller to revoke in the cache.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.delete_account", skip_all)]
pub async fn delete_account(conn: &mut sqlx::AnyConnection, id: &str, now: i64) -> anyhow::Result<Option<Vec<String>>> {
    let sessions: Vec<String> =
        sqlx::query_scalar("SELECT id FROM sessions WHERE account_id = $1 AND revoked_at IS NULL AND expires_at > $2")
            .bind(id)
            .bind(now)
            .fetch_all(&mut *conn)
            .await
            .context("listing live sessions")?;
    // Children first: this does not rely on the cascade being enabled on the connection.
    sqlx::query("DELETE FROM refresh_tokens WHERE session_id IN (SELECT id FROM sessions WHERE account_id = $1)")
        .bind(id)
        .execute(&mut *conn)
        .await
        .context("deleting refresh tokens")?;
    sqlx::query("DELETE FROM sessions WHERE account_id = $1").bind(id).execute(&mut *conn).await.context("deleting sessions")?;
    sqlx::query("DELETE FROM account_bans WHERE account_id = $1").bind(id).execute(&mut *conn).await.context("deleting the ban")?;
    sqlx::query("DELETE FROM account_identities WHERE account_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .context("deleting identities")?;
    let deleted = sqlx::query("DELETE FROM accounts WHERE id = $1").bind(id).execute(&mut *conn).await.context("deleting account")?;
    Ok((deleted.rows_affected() == 1).then_some(sessions))
}

/// Opens a session for `account_id` until `expires_at`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.insert_session", skip_all)]
pub async fn insert_session<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    account_id: &str,
    now: i64,
    expires_at: i64,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO sessions (id, account_id, created_at, refreshed_at, expires_at) VALUES ($1, $2, $3, $3, $4)")
        .bind(id)
        .bind(account_id)
        .bind(now)
        .bind(expires_at)
        .execute(db)
        .await
        .context("inserting session")?;
    Ok(())
}

/// Stores the hash of a refresh token of `session_id`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.insert_refresh_token", skip_all)]
pub async fn insert_refresh_token<'e>(
    db: impl Executor<'e, Database = Any>,
    hash: &str,
    session_id: &str,
    now: i64,
    expires_at: i64,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(hash)
        .bind(session_id)
        .bind(now)
        .bind(expires_at)
        .execute(db)
        .await
        .context("inserting refresh token")?;
    Ok(())
}

/// A refresh token and the state of its session.
#[derive(Debug)]
pub struct RefreshRow {
    /// The session it belongs to.
    pub session_id: String,
    /// The session's account.
    pub account_id: String,
    /// The account's public name, for the new access token.
    pub name: String,
    /// Set once the token has been exchanged.
    pub used_at: Option<i64>,
    /// Set with `used_at`: what the successor was derived from (see `sessions`).
    pub successor_salt: Option<String>,
    /// Unix ms.
    pub expires_at: i64,
    /// Set when the session ended.
    pub session_revoked_at: Option<i64>,
    /// The account's ban, if it has one (in force or expired).
    pub ban: Option<Ban>,
}

/// Looks a refresh token up by its hash.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.refresh_token", skip_all)]
pub async fn refresh_token<'e>(db: impl Executor<'e, Database = Any>, hash: &str) -> anyhow::Result<Option<RefreshRow>> {
    let row = sqlx::query(
        &format!(
            "SELECT r.session_id, s.account_id, COALESCE(a.display_name, a.username) AS name, r.used_at, r.successor_salt, r.expires_at, \
             s.revoked_at, {BAN_COLUMNS} FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id JOIN accounts a ON a.id = s.account_id \
             LEFT JOIN account_bans b ON b.account_id = s.account_id WHERE r.token_hash = $1"
        ),
    )
    .bind(hash)
    .fetch_optional(db)
    .await
    .context("loading refresh token")?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(RefreshRow {
        session_id: row.try_get("session_id")?,
        account_id: row.try_get("account_id")?,
        name: row.try_get("name")?,
        used_at: row.try_get("used_at")?,
        successor_salt: row.try_get("successor_salt")?,
        expires_at: row.try_get("expires_at")?,
        session_revoked_at: row.try_get("revoked_at")?,
        ban: joined_ban(&row)?,
    }))
}

/// Marks a refresh token used, keeping the salt of its successor; false when another request
/// used it first.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.use_refresh_token", skip_all)]
pub async fn use_refresh_token<'e>(
    db: impl Executor<'e, Database = Any>,
    hash: &str,
    now: i64,
    successor_salt: &str,
) -> anyhow::Result<bool> {
    let done = sqlx::query("UPDATE refresh_tokens SET used_at = $2, successor_salt = $3 WHERE token_hash = $1 AND used_at IS NULL")
        .bind(hash)
        .bind(now)
        .bind(successor_salt)
        .execute(db)
        .await
        .context("marking refresh token used")?;
    Ok(done.rows_affected() == 1)
}

/// Extends a session that was just refreshed (sliding expiry).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.touch_session", skip_all)]
pub async fn touch_session<'e>(db: impl Executor<'e, Database = Any>, id: &str, now: i64, expires_at: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE sessions SET refreshed_at = $2, expires_at = $3 WHERE id = $1")
        .bind(id)
        .bind(now)
        .bind(expires_at)
        .execute(db)
        .await
        .context("extending session")?;
    Ok(())
}

/// Ends a session; false if it was already ended or does not exist.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.revoke_session", skip_all)]
pub async fn revoke_session<'e>(db: impl Executor<'e, Database = Any>, id: &str, now: i64, reason: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(now)
        .bind(reason)
        .execute(db)
        .await
        .context("revoking session")?;
    Ok(done.rows_affected() == 1)
}

/// Ends every live session of `account_id` but `keep`, returning the ids of those it ended.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.revoke_other_sessions", skip_all)]
pub async fn revoke_other_sessions(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    keep: &str,
    now: i64,
    reason: &str,
) -> anyhow::Result<Vec<String>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
         WHERE account_id = $1 AND id <> $2 AND revoked_at IS NULL AND expires_at > $3 RETURNING id",
    )
    .bind(account_id)
    .bind(keep)
    .bind(now)
    .bind(reason)
    .fetch_all(conn)
    .await
    .context("ending the account's other sessions")?;
    Ok(ids)
}

/// Deletes sessions (and their refresh tokens) that expired or were revoked before `before`,
/// at most `limit` at a time. Returns how many went.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.purge_sessions", skip_all)]
pub async fn purge_sessions(conn: &mut sqlx::AnyConnection, before: i64, limit: i64) -> anyhow::Result<u64> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM sessions WHERE expires_at < $1 OR revoked_at < $1 LIMIT $2")
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .context("listing ended sessions")?;
    for id in &ids {
        sqlx::query("DELETE FROM refresh_tokens WHERE session_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await
            .context("purging refresh tokens")?;
        sqlx::query("DELETE FROM sessions WHERE id = $1").bind(id).execute(&mut *conn).await.context("purging session")?;
    }
    Ok(ids.len() as u64)
}

/// An account-wide ban.
#[derive(Debug, Clone)]
pub struct Ban {
    /// Why, for the record.
    pub reason: Option<String>,
    /// Unix ms; `None` for good.
    pub until: Option<i64>,
    /// The key that issued it: `bootstrap` or a key id.
    pub issued_by: String,
    /// That key's name.
    pub issued_by_name: String,
    /// Unix ms.
    pub issued_at: i64,
}

impl Ban {
    /// Whether it still applies at `now`.
    pub fn in_force(&self, now: i64) -> bool {
        self.until.is_none_or(|until| until > now)
    }
}

/// The ban a query joined as `ban_*` columns (`ban_account` null: none).
pub(crate) fn joined_ban(row: &AnyRow) -> Result<Option<Ban>, sqlx::Error> {
    if row.try_get::<Option<String>, _>("ban_account")?.is_none() {
        return Ok(None);
    }
    Ok(Some(Ban {
        reason: row.try_get("ban_reason")?,
        until: row.try_get("ban_until")?,
        issued_by: row.try_get("ban_issued_by")?,
        issued_by_name: row.try_get("ban_issued_by_name")?,
        issued_at: row.try_get("ban_issued_at")?,
    }))
}

/// A ban's columns, from `account_bans b`, as `joined_ban` reads them.
pub(crate) const BAN_COLUMNS: &str = "b.account_id AS ban_account, b.reason AS ban_reason, b.until AS ban_until, b.issued_by AS ban_issued_by, \
     b.issued_by_name AS ban_issued_by_name, b.issued_at AS ban_issued_at";

/// The account's ban, in force or expired.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.ban_of", skip_all)]
pub async fn ban_of<'e>(db: impl Executor<'e, Database = Any>, account_id: &str) -> anyhow::Result<Option<Ban>> {
    let sql = format!("SELECT {BAN_COLUMNS} FROM account_bans b WHERE b.account_id = $1");
    let row = sqlx::query(&sql).bind(account_id).fetch_optional(db).await.context("loading a ban")?;
    Ok(row.as_ref().map(joined_ban).transpose()?.flatten())
}

/// Bans the account, replacing a ban it had.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.put_ban", skip_all)]
pub async fn put_ban<'e>(db: impl Executor<'e, Database = Any>, account_id: &str, ban: &Ban) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO account_bans (account_id, reason, until, issued_by, issued_by_name, issued_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (account_id) DO UPDATE SET reason = excluded.reason, until = excluded.until, issued_by = excluded.issued_by, \
         issued_by_name = excluded.issued_by_name, issued_at = excluded.issued_at",
    )
    .bind(account_id)
    .bind(&ban.reason)
    .bind(ban.until)
    .bind(&ban.issued_by)
    .bind(&ban.issued_by_name)
    .bind(ban.issued_at)
    .execute(db)
    .await
    .context("banning an account")?;
    Ok(())
}

/// Lifts the account's ban; the ban that was, if any.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.lift_ban", skip_all)]
pub async fn lift_ban(conn: &mut sqlx::AnyConnection, account_id: &str) -> anyhow::Result<Option<Ban>> {
    let ban = ban_of(&mut *conn, account_id).await?;
    if ban.is_some() {
        sqlx::query("DELETE FROM account_bans WHERE account_id = $1")
            .bind(account_id)
            .execute(&mut *conn)
            .await
            .context("lifting a ban")?;
    }
    Ok(ban)
}

/// An account as a search lists it, with whether a ban is in force.
#[derive(Debug, Clone)]
pub struct Found {
    /// The account.
    pub account: AccountRow,
    /// Its ban, in force or expired.
    pub ban: Option<Ban>,
}

/// Up to `limit` accounts, newest first, older than the account `before` when given, whose id is
/// `query` or whose username or email starts with it (already trimmed and lower-cased); every
/// account without a query.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.search", skip_all)]
pub async fn search<'e>(
    db: impl Executor<'e, Database = Any>,
    query: Option<&str>,
    before: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<Found>> {
    let columns = ACCOUNT_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ");
    // A prefix for LIKE, its wildcards escaped: `_` is common in usernames.
    let prefix = query.map(|q| format!("{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let matching =
        if query.is_some() { " AND (a.id = $3 OR a.username_key LIKE $4 ESCAPE '\\' OR a.email LIKE $4 ESCAPE '\\')" } else { "" };
    let sql = format!(
        "SELECT {columns}, {BAN_COLUMNS} FROM accounts a LEFT JOIN account_bans b ON b.account_id = a.id \
         WHERE a.id < $1{matching} ORDER BY a.id DESC LIMIT $2"
    );
    // UUIDv7 text sorts by time; 'z' sorts after every id.
    let mut select = sqlx::query(&sql).bind(before.unwrap_or("z")).bind(limit);
    if let (Some(query), Some(prefix)) = (query, prefix) {
        select = select.bind(query).bind(prefix);
    }
    let rows = select.fetch_all(db).await.context("searching accounts")?;
    rows.iter()
        .map(|row| Ok(Found { account: account(row)?, ban: joined_ban(row)? }))
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding accounts")
}

/// A session as operators see it.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// Session id.
    pub id: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms: the last refresh.
    pub refreshed_at: i64,
    /// Unix ms.
    pub expires_at: i64,
}

/// Up to `limit` of the account's live sessions, newest first, and how many it has in all.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.live_sessions", skip_all)]
pub async fn live_sessions(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    now: i64,
    limit: i64,
) -> anyhow::Result<(Vec<SessionRow>, i64)> {
    const LIVE: &str = "account_id = $1 AND revoked_at IS NULL AND expires_at > $2";
    let rows = sqlx::query(&format!(
        "SELECT id, created_at, refreshed_at, expires_at FROM sessions WHERE {LIVE} ORDER BY created_at DESC LIMIT $3"
    ))
    .bind(account_id)
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .context("listing live sessions")?;
    let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM sessions WHERE {LIVE}"))
        .bind(account_id)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .context("counting live sessions")?;
    let sessions = rows
        .iter()
        .map(|r| {
            Ok(SessionRow {
                id: r.try_get("id")?,
                created_at: r.try_get("created_at")?,
                refreshed_at: r.try_get("refreshed_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding sessions")?;
    Ok((sessions, count))
}
