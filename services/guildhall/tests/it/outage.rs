//! A dependency that is down (PostgreSQL stopped, paused or restarting, Redis paused or restarted,
//! S3 not answering) gets
//! requests a fast 503 `unavailable` with a generic message, never a 500 or a hang; readiness
//! says which dependency failed without internal text; and the same server answers 200 again
//! once the dependency is back, without a restart. Each test runs a PostgreSQL or Redis of its
//! own (`platform::testing`), since stopping the shared ones would break the tests beside it.

use std::time::{Duration, Instant};

use crate::common::{Api, Backend, Chat, HANG, Reply, TestApp, guest, timed_get, until_ok};
use platform::testing::{ThrowawayPostgres, ThrowawayRedis};
use serde_json::json;

/// How long a dependency that came back may take to be used again.
const RECOVERY: Duration = Duration::from_secs(15);

/// Asserts the generic 503 of `dependency` being down: no internal error text.
#[track_caller]
fn assert_unavailable(reply: Reply, dependency: &str) {
    let reply = reply.expect_error(503, "unavailable");
    assert_eq!(reply.body["error"]["message"], format!("the {dependency} is unavailable; retry shortly"));
    assert_eq!(reply.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
}

/// Readiness while `down` fails: 503, each dependency's status one of the public words only.
async fn assert_not_ready(api: &Api, down: &str) {
    let ready = timed_get(api, "/health/ready", None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body["status"], "unavailable");
    let checks = ready.body["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 2, "{}", ready.body);
    for check in checks {
        let (name, status) = (check["name"].as_str().expect("name"), check["status"].as_str().expect("status"));
        assert_eq!(check.as_object().map(|o| o.len()), Some(2), "nothing but name and status: {check}");
        if name == down {
            assert!(matches!(status, "unavailable" | "timed out"), "{}", ready.body);
        } else {
            assert_eq!(status, "ok", "{}", ready.body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_is_a_fast_503_and_the_same_server_recovers() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (postgres, app, token) = on_own_postgres("pg-outage").await;
    timed_get(&app, "/v1/accounts/me", Some(&token)).await.expect(200);

    postgres.stop().await.expect("PostgreSQL stops");
    database_down(&app, &token, "device-pg-outage-new").await;
    postgres.start_again().await.expect("PostgreSQL starts again");
    database_back(&app, &token, "device-pg-outage-new").await;
}

/// A PostgreSQL of the test's own (stopping the shared one would break the tests beside it), a
/// server on it, and the access token of a guest `device` signed in there.
async fn on_own_postgres(device: &str) -> (ThrowawayPostgres, TestApp, String) {
    let postgres = ThrowawayPostgres::start().await.expect("a PostgreSQL of the test's own");
    let app = TestApp::start_with(Backend::Real, |env| {
        env.set("DATABASE_URL", postgres.url());
    })
    .await;
    let (_, token) = guest(&app, device).await;
    (postgres, app, token)
}

/// While the database is down: reads are a fast 503, a write too (a new guest account), and
/// readiness says which dependency failed.
async fn database_down(app: &TestApp, token: &str, device: &str) {
    for _ in 0..4 {
        assert_unavailable(timed_get(app, "/v1/accounts/me", Some(token)).await, "database");
    }
    let started = Instant::now();
    let guest_reply = app.post("/v1/auth/guest", None, json!({"device_id": device})).await;
    assert!(started.elapsed() < HANG, "sign-up took {:?}", started.elapsed());
    assert_unavailable(guest_reply, "database");
    assert_not_ready(app, "database").await;
}

/// Once the database is back, the same server answers again, the refused write included.
async fn database_back(app: &TestApp, token: &str, device: &str) {
    until_ok(app, "/v1/accounts/me", Some(token), RECOVERY).await;
    until_ok(app, "/health/ready", None, RECOVERY).await;
    app.post("/v1/auth/guest", None, json!({"device_id": device})).await.expect(201);
}

/// Paused (`docker pause`, or a server cut off without a reset): connections stay open and
/// nothing is answered, so PostgreSQL's own statement timeout cannot act. A statement that waits
/// has the database probed beside it, and is given up once the probe finds it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_paused_is_a_fast_503_and_the_same_server_recovers() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (postgres, app, token) = on_own_postgres("pg-pause").await;
    timed_get(&app, "/v1/accounts/me", Some(&token)).await.expect(200);

    postgres.pause().expect("SIGSTOP");
    database_down(&app, &token, "device-pg-pause-new").await;
    postgres.resume().expect("SIGCONT");
    database_back(&app, &token, "device-pg-pause-new").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_requests_answers_only_200_or_503() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (postgres, app, token) = on_own_postgres("pg-restart").await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (api, token, done) = (app.api.clone(), token.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let reply = timed_get(&api, "/v1/accounts/me", Some(&token)).await;
                assert!(matches!(reply.status, 200 | 503), "{} during a restart: {}", reply.status, reply.body);
                statuses.push(reply.status);
                if reply.status == 503 {
                    assert_unavailable(reply, "database");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    postgres.restart().await.expect("pg_ctl restart");
    until_ok(&app, "/v1/accounts/me", Some(&token), RECOVERY).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut answered = 0;
    for client in clients {
        answered += client.await.expect("no client saw a 500 or a hang").len();
    }
    assert!(answered > 4, "the clients kept asking through the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_or_restarted_is_a_fast_503_and_the_same_server_recovers() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let redis = ThrowawayRedis::start().await.expect("a Redis of the test's own");
    let app = TestApp::start_with(Backend::Real, |env| {
        env.set("REDIS_URL", redis.url());
    })
    .await;
    let (_, token) = guest(&app, "redis-outage").await;
    timed_get(&app, "/v1/accounts/me", Some(&token)).await.expect(200);

    // Paused (`docker pause`): connections stay open and nothing answers.
    redis.pause().expect("SIGSTOP");
    for _ in 0..4 {
        assert_unavailable(timed_get(&app, "/v1/accounts/me", Some(&token)).await, "cache");
    }
    assert_not_ready(&app, "cache").await;
    redis.resume().expect("SIGCONT");
    until_ok(&app, "/v1/accounts/me", Some(&token), RECOVERY).await;
    until_ok(&app, "/health/ready", None, RECOVERY).await;

    // Killed and started again on the same port (empty: the session is not revoked).
    redis.stop().await.expect("Redis stops");
    assert_unavailable(timed_get(&app, "/v1/accounts/me", Some(&token)).await, "cache");
    redis.start_again().await.expect("Redis starts again");
    until_ok(&app, "/v1/accounts/me", Some(&token), RECOVERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_frames_while_redis_is_paused_get_unavailable_and_the_socket_carries_on() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let redis = ThrowawayRedis::start().await.expect("a Redis of the test's own");
    let app = TestApp::start_with(Backend::Real, |env| {
        env.set("REDIS_URL", redis.url());
    })
    .await;
    let (_, token) = guest(&app, "chat-outage").await;
    let mut chat = Chat::connect(&app.base, &token).await;
    chat.join("room:outage").await;

    redis.pause().expect("SIGSTOP");
    for _ in 0..3 {
        let started = Instant::now();
        let answer = chat.send("room:outage", "anyone there?").await;
        assert!(started.elapsed() < HANG, "the send took {:?}", started.elapsed());
        assert_eq!((answer["type"].as_str(), answer["code"].as_str()), (Some("error"), Some("unavailable")), "{answer}");
        assert_eq!(answer["message"], "the cache is unavailable; retry shortly");
    }
    redis.resume().expect("SIGCONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = chat.send("room:outage", "back again").await;
        if answer["type"] == "ack" {
            break;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(Instant::now() < deadline, "sends still fail after Redis resumed: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(chat.closed, None, "the socket stayed open through the outage");
}

/// S3 not answering: the one request path that calls it (deleting an asset: the bytes go first)
/// is a fast 503 naming the file storage, and the asset is left whole for the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_is_a_503_and_leaves_the_asset_whole() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    // Nothing listens on port 9 (discard): every S3 (and SQS) call is refused.
    let app = TestApp::start_with(Backend::Real, |env| {
        env.set("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    })
    .await;
    let (_, token) = guest(&app, "s3-outage").await;
    let ticket = app
        .post("/v1/uploads", Some(&token), json!({"purpose": "avatar", "content_type": "image/png", "size_bytes": 100}))
        .await
        .expect(201)
        .body;
    let id = ticket["asset_id"].as_str().expect("asset id");
    let started = Instant::now();
    assert_unavailable(app.call(reqwest::Method::DELETE, &format!("/v1/assets/{id}"), Some(&token), None).await, "file storage");
    // The AWS SDK retries a refused connection twice, with up to 1 s and 2 s of backoff; the
    // bound is its call timeout, well under the request timeout.
    assert!(started.elapsed() < platform::aws::CALL_TIMEOUT, "answered in {:?}", started.elapsed());
    let kept = app.get(&format!("/v1/assets/{id}"), Some(&token)).await.expect(200).body;
    assert_eq!(kept["state"], "pending", "{kept}");
}
