//! The closed loop: a fixed number of workers, each sending its next request when the previous one
//! answered, first for the warm-up (not recorded), then for the measured duration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use tokio::task::JoinSet;

use crate::http1::{Connection, Target, Trouble};
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
    let target = Target::resolve(&setup.base).await?;
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
    let window =
        Window { measure_from, stop_at: measure_from + options.duration, max_requests: options.max_requests, timeout: options.timeout };
    let sent = Arc::new(AtomicU64::new(0));
    // CPU times at the window's start, read when it opens (and once now, so a wrong pid fails the
    // run before it starts).
    options.cpu.sample()?;
    let watched = options.cpu.clone();
    let cpu_at_start = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        watched.sample()
    });
    let acked = match &options.acked {
        Some(path) => Some(Arc::new(AckLog::create(path)?)),
        None => None,
    };
    let mut workers = JoinSet::new();
    for _ in 0..options.concurrency {
        let (scenario, connection, sent, acked) = (scenario.clone(), Connection::new(target.clone()), sent.clone(), acked.clone());
        workers.spawn(async move { work(&*scenario, connection, &sent, window, acked.as_deref()).await });
    }
    let mut total = Tally::default();
    while let Some(tally) = workers.join_next().await {
        total.merge(tally.context("a worker panicked")?);
    }
    if let Some(acked) = acked {
        acked.finish()?;
    }

    let cpu_at_end = options.cpu.sample()?;
    let cpu_at_start = cpu_at_start.await.context("the CPU sampler panicked")??;
    let measured = total.latencies_ns.len() as u64;
    let cpu_per_request = crate::cpu::per_request(&cpu_at_start, &cpu_at_end, measured);

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
    )
    .with_cpu(cpu_per_request))
}

#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    stop_at: Instant,
    max_requests: u64,
    timeout: std::time::Duration,
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

/// `--acked`: one line per answer, `unix_ms outcome key`, written as answers come (buffered; a
/// run's few thousand lines a second are nothing beside the requests).
struct AckLog {
    out: std::sync::Mutex<std::io::BufWriter<std::fs::File>>,
}

impl AckLog {
    fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { out: std::sync::Mutex::new(std::io::BufWriter::new(file)) })
    }

    fn record(&self, outcome: &str, key: &str) {
        use std::io::Write as _;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        if let Ok(mut out) = self.out.lock() {
            // A failed write shows at `finish`, which flushes.
            let _ = writeln!(out, "{now} {outcome} {key}");
        }
    }

    fn finish(&self) -> anyhow::Result<()> {
        use std::io::Write as _;
        self.out.lock().map_err(|_| anyhow::anyhow!("the acked log's lock was poisoned"))?.flush().context("writing the acked log")
    }
}

async fn work<S: Scenario>(scenario: &S, mut connection: Connection, sent: &AtomicU64, window: Window, acked: Option<&AckLog>) -> Tally {
    let mut tally = Tally::default();
    // Bounded twice over: by the clock and by the shared request count.
    while Instant::now() < window.stop_at {
        let n = sent.fetch_add(1, Ordering::Relaxed);
        if n >= window.max_requests {
            break;
        }
        let request = scenario.request(n);
        let started = Instant::now();
        let outcome = send(&mut connection, &request, window.timeout).await;
        let answered = Instant::now();
        if let (Some(log), Some(key)) = (acked, scenario.key(n)) {
            match &outcome {
                Ok(status) => log.record(&status.to_string(), &key),
                Err(failure) => log.record(&failure.kind, &key),
            }
        }
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

/// Sends `request` and reads the whole body, so the time covers the complete response; a 2xx
/// gives its status.
async fn send(connection: &mut Connection, request: &crate::http1::Request<'_>, timeout: std::time::Duration) -> Result<u16, Failure> {
    match connection.exchange(request, timeout).await {
        Ok(Some(answer)) if (200..300).contains(&answer.status) => Ok(answer.status),
        Ok(Some(answer)) => {
            let body: String = String::from_utf8_lossy(answer.body).chars().take(300).collect();
            Err(Failure { kind: answer.status.to_string(), detail: format!("{}: {body}", answer.status) })
        }
        Ok(None) => Err(Failure { kind: "timeout".to_owned(), detail: format!("no answer within {} s", timeout.as_secs_f64()) }),
        Err(trouble) => {
            let kind = if matches!(trouble, Trouble::Connect(_)) { "connect" } else { "transport" };
            Err(Failure { kind: kind.to_owned(), detail: trouble.to_string() })
        }
    }
}
