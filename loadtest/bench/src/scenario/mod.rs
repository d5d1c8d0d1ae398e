//! Scenarios: what a run sends. A request/response scenario is a setup step (untimed: sign players
//! in, fill boards) and a per-request function that the closed-loop driver ([`crate::drive`]) sends
//! and times. `chat` is not request/response (messages are pushed to the other members of a room),
//! so its entry runs its own driver, [`crate::chat`].
//!
//! To add a request/response scenario: write a type implementing [`Scenario`] in a module here and
//! list it in [`SCENARIOS`]. Nothing else changes.

mod guest_signup;
mod leaderboard;
mod login_guest;
mod me;
mod rank;
mod submit;
mod submit_set;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use reqwest::header::HeaderValue;
use reqwest::{Client, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

pub use guest_signup::GuestSignup;
pub use leaderboard::score;
pub use login_guest::LoginGuest;
pub use me::Me;
pub use rank::Rank;
pub use submit::Submit;
pub use submit_set::SubmitSet;

pub use crate::http1::{Method, Request};
use crate::options::{ADMIN_KEY_ENV, AdminKey, Options};
use crate::report::Summary;

/// Every scenario the tool knows, by name.
pub const SCENARIOS: &[Entry] = &[
    entry::<Me>(),
    entry::<LoginGuest>(),
    entry::<GuestSignup>(),
    entry::<Submit>(),
    entry::<SubmitSet>(),
    entry::<Rank>(),
    crate::chat::ENTRY,
];

/// One load pattern against Guildhall.
pub trait Scenario: Sized + Send + Sync + 'static {
    /// The name `--scenario` selects it by.
    const NAME: &'static str;
    /// One line for `--help`: what a request does and what it measures.
    const ABOUT: &'static str;

    /// Prepares what the requests need before the warm-up starts; not timed.
    fn setup(setup: &Setup) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// The `n`th request of the run (`n` counts from 0 across all workers, warm-up included).
    /// The driver sends it on its worker's connection, reads the whole body and times both.
    fn request(&self, n: u64) -> Request<'_>;

    /// What the `n`th request writes, by a key that can be looked up afterwards (a guest's
    /// device id), for `--acked`; `None` for requests that write nothing worth counting.
    fn key(&self, _n: u64) -> Option<String> {
        None
    }
}

/// What a scenario's setup step gets.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The client the setup steps use (the measured requests have their own connections).
    pub client: Client,
    /// The server's base URL, without a trailing slash.
    pub base: String,
    /// How many players to prepare (`--players`).
    pub players: usize,
    /// How many setup requests may be in flight at once (the run's concurrency).
    pub parallelism: usize,
    /// Unique to this run, so its device ids and names never collide with an earlier run's.
    pub run_id: String,
    /// The server key (`--admin-key`), for scenarios that use the admin API.
    pub admin_key: Option<AdminKey>,
}

impl Setup {
    /// The device id of player `n` in this run (`bench-<run id>-<n>`).
    pub fn device_id(&self, n: usize) -> String {
        format!("bench-{}-{n}", self.run_id)
    }

    /// The full URL of `path` (which starts with `/`) on the server, for the setup's requests.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server key, or an error saying that `scenario` needs one and how to give it.
    pub fn admin_key(&self, scenario: &str) -> anyhow::Result<&AdminKey> {
        self.admin_key.as_ref().with_context(|| {
            format!(
                "scenario {scenario} creates a leaderboard through the admin API and needs the server's key: \
                 pass --admin-key KEY or set {ADMIN_KEY_ENV}"
            )
        })
    }
}

/// A scenario as listed in [`SCENARIOS`].
pub struct Entry {
    /// [`Scenario::NAME`].
    pub name: &'static str,
    /// [`Scenario::ABOUT`].
    pub about: &'static str,
    /// Sets the scenario up and drives the load: [`crate::drive::drive`] for a [`Scenario`] type,
    /// [`crate::chat::run`] for chat.
    pub run: for<'a> fn(&'a Options, Setup) -> Running<'a>,
    /// The threads the tool runs it on.
    pub threads: Threads,
}

/// How many threads the tool's runtime has for a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One, as `redis-benchmark` runs: a closed loop of request/response workers needs little CPU
    /// per request, and on a small machine every core the tool keeps busy (and every wake-up
    /// between its threads) is taken from the server it measures.
    One,
    /// One per core.
    PerCore,
}

/// A scenario's run in progress, as [`Entry::run`] starts it.
pub type Running<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Summary>> + 'a>>;

const fn entry<S: Scenario>() -> Entry {
    Entry { name: S::NAME, about: S::ABOUT, run: run::<S>, threads: Threads::One }
}

fn run<S: Scenario>(options: &Options, setup: Setup) -> Running<'_> {
    Box::pin(async move { crate::drive::drive::<S>(options, setup).await.map(Summary::Requests) })
}

/// The scenario called `name`, if there is one.
pub fn find(name: &str) -> Option<&'static Entry> {
    SCENARIOS.iter().find(|entry| entry.name == name)
}

/// `POST /v1/auth/guest`'s body.
#[derive(Debug, Serialize)]
pub struct GuestSignIn<'a> {
    /// The device's id, 8 to 128 printable characters.
    pub device_id: &'a str,
}

#[derive(Debug, Deserialize)]
struct TokenPair {
    access_token: String,
}

/// Signs in the guest players `0..setup.players` (creating their accounts), at most
/// `setup.parallelism` at a time, and returns their access tokens in player order.
pub async fn sign_in_guests(setup: &Setup) -> anyhow::Result<Vec<String>> {
    let url = Arc::new(setup.url("/v1/auth/guest"));
    let (client, run) = (setup.client.clone(), setup.clone());
    for_each_player(setup, move |n| {
        let (client, url, device_id) = (client.clone(), url.clone(), run.device_id(n));
        async move {
            let response = client
                .post(url.as_str())
                .json(&GuestSignIn { device_id: &device_id })
                .send()
                .await
                .with_context(|| format!("signing in guest {device_id}"))?;
            // 201 when the guest account is created, 200 when the device had signed in before.
            let response =
                expect_status(response, &[StatusCode::CREATED, StatusCode::OK], || format!("signing in guest {device_id}")).await?;
            let pair: TokenPair = response.json().await.with_context(|| format!("reading guest {device_id}'s tokens"))?;
            Ok(pair.access_token)
        }
    })
    .await
}

/// A setup whose server does not exist, for tests of what a scenario does before it sends anything.
#[cfg(test)]
pub(crate) fn offline_setup(run_id: &str) -> Setup {
    Setup {
        client: Client::new(),
        // The discard port: a test that reaches the network fails to connect rather than passes.
        base: "http://127.0.0.1:9".to_owned(),
        players: 3,
        parallelism: 2,
        run_id: run_id.to_owned(),
        admin_key: None,
    }
}

/// `Authorization` header values for `tokens`, in the same order.
pub fn bearers(tokens: Vec<String>) -> anyhow::Result<Vec<HeaderValue>> {
    tokens.into_iter().map(|token| HeaderValue::try_from(format!("Bearer {token}")).context("a token is not a header value")).collect()
}

/// Runs `step` for each player `0..setup.players`, at most `setup.parallelism` at a time, and
/// returns what each step gave, in player order. The first failure ends the setup (the other
/// steps are dropped with the task set).
pub async fn for_each_player<T, Step, Fut>(setup: &Setup, step: Step) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    Step: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let players = setup.players;
    let step = Arc::new(step);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..setup.parallelism.min(players) {
        let (step, next) = (step.clone(), next.clone());
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= players {
                    return anyhow::Ok(done);
                }
                done.push((n, step(n).await?));
            }
        });
    }
    let mut results: Vec<Option<T>> = std::iter::repeat_with(|| None).take(players).collect();
    while let Some(joined) = tasks.join_next().await {
        for (n, value) in joined.context("a setup task panicked")?? {
            results[n] = Some(value);
        }
    }
    results.into_iter().enumerate().map(|(n, value)| value.with_context(|| format!("player {n} was not set up"))).collect()
}

/// `response` if its status is one of `expected`; otherwise an error naming `what` was being
/// done, with the status and the start of the body.
pub async fn expect_status(response: Response, expected: &[StatusCode], what: impl FnOnce() -> String) -> anyhow::Result<Response> {
    let status = response.status();
    if expected.contains(&status) {
        return Ok(response);
    }
    let body: String = response.text().await.unwrap_or_default().chars().take(300).collect();
    bail!("{}: {status}: {body}", what())
}
