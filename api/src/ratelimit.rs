//! Per-subject token-bucket rate limits for GraphQL operations (README, Operations (Rate limits)).
//!
//! Every subject has two buckets: one for all operations and one for mutations alone. A
//! bucket refills continuously at its rate and holds one second's worth of tokens (the
//! burst equals the rate). A check takes its tokens from both buckets at once or from
//! neither, so a refused mutation does not spend the operations budget. A refusal becomes
//! `RATE_LIMITED` with `extensions.retryAfterMs`: when the refused request would fit.
//!
//! When Redis is configured and answering, the buckets live there and one Lua script
//! ([`SCRIPT`]) does the whole check atomically on Redis's clock, so every process of a
//! deployment shares one budget per subject. Otherwise the same rule runs on in-process
//! buckets (`SubjectBuckets`, two of the domain's [`RateBucket`], the bucket that also
//! rate-limits queues), and each process has its own budget.
//!
//! What this module must never do:
//! - fail a request because Redis failed: Redis is an optimisation, and any Redis trouble
//!   falls back to the in-process buckets (limits become per process for a while);
//! - grow without bound: in-process buckets live in a bounded cache that forgets idle
//!   subjects, Redis keys expire once a bucket would be full again, and subjects enter
//!   keys only as a fixed-size hash;
//! - hold a lock across an `.await`.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use taskwire_domain::RateBucket;

use crate::{error::ApiError, metrics::Metrics, redis_link::RedisLink};

/// Subjects whose in-process buckets are kept at most. Past it the least useful entries
/// are evicted, which only resets those subjects to full buckets.
const MAX_SUBJECTS: u64 = 100_000;

/// How long an empty bucket takes to fill up again: the burst is one second's worth.
const FULL_REFILL: Duration = Duration::from_secs(1);

/// How long a bucket is kept after its last use: a margin past [`FULL_REFILL`], so a
/// forgotten bucket was full anyway and forgetting it changes no decision.
const IDLE_LIFETIME: Duration = FULL_REFILL.saturating_add(Duration::from_secs(2));

/// The Lua script behind the Redis buckets: the rule of [`RateBucket`], in Lua.
///
/// Tokens are counted in millionths and time in microseconds, so that refilling at `rate`
/// tokens per second adds exactly `elapsed_us × rate` millionths: whole numbers only,
/// which Lua (where every value stays below 2^53) computes exactly.
///
/// - `KEYS[1]`, `KEYS[2]`: the operations and mutations buckets, hashes with `tokens`
///   (millionths of a token) and `ts` (microseconds of Redis's clock at the last take).
/// - `ARGV[1]`, `ARGV[2]`: their rates per second (0: off); `ARGV[3]`, `ARGV[4]`: the
///   tokens to take (already clamped to the burst); `ARGV[5]`: key lifetime in ms.
///
/// A missing key is a full bucket. Time comes from `TIME`, so processes with skewed
/// clocks share one clock. Returns `{0, 0}` after taking from both buckets, or
/// `{retry_after_ms, bucket}` (1 operations, 2 mutations: whichever must wait longer)
/// and takes nothing. Only buckets that are on and charged are read or written.
pub(crate) const SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local levels = {}
local wait, bucket = 0, 0
for i = 1, 2 do
  local rate = tonumber(ARGV[i])
  local cost = tonumber(ARGV[i + 2]) * 1000000
  if rate > 0 and cost > 0 then
    local capacity = rate * 1000000
    local level = capacity
    local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
    if state[1] and state[2] then
      local elapsed = math.max(0, now - tonumber(state[2]))
      level = math.min(capacity, tonumber(state[1]) + elapsed * rate)
    end
    levels[i] = level
    if level < cost then
      local need = math.ceil((cost - level) / rate)
      if need >= wait then
        wait, bucket = need, i
      end
    end
  end
end
if bucket ~= 0 then
  return {math.max(1, math.ceil(wait / 1000)), bucket}
end
for i = 1, 2 do
  if levels[i] then
    local cost = tonumber(ARGV[i + 2]) * 1000000
    redis.call('HSET', KEYS[i], 'tokens', levels[i] - cost, 'ts', now)
    redis.call('PEXPIRE', KEYS[i], ARGV[5])
  end
end
return {0, 0}
";

/// Budgets per subject; 0 turns a bucket off. Each bucket holds one second's worth
/// (burst = rate, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Operations of any kind per second.
    pub operations_per_second: u32,
    /// Mutations per second (they also count as operations).
    pub mutations_per_second: u32,
}

/// Per-subject rate limiter: Redis-wide when Redis answers, in-process otherwise.
/// Cheap to share behind an `Arc`.
pub struct RateLimiter {
    limits: RateLimits,
    redis: Arc<RedisLink>,
    script: redis::Script,
    local: moka::future::Cache<SubjectKey, Arc<Mutex<SubjectBuckets>>>,
    /// Origin of the in-process clock (monotonic, unlike wall time).
    epoch: Instant,
    metrics: Metrics,
    /// The `bucket` label of a refusal by the operations bucket.
    operations_label: &'static str,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .field("redis", &self.redis)
            .field("local_subjects", &self.local.entry_count())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter with `limits` per subject, global through `redis` when it is configured
    /// and answering. Refusals are counted in `metrics.rate_limited`.
    pub(crate) fn new(limits: RateLimits, redis: Arc<RedisLink>, metrics: Metrics) -> RateLimiter {
        let local = moka::future::Cache::builder().max_capacity(MAX_SUBJECTS).time_to_idle(IDLE_LIFETIME).build();
        RateLimiter {
            limits,
            redis,
            script: redis::Script::new(SCRIPT),
            local,
            epoch: Instant::now(),
            metrics,
            operations_label: Bucket::Operations.label(),
        }
    }

    /// A limiter of refused tokens: `per_second` per subject (a client address), spent
    /// one per refused token, in its own buckets. Refusals are counted in
    /// `metrics.rate_limited` as `invalid_tokens`. 0 turns it off.
    pub(crate) fn for_invalid_tokens(per_second: u32, redis: Arc<RedisLink>, metrics: Metrics) -> RateLimiter {
        let limits = RateLimits { operations_per_second: per_second, mutations_per_second: 0 };
        RateLimiter { operations_label: "invalid_tokens", ..RateLimiter::new(limits, redis, metrics) }
    }

    /// Takes `operations` tokens from the subject's operations bucket and `mutations`
    /// tokens from its mutations bucket, atomically: either both are taken or neither (a
    /// refused mutation does not spend the operations budget).
    ///
    /// A cost above a bucket's burst could never fit, so it is treated as the burst: a
    /// batch of 10 operations under a 5/s limit is allowed when the bucket is full (and
    /// empties it) instead of being refused forever.
    ///
    /// Fails only with [`ApiError::RateLimited`], whose `retry_after_ms` (at least 1) is
    /// when the refused request would fit; Redis trouble never fails a check. Refusals
    /// are counted in `metrics.rate_limited` under the bucket that must wait longer
    /// (`operations` or `mutations`).
    pub(crate) async fn check(&self, subject: &str, operations: u32, mutations: u32) -> Result<(), ApiError> {
        let costs = Costs::clamped(self.limits, operations, mutations);
        if costs.is_free(self.limits) {
            return Ok(());
        }
        let key = SubjectKey::of(subject);
        let outcome = match self.check_in_redis(&key, costs).await {
            Some(outcome) => outcome,
            None => self.check_in_process(key, costs).await,
        };
        match outcome {
            Outcome::Allowed => Ok(()),
            Outcome::Refused { retry_after_ms, bucket } => {
                let label = match bucket {
                    Bucket::Operations => self.operations_label,
                    Bucket::Mutations => bucket.label(),
                };
                self.metrics.rate_limited.with_label_values(&[label]).inc();
                Err(ApiError::RateLimited { retry_after_ms })
            }
        }
    }

    /// The check on the shared Redis buckets; `None` when Redis is not configured or did
    /// not answer (the caller then falls back to the in-process buckets).
    async fn check_in_redis(&self, key: &SubjectKey, costs: Costs) -> Option<Outcome> {
        if !self.redis.is_configured() {
            return None;
        }
        let keys = self.bucket_keys(key);
        let ttl_ms = u64::try_from(IDLE_LIFETIME.as_millis()).unwrap_or(u64::MAX);
        let script = &self.script;
        let limits = self.limits;
        let (retry_after_ms, bucket) = self
            .redis
            .call(|mut conn| async move {
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(limits.operations_per_second)
                    .arg(limits.mutations_per_second)
                    .arg(costs.operations)
                    .arg(costs.mutations)
                    .arg(ttl_ms);
                invocation.invoke_async::<(u64, u64)>(&mut conn).await
            })
            .await?;
        Some(match (retry_after_ms, bucket) {
            (0, _) => Outcome::Allowed,
            (retry_after_ms, 2) => Outcome::Refused { retry_after_ms, bucket: Bucket::Mutations },
            (retry_after_ms, _) => Outcome::Refused { retry_after_ms, bucket: Bucket::Operations },
        })
    }

    /// The Redis keys of a subject's operations and mutations buckets. The braces make
    /// the subject's hash the keys' hash tag: both keys land in one Redis Cluster hash
    /// slot, as a script touching both needs, while different subjects spread over the
    /// cluster.
    fn bucket_keys(&self, key: &SubjectKey) -> [String; 2] {
        let hex = key.hex();
        [self.redis.key(&format!("rl:{{{hex}}}:ops")), self.redis.key(&format!("rl:{{{hex}}}:mut"))]
    }

    /// The check on this process's buckets.
    async fn check_in_process(&self, key: SubjectKey, costs: Costs) -> Outcome {
        let limits = self.limits;
        let now_ms = self.now_ms();
        let entry =
            self.local.get_with(key, async move { Arc::new(Mutex::new(SubjectBuckets::full(limits, now_ms))) }).await;
        // The state is two plain values updated by assignment, so a poisoned lock still
        // holds a consistent state: keep using it. The guard never meets an `.await`.
        let mut buckets = entry.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.take(limits, costs, now_ms)
    }

    /// Milliseconds since this limiter was made, on a monotonic clock.
    fn now_ms(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// A subject as it appears in keys: the first 128 bits of its SHA-256. Fixed-size, so a
/// long subject costs no more memory, and free of `:` or `{`, so no subject can reach
/// another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SubjectKey([u8; 16]);

impl SubjectKey {
    fn of(subject: &str) -> SubjectKey {
        let digest = Sha256::digest(subject.as_bytes());
        let mut key = [0; 16];
        key.copy_from_slice(&digest[..16]);
        SubjectKey(key)
    }

    fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Which bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    Operations,
    Mutations,
}

impl Bucket {
    /// The `bucket` label of `taskwire_rate_limited_total`.
    fn label(self) -> &'static str {
        match self {
            Bucket::Operations => "operations",
            Bucket::Mutations => "mutations",
        }
    }
}

/// The decision of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Refused { retry_after_ms: u64, bucket: Bucket },
}

/// Tokens one check takes from each bucket, each clamped to its bucket's burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Costs {
    operations: u32,
    mutations: u32,
}

impl Costs {
    /// The costs of a request, clamped so that they can always fit a full bucket.
    fn clamped(limits: RateLimits, operations: u32, mutations: u32) -> Costs {
        Costs {
            operations: operations.min(limits.operations_per_second),
            mutations: mutations.min(limits.mutations_per_second),
        }
    }

    /// Whether the request charges no bucket that is on (nothing to check).
    fn is_free(self, limits: RateLimits) -> bool {
        (self.operations == 0 || limits.operations_per_second == 0)
            && (self.mutations == 0 || limits.mutations_per_second == 0)
    }
}

/// A subject's two buckets in this process, on the limiter's clock.
#[derive(Debug, Clone, Copy)]
struct SubjectBuckets {
    operations: RateBucket,
    mutations: RateBucket,
}

impl SubjectBuckets {
    /// Both buckets full.
    fn full(limits: RateLimits, now_ms: i64) -> SubjectBuckets {
        SubjectBuckets {
            operations: RateBucket::full(f64::from(limits.operations_per_second), now_ms),
            mutations: RateBucket::full(f64::from(limits.mutations_per_second), now_ms),
        }
    }

    /// Takes `costs` from both buckets at `now_ms`, or nothing if either cannot pay. The
    /// same rule as [`SCRIPT`]: the retry-after is the longer of the two waits, rounded
    /// up to whole milliseconds, at least 1.
    fn take(&mut self, limits: RateLimits, costs: Costs, now_ms: i64) -> Outcome {
        let (ops_rate, mut_rate) = (limits.operations_per_second, limits.mutations_per_second);
        let operations = charged(self.operations, ops_rate, costs.operations, now_ms);
        let mutations = charged(self.mutations, mut_rate, costs.mutations, now_ms);
        let wait = |bucket: Option<RateBucket>, rate: u32, cost: u32| {
            bucket.map_or(Duration::ZERO, |b| b.until_holding(cost, f64::from(rate)))
        };
        let ops_wait = wait(operations, ops_rate, costs.operations);
        let mut_wait = wait(mutations, mut_rate, costs.mutations);
        if !ops_wait.is_zero() || !mut_wait.is_zero() {
            let (wait, bucket) =
                if mut_wait >= ops_wait { (mut_wait, Bucket::Mutations) } else { (ops_wait, Bucket::Operations) };
            let retry_after_ms = u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1);
            return Outcome::Refused { retry_after_ms, bucket };
        }
        // An uncharged bucket keeps its old state: the next charge refills it from there.
        if let Some(bucket) = operations {
            self.operations = bucket.spent(costs.operations);
        }
        if let Some(bucket) = mutations {
            self.mutations = bucket.spent(costs.mutations);
        }
        Outcome::Allowed
    }
}

/// `bucket` refilled to `now_ms`, when a check charges it: it is on (`rate` above 0) and
/// the check takes tokens from it.
fn charged(bucket: RateBucket, rate: u32, cost: u32, now_ms: i64) -> Option<RateBucket> {
    (rate > 0 && cost > 0).then(|| bucket.refilled(f64::from(rate), now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_link::{
        RedisClient, RedisSettings,
        testing::{self, connected_link},
    };

    const SECOND_MS: i64 = 1_000;

    fn limits(operations_per_second: u32, mutations_per_second: u32) -> RateLimits {
        RateLimits { operations_per_second, mutations_per_second }
    }

    /// Takes at `now_ms` with costs clamped as `check` does.
    fn take(buckets: &mut SubjectBuckets, limits: RateLimits, operations: u32, mutations: u32, now_ms: i64) -> Outcome {
        buckets.take(limits, Costs::clamped(limits, operations, mutations), now_ms)
    }

    fn settings(timeout: Duration) -> RedisSettings {
        RedisSettings {
            timeout,
            cooldown: Duration::from_secs(2),
            key_prefix: format!("taskwire-test-{}", uuid::Uuid::new_v4()),
        }
    }

    fn limiter_without_redis(limits: RateLimits, metrics: &Metrics) -> RateLimiter {
        let link = RedisLink::new(None, settings(Duration::from_millis(250)), metrics.clone());
        RateLimiter::new(limits, Arc::new(link), metrics.clone())
    }

    fn is_rate_limited(result: &Result<(), ApiError>) -> bool {
        matches!(result, Err(ApiError::RateLimited { retry_after_ms }) if *retry_after_ms >= 1)
    }

    #[test]
    fn the_default_limits_are_200_operations_and_50_mutations_per_second() {
        assert_eq!(crate::config::Config::defaults().rate_limits, limits(200, 50));
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_refuses_until_one_token_has_refilled() {
        let limits = limits(4, 0);
        let mut buckets = SubjectBuckets::full(limits, 0);
        for i in 0..4 {
            assert_eq!(take(&mut buckets, limits, 1, 0, 0), Outcome::Allowed, "operation {i} of the burst");
        }
        assert_eq!(
            take(&mut buckets, limits, 1, 0, 0),
            Outcome::Refused { retry_after_ms: 250, bucket: Bucket::Operations },
            "at 4/s the next token comes in 250 ms"
        );
        assert_eq!(
            take(&mut buckets, limits, 1, 0, 100),
            Outcome::Refused { retry_after_ms: 150, bucket: Bucket::Operations },
            "100 ms later, 150 ms are left"
        );
    }

    #[test]
    fn a_bucket_refills_continuously_up_to_its_burst_only() {
        let limits = limits(10, 0);
        let mut buckets = SubjectBuckets::full(limits, 0);
        assert_eq!(take(&mut buckets, limits, 10, 0, 0), Outcome::Allowed, "the burst empties the bucket");
        assert!(matches!(take(&mut buckets, limits, 1, 0, 50), Outcome::Refused { .. }), "half a token after 50 ms");
        assert_eq!(take(&mut buckets, limits, 3, 0, 300), Outcome::Allowed, "three tokens after 300 ms");
        assert!(matches!(take(&mut buckets, limits, 1, 0, 300), Outcome::Refused { .. }), "and no more");

        let mut idle = SubjectBuckets::full(limits, 0);
        assert_eq!(take(&mut idle, limits, 10, 0, 3600 * SECOND_MS), Outcome::Allowed, "an hour idle: full");
        assert_eq!(
            take(&mut idle, limits, 1, 0, 3600 * SECOND_MS),
            Outcome::Refused { retry_after_ms: 100, bucket: Bucket::Operations },
            "an idle bucket holds no more than its burst"
        );
    }

    #[test]
    fn a_refused_mutation_does_not_spend_the_operations_budget() {
        let limits = limits(3, 1);
        let mut buckets = SubjectBuckets::full(limits, 0);
        assert_eq!(take(&mut buckets, limits, 1, 1, 0), Outcome::Allowed, "the one mutation of this second");
        assert_eq!(
            take(&mut buckets, limits, 1, 1, 0),
            Outcome::Refused { retry_after_ms: 1000, bucket: Bucket::Mutations },
            "a second mutation waits a full second"
        );
        assert_eq!(take(&mut buckets, limits, 1, 0, 0), Outcome::Allowed, "the second operation is still there");
        assert_eq!(take(&mut buckets, limits, 1, 0, 0), Outcome::Allowed, "and the third");
        assert!(matches!(take(&mut buckets, limits, 1, 0, 0), Outcome::Refused { bucket: Bucket::Operations, .. }));
    }

    #[test]
    fn a_refusal_reports_the_bucket_that_must_wait_longer() {
        let limits = limits(2, 1);
        let mut buckets = SubjectBuckets::full(limits, 0);
        assert_eq!(take(&mut buckets, limits, 2, 1, 0), Outcome::Allowed);
        assert_eq!(
            take(&mut buckets, limits, 1, 1, 0),
            Outcome::Refused { retry_after_ms: 1000, bucket: Bucket::Mutations },
            "operations are back in 500 ms, mutations in 1000 ms"
        );
    }

    #[test]
    fn a_rate_of_zero_turns_its_bucket_off() {
        let off = limits(0, 0);
        let mut buckets = SubjectBuckets::full(off, 0);
        for i in 0..1000 {
            assert_eq!(take(&mut buckets, off, 5, 5, 0), Outcome::Allowed, "request {i}");
        }
        assert!(Costs::clamped(off, 5, 5).is_free(off), "check skips both stores");

        let only_mutations = limits(0, 1);
        let mut buckets = SubjectBuckets::full(only_mutations, 0);
        assert_eq!(take(&mut buckets, only_mutations, 100, 1, 0), Outcome::Allowed);
        assert!(matches!(
            take(&mut buckets, only_mutations, 1, 1, 0),
            Outcome::Refused { bucket: Bucket::Mutations, .. }
        ));
        assert_eq!(take(&mut buckets, only_mutations, 1, 0, 0), Outcome::Allowed, "queries are not limited");
    }

    #[test]
    fn a_cost_above_the_burst_is_clamped_to_the_burst() {
        let limits = limits(5, 0);
        let mut buckets = SubjectBuckets::full(limits, 0);
        assert_eq!(Costs::clamped(limits, 10, 0).operations, 5);
        assert_eq!(take(&mut buckets, limits, 10, 0, 0), Outcome::Allowed, "a full bucket takes an oversized batch");
        assert_eq!(
            take(&mut buckets, limits, 10, 0, 0),
            Outcome::Refused { retry_after_ms: 1000, bucket: Bucket::Operations },
            "and the next one waits for a full bucket, not forever"
        );
        assert_eq!(take(&mut buckets, limits, 10, 0, SECOND_MS), Outcome::Allowed, "one second later it fits");
    }

    #[test]
    fn a_clock_that_goes_backwards_refills_nothing() {
        let limits = limits(1, 0);
        let mut buckets = SubjectBuckets::full(limits, 10 * SECOND_MS);
        assert_eq!(take(&mut buckets, limits, 1, 0, 10 * SECOND_MS), Outcome::Allowed);
        assert!(matches!(take(&mut buckets, limits, 1, 0, 9 * SECOND_MS), Outcome::Refused { .. }));
    }

    #[test]
    fn subject_keys_are_fixed_size_hex_whatever_the_subject() {
        let tricky = SubjectKey::of("alice}:ops:{bob").hex();
        assert_eq!(tricky.len(), 32);
        assert!(tricky.chars().all(|c| c.is_ascii_hexdigit()), "{tricky}");
        assert_ne!(SubjectKey::of("alice"), SubjectKey::of("alice "), "distinct subjects, distinct keys");
    }

    #[tokio::test]
    async fn the_in_process_limiter_refuses_a_subject_after_its_burst_and_leaves_others_alone() {
        let metrics = Metrics::new();
        let limiter = limiter_without_redis(limits(3, 1), &metrics);
        for i in 0..3 {
            assert!(limiter.check("alice", 1, 0).await.is_ok(), "alice's operation {i}");
        }
        let refused = limiter.check("alice", 1, 0).await;
        assert!(is_rate_limited(&refused), "alice is over her budget: {refused:?}");
        assert!(limiter.check("bob", 1, 0).await.is_ok(), "bob has his own budget");
        assert_eq!(metrics.rate_limited.with_label_values(&["operations"]).get(), 1);
        assert_eq!(metrics.rate_limited.with_label_values(&["mutations"]).get(), 0);

        assert!(limiter.check("bob", 1, 1).await.is_ok(), "bob's mutation");
        assert!(is_rate_limited(&limiter.check("bob", 1, 1).await), "bob's second mutation");
        assert_eq!(metrics.rate_limited.with_label_values(&["mutations"]).get(), 1);
    }

    #[tokio::test]
    async fn a_dead_redis_falls_back_to_in_process_limits_and_never_fails_otherwise() {
        let metrics = Metrics::new();
        // Port 1 on loopback: nothing listens, connections are refused.
        let client = RedisClient::from_url("redis://127.0.0.1:1", Duration::from_millis(200)).expect("valid url");
        let link = RedisLink::new(Some(client), settings(Duration::from_millis(200)), metrics.clone());
        let limiter = RateLimiter::new(limits(1, 1), Arc::new(link), metrics.clone());
        let mut refused = 0;
        for i in 0..20 {
            match limiter.check("alice", 1, 0).await {
                Ok(()) => {}
                Err(ApiError::RateLimited { retry_after_ms }) => {
                    assert!(retry_after_ms >= 1, "request {i}");
                    refused += 1;
                }
                Err(other) => panic!("request {i} failed with {other:?}"),
            }
        }
        assert!(refused > 0, "the in-process buckets still limit");
        assert_eq!(metrics.rate_limited.with_label_values(&["operations"]).get(), refused);
    }

    #[tokio::test]
    async fn the_invalid_token_limiter_counts_its_refusals_under_its_own_label() {
        let metrics = Metrics::new();
        let link = RedisLink::new(None, settings(Duration::from_millis(250)), metrics.clone());
        let limiter = RateLimiter::for_invalid_tokens(2, Arc::new(link), metrics.clone());
        assert!(limiter.check("ip:10.0.0.1", 1, 0).await.is_ok());
        assert!(limiter.check("ip:10.0.0.1", 1, 0).await.is_ok());
        assert!(is_rate_limited(&limiter.check("ip:10.0.0.1", 1, 0).await), "the third refused token in a second");
        assert_eq!(metrics.rate_limited.with_label_values(&["invalid_tokens"]).get(), 1);
        assert_eq!(metrics.rate_limited.with_label_values(&["operations"]).get(), 0);
    }

    #[test]
    fn a_subjects_two_buckets_share_one_cluster_slot_and_subjects_spread() {
        use redis::cluster_routing::Slot;
        let metrics = Metrics::new();
        let limiter = limiter_without_redis(limits(1, 1), &metrics);
        let mut slots = std::collections::HashSet::new();
        for subject in ["alice", "bob", "carol:{x}", "}{", ""] {
            let [ops, mutations] = limiter.bucket_keys(&SubjectKey::of(subject));
            assert_ne!(ops, mutations);
            assert_eq!(Slot::for_key(&ops), Slot::for_key(&mutations), "{subject:?}: {ops} and {mutations}");
            slots.insert(Slot::for_key(&ops));
        }
        assert!(slots.len() > 1, "the subject's hash is the tag, not something all subjects share");
    }

    #[tokio::test]
    async fn two_processes_sharing_a_redis_share_one_budget() {
        for url in testing::test_redis_urls("two_processes_sharing_a_redis_share_one_budget") {
            let prefix = testing::unique_prefix();
            let metrics = Metrics::new();
            // A low rate: a token takes 500 ms to come back, far longer than these checks take.
            let limits = limits(2, 0);
            let first = RateLimiter::new(limits, connected_link(&url, &prefix, &metrics).await, metrics.clone());
            let second = RateLimiter::new(limits, connected_link(&url, &prefix, &metrics).await, metrics.clone());

            let results = [
                first.check("alice", 1, 0).await,
                second.check("alice", 1, 0).await,
                first.check("alice", 1, 0).await,
                second.check("alice", 1, 0).await,
            ];

            assert!(results[0].is_ok() && results[1].is_ok(), "{url}: together they allow the burst: {results:?}");
            assert!(is_rate_limited(&results[2]) && is_rate_limited(&results[3]), "{url}: and no more: {results:?}");
            assert_eq!(metrics.rate_limited.with_label_values(&["operations"]).get(), 2);
            assert!(second.check("bob", 1, 0).await.is_ok(), "{url}: another subject has its own budget");
            assert_eq!(metrics.redis_errors.get(), 0, "{url}: every check ran in Redis, none fell back");
        }
    }

    #[tokio::test]
    async fn the_redis_script_keeps_a_refused_mutation_from_spending_operations_and_expires_its_keys() {
        let test = "the_redis_script_keeps_a_refused_mutation_from_spending_operations_and_expires_its_keys";
        for url in testing::test_redis_urls(test) {
            let prefix = testing::unique_prefix();
            let metrics = Metrics::new();
            let link = connected_link(&url, &prefix, &metrics).await;
            let limiter = RateLimiter::new(limits(2, 1), link.clone(), metrics.clone());

            assert!(limiter.check("carol:{x}", 1, 1).await.is_ok(), "{url}: the one mutation");
            let refused = limiter.check("carol:{x}", 1, 1).await;
            assert!(
                matches!(refused, Err(ApiError::RateLimited { retry_after_ms }) if (1..=1000).contains(&retry_after_ms)),
                "{url}: the second mutation waits at most a second: {refused:?}"
            );
            assert!(limiter.check("carol:{x}", 1, 0).await.is_ok(), "{url}: the operation the mutation did not spend");
            assert!(is_rate_limited(&limiter.check("carol:{x}", 1, 0).await), "{url}: the operations bucket is empty");
            assert_eq!(metrics.rate_limited.with_label_values(&["mutations"]).get(), 1);
            assert_eq!(metrics.rate_limited.with_label_values(&["operations"]).get(), 1);
            assert_eq!(metrics.redis_errors.get(), 0, "{url}: the script ran in Redis (a CROSSSLOT would fall back)");

            // KEYS goes to every primary of a cluster.
            let pattern = format!("{prefix}:rl:*");
            let keys = link
                .call(|mut c| async move { redis::cmd("KEYS").arg(pattern).query_async::<Vec<String>>(&mut c).await })
                .await
                .expect("redis answers");
            assert_eq!(keys.len(), 2, "{url}: one key per bucket: {keys:?}");
            for key in keys {
                assert!(!key.contains("carol"), "{url}: the subject enters keys only hashed: {key}");
                let ttl = link
                    .call(|mut c| async move { redis::cmd("PTTL").arg(key).query_async::<i64>(&mut c).await })
                    .await
                    .expect("redis answers");
                let max = i64::try_from(IDLE_LIFETIME.as_millis()).expect("small");
                assert!((1..=max).contains(&ttl), "{url}: keys expire once the bucket would be full again: {ttl} ms");
            }
        }
    }
}
