//! The reaper and the scheduler: time-driven transitions.
//!
//! Both claim due tasks with `Store::sweep` (`FOR UPDATE SKIP LOCKED` on MySQL/MariaDB),
//! so several dispatcher processes share the work without double claims.

use std::time::Duration;

use chrono::{DateTime, Utc};
use taskwire_domain::{QueueSettings, machine::Command, task::Task};
use tokio_util::sync::CancellationToken;

use super::DispatchSettings;
use crate::metrics::Metrics;
use taskwire_store::{Due, Store};

/// Tasks claimed per sweep transaction.
const SWEEP_BATCH: u64 = 200;
/// The scheduler looks for due tasks at least this often (its promise: within 100 ms
/// of `runAt`).
const SCHEDULER_POLL: Duration = Duration::from_millis(50);

/// When a failed attempt of `task` would run again: now plus the queue's backoff.
fn retry_at(task: &Task, queue: &QueueSettings, now: DateTime<Utc>) -> DateTime<Utc> {
    let delay = queue.retry.delay(task.attempts.max(1), &mut rand::rng());
    now + chrono::Duration::from_std(delay).unwrap_or_default()
}

/// Runs the reaper every `settings.reaper_interval` until `shutdown`.
pub(crate) async fn run_reaper(
    store: Store,
    settings: DispatchSettings,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(settings.reaper_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if let Err(e) = reap(&store, &settings, &metrics).await {
            tracing::warn!(error = ?e, "reaper pass failed; retrying on the next tick");
        }
    }
    tracing::info!("reaper stopped");
}

/// One reaper pass: stale workers go offline, then every kind of lapsed claim is
/// reclaimed.
async fn reap(store: &Store, settings: &DispatchSettings, metrics: &Metrics) -> crate::error::ApiResult<()> {
    let now = Utc::now();
    let expired = store.expire_workers(now - settings.worker_ttl).await?;
    if expired > 0 {
        metrics.workers_expired.inc_by(expired);
        tracing::info!(workers = expired, "workers went offline (no subscription or heartbeat within the TTL)");
    }
    let passes: [(Due, &str); 4] = [
        (Due::ExpiredOffers, "offer_expired"),
        (Due::ExpiredLeases, "lease_expired"),
        (Due::PastDeadline, "deadline"),
        (Due::HeldByOfflineWorkers, "worker_offline"),
    ];
    for (due, reason) in passes {
        loop {
            let changed = store
                .sweep(due.clone(), now, SWEEP_BATCH, |task, queue| match due {
                    Due::ExpiredOffers => Command::ExpireOffer,
                    Due::ExpiredLeases => Command::ExpireLease { retry_at: retry_at(task, queue, now) },
                    Due::PastDeadline => Command::ExpireDeadline,
                    Due::HeldByOfflineWorkers | Due::Scheduled => {
                        Command::Reclaim { retry_at: retry_at(task, queue, now) }
                    }
                })
                .await?;
            metrics.reaped.with_label_values(&[reason]).inc_by(changed.len() as u64);
            if (changed.len() as u64) < SWEEP_BATCH {
                break;
            }
        }
    }
    Ok(())
}

/// Promotes due `SCHEDULED` tasks to `QUEUED` until `shutdown`, sleeping until the next
/// `runAt` but never longer than the poll interval (tasks scheduled by other processes
/// are noticed within it).
pub(crate) async fn run_scheduler(store: Store, metrics: Metrics, shutdown: CancellationToken) {
    loop {
        let wait = match promote_due(&store, &metrics).await {
            Ok(Some(next)) => (next - Utc::now()).to_std().unwrap_or_default().min(SCHEDULER_POLL),
            Ok(None) => SCHEDULER_POLL,
            Err(e) => {
                tracing::warn!(error = ?e, "scheduler pass failed; retrying");
                Duration::from_millis(500)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("scheduler stopped");
}

/// Promotes every due task; returns the next `runAt` still ahead.
async fn promote_due(store: &Store, metrics: &Metrics) -> crate::error::ApiResult<Option<DateTime<Utc>>> {
    // One indexed read per poll while nothing is due (the usual case), in every process.
    let next = store.next_scheduled_run_at().await?;
    if next.is_none_or(|at| at > Utc::now()) {
        return Ok(next);
    }
    loop {
        let now = Utc::now();
        let promoted = store.sweep(Due::Scheduled, now, SWEEP_BATCH, |_, _| Command::Promote).await?;
        metrics.reaped.with_label_values(&["promoted"]).inc_by(promoted.len() as u64);
        if (promoted.len() as u64) < SWEEP_BATCH {
            break;
        }
    }
    Ok(store.next_scheduled_run_at().await?)
}

/// How often the `tasks{status}` gauge is refreshed.
const STATUS_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// Refreshes the `tasks{status}` gauge from the database until `shutdown`: at once, then
/// every 15 s. One `GROUP BY` over the status index per round, counting the unfinished
/// and dead tasks only (`Store::COUNTED_STATUSES`); runs with the dispatcher.
pub(crate) async fn run_status_sampler(store: Store, metrics: Metrics, shutdown: CancellationToken) {
    loop {
        let pause = match store.status_counts().await {
            Ok(counts) => {
                for status in Store::COUNTED_STATUSES {
                    let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
                    metrics
                        .tasks_by_status
                        .with_label_values(&[status.as_str()])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                STATUS_SAMPLE_INTERVAL
            }
            Err(e) => {
                // Soon again: until a round succeeds, the gauges are missing or stale.
                tracing::warn!(error = ?e, "task status sample failed; retrying in 1 s");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
