//! Workers and queues: registration, liveness, drain, queue settings.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr,
    sea_query::{CaseStatement, Expr, ExprTrait, SimpleExpr},
};
use taskwire_domain::{
    MaxAttempts, QueueName, QueueSettings, RetryPolicy, TaskId, WorkerRegistration, WorkerStatus,
    queue::DEFAULT_LEASE_SECONDS,
};
use taskwire_entity::{queue, task, worker};

use super::{Store, WorkerRecord, Writer, convert, shape};
use crate::error::{StoreError, StoreResult};

/// Which of its running tasks a heartbeat keeps leased.
#[derive(Debug, Clone, Copy)]
pub enum Leases<'a> {
    /// Every one (the legacy `heartbeat` without `tasks`): a task the worker forgot stays
    /// leased for as long as the worker heartbeats.
    All,
    /// Only these; the leases of the worker's other tasks run out and the reaper reclaims
    /// those tasks, while the worker stays `ONLINE`.
    Named(&'a [TaskId]),
}

impl Store {
    /// Registers (or re-registers) worker `id`. A worker an admin drained stays
    /// `DRAINING`; any other comes back `ONLINE`. Its active count is kept.
    pub async fn register_worker(&self, id: &str, registration: &WorkerRegistration) -> StoreResult<WorkerRecord> {
        self.retry_lock_conflicts(super::ConflictPath::Worker, || self.register_worker_once(id, registration)).await
    }

    async fn register_worker_once(&self, id: &str, registration: &WorkerRegistration) -> StoreResult<WorkerRecord> {
        let now = convert::to_ms(Utc::now());
        let queues = serde_json::to_string(&registration.queues.iter().map(QueueName::as_str).collect::<Vec<_>>())
            .map_err(|e| StoreError::internal("serialising queues", &e))?;
        let writing = self.write_lock(Writer::Worker).await;
        for _ in 0..3 {
            let existing = worker::Entity::find_by_id(id.to_owned()).one(writing.db()).await?;
            let result = match existing {
                Some(row) => {
                    let status = if row.status == WorkerStatus::Draining.as_str() {
                        WorkerStatus::Draining
                    } else {
                        WorkerStatus::Online
                    };
                    let mut active: worker::ActiveModel = row.clone().into();
                    active.name = Set(registration.name.clone());
                    active.queues = Set(queues.clone());
                    active.capacity = Set(registration.capacity as i32);
                    active.auto_accept = Set(registration.auto_accept);
                    active.status = Set(status.as_str().to_owned());
                    active.last_seen_at = Set(now);
                    active.version = Set(row.version + 1);
                    active.updated_at = Set(now);
                    active.update(writing.db()).await
                }
                None => {
                    worker::ActiveModel {
                        id: Set(id.to_owned()),
                        name: Set(registration.name.clone()),
                        queues: Set(queues.clone()),
                        capacity: Set(registration.capacity as i32),
                        active: Set(0),
                        status: Set(WorkerStatus::Online.as_str().to_owned()),
                        last_seen_at: Set(now),
                        connected_to: Set(None),
                        auto_accept: Set(registration.auto_accept),
                        version: Set(1),
                        created_at: Set(now),
                        updated_at: Set(now),
                    }
                    .insert(writing.db())
                    .await
                }
            };
            match result {
                Ok(row) => {
                    self.roster.changed();
                    self.dispatch_signal.notify_one();
                    return convert::worker_from_row(row);
                }
                // Registered concurrently by another request: update instead.
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict("the worker registration changed concurrently; retry".into()))
    }

    /// Records a heartbeat of worker `id` (an `OFFLINE` worker comes back `ONLINE`) and
    /// extends the leases of its running tasks that `leases` names by their queue's lease
    /// length.
    pub async fn heartbeat(&self, id: &str, leases: Leases<'_>) -> StoreResult<WorkerRecord> {
        Ok(self.beat(id, leases, false).await?.0)
    }

    /// [`Store::heartbeat`] naming `tasks`, and which of them the worker still holds: the
    /// new lease end of every named task whose lease was extended. A task missing from
    /// the answer is not the worker's any more (finished, reclaimed, or its lease lapsed).
    pub async fn renew_leases(
        &self,
        id: &str,
        tasks: &[TaskId],
    ) -> StoreResult<(WorkerRecord, HashMap<TaskId, chrono::DateTime<Utc>>)> {
        let (record, renewed) = self.beat(id, Leases::Named(tasks), true).await?;
        Ok((record, renewed.unwrap_or_default()))
    }

    /// The heartbeat; with `report`, also reads back which named leases it extended. A
    /// lock conflict runs it again (see `contention`).
    async fn beat(
        &self,
        id: &str,
        leases: Leases<'_>,
        report: bool,
    ) -> StoreResult<(WorkerRecord, Option<HashMap<TaskId, chrono::DateTime<Utc>>>)> {
        self.retry_lock_conflicts(super::ConflictPath::Worker, || self.beat_once(id, leases, report)).await
    }

    async fn beat_once(
        &self,
        id: &str,
        leases: Leases<'_>,
        report: bool,
    ) -> StoreResult<(WorkerRecord, Option<HashMap<TaskId, chrono::DateTime<Utc>>>)> {
        let now = Utc::now();
        let writing = self.write_lock(Writer::Worker).await;
        let row =
            worker::Entity::find_by_id(id.to_owned()).one(writing.db()).await?.ok_or(StoreError::NotFound("worker"))?;
        let came_back = row.status == WorkerStatus::Offline.as_str();
        let mut active: worker::ActiveModel = row.clone().into();
        if came_back {
            active.status = Set(WorkerStatus::Online.as_str().to_owned());
        }
        active.last_seen_at = Set(convert::to_ms(now));
        active.updated_at = Set(convert::to_ms(now));
        let row = active.update(writing.db()).await?;
        let record = convert::worker_from_row(row)?;
        if came_back {
            self.roster.changed();
            self.dispatch_signal.notify_one();
        }
        if matches!(leases, Leases::Named(tasks) if tasks.is_empty()) {
            return Ok((record, report.then(HashMap::new)));
        }
        // READ COMMITTED on MySQL: the range update takes no gap locks, so it cannot
        // deadlock with transitions that move tasks in and out of this worker's range.
        let txn = writing.begin_read_committed().await?;
        let settings = self.settings.get_many(&txn, record.queues.iter().map(String::as_str)).await?;
        // Leases are extended in place: the lease token (not the row version) is what
        // fences a worker, and extending a lease changes no visible state. A lease that
        // already lapsed stays lapsed: the reaper counts it as a failed attempt.
        let until: BTreeMap<String, i64> =
            settings.into_iter().map(|(queue, settings)| (queue, convert::to_ms(now + settings.lease()))).collect();
        let renewed = match leases {
            Leases::All => {
                for (queue, until) in &until {
                    extend_leases(id, queue, now, convert::from_ms(*until)).exec(&txn).await?;
                }
                None
            }
            Leases::Named(tasks) => {
                let named = NamedLeases::new(id, tasks, &until, now);
                if let Some(update) = named.update() {
                    update.exec(&txn).await?;
                }
                if report { Some(named.held(&txn).await?) } else { None }
            }
        };
        txn.commit().await?;
        Ok((record, renewed))
    }

    /// Marks worker `id` draining: no new offers, running tasks finish.
    pub async fn drain_worker(&self, id: &str) -> StoreResult<WorkerRecord> {
        let writing = self.write_lock(Writer::Worker).await;
        let row =
            worker::Entity::find_by_id(id.to_owned()).one(writing.db()).await?.ok_or(StoreError::NotFound("worker"))?;
        let mut active: worker::ActiveModel = row.clone().into();
        active.status = Set(WorkerStatus::Draining.as_str().to_owned());
        active.version = Set(row.version + 1);
        active.updated_at = Set(convert::to_ms(Utc::now()));
        let row = active.update(writing.db()).await?;
        self.roster.changed();
        convert::worker_from_row(row)
    }

    /// Workers, optionally only those serving `queue` and/or in `status`, by id.
    pub async fn workers(&self, queue: Option<&str>, status: Option<WorkerStatus>) -> StoreResult<Vec<WorkerRecord>> {
        let mut select = worker::Entity::find().order_by_asc(worker::Column::Id);
        if let Some(status) = status {
            select = select.filter(worker::Column::Status.eq(status.as_str()));
        }
        let rows = select.limit(10_000).all(&self.db).await?;
        let workers = rows.into_iter().map(convert::worker_from_row).collect::<StoreResult<Vec<_>>>()?;
        Ok(workers.into_iter().filter(|w| queue.is_none_or(|q| w.queues.iter().any(|wq| wq == q))).collect())
    }

    /// The settings of `name` (defaults when never configured).
    pub async fn queue_settings(&self, name: &str) -> StoreResult<QueueSettings> {
        self.queue_settings_unlocked(name).await
    }

    async fn queue_settings_unlocked(&self, name: &str) -> StoreResult<QueueSettings> {
        let parsed = QueueName::parse(name).map_err(StoreError::from)?;
        let row = queue::Entity::find_by_id(name.to_owned()).one(&self.db).await?;
        Ok(row.map(settings_from_row).transpose()?.unwrap_or_else(|| QueueSettings::defaults(parsed)))
    }

    /// Stores `settings` (insert or update).
    pub async fn save_queue(&self, settings: &QueueSettings) -> StoreResult<QueueSettings> {
        let now = convert::to_ms(Utc::now());
        let writing = self.write_lock(Writer::Admin).await;
        let exists = queue::Entity::find_by_id(settings.name.to_string()).one(writing.db()).await?.is_some();
        let row = queue::ActiveModel {
            name: Set(settings.name.to_string()),
            paused: Set(settings.paused),
            rate_limit_per_second: Set(settings.rate_limit_per_second),
            max_concurrency: Set(settings.max_concurrency.map(|m| m as i32)),
            max_attempts: Set(settings.max_attempts.map(|m| m.get() as i32)),
            lease_seconds: Set(Some(settings.lease_seconds as i32)),
            backoff_base_ms: Set(Some(settings.retry.base.as_millis() as i64)),
            backoff_max_ms: Set(Some(settings.retry.max.as_millis() as i64)),
            // The bucket is the dispatchers' (see `store::dispatch`): a new rate applies to
            // what is left in it.
            rate_tokens: sea_orm::ActiveValue::NotSet,
            rate_refilled_at: sea_orm::ActiveValue::NotSet,
            created_at: if exists { sea_orm::ActiveValue::NotSet } else { Set(now) },
            updated_at: Set(now),
        };
        let saved = if exists { row.update(writing.db()).await? } else { row.insert(writing.db()).await? };
        self.settings.forget(settings.name.as_str());
        self.dispatch_signal.notify_one();
        settings_from_row(saved)
    }

    /// Names of every queue that is configured or has tasks.
    pub async fn queue_names(&self) -> StoreResult<Vec<String>> {
        let mut names: Vec<String> =
            queue::Entity::find().select_only().column(queue::Column::Name).into_tuple().all(&self.db).await?;
        let used: Vec<String> = task::Entity::find()
            .select_only()
            .column(task::Column::Queue)
            .distinct()
            .limit(10_000)
            .into_tuple()
            .all(&self.db)
            .await?;
        names.extend(used);
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Ids of up to `limit` `DEAD` tasks of `queue`, oldest first.
    pub async fn dead_task_ids(&self, queue: &str, limit: u64) -> StoreResult<Vec<String>> {
        Ok(task::Entity::find()
            .select_only()
            .column(task::Column::Id)
            .filter(task::Column::Queue.eq(queue))
            .filter(task::Column::Status.eq("DEAD"))
            .order_by_asc(task::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?)
    }
}

pub(super) fn settings_from_row(row: queue::Model) -> StoreResult<QueueSettings> {
    let name = QueueName::parse(&row.name).map_err(|_| StoreError::Internal)?;
    let defaults = RetryPolicy::default();
    let ms = |v: Option<i64>, default: std::time::Duration| {
        v.and_then(|v| u64::try_from(v).ok()).map(std::time::Duration::from_millis).unwrap_or(default)
    };
    Ok(QueueSettings {
        name,
        paused: row.paused,
        rate_limit_per_second: row.rate_limit_per_second,
        max_concurrency: row.max_concurrency.and_then(|m| u32::try_from(m).ok()),
        max_attempts: row.max_attempts.and_then(|m| MaxAttempts::try_from(i64::from(m)).ok()),
        lease_seconds: row.lease_seconds.and_then(|l| u32::try_from(l).ok()).unwrap_or(DEFAULT_LEASE_SECONDS),
        retry: RetryPolicy { base: ms(row.backoff_base_ms, defaults.base), max: ms(row.backoff_max_ms, defaults.max) },
    })
}

/// The lease extension of a heartbeat that names its tasks: the named tasks that are
/// worker `worker`'s, `RUNNING` in one of its queues and whose lease has not lapsed at
/// `now`, each leased until its queue's end. One `UPDATE`; its shape is bounded by padding
/// both lists to a power of two (`shape`).
///
/// The lapse check is in the `SET`, not the `WHERE`: given `lease_expires_at > ?` next to
/// `id IN (…)`, SQLite's planner (no statistics) reads every running task of every worker
/// through `idx_tasks_status_lease`; without it, it reads the worker's running tasks
/// through `idx_tasks_worker_status`, as the legacy heartbeat does.
struct NamedLeases {
    worker: String,
    /// Distinct task ids, sorted (rows are locked in id order, as every writer locks
    /// tasks), padded.
    tasks: Vec<String>,
    /// The worker's queues and their lease ends (ms), padded.
    queues: Vec<(String, i64)>,
    now: i64,
}

impl NamedLeases {
    fn new(worker: &str, tasks: &[TaskId], until: &BTreeMap<String, i64>, now: chrono::DateTime<Utc>) -> NamedLeases {
        let mut ids = tasks.to_vec();
        ids.sort_unstable();
        ids.dedup();
        NamedLeases {
            worker: worker.to_owned(),
            tasks: shape::padded(ids.iter().map(TaskId::to_string)),
            queues: shape::padded(until.iter().map(|(queue, until)| (queue.clone(), *until))),
            now: convert::to_ms(now),
        }
    }

    /// The named rows the worker holds, lapsed or not.
    fn condition(&self) -> Condition {
        Condition::all()
            .add(task::Column::Id.is_in(self.tasks.iter().map(String::as_str)))
            .add(task::Column::WorkerId.eq(self.worker.as_str()))
            .add(task::Column::Status.eq(taskwire_domain::TaskStatus::Running.as_str()))
            .add(task::Column::Queue.is_in(self.queues.iter().map(|(queue, _)| queue.as_str())))
    }

    /// Whether no row can match (no task named, or a worker without queues).
    fn is_empty(&self) -> bool {
        self.tasks.is_empty() || self.queues.is_empty()
    }

    /// The `UPDATE`; `None` when there is nothing to extend.
    fn update(&self) -> Option<sea_orm::UpdateMany<task::Entity>> {
        let (_, first) = self.queues.first()?;
        if self.is_empty() {
            return None;
        }
        let until: SimpleExpr = if self.queues.iter().all(|(_, until)| until == first) {
            Expr::value(*first)
        } else {
            // A repeated (padding) arm is never reached: the first match wins. Every row
            // the statement reaches is in one of the queues; the fallback only keeps the
            // expression total.
            let mut until = CaseStatement::new();
            for (queue, end) in &self.queues {
                until = until.case(Expr::col(task::Column::Queue).eq(queue.as_str()), Expr::value(*end));
            }
            until.finally(Expr::col(task::Column::LeaseExpiresAt)).into()
        };
        // A lease that already lapsed stays as it is.
        let lease = CaseStatement::new()
            .case(Expr::col(task::Column::LeaseExpiresAt).gt(self.now), until)
            .finally(Expr::col(task::Column::LeaseExpiresAt));
        Some(task::Entity::update_many().col_expr(task::Column::LeaseExpiresAt, lease.into()).filter(self.condition()))
    }

    /// After [`NamedLeases::update`], in its transaction: the named tasks the worker
    /// still holds, with their lease ends: those whose lease had not lapsed, which the
    /// update extended.
    async fn held<C: ConnectionTrait>(&self, conn: &C) -> StoreResult<HashMap<TaskId, chrono::DateTime<Utc>>> {
        if self.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, Option<i64>)> = task::Entity::find()
            .select_only()
            .column(task::Column::Id)
            .column(task::Column::LeaseExpiresAt)
            .filter(self.condition())
            .into_tuple()
            .all(conn)
            .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, lease)| lease.is_some_and(|lease| lease > self.now))
            .filter_map(|(id, lease)| Some((TaskId::parse(&id)?, convert::from_ms(lease?))))
            .collect())
    }
}

/// The heartbeat's lease extension: worker `id`'s `RUNNING` tasks of `queue` whose lease
/// has not lapsed at `now` are leased until `until`. It reads through
/// `idx_tasks_worker_status`, the worker's tasks in that status, not its whole history.
fn extend_leases(
    id: &str,
    queue: &str,
    now: chrono::DateTime<Utc>,
    until: chrono::DateTime<Utc>,
) -> sea_orm::UpdateMany<task::Entity> {
    task::Entity::update_many()
        .col_expr(task::Column::LeaseExpiresAt, sea_orm::sea_query::Expr::value(convert::to_ms(until)))
        .filter(task::Column::WorkerId.eq(id))
        .filter(task::Column::Queue.eq(queue))
        .filter(task::Column::Status.eq(taskwire_domain::TaskStatus::Running.as_str()))
        .filter(task::Column::LeaseExpiresAt.gt(convert::to_ms(now)))
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DbBackend, QueryTrait, Statement};

    use super::*;
    use crate::testing::test_store;

    /// SQLite's plan of `statement` (`EXPLAIN QUERY PLAN`), one detail per line.
    async fn plan(store: &Store, statement: Statement) -> String {
        let explain = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            format!("EXPLAIN QUERY PLAN {}", statement.sql),
            statement.values.map(|v| v.0).unwrap_or_default(),
        );
        let rows = store.connection().query_all_raw(explain).await.expect("plan");
        rows.iter().map(|row| row.try_get::<String>("", "detail").expect("detail")).collect::<Vec<_>>().join("\n")
    }

    /// The heartbeats (naming tasks or not) and the offers re-sent to a worker find its tasks in one status
    /// through an index led by that status or by (worker, status), never through
    /// `idx_tasks_worker`, which holds every task the worker ever had.
    #[tokio::test]
    async fn a_workers_tasks_in_one_status_are_not_read_through_its_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let now = Utc::now();
        let heartbeat = extend_leases("w1", "default", now, now + chrono::Duration::seconds(30));
        let offers = crate::dispatch::offers_for_query("w1");
        let ids: Vec<TaskId> = (0..5).map(|_| TaskId::generate(now)).collect();
        let queues = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)]);
        let named = NamedLeases::new("w1", &ids, &queues, now).update().expect("an update");
        for plan in [
            plan(&store, heartbeat.build(DbBackend::Sqlite)).await,
            plan(&store, offers.build(DbBackend::Sqlite)).await,
            plan(&store, named.build(DbBackend::Sqlite)).await,
        ] {
            assert!(plan.contains("USING INDEX idx_tasks_"), "read through an index: {plan}");
            assert!(!plan.contains("idx_tasks_worker "), "not through the worker's history: {plan}");
            assert!(plan.contains("(status=?") || plan.contains("(worker_id=? AND status=?"), "{plan}");
        }
    }

    /// A heartbeat naming tasks is one `UPDATE` whose text depends only on the padded
    /// lengths of its lists and on whether the worker's queues share one lease length.
    #[test]
    fn a_named_heartbeat_is_one_update_of_few_shapes() {
        let now = Utc::now();
        let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::generate(now)).collect();
        let queues = |n: usize, varied: bool| -> BTreeMap<String, i64> {
            (0..n).map(|i| (format!("q{i}"), 30_000 + if varied { i as i64 } else { 0 })).collect()
        };
        let mut shapes = std::collections::BTreeSet::new();
        for n in 1..=ids.len() {
            for (queues, varied) in [(queues(1, false), false), (queues(3, false), false), (queues(3, true), true)] {
                let named = NamedLeases::new("w1", &ids[..n], &queues, now);
                let update = named.update().expect("something to extend").build(DbBackend::MySql);
                assert!(update.sql.starts_with("UPDATE `tasks` SET `lease_expires_at` = "), "{}", update.sql);
                // The lapse check, then (varied) a lease end per queue.
                assert_eq!(update.sql.matches("CASE").count(), 1 + usize::from(varied), "{}", update.sql);
                shapes.insert(update.sql);
            }
        }
        // 11 lengths of the id list (1, 2, 4, … 1024), each with 3 variants.
        assert_eq!(shapes.len(), 33);
        assert!(NamedLeases::new("w1", &[], &queues(1, false), now).update().is_none());
        assert!(NamedLeases::new("w1", &ids[..1], &BTreeMap::new(), now).update().is_none());
    }

    /// On MariaDB, with a worker's long history and many running tasks of other workers,
    /// a heartbeat's lease extension is planned through the worker's tasks in that status.
    #[tokio::test]
    async fn mysql_plans_a_heartbeat_through_the_workers_running_tasks() {
        let test = "mysql_plans_a_heartbeat_through_the_workers_running_tasks";
        let Some(store) = crate::testing::mysql_test_store(test).await else { return };
        let now = convert::to_ms(Utc::now());
        let later = now + 60_000;
        // Worker w1: 600 finished tasks and 3 running; w2…w9: 400 running between them.
        let insert = |status: &str, worker: &str, n: u32, from: u32| {
            format!(
                "INSERT INTO tasks (id, queue, kind, priority, status, attempts, max_attempts, run_at, created_by, \
                 input_hash, worker_id, lease_expires_at, version, last_seq, created_at, updated_at) \
                 SELECT CONCAT('0190b1b2-0000-7000-8000-', LPAD(seq, 12, '0')), 'default', 'k', 0, '{status}', 1, 3, {now}, 'c', 'h', \
                 {worker}, {later}, 1, 1, {now}, {now} FROM seq_{from}_to_{}",
                from + n - 1
            )
        };
        let db = store.connection();
        for sql in [
            insert("SUCCEEDED", "'w1'", 600, 1),
            insert("RUNNING", "'w1'", 3, 1_001),
            insert("RUNNING", "CONCAT('w', 2 + seq % 8)", 400, 2_001),
            "ANALYZE TABLE tasks".to_owned(),
        ] {
            db.execute_unprepared(&sql).await.expect(&sql);
        }
        let until = Utc::now() + chrono::Duration::seconds(30);
        let update = extend_leases("w1", "default", Utc::now(), until).build(DbBackend::MySql);
        let explain = Statement::from_sql_and_values(
            DbBackend::MySql,
            format!("EXPLAIN {}", update.sql),
            update.values.map(|v| v.0).unwrap_or_default(),
        );
        let row = db.query_one_raw(explain).await.expect("explain").expect("a plan row");
        let key: Option<String> = row.try_get("", "key").expect("key");
        let rows: Option<String> = row.try_get("", "rows").expect("rows");
        assert_eq!(key.as_deref(), Some("idx_tasks_worker_status"), "planned to read {rows:?} rows");
        let extended = extend_leases("w1", "default", Utc::now(), until).exec(db).await.expect("update");
        assert_eq!(extended.rows_affected, 3);

        // Naming tasks: w1's three running ones, a finished one of w1's and another
        // worker's running one. Only the named rows are read (the list padded to 8).
        let named: Vec<TaskId> = [1_001, 1_002, 1_003, 1, 2_001]
            .iter()
            .map(|n| TaskId::parse(&format!("0190b1b2-0000-7000-8000-{n:012}")).expect("a task id"))
            .collect();
        let later = BTreeMap::from([("default".to_owned(), convert::to_ms(until) + 1_000)]);
        let named = NamedLeases::new("w1", &named, &later, Utc::now());
        let update = named.update().expect("an update").build(DbBackend::MySql);
        let explain = Statement::from_sql_and_values(
            DbBackend::MySql,
            format!("EXPLAIN {}", update.sql),
            update.values.clone().map(|v| v.0).unwrap_or_default(),
        );
        let row = db.query_one_raw(explain).await.expect("explain").expect("a plan row");
        let key: Option<String> = row.try_get("", "key").expect("key");
        let rows: Option<String> = row.try_get("", "rows").expect("rows");
        let read: u64 = rows.as_deref().and_then(|r| r.parse().ok()).expect("a row estimate");
        assert!(read <= 8, "planned to read {read} rows through {key:?}");
        // Point lookups of the named ids, through the primary key or (queue, id).
        let keys = ["PRIMARY", "idx_tasks_queue", "idx_tasks_worker_status"];
        assert!(key.as_deref().is_some_and(|key| keys.contains(&key)), "planned through {key:?}");
        let extended = db.execute_raw(update).await.expect("update");
        assert_eq!(extended.rows_affected(), 3, "w1's running tasks only");
        let held = named.held(db).await.expect("held");
        assert_eq!(held.len(), 3);
        assert!(held.values().all(|lease| convert::to_ms(*lease) == later["default"]));
    }
}
