//! Blocks between players, as chat keeps them from accounts' `social.block_added` and
//! `social.block_removed` (chat's own copy, `chat_blocks`: services never read each other's
//! tables). Two players either of whom blocked the other cannot use their `dm:` channel (join and
//! send answer 403 `dm_blocked`), and neither sees the other in presence: not in the lists (join's
//! answer, `GET .../presence`) nor in the joined and left frames (`hub::Hidden`).
//!
//! Chat also keeps the online markers (`platform::online`) of the players with a socket open.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use platform::ApiError;
use platform::db::now_millis;

use crate::ChatState;
use crate::channel::Channel;
use crate::hub::Notice;
use crate::store::{self, DmRefusal};

/// The most players loaded as hidden from one: twice accounts' highest block cap.
const MAX_HIDDEN: i64 = 10_000;

/// How often the online markers of this instance's players are renewed (well within
/// `platform::online::TTL`).
const ONLINE_REFRESH: Duration = Duration::from_secs(30);

impl ChatState {
    /// The players hidden from `account_id` (they blocked it or it blocked them).
    pub async fn hidden_for(&self, account_id: &str) -> anyhow::Result<HashSet<String>> {
        let others = store::blocked_either_way(self.db.pool(), account_id, MAX_HIDDEN).await?;
        Ok(others.into_iter().collect())
    }

    /// When `channel` is a direct conversation: 403 `dm_blocked` if one of its players blocked
    /// the other, 404 `account_deleted` if one of them was erased (nothing of an erased player's
    /// is made again: `store::remember_erased`).
    pub async fn refuse_dm(&self, channel: &Channel) -> Result<(), ApiError> {
        let Channel::Direct(a, b) = channel else { return Ok(()) };
        match store::dm_refusal(self.db.pool(), a, b).await? {
            None => Ok(()),
            Some(DmRefusal::Blocked) => {
                Err(ApiError::client(StatusCode::FORBIDDEN, "dm_blocked", "direct messages between you and this player are blocked"))
            }
            Some(DmRefusal::Erased) => Err(account_deleted()),
        }
    }

    /// Applies a block added or lifted (at `at`, the event's RFC 3339 time) and tells every
    /// instance's sockets of the two players whether they are hidden from each other now.
    pub async fn record_block(&self, blocker_id: &str, blocked_id: &str, active: bool, at: &str) -> anyhow::Result<()> {
        let changed_at = platform::time::parse_rfc3339(at).unwrap_or_else(now_millis);
        store::put_block(self.db.pool(), blocker_id, blocked_id, active, changed_at).await?;
        // The other way may still hold a block: lifting one is not always unhiding.
        let hidden = store::blocked_between(self.db.pool(), blocker_id, blocked_id).await?;
        self.hub.notify(&Notice::Blocks { a: blocker_id.to_owned(), b: blocked_id.to_owned(), hidden }).await
    }

    /// Renews the online markers of every player with a socket here, until shutdown.
    pub(crate) async fn refresh_online(&self) {
        let mut every = tokio::time::interval(ONLINE_REFRESH);
        loop {
            tokio::select! {
                () = self.shutdown.stopped() => return,
                _ = every.tick() => {}
            }
            let accounts = self.hub.connected_accounts();
            for chunk in accounts.chunks(500) {
                let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
                if let Err(err) = platform::online::mark(&self.cache, &ids).await {
                    tracing::warn!(error = format!("{err:#}"), "renewing online markers failed");
                    break;
                }
            }
        }
    }
}

/// 404 `account_deleted`: the player named was erased (404 as for any account that is not there;
/// the code says why).
pub(crate) fn account_deleted() -> ApiError {
    ApiError::client(StatusCode::NOT_FOUND, "account_deleted", "this player deleted their account")
}
