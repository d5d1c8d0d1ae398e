//! The figures of event delivery: what the relay delivered, what each consumer handled and how
//! long events waited for it, and the outbox's backlog (read from the table at scrape time).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;

use crate::db::{Database, now_millis};
use crate::metrics::{Counter, Histogram, LAG_BUCKETS, Metrics, Sample};

/// The outbox query's result is reused this long: scrapes and the console's polling together
/// run it at most this often.
const OUTBOX_REUSE: Duration = Duration::from_secs(5);

/// One consumer's figures.
#[derive(Debug, Clone)]
struct Consumer {
    name: &'static str,
    handled: Counter,
    failed: Counter,
    lag: Histogram,
}

impl Consumer {
    fn new(name: &'static str) -> Self {
        Consumer { name, handled: Counter::default(), failed: Counter::default(), lag: Histogram::seconds(LAG_BUCKETS) }
    }
}

/// The relay's and the consumers' counters. Cheap to clone. The default counts into handles no
/// registry reads (tests, tools).
#[derive(Debug, Clone)]
pub struct EventMetrics {
    delivered: Counter,
    failed_deliveries: Counter,
    consumers: Arc<[Consumer]>,
    /// Where a consumer not registered counts.
    unregistered: Consumer,
}

impl Default for EventMetrics {
    fn default() -> Self {
        EventMetrics {
            delivered: Counter::default(),
            failed_deliveries: Counter::default(),
            consumers: Arc::new([]),
            unregistered: Consumer::new("unregistered"),
        }
    }
}

impl EventMetrics {
    /// Counters registered in `metrics`, with a series for each of `consumers` (the consuming
    /// services in this process).
    pub fn register(metrics: &Metrics, consumers: &[&'static str]) -> Self {
        let mut names = consumers.to_vec();
        names.sort_unstable();
        names.dedup();
        let consumers: Vec<Consumer> = names.into_iter().map(Consumer::new).collect();
        for c in &consumers {
            const HANDLED: &str = "guildhall_events_handled_total";
            const HANDLED_HELP: &str =
                "Events a consumer's handler took, by consumer and outcome (ok: handled or already handled; failed: to be retried).";
            metrics.register_counter(HANDLED, HANDLED_HELP, &[("consumer", c.name), ("outcome", "ok")], &c.handled);
            metrics.register_counter(HANDLED, HANDLED_HELP, &[("consumer", c.name), ("outcome", "failed")], &c.failed);
            metrics.register_histogram(
                "guildhall_events_consumer_lag_seconds",
                "How long an event waited for its consumer: on SQS from its arrival in the consumer's queue (SentTimestamp) to its receipt; in process from its record in the outbox to its handling.",
                &[("consumer", c.name)],
                &c.lag,
            );
        }
        let this = EventMetrics { consumers: consumers.into(), ..Default::default() };
        metrics.register_counter(
            "guildhall_outbox_delivered_total",
            "Outbox events the relay delivered to all their consumers (in process) or queues (SQS).",
            &[],
            &this.delivered,
        );
        metrics.register_counter(
            "guildhall_outbox_delivery_failures_total",
            "Failed attempts of the relay to deliver an outbox event (retried with backoff).",
            &[],
            &this.failed_deliveries,
        );
        this
    }

    fn consumer(&self, name: &str) -> &Consumer {
        self.consumers.iter().find(|c| c.name == name).unwrap_or(&self.unregistered)
    }

    /// The relay delivered an event.
    pub(crate) fn delivered(&self) {
        self.delivered.inc();
    }

    /// The relay failed to deliver an event.
    pub(crate) fn delivery_failed(&self) {
        self.failed_deliveries.inc();
    }

    /// `consumer` took an event after it waited `lag`.
    pub(crate) fn waited(&self, consumer: &str, lag: Duration) {
        self.consumer(consumer).lag.observe_duration(lag);
    }

    /// `consumer`'s handler finished with an event.
    pub(crate) fn handled(&self, consumer: &str, ok: bool) {
        let c = self.consumer(consumer);
        if ok { c.handled.inc() } else { c.failed.inc() }
    }
}

/// How long ago the event with id `id` was recorded: its id is a UUIDv7, which carries the
/// time of its creation in milliseconds.
pub(crate) fn age_of(id: &str) -> Option<Duration> {
    let (secs, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    let recorded = Duration::new(secs, nanos);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(now.saturating_sub(recorded))
}

/// Registers the outbox's backlog, read from the table at scrape time: events waiting, the age
/// of the oldest, and those parked as dead. Where the relay runs: every process shares one
/// outbox, so one process's figure is the deployment's.
pub fn register_outbox_metrics(db: &Database, metrics: &Metrics) {
    let db = db.clone();
    metrics.collector(OUTBOX_REUSE, move || {
        let db = db.clone();
        async move { outbox_samples(&db).await }
    });
}

async fn outbox_samples(db: &Database) -> anyhow::Result<Vec<Sample>> {
    // Dead rows are unsent too, so one pass over the unsent rows (the partial index
    // `outbox_unsent`) gives all three, however many sent rows the table keeps.
    let row = sqlx::query(
        "SELECT COUNT(CASE WHEN dead_at IS NULL THEN 1 END) AS pending, COUNT(CASE WHEN dead_at IS NOT NULL THEN 1 END) AS dead, \
         MIN(CASE WHEN dead_at IS NULL THEN created_at END) AS oldest FROM outbox WHERE sent_at IS NULL",
    )
    .fetch_one(db.pool())
    .await
    .context("reading the outbox backlog")?;
    let pending: i64 = row.try_get("pending")?;
    let dead: i64 = row.try_get("dead")?;
    let oldest: Option<i64> = row.try_get("oldest")?;
    let age = oldest.map_or(0.0, |created| (now_millis() - created).max(0) as f64 / 1000.0);
    let sample = |name, help, value| Sample { name, help, labels: Vec::new(), value };
    Ok(vec![
        sample("guildhall_outbox_pending", "Outbox events waiting for delivery (dead ones not included).", pending as f64),
        sample("guildhall_outbox_oldest_age_seconds", "Age of the oldest outbox event waiting for delivery (0 when none).", age),
        sample("guildhall_outbox_dead", "Outbox events parked as dead after repeated failures (guildhall events dead).", dead as f64),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_tells_its_age() {
        let id = uuid::Uuid::now_v7().to_string();
        assert!(age_of(&id).expect("a v7 id") < Duration::from_secs(5));
        assert_eq!(age_of("not-an-id"), None);
    }
}
