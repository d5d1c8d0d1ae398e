//! Group commit of score submissions: the submissions that arrive while a commit is in flight are
//! written together in the next transaction, so a busy board pays one commit (one fsync) for many
//! submissions instead of one each, and every submission is still durable before it is answered.
//!
//! Submissions are spread over lanes by board and player (`LEADERBOARD_WRITER_LANES`, one by
//! default), each lane a task that takes whatever is queued (up to [`MAX_BATCH`]) and commits it
//! as one transaction. One lane is the cheapest: everything queued while it commits is the next
//! batch, so the batches grow with the load and the database pays its per-transaction work once
//! for all of them (on the `submit-set` benchmark, four lanes made batches of 4 and cost
//! PostgreSQL 60 µs per submission; one lane made batches of 16 at 25 µs, and served more). More
//! lanes help only when batches reach [`MAX_BATCH`] while a commit is slow. A lane's steps:
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
//! 5. write an index check naming the changed records (see `crate::repair`), and delete the
//!    checks of earlier batches whose index updates are done;
//! 6. commit, then, in a task of its own while the lane gathers the next batch, write each record
//!    the batch left into the rank index and answer each submission with its own result and its
//!    rank. Once every one of them is in the index, the batch's check is done: the lane deletes it
//!    in a later transaction (or alone, once idle). A check that stays (the process died, the
//!    index did not answer or was not ready) is taken up by the repair a few seconds later.
//!
//! A batch whose submissions all `set` or keep the `best`, carry no idempotency key and name each
//! player once skips steps 1 to 3: one upsert per board season applies the operator in the
//! database under the row lock it takes and returns each record as it left it (see
//! `commit_upserts`); on PostgreSQL a batch of one board season is that one statement, its index
//! check written by the same statement, in autocommit.
//!
//! One player's submissions to one board always take the same lane, so within an instance they
//! are applied in the order they arrived. A submission refused by the board's rules (bounds,
//! overflow) is answered alone and does not hold back the others; nor does one to a board deleted
//! since it was checked, whose records the foreign key refuses (see `commit_jobs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use platform::db::{Database, Dialect, now_millis};
use tokio::sync::{mpsc, oneshot};

use crate::board::{Board, Operator, Outcome, Refusal};
use crate::index::{Entry, NotReady, RankIndex, Scope};
use crate::store::{self, CheckRow, Checked, Combine, OnConflict, RecordRow};

/// Most submissions in one transaction. The write statements' lengths follow the batch's, so a
/// connection may keep up to twice this many of them prepared (sqlx caches 100 per connection,
/// least recently used out first; batches under a load of 50 clients stay far below this).
pub const MAX_BATCH: usize = 64;
/// Submissions queued per lane before senders wait.
const QUEUE: usize = 1024;
/// Tries of a batch that lost a race for a new record or a deadlock before its submissions fail.
const TRIES: usize = 5;
/// Done checks are deleted in the lane's next transaction once this many wait...
const CLEAR_EVERY: usize = 16;
/// ... or the oldest has waited this long (well before a repair would take it up)...
const CLEAR_AFTER: Duration = Duration::from_secs(1);
/// ... or alone, once the lane has had nothing to write for this long.
const CLEAR_IDLE: Duration = Duration::from_millis(200);
/// Done checks kept to delete at most; past it they are left to the repair (the database is
/// failing anyway).
const MAX_DONE: usize = 4096;

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

/// A submission's answer: its record and rank, or why the board refused it.
pub type Answer = Result<Written, Refusal>;

/// A submission's record, durable, and its rank.
#[derive(Debug, Clone)]
pub struct Written {
    /// The record after the submission's operator applied.
    pub record: RecordRow,
    /// The owner's rank once the index took the batch; `None` when the index was not ready or
    /// did not answer (the record's check stays for the repair; the caller ranks it itself).
    pub rank: Option<u64>,
}

struct Job {
    submission: Submission,
    reply: oneshot::Sender<Result<Answer, Arc<anyhow::Error>>>,
}

/// Sends submissions to the lanes. Cheap to clone; the lanes end once every clone is dropped and
/// what was queued is written.
#[derive(Clone)]
pub struct Writer {
    lanes: Arc<[mpsc::Sender<Job>]>,
    metrics: WriterMetrics,
}

/// What the lanes count: each batch's size, how long its commit took (retries included), and
/// the batches that failed.
#[derive(Clone, Debug)]
struct WriterMetrics {
    batch_size: platform::metrics::Histogram,
    commit: platform::metrics::Histogram,
    failed: platform::metrics::Counter,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            batch_size: platform::metrics::Histogram::counts(&[1, 2, 4, 8, 16, 32, MAX_BATCH as u64]),
            commit: platform::metrics::Histogram::seconds(platform::metrics::LATENCY_BUCKETS),
            failed: platform::metrics::Counter::default(),
        }
    }
}

impl Writer {
    /// Starts `lanes` lanes (`LEADERBOARD_WRITER_LANES` in a server) over `db`, ranking into
    /// `index` (on the current Tokio runtime).
    pub fn start(db: Database, index: RankIndex, lanes: usize) -> Self {
        let metrics = WriterMetrics::default();
        let lanes: Vec<_> = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run_lane(db.clone(), index.clone(), rx, metrics.clone()));
                tx
            })
            .collect();
        Self { lanes: lanes.into(), metrics }
    }

    /// Registers the lanes' figures: `guildhall_leaderboard_batch_size`,
    /// `guildhall_leaderboard_commit_seconds` and `guildhall_leaderboard_failed_batches_total`.
    pub fn register_metrics(&self, metrics: &platform::metrics::Metrics) {
        metrics.register_histogram(
            "guildhall_leaderboard_batch_size",
            "Score submissions written per group commit.",
            &[],
            &self.metrics.batch_size,
        );
        metrics.register_histogram(
            "guildhall_leaderboard_commit_seconds",
            "Time to write and commit one batch of score submissions, retries included.",
            &[],
            &self.metrics.commit,
        );
        metrics.register_counter(
            "guildhall_leaderboard_failed_batches_total",
            "Batches of score submissions whose transaction failed (each submission answered with the error).",
            &[],
            &self.metrics.failed,
        );
    }

    /// Submissions waiting in the lanes' queues, not yet taken into a batch.
    pub fn queued(&self) -> usize {
        self.lanes.iter().map(|lane| lane.max_capacity() - lane.capacity()).sum()
    }

    /// Applies `submission`, makes it durable and ranks it; answers once its transaction has
    /// committed and the index has taken it (or failed to).
    pub async fn submit(&self, submission: Submission) -> anyhow::Result<Answer> {
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

/// The ids of checks whose batches the index took, waiting to be deleted.
#[derive(Default)]
struct Done {
    ids: Vec<String>,
    since: Option<Instant>,
}

impl Done {
    fn push(&mut self, id: String) {
        self.since.get_or_insert_with(Instant::now);
        self.ids.push(id);
    }

    /// Whether the next transaction should delete them.
    fn due(&self) -> bool {
        self.ids.len() >= CLEAR_EVERY || self.since.is_some_and(|since| since.elapsed() >= CLEAR_AFTER)
    }

    fn take(&mut self) -> Vec<String> {
        self.since = None;
        std::mem::take(&mut self.ids)
    }

    /// Takes back ids whose deletion failed.
    fn put_back(&mut self, ids: Vec<String>) {
        for id in ids {
            self.push(id);
        }
        if self.ids.len() > MAX_DONE {
            self.take();
        }
    }
}

async fn run_lane(db: Database, index: RankIndex, mut queue: mpsc::Receiver<Job>, metrics: WriterMetrics) {
    // The ranking tasks report here the checks of batches the index took.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut done = Done::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            biased;
            Some(id) = done_rx.recv() => {
                done.push(id);
                continue;
            }
            received = queue.recv_many(&mut batch, MAX_BATCH) => {
                if received == 0 {
                    break;
                }
            }
            () = tokio::time::sleep(CLEAR_IDLE), if !done.ids.is_empty() => {
                let ids = done.take();
                if let Err(err) = delete_checks(db.pool(), &ids).await {
                    tracing::warn!(error = format!("{err:#}"), "deleting done index checks failed");
                    done.put_back(ids);
                }
                continue;
            }
        }
        while let Ok(id) = done_rx.try_recv() {
            done.push(id);
        }
        let clear = if done.due() { done.take() } else { Vec::new() };
        let jobs = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        metrics.batch_size.observe(jobs.len() as u64);
        let started = Instant::now();
        let (jobs, committed) = commit_jobs(&db, jobs, &clear).await;
        metrics.commit.observe_duration(started.elapsed());
        if jobs.is_empty() {
            // Every submission was to a board deleted meanwhile, and has been answered.
            done.put_back(clear);
            continue;
        }
        match committed {
            // Ranked in a task of its own: the lane goes on to its next batch meanwhile. The
            // callers may have gone (their requests timed out): the write stands, and so does
            // the index update.
            Ok(committed) => {
                tokio::spawn(rank(index.clone(), jobs, committed, done_tx.clone()));
            }
            Err(err) => {
                metrics.failed.inc();
                done.put_back(clear);
                tracing::warn!(error = format!("{err:#}"), submissions = jobs.len(), "a batch of score submissions failed");
                let err = Arc::new(err);
                for job in jobs {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }
    let ids = done.take();
    if !ids.is_empty()
        && let Err(err) = delete_checks(db.pool(), &ids).await
    {
        tracing::warn!(error = format!("{err:#}"), "deleting done index checks failed; the repair will take them");
    }
}

/// Deletes checks, 64 to a statement.
async fn delete_checks(db: &platform::db::Pool, ids: &[String]) -> anyhow::Result<()> {
    for chunk in ids.chunks(MAX_BATCH) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        store::delete_index_checks(db, &chunk).await?;
    }
    Ok(())
}

/// Writes the records a committed batch left into the index, answers its submissions with their
/// ranks, and reports the batch's check done once the index took every record.
async fn rank(index: RankIndex, jobs: Vec<Job>, committed: Committed, done: mpsc::UnboundedSender<String>) {
    // One index call per board season (a batch is mostly of one), each owner's rank in the
    // season's order of `records`.
    let mut seasons: Vec<(Scope<'_>, Vec<usize>)> = Vec::new();
    for (at, (board, _)) in committed.records.iter().enumerate() {
        let scope = Scope { board: &board.id, season: board.season };
        match seasons.iter_mut().find(|(s, _)| s.board == scope.board && s.season == scope.season) {
            Some((_, members)) => members.push(at),
            None => seasons.push((scope, vec![at])),
        }
    }
    let index = &index;
    let records = &committed.records;
    let ranked = futures_util::future::join_all(seasons.iter().map(|(scope, members)| async move {
        let entries: Vec<Entry> = members.iter().map(|&at| Entry::of(&records[at].0, &records[at].1)).collect();
        index.upsert_all(*scope, &entries).await
    }))
    .await;
    let mut failed = None;
    let mut ranks: Vec<Option<u64>> = vec![None; records.len()];
    for ((_, members), result) in seasons.iter().zip(ranked) {
        match result {
            Ok(Ok(season_ranks)) => {
                for (&at, rank) in members.iter().zip(season_ranks) {
                    ranks[at] = Some(rank);
                }
            }
            Ok(Err(NotReady)) => {}
            Err(err) => failed = Some(err),
        }
    }
    if let Some(err) = failed {
        tracing::warn!(error = format!("{err:#}"), "updating the rank index after a commit failed; the repair will correct it");
    }
    if let Some(check) = committed.check
        && ranks.iter().all(Option::is_some)
    {
        let _ = done.send(check);
    }
    for ((job, applied), at) in jobs.into_iter().zip(committed.applied).zip(committed.positions) {
        let answer = applied.map(|record| Written { record, rank: at.and_then(|at| ranks[at]) });
        let _ = job.reply.send(Ok(answer));
    }
}

/// A committed batch.
struct Committed {
    /// Each submission's result, in order.
    applied: Vec<Applied>,
    /// The record of each owner the batch answered (as the batch left it), to index.
    records: Vec<(Board, RecordRow)>,
    /// For each submission, where its owner's record is in `records` (none when refused).
    positions: Vec<Option<usize>>,
    /// The index check written with the batch, when it changed records.
    check: Option<String>,
}

/// Commits the batch of `jobs`, and returns the jobs the commit was for with its result.
///
/// A board deleted after its submissions were checked (by another instance, or while they
/// queued) cannot take their records: the foreign key fails the whole transaction. Those
/// submissions are answered [`Refusal::BoardGone`] here, and the rest of the batch is committed
/// without them, rather than failing with them.
async fn commit_jobs(db: &Database, jobs: Vec<Job>, clear: &[String]) -> (Vec<Job>, anyhow::Result<Committed>) {
    let committed = commit_with_retries(db, &submissions(&jobs), clear).await;
    let Err(err) = &committed else { return (jobs, committed) };
    if !violates_foreign_key(err) {
        return (jobs, committed);
    }
    let boards: BTreeSet<&str> = jobs.iter().map(|job| job.submission.board.id.as_str()).collect();
    let live = match store::existing_boards(db.pool(), &boards.into_iter().collect::<Vec<_>>()).await {
        Ok(live) => live,
        // The batch's own error says more than this one.
        Err(_) => return (jobs, committed),
    };
    let (gone, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|job| !live.contains(&job.submission.board.id));
    if gone.is_empty() {
        return (jobs, committed);
    }
    tracing::info!(submissions = gone.len(), "submissions to a leaderboard deleted since they were checked refused");
    for job in gone {
        let _ = job.reply.send(Ok(Err(Refusal::BoardGone)));
    }
    if jobs.is_empty() {
        return (jobs, committed);
    }
    let committed = commit_with_retries(db, &submissions(&jobs), clear).await;
    (jobs, committed)
}

fn submissions(jobs: &[Job]) -> Vec<&Submission> {
    jobs.iter().map(|job| &job.submission).collect()
}

/// A foreign key violation (PostgreSQL's 23503, SQLite's 787): a row the batch writes names a
/// board that is gone.
fn violates_foreign_key(err: &anyhow::Error) -> bool {
    database_errors(err).any(|e| e.is_foreign_key_violation())
}

/// The database's own errors in `err`'s chain.
fn database_errors(err: &anyhow::Error) -> impl Iterator<Item = &dyn sqlx::error::DatabaseError> {
    err.chain().filter_map(|e| e.downcast_ref::<sqlx::Error>()).filter_map(|e| e.as_database_error())
}

/// How one try of a batch ended.
enum Attempt {
    Committed(Committed),
    /// Another instance inserted a record or an idempotency key this batch meant to insert;
    /// nothing was written.
    LostRace,
}

async fn commit_with_retries(db: &Database, batch: &[&Submission], clear: &[String]) -> anyhow::Result<Committed> {
    let mut tries = 0;
    loop {
        tries += 1;
        match commit(db, batch, clear).await {
            Ok(Attempt::Committed(committed)) => return Ok(committed),
            Ok(Attempt::LostRace) if tries < TRIES => {}
            Ok(Attempt::LostRace) => anyhow::bail!("kept losing the race for new records after {TRIES} tries"),
            Err(err) if tries < TRIES && is_transient(&err) => {}
            Err(err) => return Err(err),
        }
    }
}

/// A deadlock or serialisation failure (PostgreSQL's 40P01, 40001): the batch can simply run again.
fn is_transient(err: &anyhow::Error) -> bool {
    database_errors(err).any(|e| matches!(e.code().as_deref(), Some("40P01" | "40001")))
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

async fn commit(db: &Database, batch: &[&Submission], clear: &[String]) -> anyhow::Result<Attempt> {
    if upserts_alone(batch) {
        return commit_upserts(db, batch, clear).await.map(Attempt::Committed);
    }
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

    // 5. The check of the changed records, so that their index entries are corrected should
    //    this batch's index update not happen, and the checks of earlier batches whose did.
    let mut checked: Vec<Checked> = Vec::new();
    for (board, season, owner) in &changed {
        match checked.last_mut() {
            Some(c) if c.board == *board && c.season == *season => c.owners.push(owner.clone()),
            _ => checked.push(Checked { board: board.clone(), season: *season, owners: vec![owner.clone()] }),
        }
    }
    let check = if checked.is_empty() {
        None
    } else {
        let id = uuid::Uuid::now_v7().to_string();
        store::put_index_check(&mut *tx, &id, &checked, now + crate::repair::CHECK_AFTER_MS).await?;
        Some(id)
    };
    for chunk in clear.chunks(MAX_BATCH) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        store::delete_index_checks(&mut *tx, &chunk).await?;
    }

    // 6. Durable, then ranked and answered.
    tx.commit().await.context("committing a batch of scores")?;
    let mut records = Vec::new();
    let mut at: HashMap<Key, usize> = HashMap::new();
    let positions = batch
        .iter()
        .zip(&applied)
        .map(|(s, result)| {
            let key = (s.board.id.clone(), s.board.season, s.owner_id.clone());
            let record = current.get(&key).filter(|_| result.is_ok())?;
            Some(*at.entry(key).or_insert_with(|| {
                records.push((s.board.clone(), record.clone()));
                records.len() - 1
            }))
        })
        .collect();
    Ok(Attempt::Committed(Committed { applied, records, positions, check }))
}

/// Whether the batch can be written by upserts alone, without reading its records first: every
/// submission `set`s or keeps the `best` (so its result depends on the record only through a
/// comparison the statement makes itself), none carries an idempotency key (whose answer is read
/// first), and no player appears twice (a statement writes a row once).
fn upserts_alone(batch: &[&Submission]) -> bool {
    let mut owners = BTreeSet::new();
    batch.iter().all(|s| {
        matches!(s.board.operator, Operator::Set | Operator::Best)
            && s.idempotency_key.is_none()
            && owners.insert((s.board.id.as_str(), s.board.season, s.owner_id.as_str()))
    })
}

/// Writes a batch that [`upserts_alone`] accepts: per board season one upsert that applies the
/// operator in the database and returns each record as it left it (a `best` that does not win
/// leaves the record as it was). On PostgreSQL a batch of one board season, the common case, is
/// that one statement in autocommit, its index check written by the same statement; otherwise
/// the statements and the check share a transaction. Either way the batch is written whole or
/// not at all. The check names every owner the batch wrote to, kept records included (checking
/// one that did not change costs the repair a read, nothing more).
async fn commit_upserts(db: &Database, batch: &[&Submission], clear: &[String]) -> anyhow::Result<Committed> {
    let now = now_millis();
    // A `set` or `best` submission's bounds are those of its own score, whatever the record.
    let applied: Vec<Result<(), Refusal>> = batch.iter().map(|s| s.board.apply(None, s.score, s.subscore).map(|_| ())).collect();
    let mut groups: BTreeMap<(&str, i64), (&Board, Vec<RecordRow>)> = BTreeMap::new();
    for (s, _) in batch.iter().zip(&applied).filter(|(_, a)| a.is_ok()) {
        let (_, rows) = groups.entry((s.board.id.as_str(), s.board.season)).or_insert_with(|| (&s.board, Vec::new()));
        rows.push(RecordRow {
            owner_id: s.owner_id.clone(),
            owner_name: s.owner_name.clone(),
            score: s.score,
            subscore: s.subscore,
            metadata: s.metadata.clone(),
            updated_at: now,
            version: 1,
        });
    }
    for (_, rows) in groups.values_mut() {
        rows.sort_unstable_by(|a, b| a.owner_id.cmp(&b.owner_id));
    }
    let checked: Vec<Checked> = groups
        .iter()
        .map(|((board, season), (_, rows))| Checked {
            board: (*board).to_owned(),
            season: *season,
            owners: rows.iter().map(|r| r.owner_id.clone()).collect(),
        })
        .collect();
    let check_id = (!checked.is_empty()).then(|| uuid::Uuid::now_v7().to_string());
    let check_at = now + crate::repair::CHECK_AFTER_MS;
    let combine = |board: &Board| match board.operator {
        Operator::Best => Combine::KeepBetter(board.sort),
        _ => Combine::Replace,
    };

    let mut written: HashMap<(&str, i64, String), RecordRow> = HashMap::new();
    if db.dialect() == Dialect::Postgres && groups.len() <= 1 {
        let mut conn = db.pool().acquire().await.context("taking a connection for a batch of scores")?;
        for chunk in clear.chunks(MAX_BATCH) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            store::delete_index_checks(&mut *conn, &chunk).await?;
        }
        if let (Some(((board_id, season), (board, rows))), Some(id)) = (groups.iter().next(), &check_id) {
            let rows: Vec<&RecordRow> = rows.iter().collect();
            let check = CheckRow { id, records: &checked, check_at };
            for record in store::upsert_records(&mut conn, board_id, *season, &rows, combine(board), Some(check)).await? {
                written.insert((*board_id, *season, record.owner_id.clone()), record);
            }
        }
    } else {
        let mut tx = db.begin().await?;
        for ((board_id, season), (board, rows)) in &groups {
            let rows: Vec<&RecordRow> = rows.iter().collect();
            for record in store::upsert_records(&mut tx, board_id, *season, &rows, combine(board), None).await? {
                written.insert((*board_id, *season, record.owner_id.clone()), record);
            }
        }
        if let Some(id) = &check_id {
            store::put_index_check(&mut *tx, id, &checked, check_at).await?;
        }
        for chunk in clear.chunks(MAX_BATCH) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            store::delete_index_checks(&mut *tx, &chunk).await?;
        }
        tx.commit().await.context("committing a batch of scores")?;
    }

    let mut records = Vec::with_capacity(written.len());
    let mut answers = Vec::with_capacity(batch.len());
    let mut positions = Vec::with_capacity(batch.len());
    for (s, result) in batch.iter().zip(applied) {
        match result {
            Err(refusal) => {
                answers.push(Err(refusal));
                positions.push(None);
            }
            Ok(()) => {
                let record = written
                    .remove(&(s.board.id.as_str(), s.board.season, s.owner_id.clone()))
                    .context("the database did not return a record the batch wrote")?;
                answers.push(Ok(record.clone()));
                positions.push(Some(records.len()));
                records.push((s.board.clone(), record));
            }
        }
    }
    Ok(Committed { applied: answers, records, positions, check: check_id })
}
