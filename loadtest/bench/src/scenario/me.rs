//! `me`: signed-in players reading their own account, the cheapest authenticated request.

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Client, RequestBuilder};

use super::{Scenario, Setup, bearers, sign_in_guests};

/// `GET /v1/accounts/me` as one of `--players` guest players, taken round-robin: token
/// verification, the session check in the cache and one account read from the database.
#[derive(Debug)]
pub struct Me {
    url: String,
    bearers: Vec<HeaderValue>,
}

impl Scenario for Me {
    const NAME: &'static str = "me";
    const ABOUT: &'static str = "GET /v1/accounts/me as --players guests signed in at setup, round-robin";

    async fn setup(setup: &Setup) -> anyhow::Result<Self> {
        Ok(Self { url: setup.url("/v1/accounts/me"), bearers: bearers(sign_in_guests(setup).await?)? })
    }

    fn request(&self, client: &Client, n: u64) -> RequestBuilder {
        let bearer = &self.bearers[(n % self.bearers.len() as u64) as usize];
        client.get(&self.url).header(AUTHORIZATION, bearer.clone())
    }
}
