//! Faults on the shipped shape: Guildhall's image (docker/Dockerfile) run as the compose stack and
//! ECS run it, one service per container with a read-only root filesystem, on a private Docker
//! network with PostgreSQL, Redis and moto (S3, SQS) in containers of their own, started with the
//! `testcontainers` crate. Faults are made with the engine: `docker kill`, `docker pause`,
//! `docker stop`, `docker network disconnect`.
//!
//! The images come from `scripts/test.sh`, which builds them when a Docker engine runs:
//! `GUILDHALL_TEST_IMAGE` (Guildhall's, e.g. `guildhall:local`) and `GUILDHALL_TEST_LOCAL_IMAGES`
//! (the file scripts/local-images.sh writes, naming the PostgreSQL, Redis and Python images).
//! Without them, or without an engine, each test says why and passes as skipped, unless
//! `GUILDHALL_REQUIRE_DOCKER=1` (CI) makes that a failure.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::common::{ADMIN_KEY, Api, Chat, guest, until_ok};
use serde_json::json;
use sqlx::Connection;
use testcontainers::core::{ContainerPort, IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// The images under test.
struct Images {
    guildhall: String,
    postgres: String,
    redis: String,
    python: String,
}

/// The images, or None (after saying why) when these tests cannot run here.
fn images() -> Option<Images> {
    let required = std::env::var("GUILDHALL_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "GUILDHALL_REQUIRE_DOCKER=1 but {why}");
        eprintln!("skipping container fault test: {why}");
        None
    };
    let engine = std::process::Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
    if !engine.is_ok_and(|out| out.status.success()) {
        return skip("no Docker engine answers (`docker info` failed)".to_owned());
    }
    let (Ok(guildhall), Ok(list)) = (std::env::var("GUILDHALL_TEST_IMAGE"), std::env::var("GUILDHALL_TEST_LOCAL_IMAGES")) else {
        return skip(
            "GUILDHALL_TEST_IMAGE and GUILDHALL_TEST_LOCAL_IMAGES are not set: run scripts/test.sh, which builds the images".to_owned(),
        );
    };
    let text = std::fs::read_to_string(&list).unwrap_or_else(|err| panic!("reading {list}: {err}"));
    let vars: HashMap<&str, &str> = text.lines().filter_map(|line| line.split_once('=')).collect();
    let image = |name: &str| vars.get(name).unwrap_or_else(|| panic!("{list} names no {name}")).to_string();
    Some(Images { guildhall, postgres: image("POSTGRES_IMAGE"), redis: image("REDIS_IMAGE"), python: image("PYTHON_IMAGE") })
}

/// `name:tag` as testcontainers takes it.
fn generic(image: &str) -> GenericImage {
    let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
    GenericImage::new(name, tag)
}

/// Runs a docker command, panicking with its output when it fails.
fn docker(args: &[&str]) {
    let out = std::process::Command::new("docker").args(args).output().expect("docker runs");
    assert!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The development key pair of docker-compose.yml (public in the repository, as the tests need).
fn dev_signing_key() -> String {
    let compose = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docker-compose.yml")).expect("docker-compose.yml");
    let start = compose.find("-----BEGIN PRIVATE KEY-----").expect("a private key");
    let end = compose[start..].find("-----END PRIVATE KEY-----").expect("its end") + start + "-----END PRIVATE KEY-----".len();
    compose[start..end].lines().map(str::trim).collect::<Vec<_>>().join("\n") + "\n"
}

/// One test's backends on a network of its own; Guildhall containers join it.
struct Stack {
    images: Images,
    network: String,
    postgres: ContainerAsync<GenericImage>,
    redis: ContainerAsync<GenericImage>,
    moto: ContainerAsync<GenericImage>,
    moto_port: u16,
}

impl Stack {
    /// PostgreSQL, Redis and moto with the bucket and queues compose's aws-init makes.
    async fn start(images: Images) -> Stack {
        let network = format!("gh-fault-{}", uuid::Uuid::now_v7().simple());
        let postgres = generic(&images.postgres)
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_either_std("database system is ready to accept connections"))
            .with_network(&network)
            .with_container_name(format!("{network}-postgres"))
            .with_env_var("POSTGRES_USER", "guildhall")
            .with_env_var("POSTGRES_PASSWORD", "guildhall")
            .with_env_var("POSTGRES_DB", "guildhall")
            .with_startup_timeout(Duration::from_secs(60));
        let redis = generic(&images.redis)
            .with_wait_for(WaitFor::message_on_either_std("Ready to accept connections"))
            .with_network(&network)
            .with_container_name(format!("{network}-redis"));
        let moto = generic(&images.python)
            .with_exposed_port(5000.tcp())
            .with_wait_for(WaitFor::message_on_either_std("Running on"))
            .with_network(&network)
            .with_container_name(format!("{network}-moto"))
            .with_cmd(["moto_server", "-H", "0.0.0.0", "-p", "5000"]);
        let (postgres, redis, moto) = tokio::join!(postgres.start(), redis.start(), moto.start());
        let (postgres, redis, moto) = (postgres.expect("postgres starts"), redis.expect("redis starts"), moto.expect("moto starts"));
        let moto_port = moto.get_host_port_ipv4(5000).await.expect("moto's port");
        // compose's aws-init, as shipped, against this moto.
        let init = generic(&images.python)
            .with_wait_for(WaitFor::exit(testcontainers::core::wait::ExitWaitStrategy::new().with_exit_code(0)))
            .with_network(&network)
            .with_mount(Mount::bind_mount(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docker/aws-init.sh"), "/aws-init.sh"))
            .with_env_var("AWS_ENDPOINT_URL", format!("http://{network}-moto:5000"))
            .with_env_var("AWS_REGION", "eu-west-1")
            .with_env_var("AWS_ACCESS_KEY_ID", "moto-dev-dummy")
            .with_env_var("AWS_SECRET_ACCESS_KEY", "moto-dev-dummy")
            .with_cmd(["bash", "/aws-init.sh"])
            .with_startup_timeout(Duration::from_secs(120));
        init.start().await.expect("aws-init makes the bucket and queues");
        Stack { images, network, postgres, redis, moto, moto_port }
    }

    /// The environment compose gives every Guildhall container, pointed at this stack.
    fn env(&self) -> BTreeMap<String, String> {
        let n = &self.network;
        let mut env = BTreeMap::new();
        for (key, value) in [
            ("DATABASE_URL", format!("postgres://guildhall:guildhall@{n}-postgres:5432/guildhall")),
            ("REDIS_URL", format!("redis://{n}-redis:6379")),
            ("REDIS_KEY_PREFIX", "gh:".to_owned()),
            ("BLOB_URL", "s3://guildhall-assets".to_owned()),
            ("BLOB_PUBLIC_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.moto_port)),
            ("QUEUE_URL", format!("http://{n}-moto:5000/123456789012/guildhall-{{consumer}}")),
            ("AWS_ENDPOINT_URL", format!("http://{n}-moto:5000")),
            ("AWS_REGION", "eu-west-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "moto-dev-dummy".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "moto-dev-dummy".to_owned()),
            ("GUILDHALL_ADMIN_KEY", ADMIN_KEY.to_owned()),
            ("TOKEN_SIGNING_KEY", dev_signing_key()),
            ("RATE_LIMIT_AUTH_PER_IP_PER_MINUTE", "100000".to_owned()),
            // The chat fault test's player sends twelve messages within seconds; with the default
            // burst of 10 whether the last was refused depended on how slowly the machine ran the
            // restart between them. The send limit is tested in chat.rs.
            ("CHAT_SEND_BURST", "100".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("SHUTDOWN_DRAIN_SECS", "0".to_owned()),
            ("SHUTDOWN_GRACE_SECS", "5".to_owned()),
            ("DATA_DIR", "/tmp/guildhall".to_owned()),
        ] {
            env.insert(key.to_owned(), value);
        }
        env
    }

    /// Runs migrations once (compose's `migrate`), then Guildhall containers can start.
    async fn migrate(&self) {
        let mut image = generic(&self.images.guildhall)
            .with_wait_for(WaitFor::exit(testcontainers::core::wait::ExitWaitStrategy::new().with_exit_code(0)))
            .with_network(&self.network)
            .with_readonly_rootfs(true)
            .with_mount(Mount::tmpfs_mount("/tmp"))
            .with_cmd(["migrate"])
            .with_startup_timeout(Duration::from_secs(60));
        for (key, value) in self.env() {
            image = image.with_env_var(key, value);
        }
        image.start().await.expect("migrate exits 0");
    }

    /// A Guildhall container named `name` running `command` with `services` (all when empty),
    /// as shipped: read-only root, /tmp a tmpfs; answers once /health/ready is 200.
    async fn guildhall(&self, name: &str, command: &str, services: &str, extra: &[(&str, &str)]) -> Service {
        let mut env = self.env();
        env.insert("OTEL_SERVICE_NAME".to_owned(), format!("guildhall-{name}"));
        if !services.is_empty() {
            env.insert("SERVICES".to_owned(), services.to_owned());
            env.insert("RUN_EVENT_WORKERS".to_owned(), "false".to_owned());
        }
        for (key, value) in extra {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        let mut image = generic(&self.images.guildhall)
            .with_exposed_port(8080.tcp())
            .with_wait_for(WaitFor::Nothing)
            .with_network(&self.network)
            .with_container_name(format!("{}-{name}", self.network))
            .with_readonly_rootfs(true)
            .with_mount(Mount::tmpfs_mount("/tmp"))
            .with_cmd([command]);
        for (key, value) in env {
            image = image.with_env_var(key, value);
        }
        let container = image.start().await.expect("guildhall container starts");
        let mut service = Service { container, api: Api::new(String::new()) };
        service.wait_ready().await;
        service
    }

    /// A connection to the stack's PostgreSQL from the test.
    async fn database(&self) -> sqlx::PgConnection {
        let port = self.postgres.get_host_port_ipv4(5432).await.expect("postgres port");
        sqlx::PgConnection::connect(&format!("postgres://guildhall:guildhall@127.0.0.1:{port}/guildhall")).await.expect("database")
    }
}

/// A Guildhall container and an API client on its published port.
struct Service {
    container: ContainerAsync<GenericImage>,
    api: Api,
}

impl Service {
    /// Waits for /health/ready on the container's (current) published port.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(port) = self.container.get_host_port_ipv4(ContainerPort::Tcp(8080)).await {
                self.api = Api::new(format!("http://127.0.0.1:{port}"));
                // Not Api::get, which takes a refused connection for a failed test.
                let ready = self.api.client.get(format!("{}/health/ready", self.api.base)).send().await;
                if ready.is_ok_and(|r| r.status() == 200) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{} not ready in 60 s", self.container.id());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn id(&self) -> &str {
        self.container.id()
    }
}

/// Every `interval` for `length`, calls `probe` and checks what a request gets while a dependency
/// is down: a 503 `unavailable` (or, where the dependency is not on the path, a 2xx) answered
/// well before any request timeout, never a 500 and never a hang. Returns the slowest answer and
/// how many were 503.
async fn while_down<F, Fut>(length: Duration, probe: F) -> (Duration, usize)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = crate::common::Reply>,
{
    let end = Instant::now() + length;
    let (mut slowest, mut unavailable) = (Duration::ZERO, 0);
    while Instant::now() < end {
        let started = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(5), probe()).await.expect("an answer within 5 s, not a hang");
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(reply.status == 503 || reply.status < 300, "while down: {} {} (after {took:?})", reply.status, reply.body);
        if reply.status == 503 {
            assert_eq!(reply.code(), "unavailable", "{}", reply.body);
            unavailable += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (slowest, unavailable)
}

/// The board's records as the database holds them: owner → score.
async fn database_scores(db: &mut sqlx::PgConnection, board: &str) -> BTreeMap<String, i64> {
    use sqlx::Row;
    sqlx::query("SELECT owner_id, score FROM leaderboard_records WHERE board_id = $1")
        .bind(board)
        .fetch_all(db)
        .await
        .expect("records")
        .into_iter()
        .map(|row| (row.get::<String, _>("owner_id"), row.get::<i64, _>("score")))
        .collect()
}

/// The board as the API ranks it: (owner, score, rank), the whole top list.
async fn api_ranking(api: &Api, board: &str) -> Vec<(String, i64, i64)> {
    let records = api.pages(&format!("/v1/leaderboards/{board}/records?limit=100"), ADMIN_KEY, "records").await;
    records
        .iter()
        .map(|r| {
            (r["owner_id"].as_str().expect("owner").to_owned(), r["score"].as_i64().expect("score"), r["rank"].as_i64().expect("rank"))
        })
        .collect()
}

/// Whether the API's ranking is the database's: the same owners with the same scores, in
/// order of score (higher first), ranked 1, 2, 3, ...
fn ranking_agrees(ranking: &[(String, i64, i64)], database: &BTreeMap<String, i64>) -> bool {
    ranking.len() == database.len()
        && ranking.iter().enumerate().all(|(i, (owner, score, rank))| database.get(owner) == Some(score) && *rank == i as i64 + 1)
        && ranking.windows(2).all(|w| w[0].1 >= w[1].1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboard_killed_mid_submissions_loses_no_acknowledged_write_and_ranks_agree() {
    let Some(images) = images() else { return };
    let stack = Stack::start(images).await;
    stack.migrate().await;
    let mut leaderboard = stack.guildhall("leaderboard", "serve", "leaderboard", &[]).await;
    let board = "fault-kill";
    leaderboard
        .api
        .post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": board, "sort": "desc", "operator": "best"}))
        .await
        .expect(201);

    // 40 players, each submitting ever higher scores from its own task (a game server submitting
    // with the server key), and remembering the best one acknowledged.
    let base = leaderboard.api.clone();
    let submitters: Vec<_> = (0..40)
        .map(|player| {
            let api = base.clone();
            tokio::spawn(async move {
                let mut acknowledged = 0i64;
                for round in 1..=10_000i64 {
                    let score = round * 100 + player;
                    let body = json!({"score": score, "owner_id": format!("player-{player:02}"), "owner_name": format!("Player {player}")});
                    let sent = api
                        .client
                        .post(format!("{}/v1/leaderboards/{board}/scores", api.base))
                        .bearer_auth(ADMIN_KEY)
                        .json(&body)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match sent {
                        Ok(reply) if reply.status() == 200 => acknowledged = score,
                        // The process died under this request: its outcome is unknown.
                        _ => break,
                    }
                }
                (format!("player-{player:02}"), acknowledged)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    docker(&["kill", "--signal", "KILL", leaderboard.id()]);
    let mut acknowledged = BTreeMap::new();
    for submitter in submitters {
        let (owner, best) = submitter.await.expect("submitter");
        acknowledged.insert(owner, best);
    }
    assert!(acknowledged.values().any(|&best| best > 0), "submissions were acknowledged before the kill");

    // Started again (ECS would start a new task): nothing acknowledged is lost, and every rank
    // the API reports comes to agree with the database.
    leaderboard.container.start().await.expect("restarts");
    leaderboard.wait_ready().await;
    let mut db = stack.database().await;
    let stored = database_scores(&mut db, board).await;
    for (owner, best) in &acknowledged {
        if *best > 0 {
            let kept = stored.get(owner).copied().unwrap_or(0);
            assert!(kept >= *best, "{owner}: acknowledged {best}, the database holds {kept}");
        }
    }
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(30);
    let mut checks = 0;
    loop {
        let stored = database_scores(&mut db, board).await;
        let ranking = api_ranking(&leaderboard.api, board).await;
        checks += 1;
        if ranking_agrees(&ranking, &stored) {
            let acked = acknowledged.values().filter(|&&best| best > 0).count();
            eprintln!(
                "killed mid-submissions: {acked} players acknowledged, ranks agreed {:?} after the restart ({checks} checks)",
                restarted.elapsed()
            );
            break;
        }
        assert!(Instant::now() < deadline, "ranks still disagree with the database after 30 s:\napi {ranking:?}\ndatabase {stored:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_answers_503_fast_and_recovers_without_restart() {
    let Some(images) = images() else { return };
    let stack = Stack::start(images).await;
    stack.migrate().await;
    let app = stack.guildhall("monolith", "serve", "", &[]).await;
    let board = "fault-redis";
    app.api.post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": board, "sort": "desc", "operator": "best"})).await.expect(201);
    let (_, token) = guest(&app.api, "redis-pause").await;
    app.api.post(&format!("/v1/leaderboards/{board}/scores"), Some(&token), json!({"score": 10})).await.expect(200);

    stack.redis.pause().await.expect("pause redis");
    let path = format!("/v1/leaderboards/{board}/records/me");
    let rank = || app.api.get(&path, Some(&token));
    let (slowest, unavailable) = while_down(Duration::from_secs(10), rank).await;
    eprintln!("redis paused: {unavailable} answers 503, slowest {slowest:?}");
    assert!(unavailable > 0, "rank reads need Redis: some must have been 503");
    let ready = app.api.get("/health/ready", None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    stack.redis.unpause().await.expect("unpause redis");

    until_ok(&app.api, &path, Some(&token), Duration::from_secs(15)).await;
    app.api.post(&format!("/v1/leaderboards/{board}/scores"), Some(&token), json!({"score": 20})).await.expect(200);
    assert_eq!(app.api.get("/health/ready", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_answers_503_and_recovers_without_restart() {
    let Some(images) = images() else { return };
    let stack = Stack::start(images).await;
    stack.migrate().await;
    let app = stack.guildhall("monolith", "serve", "", &[]).await;
    let (_, token) = guest(&app.api, "pg-stop").await;

    stack.postgres.stop_with_timeout(Some(10)).await.expect("stop postgres");
    let me = || app.api.get("/v1/accounts/me", Some(&token));
    let (slowest, unavailable) = while_down(Duration::from_secs(10), me).await;
    eprintln!("postgres stopped: {unavailable} answers 503, slowest {slowest:?}");
    assert!(unavailable > 0, "the profile needs the database: some must have been 503");
    let ready = app.api.get("/health/ready", None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let signup = app.api.post("/v1/auth/guest", None, json!({"device_id": "device-while-down"})).await;
    assert_eq!((signup.status, signup.code()), (503, "unavailable"), "{}", signup.body);
    stack.postgres.start().await.expect("start postgres");

    until_ok(&app.api, "/v1/accounts/me", Some(&token), Duration::from_secs(30)).await;
    guest(&app.api, "after-pg").await;
    assert_eq!(app.api.get("/health/ready", None).await.status, 200);
}

/// Every message in `channel` from its history (newest first, a page of 100).
async fn history(api: &Api, token: &str, channel: &str) -> Vec<String> {
    let page = api.get(&format!("/v1/chat/channels/{channel}/messages?limit=100"), Some(token)).await.expect(200);
    page.body["messages"].as_array().expect("messages").iter().map(|m| m["body"].as_str().expect("body").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_replica_stopped_or_cut_off_loses_no_message() {
    let Some(images) = images() else { return };
    let stack = Stack::start(images).await;
    stack.migrate().await;
    let accounts = stack.guildhall("accounts", "serve", "accounts", &[]).await;
    let (mut one, two) = tokio::join!(stack.guildhall("chat-1", "serve", "chat", &[]), stack.guildhall("chat-2", "serve", "chat", &[]));
    let channel = "room:fault";
    let (_, ana) = guest(&accounts.api, "chat-ana").await;
    let (_, bo) = guest(&accounts.api, "chat-bo").await;

    // Ana on replica one, Bo on replica two, in one room: Bo's message crosses replicas.
    let mut ana_socket = Chat::connect(&one.api.base, &ana).await;
    ana_socket.join(channel).await;
    let mut bo_socket = Chat::connect(&two.api.base, &bo).await;
    bo_socket.join(channel).await;
    assert_eq!(bo_socket.send(channel, "before").await["type"], "ack");
    assert_eq!(ana_socket.next_of("message").await["message"]["body"], "before");

    // A rolling restart: SIGTERM replica one. Ana's socket is closed with going-away (1001).
    let stopping = {
        let id = one.id().to_owned();
        tokio::task::spawn_blocking(move || docker(&["stop", "--time", "20", &id]))
    };
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        while ana_socket.event().await.is_some() {}
        ana_socket.closed
    })
    .await
    .expect("the socket closes");
    assert_eq!(closed, Some(1001), "going-away close on SIGTERM");
    stopping.await.expect("docker stop");
    // Bo talks on while Ana is away; Ana reconnects to replica two and refills from history.
    for i in 0..5 {
        assert_eq!(bo_socket.send(channel, &format!("during-restart-{i}")).await["type"], "ack");
    }
    let mut ana_socket = Chat::connect(&two.api.base, &ana).await;
    ana_socket.join(channel).await;
    let seen = history(&two.api, &ana, channel).await;
    for i in 0..5 {
        assert!(seen.contains(&format!("during-restart-{i}")), "message {i} lost across the restart: {seen:?}");
    }
    drop(ana_socket);

    // Replica one back, then cut off from the network while Ana is on it: her socket goes silent;
    // she reconnects to replica two, and nothing Bo sent meanwhile is lost.
    one.container.start().await.expect("replica one restarts");
    one.wait_ready().await;
    let mut ana_socket = Chat::connect(&one.api.base, &ana).await;
    ana_socket.join(channel).await;
    docker(&["network", "disconnect", &stack.network, one.id()]);
    for i in 0..5 {
        assert_eq!(bo_socket.send(channel, &format!("during-partition-{i}")).await["type"], "ack");
    }
    let live = ana_socket.quiet_for(Duration::from_secs(3)).await;
    assert!(live.as_ref().is_none_or(|event| event["type"] != "message"), "a cut-off replica delivered a message: {live:?}");
    let mut ana_socket = Chat::connect(&two.api.base, &ana).await;
    ana_socket.join(channel).await;
    let seen = history(&two.api, &ana, channel).await;
    for i in 0..5 {
        assert!(seen.contains(&format!("during-partition-{i}")), "message {i} lost across the partition: {seen:?}");
    }
    assert_eq!(bo_socket.send(channel, "after").await["type"], "ack");
    assert_eq!(ana_socket.next_of("message").await["message"]["body"], "after");
    docker(&["network", "connect", &stack.network, one.id()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_unreachable_for_a_minute_delays_events_and_loses_none() {
    let Some(images) = images() else { return };
    let stack = Stack::start(images).await;
    stack.migrate().await;
    let (accounts, leaderboard, worker) = tokio::join!(
        stack.guildhall("accounts", "serve", "accounts", &[]),
        stack.guildhall("leaderboard", "serve", "leaderboard", &[]),
        stack.guildhall("worker", "worker", "", &[]),
    );
    let board = "fault-moto";
    leaderboard
        .api
        .post("/v1/admin/leaderboards", Some(ADMIN_KEY), json!({"id": board, "sort": "desc", "operator": "best"}))
        .await
        .expect(201);
    let (id, token) = guest(&accounts.api, "moto-cut").await;
    let (other, other_token) = guest(&accounts.api, "moto-stays").await;
    leaderboard.api.post(&format!("/v1/leaderboards/{board}/scores"), Some(&token), json!({"score": 50})).await.expect(200);
    leaderboard.api.post(&format!("/v1/leaderboards/{board}/scores"), Some(&other_token), json!({"score": 40})).await.expect(200);

    // S3 and SQS unreachable: the deletion is recorded in the outbox and waits.
    docker(&["network", "disconnect", &stack.network, stack.moto.id()]);
    let deleted = accounts.api.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&token), None).await;
    assert!(deleted.status == 204 || deleted.status == 202, "{} {}", deleted.status, deleted.body);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let ranking = api_ranking(&leaderboard.api, board).await;
    assert!(ranking.iter().any(|(owner, ..)| owner == &id), "erased before the event could be delivered?");
    docker(&["network", "connect", &stack.network, stack.moto.id()]);

    // Delayed, not lost: the erasure reaches the leaderboard once SQS answers again.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ranking = api_ranking(&leaderboard.api, board).await;
        if !ranking.iter().any(|(owner, ..)| owner == &id) {
            assert!(ranking.iter().any(|(owner, ..)| owner == &other), "the other player's record stays");
            break;
        }
        assert!(Instant::now() < deadline, "the deleted player is still ranked 90 s after SQS came back: {ranking:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut db = stack.database().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM leaderboard_records WHERE owner_id = $1")
        .bind(&id)
        .fetch_one(&mut db)
        .await
        .expect("count");
    assert_eq!(left, 0);
    drop(worker);
}
