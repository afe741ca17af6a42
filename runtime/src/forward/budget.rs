//! Token buckets for the uplink budget: one for the whole uplink and one per class, in
//! bytes per second. A sender takes what it is about to send and sleeps off any deficit, so
//! over any window the rate stays within the budget plus one burst.

use std::time::{Duration, Instant};

/// A bytes/s token bucket; a rate of 0 means unlimited.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket refilling at `bytes_per_sec`, holding at most a quarter second of it (at least
    /// 1 KiB), starting full.
    pub fn new(bytes_per_sec: u64) -> TokenBucket {
        let rate = bytes_per_sec as f64;
        let burst = (rate / 4.0).max(1024.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Whether the bucket limits anything.
    pub fn limited(&self) -> bool {
        self.rate > 0.0
    }

    /// The largest chunk worth sending at once (a quarter second of budget), or `None`.
    pub fn chunk_bytes(&self) -> Option<usize> {
        self.limited().then_some(self.burst as usize)
    }

    /// Takes `bytes` at `now` and returns how long the caller must wait before sending them
    /// (zero when there were enough tokens).
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        if !self.limited() {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlimited_bucket_never_waits() {
        let mut b = TokenBucket::new(0);
        assert_eq!(b.take(u64::MAX / 2, Instant::now()), Duration::ZERO);
        assert!(b.chunk_bytes().is_none());
    }

    #[test]
    fn a_deficit_is_slept_off_at_the_configured_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10_000);
        // The burst (2500 bytes) goes at once, the rest waits: 10 kB more takes one second.
        assert_eq!(b.take(2_500, start), Duration::ZERO);
        let wait = b.take(10_000, start);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        // After that second the bucket is empty again, not refilled twice.
        let wait = b.take(5_000, start + Duration::from_secs(1));
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn sending_for_a_long_time_averages_to_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(50_000);
        let mut now = start;
        let mut sent = 0u64;
        while now < start + Duration::from_secs(20) {
            now += b.take(7_000, now);
            sent += 7_000;
        }
        let rate = sent as f64 / now.duration_since(start).as_secs_f64();
        assert!((rate - 50_000.0).abs() / 50_000.0 < 0.02, "rate {rate}");
    }
}
