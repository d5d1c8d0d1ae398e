//! Sending deliveries: a pool of at most `WEBHOOK_CONCURRENCY` attempts in flight per process,
//! each its own task with its own timeout, working the `webhook_deliveries` rows that are due.
//!
//! A receiver that is slow or down holds up only its own deliveries: it may have at most
//! `PER_WEBHOOK` attempts in flight here (the rest of its backlog is left in the table for other
//! slots and other instances), and each failure pushes its next attempt further out. Rows are
//! claimed with a lease, so any number of processes share the work and a process that dies
//! releases its claims by expiry; the attempt is then made again (receivers recognise a repeat
//! by its event id).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform::config::WebhookSettings;
use platform::db::now_millis;
use platform::shutdown::Shutdown;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::WebhooksState;
use crate::signature::{self, DELIVERY_HEADER, EVENT_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER};
use crate::store::{self, Claimed, Outcome, Target};
use crate::target::{GuardedResolver, TargetPolicy};

/// The most attempts in flight to one webhook from one process.
pub const PER_WEBHOOK: usize = 4;
/// The longest wait between two attempts of one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How often the table is looked at when nothing woke the pool (another instance's consumer
/// recorded deliveries, or an operator asked for a redelivery there).
const POLL: Duration = Duration::from_secs(1);
/// How long a claim outlives the attempt's own timeout before another worker may take the row.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// How long delivered and parked deliveries stay listed.
const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);
const KEEP_FAILED: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often they are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// The most of a failure's description kept.
const MAX_ERROR_CHARS: usize = 500;

/// Makes the HTTP requests: one client (with its connection pool) for every webhook, resolving
/// through `GuardedResolver`, following no redirect (a receiver answering 3xx could otherwise
/// send Guildhall anywhere), ignoring proxy variables, over rustls with the system's roots (as
/// the AWS SDK's client).
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: TargetPolicy,
    timeout: Duration,
}

impl Sender {
    /// A sender with `settings`' timeout and target policy.
    pub fn new(settings: &WebhookSettings) -> anyhow::Result<Self> {
        let policy = TargetPolicy { allow_local: settings.allow_local_targets };
        let client = reqwest::Client::builder()
            .https_only(!settings.allow_local_targets)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver::new(policy))
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .timeout(settings.timeout)
            .pool_max_idle_per_host(PER_WEBHOOK)
            .user_agent(concat!("Guildhall-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, policy, timeout: settings.timeout })
    }

    /// One attempt of `claimed` to `target`, signed now. Whether it is retried is the caller's.
    pub async fn attempt(&self, claimed: &Claimed, target: &Target) -> Result<u16, (Option<u16>, String)> {
        // Checked again at every attempt: the policy may have changed since the webhook was
        // made, and an address written as the host does not go through the resolver.
        let url = self.policy.parse(&target.url).map_err(|refusal| (None, refusal.to_string()))?;
        let timestamp = i64::try_from(platform::time::now_unix()).unwrap_or(i64::MAX);
        let signed = signature::header_value(target.secret.expose(), timestamp, &claimed.event_id, target.body.as_bytes());
        let header = |value: &str| HeaderValue::from_str(value).map_err(|_| (None, "an id is not a header value".to_owned()));
        let response = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(SIGNATURE_HEADER, header(&signed)?)
            .header(EVENT_ID_HEADER, header(&claimed.event_id)?)
            .header(EVENT_HEADER, header(&claimed.event_type)?)
            .header(DELIVERY_HEADER, header(&claimed.id)?)
            .body(target.body.clone())
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
            Ok(response) => Err((Some(response.status().as_u16()), format!("answered {}", response.status()))),
            Err(err) if err.is_timeout() => Err((None, format!("no answer within {} s", self.timeout.as_secs()))),
            // Without the URL: its query may hold the receiver's own token.
            Err(err) => Err((None, describe(&err.without_url()))),
        }
    }
}

/// An error and its causes on one line ("error sending request: ...: connection refused").
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
}

/// When to try again after attempt number `attempts` failed: a wait of `first`, doubling after
/// each further failure up to an hour, of which the later half is spread by `roll` (uniform over
/// `u32`); `None` once `max_attempts` were made (the delivery is parked). The spread matters when
/// a receiver comes back from an outage: without it every delivery that failed together would be
/// retried together, at the same instant, each time.
pub fn retry_at(now: i64, attempts: i64, settings: &WebhookSettings, roll: u32) -> Option<i64> {
    if attempts >= i64::from(settings.max_attempts) {
        return None;
    }
    let first = i64::try_from(settings.retry_first.as_millis()).unwrap_or(i64::MAX);
    let cap = i64::try_from(MAX_BACKOFF.as_millis()).unwrap_or(i64::MAX);
    let factor = 1i64 << (attempts - 1).clamp(0, 20);
    let wait = first.saturating_mul(factor).min(cap);
    let spread = i64::try_from(i128::from(wait / 2) * i128::from(roll) / i128::from(u32::MAX)).unwrap_or(0);
    Some(now + wait - wait / 2 + spread)
}

/// Attempts in flight per webhook in this process.
#[derive(Debug, Default, Clone)]
struct InFlight(Arc<Mutex<HashMap<String, usize>>>);

impl InFlight {
    fn busy(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().filter(|(_, n)| **n >= PER_WEBHOOK).map(|(id, _)| id.clone()).collect()
    }

    /// Counts one more attempt to `webhook`, unless it has `PER_WEBHOOK` already.
    fn enter(&self, webhook: &str) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(webhook.to_owned()).or_default();
        if *n >= PER_WEBHOOK {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, webhook: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(webhook) {
            *n -= 1;
            if *n == 0 {
                map.remove(webhook);
            }
        }
    }
}

/// Works due deliveries until shutdown, then lets the attempts in flight finish (each is bounded
/// by the timeout; any cut short is made again after its lease).
pub async fn run(state: WebhooksState, shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(state.settings.concurrency));
    let in_flight = InFlight::default();
    let mut tasks = JoinSet::new();
    let lease = state.settings.timeout + LEASE_MARGIN;
    let mut last_purge: Option<tokio::time::Instant> = None;
    let mut failures = 0u32;
    loop {
        while tasks.try_join_next().is_some() {}
        let free = slots.available_permits();
        let mut more = false;
        if free > 0 {
            let lease_until = now_millis() + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
            let busy = in_flight.busy();
            match store::claim(&state.db, lease_until, i64::try_from(free).unwrap_or(1), PER_WEBHOOK as i64, &busy).await {
                Ok(batch) => {
                    failures = 0;
                    more = batch.len() == free;
                    for claimed in batch {
                        let permit = slots.clone().try_acquire_owned();
                        let (Ok(permit), true) = (permit, in_flight.enter(&claimed.webhook_id)) else {
                            // The webhook filled its share meanwhile: leave the row to a later round.
                            if let Err(err) = store::release(&state.db, &claimed.id).await {
                                tracing::warn!(error = format!("{err:#}"), "releasing a delivery failed; it is retried after its lease");
                            }
                            continue;
                        };
                        let (state, in_flight) = (state.clone(), in_flight.clone());
                        tasks.spawn(async move {
                            deliver(&state, &claimed).await;
                            in_flight.leave(&claimed.webhook_id);
                            drop(permit);
                        });
                    }
                }
                Err(err) => {
                    // While the database is down a claim fails at once: back off.
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = format!("{err:#}"), failures, "claiming webhook deliveries failed");
                    let pause = (POLL * failures.min(5)).min(Duration::from_secs(5));
                    tokio::select! {
                        () = shutdown.stopped() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        if last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
            last_purge = Some(tokio::time::Instant::now());
            purge(&state).await;
        }
        if shutdown.is_stopped() {
            break;
        }
        if !more {
            tokio::select! {
                () = shutdown.stopped() => break,
                () = state.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }
    let finish = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(state.settings.timeout + Duration::from_secs(1), finish).await.is_err() {
        tracing::warn!("webhook attempts still in flight at shutdown; they are made again after their lease");
    }
}

/// Makes one attempt of `claimed` and records it.
async fn deliver(state: &WebhooksState, claimed: &Claimed) {
    let target = match store::target(&state.db, claimed).await {
        Ok(Some(target)) => target,
        // Its webhook was deleted meanwhile, and its deliveries with it.
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(
                delivery_id = claimed.id,
                error = format!("{err:#}"),
                "loading a webhook delivery failed; retried after its lease"
            );
            return;
        }
    };
    let attempt = claimed.attempts + 1;
    let outcome = match state.sender.attempt(claimed, &target).await {
        Ok(status) => {
            tracing::info!(webhook_id = claimed.webhook_id, event_id = claimed.event_id, status, attempt, "webhook delivered");
            Outcome::Delivered { status }
        }
        Err((status, error)) => {
            let roll = getrandom::u32().unwrap_or(u32::MAX);
            let retry_at = retry_at(now_millis(), attempt, &state.settings, roll);
            if retry_at.is_some() {
                tracing::info!(
                    webhook_id = claimed.webhook_id,
                    event_id = claimed.event_id,
                    attempt,
                    error,
                    "webhook delivery failed; retrying"
                );
            } else {
                // A receiver's outage, not Guildhall's: listed by the admin API for a redelivery.
                tracing::warn!(
                    webhook_id = claimed.webhook_id,
                    event_id = claimed.event_id,
                    attempt,
                    error,
                    "webhook delivery parked as failed"
                );
            }
            Outcome::Failed { status, error, retry_at }
        }
    };
    if let Err(err) = store::record(&state.db, claimed, &outcome).await {
        tracing::warn!(
            delivery_id = claimed.id,
            error = format!("{err:#}"),
            "recording a webhook attempt failed; it is made again after its lease"
        );
    }
}

async fn purge(state: &WebhooksState) {
    let now = now_millis();
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    match store::purge(&state.db, now - ms(KEEP_DELIVERED), now - ms(KEEP_FAILED)).await {
        Ok(0) => {}
        Ok(purged) => tracing::info!(purged, "purged old webhook deliveries"),
        Err(err) => tracing::warn!(error = format!("{err:#}"), "purging webhook deliveries failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_then_park() {
        let settings = WebhookSettings { max_attempts: 5, retry_first: Duration::from_secs(10), ..WebhookSettings::default() };
        let longest: Vec<Option<i64>> = (1..=5).map(|attempts| retry_at(0, attempts, &settings, u32::MAX)).collect();
        assert_eq!(longest, [Some(10_000), Some(20_000), Some(40_000), Some(80_000), None]);
        let shortest: Vec<Option<i64>> = (1..=5).map(|attempts| retry_at(0, attempts, &settings, 0)).collect();
        assert_eq!(shortest, [Some(5_000), Some(10_000), Some(20_000), Some(40_000), None], "at least half the wait");
        assert_eq!(retry_at(0, 3, &settings, u32::MAX / 2), Some(29_999), "the middle of the spread");
        let long = WebhookSettings { max_attempts: 30, ..settings };
        assert_eq!(retry_at(0, 29, &long, u32::MAX), Some(3_600_000), "at most an hour apart");
    }
}
