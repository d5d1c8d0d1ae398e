//! Lanes that answer many small requests with one statement.
//!
//! A request alone on the pool costs PostgreSQL its statement and the ping sqlx's pool sends on
//! every connection it takes back (`PoolConnection::return_to_pool` in sqlx-core 0.8.6 and
//! 0.9.0), and a write its own commit and WAL flush. A few lanes each take the requests queued
//! while their previous statement ran and answer them with one statement ([`Batched::run`]),
//! keeping their connection from one batch to the next while requests keep coming: at 50
//! concurrent players one statement, one commit and at most one ping serve many requests.
//!
//! A lone request goes straight out: a lane waits for no timer, only for its connection and its
//! statement. The queue is bounded: a full one is a fast 503 `unavailable`, and a request that
//! gets no answer within [`ANSWER_WITHIN`] is one too. A failed statement fails every request of
//! its batch (with 503 when the database was unreachable), and tells the pool's breaker.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::AnyConnection;
use tokio::sync::{mpsc, oneshot};

use super::Pool;
use crate::error::{Dependency, Unreachable};
use crate::{ApiError, ApiResult};

/// Requests queued on one lane at most; beyond, a request is refused at once (503) rather than
/// queued behind a database that does not keep up.
const QUEUE_PER_LANE: usize = 1024;
/// How long a request waits for its answer: a connection (the pool's acquire timeout, 5 s) and
/// the statement, with room to spare. Past it the request is answered 503; the lane still
/// answers into the void, which costs nothing. A write may still commit after that answer, as
/// a write whose client went away may.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// One kind of request answered in batches: what a request carries, what it gets back, and the
/// statement that answers a batch.
pub trait Batched: Send + Sync + 'static {
    /// One request.
    type Ask: Send + Sync + 'static;
    /// Its answer.
    type Answer: Send + 'static;
    /// Most requests one statement answers.
    const MAX: usize;
    /// What the requests are, for errors and logs ("account reads").
    const WHAT: &'static str;

    /// Answers `asks` (1 to `MAX` of them) with one statement on `conn`: one answer per ask, in
    /// their order.
    fn run(&self, conn: &mut AnyConnection, asks: &[&Self::Ask]) -> impl Future<Output = anyhow::Result<Vec<Self::Answer>>> + Send;
}

/// The queues of the lanes, and what they did. Cheap to clone.
pub struct Lanes<B: Batched> {
    lanes: Arc<[mpsc::Sender<Pending<B>>]>,
    next: Arc<AtomicUsize>,
    counts: Arc<Counts>,
}

impl<B: Batched> Clone for Lanes<B> {
    fn clone(&self) -> Self {
        Lanes { lanes: self.lanes.clone(), next: self.next.clone(), counts: self.counts.clone() }
    }
}

impl<B: Batched> std::fmt::Debug for Lanes<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes").field("what", &B::WHAT).field("lanes", &self.lanes.len()).field("queued", &self.queued()).finish()
    }
}

/// Statements run and requests answered by them, since the start.
#[derive(Debug, Default)]
struct Counts {
    statements: AtomicU64,
    asked: AtomicU64,
}

/// One request waiting for its batch.
struct Pending<B: Batched> {
    ask: B::Ask,
    answer: oneshot::Sender<Result<B::Answer, Failure>>,
}

/// Why a batch failed, told to each of its requests (an `anyhow::Error` cannot be cloned).
#[derive(Clone)]
struct Failure {
    /// The database was down or out of connections: 503 rather than 500.
    unavailable: bool,
    detail: String,
}

impl Failure {
    fn of(err: &anyhow::Error) -> Self {
        Failure { unavailable: crate::error::unavailable_dependency(err).is_some(), detail: format!("{err:#}") }
    }

    fn into_api_error(self, what: &str) -> ApiError {
        if self.unavailable { unavailable(&self.detail) } else { ApiError::Internal(anyhow::anyhow!("{what} in a batch: {}", self.detail)) }
    }
}

fn unavailable(detail: &str) -> ApiError {
    ApiError::Internal(anyhow::Error::new(Unreachable { dependency: Dependency::Database, detail: detail.to_owned() }))
}

impl<B: Batched> Lanes<B> {
    /// Starts `lanes` lanes answering from `pool` (on the current Tokio runtime). They end when
    /// the last clone of the returned handle is dropped.
    pub fn start(pool: Pool, lanes: usize, batched: B) -> Self {
        let batched = Arc::new(batched);
        let counts = Arc::new(Counts::default());
        let senders: Vec<_> = (0..lanes.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(QUEUE_PER_LANE);
                tokio::spawn(run_lane(pool.clone(), receiver, batched.clone(), counts.clone()));
                sender
            })
            .collect();
        Lanes { lanes: senders.into(), next: Arc::new(AtomicUsize::new(0)), counts }
    }

    /// The answer to `ask`, from the next batch of a lane.
    pub async fn ask(&self, ask: B::Ask) -> ApiResult<B::Answer> {
        let (answer, answered) = oneshot::channel();
        let mut pending = Pending { ask, answer };
        // Round robin, and the next lane when one is full.
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.lanes.len() {
            match self.lanes[(first + offset) % self.lanes.len()].try_send(pending) {
                Ok(()) => {
                    return match tokio::time::timeout(ANSWER_WITHIN, answered).await {
                        Ok(Ok(answer)) => answer.map_err(|failure| failure.into_api_error(B::WHAT)),
                        Ok(Err(_)) => Err(unavailable(&format!("the lane of {} stopped", B::WHAT))),
                        Err(_) => Err(unavailable(&format!("one of the {} got no answer in time", B::WHAT))),
                    };
                }
                Err(mpsc::error::TrySendError::Full(back) | mpsc::error::TrySendError::Closed(back)) => pending = back,
            }
        }
        Err(unavailable(&format!("too many {} are waiting", B::WHAT)))
    }

    /// Requests queued and not yet taken into a batch, over all lanes.
    pub fn queued(&self) -> usize {
        self.lanes.iter().map(|lane| lane.max_capacity() - lane.capacity()).sum()
    }

    /// Statements run so far, and requests answered in them (a test's proof of batching).
    pub fn counts(&self) -> (u64, u64) {
        (self.counts.statements.load(Ordering::Relaxed), self.counts.asked.load(Ordering::Relaxed))
    }
}

/// One lane: waits for a request, takes a connection, then answers what is queued in batches of
/// at most `B::MAX` on that connection until the queue is empty, and gives it back (one ping for
/// the whole run of batches).
async fn run_lane<B: Batched>(pool: Pool, mut queue: mpsc::Receiver<Pending<B>>, batched: Arc<B>, counts: Arc<Counts>) {
    let mut batch: Vec<Pending<B>> = Vec::with_capacity(B::MAX);
    while let Some(first) = queue.recv().await {
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
            while batch.len() < B::MAX {
                match queue.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            // Callers that gave up (a closed connection, a timeout) need no answer. (A write
            // whose caller left is dropped here, before it is made, rather than made unseen.)
            batch.retain(|pending| !pending.answer.is_closed());
            if batch.is_empty() {
                break;
            }
            let asks: Vec<&B::Ask> = batch.iter().map(|pending| &pending.ask).collect();
            let answered = pool.within_reach(batched.run(&mut conn, &asks)).await;
            drop(asks);
            counts.statements.fetch_add(1, Ordering::Relaxed);
            counts.asked.fetch_add(batch.len() as u64, Ordering::Relaxed);
            match answered {
                Ok(answers) if answers.len() == batch.len() => {
                    for (pending, answer) in batch.drain(..).zip(answers) {
                        let _ = pending.answer.send(Ok(answer));
                    }
                }
                Ok(answers) => {
                    let err = anyhow::anyhow!("{} answers for {} {}", answers.len(), batch.len(), B::WHAT);
                    fail(&mut batch, Failure::of(&err));
                }
                Err(err) => {
                    if let Some(sqlx) = err.downcast_ref::<sqlx::Error>() {
                        pool.settle(&mut conn, sqlx);
                    }
                    fail(&mut batch, Failure::of(&err));
                    // The connection may be broken: back to the pool, whose ping tells.
                    break;
                }
            }
            if queue.is_empty() {
                break;
            }
        }
    }
}

/// Answers every request of a failed batch with its failure, emptying the batch.
fn fail<B: Batched>(batch: &mut Vec<Pending<B>>, failure: Failure) {
    for pending in batch.drain(..) {
        let _ = pending.answer.send(Err(failure.clone()));
    }
}

/// The texts of one batched statement, one per batch size it is prepared for: 1, 2, 4, ... up
/// to a most. A batch is padded up to the next size, so that a connection prepares at most
/// `log2(most) + 1` texts of it rather than one per batch size.
#[derive(Debug)]
pub struct PaddedTexts(Vec<String>);

impl PaddedTexts {
    /// `text(size)` for each size up to `most`.
    pub fn new(most: usize, text: impl Fn(usize) -> String) -> Self {
        PaddedTexts(std::iter::successors(Some(1usize), |n| Some(n * 2)).take_while(|&n| n <= most).map(text).collect())
    }

    /// The text for a batch of `n` (1 to the most), and the size it is padded to: the caller
    /// binds `size - n` padding rows after its own.
    pub fn for_batch(&self, n: usize) -> (&str, usize) {
        let size = n.max(1).next_power_of_two();
        (self.0[size.trailing_zeros() as usize].as_str(), size)
    }
}
