//! `login-guest`: the sign-in path, as a game client does it at every start.

use reqwest::{Client, RequestBuilder};

use super::{GuestSignIn, Scenario, Setup, sign_in_guests};

/// `POST /v1/auth/guest` with one of `--players` device ids, round-robin. Setup signs each device in
/// once, so the measured requests are sign-ins of existing guests (a new session and token pair
/// each), not account creations.
#[derive(Debug)]
pub struct LoginGuest {
    url: String,
    device_ids: Vec<String>,
}

impl Scenario for LoginGuest {
    const NAME: &'static str = "login-guest";
    const ABOUT: &'static str = "POST /v1/auth/guest for --players existing guest devices, round-robin";

    async fn setup(setup: &Setup) -> anyhow::Result<Self> {
        sign_in_guests(setup).await?;
        Ok(Self { url: setup.url("/v1/auth/guest"), device_ids: (0..setup.players).map(|n| setup.device_id(n)).collect() })
    }

    fn request(&self, client: &Client, n: u64) -> RequestBuilder {
        let device_id = &self.device_ids[(n % self.device_ids.len() as u64) as usize];
        client.post(&self.url).json(&GuestSignIn { device_id })
    }
}
