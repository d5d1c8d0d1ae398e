//! The cache port: short-lived shared state (session revocations, rate-limit counters).
//! Redis in production, so that every instance sees the same state; process memory on embedded
//! defaults, where there is one instance.
//!
//! Every Redis command goes through `RedisConnection`, which bounds it by `REDIS_TIMEOUT` and
//! fails at once while Redis is known to be down (`crate::reachability`). That is needed beyond
//! redis-rs's own timeouts: its `ConnectionManager` reconnects after a dropped connection, but
//! keeps a connection whose commands time out (a paused or partitioned server), and a command
//! waiting for a reconnect is bounded by no response timeout. A probe that gets through after a
//! failure installs its fresh connection, so a wedged one is replaced without a restart.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::config::CacheConfig;
use crate::error::Dependency;
use crate::reachability::{Probe, Reachability};

/// KEYS: bucket. ARGV: capacity, tokens per second. Uses the server's clock (TIME), so instances
/// with skewed clocks share one bucket correctly. Returns 0 when a token was taken, else the
/// milliseconds until one will be there.
const TAKE_TOKEN_LUA: &str = r"
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - at) * rate / 1000)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) * 1000 / rate)
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 1000)
return wait
";
static TAKE_TOKEN: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();

/// Redis operations that take longer fail (503) instead of holding a request, and have Redis
/// probed. Redis answers in well under a millisecond; no command here runs long.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The shared connection's settings: connecting bounded by `REDIS_TIMEOUT`. Answers are bounded
/// by `RedisCache::bounded` (which covers a wait for a reconnect too), so redis-rs sets no second
/// timer per command.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new().set_connection_timeout(Some(REDIS_TIMEOUT)).set_response_timeout(None).set_number_of_retries(2)
}

/// A cache backend. Cheap to clone; clones share the backend.
#[derive(Clone)]
pub enum Cache {
    /// Redis (ElastiCache), shared by every instance.
    Redis(RedisCache),
    /// Process memory, for the single-process embedded tier.
    Memory(MemoryCache),
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cache::Redis(r) => write!(f, "Cache::Redis(prefix={:?})", r.0.prefix),
            Cache::Memory(_) => f.write_str("Cache::Memory"),
        }
    }
}

impl Cache {
    /// Connects to the configured backend.
    pub async fn connect(config: &CacheConfig) -> anyhow::Result<Self> {
        match config {
            CacheConfig::Memory => Ok(Cache::Memory(MemoryCache::default())),
            CacheConfig::Redis { url, key_prefix } => {
                let client = redis::Client::open(url.expose().as_str()).context("parsing REDIS_URL")?;
                let conn = ConnectionManager::new_with_config(client.clone(), manager_config()).await.context("connecting to Redis")?;
                let conn = Arc::new(RwLock::new(conn));
                let reachability = Reachability::new(Dependency::Cache, redis_probe(client.clone(), conn.clone()));
                Ok(Cache::Redis(RedisCache(Arc::new(RedisInner {
                    conn,
                    client,
                    prefix: key_prefix.clone(),
                    reachability,
                    errors: Default::default(),
                }))))
            }
        }
    }

    /// Stores `value` under `key` for `ttl`.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache set_ex", skip_all)]
    pub async fn set_ex(&self, key: &str, value: &str, ttl: Duration) -> anyhow::Result<()> {
        match self {
            Cache::Redis(r) => {
                let mut conn = r.connection();
                let _: () = redis::cmd("SET")
                    .arg(r.key(key))
                    .arg(value)
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async(&mut conn)
                    .await
                    .context("Redis SET")?;
                Ok(())
            }
            Cache::Memory(m) => {
                m.with_key(key, |map| {
                    map.insert(key.to_owned(), Entry { value: value.to_owned(), expires: Instant::now() + ttl });
                });
                Ok(())
            }
        }
    }

    /// The value under `key`, if present and not expired.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache get", skip_all)]
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        match self {
            Cache::Redis(r) => {
                let mut conn = r.connection();
                redis::cmd("GET").arg(r.key(key)).query_async(&mut conn).await.context("Redis GET")
            }
            Cache::Memory(m) => Ok(m.with_key(key, |map| map.get(key).map(|e| e.value.clone()))),
        }
    }

    /// Whether `key` is present.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache exists", skip_all)]
    pub async fn exists(&self, key: &str) -> anyhow::Result<bool> {
        Ok(self.get(key).await?.is_some())
    }

    /// Removes `key`.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache delete", skip_all)]
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match self {
            Cache::Redis(r) => {
                let mut conn = r.connection();
                let _: i64 = redis::cmd("DEL").arg(r.key(key)).query_async(&mut conn).await.context("Redis DEL")?;
                Ok(())
            }
            Cache::Memory(m) => {
                m.with_key(key, |map| map.remove(key));
                Ok(())
            }
        }
    }

    /// Counts one hit in the fixed window that `key` names, starting the window (of length
    /// `window`) on the first hit. Returns the hits so far and the time left in the window.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache hit", skip_all)]
    pub async fn hit(&self, key: &str, window: Duration) -> anyhow::Result<(u64, Duration)> {
        match self {
            Cache::Redis(r) => {
                let mut conn = r.connection();
                let key = r.key(key);
                // One round trip, atomic: the expiry is set only by the hit that created the key.
                let (count, ttl): (u64, i64) = redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg(&key)
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(millis(window))
                    .arg("NX")
                    .ignore()
                    .cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .context("Redis rate-limit hit")?;
                let left = u64::try_from(ttl).map(Duration::from_millis).unwrap_or(window);
                Ok((count, left))
            }
            Cache::Memory(m) => Ok(m.with_key(key, |map| {
                let now = Instant::now();
                let entry = map.entry(key.to_owned()).or_insert_with(|| Entry { value: "0".to_owned(), expires: now + window });
                let count = entry.value.parse::<u64>().unwrap_or(0) + 1;
                entry.value = count.to_string();
                (count, entry.expires.saturating_duration_since(now))
            })),
        }
    }

    /// Takes one token from the bucket `key` (capacity `capacity`, refilled at `per_second`),
    /// shared by every instance. `None` when a token was taken; else how long until one is there.
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache take_token", skip_all)]
    pub async fn take_token(&self, key: &str, capacity: u32, per_second: f64) -> anyhow::Result<Option<Duration>> {
        match self {
            Cache::Redis(r) => {
                let mut conn = r.connection();
                let wait_ms: i64 = TAKE_TOKEN
                    .get_or_init(|| redis::Script::new(TAKE_TOKEN_LUA))
                    .key(r.key(key))
                    .arg(capacity)
                    .arg(per_second)
                    .invoke_async(&mut conn)
                    .await
                    .context("Redis token bucket")?;
                Ok(u64::try_from(wait_ms).ok().filter(|ms| *ms > 0).map(Duration::from_millis))
            }
            Cache::Memory(m) => Ok(m.with_key(key, |map| {
                let now = Instant::now();
                let full_after = Duration::from_secs_f64(f64::from(capacity) / per_second) + Duration::from_secs(1);
                let entry = map.entry(key.to_owned()).or_insert_with(|| Entry { value: format!("{capacity}"), expires: now + full_after });
                // The value holds the tokens left; the deadline, minus the time to fill the
                // bucket, tells when they were counted.
                let counted_at = entry.expires.checked_sub(full_after).unwrap_or(now);
                let tokens = entry.value.parse::<f64>().unwrap_or(0.0);
                let tokens = (tokens + now.saturating_duration_since(counted_at).as_secs_f64() * per_second).min(f64::from(capacity));
                if tokens < 1.0 {
                    entry.value = tokens.to_string();
                    entry.expires = now + full_after;
                    return Some(Duration::from_secs_f64((1.0 - tokens) / per_second));
                }
                entry.value = (tokens - 1.0).to_string();
                entry.expires = now + full_after;
                None
            })),
        }
    }

    /// Answers whether the backend is reachable (readiness).
    #[tracing::instrument(target = "guildhall::cache", level = "debug", name = "cache ping", skip_all)]
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Cache::Redis(r) => {
                let mut conn = r.connection();
                let _: String = redis::cmd("PING").query_async(&mut conn).await.context("Redis PING")?;
                Ok(())
            }
            Cache::Memory(_) => Ok(()),
        }
    }

    /// Registers `guildhall_cache_errors_total` (Redis commands that failed, by `kind`:
    /// `unavailable` when Redis was down, slow or refusing, `other` otherwise). The in-memory
    /// cache does not fail; it reports zeros.
    pub fn register_metrics(&self, metrics: &crate::metrics::Metrics) {
        const NAME: &str = "guildhall_cache_errors_total";
        const HELP: &str = "Redis commands that failed, by kind: unavailable (down, timed out, failing fast, loading, read-only) or other.";
        let errors = match self {
            Cache::Redis(r) => r.0.errors.clone(),
            Cache::Memory(_) => Default::default(),
        };
        for (kind, counter) in ["unavailable", "other"].into_iter().zip(&errors) {
            metrics.register_counter(NAME, HELP, &[("kind", kind)], counter);
        }
    }

    /// The Redis connection and key prefix, for services that use Redis structures of their own
    /// (sorted sets, pub/sub); `None` on the in-memory backend.
    pub fn redis(&self) -> Option<&RedisCache> {
        match self {
            Cache::Redis(r) => Some(r),
            Cache::Memory(_) => None,
        }
    }
}

/// A multiplexed, auto-reconnecting Redis connection with a key prefix. Cheap to clone (one
/// reference count): states holding the cache are cloned per request.
#[derive(Clone)]
pub struct RedisCache(Arc<RedisInner>);

struct RedisInner {
    /// The shared connection; replaced by a probe that got through after a failure.
    conn: Arc<RwLock<ConnectionManager>>,
    client: redis::Client,
    prefix: String,
    reachability: Arc<Reachability>,
    /// Commands that failed because Redis was down, slow or refusing (`is_unavailable`), and
    /// those that failed otherwise (a bug: a wrong type, a script error).
    errors: [crate::metrics::Counter; 2],
}

impl RedisCache {
    /// `key` with this deployment's prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.0.prefix)
    }

    /// This deployment's key prefix.
    pub fn prefix(&self) -> &str {
        &self.0.prefix
    }

    /// A handle on the shared connection, bounded and behind the breaker (`RedisConnection`).
    pub fn connection(&self) -> RedisConnection {
        let conn = self.0.conn.read().unwrap_or_else(|p| p.into_inner()).clone();
        RedisConnection { conn, redis: self.clone() }
    }

    /// The client, to open dedicated connections (pub/sub); run what waits on them through
    /// `bounded`.
    pub fn client(&self) -> &redis::Client {
        &self.0.client
    }

    /// Runs a Redis operation behind the breaker: an error at once while Redis is known to be
    /// down; otherwise bounded by `REDIS_TIMEOUT`, a timeout or an I/O failure having Redis probed.
    pub async fn bounded<T>(&self, operation: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
        if self.0.reachability.is_down() {
            return Err(io_error(
                std::io::ErrorKind::NotConnected,
                "Redis is unreachable (its last probe failed); failing at once until a probe gets through",
            ));
        }
        let result = match tokio::time::timeout(REDIS_TIMEOUT, operation).await {
            Ok(result) => result,
            Err(_) => Err(io_error(std::io::ErrorKind::TimedOut, "Redis did not answer in time")),
        };
        if let Err(err) = &result {
            self.0.errors[usize::from(!is_unavailable(err))].inc();
            if err.is_io_error() {
                self.0.reachability.suspect();
            }
        }
        result
    }
}

/// A handle on the shared Redis connection whose commands run through `RedisCache::bounded`.
/// Cheap to clone.
#[derive(Clone)]
pub struct RedisConnection {
    conn: ConnectionManager,
    redis: RedisCache,
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.redis.bounded(self.conn.send_packed_command(cmd)))
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.redis.bounded(self.conn.send_packed_commands(pipeline, offset, count)))
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// A Redis I/O error, which `is_unavailable` classifies as Redis being down.
fn io_error(kind: std::io::ErrorKind, message: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(kind, message))
}

/// Opens a fresh connection and pings it; when it answers, it replaces the shared connection,
/// which may be wedged (commands timing out on a connection the server no longer serves).
fn redis_probe(client: redis::Client, slot: Arc<RwLock<ConnectionManager>>) -> Probe {
    Box::new(move || {
        let (client, slot) = (client.clone(), slot.clone());
        Box::pin(async move {
            let mut fresh = ConnectionManager::new_with_config(client, manager_config()).await.context("connecting to Redis")?;
            let _: String = redis::cmd("PING").query_async(&mut fresh).await.context("Redis PING")?;
            *slot.write().unwrap_or_else(|p| p.into_inner()) = fresh;
            Ok(())
        })
    })
}

/// Whether `err` means Redis is down or cannot serve now rather than that the command is wrong:
/// I/O errors (refused, reset, dropped, timed out, or failing at once while down), and the
/// server loading its data set, in failover or read-only (`LOADING`, `MASTERDOWN`,
/// `CLUSTERDOWN`, `TRYAGAIN`, `READONLY`). Answered 503.
pub fn is_unavailable(err: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    err.is_io_error()
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ReadOnly
            ) | ErrorKind::ClusterConnectionNotFound
        )
}

/// The in-memory backend: a map of entries with deadlines, swept as it is used.
#[derive(Clone, Default)]
pub struct MemoryCache {
    inner: Arc<Mutex<MemoryInner>>,
    /// Ended sessions (`crate::revocations`); empty and incomplete when the process starts.
    revocations: Arc<Mutex<crate::revocations::MemoryRevocations>>,
}

#[derive(Default)]
struct MemoryInner {
    map: HashMap<String, Entry>,
    ops_since_sweep: u32,
}

struct Entry {
    value: String,
    expires: Instant,
}

/// Expired entries are dropped every this many operations, so memory stays bounded by the live set.
const SWEEP_EVERY: u32 = 1024;

impl MemoryCache {
    /// Runs `f` on the set of ended sessions.
    pub(crate) fn revocations<R>(&self, f: impl FnOnce(&mut crate::revocations::MemoryRevocations) -> R) -> R {
        f(&mut self.revocations.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Runs `f` on the map after dropping `key` if it has expired, so no caller sees a stale entry.
    fn with_key<R>(&self, key: &str, f: impl FnOnce(&mut HashMap<String, Entry>) -> R) -> R {
        self.with(|map| {
            if map.get(key).is_some_and(|e| e.expires <= Instant::now()) {
                map.remove(key);
            }
            f(map)
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of a cache entry; the
        // map itself is still sound, so carry on with it.
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        inner.ops_since_sweep += 1;
        if inner.ops_since_sweep >= SWEEP_EVERY {
            inner.ops_since_sweep = 0;
            inner.map.retain(|_, e| e.expires > now);
        }
        f(&mut inner.map)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
