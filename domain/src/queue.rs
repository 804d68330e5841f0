//! Queue settings and their validation.

use std::time::Duration;

use crate::{DomainError, MaxAttempts, QueueName, RetryPolicy};

/// Lease length when a queue does not set one.
pub const DEFAULT_LEASE_SECONDS: u32 = 30;

/// A queue's settings; a queue without stored settings uses [`QueueSettings::defaults`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// The queue.
    pub name: QueueName,
    /// Paused queues receive tasks but offer none.
    pub paused: bool,
    /// Offers per second at most (token bucket); `None` = unlimited.
    pub rate_limit_per_second: Option<f64>,
    /// Tasks offered or running at once at most; `None` = unlimited.
    pub max_concurrency: Option<u32>,
    /// Default `maxAttempts` of new tasks; `None` = the global default (5).
    pub max_attempts: Option<MaxAttempts>,
    /// Lease length of offers and runs.
    pub lease_seconds: u32,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
}

impl QueueSettings {
    /// The settings of a queue nobody configured.
    pub fn defaults(name: QueueName) -> Self {
        QueueSettings {
            name,
            paused: false,
            rate_limit_per_second: None,
            max_concurrency: None,
            max_attempts: None,
            lease_seconds: DEFAULT_LEASE_SECONDS,
            retry: RetryPolicy::default(),
        }
    }

    /// The lease length (`lease_seconds`): how long an accepted or started run, or a
    /// heartbeat's extension, lasts.
    pub fn lease(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.lease_seconds))
    }
}

/// A queue's rate-limit bucket as its row stores it, shared by every dispatcher: it
/// refills at `rate` tokens per second up to a burst of one second's worth (at least one
/// token, so slow rates still offer one at a time). Time is passed in (epoch ms), so the
/// arithmetic is testable; a clock that went backwards refills nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBucket {
    /// Tokens in the bucket at `at_ms`.
    pub tokens: f64,
    /// When `tokens` was last written.
    pub at_ms: i64,
}

impl RateBucket {
    /// The bucket a queue without stored state starts with: full.
    pub fn full(rate: f64, now_ms: i64) -> RateBucket {
        RateBucket { tokens: rate_burst(rate), at_ms: now_ms }
    }

    /// The bucket at `now_ms`, refilled at `rate` (the queue's current rate: a lowered
    /// rate caps what is left at its own burst).
    pub fn refilled(self, rate: f64, now_ms: i64) -> RateBucket {
        let elapsed = (now_ms.saturating_sub(self.at_ms)).max(0) as f64 / 1_000.0;
        RateBucket {
            tokens: (self.tokens + elapsed * rate).min(rate_burst(rate)).max(0.0),
            at_ms: now_ms.max(self.at_ms),
        }
    }

    /// Whole tokens to spend.
    pub fn whole(self) -> u32 {
        self.tokens.floor().clamp(0.0, f64::from(u32::MAX)) as u32
    }

    /// The bucket after spending `n` tokens (never below empty).
    pub fn spent(self, n: u32) -> RateBucket {
        RateBucket { tokens: (self.tokens - f64::from(n)).max(0.0), ..self }
    }

    /// How long until the bucket holds a whole token again at `rate`.
    pub fn until_next(self, rate: f64) -> Duration {
        self.until_holding(1, rate)
    }

    /// How long until the bucket holds `n` tokens at `rate` (zero when it does now; at
    /// most an hour).
    pub fn until_holding(self, n: u32, rate: f64) -> Duration {
        let missing = f64::from(n) - self.tokens;
        if missing <= 0.0 || rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((missing / rate).min(3_600.0))
    }
}

fn rate_burst(rate: f64) -> f64 {
    rate.max(1.0)
}

/// A `configureQueue` input: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueChanges {
    /// New rate limit; `Some(None)` removes it.
    pub rate_limit_per_second: Option<Option<f64>>,
    /// New concurrency cap; `Some(None)` removes it.
    pub max_concurrency: Option<Option<i64>>,
    /// New default attempts; `Some(None)` removes it.
    pub max_attempts: Option<Option<i64>>,
    /// New lease length in seconds.
    pub lease_seconds: Option<i64>,
    /// New backoff base in milliseconds.
    pub backoff_base_ms: Option<i64>,
    /// New backoff cap in milliseconds.
    pub backoff_max_ms: Option<i64>,
}

impl QueueChanges {
    /// Applies the changes to `settings`, validating each field.
    pub fn apply(&self, mut settings: QueueSettings) -> Result<QueueSettings, DomainError> {
        if let Some(rate) = self.rate_limit_per_second {
            if rate.is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 100_000.0)) {
                return Err(DomainError::invalid("rateLimitPerSecond", "must be above 0 and at most 100000"));
            }
            settings.rate_limit_per_second = rate;
        }
        if let Some(max) = self.max_concurrency {
            settings.max_concurrency = max
                .map(|m| u32::try_from(m).ok().filter(|m| (1..=100_000).contains(m)))
                .map(|m| m.ok_or_else(|| DomainError::invalid("maxConcurrency", "must be between 1 and 100000")))
                .transpose()?;
        }
        if let Some(max) = self.max_attempts {
            settings.max_attempts = max.map(MaxAttempts::try_from).transpose()?;
        }
        if let Some(lease) = self.lease_seconds {
            settings.lease_seconds = u32::try_from(lease)
                .ok()
                .filter(|l| (1..=86_400).contains(l))
                .ok_or_else(|| DomainError::invalid("leaseSeconds", "must be between 1 and 86400"))?;
        }
        let ms = |v: i64, field: &str| {
            u64::try_from(v)
                .ok()
                .filter(|v| (1..=86_400_000).contains(v))
                .map(Duration::from_millis)
                .ok_or_else(|| DomainError::invalid(field, "must be between 1 and 86400000"))
        };
        if let Some(base) = self.backoff_base_ms {
            settings.retry.base = ms(base, "backoffBaseMs")?;
        }
        if let Some(max) = self.backoff_max_ms {
            settings.retry.max = ms(max, "backoffMaxMs")?;
        }
        if settings.retry.base > settings.retry.max {
            return Err(DomainError::invalid("backoffBaseMs", "must not exceed backoffMaxMs"));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> QueueSettings {
        QueueSettings::defaults(QueueName::parse("q").expect("valid"))
    }

    #[test]
    fn a_rate_bucket_allows_a_burst_then_refills_at_the_rate() {
        let bucket = RateBucket::full(5.0, 0);
        assert_eq!(bucket.whole(), 5);
        let empty = bucket.spent(5);
        assert_eq!(empty.whole(), 0);
        assert_eq!(empty.until_next(5.0), Duration::from_millis(200));
        assert_eq!(empty.refilled(5.0, 400).whole(), 2);
        assert_eq!(empty.refilled(5.0, 60_000).whole(), 5, "capped at one second's worth");
        assert_eq!(empty.refilled(5.0, -1_000).whole(), 0, "a clock that went back refills nothing");
        assert_eq!(bucket.spent(9).tokens, 0.0, "never below empty");
        assert_eq!(RateBucket::full(50.0, 0).refilled(2.0, 0).whole(), 2, "a lowered rate caps what is left");
    }

    #[test]
    fn the_wait_for_several_tokens_counts_from_what_is_left() {
        let bucket = RateBucket { tokens: 0.5, at_ms: 0 };
        assert_eq!(bucket.until_holding(3, 5.0), Duration::from_millis(500));
        assert_eq!(bucket.until_holding(0, 5.0), Duration::ZERO, "nothing to wait for");
        assert_eq!(RateBucket::full(4.0, 0).until_holding(4, 4.0), Duration::ZERO, "a full bucket pays its burst");
        assert_eq!(bucket.until_holding(1, 0.0), Duration::ZERO, "no rate: nothing to wait for");
    }

    #[test]
    fn slow_rates_still_allow_one_at_a_time() {
        let bucket = RateBucket::full(0.5, 0);
        assert_eq!(bucket.whole(), 1);
        let empty = bucket.spent(1);
        assert_eq!(empty.refilled(0.5, 1_000).whole(), 0);
        assert_eq!(empty.refilled(0.5, 2_000).whole(), 1);
        assert_eq!(empty.until_next(0.5), Duration::from_secs(2));
    }

    #[test]
    fn only_given_fields_change() {
        let changes = QueueChanges { lease_seconds: Some(60), ..Default::default() };
        let next = changes.apply(queue()).expect("valid");
        assert_eq!(next.lease_seconds, 60);
        assert_eq!(next.retry, RetryPolicy::default());
        assert_eq!(next.rate_limit_per_second, None);
    }

    #[test]
    fn limits_can_be_set_and_removed() {
        let set = QueueChanges {
            rate_limit_per_second: Some(Some(5.0)),
            max_concurrency: Some(Some(3)),
            ..Default::default()
        };
        let limited = set.apply(queue()).expect("valid");
        assert_eq!((limited.rate_limit_per_second, limited.max_concurrency), (Some(5.0), Some(3)));
        let unset =
            QueueChanges { rate_limit_per_second: Some(None), max_concurrency: Some(None), ..Default::default() };
        let free = unset.apply(limited).expect("valid");
        assert_eq!((free.rate_limit_per_second, free.max_concurrency), (None, None));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            (QueueChanges { rate_limit_per_second: Some(Some(0.0)), ..Default::default() }, "rateLimitPerSecond"),
            (QueueChanges { rate_limit_per_second: Some(Some(f64::NAN)), ..Default::default() }, "rateLimitPerSecond"),
            (QueueChanges { max_concurrency: Some(Some(0)), ..Default::default() }, "maxConcurrency"),
            (QueueChanges { max_attempts: Some(Some(101)), ..Default::default() }, "maxAttempts"),
            (QueueChanges { lease_seconds: Some(0), ..Default::default() }, "leaseSeconds"),
            (QueueChanges { backoff_base_ms: Some(-1), ..Default::default() }, "backoffBaseMs"),
            (
                QueueChanges { backoff_base_ms: Some(10_000), backoff_max_ms: Some(1_000), ..Default::default() },
                "backoffBaseMs",
            ),
        ];
        for (changes, field) in cases {
            match changes.apply(queue()) {
                Err(DomainError::InvalidInput { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected an input error, got {other:?}"),
            }
        }
    }
}
