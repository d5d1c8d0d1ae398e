//! Reads from a real PostgreSQL streaming replica (`DATABASE_READ_URL`, `platform::replica`) and
//! restores of the database under a running Guildhall (`platform::restore`). Real backends only:
//! the standby is the one `scripts/servers.sh`'s `start_standby` runs beside the test PostgreSQL
//! (`GUILDHALL_TEST_POSTGRES_READ_URL`; `scripts/test.sh` starts it), and a restore is a
//! `pg_dump` of the test's database loaded back with `pg_restore` while the server runs.

use std::time::Duration;

use crate::common::{ADMIN_KEY, Api, Backend, Chat, TestApp, TestEnv};
use serde_json::{Value, json};
use sqlx::Connection;

on_both_backends!(an_operator_declares_a_restore);

/// Pausing replay on the standby lags it for every test: the tests here that do take turns.
static STANDBY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn skipped() -> bool {
    if platform::testing::real_backends_skipped() {
        eprintln!("GUILDHALL_SKIP_REAL_BACKENDS=1: not running on PostgreSQL + Redis");
        return true;
    }
    false
}

/// The standby's server URL (`start_standby`).
fn standby_url() -> String {
    std::env::var("GUILDHALL_TEST_POSTGRES_READ_URL")
        .expect("GUILDHALL_TEST_POSTGRES_READ_URL is not set: run the tests with scripts/test.sh, or `start_standby` after `start_servers` (scripts/servers.sh)")
}

/// `url` (the test's database on the primary) with the standby's host and port.
fn on_standby(url: &str) -> String {
    let standby = reqwest::Url::parse(&standby_url()).expect("standby URL");
    let mut url = reqwest::Url::parse(url).expect("database URL");
    url.set_host(standby.host_str()).expect("host");
    url.set_port(standby.port()).expect("port");
    url.to_string()
}

/// A server on real backends whose reader is the standby, allowed `max_lag_ms` behind.
async fn start_with_reader(max_lag_ms: u64) -> TestApp {
    let mut env = TestEnv::new(Backend::Real).await.expect("test environment");
    let read_url = on_standby(&env.vars["DATABASE_URL"]);
    env.set("DATABASE_READ_URL", read_url).set("DATABASE_READ_MAX_LAG_MS", max_lag_ms.to_string()).set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    TestApp::start_with_metrics(Backend::Real, |e| *e = env).await
}

/// Runs `sql` on the standby as the server's owner (replay control needs a superuser).
async fn on_the_standby(sql: &str) {
    let mut conn = sqlx::PgConnection::connect(&standby_url()).await.expect("connecting to the standby");
    sqlx::query(sql).execute(&mut conn).await.expect(sql);
    conn.close().await.ok();
}

/// Waits until `check` holds, polling every 100 ms, failing after `within` with `what`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `viewer`'s view of `player`'s display name (`GET /v1/accounts/{id}`, a lag-tolerant read).
async fn display_name(api: &Api, viewer: &str, player: &str) -> Value {
    api.get(&format!("/v1/accounts/{player}"), Some(viewer)).await.expect(200).body["display_name"].clone()
}

async fn rename(api: &Api, token: &str, name: &str) {
    api.patch("/v1/accounts/me", Some(token), json!({"display_name": name})).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_reads_their_writes_while_others_read_the_lagging_reader() {
    if skipped() {
        return;
    }
    let _turn = STANDBY.lock().await;
    // Far more lag allowed than the test takes: the reader stays in use while paused.
    let app = start_with_reader(60_000).await;
    let ana = app.register("ana").await;
    let bob = app.register("bob").await;
    until(Duration::from_secs(20), "the reader measured and in use", || async {
        app.metric("guildhall_db_replica_usable").await == Some(1.0)
    })
    .await;
    rename(&app, &ana.access, "Ana Before").await;
    // Bob wrote nothing: his reads go to the reader, which catches up within moments.
    until(Duration::from_secs(10), "the reader has Ana's first name", || async {
        display_name(&app, &bob.access, &ana.id).await == "Ana Before"
    })
    .await;

    on_the_standby("SELECT pg_wal_replay_pause()").await;
    rename(&app, &ana.access, "Ana After").await;
    // Ana reads what she wrote, from the writer; Bob's read of the same row goes to the paused
    // reader and shows the old name: lag-tolerant reads really are the reader's.
    for _ in 0..5 {
        assert_eq!(display_name(&app, &ana.access, &ana.id).await, "Ana After", "read-your-writes while the reader is paused");
        assert_eq!(display_name(&app, &bob.access, &ana.id).await, "Ana Before", "another player's read goes to the lagging reader");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The lag shows in the metrics while paused; reads were counted where they went.
    until(Duration::from_secs(5), "the lag measured above a second", || async {
        app.metric("guildhall_db_replica_lag_seconds").await.is_some_and(|lag| lag >= 1.0)
    })
    .await;
    assert!(app.metric("guildhall_db_reads_total{route=\"reader\"").await.unwrap_or(0.0) >= 5.0);
    assert!(app.metric("guildhall_db_reads_total{route=\"writer_recent_write\"").await.unwrap_or(0.0) >= 5.0);

    on_the_standby("SELECT pg_wal_replay_resume()").await;
    until(Duration::from_secs(10), "the resumed reader has Ana's new name", || async {
        display_name(&app, &bob.access, &ana.id).await == "Ana After"
    })
    .await;
    until(Duration::from_secs(5), "the lag back under a second", || async {
        app.metric("guildhall_db_replica_lag_seconds").await.is_some_and(|lag| lag < 1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_too_far_behind_is_left_for_the_writer() {
    if skipped() {
        return;
    }
    let _turn = STANDBY.lock().await;
    let app = start_with_reader(1_000).await;
    let ana = app.register("ana").await;
    let bob = app.register("bob").await;
    until(Duration::from_secs(20), "the reader measured and in use", || async {
        app.metric("guildhall_db_replica_usable").await == Some(1.0)
    })
    .await;
    on_the_standby("SELECT pg_wal_replay_pause()").await;
    rename(&app, &ana.access, "Ana Later").await;
    // Within a few heartbeats the reader is measured over a second behind and left alone: Bob's
    // read then comes from the writer and shows the new name, with no error.
    until(Duration::from_secs(10), "the lagging reader given up", || async {
        app.metric("guildhall_db_replica_usable").await == Some(0.0)
    })
    .await;
    assert_eq!(display_name(&app, &bob.access, &ana.id).await, "Ana Later");
    assert!(app.metric("guildhall_db_reads_total{route=\"writer_fallback\"").await.unwrap_or(0.0) >= 1.0);
    on_the_standby("SELECT pg_wal_replay_resume()").await;
    until(Duration::from_secs(10), "the caught-up reader used again", || async {
        app.metric("guildhall_db_replica_usable").await == Some(1.0)
    })
    .await;
}

/// The PostgreSQL client tools of this machine's server (Debian's layout, or `PG_BIN`).
fn pg_tool(name: &str) -> std::path::PathBuf {
    if let Ok(bin) = std::env::var("PG_BIN") {
        return std::path::Path::new(&bin).join(name);
    }
    let mut versions: Vec<_> =
        std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL installed").flatten().map(|e| e.path()).collect();
    versions.sort();
    versions.last().expect("a PostgreSQL version").join("bin").join(name)
}

async fn run(tool: &str, args: &[&str]) {
    let output = tokio::process::Command::new(pg_tool(tool)).args(args).output().await.expect(tool);
    assert!(output.status.success(), "{tool} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// The database's history position (`platform::restore`).
async fn position(app: &TestApp) -> i64 {
    let db = app.database().await;
    let (position,): (i64,) =
        sqlx::query_as("SELECT position FROM database_history WHERE id = 1").fetch_one(db.pool()).await.expect("history");
    db.close().await;
    position
}

/// The board's top records as (owner, score, rank).
async fn top(api: &Api, token: &str) -> Vec<(String, i64, u64)> {
    let page = api.get("/v1/leaderboards/arena/records", Some(token)).await.expect(200).body;
    page["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            (r["owner_id"].as_str().expect("owner").to_owned(), r["score"].as_i64().expect("score"), r["rank"].as_u64().expect("rank"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_under_a_running_guildhall_rebuilds_ranks_and_ends_later_sessions() {
    if skipped() {
        return;
    }
    let app = TestApp::start_with(Backend::Real, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    app.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "arena", "sort": "desc", "operator": "best"})).await.expect(201);
    let ana = app.register("ana").await;
    let bob = app.register("bob").await;
    let submit = |token: String, score: i64| {
        let api = app.api.clone();
        async move { api.post("/v1/leaderboards/arena/scores", Some(&token), json!({"score": score})).await.expect(200) }
    };
    submit(ana.access.clone(), 100).await;
    submit(bob.access.clone(), 200).await;
    // Guildhall has advanced the history at least once, so Redis remembers a position.
    until(Duration::from_secs(15), "the history advanced", || async { position(&app).await > 0 }).await;

    // The backup.
    let url = app.env.vars["DATABASE_URL"].clone();
    let database = reqwest::Url::parse(&url).expect("url").path().trim_start_matches('/').to_owned();
    let dump = app.env.dir.join("backup.dump");
    let dump_path = dump.to_str().expect("path").to_owned();
    run("pg_dump", &["--format=custom", "--file", &dump_path, &url]).await;
    let at_backup = position(&app).await;

    // After the backup: Ana takes the lead, Carl signs up and opens a chat socket.
    submit(ana.access.clone(), 300).await;
    let carl = app.register("carl").await;
    assert_eq!(top(&app, &carl.access).await[0], (ana.id.clone(), 300, 1));
    let mut carl_chat = Chat::connect(&app.api.base, &carl.access).await;
    // The history moves on past the backup's, and Redis sees it.
    until(Duration::from_secs(15), "the history advanced past the backup", || async { position(&app).await > at_backup }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The restore, under the running server: the database replaced by the backup.
    let mut admin = sqlx::PgConnection::connect(&std::env::var("GUILDHALL_TEST_POSTGRES_URL").expect("server")).await.expect("admin");
    // The name is the test's own (hex digits); these statements take no parameters.
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)")).execute(&mut admin).await.expect("drop");
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut admin).await.expect("create");
    admin.close().await.ok();
    run("pg_restore", &["--dbname", &url, &dump_path]).await;

    // Guildhall notices on its own: Carl's session, which the restored database never had, ends
    // (his access token, his socket and his refresh token); so do access tokens from before.
    until(Duration::from_secs(20), "Carl's access token refused", || async {
        app.get("/v1/accounts/me", Some(&carl.access)).await.status == 401
    })
    .await;
    app.get("/v1/accounts/me", Some(&carl.access)).await.expect_error(401, "session_revoked");
    // The refusal above may come from the restored database lacking his account ("this account
    // no longer exists"), before this instance's restore check (every 5 s; one that fails after
    // the forced drop waits for the next) moves the cut-off that closes his socket: seen to take
    // over 10 s with four tests at a time.
    assert_eq!(carl_chat.closed_within(Duration::from_secs(20)).await, Some(4002), "Carl's socket closes as session_revoked");
    app.post("/v1/auth/refresh", None, json!({"refresh_token": carl.refresh})).await.expect(401);
    app.get("/v1/accounts/me", Some(&ana.access)).await.expect_error(401, "session_revoked");
    // Ana's session is in the restored database: her refresh token gets her a new access token.
    let pair = app.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect(200);
    let ana_token = pair.body["access_token"].as_str().expect("access").to_owned();
    // Ranks are the restored records', not the lost future's: Bob leads again, Ana has 100.
    assert_eq!(top(&app, &ana_token).await, vec![(bob.id.clone(), 200, 1), (ana.id.clone(), 100, 2)]);
    assert_eq!(app.get("/v1/leaderboards/arena/records/me", Some(&ana_token)).await.expect(200).body["score"], 100);
    // And the history goes on from there, ahead of what Redis saw.
    let after = position(&app).await;
    assert!(after > at_backup, "the restored history moved past the old one ({after} > {at_backup})");
    guildhall::restore_check(&app.env.config().expect("config")).await.expect("restore-check finds the history consistent again");
}

/// `guildhall after-restore`, for when Redis cannot tell (embedded defaults, a flushed Redis): the
/// running server refuses older access tokens within a check, the refresh tokens the database
/// holds still work, and ranks are rebuilt from the records.
async fn an_operator_declares_a_restore(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    app.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": "arena", "sort": "desc", "operator": "best"})).await.expect(201);
    let ana = app.register("ana").await;
    app.post("/v1/leaderboards/arena/scores", Some(&ana.access), json!({"score": 42})).await.expect(200);
    app.get("/v1/accounts/me", Some(&ana.access)).await.expect(200);

    guildhall::after_restore(&app.env.config().expect("config")).await.expect("after-restore");
    until(Duration::from_secs(15), "Ana's older access token refused", || async {
        app.get("/v1/accounts/me", Some(&ana.access)).await.status == 401
    })
    .await;
    app.get("/v1/accounts/me", Some(&ana.access)).await.expect_error(401, "session_revoked");
    let pair = app.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect(200);
    let token = pair.body["access_token"].as_str().expect("access").to_owned();
    app.get("/v1/accounts/me", Some(&token)).await.expect(200);
    assert_eq!(top(&app, &token).await, vec![(ana.id.clone(), 42, 1)]);
}
