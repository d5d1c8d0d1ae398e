//! Guildhall accounts: sign-up, login (email and password, or guest device), sessions with
//! rotating refresh tokens, profiles, and erasure.

pub mod admin;
pub mod api;
pub mod identity;
pub mod limits;
pub mod model;
pub mod password;
pub mod password_reset;
pub mod reads;
pub mod sessions;
pub mod social;
pub mod store;
pub mod validate;

use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use platform::auth::{AdminKey, Authenticator};
use platform::cache::Cache;
use platform::db::{Database, now_millis};
use platform::shutdown::Shutdown;
use utoipa::OpenApi;

pub use identity::Providers;
pub use limits::Limits;
pub use password::Passwords;
pub use password_reset::PasswordResets;

/// Everything the accounts handlers need, behind one reference count: axum clones the state for
/// every extractor of every request, and cloning the parts themselves (a dozen reference counts
/// and a few strings) showed in a profile of `me` (`loadtest/instructions.sh`). Its parts are
/// reached through `Deref`.
#[derive(Clone)]
pub struct AccountsState(std::sync::Arc<AccountsParts>);

impl AccountsState {
    /// The state over `parts`.
    pub fn new(parts: AccountsParts) -> Self {
        Self(std::sync::Arc::new(parts))
    }
}

impl std::ops::Deref for AccountsState {
    type Target = AccountsParts;

    fn deref(&self) -> &AccountsParts {
        &self.0
    }
}

/// What [`AccountsState`] holds.
pub struct AccountsParts {
    /// Accounts, sessions, refresh tokens, outbox.
    pub db: Database,
    /// Rate-limit counters.
    pub cache: Cache,
    /// Signs and verifies tokens; revokes sessions.
    pub auth: Authenticator,
    /// The server keys (the admin routes).
    pub admin_key: AdminKey,
    /// Argon2id hasher.
    pub passwords: Passwords,
    /// Sign-in limits.
    pub limits: Limits,
    /// The identity providers configured (Apple, Google, Steam, Discord).
    pub providers: Providers,
    /// Lifetime of refresh tokens and idle sessions.
    pub refresh_ttl: Duration,
    /// How long after its exchange a refresh token presented again gets the same new pair.
    pub refresh_reuse_grace: Duration,
    /// Password reset mails: the mailer, the link, the limits.
    pub resets: PasswordResets,
    /// Caps of friends, requests and blocks.
    pub social: platform::config::SocialLimits,
    /// A player's own account, read in batches on the writer (`reads`).
    pub reads: reads::AccountReads,
    /// Returning players' sign-ins on PostgreSQL, made in batches (`identity::sign_ins`).
    pub sign_ins: identity::sign_ins::SignIns,
}

impl FromRef<AccountsState> for Authenticator {
    fn from_ref(state: &AccountsState) -> Self {
        state.auth.clone()
    }
}

impl FromRef<AccountsState> for AdminKey {
    fn from_ref(state: &AccountsState) -> Self {
        state.admin_key.clone()
    }
}

/// The accounts router.
pub fn router(state: AccountsState) -> Router {
    api::routes()
        .merge(identity::api::routes())
        .merge(social::routes())
        .merge(admin::routes())
        .merge(password_reset::routes())
        .with_state(state)
}

/// How often ended sessions are purged, and how long they are kept after ending (reuse of a
/// refresh token of a recently ended session is still recognised and logged).
const PURGE_EVERY: Duration = Duration::from_secs(3600);
const KEEP_ENDED_FOR_MS: i64 = 24 * 3600 * 1000;

/// Background work: purges sessions that ended more than a day ago, in batches, and sends the
/// password reset mails (`password_reset::run_mailer`), until shutdown.
pub async fn run_workers(state: AccountsState, shutdown: Shutdown) {
    let mailer = tokio::spawn(password_reset::run_mailer(state.clone(), shutdown.clone()));
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.stopped() => break,
            _ = every.tick() => {}
        }
        // Revocations whose sessions' access tokens have all expired: the verifiers' fallback
        // table stays as small as one token lifetime of logouts.
        match platform::revocations::prune(state.db.pool(), now_millis()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "pruned expired session revocations"),
            Err(err) => tracing::warn!(error = format!("{err:#}"), "pruning session revocations failed"),
        }
        let before = now_millis() - KEEP_ENDED_FOR_MS;
        loop {
            let purged = async {
                let mut conn = state.db.pool().acquire().await?;
                store::purge_sessions(&mut conn, before, 500).await
            }
            .await;
            match purged {
                Ok(0) => break,
                Ok(n) => tracing::info!(purged = n, "purged ended sessions"),
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "purging sessions failed");
                    break;
                }
            }
        }
    }
    let _ = mailer.await;
}

/// The OpenAPI description of the accounts API.
#[derive(OpenApi)]
#[openapi(
    paths(
        api::register, api::login, api::guest, api::refresh, api::logout,
        identity::api::apple, identity::api::google, identity::api::steam, identity::api::discord,
        api::me, api::update_me, api::delete_me, api::attach_credentials, api::profile, api::jwks,
        password_reset::change_password, password_reset::forgot_password, password_reset::reset_password,
        social::befriend, social::unfriend, social::list_friends, social::block, social::unblock, social::list_blocks,
        identity::api::list, identity::api::link, identity::api::unlink,
        admin::search, admin::show, admin::ban, admin::unban, admin::revoke_sessions, admin::erase
    ),
    components(schemas(
        model::RegisterRequest, model::LoginRequest, model::GuestRequest, model::RefreshRequest,
        model::CredentialsRequest, model::ProfileUpdate, model::TokenPair, model::Account,
        model::PublicProfile, model::Registered, admin::BanView, admin::AccountSummary, admin::AccountPage,
        admin::SessionView, admin::AccountParts, admin::SocialCounts, admin::AccountDetail, admin::BanRequest, admin::Banned,
        admin::SessionsEnded, admin::IdentityEntry, social::Friendship, social::Friend, social::FriendPage, social::Blocked,
        social::BlockPage, password_reset::PasswordChange, password_reset::PasswordForgotten, password_reset::ResetRequested,
        password_reset::PasswordReset, identity::Provider, identity::Proof, identity::IdTokenProof,
        identity::SteamTicketProof, identity::DiscordCodeProof, identity::api::IdentityView, identity::api::Identities,
        platform::error::ErrorBody
    )),
    tags((name = "auth", description = "Sign-up, sign-in, tokens"), (name = "accounts", description = "Profiles and erasure"),
        (name = "social", description = "Friends and blocks"))
)]
pub struct ApiDoc;
