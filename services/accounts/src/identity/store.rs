//! The SQL of identities (`account_identities`). One text per query for both dialects.

use anyhow::Context;
use sqlx::{Any, Executor, Row};

use super::Provider;
use crate::store::{ACCOUNT_COLUMNS, AccountRow, account};

/// An identity as stored.
#[derive(Debug, Clone)]
pub struct IdentityRow {
    /// `device`, `apple`, `google`, `steam`, `discord`.
    pub provider: String,
    /// The provider's id of the player.
    pub subject: String,
    /// Unix ms: when it was linked.
    pub created_at: i64,
}

/// The account that `provider`'s `subject` signs in to: one read by the primary key.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.account_by_identity", skip_all)]
pub async fn account_by_identity<'e>(
    db: impl Executor<'e, Database = Any>,
    provider: Provider,
    subject: &str,
) -> anyhow::Result<Option<AccountRow>> {
    let columns = ACCOUNT_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {columns} FROM account_identities i JOIN accounts a ON a.id = i.account_id WHERE i.provider = $1 AND i.subject = $2"
    );
    let row = sqlx::query(&sql).bind(provider.as_str()).bind(subject).fetch_optional(db).await.context("loading account by identity")?;
    row.as_ref().map(account).transpose().context("decoding account")
}

/// Links `provider`'s `subject` to `account_id`. A unique violation comes back as the error:
/// the identity is another account's (primary key), or the account has one of `provider`
/// already (`account_identities_one_per_provider`); the link handler tells which.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.insert_identity", skip_all)]
pub async fn insert_identity<'e>(
    db: impl Executor<'e, Database = Any>,
    provider: Provider,
    subject: &str,
    account_id: &str,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO account_identities (provider, subject, account_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(provider.as_str())
        .bind(subject)
        .bind(account_id)
        .bind(now)
        .execute(db)
        .await
        .context("inserting identity")?;
    Ok(())
}

/// The account's identities, by provider (at most one each, so at most five).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.identities_of", skip_all)]
pub async fn identities_of<'e>(db: impl Executor<'e, Database = Any>, account_id: &str) -> anyhow::Result<Vec<IdentityRow>> {
    let rows = sqlx::query("SELECT provider, subject, created_at FROM account_identities WHERE account_id = $1 ORDER BY provider")
        .bind(account_id)
        .fetch_all(db)
        .await
        .context("listing identities")?;
    rows.iter()
        .map(|r| Ok(IdentityRow { provider: r.try_get("provider")?, subject: r.try_get("subject")?, created_at: r.try_get("created_at")? }))
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding identities")
}

/// What an unlink did.
#[derive(Debug, PartialEq, Eq)]
pub enum Unlinked {
    /// The identity is gone.
    Removed,
    /// The account has no identity of that provider.
    NotLinked,
    /// It is the account's last way to sign in; kept.
    LastWay,
    /// The account is gone.
    NoAccount,
}

/// Removes the account's identity of `provider` unless it is the last way to sign in (no other
/// identity and no password). The account's row is written first, which locks it (PostgreSQL)
/// or the file (SQLite) until commit: two unlinks of one account at once run one after the
/// other, so they cannot both see the other's identity and leave none.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.unlink", skip_all)]
pub async fn unlink(conn: &mut sqlx::AnyConnection, account_id: &str, provider: Provider, now: i64) -> anyhow::Result<Unlinked> {
    // A device identity also retires the column that tasks of the previous version still read.
    let device_key = if provider == Provider::Device { ", device_key = NULL" } else { "" };
    let has_password: Option<i64> = sqlx::query_scalar(&format!(
        "UPDATE accounts SET updated_at = $2{device_key} WHERE id = $1 \
         RETURNING CAST(CASE WHEN password_hash IS NULL THEN 0 ELSE 1 END AS BIGINT)"
    ))
    .bind(account_id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .context("locking the account")?;
    let Some(has_password) = has_password else { return Ok(Unlinked::NoAccount) };
    let providers: Vec<String> = sqlx::query_scalar("SELECT provider FROM account_identities WHERE account_id = $1")
        .bind(account_id)
        .fetch_all(&mut *conn)
        .await
        .context("counting identities")?;
    if !providers.iter().any(|p| p == provider.as_str()) {
        return Ok(Unlinked::NotLinked);
    }
    if providers.len() == 1 && has_password == 0 {
        return Ok(Unlinked::LastWay);
    }
    sqlx::query("DELETE FROM account_identities WHERE account_id = $1 AND provider = $2")
        .bind(account_id)
        .bind(provider.as_str())
        .execute(&mut *conn)
        .await
        .context("unlinking identity")?;
    Ok(Unlinked::Removed)
}

/// Removes the account's device identity (a guest upgraded to email and password).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.retire_device", skip_all)]
pub async fn retire_device<'e>(db: impl Executor<'e, Database = Any>, account_id: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM account_identities WHERE account_id = $1 AND provider = 'device'")
        .bind(account_id)
        .execute(db)
        .await
        .context("retiring the device identity")?;
    Ok(())
}
