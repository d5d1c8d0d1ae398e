//! Redis loses everything (FLUSHALL, as after a failover to an empty replica): two processes
//! rebuild the leaderboard from PostgreSQL with identical ranks, and a logged-out session stays
//! logged out (so it does when the embedded in-memory cache is lost with its process). A test
//! binary of its own, because cargo runs test binaries one at a time, so the flush disturbs no
//! other test.

use std::time::Duration;

use crate::common::{ADMIN_KEY, Backend, Chat, TestApp, TestEnv, chat_refusal, guest_session, two_processes};
use reqwest::Method;
use serde_json::{Value, json};

async fn everything(api: &crate::common::Api) -> Vec<Value> {
    api.pages("/v1/leaderboards/flush/records?limit=100", ADMIN_KEY, "records").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_then_ranks_are_identical_on_every_process() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (env, a, b) = two_processes(|_| {}).await;
    a.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "flush", "sort": "desc", "operator": "incr"})).await.expect(201);
    for i in 0..500 {
        let api = if i % 2 == 0 { &a } else { &b };
        let body = json!({"score": (i * 37 % 101) as i64, "owner_id": format!("p{:03}", i % 250), "owner_name": "x"});
        api.post("/v1/leaderboards/flush/scores", Some(ADMIN_KEY), body).await.expect(200);
    }
    let before = everything(&a).await;
    assert_eq!(before.len(), 250);
    assert_eq!(everything(&b).await, before);

    let client = redis::Client::open(env.vars["REDIS_URL"].as_str()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("flushall");

    // Both processes ask at once; one rebuilds, the other waits for it.
    let (from_a, from_b) = tokio::join!(everything(&a), everything(&b));
    assert_eq!(from_a, before);
    assert_eq!(from_b, before);
    // The incr operator keeps counting from the durable value, not from an empty index.
    let record =
        a.post("/v1/leaderboards/flush/scores", Some(ADMIN_KEY), json!({"score": 1000, "owner_id": "p000"})).await.expect(200).body;
    let previous = before.iter().find(|r| r["owner_id"] == "p000").expect("p000")["score"].as_i64().expect("score");
    assert_eq!(record["score"], previous + 1000);
    assert_eq!(record["rank"], 1);
}

/// Two players with a record on the board `flush`; the first logs out. Their access tokens:
/// (logged out, still signed in).
async fn one_logged_out(api: &crate::common::Api) -> (String, String) {
    api.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "flush", "sort": "desc", "operator": "best"})).await.expect(201);
    let (_, gone, _) = guest_session(api, "gone").await;
    let (_, kept, _) = guest_session(api, "kept").await;
    for token in [&gone, &kept] {
        api.post("/v1/leaderboards/flush/scores", Some(token), json!({"score": 10})).await.expect(200);
    }
    api.call(Method::POST, "/v1/auth/logout", Some(&gone), None).await.expect(204);
    (gone, kept)
}

/// Checks on `api` that `gone`'s access token is refused everywhere a token is checked (an
/// accounts route, the leaderboard's pipelined check, a chat socket) while `kept`'s still works.
async fn refused_everywhere(api: &crate::common::Api, gone: &str, kept: &str) {
    api.get("/v1/accounts/me", Some(gone)).await.expect_error(401, "session_revoked");
    api.get("/v1/leaderboards/flush/records/me", Some(gone)).await.expect_error(401, "session_revoked");
    assert_eq!(chat_refusal(&api.base, gone).await, ("session_revoked".to_owned(), Some(1008)));
    api.get("/v1/accounts/me", Some(kept)).await.expect(200);
    api.get("/v1/leaderboards/flush/records/me", Some(kept)).await.expect(200);
    Chat::connect(&api.base, kept).await.close().await;
}

/// A logout, then FLUSHALL: the cache no longer holds the revocation, and says so (its set of
/// revocations has lost its completeness marker), so the instances read the database instead and
/// the logged-out token stays refused, on HTTP and on a chat socket; then one of them loads the
/// revocations back into Redis. On a Redis of the test's own, since it flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_survives_flushall() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let redis = platform::testing::ThrowawayRedis::start().await.expect("redis");
    let mut env = TestEnv::new(Backend::Real).await.expect("env");
    env.set("REDIS_URL", redis.url()).set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    let (a, b) = (TestApp::start_on(env.clone()).await, TestApp::start_on(env.clone()).await);
    let (gone, kept) = one_logged_out(&a).await;
    refused_everywhere(&b, &gone, &kept).await;

    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("flushall");
    refused_everywhere(&b, &gone, &kept).await;
    refused_everywhere(&a, &gone, &kept).await;

    // The first check that found the set incomplete started a load: Redis holds the revocation
    // again, and vouches for the whole set (so checks are back to one Redis read).
    let key = format!("{}session:revocations", env.vars["REDIS_KEY_PREFIX"]);
    let claims: Value = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(gone.split('.').nth(1).expect("claims")).expect("b64");
        serde_json::from_slice(&raw).expect("JSON")
    };
    let session = claims["sid"].as_str().expect("sid");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let scores: Vec<Option<String>> =
            redis::cmd("ZMSCORE").arg(&key).arg(session).arg("~complete").query_async(&mut conn).await.expect("ZMSCORE");
        if scores.iter().all(Option::is_some) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the revocations were not loaded back into Redis: {scores:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused_everywhere(&b, &gone, &kept).await;
}

/// The embedded in-memory cache is lost with its process: after a restart on the same folder,
/// a logged-out token is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_survives_a_restart_on_embedded_defaults() {
    let mut env = TestEnv::new(Backend::Embedded).await.expect("env");
    env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    let first = TestApp::start_on(env.clone()).await;
    let (gone, kept) = one_logged_out(&first).await;
    refused_everywhere(&first, &gone, &kept).await;
    first.stop();
    drop(first);

    let again = TestApp::start_on(env.clone()).await;
    refused_everywhere(&again, &gone, &kept).await;
    // Loaded back into memory: still refused once the cache vouches for its set again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    refused_everywhere(&again, &gone, &kept).await;
}
