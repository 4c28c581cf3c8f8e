//! Rate limits (token buckets per user and per client IP) and the per-user limit on open
//! streams.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buckets not touched for this long are forgotten (they would be full again anyway).
const IDLE: Duration = Duration::from_secs(600);
/// Forgotten buckets are swept once this many exist.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by a string: `per_minute` requests a minute on average, `burst` more at
/// once. A rate of 0 lets everything through.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    capacity: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter of `per_minute` requests a minute with `burst` extra.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: per_minute as f64 / 60.0,
            capacity: (per_minute.min(1) + burst) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; when none is left, how long until one is.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter");
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, b| now.duration_since(b.at) < IDLE);
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.capacity,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_second)
            .min(self.capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }
}

/// Counts the streams each user has open.
#[derive(Debug, Clone)]
pub struct StreamLimiter {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// An open stream; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    user: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("stream limiter");
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl StreamLimiter {
    /// At most `max` streams per user.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more stream of `user`, or `None` when they have `max` open.
    pub fn acquire(&self, user: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().expect("stream limiter");
        let n = open.entry(user.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            user: user.to_owned(),
            open: self.open.clone(),
        })
    }

    /// Streams open now, all users together.
    pub fn total(&self) -> usize {
        self.open.lock().expect("stream limiter").values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_are_per_key() {
        let l = RateLimiter::new(60, 2);
        // One steady token plus a burst of two.
        for _ in 0..3 {
            l.check("a").unwrap();
        }
        let wait = l.check("a").unwrap_err();
        assert!(
            wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        l.check("b").unwrap();
        assert!(RateLimiter::new(0, 0).check("a").is_ok());
    }

    #[test]
    fn stream_slots_are_counted_and_freed() {
        let s = StreamLimiter::new(2);
        let a = s.acquire("u").unwrap();
        let _b = s.acquire("u").unwrap();
        assert!(s.acquire("u").is_none());
        assert!(s.acquire("v").is_some());
        drop(a);
        assert!(s.acquire("u").is_some());
        assert_eq!(s.total(), 1);
    }
}
