//! The relational database: PostgreSQL in production, a SQLite file on embedded defaults.
//!
//! Both go through sqlx's `Any` driver so that each store writes its SQL once: the schema keeps
//! to types both dialects share (TEXT ids, BIGINT Unix-millisecond times, TEXT JSON) and the
//! queries use `$1` placeholders, which SQLite accepts too. Only the migrations differ, one
//! folder per dialect under `migrations/`, embedded in the binary.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor, Transaction};

use crate::config::DatabaseConfig;

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
    pool: AnyPool,
    dialect: Dialect,
}

/// A transaction on either dialect.
pub type Tx = Transaction<'static, Any>;

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
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "accounts", include_str!("../../../migrations/sqlite/0001_accounts.sql")),
    (2, "leaderboards", include_str!("../../../migrations/sqlite/0002_leaderboards.sql")),
    (3, "event_delivery", include_str!("../../../migrations/sqlite/0003_event_delivery.sql")),
    (4, "chat", include_str!("../../../migrations/sqlite/0004_chat.sql")),
    (5, "uploads", include_str!("../../../migrations/sqlite/0005_uploads.sql")),
    (6, "submission_keys", include_str!("../../../migrations/sqlite/0006_submission_keys.sql")),
    (7, "index_checks", include_str!("../../../migrations/sqlite/0007_index_checks.sql")),
];

/// How long a request waits for a pooled connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// PostgreSQL cancels any statement that runs longer (an external call's timeout).
const STATEMENT_TIMEOUT_MS: u32 = 10_000;

impl Database {
    /// Connects (creating the SQLite file and its folder when needed).
    pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Self> {
        install_default_drivers();
        match config {
            DatabaseConfig::Postgres { url, max_connections } => {
                let url = with_statement_timeout(url.expose());
                let pool = AnyPoolOptions::new()
                    .max_connections(*max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect(&url)
                    .await
                    .context("connecting to PostgreSQL")?;
                Ok(Database { pool, dialect: Dialect::Postgres })
            }
            DatabaseConfig::Sqlite { path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating {}", dir.display()))?;
                }
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let pool = AnyPoolOptions::new()
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
                Ok(Database { pool, dialect: Dialect::Sqlite })
            }
        }
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &AnyPool {
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
            Dialect::Postgres => self.pool.begin().await,
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
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
        migrator.run(&self.pool).await.context("applying migrations")
    }

    /// Answers whether the database takes a trivial query (readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.context("pinging the database")?;
        Ok(())
    }

    /// Closes every connection (shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
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

    #[test]
    fn migrations_match_between_dialects() {
        let versions = |list: &[(i64, &str, &str)]| list.iter().map(|(v, n, _)| (*v, n.to_string())).collect::<Vec<_>>();
        assert_eq!(versions(POSTGRES_MIGRATIONS), versions(SQLITE_MIGRATIONS));
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
