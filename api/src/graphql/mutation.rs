//! Mutations, one object per area, merged into `Mutation`.

use async_graphql::{Context, ID, MergedObject, Object, Result};
use chrono::Utc;
use taskwire_domain::{
    DomainError, NewTask, Role, TaskId,
    machine::{self, Command},
};

use super::{
    context::{principal, store, traceparent},
    guards::RoleGuard,
    types::{CreateTaskInput, CreateTaskPayload, TaskObject},
};
use crate::{
    error::ApiError,
    store::{CreateMode, CreateOutcome},
};

/// Most inputs one `createTasks` call accepts.
pub const MAX_CREATE_BATCH: usize = 500;

/// The root mutation type.
#[derive(MergedObject, Default, Debug)]
pub struct Mutation(TaskMutation);

/// Task writes.
#[derive(Default, Debug)]
pub struct TaskMutation;

#[Object]
impl TaskMutation {
    /// Creates a task. Answers after the task, its first event and its outbox message
    /// are committed.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Client])")]
    async fn create_task(&self, ctx: &Context<'_>, input: CreateTaskInput) -> Result<CreateTaskPayload> {
        let mut payloads = create(ctx, vec![input], "input").await?;
        payloads.pop().ok_or_else(|| ApiError::Internal.into())
    }

    /// Creates up to 500 tasks in one transaction. All or nothing: an invalid input or
    /// a conflicting idempotency key fails the whole call.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Client])")]
    async fn create_tasks(&self, ctx: &Context<'_>, inputs: Vec<CreateTaskInput>) -> Result<Vec<CreateTaskPayload>> {
        if inputs.len() > MAX_CREATE_BATCH {
            return Err(ApiError::from(DomainError::invalid("inputs", "at most 500 inputs per call")).into());
        }
        create(ctx, inputs, "inputs").await
    }

    /// Cancels a task that has not finished. Clients may cancel their own tasks,
    /// operators and admins any task.
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn cancel_task(&self, ctx: &Context<'_>, id: ID, reason: Option<String>) -> Result<TaskObject> {
        let caller = principal(ctx)?;
        if reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
            return Err(ApiError::from(DomainError::invalid("reason", "at most 1000 characters")).into());
        }
        let id = TaskId::parse(&id).ok_or(ApiError::NotFound("task"))?;
        let task = store(ctx)?
            .transition(id, traceparent(ctx), |task| {
                if !caller.can_read_task(&task.created_by, task.worker_id.as_deref()) {
                    return Err(ApiError::NotFound("task"));
                }
                if !caller.can_cancel_task(&task.created_by) {
                    return Err(ApiError::Forbidden);
                }
                Ok(machine::transition(task, Command::Cancel { reason: reason.clone() }, Utc::now())?)
            })
            .await?;
        Ok(TaskObject(task))
    }
}

/// Validates and creates `inputs` (field names in errors are `field[i].…` for batches).
async fn create(ctx: &Context<'_>, inputs: Vec<CreateTaskInput>, field: &str) -> Result<Vec<CreateTaskPayload>> {
    let caller = principal(ctx)?;
    let now = Utc::now();
    let batched = field == "inputs";
    let mut batch = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let prefix = if batched { format!("{field}[{i}]") } else { field.to_owned() };
        let new =
            NewTask::parse(input.into(), &caller.subject, now).map_err(|e| ApiError::from(e.in_field(&prefix)))?;
        batch.push(new);
    }
    if batch.is_empty() {
        return Ok(vec![]);
    }
    let outcomes = store(ctx)?.create_tasks(batch, CreateMode::AllOrNothing, traceparent(ctx)).await?;
    outcomes
        .into_iter()
        .map(|outcome| match outcome {
            CreateOutcome::Created(task) => Ok(CreateTaskPayload { task: TaskObject(task), created: true }),
            CreateOutcome::Existing(task) => Ok(CreateTaskPayload { task: TaskObject(task), created: false }),
            CreateOutcome::Conflict => Err(ApiError::from(DomainError::IdempotencyConflict).into()),
        })
        .collect()
}
