//! Who is in a channel now, across instances. On Redis, a sorted set per channel whose members
//! are connections scored by their last refresh: every instance refreshes its connections every
//! 30 seconds, and entries older than 90 seconds (an instance that died) are dropped when read.
//! On embedded defaults the hub's own membership is the answer.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use platform::cache::RedisCache;
use platform::db::now_millis;
use platform::shutdown::Shutdown;

use crate::hub::Hub;

/// How often connections are refreshed, and how old an entry may get before it is dropped.
const REFRESH: Duration = Duration::from_secs(30);
const STALE_MS: i64 = 90_000;

/// Presence backend. Cheap to clone.
#[derive(Clone)]
pub enum Presence {
    /// Shared through Redis.
    Redis(RedisCache, Hub),
    /// This process's hub.
    Memory(Hub),
}

fn entry(hub: &Hub, connection: u64, account_id: &str, name: &str) -> String {
    format!("{account_id}|{}:{connection}|{name}", hub.instance())
}

impl Presence {
    fn key(redis: &RedisCache, channel: &str) -> String {
        redis.key(&format!("chat:presence:{channel}"))
    }

    /// Records a connection in a channel.
    pub async fn enter(&self, channel: &str, connection: u64, account_id: &str, name: &str) -> anyhow::Result<()> {
        if let Presence::Redis(redis, hub) = self {
            let mut conn = redis.connection();
            let _: i64 = redis::cmd("ZADD")
                .arg(Self::key(redis, channel))
                .arg(now_millis())
                .arg(entry(hub, connection, account_id, name))
                .query_async(&mut conn)
                .await
                .context("Redis presence enter")?;
        }
        Ok(())
    }

    /// Removes a connection from a channel.
    pub async fn exit(&self, channel: &str, connection: u64, account_id: &str, name: &str) -> anyhow::Result<()> {
        if let Presence::Redis(redis, hub) = self {
            let mut conn = redis.connection();
            let _: i64 = redis::cmd("ZREM")
                .arg(Self::key(redis, channel))
                .arg(entry(hub, connection, account_id, name))
                .query_async(&mut conn)
                .await
                .context("Redis presence exit")?;
        }
        Ok(())
    }

    /// The players in a channel (each once, whatever their connections), by account id, at most
    /// `limit`, and how many there are; without those in `hidden` (blocks).
    pub async fn list(&self, channel: &str, limit: usize, hidden: &HashSet<String>) -> anyhow::Result<(usize, Vec<(String, String)>)> {
        let entries: Vec<(String, String)> = match self {
            Presence::Redis(redis, _) => {
                let key = Self::key(redis, channel);
                let mut conn = redis.connection();
                let (_, members): (i64, Vec<String>) = redis::pipe()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now_millis() - STALE_MS)
                    .cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .context("Redis presence list")?;
                members
                    .iter()
                    .filter_map(|m| {
                        let mut parts = m.splitn(3, '|');
                        let account = parts.next()?;
                        let _connection = parts.next()?;
                        Some((account.to_owned(), parts.next()?.to_owned()))
                    })
                    .collect()
            }
            Presence::Memory(hub) => hub.local_members(channel).into_iter().map(|m| (m.account_id, m.name)).collect(),
        };
        let players: BTreeMap<String, String> = entries.into_iter().filter(|(account, _)| !hidden.contains(account)).collect();
        let count = players.len();
        Ok((count, players.into_iter().take(limit).collect()))
    }

    /// Refreshes this instance's connections until shutdown (Redis only).
    pub async fn run(self, shutdown: Shutdown) {
        let Presence::Redis(redis, hub) = self else { return };
        let mut every = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                () = shutdown.stopped() => return,
                _ = every.tick() => {}
            }
            let memberships = hub.memberships();
            if memberships.is_empty() {
                continue;
            }
            let now = now_millis();
            let mut pipe = redis::pipe();
            for (channel, connection, account, name) in &memberships {
                pipe.cmd("ZADD").arg(Self::key(&redis, channel)).arg(now).arg(entry(&hub, *connection, account, name)).ignore();
            }
            let mut conn = redis.connection();
            if let Err(err) = pipe.query_async::<()>(&mut conn).await {
                tracing::warn!(error = %err, "refreshing presence failed");
            }
        }
    }
}
