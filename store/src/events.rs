//! History reads for subscriptions: replay after a sequence number, resync of a scope,
//! queue statistics.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect, Statement};
use taskwire_domain::{TaskId, TaskStatus, task::TaskEvent};
use taskwire_entity::task_event;

use super::{Store, convert};
use crate::error::StoreResult;

/// Which tasks a multi-task subscription covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventScope {
    /// Only tasks of this creator.
    pub created_by: Option<String>,
    /// Only tasks of this queue.
    pub queue: Option<String>,
}

/// Counts of one queue's tasks by status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// `(status, count)` for every status with at least one task.
    pub counts: Vec<(TaskStatus, u64)>,
    /// `runAt` of the oldest `QUEUED` task.
    pub oldest_queued_run_at: Option<DateTime<Utc>>,
}

#[derive(Debug, FromQueryResult)]
struct ScopedEvent {
    id: i64,
    task_id: String,
    seq: i32,
    status: String,
    previous_status: Option<String>,
    attempt: i32,
    worker_id: Option<String>,
    message: Option<String>,
    at: i64,
}

/// Where one event sits in the history, for the live sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHead {
    /// Row id (the page key, with `at`).
    pub id: i64,
    /// The task.
    pub task_id: String,
    /// The event's `seq`.
    pub seq: u32,
    /// When it happened, in milliseconds since the epoch.
    pub at: i64,
}

#[derive(Debug, FromQueryResult)]
struct HeadRow {
    id: i64,
    task_id: String,
    seq: i32,
    at: i64,
}

#[derive(Debug, FromQueryResult)]
struct StatusCount {
    status: String,
    n: i64,
    oldest: Option<i64>,
}

impl Store {
    /// Events of `task` with `seq > after`, oldest first, at most `limit`.
    pub async fn events_after(&self, task: TaskId, after: u32, limit: u64) -> StoreResult<Vec<TaskEvent>> {
        let rows = task_event::Entity::find()
            .filter(task_event::Column::TaskId.eq(task.to_string()))
            .filter(task_event::Column::Seq.gt(after as i32))
            .order_by_asc(task_event::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(convert::event_from_row).collect()
    }

    /// Which events happened in `[from, until)`, in `(at, id)` order after the page key
    /// `after`, at most `limit`.
    pub async fn event_heads(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        after: Option<(i64, i64)>,
        limit: u64,
    ) -> StoreResult<Vec<EventHead>> {
        let (from, until) = (convert::to_ms(from), convert::to_ms(until));
        let (after_at, after_id) = after.unwrap_or((from, i64::MIN));
        let sql = "SELECT id, task_id, seq, `at` FROM task_events \
                   WHERE `at` >= ? AND `at` < ? AND (`at` > ? OR id > ?) ORDER BY `at`, id LIMIT ?";
        let values: Vec<sea_orm::Value> =
            vec![after_at.max(from).into(), until.into(), after_at.into(), after_id.into(), (limit as i64).into()];
        let rows = HeadRow::find_by_statement(Statement::from_sql_and_values(self.backend(), sql, values))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| EventHead { id: r.id, task_id: r.task_id, seq: r.seq.max(0) as u32, at: r.at })
            .collect())
    }

    /// Events of tasks in `scope` that happened at or after `since`, in time order, at
    /// most `limit` (a full page means the caller is too far behind to resync).
    pub async fn events_in_scope_since(
        &self,
        scope: &EventScope,
        since: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<TaskEvent>> {
        let mut sql = String::from(
            "SELECT e.id, e.task_id, e.seq, e.status, e.previous_status, e.attempt, e.worker_id, e.message, e.`at` \
             FROM task_events e JOIN tasks t ON t.id = e.task_id WHERE e.`at` >= ?",
        );
        let mut values: Vec<sea_orm::Value> = vec![convert::to_ms(since).into()];
        if let Some(creator) = &scope.created_by {
            sql.push_str(" AND t.created_by = ?");
            values.push(creator.clone().into());
        }
        if let Some(queue) = &scope.queue {
            sql.push_str(" AND t.queue = ?");
            values.push(queue.clone().into());
        }
        sql.push_str(" ORDER BY e.`at`, e.id LIMIT ?");
        values.push((limit as i64).into());
        let rows = ScopedEvent::find_by_statement(Statement::from_sql_and_values(self.backend(), sql, values))
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|r| {
                convert::event_from_row(task_event::Model {
                    id: r.id,
                    task_id: r.task_id,
                    seq: r.seq,
                    status: r.status,
                    previous_status: r.previous_status,
                    attempt: r.attempt,
                    worker_id: r.worker_id,
                    message: r.message,
                    at: r.at,
                })
            })
            .collect()
    }

    /// The statuses [`Store::status_counts`] counts: every unfinished one, and `DEAD` (the
    /// dead letters waiting for an operator). `SUCCEEDED` and `CANCELLED` are left out: they
    /// are nearly every row, so counting them would read the whole table each time; their
    /// rate is `task_transitions_total` instead.
    pub const COUNTED_STATUSES: [TaskStatus; 5] =
        [TaskStatus::Scheduled, TaskStatus::Queued, TaskStatus::Assigned, TaskStatus::Running, TaskStatus::Dead];

    /// Task counts of the [`Store::COUNTED_STATUSES`] (for the `tasks` gauge), through the
    /// status index: the cost follows the backlog, not the table.
    pub async fn status_counts(&self) -> StoreResult<Vec<(TaskStatus, u64)>> {
        let statuses = Store::COUNTED_STATUSES.map(|s| format!("'{}'", s.as_str())).join(", ");
        let sql = format!(
            "SELECT status, COUNT(*) AS n, NULL AS oldest FROM tasks WHERE status IN ({statuses}) GROUP BY status"
        );
        let rows = StatusCount::find_by_statement(Statement::from_string(self.backend(), sql)).all(&self.db).await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| Some((row.status.parse::<TaskStatus>().ok()?, u64::try_from(row.n).unwrap_or_default())))
            .collect())
    }

    /// Task counts of `queue` by status, and the oldest queued task's `runAt`.
    pub async fn queue_stats(&self, queue: &str) -> StoreResult<QueueStats> {
        let sql = "SELECT status, COUNT(*) AS n, MIN(run_at) AS oldest FROM tasks WHERE queue = ? GROUP BY status";
        let rows = StatusCount::find_by_statement(Statement::from_sql_and_values(self.backend(), sql, [queue.into()]))
            .all(&self.db)
            .await?;
        let mut stats = QueueStats::default();
        for row in rows {
            let Ok(status) = row.status.parse::<TaskStatus>() else { continue };
            if status == TaskStatus::Queued {
                stats.oldest_queued_run_at = row.oldest.map(convert::from_ms);
            }
            stats.counts.push((status, u64::try_from(row.n).unwrap_or_default()));
        }
        stats.counts.sort();
        Ok(stats)
    }
}
