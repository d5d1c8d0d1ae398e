//! Returning players' sign-ins on PostgreSQL, in batches: the sign-ins queued while a lane's
//! previous statement ran are made by one `identity::store::sign_in_many`, one round trip and
//! one commit for them all (`platform::db::lanes` says why and how). SQLite signs in one by one
//! in a transaction (`identity::api`), as it cannot write in a `WITH` clause.

use platform::ApiResult;
use platform::db::Pool;
use platform::db::lanes::{Batched, Lanes};
use sqlx::AnyConnection;

use super::store::{self as identities, SignIn, SigningIn};

/// Lanes: each commits its batches one after the other, so two keep PostgreSQL writing while
/// one waits for its commit's flush.
pub const LANES: usize = 2;

/// Returning players' sign-ins, made in batches. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SignIns(Lanes<Many>);

/// The batched statement: `identity::store::sign_in_many`.
pub struct Many;

impl Batched for Many {
    type Ask = SigningIn;
    type Answer = SignIn;
    const MAX: usize = identities::MAX_SIGN_INS_AT_ONCE;
    const WHAT: &'static str = "sign-ins";

    async fn run(&self, conn: &mut AnyConnection, asks: &[&SigningIn]) -> anyhow::Result<Vec<SignIn>> {
        identities::sign_in_many(conn, asks).await
    }
}

impl SignIns {
    /// Starts `lanes` lanes signing in on `pool` (on the current Tokio runtime). They end when
    /// the last clone of the returned handle is dropped.
    pub fn start(pool: Pool, lanes: usize) -> Self {
        SignIns(Lanes::start(pool, lanes, Many))
    }

    /// Signs `ask`'s identity in, in the next batch of a lane: its account with the session
    /// stored, its ban in force (nothing stored), or no account.
    pub async fn sign_in(&self, ask: SigningIn) -> ApiResult<SignIn> {
        self.0.ask(ask).await
    }

    /// Sign-ins queued and not yet taken into a batch, over all lanes.
    pub fn queued(&self) -> usize {
        self.0.queued()
    }

    /// Statements run so far, and sign-ins made in them (a test's proof of batching).
    pub fn counts(&self) -> (u64, u64) {
        self.0.counts()
    }
}
