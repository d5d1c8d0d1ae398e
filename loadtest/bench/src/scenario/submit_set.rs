//! `submit-set`: players posting scores to a `set` board, so that every submission is written to
//! the database (the `submit` scenario's `best` board mostly keeps records unchanged).

use super::leaderboard::Submissions;
use super::{Request, Scenario, Setup};

/// `POST /v1/leaderboards/{board}/scores` with a pseudo-random score as one of `--players` guests,
/// round-robin, on a `set` board of this run: every request is a database transaction (row lock,
/// upsert, commit with fsync) and an index update in Redis.
#[derive(Debug)]
pub struct SubmitSet(Submissions);

impl Scenario for SubmitSet {
    const NAME: &'static str = "submit-set";
    const ABOUT: &'static str = "POST /v1/leaderboards/{board}/scores to a set board: every request writes (needs --admin-key)";

    async fn setup(setup: &Setup) -> anyhow::Result<Self> {
        Submissions::create(setup, Self::NAME, "set").await.map(Self)
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
        let err = SubmitSet::setup(&offline_setup("test")).await.expect_err("no key");
        let message = format!("{err:#}");
        assert!(message.contains("--admin-key") && message.contains("GUILDHALL_ADMIN_KEY"), "{message}");
    }
}
