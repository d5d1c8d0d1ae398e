//! `guildhall-bench`: a load generator for Guildhall.
//!
//! The request/response scenarios run a closed loop: a fixed number of workers each send a request
//! as soon as the previous one answered (so the offered load adapts to the server, as real clients
//! on a connection do), for a warm-up and then a measured duration. Every measured request's
//! latency is kept; the [`report::Report`] gives requests/s, errors and latency percentiles. What is
//! sent is a [`scenario::Scenario`].
//!
//! The `chat` scenario ([`chat`]) holds thousands of WebSockets in rooms instead, sends messages at
//! a fixed rate and measures how long each takes to reach the room's other members, and how much
//! memory the servers hold per connection.

pub mod chat;
pub mod cpu;
pub mod drive;
pub mod http1;
pub mod memory;
pub mod options;
pub mod report;
pub mod scenario;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use options::Options;
use report::Summary;
use scenario::Setup;

/// Runs the scenario `options` name against the server and reports what was measured.
pub async fn run(options: &Options) -> anyhow::Result<Summary> {
    let entry = scenario::find(&options.scenario).with_context(|| format!("unknown scenario {:?}", options.scenario))?;
    // The setup's client (the measured requests go over `http1`, one kept-alive connection per
    // worker, so the load is requests, not TCP handshakes).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .timeout(options.timeout)
        .connect_timeout(options.timeout)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let setup = Setup {
        client,
        base: options.base.clone(),
        players: options.players,
        parallelism: options.concurrency,
        run_id: run_id(),
        admin_key: options.admin_key.clone(),
    };
    (entry.run)(options, setup).await
}

/// A run id unique enough for device ids: the start time in milliseconds and the process id.
fn run_id() -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
    format!("{millis:x}{:x}", std::process::id())
}
