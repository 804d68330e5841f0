//! Retention: finished tasks are deleted, with their history, once they are old enough
//! (`TASKWIRE_RETENTION_FINISHED`, `TASKWIRE_RETENTION_DEAD`).
//!
//! Runs in every dispatcher. Each batch is claimed with `SKIP LOCKED` on MySQL/MariaDB
//! (`Store::purge_finished`), so several dispatchers share a backlog without deleting a
//! task twice or waiting for each other.

use std::time::Duration;

use chrono::Utc;
use taskwire_domain::TaskStatus;
use taskwire_store::Store;
use tokio_util::sync::CancellationToken;

use crate::{cache::TaskCache, metrics::Metrics};

/// How long finished tasks are kept; `None` keeps them forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `SUCCEEDED` and `CANCELLED` tasks, from their last change.
    pub finished: Option<Duration>,
    /// `DEAD` tasks (an operator may still `retryTask` or `requeueDeadTasks` them until
    /// then), from their last change.
    pub dead: Option<Duration>,
}

/// Tasks deleted per transaction: small enough that a batch holds the write gate
/// (SQLite) or its row locks (MySQL) for milliseconds, not seconds.
const PURGE_BATCH: u64 = 500;
/// The longest pause between passes.
const MOST_BETWEEN_PASSES: Duration = Duration::from_secs(60);
/// The shortest pause between passes (a retention of seconds, in tests).
const LEAST_BETWEEN_PASSES: Duration = Duration::from_millis(100);

impl Retention {
    /// Each kept status with its retention.
    fn rules(self) -> impl Iterator<Item = (TaskStatus, Duration)> {
        [(TaskStatus::Succeeded, self.finished), (TaskStatus::Cancelled, self.finished), (TaskStatus::Dead, self.dead)]
            .into_iter()
            .filter_map(|(status, keep)| Some((status, keep?)))
    }

    /// The pause between passes: a quarter of the shortest retention, so a task outlives
    /// its retention by at most a quarter of it, and at most a minute.
    fn between_passes(self) -> Option<Duration> {
        let shortest = self.rules().map(|(_, keep)| keep).min()?;
        Some((shortest / 4).clamp(LEAST_BETWEEN_PASSES, MOST_BETWEEN_PASSES))
    }
}

/// Deletes finished tasks past their retention until `shutdown`; returns at once when
/// every status is kept forever.
pub(crate) async fn run_retention(
    store: Store,
    cache: TaskCache,
    retention: Retention,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let Some(pause) = retention.between_passes() else {
        tracing::info!("retention off: finished tasks are kept forever");
        return;
    };
    tracing::info!(
        finished = ?retention.finished,
        dead = ?retention.dead,
        "retention on: finished tasks older than this are deleted with their history"
    );
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
        if let Err(e) = purge(&store, &cache, retention, &metrics, &shutdown).await {
            tracing::warn!(error = ?e, "retention pass failed; retrying on the next pass");
        }
    }
    tracing::info!("retention stopped");
}

/// One pass: every kept status, batch after batch until fewer than a batch is left. The
/// cache forgets each batch's tasks, so a read by id stops answering with a deleted task.
///
/// After each full batch the pass pauses as long as the batch took: a large backlog
/// (retention turned on over months of history) is deleted at half the pace the database
/// could take, leaving it (and on SQLite the one writer) to the live traffic in between.
async fn purge(
    store: &Store,
    cache: &TaskCache,
    retention: Retention,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> crate::error::ApiResult<()> {
    for (status, keep) in retention.rules() {
        let Some(before) = cutoff(keep, Utc::now()) else { continue };
        loop {
            let started = std::time::Instant::now();
            let deleted = store.purge_finished(status, before, PURGE_BATCH).await?;
            cache.forget(&deleted).await;
            let deleted = deleted.len() as u64;
            metrics.tasks_purged.with_label_values(&[status.as_str()]).inc_by(deleted);
            if deleted < PURGE_BATCH {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(started.elapsed()) => {}
            }
        }
    }
    Ok(())
}

/// Tasks whose last change is older than this have outlived `keep`; `None` when `keep`
/// reaches back past the calendar (`9999999999d`): nothing is old enough.
fn cutoff(keep: Duration, now: chrono::DateTime<Utc>) -> Option<chrono::DateTime<Utc>> {
    now.checked_sub_signed(chrono::Duration::from_std(keep).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_past_the_calendar_keeps_everything_instead_of_failing() {
        let now = Utc::now();
        assert_eq!(cutoff(Duration::from_secs(60), now), Some(now - chrono::Duration::seconds(60)));
        assert_eq!(cutoff(Duration::from_secs(9_999_999_999 * 86_400), now), None);
        assert_eq!(cutoff(Duration::MAX, now), None);
    }

    #[test]
    fn passes_come_at_a_quarter_of_the_shortest_retention_within_bounds() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(Retention { finished: None, dead: None }.between_passes(), None, "keep forever: no passes");
        assert_eq!(Retention { finished: secs(8), dead: None }.between_passes(), secs(2));
        assert_eq!(Retention { finished: secs(7 * 86_400), dead: secs(4) }.between_passes(), secs(1));
        assert_eq!(Retention { finished: secs(7 * 86_400), dead: None }.between_passes(), secs(60));
        let tiny = Retention { finished: Some(Duration::from_millis(40)), dead: None };
        assert_eq!(tiny.between_passes(), Some(LEAST_BETWEEN_PASSES));
    }

    #[test]
    fn dead_tasks_have_a_retention_of_their_own() {
        let retention = Retention { finished: None, dead: Some(Duration::from_secs(5)) };
        assert_eq!(retention.rules().collect::<Vec<_>>(), vec![(TaskStatus::Dead, Duration::from_secs(5))]);
        let both = Retention { finished: Some(Duration::from_secs(1)), dead: None };
        let statuses: Vec<_> = both.rules().map(|(s, _)| s).collect();
        assert_eq!(statuses, vec![TaskStatus::Succeeded, TaskStatus::Cancelled]);
    }
}
