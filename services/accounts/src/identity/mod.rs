//! Identities an account signs in with besides email and password: a guest's device, and the
//! identity providers (Sign in with Apple, Google, Steam, Discord). Each provider proves who the
//! player is in its own way (`apple`, `google`, `steam`, `discord`); what comes out is a
//! `Verified` (provider, subject) that `api` signs in with or links, and `store` keeps.

pub mod api;
pub mod apple;
pub mod discord;
pub mod google;
pub mod http;
pub mod jwt;
pub mod sign_ins;
pub mod steam;
pub mod store;

use std::fmt;
use std::sync::Arc;

use platform::ApiError;
use platform::config::ProviderSettings;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A kind of identity an account can hold, one of each at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// A guest's device (the SHA-256 of its device id).
    Device,
    /// Sign in with Apple.
    Apple,
    /// Sign in with Google.
    Google,
    /// A Steam account (its SteamID64).
    Steam,
    /// A Discord account (its user id).
    Discord,
}

impl Provider {
    /// The name in paths, in the database and in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Device => "device",
            Provider::Apple => "apple",
            Provider::Google => "google",
            Provider::Steam => "steam",
            Provider::Discord => "discord",
        }
    }

    /// The provider named `name`; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        [Provider::Device, Provider::Apple, Provider::Google, Provider::Steam, Provider::Discord].into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a provider vouched for: its stable id of the player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Which provider.
    pub provider: Provider,
    /// Its id of the player (`sub`, SteamID64, Discord user id, device key).
    pub subject: String,
    /// For an id_token: a key naming its nonce, and until when (Unix seconds) the token is
    /// valid; the token is taken once (see `api`).
    pub single_use: Option<(String, i64)>,
}

/// The configured providers, each with what it needs to check a proof. Cheap to clone.
#[derive(Clone)]
pub struct Providers {
    inner: Arc<Inner>,
}

struct Inner {
    apple: Option<apple::Apple>,
    google: Option<google::Google>,
    steam: Option<steam::Steam>,
    discord: Option<discord::Discord>,
    sign_up: bool,
}

impl Providers {
    /// The providers `settings` turn on, sharing one HTTP client with `settings.timeout`.
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        let client = http::client(settings.timeout)?;
        Ok(Self {
            inner: Arc::new(Inner {
                apple: settings.apple.as_ref().map(|s| apple::Apple::new(s, client.clone())),
                google: settings.google.as_ref().map(|s| google::Google::new(s, client.clone())),
                steam: settings.steam.as_ref().map(|s| steam::Steam::new(s, client.clone())),
                discord: settings.discord.as_ref().map(|s| discord::Discord::new(s, client.clone())),
                sign_up: settings.sign_up,
            }),
        })
    }

    /// Whether a first sign-in with a provider creates an account.
    pub fn sign_up(&self) -> bool {
        self.inner.sign_up
    }

    /// Checks `proof` with `provider`: 404 `provider_disabled` when it is off, 400 when the proof
    /// is of another provider's kind, 401 when the provider does not vouch for it, 503 when the
    /// provider cannot be reached.
    pub async fn verify(&self, provider: Provider, proof: &Proof) -> Result<Verified, ApiError> {
        let once = |token: &IdTokenProof, expires_at: i64| {
            let nonce = platform::digest::sha256_hex(&token.nonce);
            Some((format!("{provider}:{nonce}"), expires_at))
        };
        let (subject, single_use) = match (provider, proof) {
            (Provider::Device, Proof::Device(device)) => (crate::api::device_key(crate::validate::device_id(&device.device_id)?), None),
            (Provider::Apple, Proof::IdToken(token)) => {
                let (subject, expires_at) = enabled(provider, self.inner.apple.as_ref())?.verify(token).await?;
                (subject, once(token, expires_at))
            }
            (Provider::Google, Proof::IdToken(token)) => {
                let (subject, expires_at) = enabled(provider, self.inner.google.as_ref())?.verify(token).await?;
                (subject, once(token, expires_at))
            }
            (Provider::Steam, Proof::SteamTicket(ticket)) => (enabled(provider, self.inner.steam.as_ref())?.verify(ticket).await?, None),
            (Provider::Discord, Proof::DiscordCode(code)) => (enabled(provider, self.inner.discord.as_ref())?.verify(code).await?, None),
            _ => return Err(ApiError::InvalidRequest { field: None, message: format!("this is not a proof {provider} gives") }),
        };
        Ok(Verified { provider, subject, single_use })
    }
}

fn enabled<T>(provider: Provider, verifier: Option<&T>) -> Result<&T, ApiError> {
    verifier.ok_or_else(|| {
        ApiError::client(axum::http::StatusCode::NOT_FOUND, "provider_disabled", format!("sign-in with {provider} is not enabled here"))
    })
}

/// 401 `invalid_provider_token`: the provider does not vouch for what the client sent.
pub(crate) fn refused(provider: Provider, why: &str) -> ApiError {
    tracing::info!(%provider, why, "provider proof refused");
    ApiError::Unauthenticated { code: "invalid_provider_token", message: format!("{provider} did not vouch for this sign-in: {why}") }
}

/// 503 `unavailable`: the provider did not answer usably; the cause goes to the log only.
pub(crate) fn provider_down(provider: Provider, detail: impl fmt::Display) -> ApiError {
    tracing::warn!(%provider, detail = %detail, "identity provider unavailable");
    ApiError::Unavailable(format!("{provider} cannot be reached; retry shortly"))
}

/// What a client sends to prove an identity: the body of a provider's sign-in, and of linking.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Proof {
    /// Apple and Google.
    IdToken(IdTokenProof),
    /// Steam.
    SteamTicket(SteamTicketProof),
    /// Discord.
    DiscordCode(DiscordCodeProof),
    /// A guest's device.
    Device(crate::model::GuestRequest),
}

/// `POST /v1/auth/apple`, `POST /v1/auth/google`: the provider's id_token and the raw nonce
/// whose SHA-256 (lowercase hex) the client gave the provider.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdTokenProof {
    /// The id_token (a JWT signed RS256 by the provider).
    #[schema(min_length = 1, max_length = 8192)]
    pub id_token: String,
    /// The raw nonce, 16 to 128 printable ASCII characters; the token's `nonce` claim must be its
    /// SHA-256 in lowercase hex.
    #[schema(pattern = r"^[!-~]{16,128}$")]
    pub nonce: String,
}

/// `POST /v1/auth/steam`: a ticket from `GetAuthTicketForWebApi` (or `GetAuthSessionTicket`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SteamTicketProof {
    /// The ticket's bytes in hex.
    #[schema(pattern = r"^([0-9a-fA-F]{2}){8,2048}$")]
    pub ticket: String,
}

/// `POST /v1/auth/discord`: what Discord's authorization redirect gave the client, and the PKCE
/// verifier it kept.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscordCodeProof {
    /// The authorization code.
    #[schema(pattern = r"^[!-~]{1,512}$")]
    pub code: String,
    /// The PKCE code verifier (RFC 7636: 43 to 128 of `[A-Za-z0-9-._~]`).
    #[schema(pattern = r"^[A-Za-z0-9._~-]{43,128}$")]
    pub code_verifier: String,
    /// The redirect URI of the authorization request; one of `DISCORD_REDIRECT_URIS`.
    #[schema(max_length = 2048)]
    pub redirect_uri: String,
}
