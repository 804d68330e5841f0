//! Retry policy: capped exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// How long to wait before the next attempt of a failed task.
///
/// "Full jitter" (delay drawn uniformly from `0..=ceiling`) spreads retries of tasks that
/// failed together, so a dependency that just recovered is not hit by a synchronized wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Largest ceiling, whatever the attempt number.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 1 s base, 5 min cap.
    fn default() -> Self {
        RetryPolicy { base: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

impl RetryPolicy {
    /// The upper bound of the delay after `attempt` failed attempts (`attempt` ≥ 1):
    /// `min(max, base × 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << exponent).min(self.max)
    }

    /// A delay drawn uniformly from `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling(attempt).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=ceiling_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn ceiling_doubles_per_attempt_until_the_cap() {
        let policy = RetryPolicy { base: Duration::from_secs(1), max: Duration::from_secs(10) };
        let ceilings: Vec<u64> = (1..=6).map(|a| policy.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 10, 10]);
        assert_eq!(policy.ceiling(0), Duration::from_secs(1), "attempt 0 behaves like 1");
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(10), "no overflow");
    }

    #[test]
    fn delays_spread_over_the_whole_range() {
        let policy = RetryPolicy { base: Duration::from_millis(1000), max: Duration::from_secs(60) };
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<u128> = (0..1000).map(|_| policy.delay(1, &mut rng).as_millis()).collect();
        assert!(delays.iter().any(|d| *d < 100), "some retries come early");
        assert!(delays.iter().any(|d| *d > 900), "some retries come late");
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_the_ceiling(attempt in 0u32..200, base_ms in 1u64..10_000, max_ms in 1u64..1_000_000, seed: u64) {
            let policy = RetryPolicy { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms) };
            let mut rng = StdRng::seed_from_u64(seed);
            let delay = policy.delay(attempt, &mut rng);
            prop_assert!(delay <= policy.ceiling(attempt));
            prop_assert!(policy.ceiling(attempt) <= policy.max);
        }
    }
}
