//! Group commit of chat messages: the messages that arrive while a commit is in flight are
//! written together by the next one, so a busy instance pays one commit (one fsync on
//! PostgreSQL) for many messages instead of one each, as the leaderboard's writer does for scores
//! (`leaderboard::writer`).
//!
//! A message is still stored before it is acknowledged or delivered: `MessageWriter::store`
//! answers only once the statement holding it has committed. A batch is one multi-row `INSERT`,
//! all or nothing: when it fails, every message in it fails with the batch's error (a database
//! that is down stays recognisable as one: 503 `unavailable`), and none is acknowledged.
//!
//! Direct messages take the same lanes (`MessageWriter::store_direct`): a batch holding any is
//! one transaction, the multi-row `INSERT` and then, for each direct message in the batch's order,
//! its conversation rows and its recipient's `dm` notification (`crate::inbox::record`), so that
//! they and the message exist together or not at all, as when each had a transaction of its own.
//! A batch of channel messages only stays a single statement (its own implicit transaction).
//!
//! Messages are spread over a few lanes by channel, each lane a task that takes whatever is
//! queued (up to [`MAX_BATCH`]) and commits it: while one lane waits for its commit, the others
//! gather theirs. One channel's messages always take the same lane, so they are stored in the
//! order they reached it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use platform::ApiError;
use platform::db::Database;
use tokio::sync::{mpsc, oneshot};

use crate::inbox::DirectWrites;
use crate::store::{self, MessageRow, NotificationRow};

/// Lanes, each committing its own batches.
const LANES: usize = 2;
/// Most messages in one statement (6 parameters each: 384, within SQLite's limit of 32,766 and
/// PostgreSQL's of 65,535). The statement's text follows the batch's size, so a connection keeps
/// up to this many of them prepared, within sqlx's cache of 100.
pub const MAX_BATCH: usize = 64;
/// Messages queued per lane before senders wait.
const QUEUE: usize = 4096;

struct Job {
    row: MessageRow,
    /// What a direct message writes beside it, in the same transaction.
    direct: Option<DirectWrites>,
    reply: oneshot::Sender<Result<Stored, Arc<anyhow::Error>>>,
}

/// A committed message, with the notification its batch stored or updated for it (a direct
/// message to a recipient who was not in the conversation).
struct Stored {
    row: MessageRow,
    notification: Option<NotificationRow>,
}

/// Sends messages to the lanes. Cheap to clone; the lanes end once every clone is dropped and
/// what was queued is written.
#[derive(Clone)]
pub struct MessageWriter {
    lanes: Arc<[mpsc::Sender<Job>]>,
    metrics: WriterMetrics,
}

/// What the lanes count: each batch's size, how long its statement took, and the batches that
/// failed.
#[derive(Clone, Debug)]
struct WriterMetrics {
    batch_size: platform::metrics::Histogram,
    commit: platform::metrics::Histogram,
    failed: platform::metrics::Counter,
}

impl MessageWriter {
    /// Starts the lanes over `db` (on the current Tokio runtime).
    pub fn start(db: Database) -> Self {
        let metrics = WriterMetrics {
            batch_size: platform::metrics::Histogram::counts(&[1, 2, 4, 8, 16, 32, MAX_BATCH as u64]),
            commit: platform::metrics::Histogram::seconds(platform::metrics::LATENCY_BUCKETS),
            failed: platform::metrics::Counter::default(),
        };
        let lanes: Vec<_> = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run_lane(db.clone(), rx, metrics.clone()));
                tx
            })
            .collect();
        MessageWriter { lanes: lanes.into(), metrics }
    }

    /// Registers the lanes' figures: `guildhall_chat_batch_size`, `guildhall_chat_commit_seconds`
    /// and `guildhall_chat_failed_batches_total`.
    pub fn register_metrics(&self, metrics: &platform::metrics::Metrics) {
        metrics.register_histogram("guildhall_chat_batch_size", "Chat messages stored per group commit.", &[], &self.metrics.batch_size);
        metrics.register_histogram(
            "guildhall_chat_commit_seconds",
            "Time to store and commit one batch of chat messages.",
            &[],
            &self.metrics.commit,
        );
        metrics.register_counter(
            "guildhall_chat_failed_batches_total",
            "Batches of chat messages whose statement failed (each message answered with the error, none stored).",
            &[],
            &self.metrics.failed,
        );
    }

    /// Stores `row` and hands it back once the statement holding it has committed. When its
    /// batch failed, the message was not stored, and the answer says so: `unavailable` either way
    /// (the client may send it again), naming the database when it is down (the lane logged the
    /// batch's error).
    pub async fn store(&self, row: MessageRow) -> Result<MessageRow, ApiError> {
        Ok(self.submit(row, None).await?.row)
    }

    /// Stores direct message `row` with its conversation rows and, when `direct` asks for one, its
    /// recipient's notification, all in its batch's transaction; hands back the message and the
    /// notification as stored once that has committed. Fails as `store` does.
    pub async fn store_direct(&self, row: MessageRow, direct: DirectWrites) -> Result<(MessageRow, Option<NotificationRow>), ApiError> {
        let stored = self.submit(row, Some(direct)).await?;
        Ok((stored.row, stored.notification))
    }

    async fn submit(&self, row: MessageRow, direct: Option<DirectWrites>) -> Result<Stored, ApiError> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        row.channel_id.hash(&mut hasher);
        let lane = &self.lanes[(hasher.finish() % self.lanes.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        lane.send(Job { row, direct, reply }).await.map_err(|_| anyhow::anyhow!("the message writer has stopped"))?;
        match answer.await {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(err)) => {
                let err = anyhow::Error::new(NotStored(err));
                if platform::error::unavailable_dependency(&err).is_some() {
                    return Err(ApiError::Internal(err));
                }
                // The database is a replica (a secondary region before promotion): the sender is
                // told so, as an HTTP write would be, not to send again at once.
                if platform::error::refused_as_read_only(&err) {
                    return Err(ApiError::ReadOnlyRegion);
                }
                Err(ApiError::Unavailable(NOT_STORED.into()))
            }
            Err(_) => Err(anyhow::anyhow!("the message writer stopped before answering").into()),
        }
    }
}

/// What a sender whose message's batch failed (other than by an outage) is told.
pub const NOT_STORED: &str = "the message was not stored; send it again";

/// The failure of a batch, as each of its messages gets it: the batch's error, shared, with its
/// cause chain intact, so that a database outage is still recognised as one (503).
#[derive(Debug)]
pub struct NotStored(Arc<anyhow::Error>);

impl std::fmt::Display for NotStored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the batch of chat messages holding this one failed; it was not stored")
    }
}

impl std::error::Error for NotStored {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let err: &(dyn std::error::Error + Send + Sync + 'static) = self.0.as_ref().as_ref();
        Some(err)
    }
}

async fn run_lane(db: Database, mut queue: mpsc::Receiver<Job>, metrics: WriterMetrics) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        metrics.batch_size.observe(jobs.len() as u64);
        let started = Instant::now();
        let stored = commit(&db, &jobs).await;
        metrics.commit.observe_duration(started.elapsed());
        // The callers may have gone (their sockets closed): what committed stays stored.
        match stored {
            Ok(notifications) => {
                for (job, notification) in jobs.into_iter().zip(notifications) {
                    let _ = job.reply.send(Ok(Stored { row: job.row, notification }));
                }
            }
            Err(err) => {
                metrics.failed.inc();
                tracing::warn!(error = format!("{err:#}"), messages = jobs.len(), "a batch of chat messages failed; none was stored");
                let err = Arc::new(err);
                for job in jobs {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Writes one batch, all or nothing: its messages, and for each direct message its conversation
/// rows and notification. The notification stored for each job, in the jobs' order.
async fn commit(db: &Database, jobs: &[Job]) -> anyhow::Result<Vec<Option<NotificationRow>>> {
    let rows: Vec<&MessageRow> = jobs.iter().map(|job| &job.row).collect();
    if jobs.iter().all(|job| job.direct.is_none()) {
        // One statement: no transaction to open, one round trip.
        store::insert_messages(db.pool(), &rows).await?;
        return Ok(jobs.iter().map(|_| None).collect());
    }
    let mut tx = db.begin().await?;
    store::insert_messages(&mut *tx, &rows).await?;
    let mut notifications = Vec::with_capacity(jobs.len());
    for job in jobs {
        notifications.push(match &job.direct {
            Some(direct) => crate::inbox::record(&mut tx, &job.row, direct).await?,
            None => None,
        });
    }
    tx.commit().await.context("committing a batch of chat messages")?;
    Ok(notifications)
}
