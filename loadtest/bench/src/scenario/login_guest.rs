//! `login-guest`: the sign-in path, as a game client does it at every start.

use super::{GuestSignIn, Method, Request, Scenario, Setup, sign_in_guests};

/// `POST /v1/auth/guest` with one of `--players` device ids, round-robin. Setup signs each device in
/// once, so the measured requests are sign-ins of existing guests (a new session and token pair
/// each), not account creations.
#[derive(Debug)]
pub struct LoginGuest {
    device_ids: Vec<String>,
}

impl Scenario for LoginGuest {
    const NAME: &'static str = "login-guest";
    const ABOUT: &'static str = "POST /v1/auth/guest for --players existing guest devices, round-robin";

    async fn setup(setup: &Setup) -> anyhow::Result<Self> {
        sign_in_guests(setup).await?;
        Ok(Self { device_ids: (0..setup.players).map(|n| setup.device_id(n)).collect() })
    }

    fn request(&self, n: u64) -> Request<'_> {
        let device_id = &self.device_ids[(n % self.device_ids.len() as u64) as usize];
        let json = serde_json::to_vec(&GuestSignIn { device_id }).expect("a struct of strings serialises");
        Request { method: Method::Post, path: "/v1/auth/guest", authorization: None, json: Some(json) }
    }
}
