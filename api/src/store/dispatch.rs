//! What the dispatcher reads and writes: offers under a capacity reservation, sweeps
//! of due tasks (scheduler, reaper), worker liveness and the matcher's view of queues
//! and workers.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, IsolationLevel, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query},
};
use taskwire_domain::{
    LeaseToken, QueueName, QueueSettings, TaskId, TaskStatus, WorkerStatus,
    machine::{self, Command, Transition},
    task::Task,
};
use taskwire_entity::{queue, task, worker};

use super::{
    Store, WorkerRecord,
    admin::settings_from_row,
    convert,
    tasks::{Applied, Committed, apply},
};
use crate::error::{ApiError, ApiResult};

/// What became of an offer.
#[derive(Debug, Clone, PartialEq)]
pub enum OfferOutcome {
    /// The task is `ASSIGNED` to the worker under a new lease token.
    Offered(Box<Task>),
    /// The task is no longer `QUEUED` (cancelled, offered by another dispatcher, gone).
    NotQueued,
    /// The worker is not `ONLINE` or has no free capacity.
    WorkerUnavailable,
}

/// Which tasks a sweep claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// `SCHEDULED` tasks whose `runAt` has come.
    Scheduled,
    /// `ASSIGNED` tasks whose offer lapsed.
    ExpiredOffers,
    /// `RUNNING` tasks whose lease lapsed.
    ExpiredLeases,
    /// Unfinished tasks whose `deadline` passed.
    PastDeadline,
    /// Offered or running tasks of workers that are `OFFLINE`.
    HeldByOfflineWorkers,
}

impl Store {
    /// Offers `id` to `worker_id` until `expires_at`, minting a new lease token, in one
    /// transaction that also reserves a slot of the worker's capacity (conditional on the
    /// worker being `ONLINE` with `active < capacity`).
    pub async fn offer(
        &self,
        id: TaskId,
        worker_id: &str,
        expires_at: DateTime<Utc>,
        traceparent: Option<&str>,
    ) -> ApiResult<OfferOutcome> {
        let offer = |task: &Task, _: Option<&QueueSettings>| {
            let lease_token = LeaseToken::generate();
            let command = Command::Offer { worker_id: worker_id.to_owned(), lease_token, expires_at };
            Ok(machine::transition(task, command, Utc::now())?)
        };
        match self.transition_inner(id, traceparent, false, offer).await {
            Ok(Committed::Task(task)) => Ok(OfferOutcome::Offered(task)),
            Ok(Committed::NoCapacity) => Ok(OfferOutcome::WorkerUnavailable),
            // Gone, no longer `QUEUED`, or changed under us too often: not ours to offer.
            Err(ApiError::NotFound(_) | ApiError::Conflict(_) | ApiError::Domain(_)) => Ok(OfferOutcome::NotQueued),
            Err(e) => Err(e),
        }
    }

    /// Claims up to `limit` tasks that are `due` and applies to each the command
    /// `decide` returns for it (given its queue's settings), in one transaction; returns
    /// the tasks changed. Tasks the command does not fit (the machine refuses it) are
    /// left alone.
    ///
    /// On MySQL/MariaDB the rows are claimed with `FOR UPDATE SKIP LOCKED` under READ
    /// COMMITTED, so several dispatcher processes sweep side by side without claiming a
    /// task twice and without gap locks stalling task inserts. On SQLite the write gate
    /// serialises sweeps with every other writer.
    pub async fn sweep<F>(&self, due: Due, now: DateTime<Utc>, limit: u64, decide: F) -> ApiResult<Vec<Task>>
    where
        F: Fn(&Task, &QueueSettings) -> Command,
    {
        let now_ms = convert::to_ms(now);
        let leased = [TaskStatus::Assigned.as_str(), TaskStatus::Running.as_str()];
        let unfinished = [TaskStatus::Scheduled, TaskStatus::Queued, TaskStatus::Assigned, TaskStatus::Running]
            .map(TaskStatus::as_str);
        let (condition, order) = match due {
            Due::Scheduled => (
                Condition::all()
                    .add(task::Column::Status.eq(TaskStatus::Scheduled.as_str()))
                    .add(task::Column::RunAt.lte(now_ms)),
                task::Column::RunAt,
            ),
            Due::ExpiredOffers => (
                Condition::all()
                    .add(task::Column::Status.eq(TaskStatus::Assigned.as_str()))
                    .add(task::Column::LeaseExpiresAt.lte(now_ms)),
                task::Column::LeaseExpiresAt,
            ),
            Due::ExpiredLeases => (
                Condition::all()
                    .add(task::Column::Status.eq(TaskStatus::Running.as_str()))
                    .add(task::Column::LeaseExpiresAt.lte(now_ms)),
                task::Column::LeaseExpiresAt,
            ),
            Due::PastDeadline => (
                Condition::all().add(task::Column::Status.is_in(unfinished)).add(task::Column::Deadline.lte(now_ms)),
                task::Column::Deadline,
            ),
            Due::HeldByOfflineWorkers => (
                Condition::all().add(task::Column::Status.is_in(leased)).add(
                    task::Column::WorkerId.in_subquery(
                        Query::select()
                            .column(worker::Column::Id)
                            .from(worker::Entity)
                            .and_where(worker::Column::Status.eq(WorkerStatus::Offline.as_str()))
                            .to_owned(),
                    ),
                ),
                task::Column::Id,
            ),
        };
        let select = task::Entity::find().filter(condition).order_by_asc(order).limit(limit);
        let _gate = self.write_lock().await;
        let mysql = self.backend() == DbBackend::MySql;
        let txn = if mysql {
            self.db.begin_with_config(Some(IsolationLevel::ReadCommitted), None).await?
        } else {
            self.db.begin().await?
        };
        let rows = if mysql {
            select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked).all(&txn).await?
        } else {
            select.all(&txn).await?
        };
        if rows.is_empty() {
            txn.rollback().await?;
            return Ok(vec![]);
        }
        let tasks = rows.into_iter().map(convert::task_from_row).collect::<ApiResult<Vec<_>>>()?;
        let settings = queue_settings_in(&txn, tasks.iter().map(|t| t.queue.as_str())).await?;
        let mut changes: Vec<(Task, Transition)> = Vec::with_capacity(tasks.len());
        for current in tasks {
            let Some(queue) = settings.get(&current.queue) else { continue };
            let Ok(transition) = machine::transition(&current, decide(&current, queue), now) else { continue };
            // Rows are locked (MySQL) or the gate is held (SQLite): a race means another
            // writer slipped in, so the task simply waits for the next sweep.
            if apply(&txn, &current, &transition).await? == Applied::Done {
                changes.push((current, transition));
            }
        }
        let history: Vec<(Transition, Option<&str>)> = changes.iter().map(|(_, t)| (t.clone(), None)).collect();
        self.append_history(&txn, &history).await?;
        txn.commit().await?;
        let pairs: Vec<(&Task, &Transition)> = changes.iter().map(|(b, t)| (b, t)).collect();
        self.after_commit(&pairs);
        Ok(changes.into_iter().map(|(_, t)| t.task).collect())
    }

    /// The earliest `runAt` of a `SCHEDULED` task, if any.
    pub async fn next_scheduled_run_at(&self) -> ApiResult<Option<DateTime<Utc>>> {
        let min: Option<Option<i64>> = task::Entity::find()
            .select_only()
            .column_as(task::Column::RunAt.min(), "min_run_at")
            .filter(task::Column::Status.eq(TaskStatus::Scheduled.as_str()))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(min.flatten().map(convert::from_ms))
    }

    /// Marks `ONLINE` and `DRAINING` workers not seen since `cutoff` as `OFFLINE`;
    /// returns how many.
    pub async fn expire_workers(&self, cutoff: DateTime<Utc>) -> ApiResult<u64> {
        let _gate = self.write_lock().await;
        let result = worker::Entity::update_many()
            .col_expr(worker::Column::Status, Expr::value(WorkerStatus::Offline.as_str()))
            .col_expr(worker::Column::Version, Expr::col(worker::Column::Version).add(1))
            .col_expr(worker::Column::UpdatedAt, Expr::value(convert::to_ms(Utc::now())))
            .filter(worker::Column::Status.is_in([WorkerStatus::Online.as_str(), WorkerStatus::Draining.as_str()]))
            .filter(worker::Column::LastSeenAt.lt(convert::to_ms(cutoff)))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// Records that worker `id` is connected: refreshes `lastSeenAt`, and an `OFFLINE`
    /// worker comes back `ONLINE`. `NOT_FOUND` for a worker that never registered.
    pub async fn touch_worker(&self, id: &str) -> ApiResult<WorkerRecord> {
        let _gate = self.write_lock().await;
        let row = worker::Entity::find_by_id(id.to_owned()).one(&self.db).await?.ok_or(ApiError::NotFound("worker"))?;
        let came_back = row.status == WorkerStatus::Offline.as_str();
        let now = convert::to_ms(Utc::now());
        let mut active: worker::ActiveModel = row.clone().into();
        if came_back {
            active.status = sea_orm::ActiveValue::Set(WorkerStatus::Online.as_str().to_owned());
            active.version = sea_orm::ActiveValue::Set(row.version + 1);
        }
        active.last_seen_at = sea_orm::ActiveValue::Set(now);
        active.updated_at = sea_orm::ActiveValue::Set(now);
        let record = convert::worker_from_row(sea_orm::ActiveModelTrait::update(active, &self.db).await?)?;
        if came_back {
            self.dispatch_signal.notify_one();
        }
        Ok(record)
    }

    /// `ONLINE` workers seen since `cutoff` with free capacity.
    pub async fn available_workers(&self, cutoff: DateTime<Utc>) -> ApiResult<Vec<WorkerRecord>> {
        let rows = worker::Entity::find()
            .filter(worker::Column::Status.eq(WorkerStatus::Online.as_str()))
            .filter(worker::Column::LastSeenAt.gte(convert::to_ms(cutoff)))
            .filter(Expr::col(worker::Column::Active).lt(Expr::col(worker::Column::Capacity)))
            .order_by_asc(worker::Column::Id)
            .limit(10_000)
            .all(&self.db)
            .await?;
        rows.into_iter().map(convert::worker_from_row).collect()
    }

    /// The tasks currently offered to worker `id` (not yet accepted), in dispatch order
    /// (priority desc, `runAt` asc, id asc).
    pub async fn offers_for(&self, id: &str) -> ApiResult<Vec<Task>> {
        let rows = task::Entity::find()
            .filter(task::Column::WorkerId.eq(id))
            .filter(task::Column::Status.eq(TaskStatus::Assigned.as_str()))
            .order_by_desc(task::Column::Priority)
            .order_by_asc(task::Column::RunAt)
            .order_by_asc(task::Column::Id)
            .limit(1_000)
            .all(&self.db)
            .await?;
        rows.into_iter().map(convert::task_from_row).collect()
    }

    /// Up to `limit` `QUEUED` tasks last changed before `cutoff`, in dispatch order
    /// (for the matcher's start-up and periodic reconciliation).
    pub async fn queued_tasks(&self, cutoff: DateTime<Utc>, limit: u64) -> ApiResult<Vec<Task>> {
        let rows = task::Entity::find()
            .filter(task::Column::Status.eq(TaskStatus::Queued.as_str()))
            .filter(task::Column::UpdatedAt.lt(convert::to_ms(cutoff)))
            .order_by_desc(task::Column::Priority)
            .order_by_asc(task::Column::RunAt)
            .order_by_asc(task::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(convert::task_from_row).collect()
    }

    /// Offered and running tasks per queue, for the queues named.
    pub async fn active_by_queue(&self, queues: &[&str]) -> ApiResult<HashMap<String, u32>> {
        if queues.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = task::Entity::find()
            .select_only()
            .column(task::Column::Queue)
            .column_as(task::Column::Id.count(), "n")
            .filter(task::Column::Status.is_in([TaskStatus::Assigned.as_str(), TaskStatus::Running.as_str()]))
            .filter(task::Column::Queue.is_in(queues.iter().copied()))
            .group_by(task::Column::Queue)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|(q, n)| (q, u32::try_from(n).unwrap_or(u32::MAX))).collect())
    }

    /// The settings of each queue named (defaults for queues never configured).
    pub async fn queue_settings_many<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> ApiResult<HashMap<String, QueueSettings>> {
        queue_settings_in(&self.db, names).await
    }
}

/// The settings of each queue named, read on `conn` (inside a transaction, so it never
/// needs a second pooled connection while holding one).
pub(super) async fn queue_settings_in<'a, C: ConnectionTrait>(
    conn: &C,
    names: impl IntoIterator<Item = &'a str>,
) -> ApiResult<HashMap<String, QueueSettings>> {
    let names: HashSet<&str> = names.into_iter().collect();
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = queue::Entity::find().filter(queue::Column::Name.is_in(names.iter().copied())).all(conn).await?;
    let mut out = HashMap::with_capacity(names.len());
    for row in rows {
        let settings = settings_from_row(row)?;
        out.insert(settings.name.to_string(), settings);
    }
    for name in names {
        if !out.contains_key(name)
            && let Ok(parsed) = QueueName::parse(name)
        {
            out.insert(name.to_owned(), QueueSettings::defaults(parsed));
        }
    }
    Ok(out)
}
