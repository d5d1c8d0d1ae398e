//! Test support (feature `test-support`): a configuration per test on either backend set, each
//! with its own database (a fresh PostgreSQL database, or a SQLite file in a fresh folder) and
//! its own Redis key prefix, so tests run in parallel without sharing state.
//!
//! The real backends come from `GUILDHALL_TEST_POSTGRES_URL` (a server URL whose user may create
//! databases) and `GUILDHALL_TEST_REDIS_URL`, which `scripts/test.sh` sets after starting
//! throwaway servers. Without them the real-backend tests fail, saying how to run them, unless
//! `GUILDHALL_SKIP_REAL_BACKENDS=1` is set explicitly.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use sqlx::Connection;

/// Which backend set a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file and in-memory cache.
    Embedded,
    /// PostgreSQL and Redis.
    Real,
}

/// The environment of one test's server (or servers, when several share it).
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// Which backends.
    pub backend: Backend,
    /// Variables to build the `Config` from or to pass to a child process.
    pub vars: HashMap<String, String>,
    /// The test's own folder (DATA_DIR).
    pub dir: PathBuf,
    /// Removes the folder when the last clone of this environment is dropped.
    _cleanup: std::sync::Arc<RemoveOnDrop>,
}

#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True when the real-backend tests were explicitly turned off.
pub fn real_backends_skipped() -> bool {
    std::env::var("GUILDHALL_SKIP_REAL_BACKENDS").is_ok_and(|v| v == "1")
}

fn required(var: &str) -> anyhow::Result<String> {
    std::env::var(var).with_context(|| {
        format!("{var} is not set: run the tests with scripts/test.sh, which starts PostgreSQL and Redis, or set GUILDHALL_SKIP_REAL_BACKENDS=1 to run only the embedded-backend tests")
    })
}

impl TestEnv {
    /// A fresh environment on `backend`.
    pub async fn new(backend: Backend) -> anyhow::Result<Self> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("guildhall-test-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut vars = HashMap::new();
        vars.insert("DATA_DIR".to_owned(), dir.display().to_string());
        vars.insert("LISTEN_ADDR".to_owned(), "127.0.0.1:0".to_owned());
        vars.insert("LOG_FORMAT".to_owned(), "json".to_owned());
        vars.insert("SHUTDOWN_GRACE_SECS".to_owned(), "2".to_owned());
        // Many sign-ups from one address: tests that exercise the limits set their own.
        vars.insert("RATE_LIMIT_AUTH_PER_IP_PER_MINUTE".to_owned(), "100000".to_owned());
        vars.insert("RATE_LIMIT_LOGIN_PER_ACCOUNT_PER_15_MINUTES".to_owned(), "1000".to_owned());
        if backend == Backend::Real {
            let server = required("GUILDHALL_TEST_POSTGRES_URL")?;
            let redis = required("GUILDHALL_TEST_REDIS_URL")?;
            let database = format!("gh_test_{id}");
            let mut admin = sqlx::PgConnection::connect(&server).await.context("connecting to the test PostgreSQL server")?;
            // The name is made of hex digits above, never input; CREATE DATABASE takes no parameters.
            sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut admin).await.context("creating the test database")?;
            admin.close().await.ok();
            vars.insert("DATABASE_URL".to_owned(), with_database(&server, &database));
            vars.insert("REDIS_URL".to_owned(), redis);
            vars.insert("REDIS_KEY_PREFIX".to_owned(), format!("test:{id}:"));
        }
        Ok(TestEnv { backend, vars, _cleanup: std::sync::Arc::new(RemoveOnDrop(dir.clone())), dir })
    }

    /// Sets (or overrides) one variable.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.vars.insert(key.to_owned(), value.into());
        self
    }

    /// The configuration these variables describe.
    pub fn config(&self) -> anyhow::Result<crate::config::Config> {
        crate::config::Config::from_map(&self.vars)
    }
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| i + scheme_end);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_is_replaced() {
        assert_eq!(super::with_database("postgres://u@h:5/postgres", "x"), "postgres://u@h:5/x");
        assert_eq!(super::with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(super::with_database("postgres://u@h/p?host=/tmp", "x"), "postgres://u@h/x?host=/tmp");
    }
}
