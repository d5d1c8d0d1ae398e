//! Sign-in with identity providers, and the identities of one's own account.

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use platform::auth::Player;
use platform::db::{Dialect, now_millis, unique_violation};
use platform::error::ErrorBody;
use platform::events::AccountCreated;
use platform::events::outbox::Entry;
use platform::http::{ClientIp, Json};
use platform::{ApiError, ApiResult, OnUnique};
use serde::Serialize;
use utoipa::ToSchema;

use super::store::{self as identities, Unlinked};
use super::{DiscordCodeProof, IdTokenProof, Proof, Provider, SteamTicketProof, Verified, refused};
use crate::AccountsState;
use crate::model::TokenPair;
use crate::sessions::Minted;
use crate::store::{self, NewAccount};

/// The provider sign-in and identity routes.
pub fn routes() -> Router<AccountsState> {
    Router::new()
        .route("/v1/auth/apple", post(apple))
        .route("/v1/auth/google", post(google))
        .route("/v1/auth/steam", post(steam))
        .route("/v1/auth/discord", post(discord))
        .route("/v1/accounts/me/identities", get(list))
        .route("/v1/accounts/me/identities/{provider}", post(link).delete(unlink))
}

/// Signs in with Sign in with Apple: the id_token Apple gave the app and the raw nonce whose
/// SHA-256 (lowercase hex) the app gave Apple. 201 when this created the account.
#[utoipa::path(post, path = "/v1/auth/apple", tag = "auth", request_body = IdTokenProof,
    responses((status = 200, body = TokenPair), (status = 201, body = TokenPair), (status = 400, body = ErrorBody),
        (status = 401, description = "`invalid_provider_token`: Apple does not vouch for it (signature, issuer, audience, expiry, nonce, or used before)", body = ErrorBody),
        (status = 403, description = "`account_banned`; `sign_up_closed`: no account has this identity and `PROVIDER_SIGN_UP` is off", body = ErrorBody),
        (status = 404, description = "`provider_disabled`", body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn apple(
    State(state): State<AccountsState>,
    ip: ClientIp,
    Json(proof): Json<IdTokenProof>,
) -> ApiResult<(StatusCode, Json<TokenPair>)> {
    state.sign_in_with(ip, Provider::Apple, Proof::IdToken(proof)).await
}

/// Signs in with Google: the id_token Google gave the client and the raw nonce whose SHA-256
/// (lowercase hex) the client gave Google. 201 when this created the account.
#[utoipa::path(post, path = "/v1/auth/google", tag = "auth", request_body = IdTokenProof,
    responses((status = 200, body = TokenPair), (status = 201, body = TokenPair), (status = 400, body = ErrorBody),
        (status = 401, description = "`invalid_provider_token`: Google does not vouch for it (signature, issuer, audience, expiry, nonce, or used before)", body = ErrorBody),
        (status = 403, description = "`account_banned`; `sign_up_closed`", body = ErrorBody),
        (status = 404, description = "`provider_disabled`", body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn google(
    State(state): State<AccountsState>,
    ip: ClientIp,
    Json(proof): Json<IdTokenProof>,
) -> ApiResult<(StatusCode, Json<TokenPair>)> {
    state.sign_in_with(ip, Provider::Google, Proof::IdToken(proof)).await
}

/// Signs in with a Steam session ticket, checked with Steam's `AuthenticateUserTicket` for this
/// game's app id. 201 when this created the account.
#[utoipa::path(post, path = "/v1/auth/steam", tag = "auth", request_body = SteamTicketProof,
    responses((status = 200, body = TokenPair), (status = 201, body = TokenPair), (status = 400, body = ErrorBody),
        (status = 401, description = "`invalid_provider_token`: Steam refused the ticket", body = ErrorBody),
        (status = 403, description = "`account_banned`; `provider_banned`: a publisher or VAC ban on the Steam account; `sign_up_closed`", body = ErrorBody),
        (status = 404, description = "`provider_disabled`", body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn steam(
    State(state): State<AccountsState>,
    ip: ClientIp,
    Json(proof): Json<SteamTicketProof>,
) -> ApiResult<(StatusCode, Json<TokenPair>)> {
    state.sign_in_with(ip, Provider::Steam, Proof::SteamTicket(proof)).await
}

/// Signs in with Discord: the authorization code of a PKCE authorization request, its code
/// verifier and redirect URI, exchanged by Guildhall with its client secret. 201 when this
/// created the account.
#[utoipa::path(post, path = "/v1/auth/discord", tag = "auth", request_body = DiscordCodeProof,
    responses((status = 200, body = TokenPair), (status = 201, body = TokenPair), (status = 400, body = ErrorBody),
        (status = 401, description = "`invalid_provider_token`: Discord refused the code or verifier", body = ErrorBody),
        (status = 403, description = "`account_banned`; `sign_up_closed`", body = ErrorBody),
        (status = 404, description = "`provider_disabled`", body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn discord(
    State(state): State<AccountsState>,
    ip: ClientIp,
    Json(proof): Json<DiscordCodeProof>,
) -> ApiResult<(StatusCode, Json<TokenPair>)> {
    state.sign_in_with(ip, Provider::Discord, Proof::DiscordCode(proof)).await
}

/// An identity of the caller's account.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityView {
    /// Which provider.
    pub provider: Provider,
    /// The provider's id of the player; absent for a device (only its hash is kept).
    pub subject: Option<String>,
    /// RFC 3339.
    pub linked_at: String,
}

impl From<identities::IdentityRow> for IdentityView {
    fn from(row: identities::IdentityRow) -> Self {
        let provider = Provider::parse(&row.provider).unwrap_or(Provider::Device);
        IdentityView {
            subject: (provider != Provider::Device).then_some(row.subject),
            provider,
            linked_at: platform::time::rfc3339(row.created_at),
        }
    }
}

/// `GET /v1/accounts/me/identities`: every way the account signs in. Not paginated: an account
/// holds one identity per provider at most, so five at most.
#[derive(Debug, Serialize, ToSchema)]
pub struct Identities {
    /// The linked identities, by provider name.
    pub identities: Vec<IdentityView>,
    /// Whether the account also signs in with email and password.
    pub password: bool,
}

/// The ways the caller's account signs in: its identities and whether it has a password.
#[utoipa::path(get, path = "/v1/accounts/me/identities", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Identities), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn list(State(state): State<AccountsState>, player: Player) -> ApiResult<Json<Identities>> {
    let account = store::account_by_id(state.db.pool(), &player.account_id).await?.ok_or_else(account_gone)?;
    let rows = identities::identities_of(state.db.pool(), &player.account_id).await?;
    Ok(Json(Identities { identities: rows.into_iter().map(Into::into).collect(), password: account.password_hash.is_some() }))
}

/// Links an identity to the caller's account: the body is what that provider's sign-in takes
/// (`{"id_token", "nonce"}` for apple and google, `{"ticket"}` for steam, `{"code",
/// "code_verifier", "redirect_uri"}` for discord, `{"device_id"}` for device). 200 when the
/// account had it already.
#[utoipa::path(post, path = "/v1/accounts/me/identities/{provider}", tag = "accounts", security(("bearer" = [])), request_body = Proof,
    params(("provider" = Provider, Path, description = "device, apple, google, steam or discord")),
    responses((status = 200, body = IdentityView), (status = 201, body = IdentityView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`provider_banned`", body = ErrorBody), (status = 404, description = "`not_found`: no such provider; `provider_disabled`", body = ErrorBody),
        (status = 409, description = "`identity_linked_elsewhere`: another account has it; `provider_already_linked`: this account has another identity of that provider", body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn link(
    State(state): State<AccountsState>,
    player: Player,
    ip: ClientIp,
    Path(provider): Path<String>,
    Json(proof): Json<Proof>,
) -> ApiResult<(StatusCode, Json<IdentityView>)> {
    let provider = known(&provider)?;
    state.limit_ip(ip).await?;
    let verified = state.providers.verify(provider, &proof).await?;
    state.take_once(&verified).await?;
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    store::account_by_id(&mut *tx, &player.account_id).await?.ok_or_else(account_gone)?;
    if let Some(owner) = identities::account_by_identity(&mut *tx, provider, &verified.subject).await? {
        if owner.id != player.account_id {
            return Err(linked_elsewhere());
        }
        let row = identities::identities_of(&mut *tx, &player.account_id).await?.into_iter().find(|r| r.provider == provider.as_str());
        let row = row.context("an identity found by its subject is missing from its account's list")?;
        return Ok((StatusCode::OK, Json(row.into())));
    }
    let already_linked = || ApiError::Conflict {
        code: "provider_already_linked",
        message: format!("this account has a {provider} identity already; unlink it first"),
    };
    identities::insert_identity(&mut *tx, provider, &verified.subject, &player.account_id, now)
        .await
        // One identity per provider on an account: PostgreSQL names the index, SQLite its columns.
        .on_unique("one_per_provider", already_linked)
        .on_unique("account_identities.account_id", already_linked)
        // Else the primary key (provider, subject): the identity is another account's.
        .on_unique("account_identities", linked_elsewhere)?;
    tx.commit().await.context("committing the link")?;
    tracing::info!(%provider, "identity linked");
    let view = IdentityView {
        subject: (provider != Provider::Device).then_some(verified.subject),
        provider,
        linked_at: platform::time::rfc3339(now),
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Unlinks the caller's identity of `provider`. The account's last way to sign in (its only
/// identity, without a password) is kept: 409 `last_sign_in_method`.
#[utoipa::path(delete, path = "/v1/accounts/me/identities/{provider}", tag = "accounts", security(("bearer" = [])),
    params(("provider" = Provider, Path, description = "device, apple, google, steam or discord")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, description = "`not_found`: no such provider, or none linked", body = ErrorBody),
        (status = 409, description = "`last_sign_in_method`", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn unlink(State(state): State<AccountsState>, player: Player, Path(provider): Path<String>) -> ApiResult<StatusCode> {
    let provider = known(&provider)?;
    let mut tx = state.db.begin().await?;
    match identities::unlink(&mut tx, &player.account_id, provider, now_millis()).await? {
        Unlinked::Removed => {}
        Unlinked::NotLinked => return Err(ApiError::NotFound(format!("this account has no {provider} identity"))),
        Unlinked::LastWay => {
            return Err(ApiError::Conflict {
                code: "last_sign_in_method",
                message: "this is the account's last way to sign in; link another or set a password first".into(),
            });
        }
        Unlinked::NoAccount => return Err(account_gone()),
    }
    tx.commit().await.context("committing the unlink")?;
    tracing::info!(%provider, "identity unlinked");
    Ok(StatusCode::NO_CONTENT)
}

fn known(name: &str) -> ApiResult<Provider> {
    Provider::parse(name).ok_or_else(|| ApiError::NotFound(format!("no identity provider {name:?}")))
}

fn account_gone() -> ApiError {
    ApiError::Unauthenticated { code: "session_revoked", message: "this account no longer exists".into() }
}

fn linked_elsewhere() -> ApiError {
    ApiError::Conflict { code: "identity_linked_elsewhere", message: "this identity signs in to another account".into() }
}

/// How many times a sign-in tries again after a concurrent first sign-in of the same identity
/// (or a generated username that was taken).
const CREATE_TRIES: usize = 3;

impl AccountsState {
    /// Counts the attempt from `ip`, checks `proof` with `provider`, and signs its identity in.
    async fn sign_in_with(&self, ip: ClientIp, provider: Provider, proof: Proof) -> ApiResult<(StatusCode, Json<TokenPair>)> {
        self.limit_ip(ip).await?;
        let verified = self.providers.verify(provider, &proof).await?;
        self.take_once(&verified).await?;
        self.sign_in_identity(&verified, self.providers.sign_up().then_some(NewKind::Player)).await
    }

    /// Refuses an id_token presented before (its nonce is counted until the token expires): a
    /// token copied from a device cannot open a second session.
    pub(crate) async fn take_once(&self, verified: &Verified) -> ApiResult<()> {
        let Some((key, until)) = &verified.single_use else { return Ok(()) };
        let left = (until + 60 - now_millis() / 1000).clamp(1, 2 * 86_400);
        let (count, _) =
            self.cache.hit(&format!("idtoken:{key}"), Duration::from_secs(left.unsigned_abs())).await.context("counting an id_token")?;
        if count > 1 {
            return Err(refused(verified.provider, "token used before"));
        }
        Ok(())
    }

    /// Signs `verified` in to its account (200), or creates the account as `create` says (201),
    /// or refuses (403 `sign_up_closed`) when `create` is `None`. Banned accounts get 403.
    pub(crate) async fn sign_in_identity(&self, verified: &Verified, create: Option<NewKind>) -> ApiResult<(StatusCode, Json<TokenPair>)> {
        // A concurrent first sign-in of the same identity may create the account between our
        // lookup and our insert; then the next lookup finds it.
        for _ in 0..CREATE_TRIES {
            let signed_in = match self.db.dialect() {
                Dialect::Postgres => self.sign_in_in_one_statement(verified, create).await?,
                Dialect::Sqlite => self.sign_in_in_a_transaction(verified, create).await?,
            };
            if let Some((status, minted)) = signed_in {
                return Ok((status, Json(self.pair(minted)?)));
            }
        }
        Err(ApiError::Internal(anyhow::anyhow!("could not create or find the account of a {} identity", verified.provider)))
    }

    /// One try of `sign_in_identity` on PostgreSQL: one statement for a returning player (the
    /// lookup, the ban check and the session: `identities::sign_in_many`, made in a batch with
    /// the sign-ins queued beside it by `sign_ins`), and one more to create the
    /// account of a new one (`identities::create_by_identity`). `None`: a concurrent first
    /// sign-in won the identity (or a generated username was taken); try again.
    async fn sign_in_in_one_statement(&self, verified: &Verified, create: Option<NewKind>) -> ApiResult<Option<(StatusCode, Minted)>> {
        let opening = self.opening()?;
        let row = opening.row();
        let ask = identities::SigningIn {
            provider: verified.provider,
            subject: verified.subject.clone(),
            session_id: row.id.to_owned(),
            refresh_hash: row.refresh_hash.to_owned(),
            now: row.now,
            expires_at: row.expires_at,
        };
        match self.sign_ins.sign_in(ask).await? {
            identities::SignIn::Opened(account) => return Ok(Some((StatusCode::OK, opening.minted(&account)))),
            identities::SignIn::Banned(ban) => return Err(crate::api::banned(&ban)),
            identities::SignIn::Unknown => {}
        }
        let kind = create.ok_or_else(|| sign_up_closed(verified.provider))?;
        let now = opening.row().now;
        let (new_id, username, created) = new_account(kind, now)?;
        let new = NewAccount { id: &new_id, username: &username, email: None, password_hash: None, now };
        let event = Entry::of(&created)?;
        match identities::create_by_identity(self.db.pool(), &new, verified.provider, &verified.subject, &event, &opening.row()).await {
            Ok(()) => {}
            Err(err) if unique_violation(&err).is_some() => return Ok(None),
            Err(err) => return Err(err.into()),
        }
        tracing::info!(account_id = new_id, provider = %verified.provider, "account created by sign-in");
        Ok(Some((StatusCode::CREATED, opening.minted(&new.stored()))))
    }

    /// One try of `sign_in_identity` on SQLite, which cannot write in a `WITH` clause: the same
    /// steps one by one in a transaction. `None` as for `sign_in_in_one_statement`.
    async fn sign_in_in_a_transaction(&self, verified: &Verified, create: Option<NewKind>) -> ApiResult<Option<(StatusCode, Minted)>> {
        let mut tx = self.db.begin().await?;
        if let Some(account) = identities::account_by_identity(&mut *tx, verified.provider, &verified.subject).await? {
            self.refuse_banned(&mut *tx, &account.id).await?;
            let minted = self.open_session(&mut tx, &account).await?;
            tx.commit().await.context("committing the sign-in")?;
            return Ok(Some((StatusCode::OK, minted)));
        }
        let kind = create.ok_or_else(|| sign_up_closed(verified.provider))?;
        let now = now_millis();
        let (new_id, username, created) = new_account(kind, now)?;
        let new = NewAccount { id: &new_id, username: &username, email: None, password_hash: None, now };
        let inserted = match store::insert_account(&mut *tx, &new).await {
            Ok(()) => identities::insert_identity(&mut *tx, verified.provider, &verified.subject, &new_id, new.now).await,
            Err(err) => Err(err),
        };
        match inserted {
            Ok(()) => {}
            Err(err) if unique_violation(&err).is_some() => return Ok(None),
            Err(err) => return Err(err.into()),
        }
        let account = new.stored();
        platform::events::record(&mut *tx, &created).await?;
        let minted = self.open_session(&mut tx, &account).await?;
        tx.commit().await.context("committing the new account")?;
        tracing::info!(account_id = new_id, provider = %verified.provider, "account created by sign-in");
        Ok(Some((StatusCode::CREATED, minted)))
    }
}

/// 403 `sign_up_closed`: no account has the identity, and signing in with it makes none.
fn sign_up_closed(provider: Provider) -> ApiError {
    ApiError::client(
        StatusCode::FORBIDDEN,
        "sign_up_closed",
        format!("no account has this {provider} identity, and new accounts are not made by signing in with it"),
    )
}

/// A new account of `kind`, made by a first sign-in at `now`: its id, its generated username,
/// and the `account.created` event that announces it.
fn new_account(kind: NewKind, now: i64) -> ApiResult<(String, String, AccountCreated)> {
    let id = uuid::Uuid::now_v7().to_string();
    let username = crate::api::generated_username(kind.prefix())?;
    let created = AccountCreated {
        account_id: id.clone(),
        username: username.clone(),
        guest: kind == NewKind::Guest,
        created_at: platform::time::rfc3339(now),
    };
    Ok((id, username, created))
}

/// What kind of account a first sign-in makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NewKind {
    /// A guest (device): `guest_` usernames, `guest: true` in `account.created`.
    Guest,
    /// A provider's player: `player_` usernames.
    Player,
}

impl NewKind {
    fn prefix(self) -> &'static str {
        match self {
            NewKind::Guest => "guest_",
            NewKind::Player => "player_",
        }
    }
}
