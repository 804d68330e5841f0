//! A token bucket for a queue's `rateLimitPerSecond`.

use std::time::Instant;

/// Refills at `rate` tokens per second up to a burst of one second's worth (at least
/// one token). Time is passed in, so the arithmetic is testable.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second.
    pub fn new(rate: f64, now: Instant) -> Self {
        TokenBucket { rate, tokens: burst(rate), last: now }
    }

    /// Changes the rate (the queue was reconfigured), keeping the tokens within the new
    /// burst.
    pub fn set_rate(&mut self, rate: f64, now: Instant) {
        if rate != self.rate {
            self.refill(now);
            self.rate = rate;
            self.tokens = self.tokens.min(burst(rate));
        }
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens.floor() as u32
    }

    /// Spends one token (callers check [`TokenBucket::available`] first).
    pub fn take(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(burst(self.rate));
        self.last = now;
    }
}

fn burst(rate: f64) -> f64 {
    rate.max(1.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_refills_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5.0, start);
        assert_eq!(bucket.available(start), 5);
        for _ in 0..5 {
            bucket.take();
        }
        assert_eq!(bucket.available(start), 0);
        assert_eq!(bucket.available(start + Duration::from_millis(400)), 2);
        assert_eq!(bucket.available(start + Duration::from_secs(60)), 5, "capped at one second's worth");
    }

    #[test]
    fn slow_rates_still_allow_one_at_a_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0.5, start);
        assert_eq!(bucket.available(start), 1);
        bucket.take();
        assert_eq!(bucket.available(start + Duration::from_secs(1)), 0);
        assert_eq!(bucket.available(start + Duration::from_secs(2)), 1);
    }

    #[test]
    fn lowering_the_rate_caps_the_tokens() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, start);
        bucket.set_rate(2.0, start);
        assert_eq!(bucket.available(start), 2);
    }
}
