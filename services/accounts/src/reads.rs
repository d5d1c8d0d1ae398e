//! A player's own account by id (`GET /v1/accounts/me`), read in batches.
//!
//! Each read on the pool costs PostgreSQL two round trips: the statement, and the ping sqlx's
//! pool sends on every connection it takes back (`PoolConnection::return_to_pool` in sqlx-core
//! 0.8.6 and 0.9.0; loadtest/README.md, issue 14). Here a few lanes each take the reads queued
//! while their previous statement ran and answer them with one `SELECT ... WHERE id IN (...)`,
//! keeping their connection from one batch to the next while reads keep coming, so at 50
//! concurrent players one statement (and at most one ping) serves many requests.
//!
//! A lone read goes straight out: a lane waits for no timer, only for its connection and its
//! statement. The queue is bounded: a full one is a fast 503 `unavailable`, and a read that gets
//! no answer within [`ANSWER_WITHIN`] is one too. The SQL is one text per batch size for both
//! dialects, so SQLite batches alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use platform::db::Pool;
use platform::error::{Dependency, Unreachable};
use platform::{ApiError, ApiResult};
use tokio::sync::{mpsc, oneshot};

use crate::store::{self, AccountRow};

/// Lanes, each with at most one connection of the pool at a time: two keep both of
/// PostgreSQL's cores of a small instance busy while leaving the pool to everything else.
pub const LANES: usize = 2;
/// Reads queued on one lane at most; beyond, a read is refused at once (503) rather than
/// queued behind a database that does not keep up.
const QUEUE_PER_LANE: usize = 1024;
/// How long a read waits for its answer: a connection (the pool's acquire timeout, 5 s) and
/// the statement, with room to spare. Past it the read is answered 503; the lane still answers
/// into the void, which costs nothing.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The queues of the lanes, and what they did. Cheap to clone.
#[derive(Clone)]
pub struct AccountReads {
    lanes: Arc<[mpsc::Sender<Ask>]>,
    next: Arc<AtomicUsize>,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for AccountReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountReads").field("lanes", &self.lanes.len()).field("queued", &self.queued()).finish()
    }
}

/// Statements run and accounts asked for, since the start.
#[derive(Debug, Default)]
struct Counts {
    statements: AtomicU64,
    asked: AtomicU64,
}

/// One read waiting for its batch.
struct Ask {
    id: String,
    answer: oneshot::Sender<Result<Option<AccountRow>, Failure>>,
}

/// Why a batch failed, told to each of its reads (an `anyhow::Error` cannot be cloned).
#[derive(Clone)]
struct Failure {
    /// The database was down or out of connections: 503 rather than 500.
    unavailable: bool,
    detail: String,
}

impl Failure {
    fn of(err: &anyhow::Error) -> Self {
        Failure { unavailable: platform::error::unavailable_dependency(err).is_some(), detail: format!("{err:#}") }
    }

    fn into_api_error(self) -> ApiError {
        if self.unavailable {
            unavailable(&self.detail)
        } else {
            ApiError::Internal(anyhow::anyhow!("reading accounts in a batch: {}", self.detail))
        }
    }
}

fn unavailable(detail: &str) -> ApiError {
    ApiError::Internal(anyhow::Error::new(Unreachable { dependency: Dependency::Database, detail: detail.to_owned() }))
}

impl AccountReads {
    /// Starts `lanes` lanes reading from `pool` (on the current Tokio runtime). They end when the
    /// last clone of the returned handle is dropped.
    pub fn start(pool: Pool, lanes: usize) -> Self {
        let counts = Arc::new(Counts::default());
        let senders: Vec<_> = (0..lanes.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(QUEUE_PER_LANE);
                tokio::spawn(run_lane(pool.clone(), receiver, counts.clone()));
                sender
            })
            .collect();
        AccountReads { lanes: senders.into(), next: Arc::new(AtomicUsize::new(0)), counts }
    }

    /// The account with `id`, read in the next batch of a lane.
    pub async fn account(&self, id: &str) -> ApiResult<Option<AccountRow>> {
        let (answer, answered) = oneshot::channel();
        let mut ask = Ask { id: id.to_owned(), answer };
        // Round robin, and the next lane when one is full.
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.lanes.len() {
            match self.lanes[(first + offset) % self.lanes.len()].try_send(ask) {
                Ok(()) => {
                    return match tokio::time::timeout(ANSWER_WITHIN, answered).await {
                        Ok(Ok(read)) => read.map_err(Failure::into_api_error),
                        Ok(Err(_)) => Err(unavailable("the account reader stopped")),
                        Err(_) => Err(unavailable("an account read got no answer in time")),
                    };
                }
                Err(mpsc::error::TrySendError::Full(back) | mpsc::error::TrySendError::Closed(back)) => ask = back,
            }
        }
        Err(unavailable("too many account reads are waiting"))
    }

    /// Reads queued and not yet taken into a batch, over all lanes.
    pub fn queued(&self) -> usize {
        self.lanes.iter().map(|lane| lane.max_capacity() - lane.capacity()).sum()
    }

    /// Statements run so far, and accounts asked for in them (a test's proof of batching).
    pub fn counts(&self) -> (u64, u64) {
        (self.counts.statements.load(Ordering::Relaxed), self.counts.asked.load(Ordering::Relaxed))
    }
}

/// One lane: waits for a read, takes a connection, then answers what is queued in batches of at
/// most `store::MAX_ACCOUNTS_AT_ONCE` on that connection until the queue is empty, and gives it
/// back (one ping for the whole run of batches).
async fn run_lane(pool: Pool, mut asks: mpsc::Receiver<Ask>, counts: Arc<Counts>) {
    let mut batch: Vec<Ask> = Vec::with_capacity(store::MAX_ACCOUNTS_AT_ONCE);
    while let Some(first) = asks.recv().await {
        batch.push(first);
        // Taken before the queue is read again, so that what arrives meanwhile joins the batch.
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(err) => {
                fail(&mut batch, Failure::of(&anyhow::Error::new(err).context("waiting for a database connection")));
                continue;
            }
        };
        loop {
            while batch.len() < store::MAX_ACCOUNTS_AT_ONCE {
                match asks.try_recv() {
                    Ok(ask) => batch.push(ask),
                    Err(_) => break,
                }
            }
            // Callers that gave up (a closed connection, a timeout) need no row.
            batch.retain(|ask| !ask.answer.is_closed());
            if batch.is_empty() {
                break;
            }
            let ids: Vec<&str> = batch.iter().map(|ask| ask.id.as_str()).collect();
            let read = store::accounts_by_ids(&mut *conn, &ids).await;
            counts.statements.fetch_add(1, Ordering::Relaxed);
            counts.asked.fetch_add(batch.len() as u64, Ordering::Relaxed);
            match read {
                Ok(rows) => {
                    for ask in batch.drain(..) {
                        let row = rows.iter().find(|row| row.id == ask.id).cloned();
                        let _ = ask.answer.send(Ok(row));
                    }
                }
                Err(err) => {
                    if let Some(sqlx) = err.downcast_ref::<sqlx::Error>() {
                        pool.observe(sqlx);
                    }
                    fail(&mut batch, Failure::of(&err));
                    // The connection may be broken: back to the pool, whose ping tells.
                    break;
                }
            }
            if asks.is_empty() {
                break;
            }
        }
    }
}

/// Answers every read of a failed batch with its failure, emptying the batch.
fn fail(batch: &mut Vec<Ask>, failure: Failure) {
    for ask in batch.drain(..) {
        let _ = ask.answer.send(Err(failure.clone()));
    }
}
