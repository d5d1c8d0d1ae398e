//! Whether this region may write: a warm secondary region serves reads from its replicated
//! database and refuses writes with 503 `read_only_region` until its database is promoted.
//!
//! Guildhall does not keep a flag that an operator must flip in every region: it asks its own
//! database (`pg_is_in_recovery()` and `transaction_read_only`) every `REGION_CHECK_INTERVAL_MS`,
//! so where promotion keeps the database's address (`pg_promote()` on a streaming standby) it is
//! the one step that makes a region writable, and every instance follows within an interval. On
//! an Aurora Global Database a standby's tasks reach their region through the reader endpoint (a
//! secondary cluster's own cluster endpoint is not for use until promoted), so the promotion is
//! followed by a deployment onto the cluster endpoint (`DataTierPromoted`, ecs/README.md). What Guildhall
//! cannot tell from its database is set by `REGION_ROLE`: `standby` keeps a region read-only even
//! when its database takes writes, to fence an old primary that came back writable after an
//! unplanned failover, until an operator re-points or rebuilds it (see `ecs/README.md`).
//!
//! While read-only: HTTP requests other than `GET`, `HEAD` and `OPTIONS` get 503
//! `read_only_region` with `Retry-After` before they reach a handler ([`RegionGate`]); a write that
//! slips through anyway (a chat frame, a read that records something, a promotion racing the
//! check) meets the database's own refusal (SQLSTATE 25006), which `crate::error` answers the same
//! way; and the background writers (outbox relay, consumers, deliveries, schedules, purges) are
//! stopped, and started again once the region is writable ([`Region::run_while_writable`]).

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use crate::db::{Database, Dialect};
use crate::error::ApiError;
use crate::shutdown::Shutdown;

/// What a client waiting for a promotion is told to wait before retrying: a promotion is seen
/// within `REGION_CHECK_INTERVAL_MS`, but a region is promoted by a person or a runbook after an
/// outage has been noticed, and Route 53 moves players over within its health checks' period.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// `REGION_ROLE`: what this region may do, beyond what its database says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionRole {
    /// `auto` (the default): writable exactly when the database is.
    Auto,
    /// `standby`: read-only whatever the database says (fencing an old primary).
    Standby,
}

impl std::str::FromStr for RegionRole {
    type Err = anyhow::Error;

    fn from_str(value: &str) -> anyhow::Result<Self> {
        match value {
            "auto" => Ok(RegionRole::Auto),
            "standby" => Ok(RegionRole::Standby),
            other => anyhow::bail!("REGION_ROLE must be auto or standby, got {other:?}"),
        }
    }
}

/// `REGION_ROLE` and `REGION_CHECK_INTERVAL_MS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSettings {
    /// See [`RegionRole`].
    pub role: RegionRole,
    /// How often the database is asked whether it takes writes (100 ms to 60 s; default 1 s).
    pub check_every: Duration,
}

impl Default for RegionSettings {
    fn default() -> Self {
        Self { role: RegionRole::Auto, check_every: Duration::from_secs(1) }
    }
}

impl RegionSettings {
    /// Reads both settings through `get` (trimmed, empty as unset).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let role = get("REGION_ROLE").map(|v| v.parse()).transpose()?.unwrap_or(RegionRole::Auto);
        let check_every = match get("REGION_CHECK_INTERVAL_MS") {
            None => Self::default().check_every,
            Some(v) => {
                let ms: u64 = v.parse().with_context(|| format!("REGION_CHECK_INTERVAL_MS must be a whole number, got {v:?}"))?;
                anyhow::ensure!((100..=60_000).contains(&ms), "REGION_CHECK_INTERVAL_MS must be between 100 and 60000, got {ms}");
                Duration::from_millis(ms)
            }
        };
        Ok(Self { role, check_every })
    }
}

/// Whether this region writes now. Cheap to clone; every clone sees the same value.
#[derive(Clone, Debug)]
pub struct Region {
    writable: watch::Receiver<bool>,
}

impl Region {
    /// A region that always writes: SQLite (never a replica), tests that do not care.
    pub fn writable() -> Self {
        let (_tx, rx) = watch::channel(true);
        Self { writable: rx }
    }

    /// Asks `db` once whether it takes writes: false on a PostgreSQL hot standby (an Aurora
    /// reader, a secondary cluster of a global database) or one set read-only; always true on
    /// SQLite.
    pub async fn database_writable(db: &Database) -> anyhow::Result<bool> {
        if db.dialect() == Dialect::Sqlite {
            return Ok(true);
        }
        let read_only: bool = sqlx::query_scalar("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'")
            .fetch_one(db.pool())
            .await
            .context("asking the database whether it takes writes")?;
        Ok(!read_only)
    }

    /// Decides once from `db` and `settings` (an error counts as writable: a primary whose
    /// database is down answers 503 `unavailable` anyway, and a replica's refusals are answered
    /// `read_only_region` by `crate::error`), then asks again every `check_every` until
    /// `shutdown`. Returns the region and the task that keeps it current.
    pub async fn watch(db: Database, settings: RegionSettings, shutdown: Shutdown) -> (Self, tokio::task::JoinHandle<()>) {
        let decide = move |db_writable: bool| db_writable && settings.role == RegionRole::Auto;
        let first = decide(Self::database_writable(&db).await.unwrap_or(true));
        log_state(first, settings.role);
        let (tx, rx) = watch::channel(first);
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(settings.check_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.stopped() => return,
                    _ = every.tick() => {}
                }
                match tokio::time::timeout(settings.check_every.max(Duration::from_secs(1)), Self::database_writable(&db)).await {
                    Ok(Ok(db_writable)) => {
                        let now = decide(db_writable);
                        if tx.send_if_modified(|was| std::mem::replace(was, now) != now) {
                            log_state(now, settings.role);
                        }
                    }
                    // The database is down or slow: keep what was last seen (its outage is
                    // answered `unavailable` by the requests themselves).
                    Ok(Err(err)) => tracing::debug!(error = format!("{err:#}"), "region check failed"),
                    Err(_) => tracing::debug!("region check timed out"),
                }
            }
        });
        (Self { writable: rx }, task)
    }

    /// True while this region takes writes.
    pub fn is_writable(&self) -> bool {
        *self.writable.borrow()
    }

    /// The answer to a write while read-only.
    pub fn refusal() -> ApiError {
        ApiError::ReadOnlyRegion
    }

    /// Waits until the region is `writable` (returns at once when it is).
    async fn until(&mut self, writable: bool) {
        // The sender lives as long as the watch task; should it end (shutdown), stay put.
        if self.writable.wait_for(|w| *w == writable).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs a background writer only while the region is writable: `start` gets a shutdown of
    /// its own, stopped when `shutdown` stops or the region turns read-only, and is called again
    /// when it turns writable. Returns when `shutdown` stops.
    pub async fn run_while_writable<F, Fut>(mut self, shutdown: Shutdown, mut start: F)
    where
        F: FnMut(Shutdown) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            tokio::select! {
                () = shutdown.stopped() => return,
                () = self.until(true) => {}
            }
            let phase = Shutdown::new();
            let work = start(phase.clone());
            tokio::pin!(work);
            let mut watcher = self.clone();
            tokio::select! {
                () = &mut work => {
                    // The writer ended by itself (a writer that runs once): nothing more to do
                    // until shutdown.
                    shutdown.stopped().await;
                    return;
                }
                () = shutdown.stopped() => phase.trigger(),
                () = watcher.until(false) => phase.trigger(),
            }
            // Let it finish its round (a relay flushes, a consumer lets its messages go).
            work.await;
            if shutdown.is_stopped() {
                return;
            }
        }
    }
}

fn log_state(writable: bool, role: RegionRole) {
    if writable {
        tracing::info!("region is writable: the database takes writes");
    } else if role == RegionRole::Standby {
        tracing::warn!("region is read-only (REGION_ROLE=standby): writes are refused with 503 read_only_region");
    } else {
        tracing::warn!(
            "region is read-only (the database is a replica): writes are refused with 503 read_only_region until it is promoted"
        );
    }
}

impl Region {
    /// Whether `method` may run now: always for `GET`, `HEAD` and `OPTIONS`, others only while
    /// the region is writable.
    fn admits(&self, method: &Method) -> bool {
        matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || self.is_writable()
    }
}

/// Middleware: while the region is read-only, refuses every request but `GET`, `HEAD` and
/// `OPTIONS` (sign-ins, refreshes and logouts included: they write sessions) with 503
/// `read_only_region`. Given to `http::with_common_layers` (`HttpSettings::region_gate`), whose
/// stack wraps every route, the hot reads included: so a plain layer rather than
/// `middleware::from_fn`, which clones the inner service and boxes two futures per request.
#[derive(Clone, Debug)]
pub struct RegionGate(pub Region);

impl<S> tower::Layer<S> for RegionGate {
    type Service = RegionGateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RegionGateService { inner, region: self.0.clone() }
    }
}

/// A route behind [`RegionGate`].
#[derive(Clone, Debug)]
pub struct RegionGateService<S> {
    inner: S,
    region: Region,
}

impl<S> tower::Service<Request> for RegionGateService<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, std::future::Ready<Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if self.region.admits(request.method()) {
            return futures_util::future::Either::Left(self.inner.call(request));
        }
        futures_util::future::Either::Right(std::future::ready(Ok(Region::refusal().into_response())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_read_and_bounded() {
        let none = RegionSettings::from_lookup(|_| None).expect("defaults");
        assert_eq!(none, RegionSettings::default());
        let standby = RegionSettings::from_lookup(|k| match k {
            "REGION_ROLE" => Some("standby".into()),
            "REGION_CHECK_INTERVAL_MS" => Some("250".into()),
            _ => None,
        })
        .expect("standby");
        assert_eq!(standby, RegionSettings { role: RegionRole::Standby, check_every: Duration::from_millis(250) });
        assert!(RegionSettings::from_lookup(|k| (k == "REGION_ROLE").then(|| "primary".into())).is_err());
        assert!(RegionSettings::from_lookup(|k| (k == "REGION_CHECK_INTERVAL_MS").then(|| "10".into())).is_err());
    }

    #[tokio::test]
    async fn a_writer_runs_only_while_writable() {
        let (tx, rx) = watch::channel(false);
        let region = Region { writable: rx };
        let shutdown = Shutdown::new();
        let starts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = starts.clone();
        let runner = tokio::spawn(region.run_while_writable(shutdown.clone(), move |phase: Shutdown| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { phase.stopped().await }
        }));
        let started = || starts.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(started(), 0, "read-only: the writer must not start");
        tx.send_replace(true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(started(), 1);
        tx.send_replace(false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(started(), 2, "stopped when read-only, started again when writable");
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(1), runner).await.expect("ends on shutdown").expect("no panic");
    }
}
