//! Redis loses everything (FLUSHALL, as after a failover to an empty replica): two processes
//! rebuild the leaderboard from PostgreSQL with identical ranks. A test binary of its own, because
//! cargo runs test binaries one at a time, so the flush disturbs no other test.

mod common;

use common::{ADMIN_KEY, two_processes};
use serde_json::{Value, json};

async fn everything(api: &common::Api) -> Vec<Value> {
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
