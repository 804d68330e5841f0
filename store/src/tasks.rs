//! Task reads and writes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder, QuerySelect, QueryTrait, SqlErr, Statement, TransactionTrait,
};
use taskwire_domain::{
    DomainError, EnvelopeType, MaxAttempts, NewTask, QueueSettings, TaskEnvelope, TaskId, TaskStatus,
    machine::{self, Effect, Transition},
    task::{Task, TaskEvent},
};
use taskwire_entity::{outbox, task, task_event};

use super::{
    ConflictPath, Store, Writer, Writing,
    coalesce::{Decide, PendingTransition, Step},
    convert, shape,
    shape::Writes,
};
use crate::error::{StoreError, StoreResult};

/// How often a conditional update is retried after losing an optimistic-lock race.
const MAX_OPTIMISTIC_RETRIES: usize = 5;

/// Which tasks a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskScope {
    /// Operators and admins: every task.
    All,
    /// Tasks created by `created_by` or leased to `worker_id` (either may be absent).
    Restricted {
        /// The caller's subject, when it has the client role.
        created_by: Option<String>,
        /// The caller's subject, when it has the worker role.
        worker_id: Option<String>,
    },
}

/// A page request for [`Store::list_tasks`]. Results are ordered newest first (id desc),
/// or oldest first with `oldest_first`.
#[derive(Debug, Clone)]
pub struct TaskListQuery {
    /// Visibility.
    pub scope: TaskScope,
    /// Only these statuses (empty: any).
    pub statuses: Vec<TaskStatus>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only tasks created by this subject.
    pub created_by: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Exclusive cursor: only tasks older than this one.
    pub after: Option<TaskId>,
    /// Exclusive cursor: only tasks newer than this one.
    pub before: Option<TaskId>,
    /// Order oldest first (id asc) instead of newest first.
    pub oldest_first: bool,
    /// Rows to return.
    pub limit: u64,
}

/// What happened to one input of a create batch.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// A new task was created.
    Created(Task),
    /// The idempotency key matched an earlier identical input: the original task.
    Existing(Task),
    /// The idempotency key was used before with a different input.
    Conflict,
}

/// Whether a batch fails as a whole when one of its inputs conflicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// Any idempotency conflict aborts the batch; nothing is created.
    AllOrNothing,
    /// Each input stands alone (used when independent callers' creates are coalesced).
    PerInput,
}

impl Store {
    /// One task by id, whoever may see it (callers check visibility).
    pub async fn task(&self, id: TaskId) -> StoreResult<Option<Task>> {
        let row = task::Entity::find_by_id(id.to_string()).one(&self.db).await?;
        row.map(convert::task_from_row).transpose()
    }

    /// Tasks by id; missing ids are simply absent.
    pub async fn tasks_by_ids(&self, ids: &[TaskId]) -> StoreResult<Vec<Task>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let rows = task::Entity::find()
            .filter(task::Column::Id.is_in(shape::padded(ids.iter().map(ToString::to_string))))
            .all(&self.db)
            .await?;
        rows.into_iter().map(convert::task_from_row).collect()
    }

    /// A page of tasks, newest first (or oldest first).
    pub async fn list_tasks(&self, query: &TaskListQuery) -> StoreResult<Vec<Task>> {
        let Some(condition) = list_condition(query) else {
            return Ok(vec![]);
        };
        let select = task::Entity::find().filter(condition);
        let select = if query.oldest_first {
            select.order_by_asc(task::Column::Id)
        } else {
            select.order_by_desc(task::Column::Id)
        };
        let rows = select.limit(query.limit).all(&self.db).await?;
        rows.into_iter().map(convert::task_from_row).collect()
    }

    /// How many tasks match `query` (its scope, filters and cursors; not its order or
    /// limit), counting at most `cap`: the database reads at most `cap` index entries.
    pub async fn count_tasks(&self, query: &TaskListQuery, cap: u64) -> StoreResult<u64> {
        let Some(condition) = list_condition(query) else {
            return Ok(0);
        };
        let inner =
            task::Entity::find().select_only().column(task::Column::Id).filter(condition).limit(cap).into_query();
        let count = sea_orm::sea_query::Query::select()
            .expr_as(sea_orm::sea_query::Expr::cust("COUNT(*)"), sea_orm::sea_query::Alias::new("n"))
            .from_subquery(inner, sea_orm::sea_query::Alias::new("capped"))
            .to_owned();
        let stmt = self.backend().build(&count);
        let row = self.db.query_one_raw(stmt).await?;
        let n: i64 = match row {
            Some(row) => row.try_get("", "n")?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// The WHERE clause of a task list; `None` when the scope sees no task at all.
fn list_condition(query: &TaskListQuery) -> Option<Condition> {
    let mut condition = Condition::all();
    if let TaskScope::Restricted { created_by, worker_id } = &query.scope {
        let mut visible = Condition::any();
        if let Some(creator) = created_by {
            visible = visible.add(task::Column::CreatedBy.eq(creator.as_str()));
        }
        if let Some(worker) = worker_id {
            visible = visible.add(task::Column::WorkerId.eq(worker.as_str()));
        }
        if created_by.is_none() && worker_id.is_none() {
            return None;
        }
        condition = condition.add(visible);
    }
    if !query.statuses.is_empty() {
        condition = condition.add(task::Column::Status.is_in(query.statuses.iter().map(|s| s.as_str())));
    }
    if let Some(queue) = &query.queue {
        condition = condition.add(task::Column::Queue.eq(queue.as_str()));
    }
    if let Some(kind) = &query.kind {
        condition = condition.add(task::Column::Kind.eq(kind.as_str()));
    }
    if let Some(creator) = &query.created_by {
        condition = condition.add(task::Column::CreatedBy.eq(creator.as_str()));
    }
    if let Some(after) = query.created_after {
        condition = condition.add(task::Column::CreatedAt.gte(convert::to_ms(after)));
    }
    if let Some(before) = query.created_before {
        condition = condition.add(task::Column::CreatedAt.lt(convert::to_ms(before)));
    }
    if let Some(cursor) = query.after {
        condition = condition.add(task::Column::Id.lt(cursor.to_string()));
    }
    if let Some(cursor) = query.before {
        condition = condition.add(task::Column::Id.gt(cursor.to_string()));
    }
    Some(condition)
}

impl Store {
    /// The latest `last` events of each task, oldest first, in one statement.
    pub async fn latest_events(&self, ids: &[TaskId], last: u32) -> StoreResult<HashMap<TaskId, Vec<TaskEvent>>> {
        let mut out: HashMap<TaskId, Vec<TaskEvent>> = HashMap::new();
        if ids.is_empty() || last == 0 {
            return Ok(out);
        }
        // A window function keeps the result bounded however long a task's history is.
        // MySQL 8, MariaDB 10.2+ and SQLite 3.25+ all support it.
        let ids = shape::padded(ids.iter().map(ToString::to_string));
        let placeholders = vec!["?"; ids.len()].join(", ");
        let sql = format!(
            "SELECT id, task_id, seq, status, previous_status, attempt, worker_id, message, `at` FROM (\
               SELECT e.*, ROW_NUMBER() OVER (PARTITION BY task_id ORDER BY seq DESC) AS rn \
               FROM task_events e WHERE task_id IN ({placeholders})\
             ) ranked WHERE rn <= ? ORDER BY task_id, seq"
        );
        let mut values: Vec<sea_orm::Value> = ids.into_iter().map(Into::into).collect();
        values.push(i64::from(last).into());
        let stmt = Statement::from_sql_and_values(self.backend(), sql, values);
        let rows = task_event::Model::find_by_statement(stmt).all(&self.db).await?;
        for row in rows {
            let event = convert::event_from_row(row)?;
            out.entry(event.task_id).or_default().push(event);
        }
        Ok(out)
    }

    /// Creates a batch of tasks in one transaction (multi-row inserts), honouring
    /// idempotency keys per creator. Outcomes are in input order.
    pub async fn create_tasks(
        &self,
        batch: Vec<NewTask>,
        mode: CreateMode,
        traceparent: Option<&str>,
    ) -> StoreResult<Vec<CreateOutcome>> {
        let traces = vec![traceparent; batch.len()];
        self.create_tasks_traced(batch, mode, &traces).await
    }

    /// Like [`Store::create_tasks`], with a trace context per input.
    pub(super) async fn create_tasks_traced(
        &self,
        batch: Vec<NewTask>,
        mode: CreateMode,
        traces: &[Option<&str>],
    ) -> StoreResult<Vec<CreateOutcome>> {
        let writing = self.write_lock(Writer::Create).await;
        for _ in 0..MAX_OPTIMISTIC_RETRIES {
            match self.try_create_tasks(&writing, &batch, mode, traces).await {
                // Another transaction committed the same key between our read and our
                // insert: run again, and the read will find it.
                Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    self.count_idempotency_race("retried");
                    continue;
                }
                Err(err) => return Err(err.into()),
                Ok(result) => return result,
            }
        }
        self.count_idempotency_race("exhausted");
        Err(StoreError::Conflict("too much contention on idempotency keys; retry".into()))
    }

    fn count_idempotency_race(&self, outcome: &str) {
        if let Some(metrics) = self.metrics.get() {
            metrics.idempotency_races.with_label_values(&[outcome]).inc();
        }
    }

    /// The configured `maxAttempts` of the queues of inputs that do not set their own.
    async fn queue_max_attempts(
        &self,
        txn: &DatabaseTransaction,
        batch: &[NewTask],
    ) -> StoreResult<HashMap<String, MaxAttempts>> {
        let names = batch.iter().filter(|n| n.max_attempts.is_none()).map(|n| n.queue.as_str());
        let settings = self.settings.get_many(txn, names).await?;
        Ok(settings.into_iter().filter_map(|(name, s)| Some((name, s.max_attempts?))).collect())
    }

    async fn try_create_tasks(
        &self,
        writing: &Writing<'_>,
        batch: &[NewTask],
        mode: CreateMode,
        traces: &[Option<&str>],
    ) -> Result<StoreResult<Vec<CreateOutcome>>, DbErr> {
        let txn = writing.db().begin().await?;
        let planned = match self.plan_creates(&txn, batch, traces).await? {
            Ok(planned) => planned,
            // Not a conflict to retry: the transaction is dropped (rolled back).
            Err(e) => return Ok(Err(e)),
        };
        if mode == CreateMode::AllOrNothing && planned.outcomes.contains(&CreateOutcome::Conflict) {
            txn.rollback().await?;
            return Ok(Err(DomainError::IdempotencyConflict.into()));
        }
        let mut writes = Writes::new(self.backend());
        if !planned.rows.is_empty() {
            writes.insert_all(planned.rows);
            self.history_into(&mut writes, planned.transitions.iter().map(|(t, trace)| (t, *trace)))?;
        }
        writes.run(&txn).await?;
        txn.commit().await?;
        self.after_commit(planned.transitions.iter().map(|(t, trace)| (None, t, *trace)));
        Ok(Ok(planned.outcomes))
    }

    /// Decides, inside `txn`, what a batch of creates writes: each input's outcome (a new
    /// task, the task an idempotency key already names, or a conflict), the rows to insert
    /// and the creations to record. `Ok(Err(_))` for an error that is not the database's.
    async fn plan_creates<'t>(
        &self,
        txn: &DatabaseTransaction,
        batch: &[NewTask],
        traces: &[Option<&'t str>],
    ) -> Result<StoreResult<PlannedCreates<'t>>, DbErr> {
        let now = Utc::now();
        let defaults = match self.queue_max_attempts(txn, batch).await {
            Ok(defaults) => defaults,
            Err(e) => return Ok(Err(e)),
        };
        let mut existing = existing_by_key(txn, batch).await?;

        let mut planned = PlannedCreates {
            outcomes: Vec::with_capacity(batch.len()),
            rows: Vec::with_capacity(batch.len()),
            transitions: Vec::with_capacity(batch.len()),
        };
        for (new, trace) in batch.iter().zip(traces.iter().chain(std::iter::repeat(&None))) {
            let key = new.idempotency_key.as_ref().map(|k| (new.created_by.clone(), k.as_str().to_owned()));
            if let Some((hash, task)) = key.as_ref().and_then(|k| existing.get(k)) {
                planned.outcomes.push(if *hash == new.fingerprint {
                    CreateOutcome::Existing(task.clone())
                } else {
                    CreateOutcome::Conflict
                });
                continue;
            }
            let default = defaults.get(new.queue.as_str()).copied().unwrap_or(MaxAttempts::DEFAULT);
            let transition = machine::create(new.clone(), TaskId::generate(now), default, now);
            if let Some(key) = key {
                // A repeat of the key later in this same batch resolves to this task.
                existing.insert(key, (new.fingerprint.clone(), transition.task.clone()));
            }
            planned.rows.push(convert::task_to_row(&transition.task, &new.fingerprint));
            planned.outcomes.push(CreateOutcome::Created(transition.task.clone()));
            planned.transitions.push((transition, *trace));
        }
        Ok(Ok(planned))
    }

    /// Applies a state change to one task under the optimistic lock.
    ///
    /// `decide` sees the current task and returns the transition (or an error, such as
    /// `NOT_FOUND` for a task the caller may not see). On a lost race it is called again
    /// with the fresh state.
    pub async fn transition<F>(&self, id: TaskId, traceparent: Option<&str>, decide: F) -> StoreResult<Task>
    where
        F: Fn(&Task) -> StoreResult<Transition>,
    {
        self.transition_inner(id, traceparent, false, |task, _| decide(task)).await
    }

    /// The one optimistic-lock loop behind every single-task change (`transition`,
    /// `transition_in_queue`): read, decide, conditional update with the worker
    /// slot accounting of [`apply`], history, commit; again on a lost race, and again
    /// from the start on a lock conflict (see `contention`).
    pub(super) async fn transition_inner<F>(
        &self,
        id: TaskId,
        traceparent: Option<&str>,
        with_settings: bool,
        decide: F,
    ) -> StoreResult<Task>
    where
        F: Fn(&Task, Option<&QueueSettings>) -> StoreResult<Transition>,
    {
        self.retry_lock_conflicts(ConflictPath::Transition, || {
            self.transition_inner_once(id, traceparent, with_settings, &decide)
        })
        .await
    }

    async fn transition_inner_once<F>(
        &self,
        id: TaskId,
        traceparent: Option<&str>,
        with_settings: bool,
        decide: &F,
    ) -> StoreResult<Task>
    where
        F: Fn(&Task, Option<&QueueSettings>) -> StoreResult<Transition>,
    {
        let writing = self.write_lock(Writer::Transition).await;
        for _ in 0..MAX_OPTIMISTIC_RETRIES {
            let txn = writing.db().begin().await?;
            let Some(row) = task::Entity::find_by_id(id.to_string()).one(&txn).await? else {
                return Err(StoreError::NotFound("task"));
            };
            let current = convert::task_from_row(row)?;
            let settings = match with_settings {
                true => self.settings.get_many(&txn, [current.queue.as_str()]).await?.remove(&current.queue),
                false => None,
            };
            let transition = decide(&current, settings.as_ref())?;
            match apply(&txn, &current, &transition, None).await? {
                Applied::Done => {}
                Applied::Raced => {
                    txn.rollback().await?;
                    continue;
                }
                // Only an offer leases a task, and offers go through `offer_many`; kept
                // so a future leasing transition fails cleanly instead of overbooking.
                Applied::NoCapacity => {
                    txn.rollback().await?;
                    return Err(StoreError::Conflict("the worker has no free capacity".into()));
                }
            }
            self.append_history(&txn, [(&transition, traceparent)]).await?;
            txn.commit().await?;
            self.after_commit([(Some(&current), &transition, traceparent)]);
            return Ok(transition.task);
        }
        Err(StoreError::Conflict("the task changed concurrently too many times; retry".into()))
    }

    /// Applies the transitions of a coalesced batch in one transaction: the tasks and
    /// their queues' settings are read once, each decision is applied conditionally on
    /// the version read (a task appearing twice sees its first change), and everything
    /// commits together with its history. One [`Step`] per transition, in order; an error
    /// means nothing was committed.
    ///
    /// On MySQL a batch can deadlock with another writer that locks the same task and
    /// worker rows in the other order (an offer, the reaper). InnoDB then rolls the batch
    /// back, so it is simply run again (see `contention`).
    pub(super) async fn transition_many(&self, batch: &[PendingTransition]) -> StoreResult<Vec<Step>> {
        self.retry_lock_conflicts(ConflictPath::Transition, || self.transition_many_once(batch)).await
    }

    /// The tasks of `batch` and their queues' settings, read before a batch takes the
    /// write gate (every write is conditional on the version read, so the writers queued
    /// behind the batch wait only for its writes). Tasks this process committed last are
    /// not read at all (see `recent`), unless acting on the remembered state is doubtful.
    async fn transitions_before(
        &self,
        batch: &[PendingTransition],
    ) -> StoreResult<(crate::recent::Current, HashMap<String, QueueSettings>)> {
        let mut current = self.current_tasks(batch.iter().map(|p| p.id), |_| true).await?;
        let settings = self.settings.get_many(&self.db, current.tasks.values().map(|t| t.queue.as_str())).await?;
        let doubtful: Vec<TaskId> = batch
            .iter()
            .filter(|p| current.remembered.contains(&p.id))
            .filter(|p| current.tasks.get(&p.id).is_some_and(|task| doubtful(task, &settings, &p.decide)))
            .map(|p| p.id)
            .collect();
        self.read_into(&mut current, doubtful).await?;
        Ok((current, settings))
    }

    async fn transition_many_once(&self, batch: &[PendingTransition]) -> StoreResult<Vec<Step>> {
        let (mut current, settings) = self.transitions_before(batch).await?;
        let writing = self.write_lock(Writer::Transition).await;
        if let Some(steps) =
            self.transition_all_at_once(&writing, batch, &current.tasks, &current.remembered, &settings).await?
        {
            return Ok(steps);
        }
        // One of the remembered states may be what made the batch fail at once.
        self.reread_remembered(&mut current).await?;
        let mut current = current.tasks;
        let txn = writing.db().begin().await?;
        let mut steps: Vec<Option<Step>> = (0..batch.len()).map(|_| None).collect();
        let mut made: Vec<(Task, Transition, Option<&str>)> = Vec::new();
        // Task rows are locked in id order (a stable sort keeps one task's transitions in
        // their order), as a worker's heartbeat locks its running tasks; then the worker
        // rows whose slots the batch frees, in worker-id order, as offers reserve them
        // (`offer_many`). One lock order for every writer: no deadlocks on MySQL.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].id);
        let mut releases: BTreeMap<String, i64> = BTreeMap::new();
        for i in order {
            let pending = &batch[i];
            let Some(before) = current.get(&pending.id).cloned() else {
                steps[i] = Some(Step::Failed(StoreError::NotFound("task")));
                continue;
            };
            let Some(queue) = settings.get(&before.queue) else {
                steps[i] = Some(Step::Failed(StoreError::Internal));
                continue;
            };
            let transition = match (pending.decide)(&before, queue) {
                Ok(transition) => transition,
                Err(e) => {
                    steps[i] = Some(Step::Failed(e));
                    continue;
                }
            };
            // Only a transition that takes a worker slot can fail half-way (task updated,
            // worker full); it alone needs a savepoint to undo its task update.
            let leases = !before.status.is_leased() && transition.task.status.is_leased();
            let savepoint = if leases { Some(txn.begin().await?) } else { None };
            let applied = match &savepoint {
                Some(savepoint) => apply(savepoint, &before, &transition, Some(&mut releases)).await?,
                None => apply(&txn, &before, &transition, Some(&mut releases)).await?,
            };
            steps[i] = Some(match applied {
                Applied::Done => {
                    if let Some(savepoint) = savepoint {
                        savepoint.commit().await?;
                    }
                    current.insert(pending.id, transition.task.clone());
                    made.push((before, transition.clone(), pending.traceparent.as_deref()));
                    Step::Done(Box::new(transition.task))
                }
                Applied::Raced => {
                    if let Some(savepoint) = savepoint {
                        savepoint.rollback().await?;
                    }
                    Step::Raced
                }
                Applied::NoCapacity => {
                    if let Some(savepoint) = savepoint {
                        savepoint.rollback().await?;
                    }
                    Step::Failed(StoreError::Conflict("the worker has no free capacity".into()))
                }
            });
        }
        let mut writes = Writes::new(self.backend());
        writes.extend(release_slots_statements(self.backend(), releases, convert::to_ms(Utc::now())));
        // Every index was visited once above; `Internal` cannot be reached.
        let steps = steps.into_iter().map(|step| step.unwrap_or(Step::Failed(StoreError::Internal))).collect();
        self.commit_changes(txn, writes, &made).await?;
        Ok(steps)
    }

    /// A coalesced batch applied with multi-row updates ([`update_all_if_unchanged`]) and
    /// releases of worker slots (one statement per 32 rows each), when it can be: each
    /// task appears once, none of the transitions takes a worker slot, none is refused on
    /// a `remembered` state (see `recent`: the refusal may be the memory's, a lease a
    /// heartbeat extended since), and no task changed since `current` was read. `None`
    /// (nothing written) otherwise: the caller then goes transition by transition.
    pub(super) async fn transition_all_at_once(
        &self,
        writing: &Writing<'_>,
        batch: &[PendingTransition],
        current: &HashMap<TaskId, Task>,
        remembered: &HashSet<TaskId>,
        settings: &HashMap<String, QueueSettings>,
    ) -> StoreResult<Option<Vec<Step>>> {
        let Some(plan) = AllAtOnce::plan(batch, current, remembered, settings) else {
            return Ok(None);
        };
        let txn = writing.begin_read_committed().await?;
        let mut writes = Writes::new(self.backend());
        if !plan.write(&txn, &mut writes).await? {
            txn.rollback().await?;
            return Ok(None);
        }
        let made = plan.made(batch);
        self.commit_changes(txn, writes, &made).await?;
        Ok(Some(plan.steps()))
    }

    /// Creates and workers' transitions that waited for the same committer, in one
    /// transaction: one `BEGIN`, one insert of events and one of outbox rows, one
    /// `COMMIT` for both. Only when the transitions can go all at once (the conditions of
    /// [`Store::transition_all_at_once`]); see [`Together`] for what else can happen.
    pub(super) async fn create_and_transition(
        &self,
        creates: &[NewTask],
        traces: &[Option<&str>],
        batch: &[PendingTransition],
    ) -> Together {
        let (current, settings) = match self.transitions_before(batch).await {
            Ok(read) => read,
            Err(_) => return Together::Apart,
        };
        let Some(plan) = AllAtOnce::plan(batch, &current.tasks, &current.remembered, &settings) else {
            return Together::Apart;
        };
        let writing = self.write_lock(Writer::Together).await;
        let prepared = async {
            let txn = writing.begin_read_committed().await?;
            let Ok(mut planned) = self.plan_creates(&txn, creates, traces).await? else {
                return Ok(None);
            };
            let mut writes = Writes::new(self.backend());
            if !plan.write(&txn, &mut writes).await? {
                txn.rollback().await?;
                return Ok(None);
            }
            let made = plan.made(batch);
            writes.insert_all(std::mem::take(&mut planned.rows));
            let created = planned.transitions.iter().map(|(t, trace)| (t, *trace));
            self.history_into(&mut writes, created.chain(made.iter().map(|(_, t, trace)| (t, *trace))))?;
            writes.run(&txn).await?;
            Ok::<_, DbErr>(Some((txn, planned, made)))
        };
        let (txn, planned, made) = match prepared.await {
            Ok(Some(prepared)) => prepared,
            Ok(None) => return Together::Apart,
            // Nothing is committed: the paths apart retry a lock conflict or an
            // idempotency race as they always do, and answer anything else themselves.
            Err(e) => {
                tracing::debug!(error = %e, "creates and transitions together failed; committing them apart");
                return Together::Apart;
            }
        };
        // A failed `COMMIT` may have committed all the same (the connection broke while
        // it ran): running the creates again could create them twice, so everyone gets
        // the error, as the paths apart would answer it.
        if let Err(e) = txn.commit().await {
            return Together::Failed(e.into());
        }
        self.after_commit(
            planned
                .transitions
                .iter()
                .map(|(t, trace)| (None, t, *trace))
                .chain(made.iter().map(|(before, t, trace)| (Some(before), t, *trace))),
        );
        Together::Committed(planned.outcomes, plan.steps())
    }

    /// Commits a batch of applied changes (`(before, transition, traceparent)`) with
    /// `writes` (statements that go with them, such as freed worker slots), their events
    /// and outbox rows, then tells the commit listeners. The database's own error, so
    /// that a transition batch can tell a lost deadlock (run it again) from the rest.
    pub(super) async fn commit_changes(
        &self,
        txn: DatabaseTransaction,
        mut writes: Writes,
        made: &[(Task, Transition, Option<&str>)],
    ) -> Result<(), DbErr> {
        self.history_into(&mut writes, made.iter().map(|(_, t, trace)| (t, *trace)))?;
        writes.run(&txn).await?;
        txn.commit().await?;
        self.after_commit(made.iter().map(|(before, t, trace)| (Some(before), t, *trace)));
        Ok(())
    }

    /// After changes committed (`(before, transition, traceparent)`, `before` `None` for a
    /// creation): tells the commit listeners (cache, local hub, local matcher), wakes the relay
    /// (new outbox rows) and the matcher (freed worker capacity).
    pub(super) fn after_commit<'a>(
        &self,
        changes: impl IntoIterator<Item = (Option<&'a Task>, &'a Transition, Option<&'a str>)>,
    ) {
        let listeners = self.listeners();
        let metrics = self.metrics.get();
        let (mut events, mut freed) = (false, false);
        for (before, transition, traceparent) in changes {
            self.recent.remember(&transition.task);
            for listener in listeners.iter() {
                listener.committed(transition, traceparent);
            }
            if transition.event.is_some() {
                events = true;
                if let Some(metrics) = metrics {
                    metrics.task_transitions.with_label_values(&[transition.task.status.as_str()]).inc();
                }
            }
            if let Some(holder) = before.filter(|b| b.status.is_leased() && !transition.task.status.is_leased()) {
                self.roster.freed(holder.worker_id.as_deref().unwrap_or_default());
                freed = true;
            }
        }
        if events {
            self.outbox_signal.notify_one();
        }
        if freed {
            self.dispatch_signal.notify_one();
        }
    }

    /// Appends the events and outbox rows of `transitions` (multi-row inserts).
    pub(super) async fn append_history<'a>(
        &self,
        txn: &DatabaseTransaction,
        transitions: impl IntoIterator<Item = (&'a Transition, Option<&'a str>)>,
    ) -> Result<(), DbErr> {
        let mut writes = Writes::new(self.backend());
        self.history_into(&mut writes, transitions)?;
        writes.run(txn).await
    }

    /// Adds the inserts of the events and outbox rows of `transitions` to `writes`.
    pub(super) fn history_into<'a>(
        &self,
        writes: &mut Writes,
        transitions: impl IntoIterator<Item = (&'a Transition, Option<&'a str>)>,
    ) -> Result<(), DbErr> {
        let transitions = transitions.into_iter();
        let mut events = Vec::with_capacity(transitions.size_hint().0);
        let mut messages = Vec::with_capacity(transitions.size_hint().0 * 2);
        for (t, traceparent) in transitions {
            let Some(event) = &t.event else { continue };
            events.push(convert::event_to_row(event));
            let mut kinds = vec![EnvelopeType::Status];
            kinds.extend(t.effects.iter().map(|e| match e {
                Effect::Dispatch => EnvelopeType::Dispatch,
                Effect::DeadLetter => EnvelopeType::Dead,
            }));
            for kind in kinds {
                let envelope = TaskEnvelope::new(kind, &t.task, event);
                messages.push(outbox::ActiveModel {
                    topic: Set(self.topics.for_envelope(kind)),
                    message_key: Set(t.task.id.to_string()),
                    payload: Set(serde_json::to_string(&envelope).map_err(|e| DbErr::Json(e.to_string()))?),
                    traceparent: Set(traceparent.map(str::to_owned)),
                    created_at: Set(convert::to_ms(event.at)),
                    ..Default::default()
                });
            }
        }
        writes.insert_all(events);
        writes.insert_all(messages);
        Ok(())
    }
}

/// What became of creates and transitions tried in one transaction
/// ([`Store::create_and_transition`]).
pub(super) enum Together {
    /// Committed: each create's outcome and each transition's step, in order.
    Committed(Vec<CreateOutcome>, Vec<Step>),
    /// Nothing committed, and they can go apart: the transitions could not be written all
    /// at once, a task changed since it was read, or a statement failed (a lock
    /// conflict, an idempotency race, an outage the paths apart answer themselves).
    Apart,
    /// The `COMMIT` failed, so whether anything committed is unknown: every caller gets
    /// this error.
    Failed(StoreError),
}

/// What a batch of creates writes (see [`Store::plan_creates`]).
struct PlannedCreates<'t> {
    /// One per input, in order.
    outcomes: Vec<CreateOutcome>,
    /// The new tasks' rows.
    rows: Vec<task::ActiveModel>,
    /// The creations, with each input's trace context.
    transitions: Vec<(Transition, Option<&'t str>)>,
}

/// A transition batch decided for writing all at once (see
/// [`Store::transition_all_at_once`]).
struct AllAtOnce<'b> {
    /// Per transition: its answer when decided without writing (a refusal).
    steps: Vec<Option<Step>>,
    /// `(index in the batch, state before, transition)`, in task-id order: the lock order
    /// of every writer.
    changes: Vec<(usize, &'b Task, Transition)>,
}

impl<'b> AllAtOnce<'b> {
    /// `None` when the batch cannot go all at once: a task appears twice, a transition
    /// takes a worker slot, or one is refused on a remembered state.
    fn plan(
        batch: &[PendingTransition],
        current: &'b HashMap<TaskId, Task>,
        remembered: &HashSet<TaskId>,
        settings: &HashMap<String, QueueSettings>,
    ) -> Option<AllAtOnce<'b>> {
        let mut seen = HashSet::with_capacity(batch.len());
        if !batch.iter().all(|p| seen.insert(p.id)) {
            return None;
        }
        let mut steps: Vec<Option<Step>> = Vec::with_capacity(batch.len());
        let mut changes: Vec<(usize, &Task, Transition)> = Vec::with_capacity(batch.len());
        for (i, pending) in batch.iter().enumerate() {
            let Some(before) = current.get(&pending.id) else {
                steps.push(Some(Step::Failed(StoreError::NotFound("task"))));
                continue;
            };
            let Some(queue) = settings.get(&before.queue) else {
                steps.push(Some(Step::Failed(StoreError::Internal)));
                continue;
            };
            match (pending.decide)(before, queue) {
                Ok(transition) if !before.status.is_leased() && transition.task.status.is_leased() => return None,
                Ok(transition) => {
                    changes.push((i, before, transition));
                    steps.push(None);
                }
                Err(_) if remembered.contains(&pending.id) => return None,
                Err(e) => steps.push(Some(Step::Failed(e))),
            }
        }
        changes.sort_by_key(|(_, before, _)| before.id);
        Some(AllAtOnce { steps, changes })
    }

    /// Updates the task rows (`false`, nothing usable written, when one changed since it
    /// was read) and adds the release of the freed worker slots to `writes`.
    async fn write(&self, txn: &DatabaseTransaction, writes: &mut Writes) -> Result<bool, DbErr> {
        let rows: Vec<(&Task, &Transition)> = self.changes.iter().map(|(_, before, t)| (*before, t)).collect();
        if !update_all_if_unchanged(txn, &rows).await? {
            return Ok(false);
        }
        let mut releases: BTreeMap<String, i64> = BTreeMap::new();
        for (_, before, transition) in &self.changes {
            if before.status.is_leased() && !transition.task.status.is_leased() {
                *releases.entry(before.worker_id.clone().unwrap_or_default()).or_default() += 1;
            }
        }
        let now = convert::to_ms(Utc::now());
        writes.extend(release_slots_statements(txn.get_database_backend(), releases, now));
        Ok(true)
    }

    /// The changes as `(before, transition, traceparent)`, for history and listeners.
    fn made<'p>(&self, batch: &'p [PendingTransition]) -> Vec<(Task, Transition, Option<&'p str>)> {
        self.changes
            .iter()
            .map(|(i, before, transition)| ((*before).clone(), transition.clone(), batch[*i].traceparent.as_deref()))
            .collect()
    }

    /// Every transition's answer once the changes committed.
    fn steps(self) -> Vec<Step> {
        let mut steps = self.steps;
        for (i, _, transition) in self.changes {
            steps[i] = Some(Step::Done(Box::new(transition.task)));
        }
        // Every index got its step above; `Internal` cannot be reached.
        steps.into_iter().map(|step| step.unwrap_or(Step::Failed(StoreError::Internal))).collect()
    }
}

/// Whether a batch must not act on `before`, a remembered state (see `recent`): its
/// decision fails (a heartbeat elsewhere may have extended a lease that looks lapsed
/// here), or it would write the remembered lease end back over one a heartbeat extended.
fn doubtful(before: &Task, settings: &HashMap<String, QueueSettings>, decide: &Decide) -> bool {
    let Some(queue) = settings.get(&before.queue) else { return true };
    match decide(before, queue) {
        Ok(next) => before.status.is_leased() && next.task.lease_expires_at == before.lease_expires_at,
        Err(_) => true,
    }
}

/// What applying one transition inside a transaction found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    /// The row (and the worker's capacity count, where it changes) is updated.
    Done,
    /// The row's version moved since it was read: roll back and read again.
    Raced,
    /// The transition leases the task to a worker that is not `ONLINE` or has no free
    /// capacity: roll back.
    NoCapacity,
}

/// Updates the task row conditionally on the version `before` was read at, and keeps
/// the worker's `active` count in step (README, Task lifecycle): a transition that
/// leases the task reserves a slot with a conditional update (`active < capacity`, worker
/// `ONLINE`); one that ends a lease frees the slot, in the same transaction: at once, or,
/// with `releases`, counted there for [`release_slots`] to free at the end.
pub(super) async fn apply(
    txn: &DatabaseTransaction,
    before: &Task,
    next: &Transition,
    releases: Option<&mut BTreeMap<String, i64>>,
) -> Result<Applied, DbErr> {
    if !update_if_unchanged(txn, before, next).await? {
        return Ok(Applied::Raced);
    }
    let now = convert::to_ms(next.task.updated_at);
    match (before.status.is_leased(), next.task.status.is_leased()) {
        (false, true) => {
            let worker_id = next.task.worker_id.as_deref().unwrap_or_default();
            if !reserve_slots(txn, &[(worker_id, 1)].into(), now, None).await? {
                return Ok(Applied::NoCapacity);
            }
        }
        (true, false) => {
            let worker_id = before.worker_id.clone().unwrap_or_default();
            match releases {
                Some(releases) => *releases.entry(worker_id).or_default() += 1,
                None => release_slots(txn, [(worker_id, 1)].into(), now).await?,
            }
        }
        _ => {}
    }
    Ok(Applied::Done)
}

/// Writes `next` over the task row if the row is still at the version `before` was read
/// at; `false` (nothing written) when another writer changed it meanwhile.
pub(super) async fn update_if_unchanged(
    txn: &DatabaseTransaction,
    before: &Task,
    next: &Transition,
) -> Result<bool, DbErr> {
    let updated = task::Entity::update_many()
        .set(convert::task_changes(&next.task))
        .filter(task::Column::Id.eq(before.id.to_string()))
        .filter(task::Column::Version.eq(before.version as i32))
        .exec(txn)
        .await?;
    Ok(updated.rows_affected == 1)
}

/// Reserves slots of several workers at once: `n` slots of each worker of `shares`,
/// conditionally on that worker being `ONLINE` with room for all `n` of them (`active + n
/// <= capacity`) and, for a `dispatcher`, held by it or by none, in one statement per
/// [`shape::CASE_ROWS`] workers. `true` when every worker had room; `false` when one did
/// not, and then others may have been reserved: the caller rolls the transaction (or
/// savepoint) back. The rows are locked in worker-id order (the primary key's), the lock
/// order of every writer.
pub(super) async fn reserve_slots(
    txn: &DatabaseTransaction,
    shares: &BTreeMap<&str, i64>,
    now: i64,
    dispatcher: Option<&str>,
) -> Result<bool, DbErr> {
    use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait};
    use taskwire_entity::worker;
    let shares: Vec<(&str, i64)> = shares.iter().map(|(id, n)| (*id, *n)).collect();
    for distinct in shares.chunks(shape::CASE_ROWS) {
        // A repeated (padding) arm is never reached: the first match wins.
        let chunk = shape::padded(distinct.iter().copied());
        let mut taken = CaseStatement::new();
        for (worker_id, n) in &chunk {
            taken = taken.case(Expr::col(worker::Column::Id).eq(*worker_id), Expr::col(worker::Column::Active).add(*n));
        }
        // Every row the statement reaches has an arm; the fallback only keeps the
        // expression total.
        let taken = taken.finally(Expr::col(worker::Column::Active));
        let mut update = worker::Entity::update_many()
            .col_expr(worker::Column::Active, taken.clone().into())
            .col_expr(worker::Column::UpdatedAt, Expr::value(now))
            .filter(worker::Column::Id.is_in(chunk.iter().map(|(id, _)| *id)))
            .filter(worker::Column::Status.eq(taskwire_domain::WorkerStatus::Online.as_str()))
            .filter(Expr::expr(taken).lte(Expr::col(worker::Column::Capacity)));
        if let Some(dispatcher) = dispatcher {
            // Only workers this dispatcher holds, or no dispatcher does.
            update = update.filter(
                Condition::any()
                    .add(worker::Column::ConnectedTo.is_null())
                    .add(worker::Column::ConnectedTo.eq(dispatcher)),
            );
        }
        let reserved = txn.execute_raw(update.build(txn.get_database_backend())).await?;
        if reserved.rows_affected() != distinct.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Frees `n` slots of each worker of `releases` (never below 0), in one statement per
/// [`shape::CASE_ROWS`] workers: the rows are locked in worker-id order (the primary
/// key's), the lock order of every writer.
pub(super) async fn release_slots(
    txn: &DatabaseTransaction,
    releases: BTreeMap<String, i64>,
    now: i64,
) -> Result<(), DbErr> {
    use sea_orm::ConnectionTrait;
    for statement in release_slots_statements(txn.get_database_backend(), releases, now) {
        txn.execute_raw(statement).await?;
    }
    Ok(())
}

/// The statements [`release_slots`] runs; none when nothing is released.
pub(super) fn release_slots_statements(
    backend: sea_orm::DbBackend,
    releases: BTreeMap<String, i64>,
    now: i64,
) -> Vec<Statement> {
    use sea_orm::{
        QueryTrait,
        sea_query::{CaseStatement, Expr, ExprTrait},
    };
    use taskwire_entity::worker;
    let releases: Vec<(String, i64)> = releases.into_iter().collect();
    let statement = |chunk: Vec<(String, i64)>| {
        // A repeated (padding) arm is never reached: the first match wins.
        let mut freed = CaseStatement::new();
        for (worker_id, n) in &chunk {
            let less = CaseStatement::new()
                .case(Expr::col(worker::Column::Active).gte(*n), Expr::col(worker::Column::Active).sub(*n))
                .finally(0);
            freed = freed.case(Expr::col(worker::Column::Id).eq(worker_id.as_str()), less);
        }
        worker::Entity::update_many()
            .col_expr(worker::Column::Active, freed.finally(Expr::col(worker::Column::Active)).into())
            .col_expr(worker::Column::UpdatedAt, Expr::value(now))
            .filter(worker::Column::Id.is_in(chunk.into_iter().map(|(id, _)| id)))
            .filter(worker::Column::Active.gt(0))
            .build(backend)
    };
    shape::case_chunks(&releases).map(statement).collect()
}

/// [`update_if_unchanged`] for many tasks (each at most once), in one statement per
/// [`shape::CASE_ROWS`] tasks: each row is written only if it is still at the version its
/// `before` was read at. `true` when every row was written; `false` when any was not, and
/// then the caller must roll back (a statement does not say which rows it wrote) and go
/// row by row.
///
/// Not a `UNION ALL` derived table joined to `tasks`: typed by its parameters, MariaDB
/// silently truncates long `result` texts in it, and typed by a query on `tasks` it goes
/// through on-disk temporary tables. The tests below would catch the truncation.
pub(super) async fn update_all_if_unchanged(
    txn: &DatabaseTransaction,
    changes: &[(&Task, &Transition)],
) -> Result<bool, DbErr> {
    use sea_orm::ConnectionTrait;
    for chunk in changes.chunks(shape::CASE_ROWS) {
        let updated = txn.execute_raw(case_update(txn.get_database_backend(), chunk)?).await?;
        if updated.rows_affected() != chunk.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The statement of [`update_all_if_unchanged`] for one chunk of `rows` (at most
/// [`shape::CASE_ROWS`], padded to a power of two by repeating the last row: a repeated
/// arm or condition changes nothing, the first match wins):
///
/// ```sql
/// UPDATE `tasks` SET `status` = CASE WHEN `id` = ? THEN ? … ELSE `status` END, …
/// WHERE `id` IN (?, …) AND `version` = CASE WHEN `id` = ? THEN ? … END
/// ```
///
/// Written as text, not through sea-query's expression trees: with a column's arms for
/// every row, building and dropping those trees is a large share of the server's CPU
/// under dispatch load. Both backends accept the backquoted names. `id IN
/// (…)` is a primary-key lookup on every backend, so MySQL locks exactly these rows (an
/// `OR` of `id = ? AND version = ?` pairs can be planned as a scan that locks more, and
/// can deadlock with creates); the version check is per row.
fn case_update(backend: sea_orm::DbBackend, rows: &[(&Task, &Transition)]) -> Result<Statement, DbErr> {
    use std::fmt::Write;

    use sea_orm::{ActiveModelTrait, IdenStatic, Iterable, Value};
    let padded = rows.len().next_power_of_two();
    let row = |i: usize| i.min(rows.len() - 1);
    let ids: Vec<Value> = rows.iter().map(|(before, _)| Value::from(before.id.to_string())).collect();
    let mut models: Vec<task::ActiveModel> = rows.iter().map(|(_, next)| convert::task_changes(&next.task)).collect();
    // The columns `convert::task_changes` sets (the same for every row).
    let columns: Vec<task::Column> =
        task::Column::iter().filter(|c| models.first().is_some_and(|m| m.get(*c).is_set())).collect();
    let mut sql = String::with_capacity(64 + (columns.len() + 2) * padded * 24);
    let mut values = Vec::with_capacity((columns.len() * 2 + 3) * padded);
    sql.push_str("UPDATE `tasks` SET ");
    for (n, column) in columns.iter().enumerate() {
        let name = column.as_str();
        let new: Vec<Value> = models
            .iter_mut()
            .map(|m| m.take(*column).into_value().ok_or_else(|| DbErr::Custom(format!("{name} not set"))))
            .collect::<Result<_, _>>()?;
        let _ = write!(sql, "{}`{name}` = CASE", if n == 0 { "" } else { ", " });
        for i in (0..padded).map(row) {
            sql.push_str(" WHEN `id` = ? THEN ?");
            values.extend([ids[i].clone(), new[i].clone()]);
        }
        let _ = write!(sql, " ELSE `{name}` END");
    }
    sql.push_str(" WHERE `id` IN (");
    for (n, i) in (0..padded).map(row).enumerate() {
        sql.push_str(if n == 0 { "?" } else { ", ?" });
        values.push(ids[i].clone());
    }
    sql.push_str(") AND `version` = CASE");
    for i in (0..padded).map(row) {
        sql.push_str(" WHEN `id` = ? THEN ?");
        values.extend([ids[i].clone(), Value::from(rows[i].0.version as i32)]);
    }
    sql.push_str(" END");
    Ok(Statement::from_sql_and_values(backend, sql, values))
}

/// Tasks already holding one of the batch's `(creator, idempotency key)` pairs, with
/// the fingerprint of the input that created them.
async fn existing_by_key(
    txn: &DatabaseTransaction,
    batch: &[NewTask],
) -> Result<HashMap<(String, String), (String, Task)>, DbErr> {
    let wanted: HashSet<(&str, &str)> = batch
        .iter()
        .filter_map(|new| Some((new.created_by.as_str(), new.idempotency_key.as_ref()?.as_str())))
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    // Two `IN` lists (a range scan of the unique (creator, key) index) instead of one
    // condition per creator, so the statement's shape does not depend on how the keys
    // are spread over creators; pairs crossing creators are dropped below.
    let creators: BTreeSet<&str> = wanted.iter().map(|(creator, _)| *creator).collect();
    let keys: BTreeSet<&str> = wanted.iter().map(|(_, key)| *key).collect();
    let rows = task::Entity::find()
        .filter(task::Column::CreatedBy.is_in(shape::padded(creators)))
        .filter(task::Column::IdempotencyKey.is_in(shape::padded(keys)))
        .all(txn)
        .await?;
    let mut out = HashMap::new();
    for row in rows {
        let Some(key) = row.idempotency_key.clone() else { continue };
        if !wanted.contains(&(row.created_by.as_str(), key.as_str())) {
            continue;
        }
        let (creator, hash) = (row.created_by.clone(), row.input_hash.clone());
        let task = convert::task_from_row(row).map_err(|_| DbErr::Custom("corrupt task row".into()))?;
        out.insert((creator, key), (hash, task));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use taskwire_domain::CreateTaskInput;

    use super::*;
    use crate::testing::test_store;

    fn keyed(creator: &str, key: &str, kind: &str) -> NewTask {
        let input = CreateTaskInput {
            queue: "q".into(),
            kind: kind.into(),
            idempotency_key: Some(key.into()),
            ..Default::default()
        };
        NewTask::parse(input, creator, Utc::now()).expect("valid input")
    }

    #[tokio::test]
    async fn a_batch_resolves_idempotency_keys_per_creator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let first = vec![keyed("alice", "k1", "a"), keyed("bob", "k2", "b")];
        let first = store.create_tasks(first, CreateMode::PerInput, None).await.expect("created");
        // Each key is now taken by one creator; the other creator's same key is free.
        let batch = vec![
            keyed("alice", "k1", "a"),
            keyed("bob", "k1", "c"),
            keyed("alice", "k2", "d"),
            keyed("bob", "k2", "other"),
        ];
        let outcomes = store.create_tasks(batch, CreateMode::PerInput, None).await.expect("resolved");
        let CreateOutcome::Created(alice_k1) = &first[0] else { panic!("created: {:?}", first[0]) };
        assert!(
            matches!(&outcomes[0], CreateOutcome::Existing(t) if t.id == alice_k1.id),
            "alice's k1 is her first task"
        );
        assert!(matches!(&outcomes[1], CreateOutcome::Created(t) if t.kind.as_str() == "c"), "bob's k1 is new");
        assert!(matches!(&outcomes[2], CreateOutcome::Created(t) if t.kind.as_str() == "d"), "alice's k2 is new");
        assert_eq!(outcomes[3], CreateOutcome::Conflict, "bob's k2 with another input");
    }

    /// Two writers insert one `(creator, idempotency key)` at once (MySQL, which runs
    /// writers concurrently): the store's create reads the key as free, then its insert
    /// meets the other transaction's uncommitted row on the unique index and waits. Once
    /// the other commits, the insert fails with a unique violation, which is counted, and
    /// the create runs again and answers the other's task as the original.
    #[tokio::test]
    async fn a_create_that_loses_an_idempotency_race_answers_the_winner() {
        use sea_orm::{ConnectionTrait, EntityTrait, Statement, TransactionTrait};
        let test = "a_create_that_loses_an_idempotency_race_answers_the_winner";
        let Some(mysql) = crate::testing::mysql_test_store(test).await else { return };
        let store: &Store = &mysql;
        let metrics = crate::metrics::TestMetrics::new();
        store.observe(metrics.store.clone());

        // The winner: another writer's transaction holding the key, not yet committed.
        let new = keyed("alice", "raced", "k");
        let now = Utc::now();
        let winner = machine::create(new.clone(), TaskId::generate(now), MaxAttempts::DEFAULT, now).task;
        let other = store.db.begin().await.expect("begin");
        task::Entity::insert(convert::task_to_row(&winner, &new.fingerprint))
            .exec(&other)
            .await
            .expect("the winner's insert");

        let racing = tokio::spawn({
            let store = store.clone();
            async move { store.create_tasks(vec![new], CreateMode::PerInput, None).await }
        });
        // Until the store's insert is under way and waits (on the winner's uncommitted
        // key): then it has read the key as free, and only the unique index stands
        // between them.
        let waiting = Statement::from_string(
            sea_orm::DbBackend::MySql,
            "SELECT COUNT(*) AS n FROM information_schema.processlist \
             WHERE db = DATABASE() AND info LIKE 'INSERT INTO `tasks`%' AND time_ms > 50",
        );
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let row = store.db.query_one_raw(waiting.clone()).await.expect("innodb_trx").expect("a row");
            if row.try_get::<i64>("", "n").expect("count") > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the racing insert never waited on the winner (finished: {})",
                racing.is_finished()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        other.commit().await.expect("the winner commits");

        let outcomes = racing.await.expect("join").expect("the loser is answered, not failed");
        assert!(
            matches!(&outcomes[..], [CreateOutcome::Existing(t)] if t.id == winner.id),
            "the winner's task is the original: {outcomes:?}"
        );
        let races = |outcome: &str| metrics.store.idempotency_races.with_label_values(&[outcome]).get();
        assert_eq!((races("retried"), races("exhausted")), (1, 0), "the race was met once and counted");
        assert_eq!(store.tasks_by_ids(&[winner.id]).await.expect("read").len(), 1);
    }

    /// Creates `n` tasks keyed `{prefix}-{i}`; their ids in order.
    async fn created_ids(store: &Store, prefix: &str, n: usize) -> Vec<TaskId> {
        let inputs = (0..n).map(|i| keyed("alice", &format!("{prefix}-{i}"), "k")).collect();
        let created = store.create_tasks(inputs, CreateMode::PerInput, None).await.expect("created");
        let mut ids: Vec<TaskId> = created
            .iter()
            .map(|o| match o {
                CreateOutcome::Created(t) => t.id,
                other => panic!("created: {other:?}"),
            })
            .collect();
        ids.sort();
        ids
    }

    /// The tasks `ids` as stored, in id order.
    async fn read_sorted(store: &Store, ids: &[TaskId]) -> Vec<Task> {
        let mut tasks = store.tasks_by_ids(ids).await.expect("read");
        tasks.sort_by_key(|t| t.id);
        tasks
    }

    /// [`update_all_if_unchanged`] on `store`'s backend: every value survives (NULLs
    /// before values, 70 KB of JSON, non-ASCII text, far-off times), a batch padded with
    /// a repeated row counts each task once, and a row read at an older version fails the
    /// whole batch.
    async fn a_batch_update_writes_each_row_at_its_version(store: &Store) {
        use sea_orm::TransactionTrait;
        use taskwire_domain::LeaseToken;
        let ids = created_ids(store, "batch", 3).await;
        // As stored (times in whole milliseconds), in id order like every caller.
        let before = read_sorted(store, &ids).await;
        let at = |ms: i64| DateTime::from_timestamp_millis(ms).expect("a time");
        let next: Vec<Transition> = before
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut task = t.clone();
                task.version += 1;
                task.last_seq += 1;
                task.updated_at = at(1_800_000_000_123 + i as i64);
                match i {
                    0 => task.status = TaskStatus::Cancelled,
                    1 => {
                        task.status = TaskStatus::Succeeded;
                        task.attempts = 2;
                        task.deadline = Some(at(4_102_444_800_000));
                        task.worker_id = Some("w".repeat(255));
                        task.lease_token = Some(LeaseToken::generate());
                        task.lease_expires_at = Some(at(4_102_444_800_001));
                        task.result = Some(serde_json::json!({ "blob": "x".repeat(70_000) }));
                        task.last_error = Some("é✓".repeat(2_000));
                    }
                    _ => {
                        task.status = TaskStatus::Running;
                        task.worker_id = Some("w2".into());
                        task.last_error = Some("once".into());
                    }
                }
                Transition { task, event: None, effects: Vec::new() }
            })
            .collect();
        let batch: Vec<(&Task, &Transition)> = before.iter().zip(&next).collect();
        let txn = store.db.begin().await.expect("begin");
        assert!(update_all_if_unchanged(&txn, &batch).await.expect("update"), "three rows, padded to four");
        txn.commit().await.expect("commit");
        let expected: Vec<Task> = next.iter().map(|t| t.task.clone()).collect();
        assert_eq!(read_sorted(store, &ids).await, expected);

        // The first task read before the update (stale) beside the third read after it.
        let again =
            Transition { task: Task { version: next[2].task.version + 1, ..next[2].task.clone() }, ..next[2].clone() };
        let stale = Transition { task: Task { status: TaskStatus::Dead, ..next[0].task.clone() }, ..next[0].clone() };
        let txn = store.db.begin().await.expect("begin");
        let written = update_all_if_unchanged(&txn, &[(&before[0], &stale), (&next[2].task, &again)]).await;
        assert!(!written.expect("update"), "a stale row fails the batch");
        txn.rollback().await.expect("rollback");
        assert_eq!(read_sorted(store, &ids).await, expected, "rolled back");
    }

    on_both_backends!(
        a_batch_update_writes_each_row_at_its_version,
        sqlite_batch_updates_write_each_row_at_its_version,
        mysql_batch_updates_write_each_row_at_its_version
    );

    /// A batch of more rows than one statement writes goes as several statements: every
    /// row is written, and a stale row in the last statement still fails the batch.
    async fn a_batch_longer_than_one_statement_writes_every_row_or_reports_a_stale_one(store: &Store) {
        use sea_orm::TransactionTrait;
        let n = shape::CASE_ROWS * 2 + 3;
        let ids = created_ids(store, "long", n).await;
        let before = read_sorted(store, &ids).await;
        assert_eq!(before.len(), n);
        // Each row gets a value of its own, so that rows swapped between arms would show.
        let cancel = |(i, t): (usize, &Task)| {
            let command = machine::Command::Cancel { reason: None };
            let mut next = machine::transition(t, command, Utc::now()).expect("cancel");
            next.task.last_error = Some(format!("row {i}"));
            next
        };
        let next: Vec<Transition> = before.iter().enumerate().map(cancel).collect();
        let batch: Vec<(&Task, &Transition)> = before.iter().zip(&next).collect();

        // The last row read stale: written by someone else since.
        let txn = store.db.begin().await.expect("begin");
        let (last, rest) = batch.split_last().expect("rows");
        let stale = Task { version: last.0.version - 1, ..last.0.clone() };
        let mut with_stale = rest.to_vec();
        with_stale.push((&stale, last.1));
        assert!(!update_all_if_unchanged(&txn, &with_stale).await.expect("update"), "the stale row fails the batch");
        txn.rollback().await.expect("rollback");
        let untouched = store.tasks_by_ids(&ids).await.expect("read");
        assert!(untouched.iter().all(|t| t.status == TaskStatus::Queued), "rolled back");

        let txn = store.db.begin().await.expect("begin");
        assert!(update_all_if_unchanged(&txn, &batch).await.expect("update"), "{n} rows in three statements");
        txn.commit().await.expect("commit");
        let expected: Vec<Task> = next.iter().map(|t| t.task.clone()).collect();
        assert_eq!(read_sorted(store, &ids).await, expected, "every row written once, at its own values");
    }

    on_both_backends!(
        a_batch_longer_than_one_statement_writes_every_row_or_reports_a_stale_one,
        sqlite_a_batch_longer_than_one_statement_writes_every_row_or_reports_a_stale_one,
        mysql_a_batch_longer_than_one_statement_writes_every_row_or_reports_a_stale_one
    );
}
