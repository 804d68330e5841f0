//! What the dispatcher reads and writes: offers under a capacity reservation, sweeps
//! of due tasks (scheduler, reaper), worker liveness and the matcher's view of queues
//! and workers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query},
};
use taskwire_domain::{
    LeaseToken, QueueSettings, RateBucket, TaskId, TaskStatus, WorkerStatus,
    machine::{self, Command, Transition},
    task::Task,
};
use taskwire_entity::{queue, task, worker};

use super::{
    ConflictPath, Store, WorkerRecord, Writer, convert, shape,
    shape::Writes,
    tasks::{Applied, apply, release_slots_statements, reserve_slots, update_all_if_unchanged},
};
use crate::error::{StoreError, StoreResult};

/// What became of an offer.
#[derive(Debug, Clone, PartialEq)]
pub enum OfferOutcome {
    /// The task is `ASSIGNED` to the worker under a new lease token (`RUNNING`, when the
    /// offer started it).
    Offered(Box<Task>),
    /// The task is no longer `QUEUED` (cancelled, offered by another dispatcher, gone).
    NotQueued,
    /// The worker is not `ONLINE` or has no free capacity.
    WorkerUnavailable,
    /// The queue's `maxConcurrency` or rate limit, counted over every dispatcher, left no
    /// room for this offer; the task stays `QUEUED`.
    QueueLimited,
}

/// The outcomes of a transaction of offers, and which queues' limits held offers back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offers {
    /// One per planned offer, in order.
    pub outcomes: Vec<OfferOutcome>,
    /// Queues whose global limits held an offer back, and which limit.
    pub limited: HashMap<String, Limited>,
}

/// Which of a queue's global limits held offers back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// `maxConcurrency`: room comes back when an offered or running task ends.
    Concurrency,
    /// The rate: the shared bucket holds a token again after this long.
    Rate(std::time::Duration),
}

/// A limited queue's room in one offer transaction, read under its row lock.
#[derive(Debug, Clone)]
struct Room {
    /// Offers `maxConcurrency` still allows (`None`: no cap).
    concurrency: Option<u32>,
    /// The shared bucket refilled to now, with the queue's rate (`None`: no rate limit).
    rate: Option<(f64, RateBucket)>,
    /// Offers this transaction counts against the room so far.
    taken: u32,
}

impl Room {
    /// Takes room for one offer; which limit refused it otherwise.
    fn take(&mut self) -> Result<(), &'static str> {
        if self.concurrency.is_some_and(|left| self.taken >= left) {
            return Err("concurrency");
        }
        if self.rate.is_some_and(|(_, bucket)| self.taken >= bucket.whole()) {
            return Err("rate");
        }
        self.taken += 1;
        Ok(())
    }
}

/// One offer the matcher plans: a task for a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOffer {
    /// The task (expected `QUEUED`).
    pub id: TaskId,
    /// The worker it goes to.
    pub worker_id: String,
    /// W3C trace context the offer continues.
    pub traceparent: Option<String>,
    /// `Some(length)` when the worker takes its offers as they come (`autoAccept`): the
    /// offer starts the task (`RUNNING`) under a lease this long, and counts an attempt.
    pub lease: Option<chrono::Duration>,
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

/// The index the matcher's read of its workers goes through (migration
/// `m20261207_000007_workers_dispatcher_index`).
const WORKERS_DISPATCHER_INDEX: &str = "idx_workers_status_connected";

/// `ONLINE` workers seen since `cutoff` that `dispatcher` may offer to, full or not: those
/// whose stream it holds and those no dispatcher holds, in id order.
///
/// The query names `(status, connected_to)` as its index (`FORCE INDEX` on MySQL; SQLite
/// ignores the hint and picks its own plan): MariaDB's optimizer otherwise walks the
/// primary key for the `ORDER BY id` and examines every worker of every process, so a
/// round's cost grows with the whole fleet instead of this process's share of it.
fn dispatcher_workers_query(cutoff: DateTime<Utc>, dispatcher: &str) -> sea_orm::Select<worker::Entity> {
    use sea_orm::{
        QueryTrait,
        sea_query::{
            Alias,
            extension::mysql::{IndexHintScope, MySqlSelectStatementExt},
        },
    };
    let mut select = worker::Entity::find()
        .filter(worker::Column::Status.eq(WorkerStatus::Online.as_str()))
        .filter(
            Condition::any().add(worker::Column::ConnectedTo.eq(dispatcher)).add(worker::Column::ConnectedTo.is_null()),
        )
        .filter(worker::Column::LastSeenAt.gte(convert::to_ms(cutoff)))
        .order_by_asc(worker::Column::Id)
        .limit(10_000);
    MySqlSelectStatementExt::force_index(
        QueryTrait::query(&mut select),
        Alias::new(WORKERS_DISPATCHER_INDEX),
        IndexHintScope::All,
    );
    select
}

impl Store {
    /// Makes `offers` (each task to its worker, until `expires_at`, under a new lease
    /// token; or, for a worker that takes its offers as they come, started under its
    /// lease) in one transaction, and answers one outcome per offer, in order.
    ///
    /// Each offer is the usual conditional task update (on its version) plus a slot of
    /// the worker's capacity (conditional on the worker being `ONLINE` with room). The
    /// matcher plans a round against the capacities it has just read, so normally every
    /// task is still `QUEUED` and every worker has room for its share: the task updates
    /// are then one statement per 32 tasks (rows locked in task-id order), followed by one
    /// statement per 32 workers reserving each worker's share of the offers (rows locked
    /// in worker-id order: the lock order of every writer, see `transition_many`). If a
    /// task changed or a worker turned out full, draining or offline meanwhile, that
    /// transaction is rolled back and the offers are made again one savepoint each, so
    /// that only those that cannot be made fail. Either way the offers commit together
    /// with their events and outbox rows: one transaction per matcher round instead of
    /// one per offer is what lets a dispatcher keep up with hundreds of tasks a second.
    ///
    /// The queues named in `limited` (those with `maxConcurrency` or a rate limit) are
    /// enforced here, across every dispatcher process: the transaction first locks their
    /// rows (before any task row: queue rows, then tasks, then workers is the lock order),
    /// counts their offered and running tasks, refills their shared rate bucket, and lets
    /// through only the offers that fit, in the order given; it spends the bucket by the
    /// offers made. Another dispatcher's transaction for the same queue waits for the row,
    /// then counts this one's offers: the cap is exact, the rate within one second's burst.
    pub async fn offer_many(
        &self,
        offers: &[PlannedOffer],
        limited: &[&str],
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Offers> {
        self.offer_many_as(None, offers, limited, expires_at).await
    }

    /// [`Store::offer_many`] made by `dispatcher` (a matcher's id): a worker whose stream
    /// another dispatcher holds gets none of them (`WorkerUnavailable`), whatever the
    /// caller read of it. The database keeps the ownership rule the way it keeps capacity:
    /// a matcher plans against workers it read a while ago, and a worker it read unheld
    /// may have opened its stream on another process since.
    pub async fn offer_many_as(
        &self,
        dispatcher: Option<&str>,
        offers: &[PlannedOffer],
        limited: &[&str],
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Offers> {
        if offers.is_empty() {
            return Ok(Offers::default());
        }
        self.retry_lock_conflicts(ConflictPath::Offer, || self.offer_many_once(dispatcher, offers, limited, expires_at))
            .await
    }

    async fn offer_many_once(
        &self,
        dispatcher: Option<&str>,
        offers: &[PlannedOffer],
        limited: &[&str],
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Offers> {
        // Read before the gate: every offer is conditional on the version read. A task
        // this process committed last as `QUEUED` is not read at all (see `recent`); one
        // remembered in another state is read, since the matcher holds it as `QUEUED`.
        let current = self.current_tasks(offers.iter().map(|o| o.id), |t| t.status == TaskStatus::Queued).await?;
        let mut remembered = current.remembered;
        let mut current = current.tasks;
        let now = Utc::now();
        let now_ms = convert::to_ms(now);
        // Each offer's change, or `None` when its task is no longer `QUEUED` (a task
        // planned twice is offered once).
        let mut planned: Vec<Option<(Task, Transition)>> =
            offers.iter().map(|offer| planned_offer(offer, current.remove(&offer.id)?, now, expires_at)).collect();
        // (A task planned again below keeps its queue.)
        let limited: BTreeSet<&str> = limited
            .iter()
            .copied()
            .filter(|queue| planned.iter().flatten().any(|(before, _)| before.queue == *queue))
            .collect();
        let writing = self.write_lock(Writer::Offer).await;
        // Offers left out of the next attempt: their task changed since it was read
        // (another dispatcher offered it first, most often), answered `NotQueued`, or their
        // worker has no room left for them, answered `WorkerUnavailable`.
        let mut raced = vec![false; planned.len()];
        let mut no_room = vec![false; planned.len()];
        let mut attempt = 0;
        let (txn, made, held_back, rooms) = loop {
            attempt += 1;
            let candidates: Vec<Option<(Task, Transition)>> = planned
                .iter()
                .enumerate()
                .map(|(i, p)| if raced[i] || no_room[i] { None } else { p.clone() })
                .collect();
            let txn = writing.begin_read_committed().await?;
            // Counted in every attempt: another dispatcher may have offered meanwhile.
            let mut rooms = lock_rooms(&txn, &limited, now_ms).await?;
            let (fitting, held_back) = fit(&candidates, &mut rooms);
            let outcome = offer_at_once(&txn, offers, &fitting, now_ms, dispatcher).await?;
            if let AtOnce::Made(made) = outcome {
                break (txn, made, held_back, rooms);
            }
            txn.rollback().await?;
            if attempt == OFFER_ATTEMPTS {
                // Nothing made this time; the tasks stay ready for the matcher's next round.
                let made =
                    decided(&fitting).into_iter().map(|(i, _, _)| (i, OfferOutcome::WorkerUnavailable)).collect();
                let txn = writing.begin_read_committed().await?;
                break (txn, made, held_back, rooms);
            }
            // Find out what moved with plain reads and go again without those offers, all
            // at once: making offers one by one would take task and worker locks
            // interleaved, against the lock order, and deadlock with other writers.
            match outcome {
                AtOnce::TaskChanged => {
                    mark_raced(writing.db(), &fitting, &mut raced).await?;
                    // A remembered state that turned out stale says nothing about the
                    // task now (another process may have offered it and had it handed
                    // back): read it, and offer it again if it is still `QUEUED`.
                    let stale: Vec<usize> =
                        (0..offers.len()).filter(|i| raced[*i] && remembered.contains(&offers[*i].id)).collect();
                    if !stale.is_empty() {
                        let ids: Vec<TaskId> = stale.iter().map(|i| offers[*i].id).collect();
                        self.recent.forget(ids.iter().copied());
                        let mut fresh = crate::recent::Current::default();
                        self.read_into(&mut fresh, ids).await?;
                        for i in stale {
                            remembered.remove(&offers[i].id);
                            let before = fresh.tasks.get(&offers[i].id).cloned();
                            planned[i] = before.and_then(|before| planned_offer(&offers[i], before, now, expires_at));
                            raced[i] = planned[i].is_none();
                        }
                    }
                }
                _ => mark_no_room(writing.db(), offers, &fitting, &mut no_room, dispatcher).await?,
            }
        };
        // Every planned offer has its outcome in `made` or `held_back`; the others were
        // not `QUEUED`.
        let mut outcomes: Vec<OfferOutcome> = offers.iter().map(|_| OfferOutcome::NotQueued).collect();
        let mut changes: Vec<(Task, Transition, Option<&str>)> = Vec::with_capacity(made.len());
        let mut spent: BTreeMap<&str, u32> = BTreeMap::new();
        for (i, dropped) in no_room.iter().enumerate() {
            if *dropped && !raced[i] {
                outcomes[i] = OfferOutcome::WorkerUnavailable;
            }
        }
        // In the matcher's order (priority first), not the task-id order the rows were
        // locked in: the events, and so the offers a worker receives, follow it.
        let mut made = made;
        made.sort_by_key(|(i, _)| *i);
        for (i, outcome) in made {
            if let (OfferOutcome::Offered(_), Some((before, transition))) = (&outcome, &planned[i]) {
                changes.push((before.clone(), transition.clone(), offers[i].traceparent.as_deref()));
                *spent.entry(before.queue.as_str()).or_default() += 1;
            }
            outcomes[i] = outcome;
        }
        let mut limited = HashMap::new();
        for (i, limit) in held_back {
            outcomes[i] = OfferOutcome::QueueLimited;
            if let Some(queue) = planned[i].as_ref().map(|(before, _)| before.queue.as_str()) {
                let why = match rooms.get(queue).and_then(|room| room.rate) {
                    Some((rate, bucket)) if limit == "rate" => {
                        Limited::Rate(bucket.spent(spent.get(queue).copied().unwrap_or(0)).until_next(rate))
                    }
                    _ => Limited::Concurrency,
                };
                limited.insert(queue.to_owned(), why);
            }
            if let Some(metrics) = self.metrics.get() {
                metrics.dispatch_queue_limited.with_label_values(&[limit]).inc();
            }
        }
        let mut writes = Writes::new(self.backend());
        for (queue, room) in &rooms {
            if let Some((_, bucket)) = room.rate {
                let left = bucket.spent(spent.get(queue.as_str()).copied().unwrap_or(0));
                let update = Query::update()
                    .table(queue::Entity)
                    .value(queue::Column::RateTokens, left.tokens)
                    .value(queue::Column::RateRefilledAt, left.at_ms)
                    .and_where(queue::Column::Name.eq(queue.as_str()))
                    .to_owned();
                writes.extend([self.backend().build(&update)]);
            }
        }
        self.commit_changes(txn, writes, &changes).await?;
        Ok(Offers { outcomes, limited })
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
    pub async fn sweep<F>(&self, due: Due, now: DateTime<Utc>, limit: u64, decide: F) -> StoreResult<Vec<Task>>
    where
        F: Fn(&Task, &QueueSettings) -> Command,
    {
        self.retry_lock_conflicts(ConflictPath::Sweep, || self.sweep_once(&due, now, limit, &decide)).await
    }

    async fn sweep_once<F>(&self, due: &Due, now: DateTime<Utc>, limit: u64, decide: &F) -> StoreResult<Vec<Task>>
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
        // Most passes find nothing due. A plain read says so in one statement, without a
        // transaction or (on SQLite) the write gate, which every process's reaper and
        // scheduler would otherwise take several times a second.
        let probe = task::Entity::find().filter(condition.clone()).select_only().column(task::Column::Id).limit(1);
        if probe.into_tuple::<String>().one(&self.db).await?.is_none() {
            return Ok(vec![]);
        }
        let select = task::Entity::find().filter(condition).order_by_asc(order).limit(limit);
        let writing = self.write_lock(Writer::Sweep).await;
        let mysql = self.backend() == DbBackend::MySql;
        let txn = writing.begin_read_committed().await?;
        let rows = if mysql {
            select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked).all(&txn).await?
        } else {
            select.all(&txn).await?
        };
        if rows.is_empty() {
            txn.rollback().await?;
            return Ok(vec![]);
        }
        let tasks = rows.into_iter().map(convert::task_from_row).collect::<StoreResult<Vec<_>>>()?;
        let settings = self.settings.get_many(&txn, tasks.iter().map(|t| t.queue.as_str())).await?;
        let mut changes: Vec<(Task, Transition)> = Vec::with_capacity(tasks.len());
        // Worker slots are freed last, in worker-id order: the lock order of every writer
        // (see `transition_many`).
        let mut releases = BTreeMap::new();
        for current in tasks {
            let Some(queue) = settings.get(&current.queue) else { continue };
            let Ok(transition) = machine::transition(&current, decide(&current, queue), now) else { continue };
            // Rows are locked (MySQL) or the gate is held (SQLite): a race means another
            // writer slipped in, so the task simply waits for the next sweep.
            if apply(&txn, &current, &transition, Some(&mut releases)).await? == Applied::Done {
                changes.push((current, transition));
            }
        }
        let mut writes = Writes::new(self.backend());
        writes.extend(release_slots_statements(self.backend(), releases, convert::to_ms(now)));
        self.history_into(&mut writes, changes.iter().map(|(_, t)| (t, None)))?;
        writes.run(&txn).await?;
        txn.commit().await?;
        self.after_commit(changes.iter().map(|(b, t)| (Some(b), t, None)));
        Ok(changes.into_iter().map(|(_, t)| t.task).collect())
    }

    /// The earliest `runAt` of a `SCHEDULED` task, if any.
    pub async fn next_scheduled_run_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
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
    pub async fn expire_workers(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        self.retry_lock_conflicts(ConflictPath::Worker, || self.expire_workers_once(cutoff)).await
    }

    async fn expire_workers_once(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        let stale = Condition::all()
            .add(worker::Column::Status.is_in([WorkerStatus::Online.as_str(), WorkerStatus::Draining.as_str()]))
            .add(worker::Column::LastSeenAt.lt(convert::to_ms(cutoff)));
        // Nearly every pass finds every worker alive: a plain read, not an UPDATE under
        // the write gate (see `sweep_once`).
        let probe = worker::Entity::find().filter(stale.clone()).select_only().column(worker::Column::Id).limit(1);
        if probe.into_tuple::<String>().one(&self.db).await?.is_none() {
            return Ok(0);
        }
        let writing = self.write_lock(Writer::Worker).await;
        let result = worker::Entity::update_many()
            .col_expr(worker::Column::Status, Expr::value(WorkerStatus::Offline.as_str()))
            .col_expr(worker::Column::Version, Expr::col(worker::Column::Version).add(1))
            .col_expr(worker::Column::UpdatedAt, Expr::value(convert::to_ms(Utc::now())))
            .filter(stale)
            .exec(writing.db())
            .await?;
        if result.rows_affected > 0 {
            self.roster.changed();
        }
        Ok(result.rows_affected)
    }

    /// Records that worker `id` is connected, its `assignments` stream held by this
    /// process: refreshes `lastSeenAt`, an `OFFLINE` worker comes back `ONLINE`, and the
    /// worker is marked held by `dispatcher` (this process's instance id when it runs a
    /// dispatcher, else `None`: any dispatcher may offer to it). `NOT_FOUND` for a worker
    /// that never registered.
    pub async fn touch_worker(&self, id: &str, dispatcher: Option<&str>) -> StoreResult<WorkerRecord> {
        self.retry_lock_conflicts(ConflictPath::Worker, || self.touch_worker_once(id, dispatcher)).await
    }

    async fn touch_worker_once(&self, id: &str, dispatcher: Option<&str>) -> StoreResult<WorkerRecord> {
        let writing = self.write_lock(Writer::Worker).await;
        let row =
            worker::Entity::find_by_id(id.to_owned()).one(writing.db()).await?.ok_or(StoreError::NotFound("worker"))?;
        let came_back = row.status == WorkerStatus::Offline.as_str();
        let moved = row.connected_to.as_deref() != dispatcher;
        let now = convert::to_ms(Utc::now());
        let mut active: worker::ActiveModel = row.clone().into();
        if came_back {
            active.status = sea_orm::ActiveValue::Set(WorkerStatus::Online.as_str().to_owned());
            active.version = sea_orm::ActiveValue::Set(row.version + 1);
        }
        active.last_seen_at = sea_orm::ActiveValue::Set(now);
        active.connected_to = sea_orm::ActiveValue::Set(dispatcher.map(str::to_owned));
        active.updated_at = sea_orm::ActiveValue::Set(now);
        let record = convert::worker_from_row(sea_orm::ActiveModelTrait::update(active, writing.db()).await?)?;
        if came_back || moved {
            self.roster.changed();
            self.dispatch_signal.notify_one();
        }
        Ok(record)
    }

    /// `ONLINE` workers seen since `cutoff` that `dispatcher` may offer to, with free
    /// capacity or not (the matcher keeps them between rounds and counts their slots):
    /// those whose `assignments` stream it holds, and those no dispatcher holds (their
    /// stream is on a process without a dispatcher). A worker held by another dispatcher
    /// is that dispatcher's alone, so two never plan against one worker's capacity.
    pub async fn dispatcher_workers(&self, cutoff: DateTime<Utc>, dispatcher: &str) -> StoreResult<Vec<WorkerRecord>> {
        let rows = dispatcher_workers_query(cutoff, dispatcher).all(&self.db).await?;
        rows.into_iter().map(convert::worker_from_row).collect()
    }

    /// Up to `limit` `QUEUED` tasks of `queues` last changed before `cutoff`, in dispatch
    /// order: what a dispatcher with idle workers takes over from dispatchers that hold
    /// tasks but no free worker for them.
    pub async fn queued_tasks_in(&self, queues: &[&str], cutoff: DateTime<Utc>, limit: u64) -> StoreResult<Vec<Task>> {
        if queues.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let rows = task::Entity::find()
            .filter(task::Column::Status.eq(TaskStatus::Queued.as_str()))
            .filter(task::Column::Queue.is_in(shape::padded(queues.iter().copied())))
            .filter(task::Column::UpdatedAt.lt(convert::to_ms(cutoff)))
            .order_by_desc(task::Column::Priority)
            .order_by_asc(task::Column::RunAt)
            .order_by_asc(task::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(convert::task_from_row).collect()
    }

    /// The tasks worker `id` holds: offered (`ASSIGNED`) or running (`RUNNING`: accepted,
    /// or started by the offer for a worker that takes its offers as they come), in
    /// dispatch order (priority desc, `runAt` asc, id asc). The `assignments` stream
    /// decides which of them are offers to deliver.
    pub async fn offers_for(&self, id: &str) -> StoreResult<Vec<Task>> {
        let rows = offers_for_query(id).all(&self.db).await?;
        rows.into_iter().map(convert::task_from_row).collect()
    }

    /// Up to `limit` `QUEUED` tasks last changed before `cutoff`, in dispatch order
    /// (for the matcher's start-up and periodic reconciliation).
    pub async fn queued_tasks(&self, cutoff: DateTime<Utc>, limit: u64) -> StoreResult<Vec<Task>> {
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

    /// The settings of each queue named (defaults for queues never configured), at most
    /// [`super::QUEUE_SETTINGS_TTL`] old (see `settings`).
    pub async fn queue_settings_many<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> StoreResult<HashMap<String, QueueSettings>> {
        self.settings.get_many(&self.db, names).await
    }
}

/// The query of [`Store::offers_for`]: it reads through `idx_tasks_worker_status`, the
/// worker's `ASSIGNED` and `RUNNING` tasks, not every task it ever held.
pub(super) fn offers_for_query(id: &str) -> sea_orm::Select<task::Entity> {
    task::Entity::find()
        .filter(task::Column::WorkerId.eq(id))
        .filter(task::Column::Status.is_in([TaskStatus::Assigned.as_str(), TaskStatus::Running.as_str()]))
        .order_by_desc(task::Column::Priority)
        .order_by_asc(task::Column::RunAt)
        .order_by_asc(task::Column::Id)
        .limit(1_000)
}

/// The change that makes `offer` of `before` (`None` when the task is not `QUEUED`): an
/// offer until `expires_at`, or, for a worker that takes its offers as they come, a start
/// under the offer's lease.
fn planned_offer(
    offer: &PlannedOffer,
    before: Task,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Option<(Task, Transition)> {
    let (worker_id, lease_token) = (offer.worker_id.clone(), LeaseToken::generate());
    let command = match offer.lease {
        Some(lease) => Command::Start { worker_id, lease_token, lease_expires_at: now + lease },
        None => Command::Offer { worker_id, lease_token, expires_at },
    };
    let transition = machine::transition(&before, command, now).ok()?;
    Some((before, transition))
}

/// Locks the rows of the `limited` queues (MySQL: `FOR UPDATE`, in name order; SQLite:
/// the write gate is held) and reads each one's room: `maxConcurrency` less its offered
/// and running tasks, and its shared rate bucket refilled to `now_ms`. A queue without a
/// row has no limits.
async fn lock_rooms(
    txn: &DatabaseTransaction,
    limited: &BTreeSet<&str>,
    now_ms: i64,
) -> Result<BTreeMap<String, Room>, DbErr> {
    if limited.is_empty() {
        return Ok(BTreeMap::new());
    }
    let select = queue::Entity::find()
        .filter(queue::Column::Name.is_in(shape::padded(limited.iter().copied())))
        .order_by_asc(queue::Column::Name);
    let rows = if txn.get_database_backend() == DbBackend::MySql {
        select.lock(LockType::Update).all(txn).await?
    } else {
        select.all(txn).await?
    };
    let capped: Vec<&str> = rows.iter().filter(|r| r.max_concurrency.is_some()).map(|r| r.name.as_str()).collect();
    let active = active_counts(txn, &capped).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let concurrency = row
                .max_concurrency
                .map(|max| u32::try_from(max).unwrap_or(0).saturating_sub(active.get(&row.name).copied().unwrap_or(0)));
            let rate = row.rate_limit_per_second.filter(|rate| *rate > 0.0).map(|rate| {
                let stored = match (row.rate_tokens, row.rate_refilled_at) {
                    (Some(tokens), Some(at_ms)) => RateBucket { tokens, at_ms },
                    _ => RateBucket::full(rate, now_ms),
                };
                (rate, stored.refilled(rate, now_ms))
            });
            (row.name.clone(), Room { concurrency, rate, taken: 0 })
        })
        .collect())
}

/// The planned offers that fit their queue's room, in the order given (the matcher's
/// dispatch order), and the indexes of those held back with the limit that held them.
#[allow(clippy::type_complexity)]
fn fit(
    planned: &[Option<(Task, Transition)>],
    rooms: &mut BTreeMap<String, Room>,
) -> (Vec<Option<(Task, Transition)>>, Vec<(usize, &'static str)>) {
    for room in rooms.values_mut() {
        room.taken = 0;
    }
    let mut held_back = Vec::new();
    let fitting = planned
        .iter()
        .enumerate()
        .map(|(i, offer)| {
            let (before, _) = offer.as_ref()?;
            match rooms.get_mut(&before.queue).map(Room::take) {
                Some(Err(limit)) => {
                    held_back.push((i, limit));
                    None
                }
                _ => offer.clone(),
            }
        })
        .collect();
    (fitting, held_back)
}

/// Offered and running tasks per queue, for the queues named.
async fn active_counts<C: sea_orm::ConnectionTrait>(conn: &C, queues: &[&str]) -> Result<HashMap<String, u32>, DbErr> {
    if queues.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i64)> = task::Entity::find()
        .select_only()
        .column(task::Column::Queue)
        .column_as(task::Column::Id.count(), "n")
        .filter(task::Column::Status.is_in([TaskStatus::Assigned.as_str(), TaskStatus::Running.as_str()]))
        .filter(task::Column::Queue.is_in(shape::padded(queues.iter().copied())))
        .group_by(task::Column::Queue)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(|(q, n)| (q, u32::try_from(n).unwrap_or(u32::MAX))).collect())
}

/// The offers of `planned` that were decided: `(index, task before, its change)`.
fn decided(planned: &[Option<(Task, Transition)>]) -> Vec<(usize, &Task, &Transition)> {
    planned.iter().enumerate().filter_map(|(i, p)| p.as_ref().map(|(before, t)| (i, before, t))).collect()
}

/// Transactions a round's offers are tried in, at most; after that its tasks wait for the
/// matcher's next round.
const OFFER_ATTEMPTS: u32 = 3;

/// What making a round's offers all at once came to.
#[derive(Debug)]
enum AtOnce {
    /// Every offer made, `(index, outcome)`.
    Made(Vec<(usize, OfferOutcome)>),
    /// A task changed since it was read: nothing may be kept.
    TaskChanged,
    /// A worker has no room for its share: nothing may be kept.
    NoRoom,
}

/// The outcome of each offer of `planned` (by index) that was decided, made all at once:
/// conditional updates of every task (rows locked in task-id order), then the
/// reservation of every worker's share (rows locked in worker-id order), each one
/// statement per 32 rows. Offers not listed were never planned. Anything but
/// [`AtOnce::Made`] leaves the transaction to be rolled back.
async fn offer_at_once(
    txn: &DatabaseTransaction,
    offers: &[PlannedOffer],
    planned: &[Option<(Task, Transition)>],
    now: i64,
    dispatcher: Option<&str>,
) -> Result<AtOnce, DbErr> {
    let mut order = decided(planned);
    order.sort_by_key(|(_, before, _)| before.id);
    let rows: Vec<(&Task, &Transition)> = order.iter().map(|(_, before, transition)| (*before, *transition)).collect();
    if !update_all_if_unchanged(txn, &rows).await? {
        return Ok(AtOnce::TaskChanged);
    }
    let mut made = Vec::with_capacity(order.len());
    let mut shares: BTreeMap<&str, i64> = BTreeMap::new();
    for (i, _, transition) in order {
        *shares.entry(offers[i].worker_id.as_str()).or_default() += 1;
        made.push((i, OfferOutcome::Offered(Box::new(transition.task.clone()))));
    }
    if !reserve_slots(txn, &shares, now, dispatcher).await? {
        return Ok(AtOnce::NoRoom);
    }
    Ok(AtOnce::Made(made))
}

/// Marks the offers of `fitting` whose task is no longer at the version planned.
async fn mark_raced(
    db: &impl ConnectionTrait,
    fitting: &[Option<(Task, Transition)>],
    raced: &mut [bool],
) -> Result<(), DbErr> {
    let ids = decided(fitting).into_iter().map(|(_, before, _)| before.id.to_string());
    let rows: Vec<(String, i32)> = task::Entity::find()
        .select_only()
        .column(task::Column::Id)
        .column(task::Column::Version)
        .filter(task::Column::Id.is_in(shape::padded(ids)))
        .into_tuple()
        .all(db)
        .await?;
    let versions: HashMap<String, i32> = rows.into_iter().collect();
    for (i, before, _) in decided(fitting) {
        raced[i] = versions.get(&before.id.to_string()).copied() != i32::try_from(before.version).ok();
    }
    Ok(())
}

/// Marks the offers of `fitting` beyond their worker's free capacity (all of a worker's
/// when it is not `ONLINE`), keeping each worker's first offers in plan order.
async fn mark_no_room(
    db: &impl ConnectionTrait,
    offers: &[PlannedOffer],
    fitting: &[Option<(Task, Transition)>],
    no_room: &mut [bool],
    dispatcher: Option<&str>,
) -> Result<(), DbErr> {
    let order = decided(fitting);
    let ids = order.iter().map(|(i, _, _)| offers[*i].worker_id.clone());
    let rows = worker::Entity::find().filter(worker::Column::Id.is_in(shape::padded(ids))).all(db).await?;
    let mut free: HashMap<String, i64> = rows
        .into_iter()
        .map(|w| {
            let online = w.status == WorkerStatus::Online.as_str();
            let ours = dispatcher.is_none() || w.connected_to.is_none() || w.connected_to.as_deref() == dispatcher;
            (w.id, if online && ours { i64::from(w.capacity) - i64::from(w.active) } else { 0 })
        })
        .collect();
    for (i, _, _) in order {
        let left = free.entry(offers[i].worker_id.clone()).or_insert(0);
        if *left > 0 {
            *left -= 1;
        } else {
            no_room[i] = true;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use taskwire_domain::{CreateTaskInput, NewTask, WorkerRegistration};

    use super::*;
    use crate::{CreateMode, testing::test_store};

    async fn queued(store: &Store, n: usize) -> Vec<Task> {
        let inputs = (0..n)
            .map(|_| {
                let input = CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
                NewTask::parse(input, "alice", Utc::now()).expect("valid input")
            })
            .collect();
        let outcomes = store.create_tasks(inputs, CreateMode::AllOrNothing, None).await.expect("created");
        outcomes
            .into_iter()
            .map(|o| match o {
                crate::CreateOutcome::Created(task) => task,
                other => panic!("created, not {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn one_transaction_of_offers_commits_those_that_fit_and_rolls_back_only_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let registration = WorkerRegistration::parse("w", &["q".to_owned()], 1).expect("registration");
        store.register_worker("w1", &registration).await.expect("registered");
        let tasks = queued(&store, 3).await;
        let cancel = |t: &Task| Ok(machine::transition(t, Command::Cancel { reason: None }, Utc::now())?);
        store.transition(tasks[1].id, None, cancel).await.expect("cancelled");
        let offers: Vec<PlannedOffer> = tasks
            .iter()
            .map(|t| PlannedOffer { id: t.id, worker_id: "w1".into(), traceparent: None, lease: None })
            .collect();

        let outcomes =
            store.offer_many(&offers, &[], Utc::now() + chrono::Duration::seconds(10)).await.expect("offers").outcomes;

        assert!(matches!(outcomes[0], OfferOutcome::Offered(_)), "the first fits: {outcomes:?}");
        assert_eq!(outcomes[1], OfferOutcome::NotQueued, "a cancelled task is not offered");
        assert_eq!(outcomes[2], OfferOutcome::WorkerUnavailable, "capacity 1 is used up");
        let after = store.tasks_by_ids(&[tasks[0].id, tasks[2].id]).await.expect("read");
        let by_id: HashMap<TaskId, &Task> = after.iter().map(|t| (t.id, t)).collect();
        assert_eq!(by_id[&tasks[0].id].status, TaskStatus::Assigned);
        assert_eq!(by_id[&tasks[0].id].last_seq, 2, "the offer's event is written");
        let untouched = by_id[&tasks[2].id];
        assert_eq!((untouched.status, untouched.version), (TaskStatus::Queued, tasks[2].version), "rolled back alone");
        assert_eq!(store.events_after(tasks[2].id, 0, 10).await.expect("events").len(), 1, "no event for it");
        let worker = store.workers_by_ids(&["w1".to_owned()]).await.expect("worker");
        assert_eq!(worker[0].active, 1, "exactly one slot reserved");
    }

    /// An offer with a lease starts its task (`RUNNING`, an attempt, the lease from now)
    /// in the same transaction as a plain offer beside it, each taking a worker slot, and
    /// a queue's `maxConcurrency` counts both.
    #[tokio::test]
    async fn started_and_plain_offers_share_one_round_and_the_queue_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let registration = WorkerRegistration::parse("w", &["q".to_owned()], 4).expect("registration");
        store.register_worker("w1", &registration).await.expect("registered");
        limited_queue(&store, None, Some(2)).await;
        let tasks = queued(&store, 3).await;
        let lease = chrono::Duration::seconds(30);
        let offers: Vec<PlannedOffer> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| PlannedOffer {
                id: t.id,
                worker_id: "w1".into(),
                traceparent: None,
                lease: (i != 1).then_some(lease),
            })
            .collect();

        let before = Utc::now();
        let made = store.offer_many(&offers, &["q"], before + chrono::Duration::seconds(10)).await.expect("offers");

        assert!(
            matches!(made.outcomes[0], OfferOutcome::Offered(_))
                && matches!(made.outcomes[1], OfferOutcome::Offered(_))
        );
        assert_eq!(made.outcomes[2], OfferOutcome::QueueLimited, "the cap of 2 counts the started offer");
        let after = store.tasks_by_ids(&[tasks[0].id, tasks[1].id]).await.expect("read");
        let by_id: HashMap<TaskId, &Task> = after.iter().map(|t| (t.id, t)).collect();
        let started = by_id[&tasks[0].id];
        assert_eq!((started.status, started.attempts), (TaskStatus::Running, 1), "started: one attempt");
        assert!(started.lease_expires_at.is_some_and(|at| at >= before + lease - chrono::Duration::seconds(1)));
        assert_eq!((by_id[&tasks[1].id].status, by_id[&tasks[1].id].attempts), (TaskStatus::Assigned, 0));
        let events = store.events_after(tasks[0].id, 0, 10).await.expect("events");
        let statuses: Vec<_> = events.iter().map(|e| (e.previous_status, e.status)).collect();
        assert_eq!(statuses, [(None, TaskStatus::Queued), (Some(TaskStatus::Queued), TaskStatus::Running)]);
        let worker = store.workers_by_ids(&["w1".to_owned()]).await.expect("worker");
        assert_eq!(worker[0].active, 2, "a slot each");
    }

    /// The offers of one round are announced (events, listeners, and so the offers a
    /// worker receives) in the matcher's order, which puts higher priorities first, not
    /// in the task-id order their rows are locked in.
    #[tokio::test]
    async fn offers_are_announced_in_the_order_planned_not_the_lock_order() {
        #[derive(Debug, Default)]
        struct Heard(std::sync::Mutex<Vec<TaskId>>);
        impl crate::CommitListener for Heard {
            fn committed(&self, change: &machine::Transition, _: Option<&str>) {
                if change.task.status == TaskStatus::Assigned {
                    self.0.lock().expect("not poisoned").push(change.task.id);
                }
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let (tasks, mut offers) = workers_and_offers(&store, 1, 4, 4).await;
        // Planned against id order, as a priority order can be.
        offers.sort_by_key(|offer| std::cmp::Reverse(offer.id));
        let heard = std::sync::Arc::new(Heard::default());
        store.subscribe(heard.clone());

        let outcomes =
            store.offer_many(&offers, &[], Utc::now() + chrono::Duration::seconds(10)).await.expect("offers").outcomes;

        assert!(outcomes.iter().all(|o| matches!(o, OfferOutcome::Offered(_))), "{outcomes:?}");
        let planned: Vec<TaskId> = offers.iter().map(|offer| offer.id).collect();
        assert_ne!(planned, tasks.iter().map(|t| t.id).collect::<Vec<_>>(), "the plan is not in id order");
        assert_eq!(*heard.0.lock().expect("not poisoned"), planned, "announced as planned");
    }

    /// Workers `w1` … `w<workers>` (each of `capacity`) on `store`, and `n` queued tasks,
    /// with offers of them to the workers in turn.
    async fn workers_and_offers(
        store: &Store,
        workers: usize,
        capacity: i64,
        n: usize,
    ) -> (Vec<Task>, Vec<PlannedOffer>) {
        let registration = WorkerRegistration::parse("w", &["q".to_owned()], capacity).expect("registration");
        for w in 1..=workers {
            store.register_worker(&format!("w{w}"), &registration).await.expect("registered");
        }
        let tasks = queued(store, n).await;
        let offers = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| PlannedOffer {
                id: t.id,
                worker_id: format!("w{}", 1 + i % workers),
                traceparent: None,
                lease: None,
            })
            .collect();
        (tasks, offers)
    }

    /// [`workers_and_offers`] with two workers, on a fresh SQLite store in `dir`.
    async fn two_workers_and_offers(
        dir: &std::path::Path,
        capacity: i64,
        n: usize,
    ) -> (Store, Vec<Task>, Vec<PlannedOffer>) {
        let store = test_store(dir).await;
        let (tasks, offers) = workers_and_offers(&store, 2, capacity, n).await;
        (store, tasks, offers)
    }

    #[tokio::test]
    async fn offers_that_fit_take_one_capacity_update_for_all_workers_and_no_savepoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let (_, offers) = workers_and_offers(&store, 4, 8, 10).await;
        let before = store.stats().statements_outside_outbox();

        let outcomes =
            store.offer_many(&offers, &[], Utc::now() + chrono::Duration::seconds(10)).await.expect("offers").outcomes;

        assert!(outcomes.iter().all(|o| matches!(o, OfferOutcome::Offered(_))), "all fit: {outcomes:?}");
        // The read, the transaction's start, the tasks' update, one capacity update for
        // the four workers, the events, the commit (`DbStats` counts what the driver
        // issues). One capacity update per worker would make 3 more, and the
        // one-savepoint-each path many more.
        let statements = store.stats().statements_outside_outbox() - before;
        assert!(statements <= 6, "{statements} statements outside the outbox");
        let ids: Vec<String> = (1..=4).map(|w| format!("w{w}")).collect();
        let workers = store.workers_by_ids(&ids).await.expect("workers");
        let active: Vec<u32> = workers.iter().map(|w| w.active).collect();
        assert_eq!(active, [3, 3, 2, 2], "each worker's share reserved: {workers:?}");
    }

    /// Three workers; `w2` has room for one more task but gets two offers. The one
    /// statement reserving all the workers' shares is refused, and the offers are made
    /// one by one: only `w2`'s second offer fails.
    async fn a_worker_without_room_for_its_share_fails_only_the_offers_that_do_not_fit(store: &Store) {
        let (tasks, offers) = workers_and_offers(store, 3, 2, 6).await;
        let seed = queued(store, 1).await;
        let filler = PlannedOffer { id: seed[0].id, worker_id: "w2".into(), traceparent: None, lease: None };
        let expires = Utc::now() + chrono::Duration::seconds(10);
        store.offer_many(&[filler], &[], expires).await.expect("w2 has one slot taken");

        let outcomes = store.offer_many(&offers, &[], expires).await.expect("offers").outcomes;

        // Offers go to w1, w2, w3, w1, w2, w3.
        for (i, outcome) in outcomes.iter().enumerate() {
            match i {
                4 => assert_eq!(*outcome, OfferOutcome::WorkerUnavailable, "w2 is full by then"),
                _ => assert!(matches!(outcome, OfferOutcome::Offered(_)), "offer {i}: {outcome:?}"),
            }
        }
        let still_queued = store.tasks_by_ids(&[tasks[4].id]).await.expect("read");
        assert_eq!(still_queued[0].status, TaskStatus::Queued, "the offer that did not fit left no trace");
        let workers = store.workers_by_ids(&["w1".into(), "w2".into(), "w3".into()]).await.expect("workers");
        let active: Vec<u32> = workers.iter().map(|w| w.active).collect();
        assert_eq!(active, [2, 2, 2], "every slot reserved once, none beyond capacity: {workers:?}");
    }

    on_both_backends!(
        a_worker_without_room_for_its_share_fails_only_the_offers_that_do_not_fit,
        sqlite_a_worker_without_room_for_its_share_fails_only_the_offers_that_do_not_fit,
        mysql_a_worker_without_room_for_its_share_fails_only_the_offers_that_do_not_fit
    );

    /// More workers than one statement reserves for: their shares go in several
    /// statements (32, then 5 padded to 8) and all fit; then a worker without room in the
    /// last statement fails only its own offer; freeing all their slots goes in several
    /// statements too.
    async fn slots_of_more_workers_than_one_statement_holds(store: &Store) {
        use sea_orm::TransactionTrait;
        let workers = shape::CASE_ROWS + 5;
        let ids: Vec<String> = (1..=workers).map(|w| format!("w{w}")).collect();
        let active = |store: &Store| {
            let ids = ids.clone();
            let store = store.clone();
            async move {
                let rows = store.workers_by_ids(&ids).await.expect("workers");
                rows.into_iter().map(|w| (w.id, w.active)).collect::<HashMap<String, u32>>()
            }
        };
        let expires = Utc::now() + chrono::Duration::seconds(10);
        let (_, offers) = workers_and_offers(store, workers, 2, workers).await;
        let before = store.stats().statements_outside_outbox();

        let outcomes = store.offer_many(&offers, &[], expires).await.expect("offers").outcomes;

        assert!(outcomes.iter().all(|o| matches!(o, OfferOutcome::Offered(_))), "all fit: {outcomes:?}");
        // All at once: a handful of statements. One offer at a time would take a
        // savepoint, a task update, a reservation and a release per offer.
        let statements = store.stats().statements_outside_outbox() - before;
        assert!(statements < 20, "{statements} statements for {workers} offers");
        let after = active(store).await;
        assert!(ids.iter().all(|id| after[id] == 1), "one slot each: {after:?}");

        // The last worker drains; a second round offers each worker one more task.
        let last = ids[workers - 1].clone();
        store.drain_worker(&last).await.expect("drained");
        let tasks = queued(store, workers).await;
        let offers: Vec<PlannedOffer> = tasks
            .iter()
            .zip(&ids)
            .map(|(t, w)| PlannedOffer { id: t.id, worker_id: w.clone(), traceparent: None, lease: None })
            .collect();

        let outcomes = store.offer_many(&offers, &[], expires).await.expect("offers").outcomes;

        for (offer, outcome) in offers.iter().zip(&outcomes) {
            match offer.worker_id == last {
                true => assert_eq!(*outcome, OfferOutcome::WorkerUnavailable, "{last} drained"),
                false => assert!(matches!(outcome, OfferOutcome::Offered(_)), "{}: {outcome:?}", offer.worker_id),
            }
        }
        let after = active(store).await;
        assert!(ids.iter().all(|id| after[id] == if *id == last { 1 } else { 2 }), "{after:?}");
        let queued = store.tasks_by_ids(&[tasks[workers - 1].id]).await.expect("read");
        assert_eq!(queued[0].status, TaskStatus::Queued);

        let txn = store.db.begin().await.expect("begin");
        let everyone: BTreeMap<String, i64> = after.iter().map(|(id, n)| (id.clone(), i64::from(*n))).collect();
        super::super::tasks::release_slots(&txn, everyone, 0).await.expect("released");
        txn.commit().await.expect("commit");
        let freed = active(store).await;
        assert!(freed.values().all(|n| *n == 0), "every slot freed, none below zero: {freed:?}");
    }

    on_both_backends!(
        slots_of_more_workers_than_one_statement_holds,
        sqlite_slots_of_more_workers_than_one_statement_holds,
        mysql_slots_of_more_workers_than_one_statement_holds
    );

    #[tokio::test]
    async fn a_worker_that_drained_since_the_plan_fails_only_its_own_offers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, tasks, offers) = two_workers_and_offers(dir.path(), 4, 4).await;
        store.drain_worker("w2").await.expect("drained");

        let outcomes =
            store.offer_many(&offers, &[], Utc::now() + chrono::Duration::seconds(10)).await.expect("offers").outcomes;

        for (i, outcome) in outcomes.iter().enumerate() {
            match i % 2 {
                0 => assert!(matches!(outcome, OfferOutcome::Offered(t) if t.worker_id.as_deref() == Some("w1"))),
                _ => assert_eq!(*outcome, OfferOutcome::WorkerUnavailable, "offer {i}"),
            }
        }
        let after = store.tasks_by_ids(&tasks.iter().map(|t| t.id).collect::<Vec<_>>()).await.expect("read");
        let queued = after.iter().filter(|t| t.status == TaskStatus::Queued).count();
        assert_eq!(queued, 2, "the drained worker's tasks stay QUEUED, untouched");
        let workers = store.workers_by_ids(&["w1".to_owned(), "w2".to_owned()]).await.expect("workers");
        let active: HashMap<&str, u32> = workers.iter().map(|w| (w.id.as_str(), w.active)).collect();
        assert_eq!((active["w1"], active["w2"]), (2, 0));
    }

    fn offers_to(tasks: &[Task], worker: &str) -> Vec<PlannedOffer> {
        tasks
            .iter()
            .map(|t| PlannedOffer { id: t.id, worker_id: worker.into(), traceparent: None, lease: None })
            .collect()
    }

    async fn limited_queue(store: &Store, rate: Option<f64>, cap: Option<i64>) {
        let changes = taskwire_domain::QueueChanges {
            rate_limit_per_second: Some(rate),
            max_concurrency: Some(cap),
            ..Default::default()
        };
        let name = taskwire_domain::QueueName::parse("q").expect("queue name");
        let settings = changes.apply(QueueSettings::defaults(name)).expect("valid settings");
        store.save_queue(&settings).await.expect("saved");
        for worker in ["w1", "w2"] {
            let registration = WorkerRegistration::parse(worker, &["q".to_owned()], 10).expect("registration");
            store.register_worker(worker, &registration).await.expect("registered");
        }
    }

    fn offered(outcomes: &[OfferOutcome]) -> usize {
        outcomes.iter().filter(|o| matches!(o, OfferOutcome::Offered(_))).count()
    }

    /// Two dispatchers' offer transactions at once, for a capped queue: together they
    /// offer exactly the cap (on MySQL the second waits for the queue row, then counts
    /// the first one's offers), and the rest are held back, not failed.
    async fn concurrent_offers_never_exceed_a_queues_cap(store: &Store) {
        limited_queue(store, None, Some(3)).await;
        let tasks = queued(store, 8).await;
        let expires = Utc::now() + chrono::Duration::seconds(10);
        let (one, two) = (offers_to(&tasks[..4], "w1"), offers_to(&tasks[4..], "w2"));
        let (a, b) = tokio::join!(store.offer_many(&one, &["q"], expires), store.offer_many(&two, &["q"], expires));
        let (a, b) = (a.expect("first dispatcher"), b.expect("second dispatcher"));
        let outcomes: Vec<OfferOutcome> = a.outcomes.into_iter().chain(b.outcomes).collect();
        assert_eq!(offered(&outcomes), 3, "the cap over both: {outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| **o == OfferOutcome::QueueLimited).count(), 5);
        let limited: Vec<Limited> = a.limited.into_values().chain(b.limited.into_values()).collect();
        assert!(limited.iter().all(|l| *l == Limited::Concurrency), "{limited:?}");
        let counts = active_counts(store.connection(), &["q"]).await.expect("counted");
        assert_eq!(counts.get("q"), Some(&3));
        // Unlimited queues are not locked nor counted: a queue left out of `limited` is
        // offered as before.
        let more = queued(store, 1).await;
        let free = store.offer_many(&offers_to(&more, "w1"), &[], expires).await.expect("offers");
        assert_eq!(offered(&free.outcomes), 1, "not named as limited, not limited");
    }

    on_both_backends!(
        concurrent_offers_never_exceed_a_queues_cap,
        concurrent_offers_never_exceed_a_queues_cap_on_sqlite,
        concurrent_offers_never_exceed_a_queues_cap_on_mysql
    );

    /// A queue's rate bucket lives in its row: one offer transaction spends it, the next
    /// (any dispatcher's) finds it spent, and the held-back answer says when a token comes.
    async fn the_rate_bucket_is_shared_through_the_queue_row(store: &Store) {
        limited_queue(store, Some(3.0), None).await;
        let tasks = queued(store, 6).await;
        let expires = Utc::now() + chrono::Duration::seconds(30);
        let first = store.offer_many(&offers_to(&tasks[..5], "w1"), &["q"], expires).await.expect("offers");
        assert_eq!(offered(&first.outcomes), 3, "a full bucket: one second's worth");
        match first.limited.get("q") {
            Some(Limited::Rate(wait)) => {
                assert!(*wait > std::time::Duration::ZERO && *wait <= std::time::Duration::from_millis(334), "{wait:?}")
            }
            other => panic!("held back by the rate: {other:?}"),
        }
        let second = store.offer_many(&offers_to(&tasks[5..], "w2"), &["q"], expires).await.expect("offers");
        assert_eq!(offered(&second.outcomes), 0, "the bucket is shared: {:?}", second.outcomes);
        let row = queue::Entity::find_by_id("q".to_owned()).one(store.connection()).await.expect("read").expect("row");
        assert!(row.rate_tokens.is_some_and(|t| t < 1.0), "spent: {:?}", row.rate_tokens);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let later = store.offer_many(&offers_to(&tasks[5..], "w2"), &["q"], expires).await.expect("offers");
        assert_eq!(offered(&later.outcomes), 1, "refilled at the rate");
    }

    on_both_backends!(
        the_rate_bucket_is_shared_through_the_queue_row,
        the_rate_bucket_is_shared_through_the_queue_row_on_sqlite,
        the_rate_bucket_is_shared_through_the_queue_row_on_mysql
    );

    /// Workers `mine` (stream held by dispatcher `d1`), `theirs` (held by `d2`) and
    /// `nobodys` (held by none), each serving `q` with 2 slots.
    async fn workers_of_two_dispatchers(store: &Store) {
        for worker in ["mine", "theirs", "nobodys"] {
            let registration = WorkerRegistration::parse(worker, &["q".to_owned()], 2).expect("registration");
            store.register_worker(worker, &registration).await.expect("registered");
        }
        store.touch_worker("mine", Some("d1")).await.expect("held by d1");
        store.touch_worker("theirs", Some("d2")).await.expect("held by d2");
        store.touch_worker("nobodys", None).await.expect("held by no dispatcher");
    }

    /// A dispatcher sees the workers whose stream its process holds and those no
    /// dispatcher holds, never another dispatcher's.
    async fn a_dispatcher_sees_its_own_and_unheld_workers(store: &Store) {
        workers_of_two_dispatchers(store).await;
        let cutoff = Utc::now() - chrono::Duration::seconds(30);
        let ids = |workers: Vec<WorkerRecord>| workers.into_iter().map(|w| w.id).collect::<Vec<_>>();
        assert_eq!(ids(store.dispatcher_workers(cutoff, "d1").await.expect("read")), ["mine", "nobodys"]);
        assert_eq!(ids(store.dispatcher_workers(cutoff, "d2").await.expect("read")), ["nobodys", "theirs"]);
        store.touch_worker("theirs", Some("d1")).await.expect("moved to d1");
        assert_eq!(ids(store.dispatcher_workers(cutoff, "d1").await.expect("read")), ["mine", "nobodys", "theirs"]);
    }

    /// The database keeps the ownership rule: a dispatcher's offer to a worker another
    /// dispatcher holds is refused, whatever the dispatcher read of it before.
    async fn a_dispatcher_cannot_offer_to_another_dispatchers_worker(store: &Store) {
        workers_of_two_dispatchers(store).await;
        let tasks = queued(store, 3).await;
        let mut offers = offers_to(&tasks[..1], "mine");
        offers.extend(offers_to(&tasks[1..2], "theirs"));
        offers.extend(offers_to(&tasks[2..], "nobodys"));
        let expires = Utc::now() + chrono::Duration::seconds(10);

        let outcomes = store.offer_many_as(Some("d1"), &offers, &[], expires).await.expect("offers").outcomes;

        assert!(matches!(outcomes[0], OfferOutcome::Offered(_)), "{outcomes:?}");
        assert_eq!(outcomes[1], OfferOutcome::WorkerUnavailable, "d2 holds it");
        assert!(matches!(outcomes[2], OfferOutcome::Offered(_)), "{outcomes:?}");
        let theirs = store.workers_by_ids(&["theirs".to_owned()]).await.expect("read");
        assert_eq!(theirs[0].active, 0, "no slot of d2's worker taken");
        let left = store.task(tasks[1].id).await.expect("read").expect("exists");
        assert_eq!(left.status, TaskStatus::Queued);
    }

    on_both_backends!(
        a_dispatcher_cannot_offer_to_another_dispatchers_worker,
        a_dispatcher_cannot_offer_to_another_dispatchers_worker_on_sqlite,
        a_dispatcher_cannot_offer_to_another_dispatchers_worker_on_mysql
    );

    on_both_backends!(
        a_dispatcher_sees_its_own_and_unheld_workers,
        a_dispatcher_sees_its_own_and_unheld_workers_on_sqlite,
        a_dispatcher_sees_its_own_and_unheld_workers_on_mysql
    );

    /// A matcher's read of its workers goes through `(status, connected_to)`, reading its
    /// own and the unheld workers, not every worker of every process.
    #[tokio::test]
    async fn a_dispatchers_read_of_its_workers_uses_the_dispatcher_index_on_mysql() {
        use sea_orm::{ConnectionTrait, QueryTrait, Statement};
        assert_eq!(WORKERS_DISPATCHER_INDEX, taskwire_migration::WORKERS_DISPATCHER_INDEX);
        let Some(store) =
            crate::testing::mysql_test_store("a_dispatchers_read_of_its_workers_uses_the_dispatcher_index_on_mysql")
                .await
        else {
            return;
        };
        // 200 workers held by 4 dispatchers: enough that, unhinted, MariaDB reads all 200
        // (through the primary key or `(status, last_seen_at)`) rather than d1's 50.
        let rows: Vec<String> = (0..200)
            .map(|i| format!("('w{i:03}', 'n', '[\"q\"]', 4, 0, 'ONLINE', 1000, 1, 0, 0, 'd{}')", i % 4))
            .collect();
        let insert = format!(
            "INSERT INTO workers (id, name, queues, capacity, active, status, last_seen_at, version, created_at, \
             updated_at, connected_to) VALUES {}",
            rows.join(", ")
        );
        store.connection().execute_unprepared(&insert).await.expect("workers");
        store.connection().execute_unprepared("ANALYZE TABLE workers").await.expect("statistics");
        let query = dispatcher_workers_query(Utc::now(), "d1").build(sea_orm::DbBackend::MySql);
        let explain = Statement::from_sql_and_values(
            sea_orm::DbBackend::MySql,
            format!("EXPLAIN {}", query.sql),
            query.values.map(|v| v.0).unwrap_or_default(),
        );
        let plan = store.connection().query_one_raw(explain).await.expect("explain").expect("a plan row");
        let key: Option<String> = plan.try_get("", "key").expect("the key column");
        let access: String = plan.try_get("", "type").expect("the type column");
        assert_eq!(key.as_deref(), Some(WORKERS_DISPATCHER_INDEX), "{}", query.sql);
        assert_eq!(access, "ref_or_null", "its own workers and the unheld ones, by key");
    }
}
