//! Reads from a replica (`DATABASE_READ_URL`, Aurora's reader endpoint): which reads go to the
//! reader, and when they must not.
//!
//! Reads that tolerate a little lag (top lists, other players' profiles, archived seasons, chat
//! history, asset metadata) ask their `Database` for `Database::reads_for(viewer)` instead of
//! the writer's pool. They get the reader unless one of these holds, in which case the writer:
//!
//! - **The viewer wrote recently** (read-your-writes). Every state-changing request of a player
//!   (`mark_writers`, an axum layer, once the handler answered) and every chat message sent on a
//!   socket (`Database::note_write`) puts a key `rw:{account}` in the cache (Redis: every
//!   instance and service sees it) for `ReadRouting::window`. While it is there, that player's
//!   reads go to the writer. A key that cannot be read (Redis down) counts as present.
//! - **The reader is behind or down.** A heartbeat (`run_lag_monitor`) writes the writer's
//!   clock into `replica_heartbeat` every `BEAT_EVERY` and reads it back from the reader: how
//!   long the oldest beat the reader does not show has been committed is the reader's lag
//!   (`guildhall_db_replica_lag_seconds`). While it is over
//!   `DATABASE_READ_MAX_LAG_MS`, the reader does not answer, or the last measure is older than
//!   `STALE_AFTER`, reads go to the writer.
//!
//! Why this design rather than positions (the writer's commit LSN per account compared with the
//! reader's `pg_last_wal_replay_lsn()`): that needs a round trip to the reader per read to learn
//! its position, and Aurora's replicas do not replay WAL (they share storage), so the function
//! does not tell their position there. A client-echoed token would trust the client with routing.
//! The window costs one cache lookup per read and is correct by construction: a read routed to
//! the reader happens at least `window` after the viewer's last write committed, and the reader
//! is used only while it was measured, at most `STALE_AFTER` ago, less than `max_lag` behind; so
//! with `window = max_lag + STALE_AFTER + BEAT_EVERY`, the reader has that write. Players who
//! write constantly read from the writer; everyone else (most reads) from the reader.
//!
//! Falling back is bounded: reads that should have gone to the reader but go to the writer hold
//! one of `fallback` permits (half the writer's pool) while they run, so a reader outage moves
//! at most that many connections' worth of reads onto the writer; beyond it a read waits briefly
//! and then gets 503 `unavailable` rather than starving the writes. The decision is the
//! monitor's (one probe a second per process), not each request's, so an outage is not met by
//! every request retrying the reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::{Cache, REDIS_TIMEOUT};
use crate::db::{Pool, now_millis};
use crate::metrics::{Counter, Metrics};
use crate::shutdown::Shutdown;

/// How often the heartbeat is written to the writer and read from the reader.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// A lag measured longer ago than this is not trusted: reads go to the writer until a new one.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// How long a read that falls back to the writer waits for a fallback permit before 503.
const FALLBACK_WAIT: Duration = Duration::from_secs(1);

/// Where lag-tolerant reads go, shared by every pool of a process (one verdict on the reader).
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadRouting(Arc<RoutingInner>);

#[derive(Debug)]
struct RoutingInner {
    cache: Cache,
    max_lag: Duration,
    window: Duration,
    /// The last measure: lag in milliseconds, or -1 when the reader did not answer.
    lag_ms: AtomicI64,
    /// When the last measure was taken.
    measured_at: std::sync::Mutex<Option<Instant>>,
    /// Whether the last measure allows reads on the reader (kept for the log on changes).
    usable: AtomicBool,
    fallback: Arc<Semaphore>,
    to_reader: Counter,
    to_writer_recent: Counter,
    to_writer_fallback: Counter,
}

/// Why a read went where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the reader.
    Reader,
    /// To the writer: the viewer wrote within the window.
    RecentWrite,
    /// To the writer: the reader is behind, down or not measured lately.
    Fallback,
}

impl ReadRouting {
    /// Routing with the reader allowed `max_lag` behind, the read-your-writes keys in `cache`,
    /// and at most `fallback_permits` reads falling back to the writer at once.
    pub fn new(cache: Cache, max_lag: Duration, fallback_permits: usize) -> Self {
        ReadRouting(Arc::new(RoutingInner {
            cache,
            max_lag,
            window: max_lag + STALE_AFTER + BEAT_EVERY,
            lag_ms: AtomicI64::new(-1),
            measured_at: std::sync::Mutex::new(None),
            usable: AtomicBool::new(false),
            fallback: Arc::new(Semaphore::new(fallback_permits.max(1))),
            to_reader: Counter::default(),
            to_writer_recent: Counter::default(),
            to_writer_fallback: Counter::default(),
        }))
    }

    /// How long after a player's write their reads go to the writer.
    pub fn window(&self) -> Duration {
        self.0.window
    }

    /// The cache key that marks `account` as having written lately.
    fn key(account: &str) -> String {
        format!("rw:{account}")
    }

    /// Marks `account` as having just written: their reads go to the writer for `window`. A
    /// failure is logged, not returned: the write itself has committed; the reads it affects
    /// are those within the reader's lag, which is usually milliseconds.
    pub async fn note_write(&self, account: &str) {
        let marked = tokio::time::timeout(REDIS_TIMEOUT, self.0.cache.set_ex(&Self::key(account), "1", self.0.window)).await;
        if !matches!(marked, Ok(Ok(()))) {
            tracing::warn!("marking a player's recent write failed; their next reads may come from a lagging reader");
        }
    }

    /// Whether the reader may serve now, by the last measure.
    pub fn reader_usable(&self) -> bool {
        let lag = self.0.lag_ms.load(Ordering::Relaxed);
        let fresh = self.0.measured_at.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|at| at.elapsed() < STALE_AFTER);
        fresh && lag >= 0 && u128::try_from(lag).unwrap_or(u128::MAX) <= self.0.max_lag.as_millis()
    }

    /// Where a read by `viewer` (none: anonymous, or a server) goes now.
    pub async fn route(&self, viewer: Option<&str>, reader_down: bool) -> Route {
        if reader_down || !self.reader_usable() {
            return Route::Fallback;
        }
        if let Some(account) = viewer {
            let wrote = tokio::time::timeout(REDIS_TIMEOUT, self.0.cache.exists(&Self::key(account))).await;
            // Not knowing is treated as having written: the writer is always correct.
            if !matches!(wrote, Ok(Ok(false))) {
                return Route::RecentWrite;
            }
        }
        Route::Reader
    }

    /// Counts a routed read.
    pub(crate) fn count(&self, route: Route) {
        match route {
            Route::Reader => self.0.to_reader.inc(),
            Route::RecentWrite => self.0.to_writer_recent.inc(),
            Route::Fallback => self.0.to_writer_fallback.inc(),
        }
    }

    /// A permit for a read falling back to the writer; `PoolTimedOut` (503) when too many are
    /// running already for `FALLBACK_WAIT`.
    pub(crate) async fn fallback_permit(&self) -> Result<OwnedSemaphorePermit, sqlx::Error> {
        match tokio::time::timeout(FALLBACK_WAIT, self.0.fallback.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(sqlx::Error::PoolTimedOut),
        }
    }

    /// Records a measure of the reader: its lag, or `None` when it did not answer.
    pub fn record(&self, lag: Option<Duration>) {
        let lag_ms = lag.map_or(-1, |lag| i64::try_from(lag.as_millis()).unwrap_or(i64::MAX));
        self.0.lag_ms.store(lag_ms, Ordering::Relaxed);
        *self.0.measured_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let usable = self.reader_usable();
        if self.0.usable.swap(usable, Ordering::Relaxed) != usable {
            if usable {
                tracing::info!(lag_ms, "the database reader is caught up; lag-tolerant reads go to it");
            } else {
                tracing::warn!(
                    lag_ms,
                    max_lag_ms = self.0.max_lag.as_millis(),
                    "the database reader is behind or down; its reads go to the writer"
                );
            }
        }
    }

    /// Registers the figures: `guildhall_db_replica_lag_seconds` (absent while the reader does
    /// not answer), `guildhall_db_replica_usable`, and `guildhall_db_reads_total{route}`.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let routing = self.clone();
        metrics.gauge_fn(
            "guildhall_db_replica_lag_seconds",
            "How far the database reader was behind the writer at its last measure.",
            &[],
            move || {
                let lag = routing.0.lag_ms.load(Ordering::Relaxed);
                (lag >= 0).then(|| lag as f64 / 1000.0)
            },
        );
        let routing = self.clone();
        metrics.gauge_fn("guildhall_db_replica_usable", "1 while lag-tolerant reads go to the database reader, else 0.", &[], move || {
            Some(if routing.reader_usable() { 1.0 } else { 0.0 })
        });
        let help = "Lag-tolerant reads, by where they went: reader, writer_recent_write (read-your-writes) or writer_fallback.";
        metrics.register_counter("guildhall_db_reads_total", help, &[("route", "reader")], &self.0.to_reader);
        metrics.register_counter("guildhall_db_reads_total", help, &[("route", "writer_recent_write")], &self.0.to_writer_recent);
        metrics.register_counter("guildhall_db_reads_total", help, &[("route", "writer_fallback")], &self.0.to_writer_fallback);
    }
}

/// Measures the reader's lag every `BEAT_EVERY` until shutdown: reads the latest heartbeat the
/// reader has (`replica_heartbeat`), then writes a new one to the writer. The lag is how long
/// the oldest beat this process committed that the reader does not show yet has been waiting
/// (`Beats`); none waiting, the reader is caught up with every write committed up to the last beat.
/// Every instance beats into the one row; a later beat of another instance counts as showing
/// the earlier ones (the row holds the clock of whichever committed last).
pub async fn run_lag_monitor(writer: Pool, reader: Pool, routing: ReadRouting, shutdown: Shutdown) {
    let mut beats = Beats::default();
    loop {
        let lag = match visible_beat(&reader).await {
            Ok(visible) => beats.lag(visible),
            Err(err) => {
                tracing::debug!(error = format!("{err:#}"), "reading the replica heartbeat from the reader failed");
                None
            }
        };
        routing.record(lag);
        beat(&writer, &mut beats).await;
        tokio::select! {
            () = shutdown.stopped() => return,
            () = tokio::time::sleep(BEAT_EVERY) => {}
        }
    }
}

/// The beats this process committed that the reader was not yet seen to show.
#[derive(Debug, Default)]
struct Beats {
    /// Each beat's value and when its commit returned, oldest first.
    waiting: std::collections::VecDeque<(i64, Instant)>,
    /// The last value written, so that each is unique and growing.
    last: i64,
    /// Whether the reader was ever seen to show one of them (before that, nothing is known).
    seen_one: bool,
}

/// Beats kept waiting at most (an hour's): a reader further behind is reported that far.
const MAX_WAITING_BEATS: usize = 3600;

impl Beats {
    /// The reader's lag, given the heartbeat it shows now.
    fn lag(&mut self, visible: i64) -> Option<Duration> {
        while self.waiting.front().is_some_and(|(value, _)| *value <= visible) {
            self.waiting.pop_front();
            self.seen_one = true;
        }
        match self.waiting.front() {
            Some((_, committed)) => Some(committed.elapsed()),
            None if self.seen_one => Some(Duration::ZERO),
            None => None,
        }
    }

    /// The value of the next beat.
    fn next(&mut self) -> i64 {
        self.last = now_millis().max(self.last + 1);
        self.last
    }

    /// Remembers a committed beat.
    fn committed(&mut self, value: i64) {
        if self.waiting.len() == MAX_WAITING_BEATS {
            // Keeps the oldest: the lag is measured from it.
            self.waiting.remove(1);
        }
        self.waiting.push_back((value, Instant::now()));
    }
}

/// The heartbeat the reader shows, within a second.
async fn visible_beat(reader: &Pool) -> anyhow::Result<i64> {
    let read = sqlx::query_scalar::<_, i64>("SELECT beat_ms FROM replica_heartbeat WHERE id = 1").fetch_one(reader);
    tokio::time::timeout(BEAT_EVERY, read)
        .await
        .context("the reader did not answer within a second")?
        .context("reading the heartbeat from the reader")
}

/// Writes a beat to the writer, within a second. One that fails (the writer down, or a
/// read-only region) is only logged: beats already waiting keep the lag growing, which is right,
/// since nothing newer reaches the reader either.
async fn beat(writer: &Pool, beats: &mut Beats) {
    let value = beats.next();
    let write = sqlx::query("UPDATE replica_heartbeat SET beat_ms = $1 WHERE id = 1 AND beat_ms < $1").bind(value).execute(writer);
    match tokio::time::timeout(BEAT_EVERY, write).await {
        Ok(Ok(_)) => beats.committed(value),
        Ok(Err(err)) => tracing::debug!(error = %err, "writing the replica heartbeat failed"),
        Err(_) => tracing::debug!("writing the replica heartbeat took over a second"),
    }
}

/// Who a state-changing request was made by, filled in by the `Player` extractor
/// (`crate::auth`) for `mark_writers`.
#[derive(Debug, Clone, Default)]
pub struct WriterSlot(Arc<std::sync::OnceLock<String>>);

impl WriterSlot {
    /// Records the request's player.
    pub fn fill(&self, account: &str) {
        let _ = self.0.set(account.to_owned());
    }
}

/// An axum layer (`axum::middleware::from_fn_with_state`): after a state-changing request of a
/// player has been answered, and before the answer leaves, marks the player as having written
/// (`ReadRouting::note_write`), so that what they read next comes from the writer. After, not
/// before: the window must start once the write has committed.
pub async fn mark_writers(State(routing): State<ReadRouting>, mut request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let slot = WriterSlot::default();
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    if let Some(account) = slot.0.get() {
        routing.note_write(account).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_go_to_the_reader_only_when_measured_close_and_not_after_a_write() {
        let routing = ReadRouting::new(Cache::Memory(Default::default()), Duration::from_millis(500), 2);
        // Never measured: the writer.
        assert_eq!(routing.route(None, false).await, Route::Fallback);
        routing.record(Some(Duration::from_millis(10)));
        assert_eq!(routing.route(None, false).await, Route::Reader);
        assert_eq!(routing.route(Some("ana"), false).await, Route::Reader);
        assert_eq!(routing.route(Some("ana"), true).await, Route::Fallback, "a reader whose breaker is open is not used");
        routing.note_write("ana").await;
        assert_eq!(routing.route(Some("ana"), false).await, Route::RecentWrite);
        assert_eq!(routing.route(Some("bo"), false).await, Route::Reader);
        routing.record(Some(Duration::from_millis(800)));
        assert_eq!(routing.route(Some("bo"), false).await, Route::Fallback, "over the lag allowed");
        routing.record(None);
        assert_eq!(routing.route(None, false).await, Route::Fallback, "not answering");
        assert!(routing.window() > Duration::from_millis(500) + STALE_AFTER);
    }

    #[test]
    fn the_lag_is_the_wait_of_the_oldest_beat_not_shown() {
        let mut beats = Beats::default();
        assert_eq!(beats.lag(0), None, "nothing written yet: unknown");
        beats.committed(100);
        beats.committed(200);
        assert!(beats.lag(50).is_some_and(|lag| lag < Duration::from_secs(1)), "both waiting");
        assert_eq!(beats.waiting.len(), 2);
        assert_eq!(beats.lag(150).map(|_| beats.waiting.len()), Some(1));
        assert_eq!(beats.lag(250), Some(Duration::ZERO), "a later beat (another instance's) shows ours");
        assert_eq!(beats.lag(250), Some(Duration::ZERO), "caught up stays caught up");
        let first = beats.next();
        assert!(beats.next() > first, "beats grow");
    }

    #[tokio::test]
    async fn fallback_is_bounded() {
        let routing = ReadRouting::new(Cache::Memory(Default::default()), Duration::from_secs(1), 1);
        let held = routing.fallback_permit().await.expect("first permit");
        assert!(matches!(routing.fallback_permit().await, Err(sqlx::Error::PoolTimedOut)));
        drop(held);
        assert!(routing.fallback_permit().await.is_ok());
    }
}
