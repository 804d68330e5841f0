//! Queries, one object per area, merged into `Query`.

use async_graphql::{Context, ID, MergedObject, Object, Result, SimpleObject};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use taskwire_domain::{DomainError, Principal, Role, TaskId};

use super::{
    context::{loaders, principal, store},
    guards::RoleGuard,
    types::{
        Node, NodeKind, QueueObject, TaskFilter, TaskObject, Viewer, WorkerObject, WorkerStatus, decode_global_id,
    },
};
use crate::error::ApiError;
use taskwire_store::{TaskListQuery, TaskScope};

/// Largest page of the `tasks` connection.
pub const MAX_PAGE_SIZE: i32 = 100;
/// Page size when `first` and `last` are both absent or null.
pub const DEFAULT_PAGE_SIZE: i32 = 20;
/// `tasks { totalCount }` counts at most this many tasks.
pub const TOTAL_COUNT_CAP: u64 = 10_000;
/// Most ids one `nodes` call takes (the largest page of `tasks`).
pub const MAX_NODES: usize = MAX_PAGE_SIZE as usize;

/// The root query type.
#[derive(MergedObject, Default, Debug)]
pub struct Query(ViewerQuery, NodeQuery, TaskQuery, WorkerQuery, QueueQuery);

/// Who am I.
#[derive(Default, Debug)]
pub struct ViewerQuery;

#[Object]
impl ViewerQuery {
    /// The authenticated caller.
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn me(&self, ctx: &Context<'_>) -> Result<Viewer> {
        let caller = principal(ctx)?;
        Ok(Viewer {
            id: ID(caller.subject.clone()),
            subject: caller.subject.clone(),
            roles: caller.roles.iter().map(|r| (*r).into()).collect(),
        })
    }
}

/// Task reads.
#[derive(Default, Debug)]
pub struct TaskQuery;

#[Object]
impl TaskQuery {
    /// A task by id; `null` when it does not exist or the caller may not see it.
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn task(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The task's `id`.")] id: ID,
    ) -> Result<Option<TaskObject>> {
        read_task(ctx, &id).await
    }

    /// Tasks visible to the caller, newest first (Relay connection). Page forwards with
    /// `first`/`after` or backwards with `last`/`before`; `first` and `last` together
    /// are `BAD_USER_INPUT`. Either goes from 0 to 100; with neither, the page holds 20.
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn tasks(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only tasks matching every given condition.")] filter: Option<TaskFilter>,
        #[graphql(desc = "The newest `first` tasks of the range (0–100; 20 when `last` is absent too).")] first: Option<
            i32,
        >,
        #[graphql(desc = "Only tasks older than this cursor (an edge's `cursor`).")] after: Option<String>,
        #[graphql(desc = "The oldest `last` tasks of the range (0–100), still listed newest first.")] last: Option<i32>,
        #[graphql(desc = "Only tasks newer than this cursor (an edge's `cursor`).")] before: Option<String>,
    ) -> Result<TaskConnection> {
        let caller = principal(ctx)?;
        // Clients often send an explicit `null` for an unset variable: treat it as absent.
        let (size, backward) = match (first, last) {
            (Some(_), Some(_)) => {
                return Err(ApiError::from(DomainError::invalid("last", "pass `first` or `last`, not both")).into());
            }
            (None, Some(last)) => (last, true),
            (first, None) => (first.unwrap_or(DEFAULT_PAGE_SIZE), false),
        };
        if !(0..=MAX_PAGE_SIZE).contains(&size) {
            let field = if backward { "last" } else { "first" };
            return Err(ApiError::from(DomainError::invalid(field, "must be between 0 and 100")).into());
        }
        let after = after.map(|c| decode_cursor(&c, "after")).transpose()?;
        let before = before.map(|c| decode_cursor(&c, "before")).transpose()?;
        let filter = filter.unwrap_or_default();
        if let Some(creator) = &filter.created_by
            && !caller.sees_all_tasks()
            && *creator != caller.subject
        {
            return Err(ApiError::Forbidden.into());
        }
        let all = TaskListQuery {
            scope: scope_of(caller),
            statuses: filter.status.unwrap_or_default().into_iter().map(Into::into).collect(),
            queue: filter.queue,
            kind: filter.kind,
            created_by: filter.created_by,
            created_after: filter.created_after.map(|t| t.0),
            created_before: filter.created_before.map(|t| t.0),
            after: None,
            before: None,
            oldest_first: false,
            limit: 0,
        };
        // One extra row tells whether the range holds more in the paging direction.
        let page = TaskListQuery { after, before, oldest_first: backward, limit: size as u64 + 1, ..all.clone() };
        let store = store(ctx)?;
        let mut tasks = store.list_tasks(&page).await.map_err(ApiError::from)?;
        let has_more = tasks.len() > size as usize;
        tasks.truncate(size as usize);
        if backward {
            tasks.reverse();
        }
        // Beyond the range the cursors cut: one indexed `LIMIT 1` read each, only when a
        // cursor bounds that side, and only when the client asks (see `PageInfo`).
        let newest = tasks.first().map(|t| t.id);
        let oldest = tasks.last().map(|t| t.id);
        let previous = if backward && has_more {
            Beyond::Known(true)
        } else if after.is_some() {
            Beyond::Probe { after: None, before: newest.or(if backward { before } else { None }).or(after) }
        } else {
            Beyond::Known(false)
        };
        let next = if !backward && has_more {
            Beyond::Known(true)
        } else if before.is_some() {
            Beyond::Probe { after: oldest.or(if backward { None } else { after }).or(before), before: None }
        } else {
            Beyond::Known(false)
        };
        // Nested fields (`TaskEvent.task`) find these without another query.
        loaders(ctx)?.tasks().feed_many(tasks.iter().map(|t| (t.id, t.clone()))).await;
        let edges: Vec<TaskEdge> =
            tasks.into_iter().map(|t| TaskEdge { cursor: encode_cursor(t.id), node: TaskObject(t) }).collect();
        let page_info = PageInfo {
            all: all.clone(),
            previous,
            next,
            start_cursor: edges.first().map(|e| e.cursor.clone()),
            end_cursor: edges.last().map(|e| e.cursor.clone()),
        };
        Ok(TaskConnection { page_info, edges, all })
    }
}

/// A page of tasks (a Relay connection), newest first.
pub struct TaskConnection {
    page_info: PageInfo,
    edges: Vec<TaskEdge>,
    /// Every task of the connection, whatever the cursors: what `totalCount` counts.
    all: TaskListQuery,
}

/// A page of tasks (a Relay connection), newest first.
#[Object]
impl TaskConnection {
    /// Where this page is in the whole list.
    async fn page_info(&self) -> &PageInfo {
        &self.page_info
    }
    /// The page's tasks with their cursors, newest first.
    async fn edges(&self) -> &[TaskEdge] {
        &self.edges
    }
    /// The page's tasks, newest first (the `node` of each edge).
    async fn nodes(&self) -> Vec<&TaskObject> {
        self.edges.iter().map(|e| &e.node).collect()
    }
    /// How many tasks match the filter and are visible to the caller, whatever the
    /// cursors and page size, counting at most 10,000: `10000` means 10,000 or more.
    /// Counted when asked for, as of the moment of the count (the page may be older
    /// or newer by a few tasks).
    async fn total_count(&self, ctx: &Context<'_>) -> Result<i32> {
        let count = store(ctx)?.count_tasks(&self.all, TOTAL_COUNT_CAP).await.map_err(ApiError::from)?;
        Ok(i32::try_from(count.min(TOTAL_COUNT_CAP)).unwrap_or(i32::MAX))
    }
}

/// One task of a `tasks` page, with its cursor.
#[derive(SimpleObject)]
pub struct TaskEdge {
    /// The task.
    node: TaskObject,
    /// Where the task is in the list: pass it as `after` or `before`. Opaque.
    cursor: String,
}

/// What a page knows of its place in the whole list; see the `#[Object]` impl.
pub struct PageInfo {
    /// Every task of the connection, for the reads past the cursors.
    all: TaskListQuery,
    previous: Beyond,
    next: Beyond,
    start_cursor: Option<String>,
    end_cursor: Option<String>,
}

/// Whether tasks lie beyond one side of a page: known from the page's extra row, or
/// found, when a client asks, by reading one task past the cursor.
enum Beyond {
    Known(bool),
    Probe { after: Option<TaskId>, before: Option<TaskId> },
}

impl PageInfo {
    async fn beyond(&self, ctx: &Context<'_>, side: &Beyond) -> Result<bool> {
        match side {
            Beyond::Known(known) => Ok(*known),
            Beyond::Probe { after, before } => {
                let probe = TaskListQuery { after: *after, before: *before, limit: 1, ..self.all.clone() };
                Ok(!store(ctx)?.list_tasks(&probe).await.map_err(ApiError::from)?.is_empty())
            }
        }
    }
}

/// Where a page is in the whole list (Relay `PageInfo`).
#[Object]
impl PageInfo {
    /// Whether a task newer than this page's first edge matches (with `after` on an
    /// empty page: newer than `after`). False when neither `after` nor `last` is given:
    /// the page then starts at the newest task.
    async fn has_previous_page(&self, ctx: &Context<'_>) -> Result<bool> {
        self.beyond(ctx, &self.previous).await
    }
    /// Whether a task older than this page's last edge matches (with `before` on an
    /// empty page: older than `before`). False when `last` is given without `before`:
    /// the page then ends at the oldest task.
    async fn has_next_page(&self, ctx: &Context<'_>) -> Result<bool> {
        self.beyond(ctx, &self.next).await
    }
    /// The first edge's cursor; `null` when the page is empty. Pass it as `before` for
    /// the previous page.
    async fn start_cursor(&self) -> Option<&str> {
        self.start_cursor.as_deref()
    }
    /// The last edge's cursor; `null` when the page is empty. Pass it as `after` for
    /// the next page.
    async fn end_cursor(&self) -> Option<&str> {
        self.end_cursor.as_deref()
    }
}

/// Object identification (Relay): any `Node` by its global id.
#[derive(Default, Debug)]
pub struct NodeQuery;

#[Object]
impl NodeQuery {
    /// The `Task` or `Worker` with this global id (its `nodeId`), read as `task(id)` and
    /// `worker(id)` read it: `null` when it does not exist, the caller may not see it, or
    /// the id is not a global id; a worker's global id asked by a caller without the
    /// worker or operator role is `FORBIDDEN`, as `worker(id)` is.
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn node(&self, ctx: &Context<'_>, #[graphql(desc = "A `nodeId`.")] id: ID) -> Result<Option<Node>> {
        read_node(ctx, &id).await
    }

    /// `node(id)` for each of up to 100 ids, in the order given (a repeated id repeats
    /// its answer). An id whose `node` would be an error is `null` here, with the error
    /// at its index (`path` `["nodes", i]`); more than 100 ids is `BAD_USER_INPUT`.
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn nodes(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Up to 100 `nodeId`s.")] ids: Vec<ID>,
    ) -> Result<Vec<Option<Node>>> {
        if ids.len() > MAX_NODES {
            return Err(ApiError::from(DomainError::invalid("ids", "at most 100 ids per call")).into());
        }
        // Concurrently, so the DataLoaders read them in one batch per type.
        let answers = futures::future::join_all(ids.iter().map(|id| read_node(ctx, id))).await;
        Ok(answers
            .into_iter()
            .enumerate()
            .map(|(i, answer)| {
                answer.unwrap_or_else(|error| {
                    let mut error = ctx.set_error_path(error.into_server_error(ctx.item.pos));
                    error.path.push(async_graphql::PathSegment::Index(i));
                    ctx.add_error(error);
                    None
                })
            })
            .collect())
    }
}

/// `task(id)`: the task, if it exists and the caller may read it.
async fn read_task(ctx: &Context<'_>, id: &str) -> Result<Option<TaskObject>> {
    let caller = principal(ctx)?;
    let Some(id) = TaskId::parse(id) else {
        return Ok(None);
    };
    let loaders = loaders(ctx)?;
    let task = match loaders.local_task(id) {
        Some(task) => Some(task),
        None => loaders.tasks().load_one(id).await?,
    };
    Ok(task.filter(|t| caller.can_read_task(&t.created_by, t.worker_id.as_deref())).map(TaskObject))
}

/// `worker(id)`: operators read any worker, a worker itself; other roles are refused.
async fn read_worker(ctx: &Context<'_>, id: &str) -> Result<Option<WorkerObject>> {
    let caller = principal(ctx)?;
    if !caller.has_any(&[Role::Operator, Role::Worker]) {
        return Err(ApiError::Forbidden.into());
    }
    if !caller.has(Role::Operator) && caller.subject != id {
        return Ok(None);
    }
    Ok(loaders(ctx)?.workers().load_one(id.to_owned()).await?.map(WorkerObject))
}

/// `node(id)`: a global id read as its type's own query reads it.
async fn read_node(ctx: &Context<'_>, id: &str) -> Result<Option<Node>> {
    principal(ctx)?;
    match decode_global_id(id) {
        Some((NodeKind::Task, key)) => Ok(read_task(ctx, &key).await?.map(Node::Task)),
        Some((NodeKind::Worker, key)) => Ok(read_worker(ctx, &key).await?.map(Node::Worker)),
        None => Ok(None),
    }
}

/// Worker reads: operators see every worker, a worker sees itself.
#[derive(Default, Debug)]
pub struct WorkerQuery;

#[Object]
impl WorkerQuery {
    /// A worker by id; `null` when missing or not visible to the caller.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Operator, Role::Worker])")]
    async fn worker(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The worker's `id`.")] id: ID,
    ) -> Result<Option<WorkerObject>> {
        read_worker(ctx, &id).await
    }

    /// Workers, optionally of one queue and/or status, by id.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Operator])")]
    async fn workers(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only workers serving this queue.")] queue: Option<String>,
        #[graphql(desc = "Only workers in this status.")] status: Option<WorkerStatus>,
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
    async fn queue(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The queue's name; `null` answers an invalid name.")] name: String,
    ) -> Result<Option<QueueObject>> {
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

fn decode_cursor(cursor: &str, field: &str) -> Result<TaskId, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|s| TaskId::parse(&s))
        .ok_or_else(|| DomainError::invalid(field, "is not a cursor from this connection").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = TaskId::generate(chrono::Utc::now());
        assert_eq!(decode_cursor(&encode_cursor(id), "after").ok(), Some(id));
        assert!(decode_cursor("not a cursor", "after").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("42"), "before").is_err());
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
