//! Queries, one object per area, merged into `Query`.

use async_graphql::{
    Context, ID, MergedObject, Object, Result,
    connection::{Connection, Edge},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use taskwire_domain::{DomainError, Principal, Role, TaskId};

use super::{
    context::{loaders, principal, store},
    guards::RoleGuard,
    types::{QueueObject, TaskFilter, TaskObject, Viewer, WorkerObject, WorkerStatus},
};
use crate::error::ApiError;
use taskwire_store::{TaskListQuery, TaskScope};

/// Largest page of the `tasks` connection.
pub const MAX_PAGE_SIZE: i32 = 100;
/// Page size when `first` is absent or null.
pub const DEFAULT_PAGE_SIZE: i32 = 20;

/// The root query type.
#[derive(MergedObject, Default, Debug)]
pub struct Query(ViewerQuery, TaskQuery, WorkerQuery, QueueQuery);

/// Who am I.
#[derive(Default, Debug)]
pub struct ViewerQuery;

#[Object]
impl ViewerQuery {
    /// The authenticated caller.
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn me(&self, ctx: &Context<'_>) -> Result<Viewer> {
        let caller = principal(ctx)?;
        Ok(Viewer { subject: caller.subject.clone(), roles: caller.roles.iter().map(|r| (*r).into()).collect() })
    }
}

/// Task reads.
#[derive(Default, Debug)]
pub struct TaskQuery;

#[Object]
impl TaskQuery {
    /// A task by id; `null` when it does not exist or the caller may not see it.
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn task(&self, ctx: &Context<'_>, id: ID) -> Result<Option<TaskObject>> {
        let caller = principal(ctx)?;
        let Some(id) = TaskId::parse(&id) else {
            return Ok(None);
        };
        let task = loaders(ctx)?.tasks.load_one(id).await?;
        Ok(task.filter(|t| caller.can_read_task(&t.created_by, t.worker_id.as_deref())).map(TaskObject))
    }

    /// Tasks visible to the caller, newest first (Relay connection).
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn tasks(
        &self,
        ctx: &Context<'_>,
        filter: Option<TaskFilter>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, TaskObject>> {
        let caller = principal(ctx)?;
        // Clients often send an explicit `null` for an unset variable: treat it as absent.
        let first = first.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(0..=MAX_PAGE_SIZE).contains(&first) {
            return Err(ApiError::from(DomainError::invalid("first", "must be between 0 and 100")).into());
        }
        let after = after.map(|c| decode_cursor(&c)).transpose()?;
        let filter = filter.unwrap_or_default();
        if let Some(creator) = &filter.created_by
            && !caller.sees_all_tasks()
            && *creator != caller.subject
        {
            return Err(ApiError::Forbidden.into());
        }
        let query = TaskListQuery {
            scope: scope_of(caller),
            statuses: filter.status.unwrap_or_default().into_iter().map(Into::into).collect(),
            queue: filter.queue,
            kind: filter.kind,
            created_by: filter.created_by,
            created_after: filter.created_after,
            created_before: filter.created_before,
            after,
            // One extra row tells whether there is a next page.
            limit: first as u64 + 1,
        };
        let mut tasks = store(ctx)?.list_tasks(&query).await.map_err(ApiError::from)?;
        let has_next = tasks.len() > first as usize;
        tasks.truncate(first as usize);
        // Nested fields (`TaskEvent.task`) find these without another query.
        loaders(ctx)?.tasks.feed_many(tasks.iter().map(|t| (t.id, t.clone()))).await;
        let mut connection = Connection::new(after.is_some(), has_next);
        connection.edges.extend(tasks.into_iter().map(|t| Edge::new(encode_cursor(t.id), TaskObject(t))));
        Ok(connection)
    }
}

/// Worker reads: operators see every worker, a worker sees itself.
#[derive(Default, Debug)]
pub struct WorkerQuery;

#[Object]
impl WorkerQuery {
    /// A worker by id; `null` when missing or not visible to the caller.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Operator, Role::Worker])")]
    async fn worker(&self, ctx: &Context<'_>, id: ID) -> Result<Option<WorkerObject>> {
        let caller = principal(ctx)?;
        if !caller.has(Role::Operator) && caller.subject != *id {
            return Ok(None);
        }
        Ok(loaders(ctx)?.workers.load_one(id.to_string()).await?.map(WorkerObject))
    }

    /// Workers, optionally of one queue and/or status, by id.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Operator])")]
    async fn workers(
        &self,
        ctx: &Context<'_>,
        queue: Option<String>,
        status: Option<WorkerStatus>,
    ) -> Result<Vec<WorkerObject>> {
        let workers = store(ctx)?.workers(queue.as_deref(), status.map(Into::into)).await.map_err(ApiError::from)?;
        Ok(workers.into_iter().map(WorkerObject).collect())
    }
}

/// Queue reads (operators).
#[derive(Default, Debug)]
pub struct QueueQuery;

#[Object]
impl QueueQuery {
    /// A queue's settings; every valid name has settings (defaults until configured).
    #[graphql(guard = "RoleGuard::any_of(&[Role::Operator])")]
    async fn queue(&self, ctx: &Context<'_>, name: String) -> Result<Option<QueueObject>> {
        if taskwire_domain::QueueName::parse(&name).is_err() {
            return Ok(None);
        }
        Ok(Some(QueueObject(store(ctx)?.queue_settings(&name).await.map_err(ApiError::from)?)))
    }

    /// Every queue that is configured or has tasks, by name.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Operator])")]
    async fn queues(&self, ctx: &Context<'_>) -> Result<Vec<QueueObject>> {
        let store = store(ctx)?;
        let mut queues = Vec::new();
        for name in store.queue_names().await.map_err(ApiError::from)? {
            queues.push(QueueObject(store.queue_settings(&name).await.map_err(ApiError::from)?));
        }
        Ok(queues)
    }
}

/// Which tasks `caller` may see.
fn scope_of(caller: &Principal) -> TaskScope {
    if caller.sees_all_tasks() {
        TaskScope::All
    } else {
        TaskScope::Restricted {
            created_by: caller.has(Role::Client).then(|| caller.subject.clone()),
            worker_id: caller.has(Role::Worker).then(|| caller.subject.clone()),
        }
    }
}

/// Cursors are opaque to clients: base64url of the task id.
fn encode_cursor(id: TaskId) -> String {
    URL_SAFE_NO_PAD.encode(id.to_string())
}

fn decode_cursor(cursor: &str) -> Result<TaskId, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|s| TaskId::parse(&s))
        .ok_or_else(|| DomainError::invalid("after", "is not a cursor from this connection").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = TaskId::generate(chrono::Utc::now());
        assert_eq!(decode_cursor(&encode_cursor(id)).ok(), Some(id));
        assert!(decode_cursor("not a cursor").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("42")).is_err());
    }

    #[test]
    fn scope_follows_roles() {
        assert_eq!(scope_of(&Principal::new("op", [Role::Operator])), TaskScope::All);
        assert_eq!(
            scope_of(&Principal::new("a", [Role::Client, Role::Worker])),
            TaskScope::Restricted { created_by: Some("a".into()), worker_id: Some("a".into()) }
        );
        assert_eq!(
            scope_of(&Principal::new("w", [Role::Worker])),
            TaskScope::Restricted { created_by: None, worker_id: Some("w".into()) }
        );
    }
}
