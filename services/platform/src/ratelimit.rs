//! Fixed-window rate limits counted in the cache, so that every instance shares each counter.

use std::time::Duration;

use crate::cache::Cache;
use crate::error::ApiError;

/// A limit: at most `max` hits per `window` for each key.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Hits allowed per window.
    pub max: u32,
    /// Length of the window.
    pub window: Duration,
}

impl Limit {
    /// At most `max` per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self { max, window }
    }

    /// Counts a hit on `key` (e.g. `login:ip:203.0.113.7`) and refuses it with 429 and the time
    /// left in the window once the limit is spent.
    pub async fn hit(&self, cache: &Cache, key: &str) -> Result<(), ApiError> {
        let (count, left) = cache
            .hit(&format!("ratelimit:{key}"), self.window)
            .await
            .map_err(|err| ApiError::Internal(err.context("counting the rate limit")))?;
        if count > u64::from(self.max) {
            return Err(ApiError::RateLimited { retry_after: left });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryCache;

    #[tokio::test]
    async fn the_hit_after_the_limit_is_refused_until_the_window_ends() {
        let cache = Cache::Memory(MemoryCache::default());
        let limit = Limit::new(2, Duration::from_millis(200));
        limit.hit(&cache, "k").await.expect("first");
        limit.hit(&cache, "k").await.expect("second");
        match limit.hit(&cache, "k").await {
            Err(ApiError::RateLimited { retry_after }) => assert!(retry_after <= Duration::from_millis(200)),
            other => panic!("expected 429, got {other:?}"),
        }
        limit.hit(&cache, "other").await.expect("keys are counted apart");
        tokio::time::sleep(Duration::from_millis(250)).await;
        limit.hit(&cache, "k").await.expect("a new window");
    }
}
