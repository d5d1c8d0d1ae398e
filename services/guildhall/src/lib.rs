//! Wires the services to their backends and serves them: the whole of Guildhall in one process
//! (the monolith) or the subset `SERVICES` names.

use std::net::SocketAddr;
use std::sync::Arc;

use std::io::Read as _;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;
use platform::auth::{AdminKey, Authenticator};
use platform::blobs::Blobs;
use platform::cache::Cache;
use platform::config::{CacheConfig, Config, DatabaseConfig, Service};
use platform::db::{Database, Databases, Role};
use platform::events::{QueueConsumer, Queues, Relay};
use platform::health::{self, HealthState};
use platform::http::{self, HttpSettings};
use platform::metrics::Metrics;
use platform::region::Region;
use platform::shutdown::Shutdown;
use platform::tokens::TokenKeys;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod console;
mod openapi;

pub use openapi::document as openapi;

/// A built Guildhall: its router, its backends and its background work, ready to serve.
pub struct App {
    router: Router,
    dbs: Databases,
    shutdown: Shutdown,
    config: Config,
    workers: Vec<JoinHandle<()>>,
    metrics: Metrics,
}

/// What a process does: serve the API (and, unless `RUN_EVENT_WORKERS=false`, deliver events),
/// or deliver events only (`guildhall worker`, with health endpoints for the container).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `guildhall serve`.
    Serve,
    /// `guildhall worker`.
    Worker,
}

impl App {
    /// Connects the backends the configuration names, migrates, and builds the router.
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        Self::build_as(config, shutdown, Mode::Serve).await
    }

    /// Like `build`, for `mode`.
    pub async fn build_as(config: Config, shutdown: Shutdown, mode: Mode) -> anyhow::Result<Self> {
        let main = Database::connect(&config.database).await?;
        // A warm secondary region's database is a replica: its schema arrives by replication,
        // and a migration could not write it anyway.
        let database_writable = Region::database_writable(&main).await.unwrap_or(true);
        if config.run_migrations && database_writable {
            main.migrate().await?;
        } else if config.run_migrations {
            tracing::info!("the database is a read-only replica: migrations are left to the primary region");
        }
        // After the migrations, which make the roles (DATABASE_SERVICE_ROLES).
        let mut dbs = Databases::connect(&config.database, main).await?;
        let cache = Cache::connect(&config.cache).await?;
        let metrics = Metrics::new();
        // Before any service's state takes a clone of its pool: each gets its reader with it.
        let read_routing = match &config.database_read {
            Some(reader) => {
                let routing = dbs.attach_readers(&config.database, reader, &cache).await?;
                routing.register_metrics(&metrics);
                let main = dbs.main();
                let reader_pool = main.reader().context("the main pool has its reader")?.clone();
                tokio::spawn(platform::replica::run_lag_monitor(main.pool().clone(), reader_pool, routing.clone(), shutdown.clone()));
                Some(routing)
            }
            None => None,
        };
        let events_here = mode == Mode::Worker || config.run_event_workers;
        // The relay, the consumers and the webhook deliveries run as the worker's role, as in a
        // `guildhall worker` process: where the roles have pools of their own, a consuming
        // service gets a second state over the worker's pool for that work.
        let worker_db = dbs.of(Role::Worker).clone();
        let consumers_apart = dbs.has_role_pools() && mode == Mode::Serve;
        // Readiness, the token checks' reads of revoked sessions and the server keys' checks
        // (which every service's role may make) go through the pool that serves: with pools per
        // role, the first service's (the worker's in a worker), whose breaker the requests share.
        let serving_db = match (mode, config.services.first()) {
            (Mode::Serve, Some(service)) => dbs.of(Role::of(*service)).clone(),
            _ => worker_db.clone(),
        };
        serving_db.register_metrics(&metrics);
        cache.register_metrics(&metrics);
        let keys = Arc::new(TokenKeys::load(&config.tokens, &config.data_dir)?);
        let auth = Authenticator::new(keys, cache.clone(), serving_db.clone());
        let admin_key = AdminKey::new(config.admin_key.clone(), Some(serving_db.clone()));
        let parts = Parts { config: &config, cache: &cache, auth: &auth, admin_key: &admin_key, shutdown: &shutdown };

        let mut router = health::router(HealthState { db: serving_db, cache: cache.clone(), shutdown: shutdown.clone() });
        let mut workers = Vec::new();
        // Whether this region writes, asked of the owner's pool every REGION_CHECK_INTERVAL_MS.
        let (region, watching) = Region::watch(dbs.main().clone(), config.region, shutdown.clone()).await;
        workers.push(watching);
        let writer = |start| spawn_writer(&region, &shutdown, start);
        // Every process's live figures, for the console's `/v1/admin/stats` (whichever serves it).
        workers.push(tokio::spawn(platform::admin::stats::publish(metrics.clone(), cache.clone(), shutdown.clone())));
        let mut subscriptions = Vec::new();
        // What this process does once a restore of the database reaches it (`platform::restore`).
        let mut restore_hooks: Vec<platform::restore::Hook> = Vec::new();
        for service in &config.services {
            // A worker process serves no API: its states exist for the event work alone.
            let db = if mode == Mode::Worker { worker_db.clone() } else { dbs.of(Role::of(*service)).clone() };
            match service {
                Service::Accounts => {
                    let state = parts.accounts(db.clone())?;
                    if mode == Mode::Serve {
                        let purging = state.clone();
                        workers.push(writer(Box::new(move |phase| Box::pin(accounts::run_workers(purging.clone(), phase)))));
                        router = router.merge(accounts::router(state));
                        // The server keys and the audit log belong to no service; the ALB sends
                        // their routes to accounts.
                        let admin = platform::admin::AdminState { db, keys: admin_key.clone(), cache: cache.clone() };
                        router = router.merge(platform::admin::router(admin));
                    }
                }
                Service::Leaderboard => {
                    // One index for both states: on embedded defaults it is this process's memory.
                    let index = leaderboard::index::RankIndex::for_cache(&cache);
                    restore_hooks.push(leaderboard::restore_hook(index.clone()));
                    let state = parts.leaderboard(db, &index);
                    if events_here {
                        let consuming = if consumers_apart { parts.leaderboard(worker_db.clone(), &index) } else { state.clone() };
                        subscriptions.extend(leaderboard::subscriptions(consuming));
                    }
                    if mode == Mode::Serve {
                        state.writer.register_metrics(&metrics);
                        let (closing, repairing) = (state.clone(), state.clone());
                        workers.push(writer(Box::new(move |phase| Box::pin(leaderboard::seasons::run_closer(closing.clone(), phase)))));
                        workers.push(writer(Box::new(move |phase| Box::pin(leaderboard::repair::run_repairer(repairing.clone(), phase)))));
                        router = router.merge(leaderboard::router(state));
                    }
                }
                Service::Uploads => {
                    let state = parts.uploads(db).await?;
                    if events_here {
                        let consuming =
                            if consumers_apart { uploads::UploadsState { db: worker_db.clone(), ..state.clone() } } else { state.clone() };
                        subscriptions.extend(uploads::subscriptions(consuming));
                    }
                    if mode == Mode::Serve {
                        let checking = state.clone();
                        workers.push(writer(Box::new(move |phase| Box::pin(uploads::run_workers(checking.clone(), phase)))));
                        router = router.merge(uploads::router(state));
                    }
                }
                Service::Chat => {
                    let state = parts.chat(db);
                    if events_here {
                        // The same hub: a consumer's notifications reach this process's sockets
                        // also without Redis to carry them.
                        let consuming = if consumers_apart { state.with_db(worker_db.clone()) } else { state.clone() };
                        subscriptions.extend(chat::subscriptions(consuming));
                    }
                    if mode == Mode::Serve {
                        state.register_metrics(&metrics);
                        let pruning = state.clone();
                        workers.push(writer(Box::new(move |phase| Box::pin(pruning.clone().run_workers(phase)))));
                        workers.push(tokio::spawn(state.clone().run()));
                        router = router.merge(chat::router(state));
                    }
                }
                Service::Webhooks => {
                    let state = webhooks::WebhooksState::new(db, admin_key.clone(), config.webhooks.clone())?;
                    // Deliveries are event work: they go out where the consumers run (the
                    // worker on ECS), which is also where the webhooks consumer records them.
                    if events_here {
                        let delivering = if consumers_apart {
                            webhooks::WebhooksState::new(worker_db.clone(), admin_key.clone(), config.webhooks.clone())?
                        } else {
                            state.clone()
                        };
                        subscriptions.extend(webhooks::subscriptions(delivering.clone()));
                        workers.push(writer(Box::new(move |phase| Box::pin(webhooks::run_deliveries(delivering.clone(), phase)))));
                    }
                    if mode == Mode::Serve {
                        router = router.merge(webhooks::router(state));
                    }
                }
            }
        }
        if events_here {
            let consumers: Vec<&'static str> = subscriptions.iter().map(|s| s.consumer).collect();
            let event_metrics = platform::events::EventMetrics::register(&metrics, &consumers);
            match Queues::connect(&config.queue, &config.aws).await {
                Some(queues) => {
                    platform::events::check_routes(&subscriptions)?;
                    // The relay sends every service's events (several relays share the outbox
                    // through leases); the consumers read the queues of the services here.
                    platform::events::register_outbox_metrics(&worker_db, &metrics);
                    let relay = Relay::sqs(worker_db.clone(), queues.clone()).with_metrics(event_metrics.clone());
                    workers.push(writer(Box::new(move |phase| Box::pin(relay.clone().run(phase)))));
                    for consumer in QueueConsumer::for_each_consumer(&worker_db, &queues, &subscriptions) {
                        let consumer = consumer.with_metrics(event_metrics.clone());
                        tracing::info!(
                            consumer = consumer.consumer(),
                            queue = queues.url(consumer.consumer()),
                            "consuming events from SQS"
                        );
                        workers.push(writer(Box::new(move |phase| Box::pin(consumer.clone().run(phase)))));
                    }
                }
                None if config.is_monolith() => {
                    // Every consumer is in this process: deliver the outbox to them directly.
                    platform::events::register_outbox_metrics(&worker_db, &metrics);
                    let relay = Relay::new(worker_db.clone(), subscriptions).with_metrics(event_metrics);
                    workers.push(writer(Box::new(move |phase| Box::pin(relay.clone().run(phase)))));
                }
                None => {
                    tracing::warn!(
                        "events are delivered in process only when every service runs here; set QUEUE_URL to deliver them over SQS"
                    );
                }
            }
        }
        // The whole API's document, whichever services run here (see `openapi`), made on its
        // first request and kept as its JSON (160 KB). Made at start, as it was, it raised an idle
        // process's RSS by several MB (the document's tree, held for the process's life and
        // cloned for every request, and the code of every schema, run once); `guildhall version`
        // peaks at 17 MB of RSS, `guildhall openapi` at 43 MB (loadtest/README.md, "Idle memory").
        let doc = Arc::new(tokio::sync::OnceCell::<Bytes>::new());
        router = router.route(
            "/openapi.json",
            get(move || async move {
                let json = doc
                    .get_or_try_init(|| async {
                        serde_json::to_vec(&openapi()).map(Bytes::from).context("serializing the OpenAPI document")
                    })
                    .await?;
                platform::ApiResult::Ok(([(header::CONTENT_TYPE, "application/json")], json.clone()))
            }),
        );
        if mode == Mode::Serve {
            router = router.merge(console::router());
        }
        let settings = HttpSettings {
            request_timeout: config.request_timeout,
            trust_forwarded_for: config.trust_forwarded_for,
            cors_allowed_origins: config.cors_allowed_origins.clone(),
            metrics: metrics.clone(),
            // Every write refused while the region is read-only, before any handler runs.
            region_gate: (mode == Mode::Serve).then(|| platform::region::RegionGate(region.clone())),
            // A player's state-changing request opens their read-your-writes window.
            read_routing,
        };
        // The watch advances the database's history position, a write: like the other writers it
        // idles while the region is read-only (a secondary region's database is the primary's
        // history, and its cache another's).
        let restore_hooks = std::sync::Arc::new(restore_hooks);
        let (watch_db, watch_cache, watch_auth) = (dbs.main().clone(), cache.clone(), auth.clone());
        workers.push(writer(Box::new(move |phase| {
            Box::pin(platform::restore::run_watch(
                watch_db.clone(),
                watch_cache.clone(),
                watch_auth.clone(),
                restore_hooks.clone(),
                platform::restore::CHECK_EVERY,
                phase,
            ))
        })));
        let router = http::with_common_layers(router, settings);
        Ok(App { router, dbs, shutdown, config, workers, metrics })
    }

    /// The router, for tests that drive it without a socket.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// This application's figures: what `/metrics` serves, and `Metrics::snapshot` for the
    /// console.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Serves on `listener`, and `/metrics` on `METRICS_ADDR` when it is set, until the shutdown
    /// switch stops, then stops the workers and closes the pools.
    pub async fn serve(self, listener: TcpListener) -> anyhow::Result<()> {
        let metrics_listener = match self.config.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding METRICS_ADDR {addr}"))?),
            None => None,
        };
        self.serve_with_metrics(listener, metrics_listener).await
    }

    /// Serves the API on `listener` and, when given, `/metrics` on `metrics_listener` (tests bind
    /// both on port 0), until the shutdown switch stops; then stops the workers and closes the
    /// pools. The metrics listener shares the shutdown: it answers while the process drains and
    /// closes with the API's.
    pub async fn serve_with_metrics(self, listener: TcpListener, metrics_listener: Option<TcpListener>) -> anyhow::Result<()> {
        let addr = listener.local_addr().context("reading the listener address")?;
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().context("reading the metrics listener address")?),
            None => None,
        };
        let services: Vec<&str> = self.config.services.iter().map(|s| s.name()).collect();
        tracing::info!(
            addr = %addr,
            url = format!("http://{}", display_addr(addr)),
            services = services.join(","),
            database = describe_database(&self.config.database),
            cache = describe_cache(&self.config.cache),
            blobs = describe_blobs(&self.config.blobs),
            events = if matches!(self.config.queue, platform::config::QueueConfig::Sqs { .. }) { "sqs" } else { "in-process" },
            metrics_addr = metrics_addr.map(|a| a.to_string()),
            "listening"
        );
        let limits = http::ServerLimits {
            header_read_timeout: self.config.header_read_timeout,
            idle_timeout: self.config.idle_timeout,
            max_connections: self.config.max_connections,
        };
        let stop = self.shutdown.clone();
        let api = async {
            let result = http::serve(listener, self.router, self.shutdown.clone(), self.config.shutdown_grace, limits).await;
            // Should the API's loop end on its own (an error), the metrics listener ends too.
            stop.trigger();
            result
        };
        let metrics = async {
            let Some(listener) = metrics_listener else { return Ok(()) };
            // A scraper or two: a few connections; a scrape in flight at the stop gets a second.
            let limits = http::ServerLimits { max_connections: METRICS_MAX_CONNECTIONS, ..limits };
            let router = platform::metrics::router(self.metrics.clone());
            http::serve(listener, router, self.shutdown.clone(), std::time::Duration::from_secs(1), limits).await
        };
        let (result, metrics_result) = tokio::join!(api, metrics);
        let result = result.and(metrics_result);
        self.shutdown.trigger();
        for worker in self.workers {
            let _ = worker.await;
        }
        self.dbs.close().await;
        tracing::info!("stopped");
        result
    }
}

/// A background writer, started afresh (with its own stop switch) each time the region becomes
/// writable.
type StartWriter = Box<dyn FnMut(Shutdown) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// Spawns `start` to run only while `region` writes (`Region::run_while_writable`), until
/// `shutdown`.
fn spawn_writer(region: &Region, shutdown: &Shutdown, start: StartWriter) -> JoinHandle<()> {
    tokio::spawn(region.clone().run_while_writable(shutdown.clone(), start))
}

/// Connections the metrics listener serves at once (scrapers and operators' curls).
const METRICS_MAX_CONNECTIONS: usize = 16;

/// What every service's state is built from besides its database.
struct Parts<'a> {
    config: &'a Config,
    cache: &'a Cache,
    auth: &'a Authenticator,
    admin_key: &'a AdminKey,
    shutdown: &'a Shutdown,
}

impl Parts<'_> {
    fn accounts(&self, db: Database) -> anyhow::Result<accounts::AccountsState> {
        Ok(accounts::AccountsState::new(accounts::AccountsParts {
            db: db.clone(),
            cache: self.cache.clone(),
            auth: self.auth.clone(),
            admin_key: self.admin_key.clone(),
            passwords: accounts::Passwords::new()?,
            limits: (&self.config.auth_rate_limits).into(),
            providers: accounts::Providers::new(&self.config.providers)?,
            refresh_ttl: self.config.tokens.refresh_ttl,
            refresh_reuse_grace: self.config.refresh_reuse_grace,
            resets: accounts::PasswordResets::new(
                platform::mail::Mailer::new(&self.config.mail)?,
                self.config.password_reset.clone(),
                self.config.mail.timeout,
            ),
            social: self.config.social,
            reads: accounts::reads::AccountReads::start(db.pool().clone(), accounts::reads::LANES),
            sign_ins: accounts::identity::sign_ins::SignIns::start(db.pool().clone(), accounts::identity::sign_ins::LANES),
        }))
    }

    fn leaderboard(&self, db: Database, index: &leaderboard::index::RankIndex) -> leaderboard::LeaderboardState {
        leaderboard::LeaderboardState::new(leaderboard::LeaderboardParts {
            db: db.clone(),
            index: index.clone(),
            auth: self.auth.clone(),
            admin_key: self.admin_key.clone(),
            boards: leaderboard::BoardCache::default(),
            writer: leaderboard::writer::Writer::start(db, index.clone(), self.config.leaderboard_writer_lanes),
            max_friends: self.config.social.max_friends,
        })
    }

    async fn uploads(&self, db: Database) -> anyhow::Result<uploads::UploadsState> {
        Ok(uploads::UploadsState {
            db,
            blobs: Blobs::connect(self.config).await?,
            auth: self.auth.clone(),
            admin_key: self.admin_key.clone(),
            limits: self.config.upload_limits.clone(),
            public_url: self.config.public_url.as_deref().map(Into::into),
            cdn_base_url: self.config.cdn_base_url.as_deref().map(Into::into),
        })
    }

    fn chat(&self, db: Database) -> chat::ChatState {
        let limit = chat::SendLimit { burst: self.config.chat_send_burst, per_second: self.config.chat_send_per_second };
        let sockets = chat::caps::SocketLimits {
            per_account: self.config.chat_max_sockets_per_account as usize,
            per_ip: self.config.chat_max_sockets_per_ip as usize,
        };
        chat::ChatState::new(db, self.cache.clone(), self.auth.clone(), self.admin_key.clone(), limit, sockets, self.shutdown.clone())
    }
}

/// Builds and serves Guildhall on `config.listen_addr` until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.on_signal(config.shutdown_drain);
    let listener = TcpListener::bind(config.listen_addr).await.with_context(|| format!("binding {}", config.listen_addr))?;
    App::build(config, shutdown).await?.serve(listener).await
}

/// Runs the outbox relay and the queue consumers of `SERVICES` without the API, serving only the
/// health endpoints, until SIGTERM or Ctrl-C.
pub async fn run_worker(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.on_signal(config.shutdown_drain);
    let listener = TcpListener::bind(config.listen_addr).await.with_context(|| format!("binding {}", config.listen_addr))?;
    App::build_as(config, shutdown, Mode::Worker).await?.serve(listener).await
}

/// Applies the database migrations and exits.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let db = Database::connect(&config.database).await?;
    db.migrate().await?;
    db.close().await;
    tracing::info!(database = describe_database(&config.database), "migrations applied");
    Ok(())
}

/// `guildhall restore-check`: prints the database's history position, the highest the cache
/// saw and the access-token cut-off as JSON; fails when the database is behind the cache (it was
/// restored to an earlier point and `after-restore` has not run yet). Changes nothing.
pub async fn restore_check(config: &Config) -> anyhow::Result<()> {
    let db = Database::connect(&config.database).await?;
    let cache = Cache::connect(&config.cache).await?;
    let (history, seen) = platform::restore::compare(&db, &cache).await?;
    db.close().await;
    let restored = seen.is_some_and(|seen| history.position < seen);
    let report = serde_json::json!({
        "database_position": history.position,
        "cache_seen": seen,
        "tokens_not_before": platform::time::rfc3339(history.tokens_not_before_ms),
        "restored": restored,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    anyhow::ensure!(!restored, "the database is behind what the cache saw: it was restored; run `guildhall after-restore`");
    Ok(())
}

/// `guildhall after-restore`: declares the database restored to an earlier point
/// (`platform::restore::after_restore`): access tokens issued until now are refused on every
/// instance within seconds, open sockets of them close, and the rank index is forgotten, to be
/// rebuilt from the restored records. The running instances do the same on their own when the
/// cache remembers a later history; run it when it cannot (embedded defaults, a flushed Redis).
pub async fn after_restore(config: &Config) -> anyhow::Result<()> {
    let db = Database::connect(&config.database).await?;
    let cache = Cache::connect(&config.cache).await?;
    let history = platform::restore::after_restore(&db, &cache).await?;
    db.close().await;
    let dropped = leaderboard::index::RankIndex::for_cache(&cache).forget_all().await?;
    tracing::warn!(
        position = history.position,
        tokens_not_before = platform::time::rfc3339(history.tokens_not_before_ms),
        rank_index_keys_dropped = dropped,
        "database declared restored: older access tokens are refused, the rank index is rebuilt on first use"
    );
    Ok(())
}

/// How many dead outbox rows `guildhall events dead` lists by default.
const DEAD_LIST_DEFAULT: i64 = 100;
/// The most dead-letter messages one `guildhall events redrive` moves per queue.
const REDRIVE_MAX: u64 = 100_000;

/// `guildhall events dead [--limit N]` lists dead events (outbox rows parked by the relay and,
/// with SQS, each consumer's dead-letter queue) as one JSON document; `guildhall events redrive
/// (--all | EVENT_ID...)` makes them due again. Run it where the services run (an ECS one-off task
/// in production), once the cause of the failures is fixed.
pub async fn events(config: &Config, args: &[String]) -> anyhow::Result<()> {
    // The relay's work, so the relay's role.
    let db = Database::connect_for(&config.database, Role::Worker).await?;
    let queues = Queues::connect(&config.queue, &config.aws).await;
    let result = match args.first().map(String::as_str) {
        Some("dead") => {
            let limit = match args.get(1..).unwrap_or_default() {
                [] => DEAD_LIST_DEFAULT,
                [flag, n] if flag == "--limit" => {
                    n.parse().ok().filter(|n| (1..=10_000).contains(n)).context("--limit takes 1 to 10000")?
                }
                other => anyhow::bail!("unexpected arguments {other:?}; usage: guildhall events dead [--limit N]"),
            };
            let mut queue_reports = Vec::new();
            if let Some(queues) = &queues {
                for consumer in platform::events::consumers() {
                    queue_reports.push(platform::events::dead::dead_letters(queues, consumer).await?);
                }
            }
            let report = serde_json::json!({
                "outbox": { "dead": platform::events::dead::count(&db).await?, "events": platform::events::dead::list(&db, limit).await? },
                "dead_letter_queues": queue_reports,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Some("redrive") => {
            let ids: Vec<String> = match args.get(1..).unwrap_or_default() {
                [all] if all == "--all" => Vec::new(),
                [] => anyhow::bail!("name the events to re-drive, or --all; usage: guildhall events redrive (--all | EVENT_ID...)"),
                ids => ids.to_vec(),
            };
            let outbox = platform::events::dead::redrive(&db, &ids).await?;
            let mut moved = serde_json::Map::new();
            if let Some(queues) = &queues {
                for consumer in platform::events::consumers() {
                    let n = platform::events::dead::redrive_dead_letters(queues, consumer, &ids, REDRIVE_MAX).await?;
                    moved.insert(consumer.to_owned(), n.into());
                }
            }
            println!("{}", serde_json::json!({ "outbox": outbox, "dead_letter_queues": moved }));
            Ok(())
        }
        _ => Err(anyhow::anyhow!("usage: guildhall events dead [--limit N] | guildhall events redrive (--all | EVENT_ID...)")),
    };
    db.close().await;
    result
}

/// `guildhall keys ...`: the token key set (README, "Rotating the signing key").
/// - `generate`: a new Ed25519 private key (PKCS#8 PEM) on stdout, its kid on stderr;
/// - `public`: the public key (SPKI PEM) of the private key on stdin, its kid on stderr;
/// - `show`: the key set this configuration gives `serve`, as JSON: the signing kid, every kid
///   that verifies, the JWKS and the PEM bundle (`TOKEN_VERIFY_KEYS`'s form);
/// - `rotate`, `retire KID`: on embedded defaults, a new key signs from the next start while the
///   current one keeps verifying; then the old one stops verifying.
pub fn keys(config: &Config, args: &[String]) -> anyhow::Result<()> {
    use platform::tokens::{KeySource, manage};
    let embedded_only = |command: &str| -> anyhow::Result<()> {
        let tokens = &config.tokens;
        anyhow::ensure!(
            tokens.signing_key.is_none() && tokens.verify_keys.is_none() && tokens.verify_key.is_none(),
            "`keys {command}` changes the key files under DATA_DIR; this configuration takes its keys from TOKEN_SIGNING_KEY and \
             TOKEN_VERIFY_KEYS: rotate them there (README: Rotating the signing key)"
        );
        Ok(())
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["generate"] => {
            let (pem, kid) = manage::generate()?;
            print!("{pem}");
            eprintln!("kid {kid}");
            Ok(())
        }
        ["public"] => {
            let mut pem = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().take(64 * 1024), &mut pem).context("reading the private key from stdin")?;
            let (public, kid) = manage::public_of(&pem).context("reading the private key from stdin")?;
            print!("{public}");
            eprintln!("kid {kid}");
            Ok(())
        }
        ["show"] => {
            let report = match TokenKeys::load_existing(&config.tokens, &config.data_dir)? {
                Some((keys, source)) => serde_json::json!({
                    "source": match source {
                        KeySource::Environment => "environment",
                        KeySource::DataDir => "data_dir",
                    },
                    "signing_kid": keys.signing_kid(),
                    "verifying_kids": keys.kids(),
                    "jwks": keys.jwks(),
                    "public_keys_pem": keys.public_pems(),
                }),
                None => serde_json::json!({ "source": "data_dir", "signing_kid": null, "verifying_kids": [],
                    "note": "no key yet: `guildhall serve` makes one in DATA_DIR" }),
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        ["rotate"] => {
            embedded_only("rotate")?;
            let (old, new) = manage::rotate(&config.data_dir)?;
            println!("{}", serde_json::json!({ "signing_kid": new, "still_verifying": old }));
            eprintln!(
                "restart guildhall to sign with {new}; after ACCESS_TOKEN_TTL_SECS ({} s) more, run `guildhall keys retire {old}` and restart",
                config.tokens.access_ttl.as_secs()
            );
            Ok(())
        }
        ["retire", kid] => {
            embedded_only("retire")?;
            manage::retire(&config.data_dir, kid)?;
            println!("{}", serde_json::json!({ "retired": kid }));
            eprintln!("restart guildhall: tokens signed by {kid} are refused from then on (401 unknown_signing_key)");
            Ok(())
        }
        _ => Err(anyhow::anyhow!("usage: guildhall keys (generate | public | show | rotate | retire KID)")),
    }
}

/// Asks this machine's own server for `/health/live` and fails unless it answers 200: the
/// container `HEALTHCHECK`, for images that have no curl.
pub async fn healthcheck(config: &Config) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = display_addr(config.listen_addr);
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.write_all(b"GET /health/live HTTP/1.0\r\nHost: localhost\r\n\r\n").await.context("sending the request")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.context("reading the status line")?;
        anyhow::ensure!(&head[9..12] == b"200", "live check answered {}", String::from_utf8_lossy(&head));
        Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), check).await.context("live check timed out")?
}

fn display_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr }
}

fn describe_database(config: &DatabaseConfig) -> String {
    match config {
        DatabaseConfig::Postgres { .. } => "postgres".into(),
        DatabaseConfig::Sqlite { path } => format!("sqlite {}", path.display()),
    }
}

fn describe_blobs(config: &platform::config::BlobConfig) -> String {
    match config {
        platform::config::BlobConfig::S3 { bucket, .. } => format!("s3 {bucket}"),
        platform::config::BlobConfig::Local { dir } => format!("files {}", dir.display()),
    }
}

fn describe_cache(config: &CacheConfig) -> &'static str {
    match config {
        CacheConfig::Redis { .. } => "redis",
        CacheConfig::Memory => "memory",
    }
}
