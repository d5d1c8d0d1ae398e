//! Steam: the client's session ticket (from `GetAuthTicketForWebApi`, or the older
//! `GetAuthSessionTicket`) checked with the Steamworks Web API's
//! `ISteamUserAuth/AuthenticateUserTicket` on the publisher host, with the publisher key.
//!
//! The call names the game's app id, and Steam refuses a ticket of another app, so a ticket
//! from any other game (or a free demo's) does not sign in here. The answer must be `result: OK`
//! with a `steamid`; the subject is that `steamid` (with Family Sharing, the borrower, not the
//! `ownersteamid`: each player keeps their own account). A publisher ban is always refused (the
//! studio banned that player from this game); a VAC ban is refused unless
//! `STEAM_REFUSE_VAC_BANNED=false` (VAC bans are per game family, and a studio may rather accept
//! them); both as 403 `provider_banned`.

use axum::http::StatusCode;
use platform::ApiError;
use platform::config::{Secret, SteamSettings};
use serde::Deserialize;

use super::{Provider, SteamTicketProof, provider_down, refused};

/// Checks Steam tickets.
pub struct Steam {
    url: String,
    app_id: String,
    key: Secret<String>,
    identity: Option<String>,
    refuse_vac_banned: bool,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    response: Response,
}

#[derive(Deserialize)]
struct Response {
    params: Option<Params>,
    error: Option<SteamError>,
}

#[derive(Deserialize)]
struct Params {
    result: String,
    steamid: String,
    #[serde(default)]
    vacbanned: bool,
    #[serde(default)]
    publisherbanned: bool,
}

#[derive(Deserialize)]
struct SteamError {
    errorcode: i64,
    errordesc: String,
}

impl Steam {
    /// A checker for `settings`' app id and key.
    pub fn new(settings: &SteamSettings, client: reqwest::Client) -> Self {
        Self {
            url: format!("{}/ISteamUserAuth/AuthenticateUserTicket/v1/", settings.api_url),
            app_id: settings.app_id.to_string(),
            key: settings.web_api_key.clone(),
            identity: settings.ticket_identity.clone(),
            refuse_vac_banned: settings.refuse_vac_banned,
            client,
        }
    }

    /// The SteamID64 the ticket vouches for.
    pub async fn verify(&self, proof: &SteamTicketProof) -> Result<String, ApiError> {
        let ticket = proof.ticket.as_str();
        if !(16..=4096).contains(&ticket.len()) || !ticket.len().is_multiple_of(2) || !ticket.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::invalid("ticket", "ticket must be the ticket's bytes in hex (16 to 4096 hex digits)"));
        }
        let mut query = vec![("key", self.key.expose().as_str()), ("appid", self.app_id.as_str()), ("ticket", ticket)];
        if let Some(identity) = &self.identity {
            query.push(("identity", identity));
        }
        // The key is in the query string (Steam's API takes it there): the request's URL is never
        // logged, and errors below name the endpoint without it.
        let sent = self.client.get(&self.url).query(&query).send().await;
        let response = sent.map_err(|e| provider_down(Provider::Steam, format!("AuthenticateUserTicket: {}", e.without_url())))?;
        let (status, answer) = super::http::json::<Answer>(response)
            .await
            .map_err(|e| provider_down(Provider::Steam, format!("AuthenticateUserTicket: {e}")))?;
        if status != 200 {
            return Err(provider_down(Provider::Steam, format!("AuthenticateUserTicket answered {status}")));
        }
        match (answer.response.params, answer.response.error) {
            (Some(params), _) if params.result == "OK" && is_steam_id(&params.steamid) => {
                if params.publisherbanned || (params.vacbanned && self.refuse_vac_banned) {
                    tracing::info!(vac = params.vacbanned, publisher = params.publisherbanned, "banned Steam player refused");
                    return Err(ApiError::client(StatusCode::FORBIDDEN, "provider_banned", "this Steam account is banned from this game"));
                }
                Ok(params.steamid)
            }
            (Some(params), _) => Err(refused(Provider::Steam, &format!("result {}", params.result))),
            (None, Some(error)) => {
                tracing::info!(code = error.errorcode, desc = error.errordesc, "Steam refused a ticket");
                Err(refused(Provider::Steam, "ticket refused"))
            }
            (None, None) => Err(provider_down(Provider::Steam, "AuthenticateUserTicket answered neither params nor error")),
        }
    }
}

/// A SteamID64: decimal digits only.
fn is_steam_id(id: &str) -> bool {
    (1..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}
