//! Events over SQS, against moto's server: the relay publishes to every subscriber's queue, the
//! consumers long-poll, handle each event once however often it arrives, keep slow messages
//! hidden, and leave poison messages to the dead-letter queue. Trace headers ride along.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use platform::db::Database;
use platform::error::{Dependency, Unreachable};
use platform::events::{AccountDeleted, Event, EventType, QueueConsumer, Queues, Relay, Subscription, TraceHeaders, dead};
use platform::shutdown::Shutdown;
use platform::testing::{Backend, TestEnv};

struct Fixture {
    env: TestEnv,
    db: Database,
    queues: Queues,
}

/// A migrated PostgreSQL database and this test's own queues, or `None` when real backends are
/// skipped. `vars` adjust the environment (e.g. a short visibility timeout).
async fn fixture(vars: &[(&str, &str)]) -> Option<Fixture> {
    if platform::testing::real_backends_skipped() {
        return None;
    }
    let mut env = TestEnv::new(Backend::Real).await.expect("env");
    env.set("QUEUE_WAIT_SECS", "1");
    for (k, v) in vars {
        env.set(k, *v);
    }
    let config = env.config().expect("config");
    let db = Database::connect(&config.database).await.expect("db");
    db.migrate().await.expect("migrate");
    let queues = Queues::connect(&config.queue, &config.aws).await.expect("QUEUE_URL is set on real backends");
    Some(Fixture { env, db, queues })
}

/// A subscription of `consumer` to `account.deleted` counting its calls; it sleeps `work` and
/// fails when `fail` says so.
fn counting(consumer: &'static str, calls: Arc<AtomicUsize>, work: Duration, fail: bool) -> Subscription {
    Subscription::on(consumer, move |_event: AccountDeleted| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(work).await;
            if fail { anyhow::bail!("this consumer cannot handle it") } else { Ok(()) }
        }
    })
}

fn deleted(account_id: &str) -> AccountDeleted {
    AccountDeleted { account_id: account_id.into(), deleted_at: "2026-11-29T00:00:00Z".into() }
}

/// Visible plus in-flight messages of a queue.
async fn queued(queues: &Queues, url: &str) -> i64 {
    let attrs = queues
        .client()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .unwrap_or_default();
    let n = |name| attrs.get(&name).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    n(QueueAttributeName::ApproximateNumberOfMessages) + n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
}

/// Waits up to `secs` for `condition`.
async fn eventually<F, Fut>(secs: u64, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_publishing_and_marking_delivers_again_and_consumers_handle_once() {
    let Some(f) = fixture(&[]).await else { return };
    platform::events::record(f.db.pool(), &deleted("p1")).await.expect("record");
    let relay = Relay::sqs(f.db.clone(), f.queues.clone());

    // The first relay publishes, then dies before marking the row sent.
    let claimed = relay.claim().await.expect("claim");
    assert_eq!(claimed.len(), 1);
    relay.publish(&claimed[0].0).await.expect("published");
    // Its lease runs out; another relay finds the row unsent and publishes it again.
    sqlx::query("UPDATE outbox SET claimed_until = 0").execute(f.db.pool()).await.expect("lease expired");
    assert_eq!(relay.deliver_round().await.expect("round"), 1);
    let unsent: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetch_one(f.db.pool()).await.expect("count");
    assert_eq!(unsent, 0, "marked sent after the second publish");

    // Every subscriber's queue got both copies.
    for consumer in platform::events::consumers_of(AccountDeleted::NAME) {
        assert_eq!(queued(&f.queues, &f.queues.url(consumer)).await, 2, "{consumer}");
    }

    // Each consumer handles the event once and deletes both copies.
    let shutdown = Shutdown::new();
    let mut counters = Vec::new();
    for consumer in platform::events::consumers_of(AccountDeleted::NAME) {
        let calls = Arc::new(AtomicUsize::new(0));
        counters.push((consumer, calls.clone()));
        let subscription = counting(consumer, calls, Duration::ZERO, false);
        tokio::spawn(QueueConsumer::new(f.db.clone(), f.queues.clone(), consumer, vec![subscription]).run(shutdown.clone()));
    }
    for (consumer, _) in &counters {
        let url = f.queues.url(consumer);
        assert!(eventually(20, || async { queued(&f.queues, &url).await == 0 }).await, "{consumer}'s queue drained");
    }
    shutdown.trigger();
    for (consumer, calls) in &counters {
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{consumer} handled the event once");
        let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consumed_events WHERE consumer = $1")
            .bind(*consumer)
            .fetch_one(f.db.pool())
            .await
            .expect("count");
        assert_eq!(recorded, 1, "{consumer} recorded the event id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_out_an_sqs_outage_and_are_never_parked() {
    let Some(f) = fixture(&[]).await else { return };
    // The same queues behind an endpoint that refuses connections: SQS unreachable.
    let mut cut_off = f.env.clone();
    cut_off.set("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    // One try per round: the SDK's own retries would only add their backoff (seconds) to each of
    // the rounds below, and the relay's retrying is what is tested.
    cut_off.set("AWS_MAX_ATTEMPTS", "1");
    let config = cut_off.config().expect("config");
    let unreachable = Queues::connect(&config.queue, &config.aws).await.expect("queues");
    platform::events::record(f.db.pool(), &deleted("p9")).await.expect("record");

    let relay = Relay::sqs(f.db.clone(), unreachable);
    let rounds = platform::events::MAX_ATTEMPTS + 3;
    for _ in 0..rounds {
        assert_eq!(relay.deliver_round().await.expect("round"), 1, "the event is still due, never parked");
        let (next, dead): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT next_attempt_at, dead_at FROM outbox").fetch_one(f.db.pool()).await.expect("row");
        assert!(dead.is_none(), "an event that could not reach SQS was parked as dead");
        let wait = next.expect("a next attempt") - platform::db::now_millis();
        assert!(wait <= 30_000, "retried at most 30 s apart, not {wait} ms");
        // Due again at once, as if the backoff had passed.
        sqlx::query("UPDATE outbox SET next_attempt_at = NULL").execute(f.db.pool()).await.expect("due now");
    }
    let attempts: i64 = sqlx::query_scalar("SELECT attempts FROM outbox").fetch_one(f.db.pool()).await.expect("attempts");
    assert_eq!(attempts, rounds);

    // SQS answers again: the event goes out to every subscriber.
    let relay = Relay::sqs(f.db.clone(), f.queues.clone());
    assert_eq!(relay.deliver_round().await.expect("round"), 1);
    let unsent: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetch_one(f.db.pool()).await.expect("count");
    assert_eq!(unsent, 0);
    for consumer in platform::events::consumers_of(AccountDeleted::NAME) {
        assert_eq!(queued(&f.queues, &f.queues.url(consumer)).await, 1, "{consumer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_land_in_the_dead_letter_queue() {
    let Some(f) = fixture(&[]).await else { return };
    let url = f.queues.url("chat");
    // One that no consumer can read, one whose handler always fails.
    f.queues.client().send_message().queue_url(&url).message_body("this is not an event").send().await.expect("send");
    let event = Event {
        id: uuid::Uuid::now_v7().to_string(),
        event_type: AccountDeleted::NAME.into(),
        payload: serde_json::to_value(deleted("p2")).expect("json"),
        trace: TraceHeaders::new(),
    };
    f.queues.send("chat", &event).await.expect("send");

    let calls = Arc::new(AtomicUsize::new(0));
    let shutdown = Shutdown::new();
    let consumer = QueueConsumer::new(f.db.clone(), f.queues.clone(), "chat", vec![counting("chat", calls.clone(), Duration::ZERO, true)]);
    tokio::spawn(consumer.run(shutdown.clone()));
    let dlq = format!("{url}-dlq");
    assert!(eventually(45, || async { queued(&f.queues, &dlq).await == 2 }).await, "both moved to the DLQ");
    shutdown.trigger();
    assert_eq!(queued(&f.queues, &url).await, 0, "nothing left in the queue");
    assert_eq!(calls.load(Ordering::SeqCst), platform::testing::TEST_MAX_RECEIVES as usize, "tried once per receive");
    let handled: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consumed_events").fetch_one(f.db.pool()).await.expect("count");
    assert_eq!(handled, 0, "a failed event is not recorded as handled");

    // Listed, then the event re-driven by id once its consumer is fixed: it alone goes back, and
    // is handled; the unreadable message stays in the dead-letter queue. First the stopped
    // consumer's last long poll (1 s) must have ended: SQS would hand it a message sent meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listed = dead::dead_letters(&f.queues, "chat").await.expect("listed");
    assert_eq!((listed.queue_url.as_str(), listed.approximate_count), (dlq.as_str(), 2));
    assert!(listed.sample.iter().any(|m| m.event_id.as_deref() == Some(event.id.as_str())), "{listed:?}");
    assert_eq!(dead::redrive_dead_letters(&f.queues, "chat", std::slice::from_ref(&event.id), 100).await.expect("redrive"), 1);
    assert_eq!((queued(&f.queues, &url).await, queued(&f.queues, &dlq).await), (1, 1));
    let fixed = Arc::new(AtomicUsize::new(0));
    let shutdown = Shutdown::new();
    let consumer = QueueConsumer::new(f.db.clone(), f.queues.clone(), "chat", vec![counting("chat", fixed.clone(), Duration::ZERO, false)]);
    tokio::spawn(consumer.run(shutdown.clone()));
    assert!(eventually(20, || async { queued(&f.queues, &url).await == 0 }).await, "handled: {} calls", fixed.load(Ordering::SeqCst));
    shutdown.trigger();
    assert_eq!(fixed.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_dependency_is_down_keeps_its_message_and_spends_no_receives() {
    let Some(f) = fixture(&[]).await else { return };
    platform::events::record(f.db.pool(), &deleted("p5")).await.expect("record");
    assert_eq!(Relay::sqs(f.db.clone(), f.queues.clone()).deliver_round().await.expect("round"), 1);
    // Storage is down for the first TEST_MAX_RECEIVES runs of the handler: given back each time,
    // the message would have used up its receives and landed in the dead-letter queue.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let flaky = Subscription::on("chat", move |_: AccountDeleted| {
        let run = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if run < platform::testing::TEST_MAX_RECEIVES as usize {
                Err(Unreachable { dependency: Dependency::Storage, detail: "connection refused".into() }.into())
            } else {
                Ok(())
            }
        }
    });
    let shutdown = Shutdown::new();
    tokio::spawn(QueueConsumer::new(f.db.clone(), f.queues.clone(), "chat", vec![flaky]).run(shutdown.clone()));
    let url = f.queues.url("chat");
    assert!(eventually(30, || async { queued(&f.queues, &url).await == 0 }).await, "handled");
    shutdown.trigger();
    assert_eq!(calls.load(Ordering::SeqCst), platform::testing::TEST_MAX_RECEIVES as usize + 1);
    assert_eq!(queued(&f.queues, &format!("{url}-dlq")).await, 0, "nothing dead");
    let handled: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM consumed_events WHERE consumer = 'chat'").fetch_one(f.db.pool()).await.expect("count");
    assert_eq!(handled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_work_keeps_its_message_hidden() {
    // Visible again after 2 s unless extended; the handler takes 5 s.
    let Some(f) = fixture(&[("QUEUE_VISIBILITY_SECS", "2")]).await else { return };
    let event = Event {
        id: uuid::Uuid::now_v7().to_string(),
        event_type: AccountDeleted::NAME.into(),
        payload: serde_json::to_value(deleted("p2")).expect("json"),
        trace: TraceHeaders::new(),
    };
    f.queues.send("uploads", &event).await.expect("send");
    let calls = Arc::new(AtomicUsize::new(0));
    let shutdown = Shutdown::new();
    // Two consumers on the same queue, as two instances would be: neither may see it meanwhile.
    for _ in 0..2 {
        let subscription = counting("uploads", calls.clone(), Duration::from_secs(5), false);
        tokio::spawn(QueueConsumer::new(f.db.clone(), f.queues.clone(), "uploads", vec![subscription]).run(shutdown.clone()));
    }
    let url = f.queues.url("uploads");
    assert!(eventually(30, || async { queued(&f.queues, &url).await == 0 }).await, "handled and deleted");
    shutdown.trigger();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "never handed out twice while in progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_headers_travel_as_message_attributes() {
    let Some(f) = fixture(&[]).await else { return };
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let xray = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let trace = TraceHeaders::from([("traceparent".to_owned(), traceparent.to_owned()), ("X-Amzn-Trace-Id".to_owned(), xray.to_owned())]);
    let event = Event {
        id: uuid::Uuid::now_v7().to_string(),
        event_type: AccountDeleted::NAME.into(),
        payload: serde_json::to_value(deleted("p3")).expect("json"),
        trace,
    };
    f.queues.send("leaderboard", &event).await.expect("send");
    let received = f
        .queues
        .client()
        .receive_message()
        .queue_url(f.queues.url("leaderboard"))
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .wait_time_seconds(2)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 1);
    let message = &received[0];
    let attributes = message.message_attributes.as_ref().expect("message attributes");
    assert_eq!(attributes["traceparent"].string_value.as_deref(), Some(traceparent));
    assert_eq!(attributes["event_id"].string_value.as_deref(), Some(event.id.as_str()));
    assert_eq!(attributes["event_type"].string_value.as_deref(), Some("account.deleted"));
    let system = message.attributes.as_ref().expect("system attributes");
    assert_eq!(system.get(&MessageSystemAttributeName::AwsTraceHeader).map(String::as_str), Some(xray));
    let body: serde_json::Value = serde_json::from_str(message.body.as_deref().expect("body")).expect("JSON body");
    assert_eq!(
        (body["id"].as_str(), body["type"].as_str(), &body["payload"]),
        (Some(event.id.as_str()), Some("account.deleted"), &serde_json::to_value(deleted("p3")).expect("json"))
    );
}
