//! The accounts HTTP API, in the order of the API reference.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use platform::auth::{Admin, Player};
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::events::{AccountCreated, AccountDeleted};
use platform::http::{ClientIp, Json};
use platform::{ApiError, ApiResult, OnUnique};

use crate::AccountsState;
use crate::identity::api::NewKind;
use crate::identity::{Provider, Verified};
use crate::model::*;
use crate::store::{self, NewAccount, ProfilePatch};
use crate::validate;

/// The accounts routes.
pub fn routes() -> Router<AccountsState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/guest", post(guest))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/accounts/me", get(me).patch(update_me).delete(delete_me))
        .route("/v1/accounts/me/credentials", post(attach_credentials))
        .route("/v1/accounts/{id}", get(profile))
        .route("/.well-known/jwks.json", get(jwks))
}

/// An account's insert or update, with a unique violation mapped to the 409 it means.
fn taken<T>(written: anyhow::Result<T>) -> ApiResult<T> {
    written
        .on_unique("username", || ApiError::Conflict { code: "username_taken", message: "that username is taken".into() })
        .on_unique("email", || ApiError::Conflict { code: "email_taken", message: "an account with that email exists".into() })
}

impl AccountsState {
    /// The answer to a failed account write (`taken`) for `ip`, counting it when it tells that an
    /// email has an account (see `email_answers_allowed`).
    async fn conflict_for(&self, err: ApiError, ip: ClientIp) -> ApiError {
        if matches!(err, ApiError::Conflict { code: "email_taken", .. })
            && let Err(counting) = self.email_taken_answered(ip).await
        {
            return counting;
        }
        err
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::Unauthenticated { code: "invalid_credentials", message: "wrong email or password".into() }
}

/// Creates an account with email and password and signs it in. An answer that the email has an
/// account (409 `email_taken`) comes at most `RATE_LIMIT_EMAIL_TAKEN_PER_IP_PER_HOUR` times an
/// hour to one address; then every register and upgrade from it is refused (429) until the hour
/// ends, so that nobody can test many emails for accounts.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = Registered), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn register(State(state): State<AccountsState>, ip: ClientIp, Json(req): Json<RegisterRequest>) -> ApiResult<impl IntoResponse> {
    let email = validate::email(&req.email)?;
    let username = validate::username(&req.username)?;
    validate::password("password", &req.password)?;
    state.limit_ip(ip).await?;
    state.email_answers_allowed(ip).await?;

    let password_hash = state.passwords.hash(req.password).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    let new = NewAccount { id: &id, username: &username, email: Some(&email), password_hash: Some(&password_hash), now };
    if let Err(err) = taken(store::insert_account(&mut *tx, &new).await) {
        return Err(state.conflict_for(err, ip).await);
    }
    let account = new.stored();
    let created =
        AccountCreated { account_id: id.clone(), username: username.clone(), guest: false, created_at: platform::time::rfc3339(now) };
    platform::events::record(&mut *tx, &created).await?;
    let minted = state.open_session(&mut tx, &account).await?;
    tx.commit().await?;
    tracing::info!(account_id = id, "account registered");
    Ok((StatusCode::CREATED, Json(Registered { account: account.into(), tokens: state.pair(minted)? })))
}

/// Signs in with email and password. Unknown email and wrong password answer alike, in the same
/// time. Failed logins are throttled by account and address together (see `limits`).
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenPair), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`account_banned`: an operator banned the account", body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn login(State(state): State<AccountsState>, ip: ClientIp, Json(req): Json<LoginRequest>) -> ApiResult<Json<TokenPair>> {
    let email = validate::email(&req.email)?;
    if req.password.is_empty() || req.password.len() > 1024 {
        return Err(ApiError::invalid("password", "password must be given"));
    }
    state.limit_ip(ip).await?;
    state.login_allowed(&email, ip).await?;

    let account = store::account_by_email(state.db.pool(), &email).await?;
    let stored = account.as_ref().and_then(|a| a.password_hash.clone());
    // `verify` spends the same time with no stored hash, and says no then.
    let matched = state.passwords.verify(req.password, stored).await?;
    let Some(account) = account.filter(|_| matched) else {
        state.login_failed(&email, ip).await?;
        tracing::info!("login refused");
        return Err(invalid_credentials());
    };
    state.login_succeeded(&email, ip).await?;
    let mut tx = state.db.begin().await?;
    // In the session's transaction, so a ban and this sign-in can cross only within its few
    // milliseconds; a session that crossed one is refused at its first refresh, which checks the
    // ban too.
    state.refuse_banned(&mut *tx, &account.id).await?;
    let minted = state.open_session(&mut tx, &account).await?;
    tx.commit().await?;
    tracing::info!(account_id = account.id, "signed in");
    Ok(Json(state.pair(minted)?))
}

/// Signs a device in as a guest, creating the guest account on its first call (201). The device
/// is the account's `device` identity (see `identity`): one read by its key signs a returning
/// guest in.
#[utoipa::path(post, path = "/v1/auth/guest", tag = "auth", request_body = GuestRequest,
    responses((status = 200, body = TokenPair), (status = 201, body = TokenPair), (status = 400, body = ErrorBody),
        (status = 403, description = "`account_banned`: an operator banned the device's account", body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn guest(
    State(state): State<AccountsState>,
    ip: ClientIp,
    Json(req): Json<GuestRequest>,
) -> ApiResult<(StatusCode, Json<TokenPair>)> {
    let device_id = validate::device_id(&req.device_id)?;
    state.limit_ip(ip).await?;
    let verified = Verified { provider: Provider::Device, subject: device_key(device_id), single_use: None };
    state.sign_in_identity(&verified, Some(NewKind::Guest)).await
}

/// The stored form of a device id: its SHA-256 in hex.
pub(crate) fn device_key(device_id: &str) -> String {
    platform::digest::sha256_hex(device_id)
}

/// `prefix` and ten random base-32 characters: 50 bits, so collisions are negligible and handled.
pub(crate) fn generated_username(prefix: &str) -> anyhow::Result<String> {
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 10];
    crate::password::getrandom_fill(&mut bytes)?;
    Ok(format!("{prefix}{}", bytes.iter().map(|b| ALPHABET[usize::from(b % 32)] as char).collect::<String>()))
}

/// Exchanges a refresh token for a new pair. Presenting the same token again within
/// `REFRESH_REUSE_GRACE_SECS` (a retry after a lost answer) returns the same pair; later, it ends
/// the whole session (401 `token_reused`). Limited per client IP.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`account_banned`: an operator banned the account", body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn refresh(State(state): State<AccountsState>, ip: ClientIp, Json(req): Json<RefreshRequest>) -> ApiResult<Json<TokenPair>> {
    state.limits.refresh_per_ip.hit(&state.cache, &format!("refresh:ip:{}", ip.0)).await?;
    Ok(Json(state.refresh(&req.refresh_token).await?))
}

/// Ends the caller's session: its access and refresh tokens stop working on every instance.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn logout(State(state): State<AccountsState>, player: Player) -> ApiResult<StatusCode> {
    state.end_session(&player.session_id, "logout").await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn own_account(state: &AccountsState, player: &Player) -> ApiResult<store::AccountRow> {
    // A valid token for an account that no longer exists: the account was deleted.
    state
        .reads
        .account(&player.account_id)
        .await?
        .ok_or_else(|| ApiError::Unauthenticated { code: "session_revoked", message: "this account no longer exists".into() })
}

/// The caller's account.
#[utoipa::path(get, path = "/v1/accounts/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Account), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn me(State(state): State<AccountsState>, player: Player) -> ApiResult<Json<Account>> {
    Ok(Json(own_account(&state, &player).await?.into()))
}

/// Changes the caller's display name, avatar or locale.
#[utoipa::path(patch, path = "/v1/accounts/me", tag = "accounts", security(("bearer" = [])), request_body = ProfileUpdate,
    responses((status = 200, body = Account), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn update_me(State(state): State<AccountsState>, player: Player, Json(req): Json<ProfileUpdate>) -> ApiResult<Json<Account>> {
    let clean = |field: Option<Option<String>>, check: fn(&str) -> ApiResult<String>| -> ApiResult<Option<Option<String>>> {
        field.map(|value| value.as_deref().map(check).transpose()).transpose()
    };
    let patch = ProfilePatch {
        display_name: clean(req.display_name, validate::display_name)?,
        avatar_asset_id: clean(req.avatar_asset_id, validate::asset_id)?,
        locale: clean(req.locale, validate::locale)?,
    };
    let account = store::update_profile(state.db.pool(), &player.account_id, patch, now_millis()).await?;
    let account =
        account.ok_or_else(|| ApiError::Unauthenticated { code: "session_revoked", message: "this account no longer exists".into() })?;
    Ok(Json(account.into()))
}

/// Erases the caller's account and everything of it this service holds, ends its sessions, and
/// records `account.deleted` for the other services, in one transaction.
#[utoipa::path(delete, path = "/v1/accounts/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn delete_me(State(state): State<AccountsState>, player: Player) -> ApiResult<StatusCode> {
    state
        .erase_account(&player.account_id, None)
        .await?
        .ok_or_else(|| ApiError::Unauthenticated { code: "session_revoked", message: "this account no longer exists".into() })?;
    tracing::info!("account deleted");
    Ok(StatusCode::NO_CONTENT)
}

impl AccountsState {
    /// Erases `account_id` and everything of it this service holds and records `account.deleted`
    /// for the other services (and, for an operator's erasure, its audit entry), in one
    /// transaction, which also ends its sessions (`Authenticator::revoke_sessions`). `None` when there is no such account.
    pub(crate) async fn erase_account(&self, account_id: &str, by: Option<&Admin>) -> ApiResult<Option<Vec<String>>> {
        let now = now_millis();
        let mut tx = self.db.begin().await?;
        let Some(sessions) = store::delete_account(&mut tx, account_id, now).await? else { return Ok(None) };
        // Friends, requests and blocks, both ways; the other services forget their copies on
        // `account.deleted`.
        crate::social::store::erase_social(&mut tx, account_id).await?;
        let event = AccountDeleted { account_id: account_id.to_owned(), deleted_at: platform::time::rfc3339(now) };
        platform::events::record(&mut *tx, &event).await?;
        if let Some(admin) = by {
            let detail = serde_json::json!({ "sessions_ended": sessions.len() });
            platform::audit::record(&mut *tx, admin, "accounts.delete", &format!("account:{account_id}"), &detail).await?;
        }
        let revoked = self.auth.revoke_sessions(&mut tx, sessions.clone()).await?;
        tx.commit().await?;
        revoked.announce().await;
        Ok(Some(sessions))
    }

    /// 403 `account_banned` when `account_id` has a ban in force.
    pub(crate) async fn refuse_banned(&self, conn: impl sqlx::Executor<'_, Database = sqlx::Any>, account_id: &str) -> ApiResult<()> {
        match store::ban_of(conn, account_id).await? {
            Some(ban) if ban.in_force(now_millis()) => Err(banned(&ban)),
            _ => Ok(()),
        }
    }
}

/// 403 `account_banned`, saying until when (not why: the reason is the operators').
pub(crate) fn banned(ban: &store::Ban) -> ApiError {
    let message = match ban.until {
        Some(until) => format!("this account is banned until {}", platform::time::rfc3339(until)),
        None => "this account is banned".to_owned(),
    };
    ApiError::client(StatusCode::FORBIDDEN, "account_banned", message)
}

/// Gives a guest account an email and password (and optionally a chosen username). The device id
/// stops signing in to the account (a later guest sign-in from it makes a new guest), and every
/// other session of the account ends, since any of them may have been opened with the device id
/// alone; the caller's session goes on. `email_taken` answers count as for register.
#[utoipa::path(post, path = "/v1/accounts/me/credentials", tag = "accounts", security(("bearer" = [])), request_body = CredentialsRequest,
    responses((status = 200, body = Account), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn attach_credentials(
    State(state): State<AccountsState>,
    player: Player,
    ip: ClientIp,
    Json(req): Json<CredentialsRequest>,
) -> ApiResult<Json<Account>> {
    let email = validate::email(&req.email)?;
    validate::password("password", &req.password)?;
    let username = req.username.as_deref().map(validate::username).transpose()?;
    let account = own_account(&state, &player).await?;
    let already = || ApiError::Conflict { code: "credentials_exist", message: "this account already has an email and password".into() };
    if account.email.is_some() {
        return Err(already());
    }
    state.email_answers_allowed(ip).await?;
    let password_hash = state.passwords.hash(req.password).await?;
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    let attached = store::attach_credentials(&mut *tx, &player.account_id, &email, &password_hash, username.as_deref(), now).await;
    let updated = match taken(attached) {
        Ok(updated) => updated.ok_or_else(already)?,
        Err(err) => return Err(state.conflict_for(err, ip).await),
    };
    crate::identity::store::retire_device(&mut *tx, &player.account_id).await?;
    let ended = store::revoke_other_sessions(&mut tx, &player.account_id, &player.session_id, now, "guest_upgraded").await?;
    let sessions_ended = ended.len();
    let revoked = state.auth.revoke_sessions(&mut tx, ended).await?;
    tx.commit().await?;
    revoked.announce().await;
    tracing::info!(sessions_ended, "guest credentials attached; device sign-in retired");
    Ok(Json(updated.into()))
}

/// Another player's public profile (no email).
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id")),
    responses((status = 200, body = PublicProfile), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn profile(State(state): State<AccountsState>, player: Player, Path(id): Path<String>) -> ApiResult<Json<PublicProfile>> {
    let not_found = || ApiError::NotFound("no such account".into());
    if uuid::Uuid::try_parse(&id).is_err() {
        return Err(not_found());
    }
    // Tolerates a little lag: the reader's, unless the viewer wrote lately (their own profile
    // after a change then comes from the writer: `platform::replica`).
    let reads = state.db.reads_for(Some(&player.account_id)).await?;
    let account = store::account_by_id(&*reads, &id).await?.ok_or_else(not_found)?;
    Ok(Json(account.into()))
}

/// Every public key that verifies access tokens, as a JSON Web Key Set: the signing key's first,
/// then the previous and next keys of a rotation.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses((status = 200, description = "JWKS")))]
pub async fn jwks(State(state): State<AccountsState>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(state.auth.keys().jwks()))
}
