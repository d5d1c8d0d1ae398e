//! `guest-signup`: every request creates a new guest account, a write that leaves a row behind;
//! with `--acked FILE` the run records which of them were acknowledged, so a failover rehearsal
//! (`loadtest/failover.sh`) can count the acknowledged writes the promoted region lost.

use super::{GuestSignIn, Method, Request, Scenario, Setup};

/// `POST /v1/auth/guest` with a device id never used before (`bench-<run>-new-<n>`).
#[derive(Debug)]
pub struct GuestSignup {
    prefix: String,
}

impl Scenario for GuestSignup {
    const NAME: &'static str = "guest-signup";
    const ABOUT: &'static str = "POST /v1/auth/guest with a new device each time: one account created per request";

    async fn setup(setup: &Setup) -> anyhow::Result<Self> {
        Ok(Self { prefix: format!("bench-{}-new-", setup.run_id) })
    }

    fn request(&self, n: u64) -> Request<'_> {
        let device_id = self.key(n).expect("every request has a device");
        let json = serde_json::to_vec(&GuestSignIn { device_id: &device_id }).expect("a struct of strings serialises");
        Request { method: Method::Post, path: "/v1/auth/guest", authorization: None, json: Some(json) }
    }

    fn key(&self, n: u64) -> Option<String> {
        Some(format!("{}{n}", self.prefix))
    }
}
