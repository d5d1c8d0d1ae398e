//! Operators' account routes: search, the account view, account-wide bans, ending every session,
//! and erasure. Each requires the key's `accounts` scope; each change leaves an audit entry in its
//! own transaction.
//!
//! The account view is served by each service from its own tables, since services never read
//! each other's (`ARCHITECTURE.md`) and the four may run as separate processes: accounts answers
//! `GET /v1/admin/accounts/{id}` (the account, its ban, its live sessions) and names, in `parts`,
//! where the rest is: its records (leaderboard), its assets (uploads) and its chat sanctions
//! (chat), each on its own service's route. The ALB routes those paths to their services.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use platform::auth::{Admin, Scope};
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::http::{Json, Query};
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AccountsState;
use crate::model::Account;
use crate::store::{self, Ban};

/// The operators' account routes.
pub fn routes() -> Router<AccountsState> {
    Router::new()
        .route("/v1/admin/accounts", get(search))
        .route("/v1/admin/accounts/{id}", get(show).delete(erase))
        .route("/v1/admin/accounts/{id}/ban", post(ban).delete(unban))
        .route("/v1/admin/accounts/{id}/sessions/revoke", post(revoke_sessions))
}

/// Live sessions the account view lists at most (it counts them all).
const SESSIONS_SHOWN: i64 = 100;
/// Longest ban in minutes: a year (absent: for good).
const MAX_BAN_MINUTES: i64 = 525_600;

fn target(id: &str) -> String {
    format!("account:{id}")
}

fn no_account() -> ApiError {
    ApiError::NotFound("no such account".into())
}

/// The account `id`, or 404.
async fn existing(state: &AccountsState, id: &str) -> ApiResult<store::AccountRow> {
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(no_account());
    }
    store::account_by_id(state.db.pool(), id).await?.ok_or_else(no_account)
}

/// An account-wide ban as operators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BanView {
    /// Why, if the operator said.
    pub reason: Option<String>,
    /// RFC 3339; absent for good.
    pub until: Option<String>,
    /// Whether it still applies (false once `until` has passed).
    pub in_force: bool,
    /// The key that issued it: `bootstrap` or a key id.
    pub issued_by: String,
    /// That key's name.
    pub issued_by_name: String,
    /// RFC 3339.
    pub issued_at: String,
}

impl BanView {
    fn new(ban: Ban, now: i64) -> Self {
        BanView {
            in_force: ban.in_force(now),
            reason: ban.reason,
            until: ban.until.map(platform::time::rfc3339),
            issued_by: ban.issued_by,
            issued_by_name: ban.issued_by_name,
            issued_at: platform::time::rfc3339(ban.issued_at),
        }
    }
}

/// An account in a search.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountSummary {
    /// The account.
    pub account: Account,
    /// Whether an account-wide ban is in force.
    pub banned: bool,
}

/// A page of accounts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountPage {
    /// The accounts.
    pub accounts: Vec<AccountSummary>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/admin/accounts`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// An account id, or the start of a username or email (any case); every account without it.
    #[param(min_length = 1, max_length = 254)]
    pub query: Option<String>,
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
}

/// Finds accounts by id, or by the start of their username or email, newest first.
#[utoipa::path(get, path = "/v1/admin/accounts", tag = "admin", security(("bearer" = [])), params(SearchQuery),
    responses((status = 200, body = AccountPage), (status = 400, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `accounts`", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn search(State(state): State<AccountsState>, admin: Admin, Query(query): Query<SearchQuery>) -> ApiResult<Json<AccountPage>> {
    admin.require(Scope::Accounts)?;
    let limit = platform::admin::page_limit(query.limit)?;
    let before = query.cursor.as_deref().map(platform::admin::uuid_cursor).transpose()?;
    let text = match query.query.as_deref().map(str::trim) {
        None => None,
        Some(q) if (1..=254).contains(&q.chars().count()) && !q.chars().any(char::is_control) => Some(q.to_lowercase()),
        Some(_) => return Err(ApiError::invalid("query", "query must be 1 to 254 characters without control characters")),
    };
    let mut found = store::search(state.db.pool(), text.as_deref(), before, limit + 1).await?;
    let next_cursor = platform::admin::next_cursor(&mut found, limit, |f| f.account.id.clone());
    let now = now_millis();
    let accounts =
        found.into_iter().map(|f| AccountSummary { banned: f.ban.is_some_and(|b| b.in_force(now)), account: f.account.into() }).collect();
    Ok(Json(AccountPage { accounts, next_cursor }))
}

/// A live session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// RFC 3339: the sign-in.
    pub created_at: String,
    /// RFC 3339: the last refresh.
    pub refreshed_at: String,
    /// RFC 3339: when it ends unless refreshed.
    pub expires_at: String,
}

/// Where the rest of an account view is: each service serves its own part.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountParts {
    /// Its leaderboard records on every board and season (leaderboard service).
    pub records: String,
    /// Its uploaded assets (uploads service).
    pub assets: String,
    /// Its chat mutes and bans (chat service).
    pub sanctions: String,
}

/// `GET /v1/admin/accounts/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountDetail {
    /// The account.
    pub account: Account,
    /// Its account-wide ban, in force or expired.
    pub ban: Option<BanView>,
    /// How many live sessions it has.
    pub live_session_count: i64,
    /// The newest of them, 100 at most.
    pub live_sessions: Vec<SessionView>,
    /// Where its records, assets and chat sanctions are.
    pub parts: AccountParts,
    /// How many friends, requests and blocks it has.
    pub social: SocialCounts,
    /// The identities it signs in with (one per provider at most).
    pub identities: Vec<IdentityEntry>,
}

/// An account's friends, requests and blocks, counted (`AccountDetail`).
#[derive(Debug, Serialize, ToSchema)]
pub struct SocialCounts {
    /// Friends.
    pub friends: i64,
    /// Friend requests it received and has not answered.
    pub incoming_requests: i64,
    /// Friend requests it sent that wait for an answer.
    pub outgoing_requests: i64,
    /// Players it blocked.
    pub blocks: i64,
}

/// An identity of an account, as operators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityEntry {
    /// `device`, `apple`, `google`, `steam` or `discord`.
    pub provider: String,
    /// The provider's id of the player (for a device, the SHA-256 of its device id).
    pub subject: String,
}

/// An account as operators see it: its profile and email, its ban, its live sessions, and where
/// the other services' parts of it are.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id")),
    responses((status = 200, body = AccountDetail), (status = 403, description = "`insufficient_scope`: the key lacks `accounts`", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn show(State(state): State<AccountsState>, admin: Admin, Path(id): Path<String>) -> ApiResult<Json<AccountDetail>> {
    admin.require(Scope::Accounts)?;
    let account = existing(&state, &id).await?;
    let now = now_millis();
    let mut conn = state.db.pool().acquire().await?;
    let ban = store::ban_of(&mut *conn, &id).await?;
    let (sessions, live_session_count) = store::live_sessions(&mut conn, &id, now, SESSIONS_SHOWN).await?;
    let counts = crate::social::store::counts(&mut conn, &id).await?;
    let social = SocialCounts {
        friends: counts.friends,
        incoming_requests: counts.incoming,
        outgoing_requests: counts.outgoing,
        blocks: counts.blocks,
    };
    let identities = crate::identity::store::identities_of(&mut *conn, &id)
        .await?
        .into_iter()
        .map(|row| IdentityEntry { provider: row.provider, subject: row.subject })
        .collect();
    let live_sessions = sessions
        .into_iter()
        .map(|s| SessionView {
            id: s.id,
            created_at: platform::time::rfc3339(s.created_at),
            refreshed_at: platform::time::rfc3339(s.refreshed_at),
            expires_at: platform::time::rfc3339(s.expires_at),
        })
        .collect();
    let parts = AccountParts {
        records: format!("/v1/admin/accounts/{id}/records"),
        assets: format!("/v1/admin/assets?owner_id={id}"),
        sanctions: format!("/v1/admin/accounts/{id}/sanctions"),
    };
    Ok(Json(AccountDetail {
        account: account.into(),
        ban: ban.map(|b| BanView::new(b, now)),
        live_session_count,
        live_sessions,
        parts,
        social,
        identities,
    }))
}

/// `POST /v1/admin/accounts/{id}/ban`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    /// Why, for the record; 500 characters at most. Not shown to the player.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
    /// How long, 1 to 525600 (a year); absent for good.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 525_600)]
    pub minutes: Option<i64>,
}

/// Answer of a ban or of ending sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct Banned {
    /// The ban now in force.
    pub ban: BanView,
    /// Live sessions it ended.
    pub sessions_ended: usize,
}

/// Sessions ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsEnded {
    /// How many were live.
    pub sessions_ended: usize,
}

/// Bans an account everywhere: sign-in (password or device) and refresh are refused with 403
/// `account_banned` while it is in force, and its sessions end at once, their access tokens
/// failing on every instance and their chat sockets closing (4002 `session_revoked`). A ban the
/// account had is replaced.
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/ban", tag = "admin", security(("bearer" = [])), request_body = BanRequest,
    params(("id" = String, Path, description = "Account id")),
    responses((status = 200, body = Banned), (status = 400, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `accounts`", body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn ban(
    State(state): State<AccountsState>,
    admin: Admin,
    Path(id): Path<String>,
    Json(req): Json<BanRequest>,
) -> ApiResult<Json<Banned>> {
    admin.require(Scope::Accounts)?;
    if req.reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::invalid("reason", "reason must be at most 500 characters"));
    }
    let now = now_millis();
    let until = match req.minutes {
        None => None,
        Some(m @ 1..=MAX_BAN_MINUTES) => Some(now + m * 60_000),
        Some(_) => return Err(ApiError::invalid("minutes", format!("minutes must be between 1 and {MAX_BAN_MINUTES}"))),
    };
    existing(&state, &id).await?;
    let ban = Ban {
        reason: req.reason,
        until,
        issued_by: admin.key_id().to_owned(),
        issued_by_name: admin.key_name().to_owned(),
        issued_at: now,
    };
    let mut tx = state.db.begin().await?;
    store::put_ban(&mut *tx, &id, &ban).await?;
    let ended = store::revoke_other_sessions(&mut tx, &id, "", now, "banned").await?;
    let detail = serde_json::json!({ "reason": ban.reason, "until": until.map(platform::time::rfc3339), "sessions_ended": ended.len() });
    platform::audit::record(&mut *tx, &admin, "accounts.ban", &target(&id), &detail).await?;
    let revoked = state.auth.revoke_sessions(&mut tx, ended.clone()).await?;
    tx.commit().await?;
    revoked.announce().await;
    tracing::info!(account_id = id, sessions_ended = ended.len(), by = admin.key_id(), "account banned");
    Ok(Json(Banned { ban: BanView::new(ban, now), sessions_ended: ended.len() }))
}

/// Lifts an account's ban: the player may sign in again.
#[utoipa::path(delete, path = "/v1/admin/accounts/{id}/ban", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id")),
    responses((status = 204), (status = 403, description = "`insufficient_scope`: the key lacks `accounts`", body = ErrorBody),
        (status = 404, description = "no such account, or not banned", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn unban(State(state): State<AccountsState>, admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    admin.require(Scope::Accounts)?;
    existing(&state, &id).await?;
    let mut tx = state.db.begin().await?;
    let lifted = store::lift_ban(&mut tx, &id).await?.ok_or_else(|| ApiError::NotFound("this account is not banned".into()))?;
    let detail =
        serde_json::json!({ "reason": lifted.reason, "issued_by": lifted.issued_by, "was_in_force": lifted.in_force(now_millis()) });
    platform::audit::record(&mut *tx, &admin, "accounts.unban", &target(&id), &detail).await?;
    tx.commit().await?;
    tracing::info!(account_id = id, by = admin.key_id(), "account unbanned");
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of an account (a stolen device, say): its refresh tokens stop working, its
/// access tokens fail on every instance and its chat sockets close. It may sign in again.
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/sessions/revoke", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id")),
    responses((status = 200, body = SessionsEnded), (status = 403, description = "`insufficient_scope`: the key lacks `accounts`", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn revoke_sessions(State(state): State<AccountsState>, admin: Admin, Path(id): Path<String>) -> ApiResult<Json<SessionsEnded>> {
    admin.require(Scope::Accounts)?;
    existing(&state, &id).await?;
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    let ended = store::revoke_other_sessions(&mut tx, &id, "", now, "ended_by_operator").await?;
    platform::audit::record(
        &mut *tx,
        &admin,
        "accounts.sessions_revoke",
        &target(&id),
        &serde_json::json!({ "sessions_ended": ended.len() }),
    )
    .await?;
    let revoked = state.auth.revoke_sessions(&mut tx, ended.clone()).await?;
    tx.commit().await?;
    revoked.announce().await;
    tracing::info!(account_id = id, sessions_ended = ended.len(), by = admin.key_id(), "account's sessions ended");
    Ok(Json(SessionsEnded { sessions_ended: ended.len() }))
}

/// Erases an account as the player's own `DELETE /v1/accounts/me` does: the account and its
/// sessions go, and `account.deleted` takes its records, files and messages from the other
/// services. The audit entry keeps the account id only.
#[utoipa::path(delete, path = "/v1/admin/accounts/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id")),
    responses((status = 204), (status = 403, description = "`insufficient_scope`: the key lacks `accounts`", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn erase(State(state): State<AccountsState>, admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    admin.require(Scope::Accounts)?;
    if uuid::Uuid::try_parse(&id).is_err() {
        return Err(no_account());
    }
    state.erase_account(&id, Some(&admin)).await?.ok_or_else(no_account)?;
    tracing::info!(account_id = id, by = admin.key_id(), "account erased by an operator");
    Ok(StatusCode::NO_CONTENT)
}
