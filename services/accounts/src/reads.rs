//! A player's own account by id (`GET /v1/accounts/me`), read in batches: the reads queued while
//! a lane's previous statement ran are answered by one `SELECT ... WHERE id IN (...)`
//! (`platform::db::lanes` says why and how). The SQL is one text per batch size for both
//! dialects, so SQLite batches alike.

use platform::ApiResult;
use platform::db::Pool;
use platform::db::lanes::{Batched, Lanes};
use sqlx::AnyConnection;

use crate::store::{self, AccountRow};

/// Lanes, each with at most one connection of the pool at a time: two keep both of
/// PostgreSQL's cores of a small instance busy while leaving the pool to everything else.
pub const LANES: usize = 2;

/// Accounts read by id in batches. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AccountReads(Lanes<ByIds>);

/// The batched statement: `store::accounts_by_ids`.
pub struct ByIds;

impl Batched for ByIds {
    type Ask = String;
    type Answer = Option<AccountRow>;
    const MAX: usize = store::MAX_ACCOUNTS_AT_ONCE;
    const WHAT: &'static str = "account reads";

    async fn run(&self, conn: &mut AnyConnection, ids: &[&String]) -> anyhow::Result<Vec<Option<AccountRow>>> {
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let rows = store::accounts_by_ids(conn, &ids).await?;
        Ok(ids.iter().map(|id| rows.iter().find(|row| row.id == *id).cloned()).collect())
    }
}

impl AccountReads {
    /// Starts `lanes` lanes reading from `pool` (on the current Tokio runtime). They end when the
    /// last clone of the returned handle is dropped.
    pub fn start(pool: Pool, lanes: usize) -> Self {
        AccountReads(Lanes::start(pool, lanes, ByIds))
    }

    /// The account with `id`, read in the next batch of a lane.
    pub async fn account(&self, id: &str) -> ApiResult<Option<AccountRow>> {
        self.0.ask(id.to_owned()).await
    }

    /// Reads queued and not yet taken into a batch, over all lanes.
    pub fn queued(&self) -> usize {
        self.0.queued()
    }

    /// Statements run so far, and accounts asked for in them (a test's proof of batching).
    pub fn counts(&self) -> (u64, u64) {
        self.0.counts()
    }
}
