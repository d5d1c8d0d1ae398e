//! Discord: OAuth2 authorization code with PKCE (RFC 7636). The client sends the code Discord's
//! redirect gave it, its code verifier and the redirect URI; Guildhall exchanges them at
//! `{DISCORD_API_URL}/oauth2/token` with the client id and secret, then reads the user from
//! `{DISCORD_API_URL}/users/@me` with the access token it got (scope `identify`). The subject is
//! the Discord user id. Discord checks the verifier against the challenge of the authorization
//! request and the redirect URI against it too, so a code intercepted without its verifier is
//! useless. The Discord access token is used for that one read and not kept: it is revoked at
//! `{DISCORD_API_URL}/oauth2/token/revoke` (RFC 7009) right after, in the background, so that
//! the grant a player gave Guildhall ends with the sign-in rather than live on at Discord for a
//! week (a revocation that fails is logged; the sign-in does not wait for it).

use platform::ApiError;
use platform::config::{DiscordSettings, Secret};
use serde::Deserialize;

use super::{DiscordCodeProof, Provider, provider_down, refused};

/// Exchanges Discord codes.
pub struct Discord {
    token_url: String,
    user_url: String,
    revoke_url: String,
    client_id: String,
    client_secret: Secret<String>,
    redirect_uris: Vec<String>,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Token {
    access_token: String,
    token_type: String,
}

#[derive(Deserialize)]
struct OauthError {
    error: String,
}

#[derive(Deserialize)]
struct User {
    id: String,
}

impl Discord {
    /// An exchanger for `settings`' client.
    pub fn new(settings: &DiscordSettings, client: reqwest::Client) -> Self {
        Self {
            token_url: format!("{}/oauth2/token", settings.api_url),
            user_url: format!("{}/users/@me", settings.api_url),
            revoke_url: format!("{}/oauth2/token/revoke", settings.api_url),
            client_id: settings.client_id.clone(),
            client_secret: settings.client_secret.clone(),
            redirect_uris: settings.redirect_uris.clone(),
            client,
        }
    }

    /// The Discord user id the code is for.
    pub async fn verify(&self, proof: &DiscordCodeProof) -> Result<String, ApiError> {
        if !(1..=512).contains(&proof.code.len()) || !proof.code.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
            return Err(ApiError::invalid("code", "code must be 1 to 512 printable ASCII characters"));
        }
        let verifier_ok = (43..=128).contains(&proof.code_verifier.len())
            && proof.code_verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !verifier_ok {
            return Err(ApiError::invalid("code_verifier", "code_verifier must be 43 to 128 of A-Z a-z 0-9 - . _ ~ (RFC 7636)"));
        }
        if !self.redirect_uris.contains(&proof.redirect_uri) {
            return Err(ApiError::invalid("redirect_uri", "redirect_uri is not one of this game's"));
        }
        let down = |e: String| provider_down(Provider::Discord, e);
        let form = [
            ("grant_type", "authorization_code"),
            ("code", proof.code.as_str()),
            ("redirect_uri", proof.redirect_uri.as_str()),
            ("code_verifier", proof.code_verifier.as_str()),
        ];
        let response = self
            .client
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| down(format!("token endpoint: {e}")))?;
        if response.status().as_u16() == 400 {
            // RFC 6749 5.2: `invalid_grant` is a bad, used or expired code, or a verifier that
            // does not match; anything else is our client's configuration.
            let (_, error) = super::http::json::<OauthError>(response).await.map_err(down)?;
            if error.error == "invalid_grant" {
                return Err(refused(Provider::Discord, "code refused"));
            }
            return Err(down(format!("token endpoint refused our request: {}", error.error)));
        }
        let (status, token) = super::http::json::<Token>(response).await.map_err(down)?;
        if status != 200 || !token.token_type.eq_ignore_ascii_case("bearer") {
            return Err(down(format!("token endpoint answered {status} ({})", token.token_type)));
        }
        let response = self.client.get(&self.user_url).bearer_auth(&token.access_token).send().await;
        self.revoke(token.access_token);
        let response = response.map_err(|e| down(format!("users/@me: {e}")))?;
        let (status, user) = super::http::json::<User>(response).await.map_err(down)?;
        if status != 200 || user.id.is_empty() || user.id.len() > 32 || !user.id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(down(format!("users/@me answered {status}")));
        }
        Ok(user.id)
    }

    /// Revokes `access_token` (and with it the grant: Discord ends its refresh token too), in a
    /// task of its own.
    fn revoke(&self, access_token: String) {
        let request = self
            .client
            .post(&self.revoke_url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .form(&[("token", access_token.as_str()), ("token_type_hint", "access_token")]);
        tokio::spawn(async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => tracing::warn!(status = response.status().as_u16(), "Discord refused to revoke an access token"),
                Err(err) => tracing::warn!(error = %err, "revoking a Discord access token failed"),
            }
        });
    }
}
