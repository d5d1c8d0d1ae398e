//! The relational database: PostgreSQL in production, a SQLite file on embedded defaults.
//!
//! Both go through sqlx's `Any` driver so that each store writes its SQL once: the schema keeps
//! to types both dialects share (TEXT ids, BIGINT Unix-millisecond times, TEXT JSON) and the
//! queries use `$1` placeholders, which SQLite accepts too. Only the migrations differ, one
//! folder per dialect under `migrations/`, embedded in the binary.
//!
//! Queries go through `Pool`, sqlx's pool behind a breaker (`crate::reachability`): while
//! PostgreSQL is unreachable they fail at once, and a wait for a connection ends as soon as a
//! probe finds it down, instead of each request waiting out the acquire timeout (sqlx keeps
//! retrying a refused connect until then). Those failures are answered 503 `unavailable`
//! (`is_unavailable`, `crate::error`).
//!
//! With `DATABASE_READ_URL`, a `Database` also holds a pool on the reader, sized and timed out
//! like the writer's; `Database::reads_for` picks between them for reads that tolerate lag
//! (`crate::replica`).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Describe, Either, Execute, Executor, Transaction};

pub mod lanes;

use crate::cache::Cache;
use crate::config::{DatabaseAuth, DatabaseConfig, ReaderConfig, Secret, Service};
use crate::error::Dependency;
use crate::reachability::{Probe, Reachability};
use crate::replica::{ReadRouting, Route};

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL (Aurora).
    Postgres,
    /// SQLite (embedded default).
    Sqlite,
}

/// A pool of connections and the dialect behind it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    pool: Pool,
    dialect: Dialect,
    /// The reader lag-tolerant reads may go to (`DATABASE_READ_URL`, `crate::replica`).
    reader: Option<(Pool, ReadRouting)>,
}

/// The pool a lag-tolerant read runs on (`Database::reads_for`): the reader's or the writer's.
/// Use it as `&*reads` where a store function takes an executor.
#[derive(Debug)]
pub struct Reads {
    pool: Pool,
    /// Held while a read that fell back to the writer runs (`crate::replica`: bounded).
    _fallback: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl std::ops::Deref for Reads {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        &self.pool
    }
}

/// sqlx's pool behind the database's breaker: the executor every query runs on
/// (`Database::pool`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pool {
    pool: AnyPool,
    shared: Arc<PoolShared>,
}

/// What every handle on one pool shares (behind one `Arc`: a query clones its pool handle).
#[derive(Debug)]
struct PoolShared {
    /// PostgreSQL's breaker; `None` on SQLite, a local file that is never unreachable.
    reachability: Option<Arc<Reachability>>,
    /// Requests waiting for a connection now (`PoolStats::waiting`); sqlx does not count them.
    waiting: AtomicUsize,
}

impl Pool {
    fn new(pool: AnyPool, reachability: Option<Arc<Reachability>>) -> Self {
        Pool { pool, shared: Arc::new(PoolShared { reachability, waiting: AtomicUsize::new(0) }) }
    }
}

/// How a pool's connections are used now, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Most connections the pool opens.
    pub max: u32,
    /// Connections open (idle or in use).
    pub open: u32,
    /// Open connections not in use.
    pub idle: usize,
    /// Requests waiting for a connection (or for the breaker's verdict).
    pub waiting: usize,
}

/// Counts a wait for a connection for as long as it lasts (dropped with the future when the
/// request is cancelled, too).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A transaction on either dialect.
pub type Tx = Transaction<'static, Any>;

/// A database role of Guildhall's own, made by migration 0012 (`0012_service_roles.sql`) with
/// only the privileges its part of the code uses on the tables it uses. The tables belong to the
/// user that runs the migrations; no role may change the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The accounts service: accounts, sessions, refresh tokens.
    Accounts,
    /// The leaderboard service: boards, records, seasons, idempotency keys, index checks.
    Leaderboard,
    /// The uploads service: assets and quotas.
    Uploads,
    /// The chat service: groups, messages, sanctions.
    Chat,
    /// The outbox relay and the event consumers (`guildhall worker`): the outbox, the consumed
    /// events, and what the consumers change in several services' tables.
    Worker,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [Role::Accounts, Role::Leaderboard, Role::Uploads, Role::Chat, Role::Worker];

    /// The role's name in PostgreSQL, which is also its database user.
    pub fn name(self) -> &'static str {
        match self {
            Role::Accounts => "guildhall_accounts",
            Role::Leaderboard => "guildhall_leaderboard",
            Role::Uploads => "guildhall_uploads",
            Role::Chat => "guildhall_chat",
            Role::Worker => "guildhall_worker",
        }
    }

    /// The role a service's API and background work connect as. The webhooks admin API is
    /// accounts': on ECS it runs in the accounts task (`SERVICES=accounts,webhooks`), one process
    /// with one login, so accounts' role holds its grants; its deliveries are the worker's.
    pub fn of(service: Service) -> Role {
        match service {
            Service::Accounts | Service::Webhooks => Role::Accounts,
            Service::Leaderboard => Role::Leaderboard,
            Service::Uploads => Role::Uploads,
            Service::Chat => Role::Chat,
        }
    }
}

/// Makes the password of a pool's next connections: an IAM authentication token
/// (`crate::rds`), signed anew each time.
pub type PasswordSource = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<Secret<String>>> + Send + Sync>;

/// How often a pool whose passwords expire (IAM tokens live 15 minutes) gets a fresh one: well
/// before the last expires, so that a renewal that fails has five minutes of retries.
pub const PASSWORD_RENEW_EVERY: Duration = Duration::from_secs(600);
/// How soon a renewal that failed (the credentials endpoint did not answer) is tried again.
const PASSWORD_RETRY_EVERY: Duration = Duration::from_secs(30);

/// Migrations, numbered, one list per dialect; `include_str!` puts them in the binary so the image
/// needs no files beside it.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "accounts", include_str!("../../../migrations/postgres/0001_accounts.sql")),
    (2, "leaderboards", include_str!("../../../migrations/postgres/0002_leaderboards.sql")),
    (3, "event_delivery", include_str!("../../../migrations/postgres/0003_event_delivery.sql")),
    (4, "chat", include_str!("../../../migrations/postgres/0004_chat.sql")),
    (5, "uploads", include_str!("../../../migrations/postgres/0005_uploads.sql")),
    (6, "submission_keys", include_str!("../../../migrations/postgres/0006_submission_keys.sql")),
    (7, "index_checks", include_str!("../../../migrations/postgres/0007_index_checks.sql")),
    (8, "assets_by_state", include_str!("../../../migrations/postgres/0008_assets_by_state.sql")),
    (9, "sanction_authority", include_str!("../../../migrations/postgres/0009_sanction_authority.sql")),
    (10, "refresh_grace", include_str!("../../../migrations/postgres/0010_refresh_grace.sql")),
    (11, "session_revocations", include_str!("../../../migrations/postgres/0011_session_revocations.sql")),
    (12, "service_roles", include_str!("../../../migrations/postgres/0012_service_roles.sql")),
    (13, "admin", include_str!("../../../migrations/postgres/0013_admin.sql")),
    (14, "chat_reports", include_str!("../../../migrations/postgres/0014_chat_reports.sql")),
    (15, "webhooks", include_str!("../../../migrations/postgres/0015_webhooks.sql")),
    (16, "identities", include_str!("../../../migrations/postgres/0016_identities.sql")),
    (17, "password_resets", include_str!("../../../migrations/postgres/0017_password_resets.sql")),
    (18, "social", include_str!("../../../migrations/postgres/0018_social.sql")),
    (19, "notifications", include_str!("../../../migrations/postgres/0019_notifications.sql")),
    (20, "replicas_and_restores", include_str!("../../../migrations/postgres/0020_replicas_and_restores.sql")),
    (21, "erased_players", include_str!("../../../migrations/postgres/0021_erased_players.sql")),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "accounts", include_str!("../../../migrations/sqlite/0001_accounts.sql")),
    (2, "leaderboards", include_str!("../../../migrations/sqlite/0002_leaderboards.sql")),
    (3, "event_delivery", include_str!("../../../migrations/sqlite/0003_event_delivery.sql")),
    (4, "chat", include_str!("../../../migrations/sqlite/0004_chat.sql")),
    (5, "uploads", include_str!("../../../migrations/sqlite/0005_uploads.sql")),
    (6, "submission_keys", include_str!("../../../migrations/sqlite/0006_submission_keys.sql")),
    (7, "index_checks", include_str!("../../../migrations/sqlite/0007_index_checks.sql")),
    (8, "assets_by_state", include_str!("../../../migrations/sqlite/0008_assets_by_state.sql")),
    (9, "sanction_authority", include_str!("../../../migrations/sqlite/0009_sanction_authority.sql")),
    (10, "refresh_grace", include_str!("../../../migrations/sqlite/0010_refresh_grace.sql")),
    (11, "session_revocations", include_str!("../../../migrations/sqlite/0011_session_revocations.sql")),
    (12, "service_roles", include_str!("../../../migrations/sqlite/0012_service_roles.sql")),
    (13, "admin", include_str!("../../../migrations/sqlite/0013_admin.sql")),
    (14, "chat_reports", include_str!("../../../migrations/sqlite/0014_chat_reports.sql")),
    (15, "webhooks", include_str!("../../../migrations/sqlite/0015_webhooks.sql")),
    (16, "identities", include_str!("../../../migrations/sqlite/0016_identities.sql")),
    (17, "password_resets", include_str!("../../../migrations/sqlite/0017_password_resets.sql")),
    (18, "social", include_str!("../../../migrations/sqlite/0018_social.sql")),
    (19, "notifications", include_str!("../../../migrations/sqlite/0019_notifications.sql")),
    (20, "replicas_and_restores", include_str!("../../../migrations/sqlite/0020_replicas_and_restores.sql")),
    (21, "erased_players", include_str!("../../../migrations/sqlite/0021_erased_players.sql")),
];

/// What each database role may do to each table (`Role`), applied whole after every run of the
/// migrations: the grants cannot live in the migration that makes a table, when that one runs
/// before the roles exist, nor in the one that makes the roles, when the table comes later.
const POSTGRES_GRANTS: &str = include_str!("../../../migrations/postgres-grants.sql");
/// The advisory lock (of this database) under which the grants are applied: two instances
/// granting at once could meet on a catalog row ("tuple concurrently updated").
const GRANTS_LOCK: i64 = 0x6775_696c_6467_7261; // "guildgra"

/// How long a request waits for a pooled connection before failing, when the database answers
/// (all connections busy under load); while it does not, the breaker ends the wait sooner.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A wait for a connection longer than this probes PostgreSQL (at most one probe a
/// `crate::reachability::PROBE_EVERY`), and ends once a probe finds it unreachable.
const PROBE_AFTER: Duration = Duration::from_millis(250);
/// PostgreSQL cancels any statement that runs longer (an external call's timeout).
const STATEMENT_TIMEOUT_MS: u32 = 10_000;
/// A statement running longer than this probes PostgreSQL beside it (`Pool::within_reach`): a
/// server that stopped answering (paused, or cut off without a reset) cannot enforce its own
/// statement timeout, and the statement would wait out the request's.
const PROBE_STATEMENT_AFTER: Duration = Duration::from_millis(500);

impl Database {
    /// Connects (creating the SQLite file and its folder when needed), as the user of
    /// `DATABASE_URL`: the user that owns the tables and applies the migrations, or on ECS the
    /// role the URL names.
    pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Self> {
        Self::connect_as_user(config, None).await
    }

    /// Connects as `role`, with the host, database, options and authentication of `config`. The
    /// role exists once the migrations have run.
    pub async fn connect_as(config: &DatabaseConfig, role: Role) -> anyhow::Result<Self> {
        Self::connect_as_user(config, Some(role.name())).await.with_context(|| format!("connecting as the database role {}", role.name()))
    }

    /// Connects as `role` when `DATABASE_SERVICE_ROLES` says each part of the process connects
    /// as its own; else as `DATABASE_URL`'s user (`connect`).
    pub async fn connect_for(config: &DatabaseConfig, role: Role) -> anyhow::Result<Self> {
        match config {
            DatabaseConfig::Postgres { service_roles: true, .. } => Self::connect_as(config, role).await,
            _ => Self::connect(config).await,
        }
    }

    /// Connects to PostgreSQL as `config` says, as `user` (else the URL's), except that each
    /// connection logs in with the password `passwords` made last, made again every `every`
    /// (IAM authentication tokens, which expire: `DATABASE_IAM_AUTH`). Connections already open
    /// keep theirs: PostgreSQL checks a password only at login.
    pub async fn connect_with_passwords(
        config: &DatabaseConfig,
        user: Option<&str>,
        passwords: PasswordSource,
        every: Duration,
    ) -> anyhow::Result<Self> {
        install_default_drivers();
        let DatabaseConfig::Postgres { url, max_connections, .. } = config else {
            anyhow::bail!("passwords that change are for PostgreSQL");
        };
        let mut options = postgres_options(url, user)?;
        let password = passwords().await.context("making the first database password")?;
        set_password(&mut options, password.expose())?;
        let db = Self::open_postgres(options.clone(), *max_connections).await?;
        tokio::spawn(renew_passwords(db.pool.pool.clone(), options, passwords, every));
        Ok(db)
    }

    async fn connect_as_user(config: &DatabaseConfig, user: Option<&str>) -> anyhow::Result<Self> {
        install_default_drivers();
        match config {
            DatabaseConfig::Postgres { url, max_connections, auth, .. } => match auth {
                DatabaseAuth::Url => Self::open_postgres(postgres_options(url, user)?, *max_connections).await,
                DatabaseAuth::Password(password) => {
                    let mut options = postgres_options(url, user)?;
                    set_password(&mut options, password.expose())?;
                    Self::open_postgres(options, *max_connections).await
                }
                DatabaseAuth::Iam { region } => {
                    // A token is signed for the address and the user it logs in to.
                    let address = postgres_options(url, user)?.database_url;
                    let host = address.host_str().context("DATABASE_IAM_AUTH=true: DATABASE_URL must name the database's host")?;
                    let login = address.username();
                    anyhow::ensure!(
                        !login.is_empty() && !login.contains('%'),
                        "DATABASE_IAM_AUTH=true: DATABASE_URL must name a plain user"
                    );
                    let signer = crate::rds::TokenSigner::from_environment(region, host, address.port().unwrap_or(5432), login).await?;
                    let passwords: PasswordSource = Arc::new(move || {
                        let signer = signer.clone();
                        Box::pin(async move { signer.token().await })
                    });
                    Self::connect_with_passwords(config, user, passwords, PASSWORD_RENEW_EVERY).await
                }
            },
            DatabaseConfig::Sqlite { path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating {}", dir.display()))?;
                }
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let pool = idle_tested()
                    // SQLite has one writer at a time; a few readers run beside it under WAL.
                    .max_connections(4)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // WAL lets readers run during a write; NORMAL is durable under WAL
                            // except for the last commits on power loss, which a laptop tier
                            // accepts. sqlx already sets a 5 s busy timeout and foreign keys on.
                            conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;").await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .with_context(|| format!("opening SQLite database {}", path.display()))?;
                Ok(Database { pool: Pool::new(pool, None), dialect: Dialect::Sqlite, reader: None })
            }
        }
    }

    /// A PostgreSQL pool over `options`, behind the breaker.
    async fn open_postgres(options: AnyConnectOptions, max_connections: u32) -> anyhow::Result<Self> {
        let pool = Self::pool_options(max_connections).connect_with(options).await.context("connecting to PostgreSQL")?;
        let reachability = Reachability::new(Dependency::Database, postgres_probe(pool.clone()));
        Ok(Database { pool: Pool::new(pool, Some(reachability)), dialect: Dialect::Postgres, reader: None })
    }

    /// A pool's settings: a reader's are the writer's.
    fn pool_options(max_connections: u32) -> AnyPoolOptions {
        idle_tested().max_connections(max_connections).acquire_timeout(ACQUIRE_TIMEOUT)
    }

    /// A pool on the reader `config` names (`DatabaseConfig::for_reader`), as `user` (else the
    /// URL's), sized and timed out like the writer's. It connects lazily: a reader that is down
    /// when the process starts must not stop it; its reads go to the writer meanwhile.
    pub async fn connect_reader(config: &DatabaseConfig, user: Option<&str>) -> anyhow::Result<Pool> {
        install_default_drivers();
        let DatabaseConfig::Postgres { url, max_connections, auth, .. } = config else {
            anyhow::bail!("DATABASE_READ_URL needs PostgreSQL");
        };
        let mut options = postgres_options(url, user)?;
        match auth {
            DatabaseAuth::Url => {}
            DatabaseAuth::Password(password) => set_password(&mut options, password.expose())?,
            DatabaseAuth::Iam { .. } => {
                // Tokens are signed for the host they log in to: the reader's gets a signer of its
                // own, made as the writer's is. That path connects at once, so with IAM a reader
                // that is down when the process starts fails the start.
                return Ok(Self::connect_as_user(config, user).await?.pool);
            }
        }
        let pool = Self::pool_options(*max_connections).connect_lazy_with(options);
        let reachability = Reachability::new(Dependency::Database, postgres_probe(pool.clone()));
        Ok(Pool::new(pool, Some(reachability)))
    }

    /// This pool with `reader` for lag-tolerant reads, routed by `routing`.
    pub fn with_reader(mut self, reader: Pool, routing: ReadRouting) -> Self {
        self.reader = Some((reader, routing));
        self
    }

    /// The reader's pool, if there is one (the lag monitor's, tests').
    pub fn reader(&self) -> Option<&Pool> {
        self.reader.as_ref().map(|(pool, _)| pool)
    }

    /// The pool for a read that tolerates a little lag, made for `viewer` (none: anonymous or a
    /// game server): the reader's, unless `viewer` wrote lately or the reader is behind or down
    /// (`crate::replica`); the writer's when there is no reader. Fails 503 `unavailable` when too
    /// many reads are falling back to the writer at once.
    pub async fn reads_for(&self, viewer: Option<&str>) -> anyhow::Result<Reads> {
        let Some((reader, routing)) = &self.reader else { return Ok(Reads { pool: self.pool.clone(), _fallback: None }) };
        let down = reader.shared.reachability.as_ref().is_some_and(|r| r.is_down());
        let route = routing.route(viewer, down).await;
        routing.count(route);
        match route {
            Route::Reader => Ok(Reads { pool: reader.clone(), _fallback: None }),
            Route::RecentWrite => Ok(Reads { pool: self.pool.clone(), _fallback: None }),
            Route::Fallback => {
                let permit = routing.fallback_permit().await.context("too many reads falling back to the database writer")?;
                Ok(Reads { pool: self.pool.clone(), _fallback: Some(permit) })
            }
        }
    }

    /// Marks `account` as having just written outside an HTTP request (a chat message on a
    /// socket), so that its next reads come from the writer. Nothing without a reader.
    pub async fn note_write(&self, account: &str) {
        if let Some((_, routing)) = &self.reader {
            routing.note_write(account).await;
        }
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The dialect behind the pool.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so two writers queue on the busy timeout instead of one failing when
    /// it upgrades a read lock.
    pub async fn begin(&self) -> anyhow::Result<Tx> {
        let tx = match self.dialect {
            Dialect::Postgres => self.pool.guarded(self.pool.pool.begin()).await,
            Dialect::Sqlite => self.pool.guarded(self.pool.pool.begin_with("BEGIN IMMEDIATE")).await,
        };
        tx.context("starting a transaction")
    }

    /// Applies the migrations not yet applied, under sqlx's lock (an advisory lock on
    /// PostgreSQL), so that several instances starting together apply each once.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let list = match self.dialect {
            Dialect::Postgres => POSTGRES_MIGRATIONS,
            Dialect::Sqlite => SQLITE_MIGRATIONS,
        };
        let migrations: Vec<Migration> = list
            .iter()
            .map(|(version, name, sql)| Migration::new(*version, Cow::Borrowed(name), MigrationType::Simple, Cow::Borrowed(sql), false))
            .collect();
        let migrator = Migrator { migrations: Cow::Owned(migrations), ignore_missing: false, locking: true, no_tx: false };
        migrator.run(&self.pool.pool).await.context("applying migrations")?;
        if self.dialect == Dialect::Postgres {
            let mut tx = self.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(GRANTS_LOCK).execute(&mut *tx).await.context("locking the grants")?;
            tx.execute(POSTGRES_GRANTS).await.context("granting the database roles their privileges")?;
            tx.commit().await.context("committing the grants")?;
        }
        Ok(())
    }

    /// Answers whether the database takes a trivial query (readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.context("pinging the database")?;
        Ok(())
    }

    /// How the pool's connections are used now.
    pub fn pool_stats(&self) -> PoolStats {
        let pool = &self.pool.pool;
        PoolStats {
            max: pool.options().get_max_connections(),
            open: pool.size(),
            idle: pool.num_idle(),
            waiting: self.pool.shared.waiting.load(Ordering::Relaxed),
        }
    }

    /// Registers the pool's figures (read at scrape time): `guildhall_db_pool_*`.
    pub fn register_metrics(&self, metrics: &crate::metrics::Metrics) {
        let gauge = |name, help, read: fn(PoolStats) -> f64| {
            let db = self.clone();
            metrics.gauge_fn(name, help, &[], move || Some(read(db.pool_stats())));
        };
        gauge("guildhall_db_pool_max", "Most connections the database pool opens.", |s| f64::from(s.max));
        gauge("guildhall_db_pool_connections", "Database connections open (idle or in use).", |s| f64::from(s.open));
        gauge("guildhall_db_pool_idle", "Open database connections not in use.", |s| s.idle as f64);
        gauge("guildhall_db_pool_waiting", "Requests waiting for a database connection now.", |s| s.waiting as f64);
    }

    /// Closes every connection (shutdown), the reader's too.
    pub async fn close(&self) {
        if let Some((reader, _)) = &self.reader {
            reader.pool.close().await;
        }
        self.pool.pool.close().await;
    }
}

/// The pools of one process. Each part of it (a service's API and background work; the relay
/// and the consumers) queries through the pool of its role: with `DATABASE_SERVICE_ROLES`, a
/// pool per role beside the one of `DATABASE_URL`'s user, which then only migrates and answers
/// readiness; without it (embedded defaults, and every ECS task, whose URL names its role), one
/// pool for everything.
#[derive(Debug, Clone)]
pub struct Databases {
    main: Database,
    roles: Vec<(Role, Database)>,
}

impl Databases {
    /// Every part of the process on `main`.
    pub fn shared(main: Database) -> Self {
        Databases { main, roles: Vec::new() }
    }

    /// With `DATABASE_SERVICE_ROLES`, connects a pool as each role beside `main` (the roles
    /// exist once `main` has migrated); else every part shares `main`.
    pub async fn connect(config: &DatabaseConfig, main: Database) -> anyhow::Result<Self> {
        if !matches!(config, DatabaseConfig::Postgres { service_roles: true, .. }) {
            return Ok(Self::shared(main));
        }
        let mut roles = Vec::new();
        for role in Role::ALL {
            roles.push((role, Database::connect_as(config, role).await?));
        }
        Ok(Databases { main, roles })
    }

    /// Gives every pool a reader on `reader` (`DATABASE_READ_URL`), logging in as that pool
    /// does, all routed by one `ReadRouting` (read-your-writes keys in `cache`). Returns it, for
    /// the lag monitor and the layer that marks writers (`crate::replica`).
    pub async fn attach_readers(&mut self, config: &DatabaseConfig, reader: &ReaderConfig, cache: &Cache) -> anyhow::Result<ReadRouting> {
        let DatabaseConfig::Postgres { max_connections, .. } = config else {
            anyhow::bail!("DATABASE_READ_URL needs DATABASE_URL=postgres://");
        };
        // Half the writer's pool may serve reads that fell back: writes keep the other half.
        let permits = usize::try_from(*max_connections / 2).unwrap_or(1);
        let routing = ReadRouting::new(cache.clone(), reader.max_lag, permits);
        let reader_config = config.for_reader(reader);
        let main_reader = Database::connect_reader(&reader_config, None).await.context("connecting to DATABASE_READ_URL")?;
        self.main = self.main.clone().with_reader(main_reader, routing.clone());
        for (role, db) in &mut self.roles {
            let pool = Database::connect_reader(&reader_config, Some(role.name()))
                .await
                .with_context(|| format!("connecting to DATABASE_READ_URL as {}", role.name()))?;
            *db = db.clone().with_reader(pool, routing.clone());
        }
        Ok(routing)
    }

    /// The pool of `DATABASE_URL`'s user.
    pub fn main(&self) -> &Database {
        &self.main
    }

    /// The pool `role`'s queries go through.
    pub fn of(&self, role: Role) -> &Database {
        self.roles.iter().find(|(r, _)| *r == role).map_or(&self.main, |(_, db)| db)
    }

    /// True when the roles have pools of their own (`DATABASE_SERVICE_ROLES`): a service's
    /// consumers then need its state over the worker's pool, as in a `guildhall worker` process.
    pub fn has_role_pools(&self) -> bool {
        !self.roles.is_empty()
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for (_, db) in &self.roles {
            db.close().await;
        }
        self.main.close().await;
    }
}

impl Pool {
    /// A connection from the pool: at once an error while the database is known to be down, and
    /// no longer than it takes a probe to find it down.
    pub async fn acquire(&self) -> Result<PoolConnection<Any>, sqlx::Error> {
        self.guarded(self.pool.acquire()).await
    }

    /// Runs `wait` (for a connection) behind the breaker: fails at once while the database is
    /// known to be down, stops waiting once a probe finds it down, and has it probed after a
    /// failure that suggests an outage.
    async fn guarded<T>(&self, wait: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
        let _waiting = Waiting::start(&self.shared.waiting);
        let Some(reachability) = &self.shared.reachability else { return wait.await };
        if reachability.is_down() {
            return Err(unreachable());
        }
        let result = until_down_or(reachability, PROBE_AFTER, wait).await;
        if let Err(err) = &result {
            self.observe(err);
        }
        result
    }

    /// Runs `statement` (on a connection of this pool) behind the breaker: should it take longer
    /// than `PROBE_STATEMENT_AFTER`, the database is probed beside it (a fresh connection, at
    /// most one probe a `PROBE_EVERY`), and once a probe finds it down the statement is given up
    /// with the breaker's error (503) instead of waiting for a server that answers nothing. A
    /// connection whose statement ended so is not to be used again: `PoolConnection::close_on_drop`
    /// (as `is_unavailable` tells).
    pub async fn within_reach<T, E: From<sqlx::Error>>(&self, statement: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let Some(reachability) = &self.shared.reachability else { return statement.await };
        until_down_or(reachability, PROBE_STATEMENT_AFTER, statement).await
    }

    /// Has the database probed when a query failed in a way that suggests it is down. Queries
    /// through this pool's `Executor` do it themselves; call it for a statement run on a
    /// connection taken with `acquire`.
    pub fn observe(&self, err: &sqlx::Error) {
        if let Some(reachability) = &self.shared.reachability
            && is_unavailable(err)
        {
            reachability.suspect();
        }
    }

    /// After `err` on `conn`: has the database probed if it suggests an outage, and then closes
    /// the connection rather than give it back, as it may be mid-statement (`within_reach`).
    pub fn settle(&self, conn: &mut PoolConnection<Any>, err: &sqlx::Error) {
        self.observe(err);
        if is_unavailable(err) {
            conn.close_on_drop();
        }
    }
}

/// Queries on the pool acquire their connection through the breaker (`Pool::acquire`). Rows are
/// collected before they are handed on, so that the connection is held inside one future: every
/// caller here collects them anyway (`fetch_all`, `fetch_one`, `execute`); none streams a result
/// set.
impl<'p> Executor<'p> for &Pool {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let pool = self.clone();
        let results = async move {
            let mut conn = match pool.acquire().await {
                Ok(conn) => conn,
                Err(err) => return vec![Err(err)],
            };
            let collected = pool.within_reach(async { Ok::<Vec<_>, sqlx::Error>(conn.fetch_many(query).collect().await) }).await;
            let results = collected.unwrap_or_else(|err| vec![Err(err)]);
            if let Some(Err(err)) = results.last() {
                pool.settle(&mut conn, err);
            }
            results
        };
        Box::pin(stream::once(results).flat_map(stream::iter))
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let pool = self.clone();
        Box::pin(async move {
            let mut conn = pool.acquire().await?;
            let row = pool.within_reach(conn.fetch_optional(query)).await;
            if let Err(err) = &row {
                pool.settle(&mut conn, err);
            }
            row
        })
    }

    fn prepare_with<'e, 'q: 'e>(self, sql: &'q str, parameters: &'e [AnyTypeInfo]) -> BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        let pool = self.clone();
        Box::pin(async move { pool.acquire().await?.prepare_with(sql, parameters).await })
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'p: 'e,
    {
        let pool = self.clone();
        Box::pin(async move { pool.acquire().await?.describe(sql).await })
    }
}

/// What a query fails with while the breaker is open: an I/O error, so that it is classified
/// like the refused connection it stands for.
/// How long a pooled connection may sit idle and still be handed out without a test.
const TEST_IDLE_AFTER: Duration = Duration::from_secs(1);

/// sqlx's pool options as both dialects use them: a connection handed out is tested (a round
/// trip) only when it has sat idle for [`TEST_IDLE_AFTER`], not every time as sqlx's default
/// `test_before_acquire` does; under load that test was one of a single read's three round trips
/// (loadtest/README.md). sqlx still pings each connection it takes back, so one that broke in use
/// does not come back; one that breaks while idle is what the test is for.
fn idle_tested() -> AnyPoolOptions {
    AnyPoolOptions::new().test_before_acquire(false).before_acquire(|conn, meta| {
        Box::pin(async move {
            if meta.idle_for >= TEST_IDLE_AFTER {
                conn.ping().await?;
            }
            Ok(true)
        })
    })
}

/// `work`'s result, or the breaker's error once a probe (the first after `after`) finds the
/// database down. Work that ends at once never starts the race's timer.
async fn until_down_or<T, E: From<sqlx::Error>>(
    reachability: &Arc<Reachability>,
    after: Duration,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::select! {
        biased;
        result = work => result,
        () = reachability.until_down(after) => Err(unreachable().into()),
    }
}

fn unreachable() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the database is unreachable (its last probe failed); failing at once until a probe gets through",
    ))
}

/// Connects to PostgreSQL on the side, with the pool's current options (its latest password).
/// Down when the connection is refused, reset, times out or is turned away because the server
/// is starting or stopping; a server that answers with another refusal (authentication, too
/// many connections) is up, and the pool reports that refusal itself.
fn postgres_probe(pool: AnyPool) -> Probe {
    Box::new(move || {
        let options = pool.connect_options();
        Box::pin(async move {
            match options.connect().await {
                Ok(conn) => {
                    // Closing politely waits for the server; the probe's answer is already in.
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
                    });
                    Ok(())
                }
                Err(err) if refuses_connections(&err) => Err(anyhow::Error::new(err).context("connecting to PostgreSQL")),
                Err(_) => Ok(()),
            }
        })
    })
}

/// Whether `err` shows PostgreSQL not taking connections: I/O and TLS failures (refused, reset,
/// closed), connection exceptions (SQLSTATE class 08), and the server shutting down or starting
/// up (57P01 `admin_shutdown`, 57P02 `crash_shutdown`, 57P03 `cannot_connect_now`).
fn refuses_connections(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// Whether `err` means the database is down or out of connections rather than that the query
/// is wrong: `refuses_connections`, a pool that could not hand out a connection in time or is
/// closed, SQLite's worker gone, and PostgreSQL's `too_many_connections` (53300). Answered 503.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    refuses_connections(err)
        || matches!(err, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed)
        || err.as_database_error().and_then(|db| db.code()).is_some_and(|code| code == "53300")
}

/// The connect options of a PostgreSQL `url` (with the statement timeout), as `user` when given.
fn postgres_options(url: &Secret<String>, user: Option<&str>) -> anyhow::Result<AnyConnectOptions> {
    // The error would quote the URL, password and all.
    let mut options: AnyConnectOptions =
        with_statement_timeout(url.expose()).parse().map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid URL"))?;
    if let Some(user) = user {
        options.database_url.set_username(user).map_err(|()| anyhow::anyhow!("DATABASE_URL cannot name a user"))?;
    }
    Ok(options)
}

/// Sets the password of `options`, percent-encoded whole: the URL keeps a `%` as it is, and the
/// driver decodes what it reads, so an IAM token (full of `%2F`) must be encoded once more.
fn set_password(options: &mut AnyConnectOptions, password: &str) -> anyhow::Result<()> {
    options
        .database_url
        .set_password(Some(&crate::rds::encode(password)))
        .map_err(|()| anyhow::anyhow!("DATABASE_URL cannot take a password"))
}

/// Hands `pool` a fresh password from `passwords` every `every`, for the connections it opens
/// next, until the pool closes. A renewal that fails is logged and retried sooner, while the
/// last password still works (an IAM token, 15 minutes).
async fn renew_passwords(pool: AnyPool, mut options: AnyConnectOptions, passwords: PasswordSource, every: Duration) {
    let mut wait = every;
    loop {
        tokio::select! {
            () = pool.close_event() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let renewed = match passwords().await {
            Ok(password) => set_password(&mut options, password.expose()),
            Err(err) => Err(err),
        };
        match renewed {
            Ok(()) => {
                pool.set_connect_options(options.clone());
                wait = every;
                tracing::debug!("database password renewed");
            }
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "renewing the database password failed; new connections use the last one until it expires"
                );
                wait = PASSWORD_RETRY_EVERY.min(every);
            }
        }
    }
}

/// Adds a server-side statement timeout to a PostgreSQL URL unless it sets `options` itself.
fn with_statement_timeout(url: &str) -> String {
    if url.contains("options=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20statement_timeout%3D{STATEMENT_TIMEOUT_MS}")
}

/// The name of the unique index or constraint a failed write broke, if that is why it failed.
/// PostgreSQL names the constraint; SQLite names the columns ("accounts.email"), so callers match
/// on the column name, which appears in both.
pub fn unique_violation(err: &anyhow::Error) -> Option<String> {
    let db_err = err.chain().find_map(|e| e.downcast_ref::<sqlx::Error>())?.as_database_error()?;
    if !db_err.is_unique_violation() {
        return None;
    }
    Some(db_err.constraint().map(str::to_owned).unwrap_or_else(|| db_err.message().to_owned()))
}

/// The time now in Unix milliseconds, the unit every table stores.
pub fn now_millis() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_timeout_is_added_once() {
        assert_eq!(with_statement_timeout("postgres://h/db"), "postgres://h/db?options=-c%20statement_timeout%3D10000");
        assert_eq!(
            with_statement_timeout("postgres://h/db?sslmode=require"),
            "postgres://h/db?sslmode=require&options=-c%20statement_timeout%3D10000"
        );
        assert_eq!(with_statement_timeout("postgres://h/db?options=x"), "postgres://h/db?options=x");
    }

    /// A PostgreSQL error with SQLSTATE `code`, as the server reports it.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn outages_are_told_from_bad_queries() {
        let io = |kind| sqlx::Error::Io(std::io::Error::from(kind));
        let sqlstate = |code| sqlx::Error::Database(Box::new(Sqlstate(code)));
        // Not taking connections: probes fail on these, and requests are answered 503.
        for err in [
            io(std::io::ErrorKind::ConnectionRefused),
            io(std::io::ErrorKind::ConnectionReset),
            sqlstate("57P01"),
            sqlstate("57P02"),
            sqlstate("57P03"),
            sqlstate("08006"),
            unreachable(),
        ] {
            assert!(refuses_connections(&err) && is_unavailable(&err), "{err}");
        }
        // Up but unable to serve now: 503, but a probe that meets them counts as answered.
        for err in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed, sqlstate("53300")] {
            assert!(!refuses_connections(&err) && is_unavailable(&err), "{err}");
        }
        // The query's own fault.
        for err in [sqlx::Error::RowNotFound, sqlstate("23505"), sqlstate("42P01"), sqlstate("40P01"), sqlstate("28P01")] {
            assert!(!is_unavailable(&err), "{err}");
        }
    }

    #[tokio::test]
    async fn a_write_refused_by_a_replica_is_a_read_only_region_503() {
        use axum::response::IntoResponse;
        let refused = crate::ApiError::Internal(
            anyhow::Error::new(sqlx::Error::Database(Box::new(Sqlstate("25006")))).context("inserting the message"),
        );
        assert!(refused.is_read_only_region() && !is_unavailable(&sqlx::Error::Database(Box::new(Sqlstate("25006")))));
        let response = refused.into_response();
        assert_eq!(response.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["error"]["code"], "read_only_region");
        // Any other failed query stays what it was.
        let other = crate::ApiError::Internal(anyhow::Error::new(sqlx::Error::Database(Box::new(Sqlstate("23505")))));
        assert!(!other.is_read_only_region());
    }

    #[test]
    fn migrations_match_between_dialects() {
        let versions = |list: &[(i64, &str, &str)]| list.iter().map(|(v, n, _)| (*v, n.to_string())).collect::<Vec<_>>();
        assert_eq!(versions(POSTGRES_MIGRATIONS), versions(SQLITE_MIGRATIONS));
    }

    #[test]
    fn every_migration_file_is_listed() {
        for (dialect, list) in [("postgres", POSTGRES_MIGRATIONS), ("sqlite", SQLITE_MIGRATIONS)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations").join(dialect);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .expect("migrations folder")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            let listed: Vec<String> = list.iter().map(|(v, name, _)| format!("{v:04}_{name}.sql")).collect();
            assert_eq!(files, listed, "{dialect}: a migration file not in the list never runs");
        }
    }

    #[tokio::test]
    async fn sqlite_file_is_created_and_migrated_twice_safely() {
        let dir = std::env::temp_dir().join(format!("gh-db-{}", uuid::Uuid::now_v7()));
        let config = DatabaseConfig::Sqlite { path: dir.join("nested/test.db") };
        let db = Database::connect(&config).await.expect("connect");
        db.migrate().await.expect("first migrate");
        db.migrate().await.expect("second migrate is a no-op");
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts").fetch_one(db.pool()).await.expect("query");
        assert_eq!(count, 0);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
