//! `submit`: players posting scores, the write path of the leaderboard.

use super::leaderboard::Submissions;
use super::{Request, Scenario, Setup};

/// `POST /v1/leaderboards/{board}/scores` with a pseudo-random score in `0..1 000 000` as one of
/// `--players` guests, round-robin, on a board of this run (`desc`, `best`) that setup creates with
/// the server key. A score that cannot beat the player's record is answered from the rank index in
/// Redis; one that may goes to the database (row lock, write, commit) and then the index.
#[derive(Debug)]
pub struct Submit(Submissions);

impl Scenario for Submit {
    const NAME: &'static str = "submit";
    const ABOUT: &'static str = "POST /v1/leaderboards/{board}/scores, random scores, as --players guests (needs --admin-key)";

    async fn setup(setup: &Setup) -> anyhow::Result<Self> {
        Submissions::create(setup, Self::NAME, "best").await.map(Self)
    }

    fn request(&self, n: u64) -> Request<'_> {
        self.0.request(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::offline_setup;

    #[tokio::test]
    async fn setup_without_the_admin_key_says_what_to_pass() {
        let err = Submit::setup(&offline_setup("test")).await.expect_err("no key");
        let message = format!("{err:#}");
        assert!(message.contains("--admin-key") && message.contains("GUILDHALL_ADMIN_KEY"), "{message}");
    }
}
