//! `rank`: players reading their own rank, the read path of the leaderboard.

use super::leaderboard::Board;
use super::{Method, Request, Scenario, Setup};

/// `GET /v1/leaderboards/{board}/records/me` as one of `--players` guests, round-robin, on a board
/// of this run where setup had every player submit one score: the rank and record come from the
/// rank index in Redis, the board's configuration from the database.
#[derive(Debug)]
pub struct Rank {
    path: String,
    board: Board,
}

impl Scenario for Rank {
    const NAME: &'static str = "rank";
    const ABOUT: &'static str = "GET /v1/leaderboards/{board}/records/me as --players guests with a score each (needs --admin-key)";

    async fn setup(setup: &Setup) -> anyhow::Result<Self> {
        let board = Board::create(setup, Self::NAME, "best").await?;
        eprintln!("{}: submitting one score per player...", Self::NAME);
        board.submit_one_each(setup).await?;
        Ok(Self { path: board.path("/records/me"), board })
    }

    fn request(&self, n: u64) -> Request<'_> {
        Request { method: Method::Get, path: &self.path, authorization: Some(self.board.bearer(n).as_bytes()), json: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::offline_setup;

    #[tokio::test]
    async fn setup_without_the_admin_key_says_what_to_pass() {
        let err = Rank::setup(&offline_setup("test")).await.expect_err("no key");
        assert!(format!("{err:#}").contains("--admin-key"), "{err:#}");
    }
}
