//! Leaderboard seasons: resets on a schedule, exactly once across processes, archives.

use std::time::{Duration, Instant};

use crate::common::{ADMIN_KEY, Api, Backend, TestApp, TestEnv, audit, guest, server_key, two_processes};
use serde_json::{Value, json};

on_both_backends!(
    a_season_closes_on_schedule_and_is_archived,
    bad_schedules_are_refused,
    a_deleted_account_leaves_the_archives,
    an_operator_closes_the_live_season_now,
);

async fn season_of(api: &Api, board: &str) -> i64 {
    api.get(&format!("/v1/leaderboards/{board}"), Some(ADMIN_KEY)).await.expect(200).body["season"]["number"].as_i64().expect("number")
}

/// Waits (at most 20 s) until the board's live season is at least `n`.
async fn wait_for_season(api: &Api, board: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while season_of(api, board).await < n {
        assert!(Instant::now() < deadline, "season {n} of {board} never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit(api: &Api, board: &str, owner: &str, score: i64) -> Value {
    api.post(&format!("/v1/leaderboards/{board}/scores"), Some(ADMIN_KEY), json!({"score": score, "owner_id": owner, "owner_name": owner}))
        .await
        .expect(200)
        .body
}

/// Creates a board resetting every 4 seconds, fills season 2 (the first whole one) with 25
/// records, and returns once season 3 has begun.
async fn fill_a_season(api: &Api, board: &str) {
    let created = api
        .post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": board, "sort": "desc", "operator": "best", "reset": "*/4 * * * * *"}))
        .await
        .expect(201);
    assert!(created.body["season"]["ends_at"].is_string());
    wait_for_season(api, board, 2).await;
    for i in 0..25 {
        let record = submit(api, board, &format!("p{i:02}"), 100 + i).await;
        assert!(record["rank"].as_u64().is_some());
    }
    wait_for_season(api, board, 3).await;
}

async fn check_archive(api: &Api, board: &str) {
    let seasons = api.get(&format!("/v1/leaderboards/{board}/seasons"), Some(ADMIN_KEY)).await.expect(200).body;
    let list = seasons["seasons"].as_array().expect("seasons");
    let numbers: Vec<i64> = list.iter().map(|s| s["number"].as_i64().expect("number")).collect();
    let live = season_of(api, board).await;
    assert_eq!(numbers, (1..live).rev().collect::<Vec<_>>(), "each closed season archived once, newest first");
    let second = list.iter().find(|s| s["number"] == 2).expect("season 2");
    assert_eq!(second["record_count"], 25);

    // The archive pages in rank order; the live season starts empty.
    let records = api.pages(&format!("/v1/leaderboards/{board}/seasons/2/records?limit=10"), ADMIN_KEY, "records").await;
    let ranks: Vec<u64> = records.iter().map(|r| r["rank"].as_u64().expect("rank")).collect();
    assert_eq!(ranks, (1..=25).collect::<Vec<_>>());
    assert_eq!(records[0]["owner_id"], "p24");
    assert_eq!(records[0]["score"], 124);
    let live_records = api.get(&format!("/v1/leaderboards/{board}/records"), Some(ADMIN_KEY)).await.expect(200).body;
    assert!(live_records["records"].as_array().expect("records").iter().all(|r| r["score"].as_i64() != Some(124)));
    api.get(&format!("/v1/leaderboards/{board}/seasons/{live}/records"), Some(ADMIN_KEY)).await.expect_error(404, "not_found");
    api.get(&format!("/v1/leaderboards/{board}/seasons/x/records"), Some(ADMIN_KEY)).await.expect_error(404, "not_found");
    api.get(&format!("/v1/leaderboards/{board}/seasons?cursor=-3"), Some(ADMIN_KEY)).await.expect_error(400, "invalid_request");
}

/// One `leaderboard.season_closed` event per closed season, carrying the top records.
async fn check_events(env: &TestEnv, board: &str) {
    let config = env.config().expect("config");
    let db = platform::db::Database::connect(&config.database).await.expect("db");
    let rows: Vec<String> = sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = 'leaderboard.season_closed'")
        .fetch_all(db.pool())
        .await
        .expect("outbox");
    let events: Vec<Value> = rows.iter().map(|r| serde_json::from_str(r).expect("json")).collect();
    let mut seasons: Vec<i64> = events.iter().filter(|e| e["board_id"] == board).map(|e| e["season"].as_i64().expect("season")).collect();
    let count = seasons.len();
    seasons.sort_unstable();
    seasons.dedup();
    assert_eq!(seasons.len(), count, "a season closed twice: {events:?}");
    let second = events.iter().find(|e| e["board_id"] == board && e["season"] == 2).expect("season 2 event");
    assert_eq!(second["record_count"], 25);
    assert_eq!(second["top"].as_array().expect("top").len(), 10);
    assert_eq!(second["top"][0]["owner_id"], "p24");
}

async fn a_season_closes_on_schedule_and_is_archived(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    fill_a_season(&app, "weekly").await;
    check_archive(&app, "weekly").await;
    check_events(&app.env, "weekly").await;
}

async fn bad_schedules_are_refused(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    for reset in ["every week", "0 0 30 2 *", "61 * * * *", ""] {
        let reply = app
            .post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "b", "sort": "desc", "operator": "best", "reset": reset}))
            .await
            .expect_error(400, "invalid_request");
        assert_eq!(reply.body["error"]["field"], "reset");
    }
    let board = app
        .post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "w", "sort": "desc", "operator": "best", "reset": "@weekly"}))
        .await
        .expect(201);
    assert!(board.body["season"]["ends_at"].as_str().expect("ends_at").ends_with("T00:00:00.000Z"));
}

/// Two processes run the season closer against one PostgreSQL and Redis: each season closes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_close_each_season_once() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (env, a, b) = two_processes(|_| {}).await;
    fill_a_season(&a, "shared").await;
    // Let a few more seasons close with both closers racing.
    let live = season_of(&b, "shared").await;
    wait_for_season(&b, "shared", live + 2).await;
    check_archive(&b, "shared").await;
    check_archive(&a, "shared").await;
    check_events(&env, "shared").await;
}

/// A deleted player's archived records go too, and the archive's count follows.
async fn a_deleted_account_leaves_the_archives(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    let (gone, token) = guest(&app, "leaving").await;
    app.post(
        "/v1/admin/leaderboards",
        Some(ADMIN_KEY),
        json!({"id": "erased", "sort": "desc", "operator": "best", "reset": "*/4 * * * * *"}),
    )
    .await
    .expect(201);
    wait_for_season(&app, "erased", 2).await;
    for owner in ["p00", gone.as_str(), "p01"] {
        submit(&app, "erased", owner, 10).await;
    }
    wait_for_season(&app, "erased", 3).await;
    let count = |seasons: &Value| {
        seasons["seasons"].as_array().expect("seasons").iter().find(|s| s["number"] == 2).expect("season 2")["record_count"].clone()
    };
    let seasons = app.get("/v1/leaderboards/erased/seasons", Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(count(&seasons), 3);

    app.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&token), None).await.expect(204);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let records = app.pages("/v1/leaderboards/erased/seasons/2/records?limit=10", ADMIN_KEY, "records").await;
        let owners: Vec<&str> = records.iter().map(|r| r["owner_id"].as_str().expect("owner")).collect();
        if !owners.contains(&gone.as_str()) {
            assert_eq!(owners, ["p00", "p01"], "the others stay, in rank order");
            break;
        }
        assert!(Instant::now() < deadline, "the deleted player's archived record is still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seasons = app.get("/v1/leaderboards/erased/seasons", Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(count(&seasons), 2);
}

/// An operator closes a live season whatever the schedule: it is archived with its records,
/// `leaderboard.season_closed` is recorded as for a scheduled close, the next season starts empty
/// (keeping the schedule's next end), and the audit log has it.
async fn an_operator_closes_the_live_season_now(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    app.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "cup", "sort": "desc", "operator": "best", "reset": "@weekly"}))
        .await
        .expect(201);
    for i in 0..12 {
        submit(&app, "cup", &format!("p{i:02}"), 100 + i).await;
    }
    let (_, game) = server_key(&app, "game", &["game_server"]).await;
    let (_, boards) = server_key(&app, "boards", &["leaderboards"]).await;
    app.post("/v1/admin/leaderboards/cup/seasons/close", Some(&game), json!({})).await.expect_error(403, "insufficient_scope");
    app.post("/v1/admin/leaderboards/none/seasons/close", Some(&boards), json!({})).await.expect_error(404, "not_found");
    let closed = app.post("/v1/admin/leaderboards/cup/seasons/close", Some(&boards), json!({})).await.expect(200).body;
    assert_eq!((closed["number"].as_i64(), closed["record_count"].as_i64()), (Some(1), Some(12)));

    let board = app.get("/v1/leaderboards/cup", Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(board["season"]["number"], 2);
    assert!(board["season"]["ends_at"].as_str().is_some_and(|end| end.ends_with("T00:00:00.000Z")), "the schedule goes on: {board}");
    let live = app.get("/v1/leaderboards/cup/records", Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(live["records"], json!([]));
    let archived = app.pages("/v1/leaderboards/cup/seasons/1/records?limit=5", ADMIN_KEY, "records").await;
    assert_eq!((archived.len(), archived[0]["owner_id"].as_str()), (12, Some("p11")));

    let config = app.env.config().expect("config");
    let db = platform::db::Database::connect(&config.database).await.expect("db");
    let rows: Vec<String> = sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = 'leaderboard.season_closed'")
        .fetch_all(db.pool())
        .await
        .expect("outbox");
    assert_eq!(rows.len(), 1);
    let event: Value = serde_json::from_str(&rows[0]).expect("json");
    assert_eq!((event["season"].as_i64(), event["top"].as_array().map(Vec::len)), (Some(1), Some(10)));

    // A board without a schedule closes too, even empty.
    app.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "once", "sort": "asc", "operator": "set"})).await.expect(201);
    let closed = app.post("/v1/admin/leaderboards/once/seasons/close", Some(&boards), json!({})).await.expect(200).body;
    assert_eq!(closed["record_count"], 0);
    let board = app.get("/v1/leaderboards/once", Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!((board["season"]["number"].as_i64(), board["season"]["ends_at"].is_null()), (Some(2), true));

    let closes = audit(&app, "action=leaderboards.season_close").await;
    let targets: Vec<&str> = closes.iter().map(|e| e["target"].as_str().expect("target")).collect();
    assert_eq!(targets, ["leaderboard:once", "leaderboard:cup"]);
    assert_eq!((closes[1]["detail"]["record_count"].as_i64(), closes[1]["key_name"].as_str()), (Some(12), Some("boards")));
}
