//! The outbox relay on SQLite and on PostgreSQL: at-least-once delivery, handled once per
//! consumer, retries with backoff, and dead events.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use platform::db::Database;
use platform::error::{Dependency, Unreachable};
use platform::events::{EventType, MAX_ATTEMPTS, Relay, Subscription, dead};
use platform::testing::{Backend, TestEnv};
use serde::{Deserialize, Serialize};

/// The event these tests record.
#[derive(Serialize, Deserialize)]
struct ThingHappened {
    n: i64,
}

impl EventType for ThingHappened {
    const NAME: &'static str = "thing.happened";
}

/// An event nobody subscribes to.
#[derive(Serialize, Deserialize)]
struct NobodyListens {}

impl EventType for NobodyListens {
    const NAME: &'static str = "nobody.listens";
}

/// A migrated database; the environment is returned too, since dropping it removes the folder.
async fn database(backend: Backend) -> Option<(TestEnv, Database)> {
    if backend == Backend::Real && platform::testing::real_backends_skipped() {
        return None;
    }
    let env = TestEnv::new(backend).await.expect("env");
    let db = Database::connect(&env.config().expect("config").database).await.expect("db");
    db.migrate().await.expect("migrate");
    Some((env, db))
}

fn counting(consumer: &'static str, seen: Arc<AtomicUsize>, fail: bool) -> Subscription {
    Subscription::on(consumer, move |event: ThingHappened| {
        let seen = seen.clone();
        async move {
            assert!(event.n >= 0);
            seen.fetch_add(1, Ordering::SeqCst);
            if fail { anyhow::bail!("consumer is down") } else { Ok(()) }
        }
    })
}

async fn unsent(db: &Database) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetch_one(db.pool()).await.expect("count")
}

async fn delivered_once_even_when_redelivered(backend: Backend) {
    let Some((_env, db)) = database(backend).await else { return };
    for n in 0..3 {
        platform::events::record(db.pool(), &ThingHappened { n }).await.expect("record");
    }
    platform::events::record(db.pool(), &NobodyListens {}).await.expect("record");
    let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let relay = Relay::new(db.clone(), vec![counting("a", a.clone(), false), counting("b", b.clone(), false)]);
    assert_eq!(relay.deliver_round().await.expect("round"), 4);
    assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (3, 3), "each consumer gets each event");
    assert_eq!(unsent(&db).await, 0);
    assert_eq!(relay.deliver_round().await.expect("round"), 0, "nothing left");

    // The relay died after the handlers ran but before marking the rows sent: they go out again,
    // and every consumer skips what it already handled.
    sqlx::query("UPDATE outbox SET sent_at = NULL").execute(db.pool()).await.expect("reset");
    assert_eq!(relay.deliver_round().await.expect("round"), 4);
    assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (3, 3), "handled once");
    assert_eq!(unsent(&db).await, 0);
}

async fn failures_retry_with_backoff_then_park_as_dead(backend: Backend) {
    let Some((_env, db)) = database(backend).await else { return };
    platform::events::record(db.pool(), &ThingHappened { n: 1 }).await.expect("record");
    let (ok, failing) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let relay = Relay::new(db.clone(), vec![counting("ok", ok.clone(), false), counting("down", failing.clone(), true)]);
    relay.deliver_round().await.expect("round");
    let (attempts, next, sent): (i64, Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT attempts, next_attempt_at, sent_at FROM outbox").fetch_one(db.pool()).await.expect("row");
    assert_eq!((attempts, sent), (1, None));
    assert!(next.expect("next attempt") > platform::db::now_millis(), "backed off");
    assert_eq!(relay.deliver_round().await.expect("round"), 0, "not before its next attempt");
    for _ in 1..MAX_ATTEMPTS {
        sqlx::query("UPDATE outbox SET next_attempt_at = 0").execute(db.pool()).await.expect("due now");
        relay.deliver_round().await.expect("round");
    }
    let (attempts, dead): (i64, Option<i64>) =
        sqlx::query_as("SELECT attempts, dead_at FROM outbox").fetch_one(db.pool()).await.expect("row");
    assert_eq!(attempts, MAX_ATTEMPTS);
    assert!(dead.is_some(), "parked as dead");
    assert_eq!(ok.load(Ordering::SeqCst), 1, "the healthy consumer handled it once across the retries");
    assert_eq!(failing.load(Ordering::SeqCst) as i64, MAX_ATTEMPTS);
    sqlx::query("UPDATE outbox SET next_attempt_at = 0").execute(db.pool()).await.expect("due now");
    assert_eq!(relay.deliver_round().await.expect("round"), 0, "dead events are not retried");

    // Listed as dead; once the consumer is fixed, a re-drive delivers it to the consumer that
    // failed, and the one that handled it skips it.
    assert_eq!(dead::count(&db).await.expect("count"), 1);
    let parked = dead::list(&db, 10).await.expect("list");
    assert_eq!((parked.len(), parked[0].attempts, parked[0].event_type.as_str()), (1, MAX_ATTEMPTS, "thing.happened"));
    assert!(parked[0].last_error.as_deref().is_some_and(|e| e.contains("consumer is down")), "{:?}", parked[0].last_error);
    assert_eq!(dead::redrive(&db, &["0190f0f0-0000-7000-8000-000000000000".into()]).await.expect("redrive"), 0, "not dead");
    assert_eq!(dead::redrive(&db, std::slice::from_ref(&parked[0].id)).await.expect("redrive"), 1);
    let fixed = Arc::new(AtomicUsize::new(0));
    let relay = Relay::new(db.clone(), vec![counting("ok", ok.clone(), false), counting("down", fixed.clone(), false)]);
    assert_eq!(relay.deliver_round().await.expect("round"), 1);
    assert_eq!((ok.load(Ordering::SeqCst), fixed.load(Ordering::SeqCst)), (1, 1));
    assert_eq!((unsent(&db).await, dead::count(&db).await.expect("count")), (0, 0));
}

/// A handler failing because a dependency is down spends none of the event's attempts.
async fn outages_do_not_count_towards_parking(backend: Backend) {
    let Some((_env, db)) = database(backend).await else { return };
    platform::events::record(db.pool(), &ThingHappened { n: 1 }).await.expect("record");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let down = Subscription::on("needs-s3", move |_: ThingHappened| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err(Unreachable { dependency: Dependency::Storage, detail: "connection refused".into() }.into()) }
    });
    let relay = Relay::new(db.clone(), vec![down]);
    for _ in 0..MAX_ATTEMPTS + 2 {
        sqlx::query("UPDATE outbox SET next_attempt_at = 0").execute(db.pool()).await.expect("due now");
        assert_eq!(relay.deliver_round().await.expect("round"), 1);
    }
    let (attempts, dead): (i64, Option<i64>) =
        sqlx::query_as("SELECT attempts, dead_at FROM outbox").fetch_one(db.pool()).await.expect("row");
    assert_eq!((attempts, dead), (0, None), "an outage is not the event's fault");
    assert_eq!(calls.load(Ordering::SeqCst) as i64, MAX_ATTEMPTS + 2);
}

#[tokio::test]
async fn embedded_delivered_once_even_when_redelivered() {
    delivered_once_even_when_redelivered(Backend::Embedded).await;
}

#[tokio::test]
async fn real_delivered_once_even_when_redelivered() {
    delivered_once_even_when_redelivered(Backend::Real).await;
}

#[tokio::test]
async fn embedded_failures_retry_with_backoff_then_park_as_dead() {
    failures_retry_with_backoff_then_park_as_dead(Backend::Embedded).await;
}

#[tokio::test]
async fn real_failures_retry_with_backoff_then_park_as_dead() {
    failures_retry_with_backoff_then_park_as_dead(Backend::Real).await;
}

#[tokio::test]
async fn embedded_outages_do_not_count_towards_parking() {
    outages_do_not_count_towards_parking(Backend::Embedded).await;
}

#[tokio::test]
async fn real_outages_do_not_count_towards_parking() {
    outages_do_not_count_towards_parking(Backend::Real).await;
}
