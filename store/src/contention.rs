//! Lock conflicts on MySQL/MariaDB: deadlocks (1213) and lock-wait time-outs (1205).
//!
//! InnoDB breaks a deadlock by rolling one transaction back, and several dispatcher
//! processes writing the same task and worker rows meet some however carefully the lock
//! order is kept (a create's unique-index check, a sweep against a batch). Such an error
//! says nothing about the database's health: the transaction is simply run again, after a
//! short random pause so that the two sides do not meet again in step. Every retry is
//! counted in `db_lock_conflicts_total{path, outcome="retried"}`; a writer that loses on
//! every attempt answers `CONFLICT` (never `UNAVAILABLE`), counted as `exhausted`.

use std::{future::Future, time::Duration};

use rand::Rng;

use super::Store;
use crate::error::{StoreError, StoreResult};

/// Attempts a writer makes in all before it gives up on a lock conflict.
pub(crate) const LOCK_CONFLICT_ATTEMPTS: u32 = 6;
/// The pause before retry `n` is random in `[0, BACKOFF_STEP × 2^n)`, capped at
/// [`BACKOFF_CAP`]: long enough for the winner to commit, short next to a request.
const BACKOFF_STEP: Duration = Duration::from_millis(2);
const BACKOFF_CAP: Duration = Duration::from_millis(50);

/// Which writer met a conflict (the `path` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictPath {
    /// A matcher round's offers.
    Offer,
    /// Workers' and clients' transitions (accept, complete, cancel, ...).
    Transition,
    /// The reaper's and scheduler's sweeps.
    Sweep,
    /// Worker registration, liveness and heartbeats.
    Worker,
    /// Retention deleting finished tasks.
    Purge,
}

/// `outcome` of a conflict that was run again.
const RETRIED: &str = "retried";
/// `outcome` of a conflict met on every attempt (the caller got it).
const EXHAUSTED: &str = "exhausted";
/// Every `outcome` label value of `db_lock_conflicts_total`.
pub(crate) const OUTCOMES: [&str; 2] = [RETRIED, EXHAUSTED];

impl ConflictPath {
    /// Every path, for series that must exist before the first conflict.
    pub(crate) const ALL: [ConflictPath; 5] =
        [ConflictPath::Offer, ConflictPath::Transition, ConflictPath::Sweep, ConflictPath::Worker, ConflictPath::Purge];

    pub(crate) fn label(self) -> &'static str {
        match self {
            ConflictPath::Offer => "offer",
            ConflictPath::Transition => "transition",
            ConflictPath::Sweep => "sweep",
            ConflictPath::Worker => "worker",
            ConflictPath::Purge => "purge",
        }
    }
}

/// The pause before retry number `retry` (1 for the first retry).
fn backoff(retry: u32) -> Duration {
    let ceiling = BACKOFF_STEP.saturating_mul(1 << retry.min(16)).min(BACKOFF_CAP);
    let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX).max(1);
    Duration::from_micros(rand::rng().random_range(0..micros))
}

impl Store {
    /// Runs `attempt` until it returns anything but a lock conflict, at most
    /// [`LOCK_CONFLICT_ATTEMPTS`] times, pausing a random, growing moment in between.
    /// `attempt` must be a whole transaction (re-reading what it decides on): InnoDB
    /// rolled the losing one back entirely.
    pub(crate) async fn retry_lock_conflicts<T, F, Fut>(&self, path: ConflictPath, mut attempt: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let mut retry = 0;
        loop {
            match attempt().await {
                Err(StoreError::LockConflict) if retry + 1 < LOCK_CONFLICT_ATTEMPTS => {
                    retry += 1;
                    self.count_lock_conflict(path, RETRIED);
                    tokio::time::sleep(backoff(retry)).await;
                }
                Err(StoreError::LockConflict) => {
                    self.count_lock_conflict(path, EXHAUSTED);
                    tracing::warn!(
                        path = path.label(),
                        attempts = LOCK_CONFLICT_ATTEMPTS,
                        "lock conflicts on every attempt"
                    );
                    return Err(StoreError::LockConflict);
                }
                other => return other,
            }
        }
    }

    fn count_lock_conflict(&self, path: ConflictPath, outcome: &str) {
        if let Some(metrics) = self.metrics.get() {
            metrics.db_lock_conflicts.with_label_values(&[path.label(), outcome]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::metrics::TestMetrics;

    #[test]
    fn pauses_are_random_below_a_growing_capped_ceiling() {
        for retry in 1..20 {
            let ceiling = BACKOFF_STEP.saturating_mul(1 << retry.min(16)).min(BACKOFF_CAP);
            for _ in 0..50 {
                assert!(backoff(retry) < ceiling.max(Duration::from_micros(1)));
            }
        }
        let distinct: std::collections::HashSet<Duration> = (0..50).map(|_| backoff(4)).collect();
        assert!(distinct.len() > 1, "jitter: the pauses differ");
    }

    #[tokio::test]
    async fn a_lock_conflict_is_retried_and_counted_until_it_passes_or_the_attempts_run_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::testing::test_store(dir.path()).await;
        let metrics = TestMetrics::new();
        store.observe(metrics.store.clone());
        let count = |outcome: &str| metrics.store.db_lock_conflicts.with_label_values(&["offer", outcome]).get();

        let calls = AtomicU32::new(0);
        let passed = store
            .retry_lock_conflicts(ConflictPath::Offer, || async {
                if calls.fetch_add(1, Ordering::Relaxed) < 2 { Err(StoreError::LockConflict) } else { Ok(7) }
            })
            .await;
        assert!(matches!(passed, Ok(7)), "{passed:?}");
        assert_eq!((calls.load(Ordering::Relaxed), count("retried"), count("exhausted")), (3, 2, 0));

        calls.store(0, Ordering::Relaxed);
        let lost = store
            .retry_lock_conflicts(ConflictPath::Offer, || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(StoreError::LockConflict)
            })
            .await;
        assert!(matches!(lost, Err(StoreError::LockConflict)));
        assert_eq!(
            lost.err().map(|e| e.code()),
            Some(taskwire_domain::ErrorCode::Conflict),
            "CONFLICT, not UNAVAILABLE"
        );
        assert_eq!(calls.load(Ordering::Relaxed), LOCK_CONFLICT_ATTEMPTS);
        assert_eq!(count("exhausted"), 1);

        calls.store(0, Ordering::Relaxed);
        let other = store
            .retry_lock_conflicts(ConflictPath::Offer, || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(StoreError::Unavailable)
            })
            .await;
        assert!(matches!(other, Err(StoreError::Unavailable)));
        assert_eq!(calls.load(Ordering::Relaxed), 1, "other errors are not retried");
    }

    #[test]
    fn every_path_and_outcome_is_exported_at_zero_from_the_start() {
        let labels = ConflictPath::ALL.map(ConflictPath::label);
        assert_eq!(labels, ["offer", "transition", "sweep", "worker", "purge"], "ALL names every path, in order");
        let text = TestMetrics::new().render();
        for path in labels {
            for outcome in OUTCOMES {
                let series = format!("taskwire_db_lock_conflicts_total{{outcome=\"{outcome}\",path=\"{path}\"}} 0");
                assert!(text.contains(&series), "{series} in {text}");
            }
        }
    }
}
