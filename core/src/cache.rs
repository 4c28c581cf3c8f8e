//! A cache of retrieval results for repeated queries, on [moka] (bounded, least recently used
//! out first, entries expire after a time to live).
//!
//! Entries are per user. Every write through the engine moves the user to a new generation,
//! which makes all of that user's entries unreachable at once (they age out). Generations come
//! from one counter, so a user whose generation was forgotten gets a new one and never sees
//! an old entry again. Results that depend on the clock are computed at [`QueryCache::now`],
//! the current time rounded down to the clock step, and cached under it. Hits and misses are
//! counted.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::types::Retrieved;

/// Cache sizing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueryCacheConfig {
    /// Entries kept at most (0 turns the cache off).
    pub capacity: usize,
    /// How long an entry stays valid.
    pub ttl: Duration,
    /// The step of the clock that recency is computed with when the caller does not pin
    /// "now" (a search within one step is answered from the cache).
    pub clock_step: Duration,
}

impl Default for QueryCacheConfig {
    fn default() -> Self {
        Self {
            capacity: 1024,
            ttl: Duration::from_secs(60),
            clock_step: Duration::from_secs(60),
        }
    }
}

/// Hit and miss counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that were not.
    pub misses: u64,
    /// Entries held now.
    pub entries: usize,
}

/// (user, generation, query key).
type Key = (String, u64, String);

/// See the module documentation.
pub struct QueryCache {
    config: QueryCacheConfig,
    entries: Cache<Key, Arc<Vec<Retrieved>>>,
    /// The current generation of each user seen lately.
    generations: Cache<String, u64>,
    next_generation: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl QueryCache {
    /// An empty cache.
    pub fn new(config: QueryCacheConfig) -> Self {
        let entries = Cache::builder()
            .max_capacity(config.capacity as u64)
            .time_to_live(config.ttl.max(Duration::from_millis(1)))
            .eviction_policy(EvictionPolicy::lru())
            .build();
        // A user's generation outlives their entries; forgetting it is safe (see above).
        let generations = Cache::builder()
            .max_capacity((config.capacity as u64).saturating_mul(4).max(1024))
            .time_to_idle(config.ttl.saturating_mul(2).max(Duration::from_secs(1)))
            .build();
        Self {
            config,
            entries,
            generations,
            next_generation: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The current time rounded down to the clock step (exact when the step is zero).
    pub fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        match TimeDelta::from_std(self.config.clock_step) {
            Ok(step) if !step.is_zero() => now.duration_trunc(step).unwrap_or(now),
            _ => now,
        }
    }

    /// The user's current generation (pass it back to [`QueryCache::put`], so that a result
    /// computed while a write happened is not stored as fresh).
    pub fn generation(&self, user: &str) -> u64 {
        self.generations.get_with_by_ref(user, || {
            self.next_generation.fetch_add(1, Ordering::Relaxed)
        })
    }

    /// A fresh cached result, counting a hit or a miss.
    pub fn get(&self, user: &str, key: &str) -> Option<Vec<Retrieved>> {
        if self.config.capacity == 0 {
            return None;
        }
        let k = (user.to_owned(), self.generation(user), key.to_owned());
        let found = self.entries.get(&k).map(|v| v.as_ref().clone());
        match found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// Stores a result computed at `generation` (nothing if the user has moved on since).
    pub fn put(&self, user: &str, key: &str, generation: u64, value: Vec<Retrieved>) {
        if self.config.capacity == 0 || self.generation(user) != generation {
            return;
        }
        self.entries.insert(
            (user.to_owned(), generation, key.to_owned()),
            Arc::new(value),
        );
    }

    /// Makes every cached result of the user stale (call on every write).
    pub fn invalidate(&self, user: &str) {
        let next = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.generations.insert(user.to_owned(), next);
    }

    /// Makes every cached result stale (when writes made elsewhere may have gone unheard).
    pub fn invalidate_all(&self) {
        // Forgotten generations are made anew from the counter, so no old entry is reached
        // even before the entries go.
        self.generations.invalidate_all();
        self.entries.invalidate_all();
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        self.entries.run_pending_tasks();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.entry_count() as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize, ttl_ms: u64) -> QueryCache {
        QueryCache::new(QueryCacheConfig {
            capacity,
            ttl: Duration::from_millis(ttl_ms),
            ..QueryCacheConfig::default()
        })
    }

    #[test]
    fn hit_after_put_and_miss_after_invalidation_of_that_user_only() {
        let c = cache(10, 60_000);
        assert!(c.get("a", "q").is_none());
        c.put("a", "q", c.generation("a"), vec![]);
        c.put("b", "q", c.generation("b"), vec![]);
        assert!(c.get("a", "q").is_some());
        c.invalidate("a");
        assert!(c.get("a", "q").is_none());
        assert!(c.get("b", "q").is_some());
        let stats = c.stats();
        assert_eq!((stats.hits, stats.misses), (2, 2));
    }

    #[test]
    fn invalidating_all_makes_every_users_results_stale() {
        let c = cache(10, 60_000);
        let g = c.generation("b");
        c.put("a", "q", c.generation("a"), vec![]);
        c.invalidate_all();
        assert!(c.get("a", "q").is_none());
        // A result computed before it is not stored after it.
        c.put("b", "q", g, vec![]);
        assert!(c.get("b", "q").is_none());
    }

    #[test]
    fn a_result_computed_across_a_write_is_not_stored() {
        let c = cache(10, 60_000);
        let g = c.generation("a");
        c.invalidate("a");
        c.put("a", "q", g, vec![]);
        assert!(c.get("a", "q").is_none());
    }

    #[test]
    fn a_forgotten_generation_never_brings_back_old_entries() {
        let c = cache(10, 60_000);
        let g = c.generation("a");
        c.put("a", "q", g, vec![]);
        c.generations.invalidate("a");
        assert_ne!(c.generation("a"), g);
        assert!(c.get("a", "q").is_none());
    }

    #[test]
    fn least_recently_used_goes_first_and_ttl_expires() {
        let c = cache(2, 60_000);
        let g = c.generation("a");
        c.put("a", "1", g, vec![]);
        c.put("a", "2", g, vec![]);
        c.entries.run_pending_tasks();
        assert!(c.get("a", "1").is_some());
        c.put("a", "3", g, vec![]);
        c.entries.run_pending_tasks();
        assert!(c.get("a", "2").is_none());
        assert!(c.get("a", "1").is_some());
        assert!(c.stats().entries <= 2);
        let short = cache(2, 1);
        short.put("a", "q", short.generation("a"), vec![]);
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get("a", "q").is_none());
    }

    #[test]
    fn capacity_zero_disables() {
        let c = cache(0, 60_000);
        c.put("a", "q", c.generation("a"), vec![]);
        assert!(c.get("a", "q").is_none());
        assert_eq!(c.stats().misses, 0);
    }

    #[test]
    fn the_clock_moves_in_steps() {
        let c = cache(10, 60_000);
        let now = c.now();
        assert_eq!(now.timestamp() % 60, 0);
        assert_eq!(now.timestamp_subsec_nanos(), 0);
        assert!(Utc::now() - now < TimeDelta::seconds(61));
        let exact = QueryCache::new(QueryCacheConfig {
            clock_step: Duration::ZERO,
            ..QueryCacheConfig::default()
        });
        assert!(Utc::now() - exact.now() < TimeDelta::seconds(1));
    }
}
