//! Who is online: a marker per account that chat sets while the player has a socket open (on any
//! instance), and that other services read, e.g. the friends list (accounts).
//!
//! A cache key per account, `online:{account_id}`, set with a time to live that chat's presence
//! refresh renews (every 30 s, for `TTL`): a dead instance's players go offline when their keys
//! expire, without anyone cleaning up. Chat deletes the key when an account's last socket on an
//! instance closes; if the same account still has a socket on another instance, that instance's
//! next refresh (at most 30 s later) sets it again. Reading a page of accounts is one `MGET`. On
//! embedded defaults the keys live in the in-memory cache that chat and accounts share.

use std::time::Duration;

use anyhow::Context;

use crate::cache::Cache;

/// How long a marker lasts without a refresh: three of chat's refresh periods.
pub const TTL: Duration = Duration::from_secs(90);

fn key(account_id: &str) -> String {
    format!("online:{account_id}")
}

/// Marks `account_ids` online for `TTL` (one pipelined round trip on Redis).
#[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache online.mark", skip_all)]
pub async fn mark(cache: &Cache, account_ids: &[&str]) -> anyhow::Result<()> {
    if account_ids.is_empty() {
        return Ok(());
    }
    match cache.redis() {
        Some(redis) => {
            let mut pipe = redis::pipe();
            for id in account_ids {
                pipe.cmd("SET").arg(redis.key(&key(id))).arg(1).arg("PX").arg(TTL.as_millis() as u64).ignore();
            }
            let mut conn = redis.connection();
            pipe.query_async::<()>(&mut conn).await.context("Redis marking players online")
        }
        None => {
            for id in account_ids {
                cache.set_ex(&key(id), "1", TTL).await?;
            }
            Ok(())
        }
    }
}

/// Marks `account_id` offline (its last socket here closed).
pub async fn clear(cache: &Cache, account_id: &str) -> anyhow::Result<()> {
    cache.delete(&key(account_id)).await
}

/// Whether each of `account_ids` is online, in order: one `MGET` on Redis.
#[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache online.which", skip_all)]
pub async fn which(cache: &Cache, account_ids: &[&str]) -> anyhow::Result<Vec<bool>> {
    if account_ids.is_empty() {
        return Ok(Vec::new());
    }
    match cache.redis() {
        Some(redis) => {
            let keys: Vec<String> = account_ids.iter().map(|id| redis.key(&key(id))).collect();
            let mut conn = redis.connection();
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.context("Redis reading who is online")?;
            Ok(values.into_iter().map(|v| v.is_some()).collect())
        }
        None => {
            let mut online = Vec::with_capacity(account_ids.len());
            for id in account_ids {
                online.push(cache.exists(&key(id)).await?);
            }
            Ok(online)
        }
    }
}
