//! The SQL of password changes and resets (`password_resets`, `password_reset_mails`, and the
//! account's password and sessions). Kept beside its feature rather than in `crate::store` while
//! another change works there; values are always bound.

use anyhow::Context;
use sqlx::{Any, Executor, Row};

/// Sets the account's password hash.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.set_password", skip_all)]
pub async fn set_password<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    password_hash: &str,
    now: i64,
) -> anyhow::Result<bool> {
    let done = sqlx::query("UPDATE accounts SET password_hash = $2, updated_at = $3 WHERE id = $1")
        .bind(account_id)
        .bind(password_hash)
        .bind(now)
        .execute(db)
        .await
        .context("setting the password")?;
    Ok(done.rows_affected() == 1)
}

/// Ends every live session of the account, returning their ids.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.revoke_all_sessions", skip_all)]
pub async fn revoke_all_sessions(conn: &mut sqlx::AnyConnection, account_id: &str, now: i64, reason: &str) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
         WHERE account_id = $1 AND revoked_at IS NULL AND expires_at > $2 RETURNING id",
    )
    .bind(account_id)
    .bind(now)
    .bind(reason)
    .fetch_all(conn)
    .await
    .context("ending the account's sessions")
}

/// Stores the hash of the account's reset token, replacing the one it had.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.put_reset_token", skip_all)]
pub async fn put_reset_token<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    token_hash: &str,
    now: i64,
    expires_at: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO password_resets (account_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (account_id) DO UPDATE SET token_hash = excluded.token_hash, created_at = excluded.created_at, \
         expires_at = excluded.expires_at",
    )
    .bind(account_id)
    .bind(token_hash)
    .bind(now)
    .bind(expires_at)
    .execute(db)
    .await
    .context("storing a reset token")?;
    Ok(())
}

/// The account and expiry of the reset token with `token_hash`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.reset_token", skip_all)]
pub async fn reset_token<'e>(db: impl Executor<'e, Database = Any>, token_hash: &str) -> anyhow::Result<Option<(String, i64)>> {
    let row = sqlx::query("SELECT account_id, expires_at FROM password_resets WHERE token_hash = $1")
        .bind(token_hash)
        .fetch_optional(db)
        .await
        .context("loading a reset token")?;
    row.map(|row| Ok::<_, sqlx::Error>((row.try_get("account_id")?, row.try_get("expires_at")?)))
        .transpose()
        .context("decoding a reset token")
}

/// Takes the reset token with `token_hash` if it has not expired at `now`: deletes it and
/// returns its account. Of two transactions taking one token, one gets it (the row lock, or
/// SQLite's single writer) and the other finds nothing.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.take_reset_token", skip_all)]
pub async fn take_reset_token<'e>(db: impl Executor<'e, Database = Any>, token_hash: &str, now: i64) -> anyhow::Result<Option<String>> {
    sqlx::query_scalar("DELETE FROM password_resets WHERE token_hash = $1 AND expires_at > $2 RETURNING account_id")
        .bind(token_hash)
        .bind(now)
        .fetch_optional(db)
        .await
        .context("taking a reset token")
}

/// Forgets the account's reset token (its password was just changed).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.drop_reset_token", skip_all)]
pub async fn drop_reset_token<'e>(db: impl Executor<'e, Database = Any>, account_id: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM password_resets WHERE account_id = $1")
        .bind(account_id)
        .execute(db)
        .await
        .context("dropping a reset token")?;
    Ok(())
}

/// Deletes reset tokens that expired before `now`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.purge_reset_tokens", skip_all)]
pub async fn purge_reset_tokens<'e>(db: impl Executor<'e, Database = Any>, now: i64) -> anyhow::Result<u64> {
    let done =
        sqlx::query("DELETE FROM password_resets WHERE expires_at <= $1").bind(now).execute(db).await.context("purging reset tokens")?;
    Ok(done.rows_affected())
}

/// Queues a reset mail for `email`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.queue_reset_mail", skip_all)]
pub async fn queue_reset_mail<'e>(db: impl Executor<'e, Database = Any>, email: &str, now: i64) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO password_reset_mails (id, email, requested_at, attempts, next_at) VALUES ($1, $2, $3, 0, $3)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(email)
        .bind(now)
        .execute(db)
        .await
        .context("queueing a reset mail")?;
    Ok(())
}

/// A reset mail a worker holds.
#[derive(Debug, Clone)]
pub struct MailJob {
    /// Row id.
    pub id: String,
    /// The email asked about.
    pub email: String,
    /// Unix ms.
    pub requested_at: i64,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// Claims up to `limit` due reset mails until `lease_until`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.claim_reset_mails", skip_all)]
pub async fn claim_reset_mails<'e>(
    db: impl Executor<'e, Database = Any>,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> anyhow::Result<Vec<MailJob>> {
    let rows = sqlx::query(
        "UPDATE password_reset_mails SET claimed_until = $1 WHERE id IN (\
           SELECT id FROM password_reset_mails WHERE next_at <= $2 AND (claimed_until IS NULL OR claimed_until <= $2) \
           ORDER BY next_at, id LIMIT $3) \
         AND (claimed_until IS NULL OR claimed_until <= $2) \
         RETURNING id, email, requested_at, attempts",
    )
    .bind(lease_until)
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("claiming reset mails")?;
    rows.iter()
        .map(|row| {
            Ok(MailJob {
                id: row.try_get("id")?,
                email: row.try_get("email")?,
                requested_at: row.try_get("requested_at")?,
                attempts: row.try_get("attempts")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding reset mails")
}

/// Deletes a reset mail (sent, or given up).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.finish_reset_mail", skip_all)]
pub async fn finish_reset_mail<'e>(db: impl Executor<'e, Database = Any>, id: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM password_reset_mails WHERE id = $1").bind(id).execute(db).await.context("deleting a reset mail")?;
    Ok(())
}

/// Puts a reset mail back for another attempt at `next_at`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.retry_reset_mail", skip_all)]
pub async fn retry_reset_mail<'e>(db: impl Executor<'e, Database = Any>, id: &str, attempts: i64, next_at: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE password_reset_mails SET attempts = $2, next_at = $3, claimed_until = NULL WHERE id = $1")
        .bind(id)
        .bind(attempts)
        .bind(next_at)
        .execute(db)
        .await
        .context("postponing a reset mail")?;
    Ok(())
}
