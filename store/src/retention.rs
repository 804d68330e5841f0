//! Retention: finished tasks are deleted, with their history, once they are old enough.
//!
//! Without it `tasks` and `task_events` grow with every task ever created, and so do the
//! indexes every transition updates. A task is old enough when it has been in its
//! finished status longer than the retention its caller chose; the task and its events go
//! in one transaction, so a task is never left without its history or the other way round.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{LockBehavior, LockType},
};
use taskwire_domain::{TaskId, TaskStatus};
use taskwire_entity::{task, task_event};

use super::{ConflictPath, Store, Writer, convert, shape};
use crate::error::StoreResult;

impl Store {
    /// Deletes up to `limit` tasks that are `status` (a finished one) and have not
    /// changed since before `before`, with their events, in one transaction; returns the
    /// ids of the tasks deleted.
    ///
    /// The tasks are found through `(status, run_at)`, the index the reaper and scheduler
    /// already keep, instead of a new index on `updated_at` that every transition would
    /// have to update: `run_at < before` bounds the range and `updated_at < before`
    /// decides. A task that ran to the end is never stamped later than its `run_at`, so it
    /// goes once its last change is old enough; tasks that ran past `before` after a
    /// `run_at` before it (a long lease) are read and skipped until then. A task
    /// cancelled while `SCHEDULED` keeps the `run_at` it was waiting for, which may lie
    /// ahead (up to 30 days, or a retry's backoff): it goes once that is old enough too.
    ///
    /// On MySQL/MariaDB the rows are claimed with `FOR UPDATE SKIP LOCKED`, so several
    /// dispatchers purge side by side and an operator's concurrent `retryTask` either
    /// waits for the purge (and then finds no task) or holds its row and is skipped. On
    /// SQLite the write gate serialises the purge with every other writer.
    pub async fn purge_finished(
        &self,
        status: TaskStatus,
        before: DateTime<Utc>,
        limit: u64,
    ) -> StoreResult<Vec<TaskId>> {
        debug_assert!(status.is_terminal(), "only finished tasks are purged");
        self.retry_lock_conflicts(ConflictPath::Purge, || self.purge_once(status, before, limit)).await
    }

    async fn purge_once(&self, status: TaskStatus, before: DateTime<Utc>, limit: u64) -> StoreResult<Vec<TaskId>> {
        let before_ms = convert::to_ms(before);
        // Nearly every pass finds nothing new: a plain read says so without a transaction
        // or (on SQLite) the write gate.
        let probe = finished_before(status, before_ms).limit(1);
        if probe.into_tuple::<String>().one(&self.db).await?.is_none() {
            return Ok(vec![]);
        }
        let writing = self.write_lock(Writer::Purge).await;
        let txn = writing.begin_read_committed().await?;
        let select = finished_before(status, before_ms).order_by_asc(task::Column::RunAt).limit(limit);
        let ids: Vec<String> = if self.backend() == DbBackend::MySql {
            select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked).into_tuple().all(&txn).await?
        } else {
            select.into_tuple().all(&txn).await?
        };
        if ids.is_empty() {
            txn.rollback().await?;
            return Ok(vec![]);
        }
        let padded = shape::padded(ids.iter().cloned());
        task_event::Entity::delete_many().filter(task_event::Column::TaskId.is_in(padded.clone())).exec(&txn).await?;
        // The rows are locked (MySQL) or the gate is held (SQLite): every one claimed is
        // deleted.
        task::Entity::delete_many()
            .filter(task::Column::Id.is_in(padded))
            .filter(task::Column::Status.eq(status.as_str()))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(ids.iter().filter_map(|id| TaskId::parse(id)).collect())
    }
}

/// The ids of tasks that are `status` and have not changed since `before_ms`, through
/// `(status, run_at)` (see [`Store::purge_finished`]).
fn finished_before(status: TaskStatus, before_ms: i64) -> sea_orm::Select<task::Entity> {
    task::Entity::find()
        .select_only()
        .column(task::Column::Id)
        .filter(task::Column::Status.eq(status.as_str()))
        .filter(task::Column::RunAt.lt(before_ms))
        .filter(task::Column::UpdatedAt.lt(before_ms))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use taskwire_domain::{CreateTaskInput, NewTask, machine, task::Task};

    use super::*;
    use crate::{CreateMode, CreateOutcome};

    async fn created(store: &Store) -> Task {
        let input = CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
        let new = NewTask::parse(input, "alice", Utc::now()).expect("valid input");
        match store.create_tasks(vec![new], CreateMode::AllOrNothing, None).await.expect("created").pop() {
            Some(CreateOutcome::Created(task)) => task,
            other => panic!("created, not {other:?}"),
        }
    }

    async fn cancelled(store: &Store) -> TaskId {
        let task = created(store).await;
        let cancel = |t: &Task| Ok(machine::transition(t, machine::Command::Cancel { reason: None }, Utc::now())?);
        store.transition(task.id, None, cancel).await.expect("cancelled");
        task.id
    }

    async fn exists(store: &Store, id: TaskId) -> bool {
        !store.tasks_by_ids(&[id]).await.expect("read").is_empty()
    }

    async fn history(store: &Store, id: TaskId) -> usize {
        store.events_after(id, 0, 10).await.expect("events").len()
    }

    /// Only tasks of the given finished status whose last change is older than the
    /// cutoff go, each with its whole history, a batch at a time; newer and unfinished
    /// tasks stay.
    async fn purges_finished_tasks_older_than_the_cutoff_with_their_history(store: &Store) {
        let old = [cancelled(store).await, cancelled(store).await, cancelled(store).await];
        let queued = created(store).await.id;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cutoff = Utc::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let young = cancelled(store).await;

        let purge = |status, limit| store.purge_finished(status, cutoff, limit);
        assert_eq!(purge(TaskStatus::Dead, 100).await.expect("purge"), vec![], "another status");
        let mut purged = purge(TaskStatus::Cancelled, 2).await.expect("purge");
        assert_eq!(purged.len(), 2, "one batch");
        purged.extend(purge(TaskStatus::Cancelled, 2).await.expect("purge"));
        purged.sort();
        let mut expected = old.to_vec();
        expected.sort();
        assert_eq!(purged, expected, "the rest, and the ids of all three");
        assert_eq!(purge(TaskStatus::Cancelled, 2).await.expect("purge"), vec![], "none left");
        for id in old {
            assert!(!exists(store, id).await, "the old cancelled task is gone");
            assert_eq!(history(store, id).await, 0, "and so is its history");
        }
        assert!(exists(store, young).await, "a task finished after the cutoff stays");
        assert_eq!(history(store, young).await, 2, "with its history");
        assert!(exists(store, queued).await, "an unfinished task stays, however old");
    }

    /// MariaDB reads a purge batch through `(status, run_at)`, the index the design relies
    /// on instead of one on `updated_at`, and stops at the batch: a range, not a scan of
    /// every finished task.
    #[tokio::test]
    async fn mysql_finds_a_purge_batch_through_the_status_and_run_at_index() {
        use sea_orm::{ConnectionTrait, QueryTrait, Statement};
        let test = "mysql_finds_a_purge_batch_through_the_status_and_run_at_index";
        let Some(store) = crate::testing::mysql_test_store(test).await else { return };
        // 400 tasks, a tenth of them cancelled long ago.
        let rows: Vec<String> = (0..400)
            .map(|i| {
                let status = if i % 10 == 0 { "CANCELLED" } else { "QUEUED" };
                format!("('t{i:04}', 'q', 'k', 0, '{status}', 0, 5, {i}, 'alice', 'h', 1, 1, {i}, {i})")
            })
            .collect();
        let insert = format!(
            "INSERT INTO tasks (id, queue, kind, priority, status, attempts, max_attempts, run_at, created_by, \
             input_hash, version, last_seq, created_at, updated_at) VALUES {}",
            rows.join(", ")
        );
        store.connection().execute_unprepared(&insert).await.expect("tasks");
        store.connection().execute_unprepared("ANALYZE TABLE tasks").await.expect("statistics");
        let query = finished_before(TaskStatus::Cancelled, 1_000)
            .order_by_asc(task::Column::RunAt)
            .limit(500)
            .build(DbBackend::MySql);
        let explain = Statement::from_sql_and_values(
            DbBackend::MySql,
            format!("EXPLAIN {}", query.sql),
            query.values.map(|v| v.0).unwrap_or_default(),
        );
        let plan = store.connection().query_one_raw(explain).await.expect("explain").expect("a plan row");
        let key: Option<String> = plan.try_get("", "key").expect("the key column");
        let access: String = plan.try_get("", "type").expect("the type column");
        assert_eq!(key.as_deref(), Some("idx_tasks_status_run_at"), "{}", query.sql);
        assert_eq!(access, "range", "the cancelled tasks before the cutoff, in run_at order");
        store.purge_finished(TaskStatus::Cancelled, convert::from_ms(1_000), 500).await.expect("purge");
        let count = "SELECT COUNT(*) AS n FROM tasks GROUP BY status ORDER BY status";
        let left =
            store.connection().query_all_raw(Statement::from_string(DbBackend::MySql, count)).await.expect("count");
        let left: Vec<i64> = left.iter().map(|row| row.try_get("", "n").expect("a count")).collect();
        assert_eq!(left, vec![360], "the 40 cancelled tasks are gone, the queued ones stay");
    }

    on_both_backends!(
        purges_finished_tasks_older_than_the_cutoff_with_their_history,
        purges_finished_tasks_older_than_the_cutoff_with_their_history_on_sqlite,
        purges_finished_tasks_older_than_the_cutoff_with_their_history_on_mysql
    );
}
