//! Per-request DataLoaders: every `Task.events`, `Task.worker` and `TaskEvent.task` of a
//! response is loaded in one batched statement per kind, however many tasks it lists.
//! A fresh set is made for every request, so nothing leaks between callers. Tasks by id
//! come through the shared [`TaskCache`] (L1 → L2 → database) for requests; a
//! subscription's loaders read the database directly, so every event resolves the task
//! as it is then.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use taskwire_domain::{
    TaskId,
    task::{Task, TaskEvent},
};

use crate::{cache::TaskCache, error::ApiError};
use taskwire_store::{Store, WorkerRecord};

/// The loaders of one request, each made on first use: most operations need one kind or
/// none (a `task(id)` that L1 holds needs none), and making all three for every request
/// showed in the cached-read profile (docs/BENCHMARKS.md).
pub struct Loaders {
    store: Store,
    /// The task cache, for requests; `None` for a subscription's loaders, which read the
    /// database and keep nothing between loads.
    cache: Option<TaskCache>,
    tasks: OnceLock<DataLoader<TaskLoader, HashMapCache>>,
    events: OnceLock<DataLoader<EventsLoader>>,
    workers: OnceLock<DataLoader<WorkerLoader>>,
}

impl std::fmt::Debug for Loaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loaders")
    }
}

impl Loaders {
    /// A set for one subscription: it lives as long as the stream, so nothing is cached
    /// (each event must see the task as it is then), but loads are still batched.
    pub fn uncached(store: &Store) -> Arc<Loaders> {
        Loaders::build(store, None)
    }

    /// A fresh set for one request over `store`, reading tasks through `cache`.
    pub fn new(store: &Store, cache: &TaskCache) -> Arc<Loaders> {
        Loaders::build(store, Some(cache.clone()))
    }

    fn build(store: &Store, cache: Option<TaskCache>) -> Arc<Loaders> {
        Arc::new(Loaders {
            store: store.clone(),
            cache,
            tasks: OnceLock::new(),
            events: OnceLock::new(),
            workers: OnceLock::new(),
        })
    }

    /// Tasks by id, cached for the request (lists prime it, so nested `TaskEvent.task`
    /// fields cost nothing); uncached for a subscription.
    pub fn tasks(&self) -> &DataLoader<TaskLoader, HashMapCache> {
        self.tasks.get_or_init(|| {
            let loader = DataLoader::with_cache(
                TaskLoader { store: self.store.clone(), cache: self.cache.clone() },
                tokio::spawn,
                HashMapCache::default(),
            );
            if self.cache.is_none() {
                loader.enable_all_cache(false);
            }
            loader
        })
    }

    /// The latest N events by (task, N).
    pub fn events(&self) -> &DataLoader<EventsLoader> {
        self.events.get_or_init(|| DataLoader::new(EventsLoader(self.store.clone()), tokio::spawn))
    }

    /// Workers by id.
    pub fn workers(&self) -> &DataLoader<WorkerLoader> {
        self.workers.get_or_init(|| DataLoader::new(WorkerLoader(self.store.clone()), tokio::spawn))
    }

    /// Task `id` as this process's L1 cache holds it, without waiting: for a request's
    /// top-level `task(id)`, which has nothing to batch with. A DataLoader load waits for
    /// its batch window (1 ms, on a timer thread) before it even looks at L1; a hit here
    /// answers at once. `None` on a miss (then load through [`Loaders::tasks`]) and for a
    /// subscription's loaders.
    pub fn local_task(&self, id: TaskId) -> Option<Task> {
        self.cache.as_ref()?.local(id).map(|task| Task::clone(&task))
    }
}

/// The loaders of one subscription, made when its first event needs one: most
/// subscriptions select no field that loads anything, and a set is memory an open
/// subscription would otherwise hold for its whole life. Uncached, like [`Loaders::uncached`].
#[derive(Debug, Default)]
pub struct SubscriptionLoaders(OnceLock<Arc<Loaders>>);

impl SubscriptionLoaders {
    /// The set, made over `store` on first use.
    pub fn get_or_build(&self, store: &Store) -> &Loaders {
        self.0.get_or_init(|| Loaders::uncached(store))
    }
}

/// Loads tasks by id: through the cache, or `WHERE id IN (…)` without one.
#[derive(Debug)]
pub struct TaskLoader {
    store: Store,
    cache: Option<TaskCache>,
}

impl Loader<TaskId> for TaskLoader {
    type Value = Task;
    type Error = ApiError;

    async fn load(&self, keys: &[TaskId]) -> Result<HashMap<TaskId, Task>, ApiError> {
        match &self.cache {
            Some(cache) => {
                let tasks = cache.get_many(&self.store, keys).await?;
                Ok(tasks.into_iter().map(|(id, task)| (id, Task::clone(&task))).collect())
            }
            None => {
                let tasks = self.store.tasks_by_ids(keys).await?;
                Ok(tasks.into_iter().map(|t| (t.id, t)).collect())
            }
        }
    }
}

/// Loads the latest `n` events of tasks, one windowed statement per distinct `n`.
#[derive(Debug)]
pub struct EventsLoader(Store);

impl Loader<(TaskId, u32)> for EventsLoader {
    type Value = Vec<TaskEvent>;
    type Error = ApiError;

    async fn load(&self, keys: &[(TaskId, u32)]) -> Result<HashMap<(TaskId, u32), Vec<TaskEvent>>, ApiError> {
        let mut by_last: HashMap<u32, Vec<TaskId>> = HashMap::new();
        for (id, last) in keys {
            by_last.entry(*last).or_default().push(*id);
        }
        let mut out = HashMap::with_capacity(keys.len());
        for (last, ids) in by_last {
            let mut events = self.0.latest_events(&ids, last).await?;
            for id in ids {
                out.insert((id, last), events.remove(&id).unwrap_or_default());
            }
        }
        Ok(out)
    }
}

/// Loads workers by id.
#[derive(Debug)]
pub struct WorkerLoader(Store);

impl Loader<String> for WorkerLoader {
    type Value = WorkerRecord;
    type Error = ApiError;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, WorkerRecord>, ApiError> {
        let workers = self.0.workers_by_ids(keys).await?;
        Ok(workers.into_iter().map(|w| (w.id.clone(), w)).collect())
    }
}
