//! Scenarios: what a run sends. A scenario is a setup step (untimed: sign players in, fill boards)
//! and a per-request function that the driver sends and times.
//!
//! To add one: write a type implementing [`Scenario`] in a module here and list it in
//! [`SCENARIOS`]. Nothing else changes.

mod login_guest;
mod me;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use reqwest::{Client, RequestBuilder};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

pub use login_guest::LoginGuest;
pub use me::Me;

use crate::options::Options;
use crate::report::Report;

/// Every scenario the tool knows, by name.
pub const SCENARIOS: &[Entry] = &[entry::<Me>(), entry::<LoginGuest>()];

/// One load pattern against Guildhall.
pub trait Scenario: Sized + Send + Sync + 'static {
    /// The name `--scenario` selects it by.
    const NAME: &'static str;
    /// One line for `--help`: what a request does and what it measures.
    const ABOUT: &'static str;

    /// Prepares what the requests need before the warm-up starts; not timed.
    fn setup(setup: &Setup) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// The `n`th request of the run (`n` counts from 0 across all workers, warm-up included).
    /// The driver sends it, reads the whole body and times both.
    fn request(&self, client: &Client, n: u64) -> RequestBuilder;
}

/// What a scenario's setup step gets.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The client the run uses (one pool of connections for setup and load).
    pub client: Client,
    /// The server's base URL, without a trailing slash.
    pub base: String,
    /// How many players to prepare (`--players`).
    pub players: usize,
    /// How many setup requests may be in flight at once (the run's concurrency).
    pub parallelism: usize,
    /// Unique to this run, so its device ids and names never collide with an earlier run's.
    pub run_id: String,
}

impl Setup {
    /// The device id of player `n` in this run (`bench-<run id>-<n>`).
    pub fn device_id(&self, n: usize) -> String {
        format!("bench-{}-{n}", self.run_id)
    }

    /// The full URL of `path` (which starts with `/`) on the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A scenario as listed in [`SCENARIOS`].
pub struct Entry {
    /// [`Scenario::NAME`].
    pub name: &'static str,
    /// [`Scenario::ABOUT`].
    pub about: &'static str,
    /// Sets the scenario up and drives the load: [`crate::drive::drive`] for its type.
    pub run: for<'a> fn(&'a Options, Setup) -> Running<'a>,
}

/// A scenario's run in progress, as [`Entry::run`] starts it.
pub type Running<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Report>> + 'a>>;

const fn entry<S: Scenario>() -> Entry {
    Entry { name: S::NAME, about: S::ABOUT, run: run::<S> }
}

fn run<S: Scenario>(options: &Options, setup: Setup) -> Running<'_> {
    Box::pin(crate::drive::drive::<S>(options, setup))
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
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..setup.parallelism.min(setup.players) {
        let (setup, url, next) = (setup.clone(), url.clone(), next.clone());
        tasks.spawn(async move {
            let mut signed_in = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= setup.players {
                    return anyhow::Ok(signed_in);
                }
                let device_id = setup.device_id(n);
                let response = setup
                    .client
                    .post(url.as_str())
                    .json(&GuestSignIn { device_id: &device_id })
                    .send()
                    .await
                    .with_context(|| format!("signing in guest {device_id}"))?;
                let status = response.status();
                if !status.is_success() {
                    let body = response.text().await.unwrap_or_default();
                    bail!("signing in guest {device_id}: {status}: {body}");
                }
                let pair: TokenPair = response.json().await.with_context(|| format!("reading guest {device_id}'s tokens"))?;
                signed_in.push((n, pair.access_token));
            }
        });
    }
    let mut tokens = vec![String::new(); setup.players];
    while let Some(joined) = tasks.join_next().await {
        for (n, token) in joined.context("a sign-in task panicked")?? {
            tokens[n] = token;
        }
    }
    Ok(tokens)
}
