//! `me`: signed-in players reading their own account, the cheapest authenticated request.

use reqwest::header::HeaderValue;

use super::{Method, Request, Scenario, Setup, bearers, sign_in_guests};

/// `GET /v1/accounts/me` as one of `--players` guest players, taken round-robin: token
/// verification, the session check in the cache and one account read from the database.
#[derive(Debug)]
pub struct Me {
    bearers: Vec<HeaderValue>,
}

impl Scenario for Me {
    const NAME: &'static str = "me";
    const ABOUT: &'static str = "GET /v1/accounts/me as --players guests signed in at setup, round-robin";

    async fn setup(setup: &Setup) -> anyhow::Result<Self> {
        Ok(Self { bearers: bearers(sign_in_guests(setup).await?)? })
    }

    fn request(&self, n: u64) -> Request<'_> {
        let bearer = &self.bearers[(n % self.bearers.len() as u64) as usize];
        Request { method: Method::Get, path: "/v1/accounts/me", authorization: Some(bearer.as_bytes()), json: None }
    }
}
