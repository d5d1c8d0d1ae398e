//! Password change, and password reset by email.
//!
//! **Change** (`POST /v1/accounts/me/password`) needs the current password; a wrong one counts as
//! a failed login of the account from that address (`limits`), so the route is no cheaper a way
//! to guess than login. The other sessions end; the caller's goes on.
//!
//! **Forgot** (`POST /v1/auth/password/forgot`) answers 202 with the same body whether or not an
//! account has the email, and does the same work either way: it counts the limits and queues a
//! row in `password_reset_mails` holding the email asked about, nothing else. Whether an account
//! exists is found out later, off the request path, by the mail worker (`run_mailer`), so the
//! answer's timing says nothing either.
//!
//! **The token** is made by the worker at the moment it sends the mail: 256 random bits, stored
//! only as their SHA-256 in `password_resets` (one row per account, so a new token replaces the
//! previous one), and otherwise only in the mail. No table, queue or log ever holds it in plain
//! text. What a process dying leaves:
//! - between the 202 and the worker: the queued row, which any accounts instance sends;
//! - after the token's commit and before the relay took the mail: a stored hash nobody has the
//!   token of, and the row, leased; after the lease another worker makes a new token (replacing
//!   the unsent one) and sends it;
//! - after the relay took the mail and before the row was deleted: the same, so the player gets
//!   a second mail, and only its link works (the first one's token was replaced). Mails are sent
//!   at least once, never lost, never with a token that was written down.
//!
//! **Reset** (`POST /v1/auth/password/reset`) takes the token: the row is deleted in the
//! transaction that sets the password and ends every session of the account, so a retried or a
//! racing request finds nothing (`invalid_reset_token`).

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::auth::Player;
use platform::config::PasswordResetConfig;
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::http::{ClientIp, Json};
use platform::mail::{Mailer, Message, Sent};
use platform::ratelimit::Limit;
use platform::shutdown::Shutdown;
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use utoipa::ToSchema;

use crate::AccountsState;
use crate::password::getrandom_fill;
use crate::validate;

/// Prefix that makes a leaked reset token recognisable to secret scanners.
const TOKEN_PREFIX: &str = "ghpr_";
/// Attempts at sending one reset mail before it is given up.
const MAX_ATTEMPTS: i64 = 5;
/// A reset mail not sent this long after it was asked for is given up: the player has moved on
/// (and may have asked again).
const GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);
/// How often the queue is looked at when nothing woke the worker (another instance queued a
/// mail, or one is due for another attempt).
const POLL: Duration = Duration::from_secs(2);
/// How often expired tokens are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Reset mails claimed at once.
const BATCH: i64 = 8;

/// The password reset mails: who sends them, what they link to, their limits. Cheap to clone.
#[derive(Clone)]
pub struct PasswordResets {
    mailer: Mailer,
    config: PasswordResetConfig,
    per_ip: Limit,
    /// How long a claimed mail is left to its worker: every step of a relay conversation may
    /// take the mail timeout, and a conversation has about ten.
    lease: Duration,
    /// Wakes this process's worker when a mail was queued here.
    wake: Arc<Notify>,
}

impl PasswordResets {
    /// Reset mails sent by `mailer`, as `config` says; `smtp_timeout` is the mailer's per step.
    pub fn new(mailer: Mailer, config: PasswordResetConfig, smtp_timeout: Duration) -> Self {
        let per_ip = Limit::new(config.per_ip_per_hour, Duration::from_secs(3600));
        PasswordResets { mailer, config, per_ip, lease: smtp_timeout * 12 + Duration::from_secs(30), wake: Arc::new(Notify::new()) }
    }
}

/// The password routes.
pub fn routes() -> Router<AccountsState> {
    Router::new()
        .route("/v1/accounts/me/password", post(change_password))
        .route("/v1/auth/password/forgot", post(forgot_password))
        .route("/v1/auth/password/reset", post(reset_password))
}

/// `POST /v1/accounts/me/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The account's password now.
    #[schema(min_length = 1, max_length = 256)]
    pub current_password: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
}

/// `POST /v1/auth/password/forgot`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordForgotten {
    /// The email of the account; any case.
    #[schema(
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]{1,64}@[^@.\s\x00-\x1f\x7f-\x9f]{1,63}(\.[^@.\s\x00-\x1f\x7f-\x9f]{1,63})+$",
        max_length = 254
    )]
    pub email: String,
}

/// The answer to a forgotten password, the same whether or not an account has the email.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetRequested {
    /// Always `accepted`.
    pub status: &'static str,
    /// What happens next.
    pub message: &'static str,
}

/// `POST /v1/auth/password/reset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordReset {
    /// The token from the mail (`ghpr_…`).
    #[schema(max_length = 128)]
    pub token: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
}

/// Changes the caller's password. A wrong current password is 403 `wrong_password` and counts as
/// a failed login of the account from the caller's address (past a few, 429). Every other
/// session of the account ends, and a reset link mailed before stops working; the caller's
/// session goes on.
#[utoipa::path(post, path = "/v1/accounts/me/password", tag = "accounts", security(("bearer" = [])), request_body = PasswordChange,
    responses((status = 204, description = "Changed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`wrong_password`", body = ErrorBody),
        (status = 409, description = "`password_not_set`: a guest account; attach credentials instead", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn change_password(
    State(state): State<AccountsState>,
    player: Player,
    ip: ClientIp,
    Json(req): Json<PasswordChange>,
) -> ApiResult<StatusCode> {
    if req.current_password.is_empty() || req.current_password.len() > 1024 {
        return Err(ApiError::invalid("current_password", "current_password must be given"));
    }
    validate::password("new_password", &req.new_password)?;
    let account = crate::api::own_account(&state, &player).await?;
    let (Some(email), Some(stored)) = (account.email, account.password_hash) else {
        return Err(ApiError::Conflict {
            code: "password_not_set",
            message: "this account has no password; attach an email and password with POST /v1/accounts/me/credentials".into(),
        });
    };
    state.login_allowed(&email, ip).await?;
    if !state.passwords.verify(req.current_password, Some(stored)).await? {
        state.login_failed(&email, ip).await?;
        tracing::info!("password change refused: wrong current password");
        return Err(ApiError::client(StatusCode::FORBIDDEN, "wrong_password", "the current password is wrong"));
    }
    let password_hash = state.passwords.hash(req.new_password).await?;
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    store::set_password(&mut *tx, &player.account_id, &password_hash, now).await?;
    store::drop_reset_token(&mut *tx, &player.account_id).await?;
    let ended = crate::store::revoke_other_sessions(&mut tx, &player.account_id, &player.session_id, now, "password_changed").await?;
    let sessions_ended = ended.len();
    let revoked = state.auth.revoke_sessions(&mut tx, ended).await?;
    tx.commit().await?;
    revoked.announce().await;
    tracing::info!(sessions_ended, "password changed");
    Ok(StatusCode::NO_CONTENT)
}

/// Asks for a reset mail. Always 202 with the same body, whether or not an account has the
/// email (a guest has none: nothing is sent); the mail goes out within seconds when there is
/// one. Limited per client address (429); past `RATE_LIMIT_PASSWORD_RESET_PER_EMAIL_PER_HOUR`
/// requests for one email, the answer is the same and nothing is sent.
#[utoipa::path(post, path = "/v1/auth/password/forgot", tag = "auth", request_body = PasswordForgotten,
    responses((status = 202, body = ResetRequested), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn forgot_password(
    State(state): State<AccountsState>,
    ip: ClientIp,
    Json(req): Json<PasswordForgotten>,
) -> ApiResult<impl IntoResponse> {
    let email = validate::email(&req.email)?;
    let resets = &state.resets;
    resets.per_ip.hit(&state.cache, &format!("password-reset:ip:{}", ip.0)).await?;
    let (count, _) = state
        .cache
        .hit(&format!("password-reset:email:{email}"), Duration::from_secs(3600))
        .await
        .map_err(|err| ApiError::Internal(err.context("counting reset mails")))?;
    if count <= u64::from(resets.config.per_email_per_hour) {
        store::queue_reset_mail(state.db.pool(), &email, now_millis()).await?;
        resets.wake.notify_one();
    } else {
        tracing::info!("reset mails to one email spent for the hour; nothing sent");
    }
    let body = ResetRequested {
        status: "accepted",
        message: "if an account has this email, a mail with a link to choose a new password is on its way",
    };
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// Sets a new password with the token from a reset mail, and ends every session of the account.
/// A token works once, until it expires (`PASSWORD_RESET_TTL_SECS`, 30 minutes) or a newer mail
/// replaces it: 400 `invalid_reset_token` for an unknown, used or replaced token, 400
/// `reset_token_expired` for an expired one.
#[utoipa::path(post, path = "/v1/auth/password/reset", tag = "auth", request_body = PasswordReset,
    responses((status = 204, description = "The password is set; sign in with it"), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn reset_password(State(state): State<AccountsState>, ip: ClientIp, Json(req): Json<PasswordReset>) -> ApiResult<StatusCode> {
    validate::password("new_password", &req.new_password)?;
    state.limit_ip(ip).await?;
    let invalid = || {
        ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_reset_token",
            "this reset link is not valid, or was used or replaced; ask for a new one",
        )
    };
    if !req.token.starts_with(TOKEN_PREFIX) || req.token.len() > 128 {
        return Err(invalid());
    }
    let token_hash = hash_token(&req.token);
    let (_, expires_at) = store::reset_token(state.db.pool(), &token_hash).await?.ok_or_else(invalid)?;
    if expires_at <= now_millis() {
        return Err(ApiError::client(StatusCode::BAD_REQUEST, "reset_token_expired", "this reset link has expired; ask for a new one"));
    }
    // Hashed before the transaction, which then holds its locks for milliseconds.
    let password_hash = state.passwords.hash(req.new_password).await?;
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    // Taken, not read: of two requests with one token, the second finds nothing here.
    let account_id = store::take_reset_token(&mut *tx, &token_hash, now).await?.ok_or_else(invalid)?;
    let account = crate::store::account_by_id(&mut *tx, &account_id).await?.ok_or_else(invalid)?;
    store::set_password(&mut *tx, &account_id, &password_hash, now).await?;
    let ended = store::revoke_all_sessions(&mut tx, &account_id, now, "password_reset").await?;
    let sessions_ended = ended.len();
    let revoked = state.auth.revoke_sessions(&mut tx, ended).await?;
    tx.commit().await?;
    revoked.announce().await;
    // The mailbox's owner is the account's: this address may sign in again at once.
    if let Some(email) = &account.email {
        state.login_succeeded(email, ip).await?;
    }
    tracing::info!(account_id, sessions_ended, "password reset");
    Ok(StatusCode::NO_CONTENT)
}

fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom_fill(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The stored form of a token: its SHA-256 in hex (256 random bits: nothing to brute-force).
fn hash_token(token: &str) -> String {
    platform::digest::sha256_hex(token)
}

/// The reset mail to `to` for `username` carrying `token`.
fn reset_message(config: &PasswordResetConfig, to: &str, username: &str, token: &str) -> Message {
    let minutes = (config.token_ttl.as_secs() / 60).max(1);
    let within = if minutes == 1 { "1 minute".to_owned() } else { format!("{minutes} minutes") };
    let how = match &config.url_template {
        Some(template) => format!("To choose a new password, open this link within {within}:\n\n{}\n", template.replace("{token}", token)),
        None => format!("To choose a new password, enter this code in the game within {within}:\n\n{token}\n"),
    };
    let body = format!(
        "Hello {username},\n\nsomeone, hopefully you, asked to reset the password of your account.\n{how}\n\
         If you did not ask for this, ignore this mail: your password stays as it is, and the link stops working on its own.\n"
    );
    Message { to: to.to_owned(), subject: "Reset your password".into(), body }
}

/// Sends the queued reset mails, and purges expired tokens hourly, until shutdown. Runs in every
/// accounts process; rows are leased, so several share the queue.
pub async fn run_mailer(state: AccountsState, shutdown: Shutdown) {
    let resets = state.resets.clone();
    if !resets.mailer.is_relay() {
        if state.db.dialect() == platform::db::Dialect::Postgres {
            // Several instances on a shared database are a deployment: a folder on one of them
            // is nobody's mailbox.
            tracing::warn!("no SMTP_URL: password reset mails are written as files on this machine ({:?})", resets.mailer);
        } else {
            tracing::info!("no SMTP_URL: password reset mails are written as files ({:?})", resets.mailer);
        }
    }
    let mut purge = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.stopped() => return,
            () = resets.wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            _ = purge.tick() => {
                match store::purge_reset_tokens(state.db.pool(), now_millis()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "purged expired reset tokens"),
                    Err(err) => tracing::warn!(error = format!("{err:#}"), "purging reset tokens failed"),
                }
            }
        }
        loop {
            let now = now_millis();
            let lease_until = now.saturating_add(i64::try_from(resets.lease.as_millis()).unwrap_or(i64::MAX));
            let jobs = match store::claim_reset_mails(state.db.pool(), now, lease_until, BATCH).await {
                Ok(jobs) => jobs,
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "claiming reset mails failed");
                    break;
                }
            };
            if jobs.is_empty() {
                break;
            }
            for job in jobs {
                if let Err(err) = send_one(&state, &job).await {
                    // Left leased: tried again once the lease ends.
                    tracing::warn!(error = format!("{err:#}"), mail = job.id, "handling a reset mail failed");
                }
            }
        }
    }
}

/// Sends one queued reset mail: finds the account, makes and stores a token, mails it, and
/// deletes the row (or schedules another attempt).
async fn send_one(state: &AccountsState, job: &store::MailJob) -> anyhow::Result<()> {
    let db = state.db.pool();
    let now = now_millis();
    if now.saturating_sub(job.requested_at) > i64::try_from(GIVE_UP_AFTER.as_millis()).unwrap_or(i64::MAX) {
        tracing::warn!(mail = job.id, attempts = job.attempts, "reset mail given up: not sent in time");
        return store::finish_reset_mail(db, &job.id).await;
    }
    let account = crate::store::account_by_email(db, &job.email).await?;
    let Some(account) = account else {
        // Nobody has this email: nothing to send, and nothing the requester will learn.
        tracing::debug!(mail = job.id, "reset asked for an email without an account");
        return store::finish_reset_mail(db, &job.id).await;
    };
    let token = new_token()?;
    let expires_at = now.saturating_add(i64::try_from(state.resets.config.token_ttl.as_millis()).unwrap_or(i64::MAX));
    store::put_reset_token(db, &account.id, &hash_token(&token), now, expires_at).await?;
    let message = reset_message(&state.resets.config, &job.email, &account.username, &token);
    drop(token);
    match state.resets.mailer.send(&message).await {
        Ok(sent) => {
            store::finish_reset_mail(db, &job.id).await?;
            match sent {
                Sent::Relayed => tracing::info!(account_id = account.id, "password reset mail sent"),
                // Where to find it, for a studio working locally; the token is in the file only.
                Sent::Written(path) => tracing::info!(account_id = account.id, file = %path.display(), "password reset mail written"),
            }
        }
        Err(err) => {
            let attempts = job.attempts + 1;
            if err.is_transient() && attempts < MAX_ATTEMPTS {
                // 4 s, 8 s, 16 s, 32 s: within `GIVE_UP_AFTER` at the last.
                let wait = Duration::from_secs(2 << attempts.min(6));
                tracing::warn!(account_id = account.id, attempts, error = %err, retry_in_secs = wait.as_secs(), "password reset mail not sent; will retry");
                let next_at = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                store::retry_reset_mail(db, &job.id, attempts, next_at).await?;
            } else {
                tracing::warn!(account_id = account.id, attempts, error = %err, "password reset mail not sent; given up");
                store::finish_reset_mail(db, &job.id).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_stored_hashed() {
        let a = new_token().expect("token");
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43, "{a}");
        assert_ne!(a, new_token().expect("token"));
        assert_eq!(hash_token(&a).len(), 64);
        assert!(!hash_token(&a).contains(&a[TOKEN_PREFIX.len()..]));
    }

    #[test]
    fn the_mail_carries_the_link_or_the_code() {
        let mut config = PasswordResetConfig {
            url_template: Some("https://game.example/reset?token={token}".into()),
            token_ttl: Duration::from_secs(1800),
            per_ip_per_hour: 20,
            per_email_per_hour: 3,
        };
        let linked = reset_message(&config, "ana@example.com", "ana", "ghpr_abc");
        assert!(
            linked.body.contains("\nhttps://game.example/reset?token=ghpr_abc\n") && linked.body.contains("30 minutes"),
            "{}",
            linked.body
        );
        config.url_template = None;
        let code = reset_message(&config, "ana@example.com", "ana", "ghpr_abc");
        assert!(code.body.contains("enter this code") && code.body.contains("\nghpr_abc\n"), "{}", code.body);
    }
}
