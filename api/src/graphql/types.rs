//! The public API types. They wrap domain values and are converted explicitly; entities
//! never appear here.

use async_graphql::{Context, Enum, ID, InputObject, Interface, Object, Result, SimpleObject};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use taskwire_domain::{
    self as domain, DomainError,
    task::{Task, TaskEvent},
};

use super::context::{loaders, principal};
use super::scalars::{JsonValue, Timestamp};
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
    /// Accepted by a worker, or started by an offer to a worker that takes offers as they come.
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

/// The authenticated caller. Its key is `id`, the token's subject.
#[derive(SimpleObject, Debug)]
pub struct Viewer {
    /// The caller's key for client caches: equal to `subject`.
    pub id: ID,
    /// The token's subject.
    pub subject: String,
    /// The recognised roles.
    pub roles: Vec<RoleGql>,
}

/// An object that `node(id)` and `nodes(ids)` fetch by its global id, `nodeId` (Relay
/// object identification). `Task` and `Worker` implement it. A global id is opaque:
/// clients pass it back unchanged and never build or parse it.
// One value per `node` answer, short-lived: boxing the task would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Interface)]
#[graphql(
    name = "Node",
    field(
        name = "node_id",
        ty = "ID",
        desc = "The object's global id: unique across every type, stable for the object's lifetime. \
                Differs from the type's own `id` (a task id, a worker id)."
    )
)]
pub enum Node {
    /// A task.
    Task(TaskObject),
    /// A worker.
    Worker(WorkerObject),
}

/// The kinds of object a global id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// `Task`: the key is a task id.
    Task,
    /// `Worker`: the key is a worker id.
    Worker,
}

impl NodeKind {
    fn prefix(self) -> &'static str {
        match self {
            NodeKind::Task => "Task",
            NodeKind::Worker => "Worker",
        }
    }
}

/// Longest global id `decode_global_id` looks at (a worker id is a token subject; the
/// request's own size limits bound it too).
const MAX_GLOBAL_ID_CHARS: usize = 1024;

/// The global id of an object: base64url without padding of `<Type>:<key>`, e.g.
/// `Task:01a1fca2-…` → `VGFzazowMWExZmNhMi0…`.
pub fn global_id(kind: NodeKind, key: &str) -> ID {
    ID(URL_SAFE_NO_PAD.encode(format!("{}:{key}", kind.prefix())))
}

/// The kind and key a global id names, if it is one this server made (canonical
/// encoding, known type, non-empty key).
pub fn decode_global_id(id: &str) -> Option<(NodeKind, String)> {
    if id.len() > MAX_GLOBAL_ID_CHARS {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(id).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (prefix, key) = text.split_once(':')?;
    let kind = match prefix {
        "Task" => NodeKind::Task,
        "Worker" => NodeKind::Worker,
        _ => return None,
    };
    // One object, one id: a non-canonical spelling of the same bytes is not its id.
    (!key.is_empty() && *global_id(kind, key) == *id).then(|| (kind, key.to_owned()))
}

/// A unit of work. Its key is `id`; its global id, `nodeId`.
#[derive(Debug, Clone)]
pub struct TaskObject(pub Task);

/// A unit of work. Its key is `id`; its global id, `nodeId`.
#[Object(name = "Task")]
impl TaskObject {
    /// Opaque, unguessable, time-ordered id (a UUIDv7): what `task(id)`, `cancelTask`
    /// and the other task operations take.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The global id for `node(id)` (the `Node` interface); not the same string as `id`.
    async fn node_id(&self) -> ID {
        global_id(NodeKind::Task, &self.0.id.to_string())
    }
    /// The queue the task was created in.
    async fn queue(&self) -> &str {
        &self.0.queue
    }
    /// What kind of work it is, for the worker (e.g. `send-welcome`).
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// The creator's input for the worker, as given; `null` when none was given.
    async fn payload(&self) -> Option<JsonValue> {
        self.0.payload.clone().map(JsonValue)
    }
    /// 0–9; 9 is dispatched first.
    async fn priority(&self) -> i32 {
        i32::from(self.0.priority)
    }
    /// Where the task is in its lifecycle.
    async fn status(&self) -> TaskStatusGql {
        self.0.status.into()
    }
    /// Runs started so far.
    async fn attempts(&self) -> i32 {
        self.0.attempts as i32
    }
    /// Runs allowed before the task is `DEAD`.
    async fn max_attempts(&self) -> i32 {
        self.0.max_attempts as i32
    }
    /// When the task is (or becomes) ready.
    async fn run_at(&self) -> Timestamp {
        self.0.run_at.into()
    }
    /// Past this instant the task is `DEAD` instead of run; `null` when it has none.
    async fn deadline(&self) -> Option<Timestamp> {
        self.0.deadline.map(Into::into)
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
        let worker = loaders(ctx)?.workers().load_one(worker_id.clone()).await?;
        Ok(worker.map(WorkerObject))
    }
    /// When the current offer or lease expires.
    async fn lease_expires_at(&self) -> Option<Timestamp> {
        self.0.lease_expires_at.map(Into::into)
    }
    /// What the worker reported with `completeTask`; `null` until then or when it
    /// reported none.
    async fn result(&self) -> Option<JsonValue> {
        self.0.result.clone().map(JsonValue)
    }
    /// The error text of the latest failed attempt, if any.
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
    /// The latest `last` events (at most 100), oldest first.
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20, desc = "How many of the latest events, 0–100.")] last: i32,
    ) -> Result<Vec<TaskEventObject>> {
        if !(0..=MAX_EVENTS_PER_TASK).contains(&last) {
            return Err(ApiError::from(DomainError::invalid("last", "must be between 0 and 100")).into());
        }
        let events = loaders(ctx)?.events().load_one((self.0.id, last as u32)).await?;
        Ok(events.unwrap_or_default().into_iter().map(TaskEventObject).collect())
    }
    /// Optimistic-lock version; grows with every change.
    async fn version(&self) -> i32 {
        self.0.version as i32
    }
    /// When the task was created.
    async fn created_at(&self) -> Timestamp {
        self.0.created_at.into()
    }
    /// When the task last changed.
    async fn updated_at(&self) -> Timestamp {
        self.0.updated_at.into()
    }
}

/// One entry of a task's history. Its key is `id`, which is `taskId` and `seq` together.
#[derive(Debug, Clone)]
pub struct TaskEventObject(pub TaskEvent);

/// One entry of a task's history. Its key is `id`, which is `taskId` and `seq` together.
#[Object(name = "TaskEvent")]
impl TaskEventObject {
    /// The event's key for client caches: `<taskId>:<seq>`. The same event always has
    /// the same id, whether it came from `Task.events` or a subscription.
    async fn id(&self) -> ID {
        ID(format!("{}:{}", self.0.task_id, self.0.seq))
    }
    /// The task the event belongs to (its `Task.id`).
    async fn task_id(&self) -> ID {
        ID(self.0.task_id.to_string())
    }
    /// Per-task sequence number, gapless from 1.
    async fn seq(&self) -> i32 {
        self.0.seq as i32
    }
    /// The task's status after the change.
    async fn status(&self) -> TaskStatusGql {
        self.0.status.into()
    }
    /// The task's status before the change; `null` for the first event (creation).
    async fn previous_status(&self) -> Option<TaskStatusGql> {
        self.0.previous_status.map(Into::into)
    }
    /// Runs started so far, after the change.
    async fn attempt(&self) -> i32 {
        self.0.attempt as i32
    }
    /// The worker involved (its `Worker.id`), if any.
    async fn worker_id(&self) -> Option<ID> {
        self.0.worker_id.clone().map(ID)
    }
    /// The cancel reason or failure text, if any.
    async fn message(&self) -> Option<&str> {
        self.0.message.as_deref()
    }
    /// When the change happened.
    async fn at(&self) -> Timestamp {
        self.0.at.into()
    }
    /// The task as it is now (events are only reachable through visible tasks).
    async fn task(&self, ctx: &Context<'_>) -> Result<TaskObject> {
        let caller = principal(ctx)?;
        let task = loaders(ctx)?.tasks().load_one(self.0.task_id).await?;
        // A subscription's event resolves the task later than the subscription was
        // allowed: by then a worker may have let go of it, and the creator's payload
        // and result are no longer its to read.
        let task = task.filter(|t| caller.can_read_task(&t.created_by, t.worker_id.as_deref()));
        task.map(TaskObject).ok_or_else(|| ApiError::NotFound("task").into())
    }
}

/// A registered worker. Its key is `id`; its global id, `nodeId`.
#[derive(Debug, Clone)]
pub struct WorkerObject(pub WorkerRecord);

/// A registered worker. Its key is `id`; its global id, `nodeId`.
#[Object(name = "Worker")]
impl WorkerObject {
    /// The worker's id: its token's subject. What `worker(id)` and `drainWorker` take.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The global id for `node(id)` (the `Node` interface); not the same string as `id`.
    async fn node_id(&self) -> ID {
        global_id(NodeKind::Worker, &self.0.id)
    }
    /// Display name, from `registerWorker`.
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
    /// Whether it takes new tasks.
    async fn status(&self) -> WorkerStatus {
        domain::WorkerStatus::from_stored(&self.0.status).into()
    }
    /// Its latest sign of life: a call, a heartbeat or an open `assignments` stream.
    async fn last_seen_at(&self) -> Timestamp {
        self.0.last_seen_at.into()
    }
    /// Whether it takes its offers as they come (`RegisterWorkerInput.autoAccept`).
    async fn auto_accept(&self) -> bool {
        self.0.auto_accept
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
    /// Whether the caller still holds the task.
    pub outcome: LeaseOutcome,
    /// The lease's new end when `RENEWED`.
    pub lease_expires_at: Option<Timestamp>,
}

/// Input of `createTask`.
#[derive(InputObject, Debug, Clone)]
pub struct CreateTaskInput {
    /// Target queue, `^[a-z0-9][a-z0-9._-]{0,63}$`.
    pub queue: String,
    /// Task kind, same pattern as `queue`.
    pub kind: String,
    /// Any JSON up to 64 KiB serialized.
    pub payload: Option<JsonValue>,
    /// 0–9, 9 first.
    #[graphql(default = 0)]
    pub priority: Option<i32>,
    /// Earliest start, at most 30 days ahead; default now.
    pub run_at: Option<Timestamp>,
    /// Past this instant the task is `DEAD` instead of run.
    pub deadline: Option<Timestamp>,
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
            run_at: input.run_at.map(|t| t.0),
            deadline: input.deadline.map(|t| t.0),
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
    /// Only tasks of this queue.
    pub queue: Option<String>,
    /// Only tasks of this kind.
    pub kind: Option<String>,
    /// Only tasks of this creator (operators; clients may only name themselves).
    pub created_by: Option<String>,
    /// Created at or after.
    pub created_after: Option<Timestamp>,
    /// Created before.
    pub created_before: Option<Timestamp>,
}

/// Filters of the `taskEvents` subscription.
#[derive(InputObject, Debug, Clone, Default)]
pub struct TaskEventFilter {
    /// Only tasks of this queue.
    pub queue: Option<String>,
    /// Only events that lead to one of these statuses.
    pub status: Option<Vec<TaskStatusGql>>,
}

/// A queue's tasks by status, as read at `at`. Its key is `id`, the queue's name: a
/// newer reading of a queue replaces the older one in a client cache.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(name = "QueueStats")]
pub struct QueueStatsObject {
    /// The key for client caches: the queue's name (the same as `name`).
    pub id: ID,
    /// The queue.
    pub name: String,
    /// Tasks `SCHEDULED`.
    pub scheduled: i32,
    /// Tasks `QUEUED`.
    pub queued: i32,
    /// Tasks `ASSIGNED`.
    pub assigned: i32,
    /// Tasks `RUNNING`.
    pub running: i32,
    /// Tasks `SUCCEEDED` (still stored).
    pub succeeded: i32,
    /// Tasks `CANCELLED` (still stored).
    pub cancelled: i32,
    /// Tasks `DEAD` (still stored).
    pub dead: i32,
    /// Milliseconds the oldest queued task has been ready; `null` when none is queued.
    pub oldest_queued_age_ms: Option<i64>,
    /// When these numbers were read.
    pub at: Timestamp,
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
            at: at.into(),
            id: ID(name.clone()),
            name,
        }
    }
}

/// An offer to the calling worker: accept it with `acceptTask(taskId, leaseToken)`
/// before `leaseExpiresAt`, or it goes to another worker. For a worker registered with
/// `autoAccept` the offer has already started the task (`started`). Its key is `id`:
/// each offer of a task has its own.
#[derive(Debug, Clone)]
pub struct AssignmentObject(pub Task);

/// An offer to the calling worker: accept it with `acceptTask(taskId, leaseToken)`
/// before `leaseExpiresAt`, or it goes to another worker. For a worker registered with
/// `autoAccept` the offer has already started the task (`started`). Its key is `id`:
/// each offer of a task has its own.
#[Object(name = "Assignment")]
impl AssignmentObject {
    /// The offer's key for client caches: `<taskId>:<version>`, the task's id and its
    /// version when offered (every offer changes the version). A repeated delivery of the
    /// same offer has the same id.
    async fn id(&self) -> ID {
        ID(format!("{}:{}", self.0.id, self.0.version))
    }
    /// The task offered.
    async fn task(&self) -> TaskObject {
        TaskObject(self.0.clone())
    }
    /// The fencing token every worker call on this task must present.
    async fn lease_token(&self) -> &str {
        self.0.lease_token.as_ref().map(|t| t.as_str()).unwrap_or_default()
    }
    /// When the offer lapses unless accepted; for a started offer, when its lease lapses
    /// unless heartbeats extend it.
    async fn lease_expires_at(&self) -> Timestamp {
        self.0.lease_expires_at.unwrap_or(self.0.updated_at).into()
    }
    /// `true` when the offer started the task (the worker registered with `autoAccept`):
    /// it is `RUNNING` under this lease and needs no `acceptTask`.
    async fn started(&self) -> bool {
        self.0.status == domain::TaskStatus::Running
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
    /// `true`: the worker takes its offers as they come. Each offer then arrives already
    /// `RUNNING` (the attempt counted, under the queue's lease), and the worker sends no
    /// `acceptTask`: a task makes one call, one write and one event fewer. An offer it
    /// cannot take must be handed back with `releaseTask`, which keeps the attempt
    /// counted (`DEAD` if it was the last); left alone, its lease lapses as a failed
    /// attempt. Name the tasks in `heartbeat(tasks:)`: the legacy form would keep an offer
    /// the worker never received leased. Default `false`: offers are `ASSIGNED` until
    /// accepted, and one left unaccepted lapses at no cost.
    #[graphql(default = false)]
    pub auto_accept: bool,
}

/// A queue and its settings. Its key is `id`, the queue's name.
#[derive(Debug, Clone)]
pub struct QueueObject(pub domain::QueueSettings);

/// A queue and its settings. Its key is `id`, the queue's name.
#[Object(name = "Queue")]
impl QueueObject {
    /// The key for client caches: the queue's name (the same as `name`).
    async fn id(&self) -> ID {
        ID(self.0.name.to_string())
    }
    /// The queue's name, `^[a-z0-9][a-z0-9._-]{0,63}$`.
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
    /// The queue to configure.
    pub name: String,
    /// Offers per second at most, above 0 and at most 100,000; `null` removes the limit.
    pub rate_limit_per_second: async_graphql::MaybeUndefined<f64>,
    /// Tasks offered or running at once at most, 1–100,000; `null` removes the limit.
    pub max_concurrency: async_graphql::MaybeUndefined<i32>,
    /// Default `maxAttempts` of new tasks, 1–100; `null` restores the default, 5.
    pub max_attempts: async_graphql::MaybeUndefined<i32>,
    /// Lease length of offers and runs, in seconds, 1–86,400.
    pub lease_seconds: Option<i32>,
    /// Ceiling of the first retry's delay, in milliseconds, 1–86,400,000; at most `backoffMaxMs`.
    pub backoff_base_ms: Option<i64>,
    /// Largest retry delay, in milliseconds, 1–86,400,000.
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
