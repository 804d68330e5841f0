//! Mutations, one object per area, merged into `Mutation`.

use std::collections::HashSet;

use async_graphql::{Context, ID, MergedObject, Object, Result};
use chrono::{DateTime, Utc};
use taskwire_domain::{
    DomainError, NewTask, Payload, QueueName, QueueSettings, Role, TaskId, WorkerRegistration,
    machine::{self, Command},
    task::Task,
};

use super::scalars::JsonValue;
use super::{
    context::{principal, store, traceparent},
    guards::RoleGuard,
    types::{
        ConfigureQueueInput, CreateTaskInput, CreateTaskPayload, LeaseOutcome, LeaseRenewal, QueueObject,
        RegisterWorkerInput, TaskObject, WorkerObject,
    },
};
use crate::error::ApiError;
use taskwire_store::{CreateMode, CreateOutcome, Leases, StoreError};

/// Most inputs one `createTasks` call accepts.
pub const MAX_CREATE_BATCH: usize = 500;
/// Most task ids one `heartbeat` or `renewLeases` call names.
pub const MAX_HEARTBEAT_TASKS: usize = 1000;
/// Longest `failTask` error message, in characters.
pub const MAX_ERROR_CHARS: usize = 4000;

/// The root mutation type.
#[derive(MergedObject, Default, Debug)]
pub struct Mutation(TaskMutation, WorkerMutation, QueueMutation);

/// Task writes.
#[derive(Default, Debug)]
pub struct TaskMutation;

#[Object]
impl TaskMutation {
    /// Creates a task. Answers after the task, its first event and its outbox message
    /// are committed.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Client])")]
    async fn create_task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The task to create.")] input: CreateTaskInput,
    ) -> Result<CreateTaskPayload> {
        let caller = principal(ctx)?;
        let new = NewTask::parse(input.into(), &caller.subject, Utc::now())
            .map_err(|e| ApiError::from(e.in_field("input")))?;
        // Committed together with concurrent creates (commit coalescing).
        payload(store(ctx)?.create_task(new, traceparent(ctx)).await.map_err(ApiError::from)?)
    }

    /// Creates up to 500 tasks in one transaction. All or nothing: an invalid input or
    /// a conflicting idempotency key fails the whole call.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Client])")]
    async fn create_tasks(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tasks to create, at most 500; answers come in the same order.")] inputs: Vec<
            CreateTaskInput,
        >,
    ) -> Result<Vec<CreateTaskPayload>> {
        if inputs.len() > MAX_CREATE_BATCH {
            return Err(ApiError::from(DomainError::invalid("inputs", "at most 500 inputs per call")).into());
        }
        create_all(ctx, inputs).await
    }

    /// Cancels a task that has not finished. Clients may cancel their own tasks,
    /// operators and admins any task.
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn cancel_task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The task's `id`.")] id: ID,
        #[graphql(desc = "Why, at most 1,000 characters; kept as the event's `message`.")] reason: Option<String>,
    ) -> Result<TaskObject> {
        let caller = principal(ctx)?;
        if reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
            return Err(ApiError::from(DomainError::invalid("reason", "at most 1000 characters")).into());
        }
        let id = TaskId::parse(&id).ok_or(ApiError::NotFound("task"))?;
        let task = store(ctx)?
            .transition(id, traceparent(ctx), |task| {
                if !caller.can_read_task(&task.created_by, task.worker_id.as_deref()) {
                    return Err(StoreError::NotFound("task"));
                }
                if !caller.can_cancel_task(&task.created_by) {
                    return Err(DomainError::Forbidden.into());
                }
                Ok(machine::transition(task, Command::Cancel { reason: reason.clone() }, Utc::now())?)
            })
            .await
            .map_err(ApiError::from)?;
        Ok(TaskObject(task))
    }
}

/// Worker self-service and administration.
#[derive(Default, Debug)]
pub struct WorkerMutation;

#[Object]
impl WorkerMutation {
    /// Registers the calling worker (its id is the token's subject) or updates its
    /// registration. A drained worker stays draining.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Worker])")]
    async fn register_worker(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The worker's name, queues and capacity.")] input: RegisterWorkerInput,
    ) -> Result<WorkerObject> {
        let caller = principal(ctx)?;
        let registration = WorkerRegistration::parse(&input.name, &input.queues, i64::from(input.capacity))
            .map_err(|e| ApiError::from(e.in_field("input")))?;
        let registration = WorkerRegistration { auto_accept: input.auto_accept, ..registration };
        Ok(WorkerObject(store(ctx)?.register_worker(&caller.subject, &registration).await.map_err(ApiError::from)?))
    }

    /// The calling worker is alive: keeps it `ONLINE` and extends the leases of the
    /// tasks it names in `tasks` (at most 1,000) that are `RUNNING` on it, by their
    /// queue's `leaseSeconds`. A task it holds but does not name is not extended: its
    /// lease lapses and the reaper reclaims it (a failed attempt). Ids of tasks it does
    /// not hold, and ids that name no task, are ignored; `renewLeases` tells which.
    /// Without `tasks` (the legacy form) every running lease of the worker is extended,
    /// including those of tasks it forgot.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Worker])")]
    async fn heartbeat(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Ids of the tasks the worker is running (at most 1,000); absent: all of them (legacy).")]
        tasks: Option<Vec<ID>>,
    ) -> Result<WorkerObject> {
        let caller = principal(ctx)?;
        let store = store(ctx)?;
        let record = match tasks {
            None => store.heartbeat(&caller.subject, Leases::All).await.map_err(ApiError::from)?,
            Some(tasks) => {
                store.heartbeat(&caller.subject, Leases::Named(&named_tasks(&tasks)?)).await.map_err(ApiError::from)?
            }
        };
        Ok(WorkerObject(record))
    }

    /// `heartbeat(tasks)` that answers, for each distinct named task in the order given,
    /// whether the caller still holds it (`RENEWED`, with the new lease end) or not
    /// (`LEASE_LOST`).
    #[graphql(guard = "RoleGuard::any_of(&[Role::Worker])")]
    async fn renew_leases(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Ids of the tasks the worker is running, at most 1,000.")] tasks: Vec<ID>,
    ) -> Result<Vec<LeaseRenewal>> {
        let caller = principal(ctx)?;
        let parsed = named_tasks(&tasks)?;
        let (_, renewed) = store(ctx)?.renew_leases(&caller.subject, &parsed).await.map_err(ApiError::from)?;
        let mut seen = HashSet::with_capacity(tasks.len());
        Ok(tasks
            .into_iter()
            .filter(|id| seen.insert(id.to_string()))
            .map(|id| {
                let lease = TaskId::parse(&id).and_then(|task| renewed.get(&task).copied());
                LeaseRenewal {
                    task_id: id,
                    outcome: if lease.is_some() { LeaseOutcome::Renewed } else { LeaseOutcome::LeaseLost },
                    lease_expires_at: lease.map(Into::into),
                }
            })
            .collect())
    }

    /// Accepts an offer: `ASSIGNED` → `RUNNING`, counting an attempt. The lease then
    /// lasts the queue's `leaseSeconds`; heartbeats extend it. `LEASE_LOST` unless the
    /// caller holds the current offer. Accepting a task the caller already runs (a
    /// retried call, or an offer that `started` it) changes nothing.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Worker])")]
    async fn accept_task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The task's `id`, as offered.")] task_id: ID,
        #[graphql(desc = "The `leaseToken` of the offer.")] lease_token: String,
    ) -> Result<TaskObject> {
        let worker_id = principal(ctx)?.subject.clone();
        with_lease(ctx, &task_id, move |_, queue, now| Command::Accept {
            worker_id: worker_id.clone(),
            lease_token: lease_token.clone(),
            lease_expires_at: now + queue.lease(),
        })
        .await
    }

    /// Reports success: `RUNNING` → `SUCCEEDED` with an optional result (JSON, at most
    /// 64 KiB). `LEASE_LOST` unless the caller holds the current lease.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Worker])")]
    async fn complete_task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The task's `id`, as offered.")] task_id: ID,
        #[graphql(desc = "The `leaseToken` of the offer.")] lease_token: String,
        #[graphql(desc = "What the task produced: any JSON up to 64 KiB serialized.")] result: Option<JsonValue>,
    ) -> Result<TaskObject> {
        let worker_id = principal(ctx)?.subject.clone();
        let result = result
            .map(|r| Payload::parse(r.0).map(Payload::into_value))
            .transpose()
            .map_err(|e| ApiError::from(e.in_field("result")))?;
        with_lease(ctx, &task_id, move |_, _, _| Command::Complete {
            worker_id: worker_id.clone(),
            lease_token: lease_token.clone(),
            result: result.clone(),
        })
        .await
    }

    /// Reports failure. A retryable failure backs off through `SCHEDULED` (the queue's
    /// exponential backoff with full jitter) until `maxAttempts`, then `DEAD`;
    /// `retryable: false` goes straight to `DEAD`. `LEASE_LOST` unless the caller holds
    /// the current lease.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Worker])")]
    async fn fail_task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The task's `id`, as offered.")] task_id: ID,
        #[graphql(desc = "The `leaseToken` of the offer.")] lease_token: String,
        #[graphql(desc = "What went wrong, at most 4,000 characters; kept as `lastError`.")] error: String,
        #[graphql(default = true, desc = "`false`: no retry, the task is `DEAD` at once.")] retryable: bool,
    ) -> Result<TaskObject> {
        let worker_id = principal(ctx)?.subject.clone();
        if error.chars().count() > MAX_ERROR_CHARS {
            return Err(ApiError::from(DomainError::invalid("error", "at most 4000 characters")).into());
        }
        with_lease(ctx, &task_id, move |task, queue, now| {
            let delay = queue.retry.delay(task.attempts.max(1), &mut rand::rng());
            Command::Fail {
                worker_id: worker_id.clone(),
                lease_token: lease_token.clone(),
                error: error.clone(),
                retryable,
                retry_at: now + chrono::Duration::from_std(delay).unwrap_or_default(),
            }
        })
        .await
    }

    /// Gives a task back without failing it: it is `QUEUED` again for another worker
    /// (a started run keeps its attempt counted). `LEASE_LOST` unless the caller holds
    /// the current lease.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Worker])")]
    async fn release_task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The task's `id`, as offered.")] task_id: ID,
        #[graphql(desc = "The `leaseToken` of the offer.")] lease_token: String,
    ) -> Result<TaskObject> {
        let worker_id = principal(ctx)?.subject.clone();
        with_lease(ctx, &task_id, move |_, _, _| Command::Release {
            worker_id: worker_id.clone(),
            lease_token: lease_token.clone(),
        })
        .await
    }

    /// Stops new offers to a worker; its running tasks finish (admin).
    #[graphql(guard = "RoleGuard::any_of(&[Role::Admin])")]
    async fn drain_worker(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The worker's `id`.")] id: ID,
    ) -> Result<WorkerObject> {
        Ok(WorkerObject(store(ctx)?.drain_worker(&id).await.map_err(ApiError::from)?))
    }
}

/// Queue administration and operator recovery.
#[derive(Default, Debug)]
pub struct QueueMutation;

#[Object]
impl QueueMutation {
    /// Stops offers from a queue; tasks keep arriving (admin).
    #[graphql(guard = "RoleGuard::any_of(&[Role::Admin])")]
    async fn pause_queue(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The queue's name.")] name: String,
    ) -> Result<QueueObject> {
        set_paused(ctx, &name, true).await
    }

    /// Resumes offers from a queue (admin).
    #[graphql(guard = "RoleGuard::any_of(&[Role::Admin])")]
    async fn resume_queue(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The queue's name.")] name: String,
    ) -> Result<QueueObject> {
        set_paused(ctx, &name, false).await
    }

    /// Changes a queue's limits and retry settings (admin).
    #[graphql(guard = "RoleGuard::any_of(&[Role::Admin])")]
    async fn configure_queue(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The queue and the settings to change.")] input: ConfigureQueueInput,
    ) -> Result<QueueObject> {
        let store = store(ctx)?;
        QueueName::parse(&input.name).map_err(|e| ApiError::from(e.in_field("input")))?;
        let current = store.queue_settings(&input.name).await.map_err(ApiError::from)?;
        let next = input.changes().apply(current).map_err(|e| ApiError::from(e.in_field("input")))?;
        Ok(QueueObject(store.save_queue(&next).await.map_err(ApiError::from)?))
    }

    /// Runs a `DEAD`, `CANCELLED` or backing-off task again now (operators).
    #[graphql(guard = "RoleGuard::any_of(&[Role::Operator])")]
    async fn retry_task(&self, ctx: &Context<'_>, #[graphql(desc = "The task's `id`.")] id: ID) -> Result<TaskObject> {
        let id = TaskId::parse(&id).ok_or(ApiError::NotFound("task"))?;
        let task = store(ctx)?
            .transition(id, traceparent(ctx), |task| Ok(machine::transition(task, Command::Retry, Utc::now())?))
            .await
            .map_err(ApiError::from)?;
        Ok(TaskObject(task))
    }

    /// Requeues every `DEAD` task of a queue with a fresh attempt budget; returns how
    /// many (admin).
    #[graphql(guard = "RoleGuard::any_of(&[Role::Admin])")]
    async fn requeue_dead_tasks(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The queue's name.")] queue: String,
    ) -> Result<i32> {
        QueueName::parse(&queue).map_err(|e| ApiError::from(e.in_field("queue")))?;
        let store = store(ctx)?;
        let mut requeued = 0i32;
        loop {
            let ids = store.dead_task_ids(&queue, 500).await.map_err(ApiError::from)?;
            if ids.is_empty() {
                break;
            }
            for id in ids.iter().filter_map(|id| TaskId::parse(id)) {
                let result = store
                    .transition(id, traceparent(ctx), |task| {
                        Ok(machine::transition(task, Command::Requeue, Utc::now())?)
                    })
                    .await;
                match result {
                    Ok(_) => requeued += 1,
                    // Requeued or changed by someone else meanwhile: not ours to count.
                    Err(e) if e.code() == taskwire_domain::ErrorCode::Conflict => {}
                    Err(e) => return Err(ApiError::from(e).into()),
                }
            }
            if ids.len() < 500 {
                break;
            }
        }
        Ok(requeued)
    }
}

/// The tasks a heartbeat names: at most [`MAX_HEARTBEAT_TASKS`] ids, else
/// `BAD_USER_INPUT` on `tasks`. An id that is not a task id is dropped: it names no task,
/// so the caller cannot hold it, and one bad id must not fail the heartbeat and let every
/// other lease lapse.
fn named_tasks(tasks: &[ID]) -> Result<Vec<TaskId>> {
    if tasks.len() > MAX_HEARTBEAT_TASKS {
        return Err(ApiError::from(DomainError::invalid("tasks", "at most 1000 task ids per call")).into());
    }
    Ok(tasks.iter().filter_map(|id| TaskId::parse(id)).collect())
}

/// Applies a worker command built from the task, its queue's settings and the time.
/// A task the caller does not hold is `LEASE_LOST`, and so is a task that does not exist
/// (or an id that names none), with the same message: a worker learns nothing about
/// tasks it holds no lease on, not even whether they exist.
async fn with_lease<F>(ctx: &Context<'_>, task_id: &ID, command: F) -> Result<TaskObject>
where
    F: Fn(&Task, &QueueSettings, DateTime<Utc>) -> Command + Send + Sync + 'static,
{
    let Some(id) = TaskId::parse(task_id) else {
        return Err(ApiError::from(DomainError::LeaseLost).into());
    };
    let outcome = store(ctx)?
        .transition_in_queue(id, traceparent(ctx), move |task, queue| {
            let now = Utc::now();
            Ok(machine::transition(task, command(task, queue, now), now)?)
        })
        .await;
    match outcome {
        Ok(task) => Ok(TaskObject(task)),
        Err(StoreError::NotFound("task")) => Err(ApiError::from(DomainError::LeaseLost).into()),
        Err(e) => Err(ApiError::from(e).into()),
    }
}

async fn set_paused(ctx: &Context<'_>, name: &str, paused: bool) -> Result<QueueObject> {
    let store = store(ctx)?;
    QueueName::parse(name).map_err(|e| ApiError::from(e.in_field("name")))?;
    let mut settings = store.queue_settings(name).await.map_err(ApiError::from)?;
    settings.paused = paused;
    Ok(QueueObject(store.save_queue(&settings).await.map_err(ApiError::from)?))
}

/// Validates and creates a `createTasks` batch, all or nothing (errors name
/// `inputs[i].field`).
async fn create_all(ctx: &Context<'_>, inputs: Vec<CreateTaskInput>) -> Result<Vec<CreateTaskPayload>> {
    let caller = principal(ctx)?;
    let now = Utc::now();
    let mut batch = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let new = NewTask::parse(input.into(), &caller.subject, now)
            .map_err(|e| ApiError::from(e.in_field(&format!("inputs[{i}]"))))?;
        batch.push(new);
    }
    if batch.is_empty() {
        return Ok(vec![]);
    }
    let outcomes =
        store(ctx)?.create_tasks(batch, CreateMode::AllOrNothing, traceparent(ctx)).await.map_err(ApiError::from)?;
    outcomes.into_iter().map(payload).collect()
}

fn payload(outcome: CreateOutcome) -> Result<CreateTaskPayload> {
    match outcome {
        CreateOutcome::Created(task) => Ok(CreateTaskPayload { task: TaskObject(task), created: true }),
        CreateOutcome::Existing(task) => Ok(CreateTaskPayload { task: TaskObject(task), created: false }),
        CreateOutcome::Conflict => Err(ApiError::from(DomainError::IdempotencyConflict).into()),
    }
}
