//! What the leaderboard scenarios share: their board, their players and the scores they submit.

use std::sync::Arc;

use anyhow::Context;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Serialize;

use super::{Method, Request, Setup, bearers, expect_status, for_each_player, sign_in_guests};

/// Scores are drawn from `0..MAX_SCORE`.
pub const MAX_SCORE: u64 = 1_000_000;

/// The leaderboard a run plays on, with its players' `Authorization` headers.
#[derive(Debug)]
pub struct Board {
    /// The board's id, `bench-<run id>`.
    pub id: String,
    /// One per player, in player order.
    pub bearers: Vec<HeaderValue>,
}

/// `POST /v1/admin/leaderboards`'s body.
#[derive(Debug, Serialize)]
struct CreateBoard<'a> {
    id: &'a str,
    sort: &'a str,
    operator: &'a str,
}

/// `POST /v1/leaderboards/{board}/scores`'s body.
#[derive(Debug, Serialize)]
pub struct ScoreSubmission {
    /// The score; the board keeps each player's best.
    pub score: i64,
}

/// The board id of this run: `bench-<run id>`, lower-cased, as board ids allow only `[a-z0-9_-]`.
pub fn board_id(setup: &Setup) -> String {
    format!("bench-{}", setup.run_id.to_ascii_lowercase())
}

impl Board {
    /// Creates this run's board (highest score first, combining scores by `operator`: `best`
    /// keeps each player's best, `set` replaces it) with the server key and signs in the players;
    /// `scenario` names who needs the key if there is none.
    pub async fn create(setup: &Setup, scenario: &str, operator: &str) -> anyhow::Result<Self> {
        // Checked first, so a missing key fails before any player is created.
        let admin_key = setup.admin_key(scenario)?;
        let id = board_id(setup);
        let response = setup
            .client
            .post(setup.url("/v1/admin/leaderboards"))
            .bearer_auth(admin_key.expose())
            .json(&CreateBoard { id: &id, sort: "desc", operator })
            .send()
            .await
            .with_context(|| format!("creating leaderboard {id}"))?;
        expect_status(response, &[StatusCode::CREATED], || format!("creating leaderboard {id}")).await?;
        let bearers = bearers(sign_in_guests(setup).await?)?;
        Ok(Self { id, bearers })
    }

    /// The path of `suffix` under this board, e.g. `/scores`.
    pub fn path(&self, suffix: &str) -> String {
        format!("/v1/leaderboards/{}{suffix}", self.id)
    }

    /// The full URL of `suffix` under this board, for the setup's requests.
    pub fn url(&self, setup: &Setup, suffix: &str) -> String {
        setup.url(&self.path(suffix))
    }

    /// Player `n`'s `Authorization` header (`n` taken round-robin over the players).
    pub fn bearer(&self, n: u64) -> &HeaderValue {
        &self.bearers[(n % self.bearers.len() as u64) as usize]
    }

    /// Has every player submit one score ([`score`] of its number), so each has a record.
    pub async fn submit_one_each(&self, setup: &Setup) -> anyhow::Result<()> {
        let url = Arc::new(self.url(setup, "/scores"));
        let (client, bearers) = (setup.client.clone(), Arc::new(self.bearers.clone()));
        for_each_player(setup, move |n| {
            let (client, url, bearers) = (client.clone(), url.clone(), bearers.clone());
            async move {
                let response = client
                    .post(url.as_str())
                    .header(AUTHORIZATION, bearers[n].clone())
                    .json(&ScoreSubmission { score: score(n as u64) })
                    .send()
                    .await
                    .with_context(|| format!("submitting player {n}'s first score"))?;
                expect_status(response, &[StatusCode::OK], || format!("submitting player {n}'s first score")).await?;
                Ok(())
            }
        })
        .await?;
        Ok(())
    }
}

/// Score submissions on a fresh board of this run: what `submit` and `submit-set` share, apart
/// from the board's operator.
#[derive(Debug)]
pub struct Submissions {
    path: String,
    board: Board,
}

impl Submissions {
    /// Creates the board (see [`Board::create`]) and the submission URL.
    pub async fn create(setup: &Setup, scenario: &str, operator: &str) -> anyhow::Result<Self> {
        let board = Board::create(setup, scenario, operator).await?;
        Ok(Self { path: board.path("/scores"), board })
    }

    /// Submission `n`: [`score`] of `n`, as player `n` round-robin.
    pub fn request(&self, n: u64) -> Request<'_> {
        let json = serde_json::to_vec(&ScoreSubmission { score: score(n) }).expect("an integer serialises");
        Request { method: Method::Post, path: &self.path, authorization: Some(self.board.bearer(n).as_bytes()), json: Some(json) }
    }
}

/// The score of submission `n`: pseudo-random in `0..MAX_SCORE`, the same `n` giving the same
/// score in every run.
///
/// splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014) of
/// `n`, rather than a generator with state such as xorshift: each score is a function of the
/// request number alone, so the workers share no generator and take no lock, and consecutive
/// numbers still give unrelated scores. The modulo's bias (2^64 is not a multiple of a million)
/// is below one part in 10^13.
pub fn score(n: u64) -> i64 {
    let mut z = n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Below MAX_SCORE, so it fits.
    (z % MAX_SCORE) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::offline_setup;

    #[test]
    fn scores_are_deterministic_in_range_and_spread() {
        let scores: Vec<i64> = (0..100_000).map(score).collect();
        assert_eq!(scores, (0..100_000).map(score).collect::<Vec<_>>(), "the same numbers give the same scores");
        assert!(scores.iter().all(|s| (0..MAX_SCORE as i64).contains(s)));
        let mean = scores.iter().sum::<i64>() as f64 / scores.len() as f64;
        assert!((mean - 500_000.0).abs() < 5_000.0, "mean {mean} is not near the middle of the range");
        // Ten equal buckets each get close to a tenth.
        let mut buckets = [0u32; 10];
        for s in &scores {
            buckets[(*s / 100_000) as usize] += 1;
        }
        assert!(buckets.iter().all(|b| (9_000..11_000).contains(b)), "uneven buckets {buckets:?}");
        // Consecutive requests do not move together.
        let rises = scores.windows(2).filter(|w| w[1] > w[0]).count();
        assert!((45_000..55_000).contains(&rises), "{rises} rises in 99 999 steps");
        let distinct: std::collections::HashSet<_> = scores.iter().collect();
        assert!(distinct.len() > 95_000, "only {} distinct scores", distinct.len());
    }

    #[test]
    fn board_ids_are_valid_for_the_server() {
        let setup = offline_setup("Run-ID_0F");
        let id = board_id(&setup);
        assert_eq!(id, "bench-run-id_0f");
        assert!((1..=64).contains(&id.len()));
        assert!(id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'));
    }
}
