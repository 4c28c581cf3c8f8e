//! A small LRU cache of retrieval results for repeated queries.
//!
//! Entries are per user. Every write through the [`crate::Engine`] bumps the user's
//! generation, which makes all of that user's entries stale at once; entries also expire after
//! a time to live (recency scores depend on the clock). Hits and misses are counted.
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::retrieval::Retrieved;

/// Cache sizing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueryCacheConfig {
    /// Entries kept at most (0 turns the cache off).
    pub capacity: usize,
    /// How long an entry stays valid.
    pub ttl: Duration,
}

impl Default for QueryCacheConfig {
    fn default() -> Self {
        Self {
            capacity: 1024,
            ttl: Duration::from_secs(60),
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

struct Entry {
    generation: u64,
    stored: Instant,
    last_used: u64,
    value: Vec<Retrieved>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, String), Entry>,
    generations: HashMap<String, u64>,
    tick: u64,
}

/// See the module documentation.
pub struct QueryCache {
    config: QueryCacheConfig,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl QueryCache {
    /// An empty cache.
    pub fn new(config: QueryCacheConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The user's current generation (pass it back to [`QueryCache::put`], so that a result
    /// computed while a write happened is not stored as fresh).
    pub fn generation(&self, user: &str) -> u64 {
        let inner = self.inner.lock().expect("query cache");
        inner.generations.get(user).copied().unwrap_or(0)
    }

    /// A fresh cached result, counting a hit or a miss.
    pub fn get(&self, user: &str, key: &str) -> Option<Vec<Retrieved>> {
        if self.config.capacity == 0 {
            return None;
        }
        let mut inner = self.inner.lock().expect("query cache");
        inner.tick += 1;
        let tick = inner.tick;
        let generation = inner.generations.get(user).copied().unwrap_or(0);
        let k = (user.to_owned(), key.to_owned());
        let found = match inner.entries.get_mut(&k) {
            Some(e) if e.generation == generation && e.stored.elapsed() < self.config.ttl => {
                e.last_used = tick;
                Some(e.value.clone())
            }
            Some(_) => {
                inner.entries.remove(&k);
                None
            }
            None => None,
        };
        match found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// Stores a result computed at `generation`.
    pub fn put(&self, user: &str, key: &str, generation: u64, value: Vec<Retrieved>) {
        if self.config.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock().expect("query cache");
        if inner.generations.get(user).copied().unwrap_or(0) != generation {
            return;
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.entries.insert(
            (user.to_owned(), key.to_owned()),
            Entry {
                generation,
                stored: Instant::now(),
                last_used: tick,
                value,
            },
        );
        while inner.entries.len() > self.config.capacity {
            let victim = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => inner.entries.remove(&k),
                None => break,
            };
        }
    }

    /// Makes every cached result of the user stale (call on every write).
    pub fn invalidate(&self, user: &str) {
        let mut inner = self.inner.lock().expect("query cache");
        *inner.generations.entry(user.to_owned()).or_default() += 1;
        inner.entries.retain(|(u, _), _| u != user);
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.inner.lock().expect("query cache").entries.len(),
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
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 2,
                misses: 2,
                entries: 1
            }
        );
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
    fn least_recently_used_goes_first_and_ttl_expires() {
        let c = cache(2, 60_000);
        c.put("a", "1", 0, vec![]);
        c.put("a", "2", 0, vec![]);
        assert!(c.get("a", "1").is_some());
        c.put("a", "3", 0, vec![]);
        assert!(c.get("a", "2").is_none());
        assert!(c.get("a", "1").is_some());
        let short = cache(2, 1);
        short.put("a", "q", 0, vec![]);
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get("a", "q").is_none());
    }

    #[test]
    fn capacity_zero_disables() {
        let c = cache(0, 60_000);
        c.put("a", "q", 0, vec![]);
        assert!(c.get("a", "q").is_none());
        assert_eq!(c.stats().misses, 0);
    }
}
