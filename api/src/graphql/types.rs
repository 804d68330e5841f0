//! The public API types. They wrap domain values and are converted explicitly; entities
//! never appear here.

use async_graphql::{Context, Enum, ID, InputObject, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use serde_json::Value;
use taskwire_domain::{
    self as domain, DomainError,
    task::{Task, TaskEvent},
};

use super::context::{loaders, principal};
use crate::error::ApiError;
use taskwire_store::WorkerRecord;

/// Largest `last` accepted by `Task.events`.
pub const MAX_EVENTS_PER_TASK: i32 = 100;

/// Where a task is in its lifecycle.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "TaskStatus", remote = "taskwire_domain::TaskStatus")]
pub enum TaskStatusGql {
    /// Waiting for `runAt` (also while backing off before a retry).
    Scheduled,
    /// Ready, waiting for a worker.
    Queued,
    /// Offered to one worker under a lease.
    Assigned,
    /// Accepted by a worker.
    Running,
    /// Done.
    Succeeded,
    /// Cancelled by its owner or an operator.
    Cancelled,
    /// Attempts exhausted, non-retryable failure or deadline passed.
    Dead,
}

/// A role from the caller's token.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "Role", remote = "taskwire_domain::Role")]
pub enum RoleGql {
    /// Creates tasks and sees its own.
    Client,
    /// Runs tasks leased to it.
    Worker,
    /// Reads everything, cancels and retries any task.
    Operator,
    /// Operator plus queue and worker administration.
    Admin,
}

/// Whether a worker takes new tasks.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "taskwire_domain::WorkerStatus")]
pub enum WorkerStatus {
    /// Connected or heartbeating; receives offers.
    Online,
    /// Finishes its running tasks, receives no new offers.
    Draining,
    /// Gone; its offers and leases are reclaimed.
    Offline,
}

/// The authenticated caller.
#[derive(SimpleObject, Debug)]
pub struct Viewer {
    /// The token's subject.
    pub subject: String,
    /// The recognised roles.
    pub roles: Vec<RoleGql>,
}

/// A unit of work.
#[derive(Debug, Clone)]
pub struct TaskObject(pub Task);

#[Object(name = "Task")]
impl TaskObject {
    /// Opaque, unguessable, time-ordered id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn queue(&self) -> &str {
        &self.0.queue
    }
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    async fn payload(&self) -> Option<Json<Value>> {
        self.0.payload.clone().map(Json)
    }
    /// 0–9; 9 is dispatched first.
    async fn priority(&self) -> i32 {
        i32::from(self.0.priority)
    }
    async fn status(&self) -> TaskStatusGql {
        self.0.status.into()
    }
    /// Runs started so far.
    async fn attempts(&self) -> i32 {
        self.0.attempts as i32
    }
    async fn max_attempts(&self) -> i32 {
        self.0.max_attempts as i32
    }
    /// When the task is (or becomes) ready.
    async fn run_at(&self) -> DateTime<Utc> {
        self.0.run_at
    }
    async fn deadline(&self) -> Option<DateTime<Utc>> {
        self.0.deadline
    }
    /// Subject that created the task.
    async fn created_by(&self) -> &str {
        &self.0.created_by
    }
    /// The worker holding (or that last held) the task.
    async fn worker(&self, ctx: &Context<'_>) -> Result<Option<WorkerObject>> {
        let Some(worker_id) = &self.0.worker_id else {
            return Ok(None);
        };
        let worker = loaders(ctx)?.workers.load_one(worker_id.clone()).await?;
        Ok(worker.map(WorkerObject))
    }
    /// When the current offer or lease expires.
    async fn lease_expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.lease_expires_at
    }
    async fn result(&self) -> Option<Json<Value>> {
        self.0.result.clone().map(Json)
    }
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
    /// The latest `last` events (at most 100), oldest first.
    async fn events(&self, ctx: &Context<'_>, #[graphql(default = 20)] last: i32) -> Result<Vec<TaskEventObject>> {
        if !(0..=MAX_EVENTS_PER_TASK).contains(&last) {
            return Err(ApiError::from(DomainError::invalid("last", "must be between 0 and 100")).into());
        }
        let events = loaders(ctx)?.events.load_one((self.0.id, last as u32)).await?;
        Ok(events.unwrap_or_default().into_iter().map(TaskEventObject).collect())
    }
    /// Optimistic-lock version; grows with every change.
    async fn version(&self) -> i32 {
        self.0.version as i32
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// One entry of a task's history.
#[derive(Debug, Clone)]
pub struct TaskEventObject(pub TaskEvent);

#[Object(name = "TaskEvent")]
impl TaskEventObject {
    async fn task_id(&self) -> ID {
        ID(self.0.task_id.to_string())
    }
    /// Per-task sequence number, gapless from 1.
    async fn seq(&self) -> i32 {
        self.0.seq as i32
    }
    async fn status(&self) -> TaskStatusGql {
        self.0.status.into()
    }
    async fn previous_status(&self) -> Option<TaskStatusGql> {
        self.0.previous_status.map(Into::into)
    }
    async fn attempt(&self) -> i32 {
        self.0.attempt as i32
    }
    async fn worker_id(&self) -> Option<ID> {
        self.0.worker_id.clone().map(ID)
    }
    async fn message(&self) -> Option<&str> {
        self.0.message.as_deref()
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
    /// The task as it is now (events are only reachable through visible tasks).
    async fn task(&self, ctx: &Context<'_>) -> Result<TaskObject> {
        let caller = principal(ctx)?;
        let task = loaders(ctx)?.tasks.load_one(self.0.task_id).await?;
        // A subscription's event resolves the task later than the subscription was
        // allowed: by then a worker may have let go of it, and the creator's payload
        // and result are no longer its to read.
        let task = task.filter(|t| caller.can_read_task(&t.created_by, t.worker_id.as_deref()));
        task.map(TaskObject).ok_or_else(|| ApiError::NotFound("task").into())
    }
}

/// A registered worker.
#[derive(Debug, Clone)]
pub struct WorkerObject(pub WorkerRecord);

#[Object(name = "Worker")]
impl WorkerObject {
    /// The worker's id: its token's subject.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Queues it serves.
    async fn queues(&self) -> &[String] {
        &self.0.queues
    }
    /// Concurrent tasks it accepts.
    async fn capacity(&self) -> i32 {
        self.0.capacity as i32
    }
    /// Tasks currently offered to or running on it.
    async fn active_tasks(&self) -> i32 {
        self.0.active as i32
    }
    async fn status(&self) -> WorkerStatus {
        domain::WorkerStatus::from_stored(&self.0.status).into()
    }
    async fn last_seen_at(&self) -> DateTime<Utc> {
        self.0.last_seen_at
    }
}

/// What `renewLeases` did with one named task.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds the task (`RUNNING`, its lease not lapsed); the lease was extended.
    Renewed,
    /// The caller does not hold the task (any more): it finished, was reclaimed, its lease
    /// lapsed, or the id names no task. Stop working on it; its reports will answer
    /// `LEASE_LOST`.
    LeaseLost,
}

/// One task named in `renewLeases`.
#[derive(SimpleObject, Debug, Clone)]
pub struct LeaseRenewal {
    /// The task id as named.
    pub task_id: ID,
    pub outcome: LeaseOutcome,
    /// The lease's new end when `RENEWED`.
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// Input of `createTask`.
#[derive(InputObject, Debug, Clone)]
pub struct CreateTaskInput {
    /// Target queue, `^[a-z0-9][a-z0-9._-]{0,63}$`.
    pub queue: String,
    /// Task kind, same pattern as `queue`.
    pub kind: String,
    /// Any JSON up to 64 KiB serialized.
    pub payload: Option<Json<Value>>,
    /// 0–9, 9 first.
    #[graphql(default = 0)]
    pub priority: Option<i32>,
    /// Earliest start, at most 30 days ahead; default now.
    pub run_at: Option<DateTime<Utc>>,
    /// Past this instant the task is `DEAD` instead of run.
    pub deadline: Option<DateTime<Utc>>,
    /// 1–100; default from the queue, else 5.
    pub max_attempts: Option<i32>,
    /// Up to 128 characters, unique per creator: a retry with the same key and input
    /// returns the original task with `created: false`.
    pub idempotency_key: Option<String>,
}

impl From<CreateTaskInput> for domain::CreateTaskInput {
    fn from(input: CreateTaskInput) -> Self {
        domain::CreateTaskInput {
            queue: input.queue,
            kind: input.kind,
            payload: input.payload.map(|j| j.0),
            priority: Some(i64::from(input.priority.unwrap_or(0))),
            run_at: input.run_at,
            deadline: input.deadline,
            max_attempts: input.max_attempts.map(i64::from),
            idempotency_key: input.idempotency_key,
        }
    }
}

/// Result of `createTask`.
#[derive(SimpleObject, Debug)]
pub struct CreateTaskPayload {
    /// The task (the original one when an idempotency key matched).
    pub task: TaskObject,
    /// `false` when an idempotency key matched an earlier identical request.
    pub created: bool,
}

/// Filters of the `tasks` connection.
#[derive(InputObject, Debug, Clone, Default)]
pub struct TaskFilter {
    /// Any of these statuses.
    pub status: Option<Vec<TaskStatusGql>>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    /// Only tasks of this creator (operators; clients may only name themselves).
    pub created_by: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
}

/// Filters of the `taskEvents` subscription.
#[derive(InputObject, Debug, Clone, Default)]
pub struct TaskEventFilter {
    /// Only tasks of this queue.
    pub queue: Option<String>,
    /// Only events that lead to one of these statuses.
    pub status: Option<Vec<TaskStatusGql>>,
}

/// A queue's tasks by status.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(name = "QueueStats")]
pub struct QueueStatsObject {
    /// The queue.
    pub name: String,
    pub scheduled: i32,
    pub queued: i32,
    pub assigned: i32,
    pub running: i32,
    pub succeeded: i32,
    pub cancelled: i32,
    pub dead: i32,
    /// Milliseconds the oldest queued task has been ready; `null` when none is queued.
    pub oldest_queued_age_ms: Option<i64>,
    /// When these numbers were read.
    pub at: DateTime<Utc>,
}

impl QueueStatsObject {
    /// From the store's counts, read at `at`.
    pub fn new(name: String, stats: taskwire_store::QueueStats, at: DateTime<Utc>) -> Self {
        let count = |status: domain::TaskStatus| {
            stats
                .counts
                .iter()
                .find(|(s, _)| *s == status)
                .map(|(_, n)| i32::try_from(*n).unwrap_or(i32::MAX))
                .unwrap_or(0)
        };
        use domain::TaskStatus as S;
        QueueStatsObject {
            scheduled: count(S::Scheduled),
            queued: count(S::Queued),
            assigned: count(S::Assigned),
            running: count(S::Running),
            succeeded: count(S::Succeeded),
            cancelled: count(S::Cancelled),
            dead: count(S::Dead),
            oldest_queued_age_ms: stats.oldest_queued_run_at.map(|t| (at - t).num_milliseconds().max(0)),
            at,
            name,
        }
    }
}

/// An offer to the calling worker: accept it with `acceptTask(taskId, leaseToken)`
/// before `leaseExpiresAt`, or it goes to another worker.
#[derive(Debug, Clone)]
pub struct AssignmentObject(pub Task);

#[Object(name = "Assignment")]
impl AssignmentObject {
    /// The task offered.
    async fn task(&self) -> TaskObject {
        TaskObject(self.0.clone())
    }
    /// The fencing token every worker call on this task must present.
    async fn lease_token(&self) -> &str {
        self.0.lease_token.as_ref().map(|t| t.as_str()).unwrap_or_default()
    }
    /// When the offer lapses unless accepted.
    async fn lease_expires_at(&self) -> DateTime<Utc> {
        self.0.lease_expires_at.unwrap_or(self.0.updated_at)
    }
}

/// Input of `registerWorker`. The worker's id is its token's subject.
#[derive(InputObject, Debug, Clone)]
pub struct RegisterWorkerInput {
    /// Display name, 1–128 characters.
    pub name: String,
    /// Queues served (1–64).
    pub queues: Vec<String>,
    /// Concurrent tasks accepted (1–1000).
    pub capacity: i32,
}

/// A queue and its settings.
#[derive(Debug, Clone)]
pub struct QueueObject(pub domain::QueueSettings);

#[Object(name = "Queue")]
impl QueueObject {
    async fn name(&self) -> &str {
        self.0.name.as_str()
    }
    /// Paused queues keep receiving tasks but offer none to workers.
    async fn paused(&self) -> bool {
        self.0.paused
    }
    /// Offers per second at most; `null` = unlimited.
    async fn rate_limit_per_second(&self) -> Option<f64> {
        self.0.rate_limit_per_second
    }
    /// Tasks offered or running at once at most; `null` = unlimited.
    async fn max_concurrency(&self) -> Option<i32> {
        self.0.max_concurrency.map(|m| m as i32)
    }
    /// Default `maxAttempts` of new tasks; `null` = 5.
    async fn max_attempts(&self) -> Option<i32> {
        self.0.max_attempts.map(|m| m.get() as i32)
    }
    /// Lease length of offers and runs.
    async fn lease_seconds(&self) -> i32 {
        self.0.lease_seconds as i32
    }
    /// Ceiling of the first retry's delay.
    async fn backoff_base_ms(&self) -> i64 {
        self.0.retry.base.as_millis() as i64
    }
    /// Largest retry delay.
    async fn backoff_max_ms(&self) -> i64 {
        self.0.retry.max.as_millis() as i64
    }
    /// Task counts now.
    async fn stats(&self, ctx: &Context<'_>) -> Result<QueueStatsObject> {
        let stats = super::context::store(ctx)?.queue_stats(self.0.name.as_str()).await.map_err(ApiError::from)?;
        Ok(QueueStatsObject::new(self.0.name.to_string(), stats, Utc::now()))
    }
}

/// Input of `configureQueue`: only the fields given change; an explicit `null` removes
/// an optional limit.
#[derive(InputObject, Debug, Clone)]
pub struct ConfigureQueueInput {
    pub name: String,
    pub rate_limit_per_second: async_graphql::MaybeUndefined<f64>,
    pub max_concurrency: async_graphql::MaybeUndefined<i32>,
    pub max_attempts: async_graphql::MaybeUndefined<i32>,
    pub lease_seconds: Option<i32>,
    pub backoff_base_ms: Option<i64>,
    pub backoff_max_ms: Option<i64>,
}

impl ConfigureQueueInput {
    /// The domain change set.
    pub fn changes(&self) -> domain::QueueChanges {
        fn maybe<T: Copy, U>(v: &async_graphql::MaybeUndefined<T>, f: impl Fn(T) -> U) -> Option<Option<U>> {
            match v {
                async_graphql::MaybeUndefined::Undefined => None,
                async_graphql::MaybeUndefined::Null => Some(None),
                async_graphql::MaybeUndefined::Value(v) => Some(Some(f(*v))),
            }
        }
        domain::QueueChanges {
            rate_limit_per_second: maybe(&self.rate_limit_per_second, |v| v),
            max_concurrency: maybe(&self.max_concurrency, i64::from),
            max_attempts: maybe(&self.max_attempts, i64::from),
            lease_seconds: self.lease_seconds.map(i64::from),
            backoff_base_ms: self.backoff_base_ms,
            backoff_max_ms: self.backoff_max_ms,
        }
    }
}
