//! A warm second region: Guildhall on a PostgreSQL hot standby serves reads and refuses writes
//! with 503 `read_only_region` until the standby is promoted; `REGION_ROLE=standby` fences a
//! region whatever its database says; and a failover under load through a health-checking proxy
//! (Route 53's place, `loadtest/failover_proxy.py`) loses no acknowledged write when replication
//! is synchronous. Each test runs its own pair of PostgreSQL servers (the primary is killed and
//! the standby promoted), beside the shared Redis and moto of the test command.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Api, Backend, Chat, Process, TestApp, TestEnv, eventually};
use platform::testing::{ThrowawayPostgres, real_backends_skipped};
use serde_json::json;

/// The database both regions' Guildhall use (replicated whole to the standby).
const DATABASE: &str = "guildhall";
/// The regions check their database this often, so that the tests see a promotion soon.
const CHECK_MS: &str = "200";

/// A primary PostgreSQL with `DATABASE`, and its hot standby.
async fn two_databases(synchronous: bool) -> (ThrowawayPostgres, ThrowawayPostgres) {
    let primary = ThrowawayPostgres::start().await.expect("primary PostgreSQL");
    let mut admin = sqlx::PgConnection::connect(&primary.url()).await.expect("connect to the primary");
    sqlx::query(&format!("CREATE DATABASE {DATABASE}")).execute(&mut admin).await.expect("create database");
    let standby = ThrowawayPostgres::start_standby_of(&primary, DATABASE, synchronous).await.expect("standby PostgreSQL");
    (primary, standby)
}

use sqlx::Connection as _;

/// The two regions' environments: the same Redis server (each region its own key prefix, as
/// each has its own ElastiCache), the same DATA_DIR (the signing key Secrets Manager replicates),
/// each its own database server.
async fn region_envs(primary: &ThrowawayPostgres, standby: &ThrowawayPostgres) -> (TestEnv, TestEnv) {
    let mut a = TestEnv::new(Backend::Real).await.expect("env");
    a.set("DATABASE_URL", primary.url_of(DATABASE)).set("REGION_CHECK_INTERVAL_MS", CHECK_MS);
    let mut b = a.clone();
    let prefix = format!("{}b:", a.vars["REDIS_KEY_PREFIX"]);
    b.set("DATABASE_URL", standby.url_of(DATABASE)).set("REDIS_KEY_PREFIX", prefix);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_region_serves_reads_refuses_writes_and_takes_over_once_promoted() {
    if real_backends_skipped() {
        return;
    }
    let (primary_db, standby_db) = two_databases(false).await;
    let (env_a, env_b) = region_envs(&primary_db, &standby_db).await;
    let mut primary = Process::start(&env_a).await;
    let ana = primary.register("ana").await;
    let secondary = Process::start(&env_b).await;
    assert!(
        secondary.lines.lock().expect("lines").iter().any(|l| l.contains("migrations are left to the primary region")),
        "a replica is not migrated"
    );

    // Reads: her account reached the standby, and her token (same signing key) works there.
    eventually(Duration::from_secs(10), "ana's account replicated", || async {
        secondary.get("/v1/accounts/me", Some(&ana.access)).await.status == 200
    })
    .await;
    secondary.get("/health/ready", None).await.expect(200);

    // Writes: refused before any handler, with a Retry-After; sign-ins too (they write sessions).
    let refused =
        secondary.post("/v1/auth/guest", None, json!({"device_id": "device-region-b"})).await.expect_error(503, "read_only_region");
    assert_eq!(refused.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    secondary
        .post("/v1/auth/login", None, json!({"email": ana.email, "password": ana.password}))
        .await
        .expect_error(503, "read_only_region");
    secondary.patch("/v1/accounts/me", Some(&ana.access), json!({"display_name": "Ana B"})).await.expect_error(503, "read_only_region");
    // A chat send is a WebSocket frame, past the HTTP gate: the replica's own refusal answers it.
    let mut chat = Chat::connect(&secondary.base, &ana.access).await;
    let joined = chat.request(json!({"type": "join", "channel": "room:global"})).await;
    let sent = if joined["type"] == "ack" { chat.send("room:global", "hello from b").await } else { joined };
    assert_eq!((sent["type"].as_str(), sent["code"].as_str()), (Some("error"), Some("read_only_region")), "{sent}");

    // The primary region dies; the standby is promoted: the one step.
    primary.child.kill().await.expect("kill the primary region's guildhall");
    primary_db.kill().await.expect("kill the primary database");
    let promoted = Instant::now();
    standby_db.promote().await.expect("promote");
    eventually(Duration::from_secs(5), "the secondary takes writes after the promotion", || async {
        secondary.post("/v1/auth/guest", None, json!({"device_id": "device-region-b"})).await.status == 201
    })
    .await;
    eprintln!("writes served {:?} after the promotion began", promoted.elapsed());
    let (access, _) = secondary.login(&ana).await;
    secondary.patch("/v1/accounts/me", Some(&access), json!({"display_name": "Ana B"})).await.expect(200);
}

async fn a_fenced_region_refuses_writes_whatever_its_database(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("REGION_ROLE", "standby");
    })
    .await;
    app.api.post("/v1/auth/guest", None, json!({"device_id": "device-fenced"})).await.expect_error(503, "read_only_region");
    app.api.get("/health/ready", None).await.expect(200);
    app.api.get("/openapi.json", None).await.expect(200);
}

on_both_backends!(a_fenced_region_refuses_writes_whatever_its_database);

/// Starts `loadtest/failover_proxy.py` in front of the two regions; returns it and its port.
async fn proxy(a: &Api, b: &Api) -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../loadtest/failover_proxy.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--listen", &port.to_string(), "--primary", &a.base, "--secondary", &b.base, "--interval", "0.2", "--failures", "2"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the proxy");
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    eventually(Duration::from_secs(10), "the proxy answers", || async {
        api.client.get(format!("{}/health/live", api.base)).send().await.is_ok()
    })
    .await;
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_load_loses_no_acknowledged_write_with_synchronous_replication() {
    if real_backends_skipped() {
        return;
    }
    let (primary_db, standby_db) = two_databases(true).await;
    let (env_a, env_b) = region_envs(&primary_db, &standby_db).await;
    let mut primary = Process::start(&env_a).await;
    let secondary = Process::start(&env_b).await;
    let (_proxy, port) = proxy(&primary.api, &secondary.api).await;

    // Writers through the proxy: each sign-up a new account; what was acknowledged is kept.
    let acknowledged = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("client");
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let device = format!("device-failover-{writer}-{n}");
                let sent = client.post(format!("http://127.0.0.1:{port}/v1/auth/guest")).json(&json!({"device_id": device})).send().await;
                match sent {
                    Ok(reply) if reply.status().is_success() => acknowledged.lock().expect("acks").push((Instant::now(), device)),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let count = || acknowledged.lock().expect("acks").len();
    eventually(Duration::from_secs(20), "writes acknowledged before the kill", || async { count() >= 50 }).await;

    let killed = Instant::now();
    primary.child.kill().await.expect("kill the primary region's guildhall");
    primary_db.kill().await.expect("kill the primary database");
    standby_db.promote().await.expect("promote");
    let before = count();
    eventually(Duration::from_secs(20), "writes acknowledged again", || async { count() >= before + 20 }).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }

    let acknowledged = acknowledged.lock().expect("acks").clone();
    let rto = acknowledged.iter().map(|(at, _)| *at).find(|at| *at > killed).expect("a write after the kill") - killed;
    let mut db = sqlx::PgConnection::connect(&standby_db.url_of(DATABASE)).await.expect("connect to the promoted database");
    let mut lost = Vec::new();
    for (_, device) in &acknowledged {
        // A device identity's subject is the device id's SHA-256 in hex (accounts::identity).
        let found: Option<String> = sqlx::query_scalar(
            "SELECT account_id FROM account_identities WHERE provider = 'device' AND subject = encode(sha256(convert_to($1, 'UTF8')), 'hex')",
        )
                .bind(device)
                .fetch_optional(&mut db)
                .await
                .expect("query");
        if found.is_none() {
            lost.push(device.clone());
        }
    }
    eprintln!("failover: {} writes acknowledged, {} lost, writes again {rto:?} after the kill", acknowledged.len(), lost.len());
    assert!(lost.is_empty(), "acknowledged writes lost in the failover: {lost:?}");
    // Bounded by the proxy's detection (2 checks of 0.2 s, each up to 0.2 s), the promotion and
    // the region's check (0.2 s); generous for two shared cores.
    assert!(rto < Duration::from_secs(10), "writes came back after {rto:?}");
}
