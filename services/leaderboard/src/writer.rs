//! Group commit of score submissions: the submissions that arrive while a commit is in flight are
//! written together in the next transaction, so a busy board pays one commit (one fsync) for many
//! submissions instead of one each, and every submission is still durable before it is answered.
//!
//! Submissions are spread over a few lanes by board and player, each lane a task that takes
//! whatever is queued (up to [`MAX_BATCH`]) and commits it as one transaction:
//!
//! 1. lock the records the batch touches (`SELECT … FOR UPDATE` in owner order on PostgreSQL;
//!    SQLite's `BEGIN IMMEDIATE` serialises writers anyway);
//! 2. apply each submission's operator in arrival order, each one seeing the previous one's
//!    result, so that two `incr`s of one player in one batch both count;
//! 3. write the changed records, one statement for those that existed (overwritten under their
//!    lock) and one for new ones (inserted only if still absent). When another instance inserted
//!    one of them first, the transaction is rolled back and the batch tried again, now seeing (and
//!    locking) that record;
//! 4. record the idempotency keys used for the first time, with the record each submission left
//!    (a submission whose key its player already used is answered from there, not applied);
//! 5. commit, then answer each submission with its own result.
//!
//! One player's submissions to one board always take the same lane, so within an instance they
//! are applied in the order they arrived. A submission refused by the board's rules (bounds,
//! overflow) is answered alone and does not hold back the others.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use anyhow::Context;
use platform::db::{Database, Dialect, now_millis};
use tokio::sync::{mpsc, oneshot};

use crate::board::{Board, Outcome, Refusal};
use crate::store::{self, OnConflict, RecordRow};

/// Lanes, each committing its own batches: while one waits for its commit, the others gather and
/// write theirs.
const LANES: usize = 4;
/// Most submissions in one transaction. The write statements' lengths follow the batch's, so a
/// connection may keep up to twice this many of them prepared (sqlx caches 100 per connection,
/// least recently used out first; batches under a load of 50 clients stay far below this).
pub const MAX_BATCH: usize = 64;
/// Submissions queued per lane before senders wait.
const QUEUE: usize = 1024;
/// Tries of a batch that lost a race for a new record or a deadlock before its submissions fail.
const TRIES: usize = 5;

/// One score submission, validated but not yet applied.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The board, at its live season.
    pub board: Board,
    /// Whose record.
    pub owner_id: String,
    /// The name shown with it.
    pub owner_name: String,
    /// The submitted score.
    pub score: i64,
    /// The submitted subscore.
    pub subscore: i64,
    /// JSON object text; `None` keeps the record's current metadata.
    pub metadata: Option<String>,
    /// The client's `Idempotency-Key`: a submission whose key this player already used on this
    /// board's season is answered with the record that first use left, and not applied again.
    pub idempotency_key: Option<String>,
}

/// A submission's result: the record after its operator applied (unchanged when a `best`
/// submission did not beat it), or why the board refused it.
pub type Applied = Result<RecordRow, Refusal>;

struct Job {
    submission: Submission,
    reply: oneshot::Sender<Result<Applied, Arc<anyhow::Error>>>,
}

/// Sends submissions to the lanes. Cheap to clone; the lanes end once every clone is dropped and
/// what was queued is written.
#[derive(Clone)]
pub struct Writer {
    lanes: Arc<[mpsc::Sender<Job>]>,
}

impl Writer {
    /// Starts the lanes over `db` (on the current Tokio runtime).
    pub fn start(db: Database) -> Self {
        let lanes: Vec<_> = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run_lane(db.clone(), rx));
                tx
            })
            .collect();
        Self { lanes: lanes.into() }
    }

    /// Applies `submission` and makes it durable; answers once its transaction has committed.
    pub async fn submit(&self, submission: Submission) -> anyhow::Result<Applied> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&submission.board.id, &submission.owner_id).hash(&mut hasher);
        let lane = &self.lanes[(hasher.finish() % self.lanes.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        lane.send(Job { submission, reply }).await.map_err(|_| anyhow::anyhow!("the score writer has stopped"))?;
        match answer.await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(err)) => Err(anyhow::Error::new(BatchFailed(err))),
            Err(_) => Err(anyhow::anyhow!("the score writer stopped before answering")),
        }
    }
}

/// The failure of a batch, as each of its submissions gets it: the batch's error, shared, with
/// its cause chain intact, so that a database outage is still recognised as one (503).
#[derive(Debug)]
struct BatchFailed(Arc<anyhow::Error>);

impl std::fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the batch of score submissions failed")
    }
}

impl std::error::Error for BatchFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let err: &(dyn std::error::Error + Send + Sync + 'static) = self.0.as_ref().as_ref();
        Some(err)
    }
}

async fn run_lane(db: Database, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let submissions: Vec<&Submission> = batch.iter().map(|job| &job.submission).collect();
        let result = commit_with_retries(&db, &submissions).await;
        match result {
            Ok(applied) => {
                for (job, applied) in batch.drain(..).zip(applied) {
                    // The caller may have gone (its request timed out); the write stands.
                    let _ = job.reply.send(Ok(applied));
                }
            }
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), submissions = batch.len(), "a batch of score submissions failed");
                let err = Arc::new(err);
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// How one try of a batch ended.
enum Attempt {
    Committed(Vec<Applied>),
    /// Another instance inserted a record or an idempotency key this batch meant to insert;
    /// nothing was written.
    LostRace,
}

async fn commit_with_retries(db: &Database, batch: &[&Submission]) -> anyhow::Result<Vec<Applied>> {
    let mut tries = 0;
    loop {
        tries += 1;
        match commit(db, batch).await {
            Ok(Attempt::Committed(applied)) => return Ok(applied),
            Ok(Attempt::LostRace) if tries < TRIES => {}
            Ok(Attempt::LostRace) => anyhow::bail!("kept losing the race for new records after {TRIES} tries"),
            Err(err) if tries < TRIES && is_transient(&err) => {}
            Err(err) => return Err(err),
        }
    }
}

/// A deadlock or serialisation failure (PostgreSQL's 40P01, 40001): the batch can simply run again.
fn is_transient(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<sqlx::Error>())
        .filter_map(|e| e.as_database_error())
        .any(|e| matches!(e.code().as_deref(), Some("40P01" | "40001")))
}

/// The distinct values `of` gives for the batch's submissions (those it gives one for), sorted,
/// per board season.
fn per_season<'a>(batch: &[&'a Submission], of: impl Fn(&'a Submission) -> Option<&'a str>) -> BTreeMap<(&'a str, i64), Vec<&'a str>> {
    let mut sets: BTreeMap<(&str, i64), BTreeSet<&str>> = BTreeMap::new();
    for s in batch {
        if let Some(value) = of(s) {
            sets.entry((&s.board.id, s.board.season)).or_default().insert(value);
        }
    }
    sets.into_iter().map(|(season, values)| (season, values.into_iter().collect())).collect()
}

/// A record's identity: board, season, owner.
type Key = (String, i64, String);

/// The records a batch changed on one board season.
#[derive(Default)]
struct Changes<'a> {
    /// Read (and locked) by the batch.
    overwrites: Vec<&'a RecordRow>,
    /// Absent when the batch read.
    inserts: Vec<&'a RecordRow>,
}

async fn commit(db: &Database, batch: &[&Submission]) -> anyhow::Result<Attempt> {
    let mut tx = db.begin().await?;
    let lock = Some(db.dialect()).filter(|d| *d == Dialect::Postgres);

    // 1. The records the batch touches, locked in (board, season, owner) order, and the
    //    idempotency keys its players used before, with the records they left.
    let mut current: HashMap<Key, RecordRow> = HashMap::new();
    for ((board, season), owners) in per_season(batch, |s| Some(&s.owner_id)) {
        for row in store::load_records(&mut tx, board, season, &owners, lock).await? {
            current.insert((board.to_owned(), season, row.owner_id.clone()), row);
        }
    }
    let existed: BTreeSet<Key> = current.keys().cloned().collect();
    let mut used: HashMap<(Key, String), RecordRow> = HashMap::new();
    for ((board, season), keys) in per_season(batch, |s| s.idempotency_key.as_deref()) {
        for (owner, key, row) in store::load_submission_keys(&mut tx, board, season, &keys).await? {
            used.insert(((board.to_owned(), season, owner), key), row);
        }
    }

    // 2. Each submission in arrival order.
    let mut applied = Vec::with_capacity(batch.len());
    let mut changed: BTreeSet<Key> = BTreeSet::new();
    // Keys used for the first time, per board season, with the record their submission left.
    let mut new_keys: BTreeMap<(&str, i64), Vec<(&str, RecordRow)>> = BTreeMap::new();
    for s in batch {
        let key = (s.board.id.clone(), s.board.season, s.owner_id.clone());
        let used_key = s.idempotency_key.as_ref().map(|k| (key.clone(), k.clone()));
        if let Some(first) = used_key.as_ref().and_then(|k| used.get(k)) {
            applied.push(Ok(first.clone()));
            continue;
        }
        let record = current.get(&key);
        let result = match s.board.apply(record.map(|r| (r.score, r.subscore)), s.score, s.subscore) {
            Err(refusal) => Err(refusal),
            Ok(Outcome::Keep) => Ok(record.context("a submission kept a record that does not exist")?.clone()),
            Ok(Outcome::Write(score, subscore)) => {
                let row = RecordRow {
                    owner_id: s.owner_id.clone(),
                    owner_name: s.owner_name.clone(),
                    score,
                    subscore,
                    metadata: s.metadata.clone().or_else(|| record.and_then(|r| r.metadata.clone())),
                    updated_at: now_millis(),
                    version: record.map_or(1, |r| r.version + 1),
                };
                current.insert(key.clone(), row.clone());
                changed.insert(key);
                Ok(row)
            }
        };
        // A refused submission records no key.
        if let (Some(used_key), Some(idempotency_key), Ok(row)) = (used_key, &s.idempotency_key, &result) {
            used.insert(used_key, row.clone());
            new_keys.entry((&s.board.id, s.board.season)).or_default().push((idempotency_key, row.clone()));
        }
        applied.push(result);
    }

    // 3. The changed records, per board season: those this batch read (and holds the lock of)
    //    are overwritten; those it found absent are inserted only if still absent. (Not one
    //    statement with a version check: a batch that changed a new record twice would carry
    //    version 2 and pass a "lower version" check over a record another instance inserted.)
    let mut groups: BTreeMap<(&str, i64), Changes> = BTreeMap::new();
    for key in &changed {
        let (board, season, _) = key;
        let group = groups.entry((board.as_str(), *season)).or_default();
        let row = &current[key];
        if existed.contains(key) { group.overwrites.push(row) } else { group.inserts.push(row) }
    }
    for ((board, season), Changes { overwrites, inserts }) in &groups {
        store::write_records(&mut tx, board, *season, overwrites, OnConflict::Update).await?;
        let inserted = store::write_records(&mut tx, board, *season, inserts, OnConflict::Nothing).await?;
        if inserted < inserts.len() as u64 {
            tx.rollback().await.context("rolling back a batch that lost a race")?;
            return Ok(Attempt::LostRace);
        }
    }

    // 4. The keys used for the first time. One another instance recorded meanwhile (the same
    //    retry sent to two instances) makes the batch run again and answer from it.
    let now = now_millis();
    for ((board, season), keys) in &new_keys {
        let recorded = store::insert_submission_keys(&mut tx, board, *season, keys, now).await?;
        if recorded < keys.len() as u64 {
            tx.rollback().await.context("rolling back a batch that lost a race for a key")?;
            return Ok(Attempt::LostRace);
        }
    }

    // 5. Durable, then answered.
    tx.commit().await.context("committing a batch of scores")?;
    Ok(Attempt::Committed(applied))
}
