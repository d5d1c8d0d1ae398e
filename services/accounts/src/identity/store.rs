//! The SQL of identities (`account_identities`). One text per query for both dialects.

use std::sync::LazyLock;

use anyhow::Context;
use platform::db::lanes::PaddedTexts;
use platform::events::outbox::Entry;
use sqlx::{Any, Executor, Row};

use super::Provider;
use crate::store::{
    ACCOUNT_COLUMNS, AccountRow, BAN_COLUMNS, Ban, INSERT_ACCOUNT, NewAccount, NewSession, account, bind_new_account, joined_ban,
};

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
    let columns = prefixed_account_columns();
    let sql = format!(
        "SELECT {columns} FROM account_identities i JOIN accounts a ON a.id = i.account_id WHERE i.provider = $1 AND i.subject = $2"
    );
    let row = sqlx::query(&sql).bind(provider.as_str()).bind(subject).fetch_optional(db).await.context("loading account by identity")?;
    row.as_ref().map(account).transpose().context("decoding account")
}

/// What a sign-in by identity found, and did (`sign_in_many`).
#[derive(Debug)]
pub enum SignIn {
    /// No account has the identity; nothing was written.
    Unknown,
    /// Its account is banned (the ban in force at the sign-in's time); no session was opened.
    Banned(Ban),
    /// The session is stored for this account.
    Opened(AccountRow),
}

/// A returning player's sign-in, as `sign_in_many` takes it: the identity, and the session to
/// open for its account.
#[derive(Debug, Clone)]
pub struct SigningIn {
    pub provider: Provider,
    pub subject: String,
    /// UUIDv7 of the new session.
    pub session_id: String,
    /// SHA-256 of its first refresh token, in hex.
    pub refresh_hash: String,
    /// Unix ms: opened.
    pub now: i64,
    /// Unix ms: when the session and the token expire unless refreshed.
    pub expires_at: i64,
}

/// Most sign-ins one `sign_in_many` statement takes (six parameters each).
pub const MAX_SIGN_INS_AT_ONCE: usize = 64;

/// The text of `sign_in_many` for 1, 2, 4, ... `MAX_SIGN_INS_AT_ONCE` sign-ins. Each sign-in is a row of `input` numbered by its place; a
/// padding row has no identity, so it finds nothing and writes nothing. A ban is in force unless
/// it has an end that has passed (`Ban::in_force`): the same test, with the same `now`, as the
/// caller's on the returned row.
static SIGN_IN_MANY: LazyLock<PaddedTexts> = LazyLock::new(|| {
    let columns = prefixed_account_columns();
    PaddedTexts::new(MAX_SIGN_INS_AT_ONCE, |n| {
        let rows: Vec<String> = (0..n)
            .map(|i| {
                let p = 6 * i;
                format!(
                    "({i}::bigint, ${}::text, ${}::text, ${}::text, ${}::text, ${}::bigint, ${}::bigint)",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6
                )
            })
            .collect();
        format!(
            "WITH input (n, provider, subject, session_id, refresh_hash, at_ms, expires_at) AS (VALUES {rows}), \
                 found AS ( \
                   SELECT input.n, input.session_id AS new_session_id, input.refresh_hash AS new_refresh_hash, \
                     input.at_ms AS new_at_ms, input.expires_at AS new_expires_at, {columns}, {BAN_COLUMNS} \
                   FROM input JOIN account_identities i ON i.provider = input.provider AND i.subject = input.subject \
                   JOIN accounts a ON a.id = i.account_id LEFT JOIN account_bans b ON b.account_id = a.id \
                 ), session AS ( \
                   INSERT INTO sessions (id, account_id, created_at, refreshed_at, expires_at) \
                   SELECT new_session_id, id, new_at_ms, new_at_ms, new_expires_at FROM found \
                   WHERE ban_account IS NULL OR ban_until <= new_at_ms RETURNING id \
                 ), refresh AS ( \
                   INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) \
                   SELECT f.new_refresh_hash, s.id, f.new_at_ms, f.new_expires_at FROM session s JOIN found f ON f.new_session_id = s.id \
                 ) SELECT * FROM found",
            rows = rows.join(", ")
        )
    })
});

/// Signs returning players in, on PostgreSQL, in one statement (one round trip and one commit
/// for them all, in no transaction of its own), one answer per sign-in in its order: finds each
/// identity's account (with its ban), and unless the ban is in force at the sign-in's `now`,
/// stores its session and refresh token. What a transaction gave the steps one by one the
/// statement gives them together (one snapshot; all or nothing). SQLite cannot write in a
/// `WITH` clause: there the steps run one by one in a transaction (`identity::api`).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.sign_in", skip_all, fields(sign_ins = asks.len()))]
pub async fn sign_in_many<'e>(db: impl Executor<'e, Database = Any>, asks: &[&SigningIn]) -> anyhow::Result<Vec<SignIn>> {
    if asks.is_empty() || asks.len() > MAX_SIGN_INS_AT_ONCE {
        anyhow::bail!("sign_in_many takes 1 to {MAX_SIGN_INS_AT_ONCE} sign-ins, not {}", asks.len());
    }
    let (sql, size) = SIGN_IN_MANY.for_batch(asks.len());
    let mut query = sqlx::query(sql);
    for ask in asks {
        query = query
            .bind(ask.provider.as_str())
            .bind(ask.subject.as_str())
            .bind(ask.session_id.as_str())
            .bind(ask.refresh_hash.as_str())
            .bind(ask.now)
            .bind(ask.expires_at);
    }
    for _ in asks.len()..size {
        query = query.bind(None::<&str>).bind(None::<&str>).bind(None::<&str>).bind(None::<&str>).bind(0_i64).bind(0_i64);
    }
    let rows = query.fetch_all(db).await.context("signing in by identity")?;
    let mut answers: Vec<SignIn> = asks.iter().map(|_| SignIn::Unknown).collect();
    for row in &rows {
        let n: i64 = row.try_get("n").context("decoding a sign-in's place")?;
        let Some(place) = usize::try_from(n).ok().filter(|&place| place < asks.len()) else {
            anyhow::bail!("a sign-in row numbered {n} of {}", asks.len());
        };
        answers[place] = match joined_ban(row).context("decoding the ban")? {
            Some(ban) if ban.in_force(asks[place].now) => SignIn::Banned(ban),
            _ => SignIn::Opened(account(row).context("decoding account")?),
        };
    }
    Ok(answers)
}

/// Creates the account `new` with `provider`'s `subject` as its identity, records `event`, and
/// stores `session` with its refresh token, on PostgreSQL, in one statement (one round trip
/// and sqlx's ping, all or nothing; see `sign_in_many`). A unique violation comes back as the error: the username was
/// taken, or a concurrent first sign-in created the identity's account first.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db accounts.create_by_identity", skip_all)]
pub async fn create_by_identity<'e>(
    db: impl Executor<'e, Database = Any>,
    new: &NewAccount<'_>,
    provider: Provider,
    subject: &str,
    event: &Entry,
    session: &NewSession<'_>,
) -> anyhow::Result<()> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH account AS ({INSERT_ACCOUNT} RETURNING id), identity AS ( \
               INSERT INTO account_identities (provider, subject, account_id, created_at) SELECT $7, $8, id, $6 FROM account \
             ), event AS ( \
               INSERT INTO outbox (id, event_type, payload, trace_context, created_at, sent_at) \
               SELECT $9, $10, $11, $12, $6, NULL FROM account \
             ), session AS ( \
               INSERT INTO sessions (id, account_id, created_at, refreshed_at, expires_at) \
               SELECT $13, id, $6, $6, $15 FROM account RETURNING id \
             ) INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) SELECT $14, id, $6, $15 FROM session"
        )
    });
    bind_new_account(sqlx::query(&SQL), new)
        .bind(provider.as_str())
        .bind(subject)
        .bind(&event.id)
        .bind(event.event_type)
        .bind(&event.payload)
        .bind(event.trace_context.as_deref())
        .bind(session.id)
        .bind(session.refresh_hash)
        .bind(session.expires_at)
        .execute(db)
        .await
        .context("creating an account by identity")?;
    Ok(())
}

/// `ACCOUNT_COLUMNS` of the table aliased `a`.
fn prefixed_account_columns() -> String {
    ACCOUNT_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ")
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
    let has_password: Option<i64> = sqlx::query_scalar(
        "UPDATE accounts SET updated_at = $2 WHERE id = $1 \
         RETURNING CAST(CASE WHEN password_hash IS NULL THEN 0 ELSE 1 END AS BIGINT)",
    )
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
