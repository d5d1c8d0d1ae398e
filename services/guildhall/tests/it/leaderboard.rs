//! The leaderboard API over HTTP, on the embedded backends and on PostgreSQL + Redis.

use crate::common::{ADMIN_KEY, Api, Backend, TestApp, audit, deliver_late, eventually, guest, make_friends, server_key};
use serde_json::{Value, json};

on_both_backends!(
    operators_apply_on_desc_and_asc_boards,
    ties_go_to_the_earlier_record,
    ten_thousand_records_page_without_gaps_or_repeats,
    around_me_stays_full_at_the_top_and_the_bottom,
    bad_submissions_and_unknown_boards_are_refused,
    authoritative_boards_take_scores_from_the_server_only,
    friends_lists_and_me_agree_with_the_top_list,
    a_lost_index_is_rebuilt_with_identical_ranks,
    a_deleted_account_leaves_every_board,
    a_logged_out_session_reads_no_rank,
    simultaneous_submissions_of_one_player_all_count,
    batches_of_set_and_best_submissions_keep_each_rule,
    a_retried_submission_counts_once,
    operators_list_change_and_delete_boards,
    a_deleted_record_leaves_ranks_right,
    friends_records_are_the_player_and_their_friends,
    a_board_deleted_under_a_batch_refuses_only_its_own_submissions,
    the_index_takes_a_batch_as_it_would_take_its_entries_one_by_one,
);

async fn start(backend: Backend) -> TestApp {
    TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await
}

async fn create_board(api: &Api, body: Value) -> Value {
    api.post("/v1/admin/leaderboards", Some(ADMIN_KEY), body).await.expect(201).body
}

async fn submit(api: &Api, board: &str, token: &str, body: Value) -> Value {
    api.post(&format!("/v1/leaderboards/{board}/scores"), Some(token), body).await.expect(200).body
}

/// Submits `score` for `owner` with the server key.
async fn server_submit(api: &Api, board: &str, owner: &str, score: i64) -> Value {
    submit(api, board, ADMIN_KEY, json!({"score": score, "owner_id": owner, "owner_name": owner})).await
}

/// Every record of the board, page by page.
async fn all_records(api: &Api, board: &str, token: &str, limit: usize) -> Vec<Value> {
    api.pages(&format!("/v1/leaderboards/{board}/records?limit={limit}"), token, "records").await
}

async fn operators_apply_on_desc_and_asc_boards(backend: Backend) {
    let app = start(backend).await;
    let (_, ana) = guest(&app, "ana").await;
    let (_, bob) = guest(&app, "bob").await;
    for (id, sort, operator) in [
        ("best-desc", "desc", "best"),
        ("best-asc", "asc", "best"),
        ("set", "desc", "set"),
        ("incr", "desc", "incr"),
        ("decr", "desc", "decr"),
    ] {
        let board = create_board(&app, json!({"id": id, "sort": sort, "operator": operator})).await;
        assert_eq!(board["season"]["number"], 1);
    }
    let score = |b: &Value| (b["score"].as_i64().expect("score"), b["rank"].as_u64().expect("rank"));

    assert_eq!(score(&submit(&app, "best-desc", &ana, json!({"score": 50})).await), (50, 1));
    assert_eq!(score(&submit(&app, "best-desc", &ana, json!({"score": 40})).await), (50, 1), "a worse score is ignored");
    assert_eq!(score(&submit(&app, "best-desc", &bob, json!({"score": 60})).await), (60, 1));
    assert_eq!(score(&submit(&app, "best-desc", &ana, json!({"score": 70})).await), (70, 1));
    assert_eq!(app.get("/v1/leaderboards/best-desc/records/me", Some(&bob)).await.expect(200).body["rank"], 2);

    assert_eq!(score(&submit(&app, "best-asc", &ana, json!({"score": 50})).await), (50, 1));
    assert_eq!(score(&submit(&app, "best-asc", &ana, json!({"score": 60})).await), (50, 1));
    assert_eq!(score(&submit(&app, "best-asc", &bob, json!({"score": 45})).await), (45, 1));
    assert_eq!(app.get("/v1/leaderboards/best-asc/records/me", Some(&ana)).await.expect(200).body["rank"], 2);

    assert_eq!(score(&submit(&app, "set", &ana, json!({"score": 50})).await), (50, 1));
    assert_eq!(score(&submit(&app, "set", &ana, json!({"score": 10})).await), (10, 1), "set replaces, even with worse");

    assert_eq!(score(&submit(&app, "incr", &ana, json!({"score": 5})).await), (5, 1));
    assert_eq!(score(&submit(&app, "incr", &ana, json!({"score": 7})).await), (12, 1));
    assert_eq!(score(&submit(&app, "incr", &bob, json!({"score": 20})).await), (20, 1));
    assert_eq!(app.get("/v1/leaderboards/incr/records/me", Some(&ana)).await.expect(200).body["score"], 12);

    assert_eq!(score(&submit(&app, "decr", &ana, json!({"score": 5})).await), (-5, 1));
    assert_eq!(score(&submit(&app, "decr", &ana, json!({"score": 5})).await), (-10, 1));

    // Metadata is kept with the record and shown in lists; the name comes from the token.
    submit(&app, "set", &bob, json!({"score": 99, "metadata": {"car": "red"}})).await;
    let top = app.get("/v1/leaderboards/set/records", Some(&ana)).await.expect(200).body;
    assert_eq!(top["records"][0]["metadata"]["car"], "red");
    assert!(top["records"][0]["name"].as_str().expect("name").starts_with("guest_"));
    assert!(top["next_cursor"].is_null());
}

async fn ties_go_to_the_earlier_record(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "ties", "sort": "desc", "operator": "best"})).await;
    let (first, first_token) = guest(&app, "first").await;
    let (second, _) = guest(&app, "second").await;
    submit(&app, "ties", &first_token, json!({"score": 100})).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let late = server_submit(&app, "ties", &second, 100).await;
    assert_eq!(late["rank"], 2, "the later equal score ranks below");
    let top = app.get("/v1/leaderboards/ties/records", Some(&first_token)).await.expect(200).body;
    assert_eq!(top["records"][0]["owner_id"], first.as_str());
    assert_eq!(top["records"][1]["owner_id"], second.as_str());
    // A higher subscore beats the earlier record.
    let better = submit(&app, "ties", ADMIN_KEY, json!({"score": 100, "subscore": 1, "owner_id": second})).await;
    assert_eq!(better["rank"], 1);
}

async fn ten_thousand_records_page_without_gaps_or_repeats(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "big", "sort": "desc", "operator": "set"})).await;
    const N: usize = 10_000;
    // 32 submissions in flight; scores repeat (i % 997) so that ties span pages.
    let mut pending = futures_like::Pending::new();
    for i in 0..N {
        let api = app.api.clone();
        pending.push(tokio::spawn(async move { server_submit(&api, "big", &format!("p{i:05}"), (i % 997) as i64).await }));
        if pending.len() >= 32 {
            pending.drain_one().await;
        }
    }
    pending.drain_all().await;

    let records = all_records(&app, "big", ADMIN_KEY, 100).await;
    assert_eq!(records.len(), N);
    let mut owners: Vec<&str> = records.iter().map(|r| r["owner_id"].as_str().expect("owner")).collect();
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["rank"], i as u64 + 1, "ranks run 1..N without gaps");
    }
    for pair in records.windows(2) {
        let (a, b) = (pair[0]["score"].as_i64().expect("score"), pair[1]["score"].as_i64().expect("score"));
        assert!(a >= b, "scores descend: {a} then {b}");
        if a == b {
            assert!(pair[0]["updated_at"].as_str() <= pair[1]["updated_at"].as_str(), "ties go to the earlier record");
        }
    }
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners.len(), N, "no owner appears twice");
    // A different page size walks the same order.
    let by_250 = all_records(&app, "big", ADMIN_KEY, 99).await;
    let same: Vec<&Value> = by_250.iter().map(|r| &r["owner_id"]).collect();
    assert_eq!(same, records.iter().map(|r| &r["owner_id"]).collect::<Vec<_>>());
}

async fn around_me_stays_full_at_the_top_and_the_bottom(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "around", "sort": "desc", "operator": "set"})).await;
    let (me, token) = guest(&app, "me").await;
    for i in 0..25 {
        server_submit(&app, "around", &format!("other{i:02}"), 100 + i).await;
    }
    let ranks =
        |page: &Value| page["records"].as_array().expect("records").iter().map(|r| r["rank"].as_u64().expect("rank")).collect::<Vec<_>>();
    let around = |limit: u32| {
        let path = format!("/v1/leaderboards/around/around/me?limit={limit}");
        let (api, token) = (app.api.clone(), token.clone());
        async move { api.get(&path, Some(&token)).await }
    };
    assert!(around(5).await.expect(200).body["records"].as_array().expect("records").is_empty(), "no record yet");

    submit(&app, "around", &token, json!({"score": 1000})).await;
    let top = around(5).await.expect(200).body;
    assert_eq!(ranks(&top), [1, 2, 3, 4, 5]);
    assert_eq!(top["records"][0]["owner_id"], me.as_str());

    submit(&app, "around", &token, json!({"score": 0})).await;
    let bottom = around(5).await.expect(200).body;
    assert_eq!(ranks(&bottom), [22, 23, 24, 25, 26]);
    assert_eq!(bottom["records"][4]["owner_id"], me.as_str());

    submit(&app, "around", &token, json!({"score": 112})).await;
    let middle = around(5).await.expect(200).body;
    let me_rank = app.get("/v1/leaderboards/around/records/me", Some(&token)).await.expect(200).body["rank"].as_u64().expect("rank");
    assert_eq!(ranks(&middle), (me_rank - 2..=me_rank + 2).collect::<Vec<_>>());
    assert_eq!(middle["records"][2]["owner_id"], me.as_str());
    assert_eq!(ranks(&around(100).await.expect(200).body).len(), 26);
    around(0).await.expect_error(400, "invalid_request");
    around(101).await.expect_error(400, "invalid_request");
}

async fn bad_submissions_and_unknown_boards_are_refused(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "bounded", "sort": "desc", "operator": "incr", "min_score": 0, "max_score": 100})).await;
    let (_, token) = guest(&app, "p").await;
    let post = |body: Value| app.post("/v1/leaderboards/bounded/scores", Some(&token), body);
    let field = |reply: crate::common::Reply| reply.expect_error(400, "invalid_request").body["error"]["field"].clone();
    assert_eq!(field(post(json!({"score": 101})).await), "score");
    assert_eq!(field(post(json!({"score": -1})).await), "score");
    submit(&app, "bounded", &token, json!({"score": 90})).await;
    assert_eq!(field(post(json!({"score": 11})).await), "score", "incr past the bound");
    assert_eq!(app.get("/v1/leaderboards/bounded/records/me", Some(&token)).await.expect(200).body["score"], 90, "nothing half-written");
    assert_eq!(field(post(json!({"score": "ten"})).await), "score");
    assert_eq!(field(post(json!({"score": 1.5})).await), "score");
    assert_eq!(field(post(json!({"score": 1, "metadata": {"blob": "x".repeat(3000)}})).await), "metadata");
    assert_eq!(field(post(json!({"score": 1, "metadata": [1, 2]})).await), "metadata");
    assert_eq!(field(post(json!({"score": 1, "owner_id": "someone-else"})).await), "owner_id");
    assert_eq!(field(post(json!({"score": 1, "extra": true})).await), "extra");
    post(json!({"score": 1})).await.expect(200);

    app.post("/v1/leaderboards/nope/scores", Some(&token), json!({"score": 1})).await.expect_error(404, "not_found");
    app.get("/v1/leaderboards/nope/records", Some(&token)).await.expect_error(404, "not_found");
    app.get("/v1/leaderboards/NOPE!/records", Some(&token)).await.expect_error(404, "not_found");
    app.get("/v1/leaderboards/bounded/records", None).await.expect_error(401, "missing_token");
    app.get("/v1/leaderboards/bounded/records?limit=0", Some(&token)).await.expect_error(400, "invalid_request");
    app.get("/v1/leaderboards/bounded/records?limit=500", Some(&token)).await.expect_error(400, "invalid_request");
    app.get("/v1/leaderboards/bounded/records?cursor=garbage", Some(&token)).await.expect_error(400, "invalid_request");
    app.get("/v1/leaderboards/bounded/records/me", Some(ADMIN_KEY)).await.expect_error(401, "invalid_token");

    // The admin API wants the server key, and valid boards.
    let board = json!({"id": "x", "sort": "desc", "operator": "best"});
    app.post("/v1/admin/leaderboards", Some(&token), board.clone()).await.expect_error(401, "invalid_token");
    app.post("/v1/admin/leaderboards", None, board.clone()).await.expect_error(401, "missing_token");
    create_board(&app, board.clone()).await;
    app.post("/v1/admin/leaderboards", Some(ADMIN_KEY), board).await.expect_error(409, "board_exists");
    for (body, field) in [
        (json!({"id": "Bad Id", "sort": "desc", "operator": "best"}), "id"),
        (json!({"id": "y", "sort": "up", "operator": "best"}), "sort"),
        (json!({"id": "y", "sort": "desc", "operator": "max"}), "operator"),
        (json!({"id": "y", "sort": "desc", "operator": "best", "min_score": 5, "max_score": 1}), "min_score"),
    ] {
        let reply = app.post("/v1/admin/leaderboards", Some(ADMIN_KEY), body).await.expect_error(400, "invalid_request");
        assert_eq!(reply.body["error"]["field"], field);
    }

    // Without a configured server key the admin API is off.
    let no_admin = TestApp::start(backend).await;
    no_admin
        .post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "z", "sort": "desc", "operator": "best"}))
        .await
        .expect_error(403, "forbidden");
}

async fn authoritative_boards_take_scores_from_the_server_only(backend: Backend) {
    let app = start(backend).await;
    let board = create_board(&app, json!({"id": "ranked", "sort": "desc", "operator": "best", "authoritative": true})).await;
    assert_eq!(board["authoritative"], true);
    let (me, token) = guest(&app, "p").await;
    app.post("/v1/leaderboards/ranked/scores", Some(&token), json!({"score": 10})).await.expect_error(403, "forbidden");
    let record = submit(&app, "ranked", ADMIN_KEY, json!({"score": 10, "owner_id": me, "owner_name": "Pat"})).await;
    assert_eq!((record["rank"].as_u64(), record["name"].as_str()), (Some(1), Some("Pat")));
    let mine = app.get("/v1/leaderboards/ranked/records/me", Some(&token)).await.expect(200).body;
    assert_eq!(mine["score"], 10);
    app.post("/v1/leaderboards/ranked/scores", Some(ADMIN_KEY), json!({"score": 10})).await.expect_error(400, "invalid_request");
    let shown = app.get("/v1/leaderboards/ranked", Some(&token)).await.expect(200).body;
    assert_eq!(shown["operator"], "best");
}

async fn friends_lists_and_me_agree_with_the_top_list(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "friends", "sort": "asc", "operator": "best"})).await;
    let (me, token) = guest(&app, "me").await;
    for i in 0..10 {
        server_submit(&app, "friends", &format!("f{i}"), 50 - i).await;
    }
    submit(&app, "friends", &token, json!({"score": 45})).await;
    let top = all_records(&app, "friends", &token, 3).await;
    let rank_in_top = |owner: &str| top.iter().find(|r| r["owner_id"] == owner).map(|r| r["rank"].clone()).expect("listed");
    let mine = app.get("/v1/leaderboards/friends/records/me", Some(&token)).await.expect(200).body;
    assert_eq!(mine["rank"], rank_in_top(&me));
    let listed = app.get(&format!("/v1/leaderboards/friends/records?owner_ids=f1,{me},f7,unknown,f1"), Some(&token)).await.expect(200).body;
    let records = listed["records"].as_array().expect("records");
    assert_eq!(records.len(), 3, "unknown owners are skipped, repeats collapse");
    for record in records {
        assert_eq!(record["rank"], rank_in_top(record["owner_id"].as_str().expect("owner")));
    }
    assert!(records.windows(2).all(|w| w[0]["rank"].as_u64() < w[1]["rank"].as_u64()), "ordered by rank");
    let too_many = (0..101).map(|i| format!("o{i}")).collect::<Vec<_>>().join(",");
    app.get(&format!("/v1/leaderboards/friends/records?owner_ids={too_many}"), Some(&token)).await.expect_error(400, "invalid_request");
    let (_, stranger) = guest(&app, "stranger").await;
    app.get("/v1/leaderboards/friends/records/me", Some(&stranger)).await.expect_error(404, "not_found");
}

async fn a_lost_index_is_rebuilt_with_identical_ranks(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "durable", "sort": "desc", "operator": "best"})).await;
    for i in 0..300 {
        server_submit(&app, "durable", &format!("p{i:03}"), (i * 7 % 50) as i64).await;
    }
    let before = all_records(&app, "durable", ADMIN_KEY, 100).await;
    assert_eq!(before.len(), 300);

    if backend == Backend::Real {
        // Redis loses everything of this deployment (the test's key prefix: other tests share
        // the server, so a real FLUSHALL would disturb them).
        let prefix = app.env.vars["REDIS_KEY_PREFIX"].clone();
        let client = redis::Client::open(app.env.vars["REDIS_URL"].as_str()).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.expect("keys");
        assert!(keys.iter().any(|k| k.contains("lb:{durable:1}:z")), "the board lives in Redis: {keys:?}");
        let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.expect("del");
        let after = all_records(&app, "durable", ADMIN_KEY, 100).await;
        assert_eq!(after, before, "rebuilt from the database on first use");
        // Submissions after the loss rank against the rebuilt board.
        let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.expect("del");
        let record = server_submit(&app, "durable", "newcomer", 1000).await;
        assert_eq!(record["rank"], 1);
        assert_eq!(all_records(&app, "durable", ADMIN_KEY, 100).await.len(), 301);
    } else {
        // The embedded index lives in the process: a restart on the same SQLite file loses it.
        app.stop();
        let restarted = TestApp::start_on(app.env.clone()).await;
        let after = all_records(&restarted, "durable", ADMIN_KEY, 100).await;
        assert_eq!(after, before, "rebuilt from the database on first use");
    }
}

/// A tiny bounded set of spawned tasks, so the 10,000-record test keeps 32 requests in flight.
mod futures_like {
    use std::collections::VecDeque;

    use tokio::task::JoinHandle;

    pub struct Pending<T>(VecDeque<JoinHandle<T>>);

    impl<T> Pending<T> {
        pub fn new() -> Self {
            Pending(VecDeque::new())
        }
        pub fn push(&mut self, handle: JoinHandle<T>) {
            self.0.push_back(handle);
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
        pub async fn drain_one(&mut self) {
            if let Some(handle) = self.0.pop_front() {
                handle.await.expect("task");
            }
        }
        pub async fn drain_all(&mut self) {
            while !self.0.is_empty() {
                self.drain_one().await;
            }
        }
    }
}

async fn a_deleted_account_leaves_every_board(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "one", "sort": "desc", "operator": "best"})).await;
    create_board(&app, json!({"id": "two", "sort": "asc", "operator": "set"})).await;
    let (gone, token) = guest(&app, "leaving").await;
    let (stays, other) = guest(&app, "staying").await;
    for board in ["one", "two"] {
        submit(&app, board, &token, json!({"score": 10})).await;
        submit(&app, board, &other, json!({"score": 20})).await;
    }
    app.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&token), None).await.expect(204);

    // The relay delivers account.deleted to the leaderboard, which erases the records.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let listed = app.get(&format!("/v1/leaderboards/one/records?owner_ids={gone},{stays}"), Some(ADMIN_KEY)).await.expect(200).body;
        if listed["records"].as_array().expect("records").len() == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the deleted player's record is still listed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for board in ["one", "two"] {
        let top = app.get(&format!("/v1/leaderboards/{board}/records"), Some(ADMIN_KEY)).await.expect(200).body;
        let owners: Vec<&str> =
            top["records"].as_array().expect("records").iter().map(|r| r["owner_id"].as_str().expect("owner")).collect();
        assert_eq!(owners, [stays.as_str()], "{board}");
        assert_eq!(top["records"][0]["rank"], 1);
    }
    let db = app.database().await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leaderboard_records WHERE owner_id = $1")
        .bind(&gone)
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(left, 0);
    // Marked sent: at once after the handlers in process; on SQS once every queue took it, which
    // may be a moment after the leaderboard's consumer already handled it.
    eventually(std::time::Duration::from_secs(10), "the event marked sent", || {
        let db = &db;
        async move {
            let sent: Option<i64> = sqlx::query_scalar("SELECT sent_at FROM outbox WHERE event_type = 'account.deleted'")
                .fetch_one(db.pool())
                .await
                .expect("outbox");
            sent.is_some()
        }
    })
    .await;
}

/// The rank read checks the session's revocation in the same round trip as the rank (on Redis):
/// a logged-out token reads nothing, on this instance or another.
async fn a_logged_out_session_reads_no_rank(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "after-logout", "sort": "desc", "operator": "best"})).await;
    let (_, token) = guest(&app, "leaver").await;
    submit(&app, "after-logout", &token, json!({"score": 42})).await;
    let mine = app.get("/v1/leaderboards/after-logout/records/me", Some(&token)).await.expect(200).body;
    assert_eq!((mine["score"].as_i64(), mine["rank"].as_i64()), (Some(42), Some(1)));
    // Another instance on the same backends, warmed with this token.
    let other = if backend == Backend::Real { Some(TestApp::start_on(app.env.clone()).await) } else { None };
    if let Some(other) = &other {
        other.get("/v1/leaderboards/after-logout/records/me", Some(&token)).await.expect(200);
    }
    app.call(reqwest::Method::POST, "/v1/auth/logout", Some(&token), None).await.expect(204);
    app.get("/v1/leaderboards/after-logout/records/me", Some(&token)).await.expect_error(401, "session_revoked");
    if let Some(other) = &other {
        other.get("/v1/leaderboards/after-logout/records/me", Some(&token)).await.expect_error(401, "session_revoked");
    }
    // A token from a new session still reads it.
    let pair = app.post("/v1/auth/guest", None, json!({"device_id": "device-leaver"})).await.expect(200).body;
    let again = pair["access_token"].as_str().expect("token").to_owned();
    app.get("/v1/leaderboards/after-logout/records/me", Some(&again)).await.expect(200);
    // After Redis forgot its scripts, the pipelined read loads the script again.
    if backend == Backend::Real {
        let mut redis = redis::Client::open(app.env.vars["REDIS_URL"].as_str())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut redis).await.expect("script flush");
        let mine = app.get("/v1/leaderboards/after-logout/records/me", Some(&again)).await.expect(200).body;
        assert_eq!(mine["rank"], 1);
    }
}

/// Forty `+1`s of one player at once (and ten of another), on a board capped at 30: the writer commits them in
/// batches, each applied on top of the one before, so the accepted ones read 1 to 30 exactly once,
/// the ten over the cap are refused alone, and nothing else in their batch is lost.
async fn simultaneous_submissions_of_one_player_all_count(backend: Backend) {
    let app = start(backend).await;
    let (_, ana) = guest(&app, "ana").await;
    let (_, bob) = guest(&app, "bob").await;
    create_board(&app, json!({"id": "clicks", "sort": "desc", "operator": "incr", "max_score": 30})).await;
    let replies = futures_util::future::join_all((0..50).map(|n| {
        // Bob's submissions ride in the same batches as Ana's.
        let token = if n % 5 == 0 { &bob } else { &ana };
        app.post("/v1/leaderboards/clicks/scores", Some(token), json!({"score": 1}))
    }))
    .await;
    let (mut ana_scores, mut bob_scores, mut refused) = (Vec::new(), Vec::new(), 0);
    for (n, reply) in replies.into_iter().enumerate() {
        if reply.status == 400 {
            assert_eq!(reply.expect_error(400, "invalid_request").body["error"]["field"], "score");
            refused += 1;
            continue;
        }
        let score = reply.expect(200).body["score"].as_i64().expect("score");
        if n % 5 == 0 { bob_scores.push(score) } else { ana_scores.push(score) }
    }
    ana_scores.sort_unstable();
    bob_scores.sort_unstable();
    assert_eq!(ana_scores, (1..=30).collect::<Vec<_>>(), "every accepted +1 counted once, in turn");
    assert_eq!(refused, 10, "Ana's ten over the cap");
    assert_eq!(bob_scores, (1..=10).collect::<Vec<_>>());
    let me = app.get("/v1/leaderboards/clicks/records/me", Some(&ana)).await.expect(200).body;
    assert_eq!((me["score"].as_i64(), me["rank"].as_u64()), (Some(30), Some(1)));
    let me = app.get("/v1/leaderboards/clicks/records/me", Some(&bob)).await.expect(200).body;
    assert_eq!((me["score"].as_i64(), me["rank"].as_u64()), (Some(10), Some(2)));
}

/// Submits every body to `board` at once with the server key; the answers in order.
async fn all_at_once(api: &Api, board: &str, bodies: Vec<Value>) -> Vec<Value> {
    let path = format!("/v1/leaderboards/{board}/scores");
    let replies = futures_util::future::join_all(bodies.into_iter().map(|body| api.post(&path, Some(ADMIN_KEY), body))).await;
    replies.into_iter().map(|reply| reply.expect(200).body).collect()
}

/// Twenty players' submissions at once on a `set` and a `best` board: the writer takes them in
/// batches (one upsert each), and the rules of one submission at a time hold within them: `set`
/// replaces the score and keeps the metadata a submission leaves out, `best` keeps the better
/// record with its metadata, and each answer is its own player's record.
async fn batches_of_set_and_best_submissions_keep_each_rule(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "level", "sort": "desc", "operator": "set"})).await;
    create_board(&app, json!({"id": "laps", "sort": "asc", "operator": "best"})).await;
    let owners: Vec<String> = (0..20).map(|p| format!("player-{p}")).collect();
    let body = |owner: &str, score: usize, metadata: Option<Value>| {
        let mut body = json!({"score": score, "owner_id": owner, "owner_name": owner});
        if let Some(metadata) = metadata {
            body["metadata"] = metadata;
        }
        body
    };
    let seen = |answers: &[Value]| -> Vec<(String, i64, Value)> {
        answers
            .iter()
            .map(|a| (a["owner_id"].as_str().expect("owner").to_owned(), a["score"].as_i64().expect("score"), a["metadata"].clone()))
            .collect()
    };

    let first = all_at_once(&app, "level", owners.iter().enumerate().map(|(p, o)| body(o, p, Some(json!({"n": p})))).collect()).await;
    let expected: Vec<_> = owners.iter().enumerate().map(|(p, o)| (o.clone(), p as i64, json!({"n": p}))).collect();
    assert_eq!(seen(&first), expected);
    let second = all_at_once(&app, "level", owners.iter().enumerate().map(|(p, o)| body(o, 100 + p, None)).collect()).await;
    let expected: Vec<_> = owners.iter().enumerate().map(|(p, o)| (o.clone(), 100 + p as i64, json!({"n": p}))).collect();
    assert_eq!(seen(&second), expected, "set replaces the score and keeps the metadata left out");
    let mut listed = seen(&all_records(&app, "level", ADMIN_KEY, 100).await);
    listed.reverse();
    assert_eq!(listed, expected);

    let first =
        all_at_once(&app, "laps", owners.iter().enumerate().map(|(p, o)| body(o, 1000 + p, Some(json!({"lap": 1})))).collect()).await;
    assert!(first.iter().all(|a| a["metadata"] == json!({"lap": 1})));
    // Even players improve (lower is better here), odd ones do not.
    let times = |p: usize| if p.is_multiple_of(2) { 500 + p } else { 2000 + p };
    let second =
        all_at_once(&app, "laps", owners.iter().enumerate().map(|(p, o)| body(o, times(p), Some(json!({"lap": 2})))).collect()).await;
    let expected: Vec<_> = owners
        .iter()
        .enumerate()
        .map(|(p, o)| {
            if p.is_multiple_of(2) {
                (o.clone(), (500 + p) as i64, json!({"lap": 2}))
            } else {
                (o.clone(), (1000 + p) as i64, json!({"lap": 1}))
            }
        })
        .collect();
    assert_eq!(seen(&second), expected, "best keeps the better record, metadata and all");
    let mut listed = seen(&all_records(&app, "laps", ADMIN_KEY, 100).await);
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = expected;
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(listed, expected);
}

/// Two processes take a 30 and a 20 for the same player of a `best` board at once, both better
/// than the 10 the index holds, so both reach a writer: the one that commits second meets the
/// other's record, and when that is the 30, the 20 is answered with the 30 as it stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_keep_the_better_of_racing_best_submissions() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (_env, a, b) = crate::common::two_processes(|_| {}).await;
    create_board(&a, json!({"id": "race", "sort": "desc", "operator": "best"})).await;
    for round in 0..10 {
        let owners: Vec<String> = (0..10).map(|p| format!("racer-{round}-{p}")).collect();
        all_at_once(&a, "race", owners.iter().map(|o| json!({"score": 10, "owner_id": o, "owner_name": o})).collect()).await;
        let path = "/v1/leaderboards/race/scores";
        let sends = owners.iter().flat_map(|o| {
            [
                a.post(path, Some(ADMIN_KEY), json!({"score": 30, "owner_id": o, "owner_name": o})),
                b.post(path, Some(ADMIN_KEY), json!({"score": 20, "owner_id": o, "owner_name": o})),
            ]
        });
        let answers: Vec<Value> = futures_util::future::join_all(sends).await.into_iter().map(|r| r.expect(200).body).collect();
        for pair in answers.chunks(2) {
            let (thirty, twenty) = (&pair[0], &pair[1]);
            assert_eq!(thirty["score"], 30, "round {round}: {thirty}");
            let kept = twenty["score"] == 30 && twenty["updated_at"] == thirty["updated_at"];
            assert!(twenty["score"] == 20 || kept, "round {round}: the 20 is its own record or the 30 as it stands: {twenty} {thirty}");
        }
        for o in &owners {
            let listed = a.get(&format!("/v1/leaderboards/race/records?owner_ids={o}"), Some(ADMIN_KEY)).await.expect(200).body;
            assert_eq!(listed["records"][0]["score"], 30, "round {round}: {o}");
        }
    }
}

/// Two processes on one PostgreSQL take the first submissions of the same new players at the same
/// moment: each process's writer means to insert the record, one of them finds it inserted under
/// it and runs its batch again on top of it, so no submission is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_lose_no_first_submission() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (_env, a, b) = crate::common::two_processes(|_| {}).await;
    create_board(&a, json!({"id": "shared-clicks", "sort": "desc", "operator": "incr"})).await;
    for round in 0..20 {
        let owners: Vec<String> = (0..10).map(|p| format!("player-{round}-{p}")).collect();
        let sends = owners.iter().flat_map(|owner| (0..6).map(move |k| (owner, k))).map(|(owner, k)| {
            let api = if k % 2 == 0 { &*a } else { &*b };
            api.post("/v1/leaderboards/shared-clicks/scores", Some(ADMIN_KEY), json!({"score": 1, "owner_id": owner, "owner_name": owner}))
        });
        let replies = futures_util::future::join_all(sends).await;
        let mut scores: std::collections::BTreeMap<String, Vec<i64>> = std::collections::BTreeMap::new();
        for reply in replies {
            let body = reply.expect(200).body;
            let owner = body["owner_id"].as_str().expect("owner").to_owned();
            scores.entry(owner).or_default().push(body["score"].as_i64().expect("score"));
        }
        for owner in &owners {
            let mut seen = scores.remove(owner).expect("answers for every owner");
            seen.sort_unstable();
            assert_eq!(seen, (1..=6).collect::<Vec<_>>(), "round {round}: {owner}'s six +1s each counted once");
        }
    }
    let top = all_records(&b, "shared-clicks", ADMIN_KEY, 100).await;
    assert_eq!(top.len(), 200);
    assert!(top.iter().all(|r| r["score"] == 6), "{top:?}");

    // Copies of one retry (same Idempotency-Key) reaching both processes at once apply once,
    // for a player without a record (odd rounds) and one with (even rounds).
    for round in 0..10 {
        let owner = format!("retrying-{round}");
        let before = if round % 2 == 0 {
            server_submit(&a, "shared-clicks", &owner, 1).await;
            1
        } else {
            0
        };
        let sends = (0..6).map(|k| {
            let api = if k % 2 == 0 { &*a } else { &*b };
            let request = api
                .client
                .post(format!("{}/v1/leaderboards/shared-clicks/scores", api.base))
                .bearer_auth(ADMIN_KEY)
                .header("idempotency-key", "retry-1")
                .json(&json!({"score": 1, "owner_id": owner, "owner_name": owner}));
            async move { Api::reply(request.send().await.expect("sent")).await }
        });
        let answers: Vec<Value> =
            futures_util::future::join_all(sends).await.into_iter().map(|r| r.expect(200).body["score"].clone()).collect();
        assert_eq!(answers, vec![json!(before + 1); 6], "round {round}");
    }
}

/// `POST .../scores` with `Idempotency-Key`.
async fn submit_with_key(api: &Api, board: &str, token: &str, key: &str, score: i64) -> crate::common::Reply {
    let request = api
        .client
        .post(format!("{}/v1/leaderboards/{board}/scores", api.base))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({"score": score}));
    Api::reply(request.send().await.expect("sent")).await
}

/// A retry with the same `Idempotency-Key` gets the first answer and is not applied again, even
/// when both tries arrive at once; keys are the player's own and per board; bad keys are refused.
async fn a_retried_submission_counts_once(backend: Backend) {
    let app = start(backend).await;
    let (_, ana) = guest(&app, "ana").await;
    let (_, bob) = guest(&app, "bob").await;
    create_board(&app, json!({"id": "kills", "sort": "desc", "operator": "incr"})).await;
    create_board(&app, json!({"id": "deaths", "sort": "desc", "operator": "incr"})).await;
    let score = |reply: crate::common::Reply| reply.expect(200).body["score"].as_i64().expect("score");

    assert_eq!(score(submit_with_key(&app, "kills", &ana, "match-1", 5).await), 5);
    let again = submit_with_key(&app, "kills", &ana, "match-1", 5).await.expect(200).body;
    assert_eq!((again["score"].as_i64(), again["rank"].as_u64()), (Some(5), Some(1)), "the first answer, applied once");
    assert_eq!(score(submit_with_key(&app, "kills", &ana, "match-2", 3).await), 8, "a new key applies");
    // The first answer stays the answer to its key, whatever came after.
    assert_eq!(score(submit_with_key(&app, "kills", &ana, "match-1", 5).await), 5);
    // Another player's key, and the same key on another board, are not the same submission.
    assert_eq!(score(submit_with_key(&app, "kills", &bob, "match-1", 4).await), 4);
    assert_eq!(score(submit_with_key(&app, "deaths", &ana, "match-1", 1).await), 1);

    // Five copies of one retry at the same moment: one applies, all get its answer.
    let copies = futures_util::future::join_all((0..5).map(|_| submit_with_key(&app, "kills", &ana, "match-3", 10))).await;
    let answers: Vec<i64> = copies.into_iter().map(score).collect();
    assert_eq!(answers, [18; 5]);
    let me = app.get("/v1/leaderboards/kills/records/me", Some(&ana)).await.expect(200).body;
    assert_eq!(me["score"], 18);

    for bad in ["", "has space", &"k".repeat(65)] {
        let reply = submit_with_key(&app, "kills", &ana, bad, 1).await.expect_error(400, "invalid_request");
        assert_eq!(reply.body["error"]["field"], "Idempotency-Key");
    }
    let me = app.get("/v1/leaderboards/kills/records/me", Some(&ana)).await.expect(200).body;
    assert_eq!(me["score"], 18, "refused submissions changed nothing");
}

fn ids(page: &Value, list: &str, field: &str) -> Vec<String> {
    page[list].as_array().expect("list").iter().map(|v| v[field].as_str().expect("field").to_owned()).collect()
}

/// Boards are listed to players and keys alike; operators change their bounds, reset and
/// authority, and delete them, each with the `leaderboards` scope and an audit entry.
async fn operators_list_change_and_delete_boards(backend: Backend) {
    let app = start(backend).await;
    let (_, ana) = guest(&app, "ana").await;
    let (boards_id, boards) = server_key(&app, "boards", &["leaderboards"]).await;
    let (_, game) = server_key(&app, "game", &["game_server"]).await;
    for id in ["weekly", "arena", "laps"] {
        let body = json!({"id": id, "sort": "desc", "operator": "best"});
        app.post("/v1/admin/leaderboards", Some(&game), body.clone()).await.expect_error(403, "insufficient_scope");
        app.post("/v1/admin/leaderboards", Some(&boards), body).await.expect(201);
    }
    let first = app.get("/v1/leaderboards?limit=2", Some(&ana)).await.expect(200).body;
    assert_eq!(ids(&first, "boards", "id"), ["arena", "laps"]);
    let listed: Vec<String> =
        app.pages("/v1/leaderboards?limit=2", &ana, "boards").await.iter().map(|b| b["id"].as_str().expect("id").to_owned()).collect();
    assert_eq!(listed, ["arena", "laps", "weekly"]);
    assert_eq!(app.pages("/v1/leaderboards?limit=100", &game, "boards").await.len(), 3, "keys list them too");
    app.get("/v1/leaderboards", None).await.expect_error(401, "missing_token");
    app.get("/v1/leaderboards?cursor=Not%20a%20board", Some(&ana)).await.expect_error(400, "invalid_request");

    // Bounds hold from now on; `null` clears one.
    let path = "/v1/admin/leaderboards/arena";
    app.patch(path, Some(&game), json!({"max_score": 100})).await.expect_error(403, "insufficient_scope");
    let changed = app.patch(path, Some(&boards), json!({"max_score": 100})).await.expect(200).body;
    assert_eq!((changed["max_score"].as_i64(), changed["min_score"].as_i64()), (Some(100), None));
    app.post("/v1/leaderboards/arena/scores", Some(&ana), json!({"score": 150})).await.expect_error(400, "invalid_request");
    app.patch(path, Some(&boards), json!({"min_score": 200})).await.expect_error(400, "invalid_request");
    app.patch(path, Some(&boards), json!({"max_score": null})).await.expect(200);
    assert_eq!(submit(&app, "arena", &ana, json!({"score": 150})).await["score"], 150);
    // A reset schedule, then none.
    let daily = app.patch(path, Some(&boards), json!({"reset": "@daily"})).await.expect(200).body;
    assert!(daily["season"]["ends_at"].is_string() && daily["reset"] == "@daily");
    app.patch(path, Some(&boards), json!({"reset": "not cron"})).await.expect_error(400, "invalid_request");
    let endless = app.patch(path, Some(&boards), json!({"reset": null})).await.expect(200).body;
    assert!(endless["season"]["ends_at"].is_null() && endless["reset"].is_null());
    // Authoritative: players' submissions are refused, game servers' taken.
    app.patch(path, Some(&boards), json!({"authoritative": true})).await.expect(200);
    app.post("/v1/leaderboards/arena/scores", Some(&ana), json!({"score": 160})).await.expect_error(403, "forbidden");
    submit(&app, "arena", &game, json!({"score": 170, "owner_id": "server-made", "owner_name": "npc"})).await;
    app.patch(path, Some(&boards), json!({"sort": "asc"})).await.expect_error(400, "invalid_request");
    app.patch("/v1/admin/leaderboards/nope", Some(&boards), json!({})).await.expect_error(404, "not_found");
    let shown = app.get("/v1/leaderboards/arena", Some(&ana)).await.expect(200).body;
    assert_eq!((shown["authoritative"].as_bool(), shown["max_score"].as_i64()), (Some(true), None));

    // Deleted with its records; its id can be used again, empty.
    app.delete(path, Some(&game)).await.expect_error(403, "insufficient_scope");
    app.delete(path, Some(&boards)).await.expect(204);
    app.get("/v1/leaderboards/arena", Some(&ana)).await.expect_error(404, "not_found");
    app.get("/v1/leaderboards/arena/records", Some(&ana)).await.expect_error(404, "not_found");
    app.delete(path, Some(&boards)).await.expect_error(404, "not_found");
    create_board(&app, json!({"id": "arena", "sort": "desc", "operator": "best"})).await;
    let fresh = app.get("/v1/leaderboards/arena/records", Some(&ana)).await.expect(200).body;
    assert_eq!(fresh["records"], json!([]), "nothing of the deleted board shows");
    assert_eq!(submit(&app, "arena", &ana, json!({"score": 1})).await["rank"], 1);

    let history = audit(&app, "target=leaderboard:arena").await;
    let actions: Vec<(&str, &str)> =
        history.iter().map(|e| (e["action"].as_str().expect("a"), e["key_name"].as_str().expect("k"))).collect();
    assert_eq!(
        actions,
        [
            ("leaderboards.create", "bootstrap"),
            ("leaderboards.delete", "boards"),
            ("leaderboards.update", "boards"),
            ("leaderboards.update", "boards"),
            ("leaderboards.update", "boards"),
            ("leaderboards.update", "boards"),
            ("leaderboards.update", "boards"),
            ("leaderboards.create", "boards"),
        ]
    );
    assert_eq!(history[1]["key_id"], boards_id.as_str());
    assert_eq!(history[7]["detail"]["max_score"], json!(null));
    assert_eq!(history[6]["detail"]["after"]["max_score"], 100);
}

/// Deleting one player's record closes up the ranks at once, in the top list, `me`, `around/me`
/// and friends lists, and a rebuilt index agrees; the same in an archived season.
async fn a_deleted_record_leaves_ranks_right(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "duel", "sort": "desc", "operator": "best"})).await;
    let mut players = Vec::new();
    for (i, name) in ["p1", "p2", "p3", "p4", "p5"].into_iter().enumerate() {
        let (id, token) = guest(&app, name).await;
        submit(&app, "duel", &token, json!({"score": 10 * (i as i64 + 1)})).await;
        players.push((id, token));
    }
    let (cheater, cheater_token) = players[3].clone();
    let (_, boards) = server_key(&app, "boards", &["leaderboards"]).await;
    let (_, support) = server_key(&app, "support", &["accounts"]).await;
    let record = format!("/v1/admin/leaderboards/duel/records/{cheater}");
    app.delete(&record, Some(&support)).await.expect_error(403, "insufficient_scope");
    app.delete(&record, Some(&boards)).await.expect(204);
    app.delete(&record, Some(&boards)).await.expect_error(404, "not_found");
    app.delete("/v1/admin/leaderboards/duel/records/nobody", Some(&boards)).await.expect_error(404, "not_found");
    app.delete("/v1/admin/leaderboards/nope/records/nobody", Some(&boards)).await.expect_error(404, "not_found");

    let top = all_records(&app, "duel", ADMIN_KEY, 2).await;
    let shown: Vec<(i64, u64)> = top.iter().map(|r| (r["score"].as_i64().expect("score"), r["rank"].as_u64().expect("rank"))).collect();
    assert_eq!(shown, [(50, 1), (30, 2), (20, 3), (10, 4)]);
    app.get("/v1/leaderboards/duel/records/me", Some(&cheater_token)).await.expect_error(404, "not_found");
    assert_eq!(app.get("/v1/leaderboards/duel/records/me", Some(&players[2].1)).await.expect(200).body["rank"], 2);
    let around = app.get("/v1/leaderboards/duel/around/me?limit=3", Some(&players[0].1)).await.expect(200).body;
    assert_eq!(
        around["records"].as_array().expect("records").iter().map(|r| r["rank"].as_u64().expect("rank")).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    let friends =
        app.get(&format!("/v1/leaderboards/duel/records?owner_ids={cheater},{}", players[1].0), Some(&players[1].1)).await.expect(200).body;
    assert_eq!(ids(&friends, "records", "owner_id"), [players[1].0.clone()]);
    assert_eq!(friends["records"][0]["rank"], 3);
    let parts = app.get(&format!("/v1/admin/accounts/{cheater}/records"), Some(&support)).await.expect(200).body;
    assert_eq!(parts["records"], json!([]));

    // A rebuilt index agrees with what the deletion left.
    let app = if backend == Backend::Real {
        let prefix = app.env.vars["REDIS_KEY_PREFIX"].clone();
        let client = redis::Client::open(app.env.vars["REDIS_URL"].as_str()).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}lb:*")).query_async(&mut conn).await.expect("keys");
        let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.expect("del");
        app
    } else {
        app.stop();
        TestApp::start_on(app.env.clone()).await
    };
    assert_eq!(all_records(&app, "duel", ADMIN_KEY, 100).await, top);
    // The player may submit again: a new record.
    assert_eq!(submit(&app, "duel", &cheater_token, json!({"score": 35})).await["rank"], 2);

    // An archived season: its records and count close up too.
    let closed = app.post("/v1/admin/leaderboards/duel/seasons/close", Some(&boards), json!({})).await.expect(200).body;
    assert_eq!((closed["number"].as_i64(), closed["record_count"].as_i64()), (Some(1), Some(5)));
    let (_, token_of_p2) = &players[1];
    let p2 = &players[1].0;
    app.delete(&format!("/v1/admin/leaderboards/duel/records/{p2}?season=1"), Some(&boards)).await.expect(204);
    app.delete(&format!("/v1/admin/leaderboards/duel/records/{p2}?season=3"), Some(&boards)).await.expect_error(404, "not_found");
    let archived = app.pages("/v1/leaderboards/duel/seasons/1/records?limit=10", token_of_p2, "records").await;
    let shown: Vec<(i64, u64)> =
        archived.iter().map(|r| (r["score"].as_i64().expect("score"), r["rank"].as_u64().expect("rank"))).collect();
    assert_eq!(shown, [(50, 1), (35, 2), (30, 3), (10, 4)]);
    let seasons = app.get("/v1/leaderboards/duel/seasons", Some(token_of_p2)).await.expect(200).body;
    assert_eq!(seasons["seasons"][0]["record_count"], 4);

    // The player's records everywhere: live ones ranked, archived ones not.
    submit(&app, "duel", &cheater_token, json!({"score": 7})).await;
    let mine = app.get(&format!("/v1/admin/accounts/{cheater}/records?limit=1"), Some(&support)).await.expect(200).body;
    assert_eq!((mine["records"][0]["season"].as_i64(), mine["records"][0]["rank"].as_u64()), (Some(2), Some(1)));
    assert_eq!(mine["records"][0]["live"], true);
    let all = app.pages(&format!("/v1/admin/accounts/{cheater}/records?limit=1"), &support, "records").await;
    assert_eq!(all.len(), 2);
    assert_eq!((all[1]["season"].as_i64(), all[1]["live"].as_bool(), all[1]["rank"].is_null()), (Some(1), Some(false), true));

    let deletions = audit(&app, "action=leaderboards.record_delete").await;
    assert_eq!(deletions.len(), 2);
    assert_eq!((deletions[1]["detail"]["owner_id"].as_str(), deletions[1]["detail"]["score"].as_i64()), (Some(cheater.as_str()), Some(40)));
    assert_eq!((deletions[0]["detail"]["season"].as_i64(), deletions[0]["key_name"].as_str()), (Some(1), Some("boards")));
}

/// The owners of `records?friends=true` for `token`, best first.
async fn friends_records(api: &Api, board: &str, token: &str) -> Vec<String> {
    let page = api.get(&format!("/v1/leaderboards/{board}/records?friends=true"), Some(token)).await.expect(200).body;
    page["records"].as_array().expect("records").iter().map(|r| r["owner_id"].as_str().expect("owner").to_owned()).collect()
}

async fn friends_records_are_the_player_and_their_friends(backend: Backend) {
    let app = start(backend).await;
    create_board(&app, json!({"id": "duel", "sort": "desc", "operator": "best"})).await;
    let (ana_id, ana) = guest(&app, "ana").await;
    let (bob_id, bob) = guest(&app, "bob").await;
    let (cy_id, cy) = guest(&app, "cy").await;
    for (token, score) in [(&ana, 10), (&bob, 20), (&cy, 30)] {
        submit(&app, "duel", token, json!({"score": score})).await;
    }
    assert_eq!(friends_records(&app, "duel", &ana).await, [ana_id.as_str()], "no friends yet: only the player");

    // The friendship reaches the leaderboard through the event (SQS on the real backends).
    make_friends(&app, (&ana_id, &ana), (&bob_id, &bob)).await;
    let within = std::time::Duration::from_secs(20);
    let listed = |token: &str, want: Vec<&str>| {
        let (app, token) = (&app, token.to_owned());
        let want: Vec<String> = want.into_iter().map(str::to_owned).collect();
        async move { friends_records(app, "duel", &token).await == want }
    };
    eventually(within, "Bob among Ana's friends' records", || listed(&ana, vec![&bob_id, &ana_id])).await;
    assert!(listed(&bob, vec![&bob_id, &ana_id]).await, "both ways");
    assert!(listed(&cy, vec![&cy_id]).await, "Cy has no friends");

    // Bad combinations.
    app.get("/v1/leaderboards/duel/records?friends=true", Some(ADMIN_KEY)).await.expect_error(400, "invalid_request");
    app.get(&format!("/v1/leaderboards/duel/records?friends=true&owner_ids={cy_id}"), Some(&ana))
        .await
        .expect_error(400, "invalid_request");
    app.get("/v1/leaderboards/duel/records?friends=true&cursor=abc", Some(&ana)).await.expect_error(400, "invalid_request");
    app.get("/v1/leaderboards/nope/records?friends=true", Some(&ana)).await.expect_error(404, "not_found");

    // Unfriending, and then erasure, take the friend out again.
    app.delete(&format!("/v1/friends/{bob_id}"), Some(&ana)).await.expect(204);
    eventually(within, "Bob gone from Ana's friends' records", || listed(&ana, vec![&ana_id])).await;
    // An accept older than the removal, delivered after it (SQS keeps no order), changes nothing.
    let stale = platform::events::FriendAccepted {
        requester_id: ana_id.clone(),
        accepter_id: bob_id.clone(),
        accepted_at: platform::time::rfc3339(platform::db::now_millis() - 60_000),
    };
    deliver_late(&app, "leaderboard", &stale).await;
    assert!(listed(&ana, vec![&ana_id]).await, "a stale accept brought a removed friend back");
    make_friends(&app, (&cy_id, &cy), (&ana_id, &ana)).await;
    eventually(within, "Cy among Ana's friends' records", || listed(&ana, vec![&cy_id, &ana_id])).await;
    app.delete("/v1/accounts/me", Some(&cy)).await.expect(204);
    eventually(within, "erased Cy gone from Ana's friends' records", || listed(&ana, vec![&ana_id])).await;
    let db = app.database().await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leaderboard_friends WHERE account_id = $1 OR friend_id = $1")
        .bind(&cy_id)
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(left, 0, "the erased player's friendships are forgotten");
}

/// A board deleted while submissions to it wait for their batch: the writer answers those
/// `BoardGone` (404 at the API) and writes the rest of the batch, which the foreign key of the
/// deleted board's records used to fail whole.
async fn a_board_deleted_under_a_batch_refuses_only_its_own_submissions(backend: Backend) {
    use leaderboard::board::{Board, Refusal};
    use leaderboard::writer::{Submission, Writer};
    use std::future::Future;
    use std::task::{Context, Waker};
    let app = start(backend).await;
    for id in ["doomed", "kept"] {
        app.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": id, "sort": "desc", "operator": "set"})).await.expect(201);
    }
    let db = app.database().await;
    let board = |id: &'static str| {
        let pool = db.pool().clone();
        async move { leaderboard::store::board_by_id(&pool, id).await.expect("read").expect("the board") }
    };
    let (doomed, kept) = (board("doomed").await, board("kept").await);
    let submission = |board: &Board, owner: &str, score: i64| Submission {
        board: board.clone(),
        owner_id: owner.into(),
        owner_name: owner.into(),
        score,
        subscore: 0,
        metadata: None,
        idempotency_key: None,
    };
    let writer = Writer::start(db.clone(), leaderboard::index::RankIndex::Memory(Default::default()), 1);

    // With every connection of the pool held, the lane's first batch (one submission) waits for
    // one, and the next two queue behind it: they will be one batch.
    let mut held = Vec::new();
    for _ in 0..db.pool_stats().max {
        held.push(db.pool().acquire().await.expect("connection"));
    }
    let mut first = Box::pin(writer.submit(submission(&kept, "p0", 10)));
    // One poll queues it (the lane's queue has room) and leaves it waiting for its answer.
    assert!(first.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending());
    eventually(std::time::Duration::from_secs(20), "the first submission taken into a batch", || {
        let queued = writer.queued();
        async move { queued == 0 }
    })
    .await;
    let to_doomed = tokio::spawn({
        let (writer, submission) = (writer.clone(), submission(&doomed, "p1", 20));
        async move { writer.submit(submission).await.expect("answered") }
    });
    let to_kept = tokio::spawn({
        let (writer, submission) = (writer.clone(), submission(&kept, "p2", 30));
        async move { writer.submit(submission).await.expect("answered") }
    });
    eventually(std::time::Duration::from_secs(20), "both later submissions queued", || {
        let queued = writer.queued();
        async move { queued == 2 }
    })
    .await;
    sqlx::query("DELETE FROM leaderboards WHERE id = 'doomed'").execute(&mut *held[0]).await.expect("delete");
    drop(held);

    assert_eq!(first.await.expect("answered").expect("written").record.score, 10);
    assert_eq!(to_doomed.await.expect("task").expect_err("refused"), Refusal::BoardGone);
    assert_eq!(to_kept.await.expect("task").expect("written").record.score, 30, "the rest of the batch is written");
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT owner_id FROM leaderboard_records ORDER BY owner_id").fetch_all(db.pool()).await.expect("records");
    assert_eq!(owners, ["p0", "p2"]);
    // At the API, the board is gone too.
    app.post("/v1/leaderboards/doomed/scores", Some(ADMIN_KEY), json!({"score": 1, "owner_id": "p3", "owner_name": "p3"}))
        .await
        .expect_error(404, "not_found");
}

/// `RankIndex::upsert_all` (a committed batch's records in one call; one Redis script): late
/// versions are ignored, an owner named twice ends with the newer entry, and every rank is the
/// one the index holds once the whole batch is in, the same on Redis as in memory.
async fn the_index_takes_a_batch_as_it_would_take_its_entries_one_by_one(backend: Backend) {
    use leaderboard::index::{Entry, NotReady, RankIndex, Scope};
    let app = start(backend).await;
    let config = app.env.config().expect("config");
    let index = RankIndex::for_cache(&platform::cache::Cache::connect(&config.cache).await.expect("cache"));
    let scope = Scope { board: "batched", season: 1 };
    // Keys sort ascending, best first; the owner closes the key as `Board::sort_key` makes it.
    let entry = |owner: &str, version: i64, key: &str| Entry {
        owner_id: owner.into(),
        key: format!("{key}|{owner}"),
        version,
        data: format!(r#"{{"n":"{owner} v{version}"}}"#),
    };

    assert!(matches!(index.upsert_all(scope, &[entry("a", 1, "5")]).await.expect("upsert"), Err(NotReady)), "not built yet");
    index.install(scope, vec![entry("a", 2, "5"), entry("b", 1, "3")]).await.expect("install");

    let ranks = index
        .upsert_all(
            scope,
            &[
                // Older than what the index holds: ignored, ranked where it stands.
                entry("a", 1, "0"),
                // New owners.
                entry("c", 1, "4"),
                entry("d", 1, "9"),
                // An owner twice: the newer version stays, wherever it comes in the batch.
                entry("b", 3, "1"),
                entry("b", 2, "8"),
            ],
        )
        .await
        .expect("upsert")
        .expect("ready");
    // Index now: b (1), c (4), a (5), d (9).
    assert_eq!(ranks, [3, 2, 4, 1, 1]);
    let page = index.page(scope, None, 10).await.expect("page").expect("ready");
    let listed: Vec<(&str, u64)> = page.iter().map(|r| (r.key.as_str(), r.rank)).collect();
    assert_eq!(listed, [("1|b", 1), ("4|c", 2), ("5|a", 3), ("9|d", 4)]);
    let b = index.rank_of(scope, "b").await.expect("rank").expect("ready").expect("b's entry");
    assert_eq!((b.rank, b.data.as_str()), (1, r#"{"n":"b v3"}"#), "the newer entry's data");
    let a = index.rank_of(scope, "a").await.expect("rank").expect("ready").expect("a's entry");
    assert_eq!(a.data, r#"{"n":"a v2"}"#, "a late entry leaves the data too");

    // One entry alone, as the API's fallback writes it.
    assert_eq!(index.upsert(scope, &entry("e", 1, "2")).await.expect("upsert"), Ok(2));
    assert_eq!(index.upsert_all(scope, &[]).await.expect("nothing to write"), Ok(vec![]));
}
