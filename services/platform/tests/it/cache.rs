//! The cache port behaves the same on Redis and in memory.

use std::time::Duration;

use platform::cache::Cache;
use platform::config::CacheConfig;
use platform::testing::{Backend, TestEnv};

async fn caches() -> Vec<(&'static str, Cache, Cache)> {
    let mut out = vec![(
        "memory",
        Cache::connect(&CacheConfig::Memory).await.expect("memory"),
        Cache::connect(&CacheConfig::Memory).await.expect("memory"),
    )];
    if !platform::testing::real_backends_skipped() {
        // Two prefixes on one Redis: each sees only its own keys.
        let first = TestEnv::new(Backend::Real).await.expect("env").config().expect("config").cache;
        let second = TestEnv::new(Backend::Real).await.expect("env").config().expect("config").cache;
        assert!(matches!(first, CacheConfig::Redis { .. }));
        out.push(("redis", Cache::connect(&first).await.expect("redis"), Cache::connect(&second).await.expect("redis")));
    }
    out
}

#[tokio::test]
async fn values_expire_and_delete() {
    for (name, cache, other) in caches().await {
        cache.set_ex("k", "v", Duration::from_millis(300)).await.expect("set");
        assert_eq!(cache.get("k").await.expect("get").as_deref(), Some("v"), "{name}");
        assert!(cache.exists("k").await.expect("exists"), "{name}");
        assert!(!other.exists("k").await.expect("exists"), "{name}: keys leak between prefixes or instances");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(cache.get("k").await.expect("get"), None, "{name}: expired value still read");
        cache.set_ex("d", "v", Duration::from_secs(60)).await.expect("set");
        cache.delete("d").await.expect("delete");
        assert!(!cache.exists("d").await.expect("exists"), "{name}");
        cache.ping().await.expect("ping");
    }
}

#[tokio::test]
async fn hits_count_within_a_window_and_start_over_after_it() {
    for (name, cache, _) in caches().await {
        let window = Duration::from_millis(400);
        let (first, left) = cache.hit("w", window).await.expect("hit");
        assert_eq!(first, 1, "{name}");
        assert!(left <= window && left > Duration::ZERO, "{name}: {left:?}");
        assert_eq!(cache.hit("w", window).await.expect("hit").0, 2, "{name}");
        // Later hits do not push the window's end out.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (third, left) = cache.hit("w", window).await.expect("hit");
        assert_eq!(third, 3, "{name}");
        assert!(left <= Duration::from_millis(160), "{name}: window was extended to {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(cache.hit("w", window).await.expect("hit").0, 1, "{name}: a new window starts at one");
    }
}

#[tokio::test]
async fn token_buckets_allow_a_burst_then_refill() {
    for (name, cache, other) in caches().await {
        for i in 0..5 {
            assert_eq!(cache.take_token("b", 5, 10.0).await.expect("take"), None, "{name}: token {i} of the burst");
        }
        let wait = cache.take_token("b", 5, 10.0).await.expect("take").expect("empty bucket");
        assert!(wait <= std::time::Duration::from_millis(100), "{name}: {wait:?}");
        assert_eq!(other.take_token("b", 5, 10.0).await.expect("take"), None, "{name}: buckets are per prefix/instance");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        assert_eq!(cache.take_token("b", 5, 10.0).await.expect("take"), None, "{name}: refilled");
        assert_eq!(cache.take_token("b", 5, 10.0).await.expect("take"), None, "{name}: refilled");
    }
}
