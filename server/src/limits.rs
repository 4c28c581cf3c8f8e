//! Rate limits (token buckets per user and per client IP, with [governor]'s keyed GCRA
//! limiter) and the per-user limit on open streams.
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Keys are swept of idle buckets (which would be full again anyway) once this many exist.
const SWEEP_AT: usize = 10_000;

/// Token buckets keyed by a string: `per_minute` requests a minute on average, `burst` more at
/// once. A rate of 0 lets everything through.
pub struct RateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("on", &self.limiter.is_some())
            .finish()
    }
}

impl RateLimiter {
    /// A limiter of `per_minute` requests a minute with `burst` extra.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|rate| {
            let cells = NonZeroU32::new(burst.saturating_add(1)).unwrap_or(NonZeroU32::MIN);
            DefaultKeyedRateLimiter::keyed(Quota::per_minute(rate).allow_burst(cells))
        });
        Self {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one token for `key`; when none is left, how long until one is.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() >= SWEEP_AT {
            limiter.retain_recent();
        }
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
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
