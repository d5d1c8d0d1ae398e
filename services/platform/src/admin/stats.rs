//! The live figures of the whole deployment, for the operators' console: every process
//! publishes its own (`Metrics::snapshot`) to the cache every few seconds, and
//! `GET /v1/admin/stats` adds up those that reported lately. Behind a load balancer no one
//! process sees the others' counters; the cache, which they all share, does. On embedded defaults
//! there is one process and the same path runs on the in-memory cache.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Admin, AdminState};
use crate::cache::Cache;
use crate::db::now_millis;
use crate::error::ApiError;
use crate::http::Json;
use crate::metrics::{Metrics, Snapshot};
use crate::shutdown::Shutdown;

/// How often a process publishes its figures.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);
/// Figures older than this are of a process that stopped: left out (three missed publications).
const FRESH_FOR: Duration = Duration::from_secs(15);
/// The sorted set of instances (score: when each last published, Unix ms), and each one's
/// figures under `stats:instance:<id>`.
const INSTANCES: &str = "stats:instances";

/// One process's figures as published.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct InstanceFigures {
    instance: String,
    taken_at_ms: i64,
    requests_per_second: f64,
    error_rate: f64,
    players_connected: u64,
    /// `None` where the process does not run the event relay.
    outbox: Option<(u64, f64, u64)>,
}

impl InstanceFigures {
    fn of(instance: &str, snapshot: &Snapshot) -> Self {
        let rates = snapshot.rates.as_ref();
        InstanceFigures {
            instance: instance.to_owned(),
            taken_at_ms: snapshot.taken_at_ms,
            requests_per_second: rates.map_or(0.0, |r| r.requests_per_second),
            error_rate: rates.map_or(0.0, |r| r.error_rate),
            players_connected: snapshot.players_connected.unwrap_or(0),
            outbox: snapshot.outbox.as_ref().map(|o| (o.pending, o.oldest_age_seconds, o.dead)),
        }
    }
}

/// The deployment's figures: the processes that reported in the last 15 seconds, added up.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct Stats {
    /// Processes that reported in the last 15 s.
    pub instances: u64,
    /// Players with a chat socket open, summed over the processes (a player connected to two
    /// counts twice).
    pub players_connected: u64,
    /// Requests answered per second, over each process's last 5 s.
    pub requests_per_second: f64,
    /// The share of them answered 5xx, 0 to 1.
    pub error_rate: f64,
    /// Events recorded and not yet delivered (from the processes that run the event relay; 0
    /// when none reported).
    pub event_backlog: u64,
    /// Age of the oldest of them, seconds.
    pub oldest_event_age_secs: f64,
    /// Events parked as dead (`guildhall events dead`).
    pub dead_events: u64,
}

fn add_up(figures: &[InstanceFigures]) -> Stats {
    let rps: f64 = figures.iter().map(|f| f.requests_per_second).sum();
    let errors: f64 = figures.iter().map(|f| f.requests_per_second * f.error_rate).sum();
    // Every relay reads the same outbox: take the freshest reading, not a sum.
    let outbox = figures.iter().filter_map(|f| f.outbox.map(|o| (f.taken_at_ms, o))).max_by_key(|(at, _)| *at).map(|(_, o)| o);
    let (event_backlog, oldest_event_age_secs, dead_events) = outbox.unwrap_or((0, 0.0, 0));
    Stats {
        instances: figures.len() as u64,
        players_connected: figures.iter().map(|f| f.players_connected).sum(),
        requests_per_second: rps,
        error_rate: if rps > 0.0 { errors / rps } else { 0.0 },
        event_backlog,
        oldest_event_age_secs,
        dead_events,
    }
}

fn instance_key(instance: &str) -> String {
    format!("stats:instance:{instance}")
}

/// Publishes this process's figures every 5 s until shutdown. A cache that is down skips a
/// publication (the console shows one instance fewer), nothing more.
pub async fn publish(metrics: Metrics, cache: Cache, shutdown: Shutdown) {
    let instance = uuid::Uuid::now_v7().to_string();
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.stopped() => return,
        }
        let figures = InstanceFigures::of(&instance, &metrics.snapshot().await);
        if let Err(err) = store(&cache, &figures).await {
            tracing::debug!(error = format!("{err:#}"), "publishing this process's figures failed");
        }
    }
}

async fn store(cache: &Cache, figures: &InstanceFigures) -> anyhow::Result<()> {
    let json = serde_json::to_string(figures)?;
    cache.set_ex(&instance_key(&figures.instance), &json, FRESH_FOR).await?;
    if let Some(redis) = cache.redis() {
        let mut conn = redis.connection();
        let index = redis.key(INSTANCES);
        let stale = figures.taken_at_ms - FRESH_FOR.as_millis() as i64;
        let mut pipe = redis::pipe();
        pipe.zadd(&index, &figures.instance, figures.taken_at_ms).ignore();
        pipe.zrembyscore(&index, "-inf", stale).ignore();
        pipe.expire(&index, 3600).ignore();
        let _: () = redis.bounded(pipe.query_async(&mut conn)).await.context("indexing this process's figures")?;
    } else {
        // In memory there is this process only: its one key is the index.
        cache.set_ex(INSTANCES, &figures.instance, FRESH_FOR).await?;
    }
    Ok(())
}

async fn load(cache: &Cache) -> anyhow::Result<Vec<InstanceFigures>> {
    let since = now_millis() - FRESH_FOR.as_millis() as i64;
    let instances: Vec<String> = match cache.redis() {
        Some(redis) => {
            let mut conn = redis.connection();
            let found: Vec<String> = redis
                .bounded(redis::cmd("ZRANGEBYSCORE").arg(redis.key(INSTANCES)).arg(since).arg("+inf").query_async(&mut conn))
                .await
                .context("listing the processes' figures")?;
            found
        }
        None => cache.get(INSTANCES).await?.into_iter().collect(),
    };
    let mut figures = Vec::with_capacity(instances.len());
    for instance in instances.iter().take(1000) {
        if let Some(json) = cache.get(&instance_key(instance)).await?
            && let Ok(parsed) = serde_json::from_str::<InstanceFigures>(&json)
            && parsed.taken_at_ms >= since
        {
            figures.push(parsed);
        }
    }
    Ok(figures)
}

/// The deployment's live figures, added up over the processes that reported in the last 15 s
/// (each reports every 5 s). Any valid server key.
#[utoipa::path(get, path = "/v1/admin/stats", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Stats), (status = 401, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn stats(State(state): State<AdminState>, _admin: Admin) -> Result<Json<Stats>, ApiError> {
    let figures = load(&state.cache).await.map_err(ApiError::Internal)?;
    Ok(Json(add_up(&figures)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(rps: f64, error_rate: f64, players: u64, outbox: Option<(u64, f64, u64)>, at: i64) -> InstanceFigures {
        InstanceFigures {
            instance: at.to_string(),
            taken_at_ms: at,
            requests_per_second: rps,
            error_rate,
            players_connected: players,
            outbox,
        }
    }

    #[test]
    fn figures_add_up_over_instances() {
        let stats = add_up(&[
            figures(100.0, 0.0, 10, None, 1),
            figures(300.0, 0.1, 5, Some((7, 2.5, 1)), 2),
            figures(0.0, 0.0, 0, Some((9, 4.0, 1)), 3),
        ]);
        assert_eq!(stats.instances, 3);
        assert_eq!(stats.players_connected, 15);
        assert_eq!(stats.requests_per_second, 400.0);
        assert!((stats.error_rate - 0.075).abs() < 1e-9, "30 errors a second in 400");
        assert_eq!((stats.event_backlog, stats.oldest_event_age_secs, stats.dead_events), (9, 4.0, 1), "the freshest outbox reading");
        assert_eq!(
            add_up(&[]),
            Stats {
                instances: 0,
                players_connected: 0,
                requests_per_second: 0.0,
                error_rate: 0.0,
                event_backlog: 0,
                oldest_event_age_secs: 0.0,
                dead_events: 0
            }
        );
    }
}
