//! The rank index converges to the database, which is the source of truth: after a process is
//! killed with submissions in flight, after an index update fails because the process lost Redis
//! right after its commit, and after an erasure whose Redis step failed is retried. Real
//! processes of the binary on PostgreSQL and Redis, one of them reaching Redis through a proxy the
//! test slows down or cuts; and a process on embedded defaults killed and started again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{ADMIN_KEY, Api, Backend, Process, RedisProxy, TestEnv, guest};
use platform::db::Database;
use serde_json::{Value, json};

/// An environment on the real backends with the server key, and a proxy in front of its Redis.
async fn env_and_proxy() -> (TestEnv, RedisProxy) {
    let mut env = TestEnv::new(Backend::Real).await.expect("env");
    env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    let proxy = RedisProxy::start(&env.vars["REDIS_URL"]).await;
    (env, proxy)
}

/// `env` with Redis reached through `proxy`.
fn through(env: &TestEnv, proxy: &RedisProxy) -> TestEnv {
    let mut env = env.clone();
    env.set("REDIS_URL", proxy.url.clone());
    env
}

async fn database(env: &TestEnv) -> Database {
    Database::connect(&env.config().expect("config").database).await.expect("database")
}

/// The board's records as the database ranks them: (owner, score), best first.
async fn ranked_in_database(db: &Database, board: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT owner_id, score FROM leaderboard_records WHERE board_id = $1 AND season = 1 \
         ORDER BY score DESC, subscore DESC, updated_at ASC, owner_id ASC",
    )
    .bind(board)
    .fetch_all(db.pool())
    .await
    .expect("records")
}

/// Whether every rank `api` reports for `board` (the whole top list, and each of `players`'
/// `records/me`) agrees with the database; the first disagreement otherwise.
async fn agreement(api: &Api, db: &Database, board: &str, players: &[(String, String)]) -> Result<(), String> {
    let expected = ranked_in_database(db, board).await;
    let mut listed: Vec<(String, i64, u64)> = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = api.get(&format!("/v1/leaderboards/{board}/records?limit=100{cursor}"), Some(ADMIN_KEY)).await;
        if page.status != 200 {
            return Err(format!("top list answered {}: {}", page.status, page.body));
        }
        listed.extend(page.body["records"].as_array().expect("records").iter().map(|r| {
            (r["owner_id"].as_str().expect("owner").to_owned(), r["score"].as_i64().expect("score"), r["rank"].as_u64().expect("rank"))
        }));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let wanted: Vec<(String, i64, u64)> = expected.iter().enumerate().map(|(i, (o, s))| (o.clone(), *s, i as u64 + 1)).collect();
    if listed != wanted {
        let at = listed.iter().zip(&wanted).position(|(l, w)| l != w).unwrap_or(listed.len().min(wanted.len()));
        return Err(format!("top list at {at}: {:?}, database: {:?}", listed.get(at), wanted.get(at)));
    }
    let by_owner: BTreeMap<&str, (i64, u64)> = wanted.iter().map(|(o, s, r)| (o.as_str(), (*s, *r))).collect();
    for (owner, token) in players {
        let mine = api.get(&format!("/v1/leaderboards/{board}/records/me"), Some(token)).await;
        if ![200, 404].contains(&mine.status) {
            return Err(format!("records/me answered {}: {}", mine.status, mine.body));
        }
        let reported =
            (mine.status == 200).then(|| (mine.body["score"].as_i64().expect("score"), mine.body["rank"].as_u64().expect("rank")));
        if reported != by_owner.get(owner.as_str()).copied() {
            return Err(format!("records/me of {owner}: {reported:?}, database {:?}", by_owner.get(owner.as_str())));
        }
    }
    Ok(())
}

/// Waits up to `within` for `agreement`, panicking with the last disagreement.
async fn agrees_within(within: Duration, api: &Api, db: &Database, board: &str, players: &[(String, String)]) {
    let deadline = Instant::now() + within;
    loop {
        match agreement(api, db, board, players).await {
            Ok(()) => return,
            Err(why) if Instant::now() >= deadline => panic!("ranks still disagree with the database after {within:?}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Each player submits `+score`s to `board` in turn until `stop`, pausing a little between
/// submissions so that the players' requests do not move in step, and stops early when the
/// process is gone. `answered` adds up the increments acknowledged.
fn submit_until_stopped(
    api: &Api,
    board: &str,
    players: &[(String, String)],
    stop: &Arc<AtomicBool>,
    answered: &Arc<AtomicI64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    players
        .iter()
        .enumerate()
        .map(|(i, (_, token))| {
            let (api, token, stop, answered) = (api.clone(), token.clone(), stop.clone(), answered.clone());
            let url = format!("{}/v1/leaderboards/{board}/scores", api.base);
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(((i as u64 * 37 + n * 53) % 90) + 10)).await;
                    let score = (i as i64 * 7 + n as i64 * 13) % 50 + 1;
                    match api.client.post(&url).bearer_auth(&token).json(&json!({"score": score})).send().await {
                        Ok(reply) if reply.status().is_success() => drop(answered.fetch_add(score, Ordering::SeqCst)),
                        Ok(_) => {}
                        // The process is gone.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect()
}

/// Process A takes a stream of submissions while its Redis traffic waits 200 ms in a proxy (and
/// is lost if A dies meanwhile), so its index updates trail its commits; it is killed (SIGKILL)
/// mid-stream, the moment the database holds a commit not yet answered. What A committed but
/// never wrote to the index (the ranks right after the kill disagree) is corrected by process B
/// within seconds, without A coming back; a process started in A's place reports the same ranks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_agree_with_the_database_after_a_kill_during_submissions() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (env, proxy) = env_and_proxy().await;
    let mut a = Process::start(&through(&env, &proxy)).await;
    let b = Process::start(&env).await;
    let db = database(&env).await;
    b.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "crash", "sort": "desc", "operator": "incr"})).await.expect(201);
    let mut players = Vec::new();
    for i in 0..16 {
        let player = guest(&b, &format!("crash-{i}")).await;
        b.post("/v1/leaderboards/crash/scores", Some(&player.1), json!({"score": 1})).await.expect(200);
        players.push(player);
    }
    agreement(&b, &db, "crash", &players).await.expect("agreement before the crash");

    proxy.delay(Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicI64::new(16));
    let senders = submit_until_stopped(&a, "crash", &players, &stop, &answered);
    // After a second of traffic, A dies the moment the database holds a commit that has not been
    // answered yet: its index update is on its way at best.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let committed: i64 = sqlx::query_scalar("SELECT CAST(SUM(score) AS BIGINT) FROM leaderboard_records WHERE board_id = 'crash'")
            .fetch_one(db.pool())
            .await
            .expect("sum");
        if committed > answered.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.child.start_kill().expect("SIGKILL");
    a.child.wait().await.expect("A exits");
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.expect("sender");
    }
    let stale = agreement(&b, &db, "crash", &players).await.err();
    eprintln!("right after the kill: {}", stale.as_deref().unwrap_or("in agreement"));

    agrees_within(Duration::from_secs(15), &b, &db, "crash", &players).await;
    proxy.delay(Duration::ZERO);
    let replacement = Process::start(&through(&env, &proxy)).await;
    agrees_within(Duration::from_secs(5), &replacement, &db, "crash", &players).await;
}

/// Process A loses Redis right before a submission: its transaction commits, its index update
/// fails (the caller gets an error). Process B's repairer corrects the entry from the database
/// within seconds, while A still cannot reach Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_update_that_failed_after_its_commit_is_repaired() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (env, proxy) = env_and_proxy().await;
    let a = Process::start(&through(&env, &proxy)).await;
    let b = Process::start(&env).await;
    let db = database(&env).await;
    b.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "faulty", "sort": "desc", "operator": "set"})).await.expect(201);
    for (owner, score) in [("p1", 10), ("p2", 20), ("p3", 30)] {
        b.post("/v1/leaderboards/faulty/scores", Some(ADMIN_KEY), json!({"score": score, "owner_id": owner, "owner_name": owner}))
            .await
            .expect(200);
    }
    agreement(&b, &db, "faulty", &[]).await.expect("agreement before the fault");

    proxy.cut();
    let submitted = Instant::now();
    let reply =
        a.post("/v1/leaderboards/faulty/scores", Some(ADMIN_KEY), json!({"score": 100, "owner_id": "p1", "owner_name": "p1"})).await;
    assert!(reply.status >= 500, "the index was out of reach: {reply:?}");
    assert_eq!(ranked_in_database(&db, "faulty").await[0], ("p1".to_owned(), 100), "committed before the index update failed");
    if submitted.elapsed() < Duration::from_secs(2) {
        // Well before the check comes due (3 s after the commit): the index is still stale.
        let top = b.get("/v1/leaderboards/faulty/records", Some(ADMIN_KEY)).await.expect(200).body;
        let p1: Vec<&Value> = top["records"].as_array().expect("records").iter().filter(|r| r["owner_id"] == "p1").collect();
        assert_eq!(p1[0]["score"], 10, "the failed update left the index stale");
    }
    agrees_within(Duration::from_secs(15), &b, &db, "faulty", &[]).await;
    let top = b.get("/v1/leaderboards/faulty/records", Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!((top["records"][0]["owner_id"].as_str(), top["records"][0]["rank"].as_u64()), (Some("p1"), Some(1)));

    proxy.restore();
    agrees_within(Duration::from_secs(10), &a, &db, "faulty", &[]).await;
}

/// An account is deleted while the leaderboard process cannot reach Redis: the erasure deletes
/// the records and commits, its index step fails, and the event comes back. The retry finds no
/// record left to delete, and still takes the player out of the ranking before it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_erasure_takes_the_player_out_of_the_ranking() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (env, proxy) = env_and_proxy().await;
    let mut accounts_env = env.clone();
    accounts_env.set("SERVICES", "accounts");
    let mut leaderboard_env = through(&env, &proxy);
    leaderboard_env.set("SERVICES", "leaderboard");
    let accounts = Process::start(&accounts_env).await;
    let board = Process::start(&leaderboard_env).await;
    let db = database(&env).await;
    board.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "erased", "sort": "desc", "operator": "best"})).await.expect(201);
    let (leaving, leaving_token) = guest(&accounts, "leaving").await;
    let (staying, staying_token) = guest(&accounts, "staying").await;
    for (token, score) in [(&leaving_token, 50), (&staying_token, 40)] {
        board.post("/v1/leaderboards/erased/scores", Some(token), json!({"score": score})).await.expect(200);
    }
    let top = board.get("/v1/leaderboards/erased/records", Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(top["records"][0]["owner_id"], leaving.as_str());

    proxy.cut();
    accounts.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&leaving_token), None).await.expect(204);
    // The first delivery: records deleted and committed, then the index step fails.
    let logged = |process: &Process, message: &str| {
        process
            .lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with(message)))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // Redis out of reach is an outage: the consumer keeps the message and runs the handler again.
    while logged(&board, "event handler failed: a dependency is down").is_none() {
        assert!(Instant::now() < deadline, "the erasure never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leaderboard_records WHERE owner_id = $1")
        .bind(&leaving)
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(left, 0, "the failed delivery had committed the deletion");
    let top = board.get("/v1/leaderboards/erased/records", Some(ADMIN_KEY)).await;
    assert!(top.status >= 500, "Redis is out of reach: {top:?}");

    // The retry (the consumer's next run of the handler, a second or two later) finds nothing to
    // delete and finishes.
    proxy.restore();
    let done = loop {
        if let Some(done) = logged(&board, "erased a deleted player's records") {
            break done;
        }
        assert!(Instant::now() < deadline, "the erasure was never retried successfully");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["records"], 0, "the retry found no record left: {done}");
    let top = board.get("/v1/leaderboards/erased/records", Some(ADMIN_KEY)).await.expect(200).body;
    let owners: Vec<&str> = top["records"].as_array().expect("records").iter().map(|r| r["owner_id"].as_str().expect("owner")).collect();
    assert_eq!(owners, [staying.as_str()]);
    assert_eq!(top["records"][0]["rank"], 1);
    let listed =
        board.get(&format!("/v1/leaderboards/erased/records?owner_ids={leaving},{staying}"), Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(listed["records"].as_array().expect("records").len(), 1);
    let mine = board.get("/v1/leaderboards/erased/records/me", Some(&staying_token)).await.expect(200).body;
    assert_eq!(mine["rank"], 1);
}

/// On embedded defaults (SQLite, the in-memory index) a process killed mid-stream loses its whole
/// index with it; started again on the same data folder, it rebuilds the index from the database
/// and reports ranks that agree with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_ranks_agree_with_the_database_after_a_kill_and_a_restart() {
    let mut env = TestEnv::new(Backend::Embedded).await.expect("env");
    env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    let mut process = Process::start(&env).await;
    let db = database(&env).await;
    process.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "crash", "sort": "desc", "operator": "incr"})).await.expect(201);
    let mut players = Vec::new();
    for i in 0..16 {
        let player = guest(&process, &format!("crash-{i}")).await;
        process.post("/v1/leaderboards/crash/scores", Some(&player.1), json!({"score": 1})).await.expect(200);
        players.push(player);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicI64::new(16));
    let senders = submit_until_stopped(&process, "crash", &players, &stop, &answered);
    tokio::time::sleep(Duration::from_secs(1)).await;
    process.child.start_kill().expect("SIGKILL");
    process.child.wait().await.expect("the process exits");
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.expect("sender");
    }
    assert!(answered.load(Ordering::SeqCst) > 16, "submissions were answered before the kill");
    let restarted = Process::start(&env).await;
    agrees_within(Duration::from_secs(5), &restarted, &db, "crash", &players).await;
}
