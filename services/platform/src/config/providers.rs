//! Settings of sign-in with identity providers (Apple, Google, Steam, Discord): each provider is
//! on when its client ids (or app id) are set, and its endpoints are base URLs, so that tests
//! point them at local fakes.

use std::time::Duration;

use anyhow::{Context, bail};

use super::Secret;

/// Sign in with Apple: id_tokens from Apple's published keys.
#[derive(Debug, Clone)]
pub struct AppleSettings {
    /// `APPLE_CLIENT_IDS`: the `aud` values accepted (the app's bundle id, a Services ID for the web).
    pub client_ids: Vec<String>,
    /// `APPLE_KEYS_URL`: Apple's JWKS, default `https://appleid.apple.com/auth/keys`.
    pub keys_url: String,
}

/// Sign in with Google: id_tokens from Google's published keys.
#[derive(Debug, Clone)]
pub struct GoogleSettings {
    /// `GOOGLE_CLIENT_IDS`: the `aud` values accepted (the OAuth client ids of each platform).
    pub client_ids: Vec<String>,
    /// `GOOGLE_KEYS_URL`: Google's JWKS, default `https://www.googleapis.com/oauth2/v3/certs`.
    pub keys_url: String,
}

/// Steam: session tickets checked with `ISteamUserAuth/AuthenticateUserTicket`.
#[derive(Debug, Clone)]
pub struct SteamSettings {
    /// `STEAM_APP_ID`: the game's app id; a ticket for another app is refused by Steam.
    pub app_id: u32,
    /// `STEAM_WEB_API_KEY`: the publisher Web API key (Secrets Manager).
    pub web_api_key: Secret<String>,
    /// `STEAM_API_URL`: default `https://partner.steam-api.com` (the publisher host).
    pub api_url: String,
    /// `STEAM_TICKET_IDENTITY`: the identity string the client gave `GetAuthTicketForWebApi`,
    /// sent with every check; none for tickets from `GetAuthSessionTicket`.
    pub ticket_identity: Option<String>,
    /// `STEAM_REFUSE_VAC_BANNED` (default true): refuse players with a VAC ban. Publisher bans are
    /// always refused.
    pub refuse_vac_banned: bool,
}

/// Discord: OAuth2 authorization code with PKCE.
#[derive(Debug, Clone)]
pub struct DiscordSettings {
    /// `DISCORD_CLIENT_ID`.
    pub client_id: String,
    /// `DISCORD_CLIENT_SECRET` (Secrets Manager).
    pub client_secret: Secret<String>,
    /// `DISCORD_API_URL`: default `https://discord.com/api/v10`; the token endpoint is
    /// `{url}/oauth2/token`, the user `{url}/users/@me`.
    pub api_url: String,
    /// `DISCORD_REDIRECT_URIS`: the redirect URIs a client may name (the ones registered with
    /// Discord); any other is refused before Discord is called.
    pub redirect_uris: Vec<String>,
}

/// Every provider's settings; `None` means that provider is off.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    /// Sign in with Apple.
    pub apple: Option<AppleSettings>,
    /// Sign in with Google.
    pub google: Option<GoogleSettings>,
    /// Steam session tickets.
    pub steam: Option<SteamSettings>,
    /// Discord OAuth2.
    pub discord: Option<DiscordSettings>,
    /// `PROVIDER_SIGN_UP` (default true): the first sign-in with a provider identity creates an
    /// account; false refuses it (403 `sign_up_closed`), and identities can only be linked.
    pub sign_up: bool,
    /// `PROVIDER_TIMEOUT_SECS` (1-30, default 5): each call to a provider, connecting included.
    pub timeout: Duration,
}

impl ProviderSettings {
    /// Reads the settings through `get` (trimmed, empty as absent) and `flag`.
    pub(super) fn read(get: &dyn Fn(&str) -> Option<String>, flag: &dyn Fn(&str, bool) -> anyhow::Result<bool>) -> anyhow::Result<Self> {
        let list = |key: &str| -> Vec<String> {
            get(key).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
        };
        let url = |key: &str, default: &str| -> anyhow::Result<String> {
            let value = get(key).unwrap_or_else(|| default.to_owned());
            if !(value.starts_with("https://") || value.starts_with("http://")) {
                bail!("{key} must start with https:// (or http:// for a local fake), got {value:?}");
            }
            Ok(value.trim_end_matches('/').to_owned())
        };

        let apple = match list("APPLE_CLIENT_IDS") {
            ids if ids.is_empty() => None,
            client_ids => Some(AppleSettings { client_ids, keys_url: url("APPLE_KEYS_URL", "https://appleid.apple.com/auth/keys")? }),
        };
        let google = match list("GOOGLE_CLIENT_IDS") {
            ids if ids.is_empty() => None,
            client_ids => {
                Some(GoogleSettings { client_ids, keys_url: url("GOOGLE_KEYS_URL", "https://www.googleapis.com/oauth2/v3/certs")? })
            }
        };
        let steam = match get("STEAM_APP_ID") {
            None => None,
            Some(app_id) => Some(SteamSettings {
                app_id: app_id
                    .parse()
                    .ok()
                    .filter(|id| *id > 0)
                    .with_context(|| format!("STEAM_APP_ID must be an app id, got {app_id:?}"))?,
                web_api_key: Secret::new(get("STEAM_WEB_API_KEY").context("STEAM_APP_ID is set: STEAM_WEB_API_KEY must be too")?),
                api_url: url("STEAM_API_URL", "https://partner.steam-api.com")?,
                ticket_identity: get("STEAM_TICKET_IDENTITY"),
                refuse_vac_banned: flag("STEAM_REFUSE_VAC_BANNED", true)?,
            }),
        };
        let discord = match get("DISCORD_CLIENT_ID") {
            None => None,
            Some(client_id) => {
                let redirect_uris = list("DISCORD_REDIRECT_URIS");
                if redirect_uris.is_empty() {
                    bail!("DISCORD_CLIENT_ID is set: DISCORD_REDIRECT_URIS must list the redirect URIs registered with Discord");
                }
                Some(DiscordSettings {
                    client_id,
                    client_secret: Secret::new(
                        get("DISCORD_CLIENT_SECRET").context("DISCORD_CLIENT_ID is set: DISCORD_CLIENT_SECRET must be too")?,
                    ),
                    api_url: url("DISCORD_API_URL", "https://discord.com/api/v10")?,
                    redirect_uris,
                })
            }
        };
        let timeout = match get("PROVIDER_TIMEOUT_SECS") {
            None => 5,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=30).contains(s))
                .with_context(|| format!("PROVIDER_TIMEOUT_SECS must be between 1 and 30, got {v:?}"))?,
        };
        Ok(Self { apple, google, steam, discord, sign_up: flag("PROVIDER_SIGN_UP", true)?, timeout: Duration::from_secs(timeout) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> anyhow::Result<ProviderSettings> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let get = |key: &str| map.get(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let flag = |key: &str, default: bool| Ok(get(key).map_or(default, |v| v == "true"));
        ProviderSettings::read(&get, &flag)
    }

    #[test]
    fn providers_are_off_until_configured_and_secrets_are_redacted() {
        let none = read(&[]).expect("defaults");
        assert!(none.apple.is_none() && none.google.is_none() && none.steam.is_none() && none.discord.is_none());
        assert!(none.sign_up);
        let all = read(&[
            ("APPLE_CLIENT_IDS", "com.example.game, com.example.web"),
            ("GOOGLE_CLIENT_IDS", "123.apps.googleusercontent.com"),
            ("STEAM_APP_ID", "480"),
            ("STEAM_WEB_API_KEY", "steam-secret-key"),
            ("DISCORD_CLIENT_ID", "42"),
            ("DISCORD_CLIENT_SECRET", "discord-secret"),
            ("DISCORD_REDIRECT_URIS", "https://game.example/discord"),
        ])
        .expect("all");
        assert_eq!(all.apple.as_ref().expect("apple").client_ids, ["com.example.game", "com.example.web"]);
        assert_eq!(all.steam.as_ref().expect("steam").app_id, 480);
        let shown = format!("{all:?}");
        assert!(!shown.contains("steam-secret-key") && !shown.contains("discord-secret"), "{shown}");
        assert!(read(&[("STEAM_APP_ID", "480")]).is_err(), "a Steam app id without its key");
        assert!(read(&[("DISCORD_CLIENT_ID", "42"), ("DISCORD_CLIENT_SECRET", "s")]).is_err(), "no redirect URIs");
        assert!(read(&[("APPLE_CLIENT_IDS", "x"), ("APPLE_KEYS_URL", "ftp://x")]).is_err());
        assert!(read(&[("PROVIDER_TIMEOUT_SECS", "0")]).is_err());
    }
}
