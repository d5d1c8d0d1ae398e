//! The closed loop: a fixed number of workers, each sending its next request when the previous one
//! answered, first for the warm-up (not recorded), then for the measured duration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use reqwest::{Client, RequestBuilder};
use tokio::task::JoinSet;

use crate::options::Options;
use crate::report::{ERROR_SAMPLES, Report};
use crate::scenario::{Scenario, Setup};

/// Sets `S` up, then drives it with `options.concurrency` workers and reports the measured part.
///
/// A request is measured when it starts inside the measured window; the window's length is from its
/// start to the last measured response, so requests still in flight when it closes count in full.
pub async fn drive<S: Scenario>(options: &Options, setup: Setup) -> anyhow::Result<Report> {
    eprintln!("{}: setting up {} players...", S::NAME, options.players);
    let setup_started = Instant::now();
    let client = setup.client.clone();
    let scenario = Arc::new(S::setup(&setup).await.with_context(|| format!("setting up scenario {}", S::NAME))?);
    eprintln!(
        "{}: set up in {:.1} s; {} workers, {:.1} s warm-up, {:.1} s measured",
        S::NAME,
        setup_started.elapsed().as_secs_f64(),
        options.concurrency,
        options.warmup.as_secs_f64(),
        options.duration.as_secs_f64()
    );

    let measure_from = Instant::now() + options.warmup;
    let window = Window { measure_from, stop_at: measure_from + options.duration, max_requests: options.max_requests };
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..options.concurrency {
        let (scenario, client, sent) = (scenario.clone(), client.clone(), sent.clone());
        workers.spawn(async move { work(&*scenario, &client, &sent, window).await });
    }
    let mut total = Tally::default();
    while let Some(tally) = workers.join_next().await {
        total.merge(tally.context("a worker panicked")?);
    }

    let elapsed = total.last_answer.map_or(options.duration, |last| last.saturating_duration_since(measure_from));
    let mut samples = total.samples;
    samples.sort_by_key(|(at, _)| *at);
    Ok(Report::new(
        S::NAME,
        options,
        elapsed,
        total.latencies_ns,
        total.errors_by_kind,
        samples.into_iter().take(ERROR_SAMPLES).map(|(_, sample)| sample).collect(),
        sent.load(Ordering::Relaxed) >= options.max_requests,
    ))
}

#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    stop_at: Instant,
    max_requests: u64,
}

/// One worker's record of its measured requests.
#[derive(Debug, Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    errors_by_kind: BTreeMap<String, u64>,
    samples: Vec<(Instant, String)>,
    last_answer: Option<Instant>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_ns.extend(other.latencies_ns);
        for (kind, count) in other.errors_by_kind {
            *self.errors_by_kind.entry(kind).or_default() += count;
        }
        self.samples.extend(other.samples);
        self.last_answer = self.last_answer.max(other.last_answer);
    }
}

/// A request that did not end in a 2xx: its status (or transport failure) and what came back.
struct Failure {
    kind: String,
    detail: String,
}

async fn work<S: Scenario>(scenario: &S, client: &Client, sent: &AtomicU64, window: Window) -> Tally {
    let mut tally = Tally::default();
    // Bounded twice over: by the clock and by the shared request count.
    while Instant::now() < window.stop_at {
        let n = sent.fetch_add(1, Ordering::Relaxed);
        if n >= window.max_requests {
            break;
        }
        let request = scenario.request(client, n);
        let started = Instant::now();
        let outcome = send(request).await;
        let answered = Instant::now();
        if started < window.measure_from {
            continue;
        }
        tally.latencies_ns.push(u64::try_from((answered - started).as_nanos()).unwrap_or(u64::MAX));
        tally.last_answer = Some(answered);
        if let Err(failure) = outcome {
            *tally.errors_by_kind.entry(failure.kind).or_default() += 1;
            if tally.samples.len() < ERROR_SAMPLES {
                tally.samples.push((started, failure.detail));
            }
        }
    }
    tally
}

/// Sends `request` and reads the whole body, so the time covers the complete response.
async fn send(request: RequestBuilder) -> Result<(), Failure> {
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let body = response.bytes().await.map_err(transport)?;
    if status.is_success() {
        return Ok(());
    }
    let body: String = String::from_utf8_lossy(&body).chars().take(300).collect();
    Err(Failure { kind: status.as_u16().to_string(), detail: format!("{status}: {body}") })
}

fn transport(err: reqwest::Error) -> Failure {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "transport"
    };
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    Failure { kind: kind.to_owned(), detail }
}
