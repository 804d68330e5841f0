//! The task read cache: L1 in process (moka) → L2 Redis → database (README, Operations (Caching)).
//!
//! What it guarantees:
//! - **One load per key at a time.** Concurrent misses on one task share one load
//!   (single-flight); a batch of misses is one `MGET` and at most one `WHERE id IN (…)`.
//! - **An old read never overwrites a newer state.** Every entry carries a *rank* derived
//!   from the task's row version: a task at version `v` ranks `2v`, a tombstone saying
//!   "version `v` exists, reload" ranks `2v − 1`, and "no such task" ranks 0. A write,
//!   in L1 or L2, only replaces an entry of lower rank. A reader that loaded version 3
//!   while version 4 committed can therefore not undo the tombstone (rank 7) that the
//!   outbox relay wrote for version 4, wherever the writes interleave.
//! - **Redis is optional and may fail.** Every Redis command goes through
//!   [`RedisLink`], which answers `None` when Redis is absent, slow or failing (and then
//!   opens its circuit breaker); reads then go to the database, at most
//!   `db_concurrency` batch loads at a time, and never fail because of Redis.
//!
//! How entries change: this process's own commits write the new task into L1 at once
//! ([`TaskCache::committed`], so a client reads its own writes). Every status event is
//! turned into a tombstone once in L2, by the outbox relay that publishes it and before it
//! publishes it ([`TaskCache::announce`]), so no process hears of a change through Kafka
//! while Redis still serves the version before it; and in every process's L1 by its status
//! consumer ([`TaskCache::invalidate_local`]). One L2 write per event, whatever the number
//! of processes; the relay publishes each outbox row at least once, so a relay that dies
//! between the two leaves the row to the next one, which writes the tombstone again.
//! Lists (`tasks(…)`) are not cached, only reads by id.
//!
//! Staleness that remains, by design: a heartbeat extends `leaseExpiresAt` in place
//! without a version bump or an event, so a leased task may be served up to the L1 TTL
//! behind it; that is why leased and other unsettled tasks are kept in L2 no longer than
//! in L1, and only settled tasks (`SUCCEEDED`, `CANCELLED`, `DEAD`) stay for the long L2
//! TTL. Lease tokens are never cached.
//!
//! What it must never do: serve a task without the caller's visibility check (the
//! resolvers do that on what it returns), or answer an error because Redis failed.

mod codec;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use moka::{Expiry, ops::compute::Op};
use rand::Rng;
use taskwire_domain::{TaskId, machine::Transition, task::Task};
use tokio::sync::Semaphore;

use crate::{error::ApiResult, metrics::Metrics, redis_link::RedisLink};
use taskwire_store::{CommitListener, Store};

/// How long a tombstone blocks stale fills. Longer than any request may take.
const TOMBSTONE_TTL: Duration = Duration::from_secs(30);

/// Sizes and lifetimes of the cache (`TASKWIRE_CACHE_*`).
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Memory L1 may use, by an estimate of each entry's size.
    pub l1_max_bytes: u64,
    /// Lifetime of an L1 entry.
    pub l1_ttl: Duration,
    /// Lifetime of a settled task in L2, ±10% jitter.
    pub l2_ttl: Duration,
    /// Lifetime of a "no such task" entry (L1 and L2).
    pub null_ttl: Duration,
    /// Concurrent batch loads from the database.
    pub db_concurrency: usize,
}

/// What an entry says about a task.
#[derive(Debug, Clone)]
enum Value {
    /// The task as of its version.
    Task(Arc<Task>),
    /// No such task (when loaded).
    Missing,
    /// A newer version exists than any value cached before; reload.
    Tombstone,
}

#[derive(Debug, Clone)]
struct Entry {
    rank: u64,
    value: Value,
}

impl Entry {
    fn task(task: Arc<Task>) -> Entry {
        Entry { rank: 2 * u64::from(task.version), value: Value::Task(task) }
    }

    fn missing() -> Entry {
        Entry { rank: 0, value: Value::Missing }
    }

    fn tombstone(version: u32) -> Entry {
        Entry { rank: (2 * u64::from(version)).saturating_sub(1), value: Value::Tombstone }
    }

    /// The task was deleted (retention): ranked above every version a task can have, so
    /// no load that read it before the deletion can put it back.
    fn deleted() -> Entry {
        Entry { rank: 2 * u64::from(u32::MAX) + 1, value: Value::Missing }
    }
}

/// Roughly the bytes an entry holds, so L1 is bounded by memory rather than by a count
/// of tasks whose payloads range from nothing to 64 KiB.
fn estimated_size(entry: &Entry) -> usize {
    const OVERHEAD: usize = 256;
    let Value::Task(task) = &entry.value else { return OVERHEAD };
    OVERHEAD + task.approximate_size()
}

/// Per-entry L1 lifetimes.
struct L1Expiry {
    ttl: Duration,
    null_ttl: Duration,
}

impl L1Expiry {
    fn for_entry(&self, entry: &Entry) -> Duration {
        match entry.value {
            Value::Task(_) => self.ttl,
            Value::Missing => self.null_ttl.min(self.ttl),
            Value::Tombstone => TOMBSTONE_TTL,
        }
    }
}

impl Expiry<TaskId, Entry> for L1Expiry {
    fn expire_after_create(&self, _: &TaskId, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(self.for_entry(entry))
    }

    fn expire_after_update(&self, _: &TaskId, entry: &Entry, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(self.for_entry(entry))
    }
}

/// Results of one batch load: `None` for ids that do not exist.
type Loaded = Arc<HashMap<TaskId, Option<Arc<Task>>>>;
type LoadFuture = Shared<BoxFuture<'static, ApiResult<Loaded>>>;

struct Inflight {
    generation: u64,
    load: LoadFuture,
}

struct Inner {
    l1: moka::sync::Cache<TaskId, Entry>,
    redis: Arc<RedisLink>,
    settings: CacheSettings,
    metrics: Metrics,
    inflight: Mutex<HashMap<TaskId, Inflight>>,
    generation: AtomicU64,
    db_permits: Semaphore,
}

/// The task cache. Cheap to clone.
#[derive(Clone)]
pub struct TaskCache(Arc<Inner>);

impl std::fmt::Debug for TaskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCache").field("l1_entries", &self.0.l1.entry_count()).finish_non_exhaustive()
    }
}

impl TaskCache {
    /// An empty cache over `redis` (which may be unconfigured: then L1 only).
    pub fn new(settings: CacheSettings, redis: Arc<RedisLink>, metrics: Metrics) -> TaskCache {
        let l1 = moka::sync::Cache::builder()
            .max_capacity(settings.l1_max_bytes)
            .weigher(|_, entry: &Entry| u32::try_from(estimated_size(entry)).unwrap_or(u32::MAX))
            .expire_after(L1Expiry { ttl: settings.l1_ttl, null_ttl: settings.null_ttl })
            .build();
        TaskCache(Arc::new(Inner {
            l1,
            redis,
            db_permits: Semaphore::new(settings.db_concurrency.max(1)),
            settings,
            metrics,
            inflight: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }))
    }

    /// The tasks among `ids` that exist, through L1, L2 and the database.
    pub async fn get_many(&self, store: &Store, ids: &[TaskId]) -> ApiResult<HashMap<TaskId, Arc<Task>>> {
        let inner = &self.0;
        let mut found = HashMap::with_capacity(ids.len());
        let mut missed = Vec::new();
        for id in ids {
            match inner.l1.get(id).map(|e| e.value) {
                Some(Value::Task(task)) => {
                    found.insert(*id, task);
                }
                Some(Value::Missing) => {}
                Some(Value::Tombstone) | None => missed.push(*id),
            }
        }
        let hits = (ids.len() - missed.len()) as u64;
        inner.metrics.cache_hits.with_label_values(&["l1"]).inc_by(hits);
        if missed.is_empty() {
            return Ok(found);
        }
        inner.metrics.cache_misses.with_label_values(&["l1"]).inc_by(missed.len() as u64);
        for loaded in futures::future::join_all(self.join_or_load(store, &missed)).await {
            // A joined load may cover other readers' ids too: take only ours.
            let loaded = loaded?;
            for id in &missed {
                if let Some(Some(task)) = loaded.get(id) {
                    found.insert(*id, task.clone());
                }
            }
        }
        Ok(found)
    }

    /// Joins the loads already running for some of `ids` and starts one load for the
    /// rest; returns every load's result.
    fn join_or_load(&self, store: &Store, ids: &[TaskId]) -> Vec<LoadFuture> {
        let inner = &self.0;
        let Ok(mut inflight) = inner.inflight.lock() else {
            // A poisoned map only loses the de-duplication, never a read.
            return vec![self.load_future(store, ids.to_vec(), None)];
        };
        let mut joined: Vec<LoadFuture> = Vec::new();
        let mut mine = Vec::new();
        for id in ids {
            match inflight.get(id) {
                Some(running) => {
                    if !joined.iter().any(|f| f.ptr_eq(&running.load)) {
                        joined.push(running.load.clone());
                    }
                }
                None => mine.push(*id),
            }
        }
        if !mine.is_empty() {
            let generation = inner.generation.fetch_add(1, Ordering::Relaxed);
            let load = self.load_future(store, mine.clone(), Some(generation));
            for id in mine {
                inflight.insert(id, Inflight { generation, load: load.clone() });
            }
            joined.push(load);
        }
        joined
    }

    /// One shared batch load. It removes its own in-flight entries when it ends, so
    /// whoever drives it to completion (the starter, or a joiner if the starter's request
    /// was dropped) cleans up; L1 is filled before that, so a late reader finds the value.
    fn load_future(&self, store: &Store, ids: Vec<TaskId>, generation: Option<u64>) -> LoadFuture {
        let cache = self.clone();
        let store = store.clone();
        async move {
            let result = cache.load(&store, &ids).await;
            if let Some(generation) = generation
                && let Ok(mut inflight) = cache.0.inflight.lock()
            {
                for id in &ids {
                    if inflight.get(id).is_some_and(|f| f.generation == generation) {
                        inflight.remove(id);
                    }
                }
            }
            result
        }
        .boxed()
        .shared()
    }

    async fn load(&self, store: &Store, ids: &[TaskId]) -> ApiResult<Loaded> {
        let inner = &self.0;
        let mut out: HashMap<TaskId, Option<Arc<Task>>> = HashMap::with_capacity(ids.len());
        let mut from_db = Vec::new();
        match self.l2_get(ids).await {
            Some(entries) => {
                for (id, entry) in ids.iter().zip(entries) {
                    // A tombstone in L1 says which version must at least be served.
                    let floor = inner.l1.get(id).map_or(0, |e| e.rank);
                    match entry {
                        Some(entry) if entry.rank >= floor && !matches!(entry.value, Value::Tombstone) => {
                            inner.metrics.cache_hits.with_label_values(&["l2"]).inc();
                            out.insert(
                                *id,
                                match &entry.value {
                                    Value::Task(task) => Some(task.clone()),
                                    _ => None,
                                },
                            );
                            self.l1_put(*id, entry);
                        }
                        _ => {
                            inner.metrics.cache_misses.with_label_values(&["l2"]).inc();
                            from_db.push(*id);
                        }
                    }
                }
            }
            None => from_db = ids.to_vec(),
        }
        if from_db.is_empty() {
            return Ok(Arc::new(out));
        }
        let tasks = {
            // Bounds the database work cache misses can cause, above all while Redis is
            // down and every miss would otherwise reach the database.
            let _permit = inner.db_permits.acquire().await.map_err(|_| crate::error::ApiError::Unavailable)?;
            inner.metrics.cache_db_loads.inc();
            store.tasks_by_ids(&from_db).await?
        };
        let mut by_id: HashMap<TaskId, Arc<Task>> = tasks.into_iter().map(|t| (t.id, Arc::new(t))).collect();
        let mut fills = Vec::with_capacity(from_db.len());
        for id in from_db {
            let entry = match by_id.remove(&id) {
                Some(task) => Entry::task(task),
                None => Entry::missing(),
            };
            out.insert(
                id,
                match &entry.value {
                    Value::Task(task) => Some(task.clone()),
                    _ => None,
                },
            );
            self.l1_put(id, entry.clone());
            fills.push((id, entry));
        }
        self.l2_put(fills).await;
        Ok(Arc::new(out))
    }

    /// A task this process just committed: L1 holds it at once (read-your-writes). L2
    /// learns from the relay that publishes the change ([`TaskCache::announce`]).
    pub fn committed(&self, task: &Task) {
        self.l1_put(task.id, Entry::task(Arc::new(task.clone())));
    }

    /// Task `id` if L1 holds it (counted as an L1 hit); `None` on anything else (a miss,
    /// a tombstone, "no such task"), which the caller then loads through
    /// [`TaskCache::get_many`] (counted there).
    pub fn local(&self, id: TaskId) -> Option<Arc<Task>> {
        match self.0.l1.get(&id)?.value {
            Value::Task(task) => {
                self.0.metrics.cache_hits.with_label_values(&["l1"]).inc();
                Some(task)
            }
            _ => None,
        }
    }

    /// Version `version` of task `id`, if L1 holds exactly that version (L2 and the
    /// database are not asked): for a caller that has just heard of the change this
    /// process committed, and would otherwise query for it.
    pub fn local_version(&self, id: TaskId, version: u32) -> Option<Arc<Task>> {
        match self.0.l1.get(&id)?.value {
            Value::Task(task) if task.version == version => Some(task),
            _ => None,
        }
    }

    /// A status event: version `version` of task `id` exists. L1 gets a tombstone (L2 got
    /// one from the relay before the event was published).
    pub fn invalidate_local(&self, id: TaskId, version: u32) {
        // L1 needs a tombstone only where a stale value could land: an entry, or a load
        // in flight. A load that starts after this check reads after the commit the event
        // announces, so it cannot be stale; skipping the rest keeps a burst of creations
        // from filling L1 with tombstones nobody reads.
        if self.may_hold(id) {
            self.l1_put(id, Entry::tombstone(version));
        }
    }

    /// Tasks deleted for good (retention): from now on this process's L1 and the shared
    /// L2 answer that they do not exist, in one round trip to Redis (skipped while Redis
    /// is unreachable, like every L2 write). Other processes' L1 entries lapse within
    /// `TASKWIRE_CACHE_L1_TTL_MS`. L1 is written only where it may hold the task, so a
    /// purge does not fill it with entries nobody reads.
    pub async fn forget(&self, ids: &[TaskId]) {
        for &id in ids {
            if self.may_hold(id) {
                self.l1_put(id, Entry::deleted());
            }
        }
        self.l2_put(ids.iter().map(|&id| (id, Entry::deleted())).collect()).await;
    }

    /// Whether L1 holds `id` or a load of it is in flight: where a stale value could land.
    fn may_hold(&self, id: TaskId) -> bool {
        self.0.l1.contains_key(&id) || self.0.inflight.lock().map_or(true, |inflight| inflight.contains_key(&id))
    }

    /// Whether there is an L2 for [`TaskCache::announce`] to write to (Redis configured).
    pub fn is_shared(&self) -> bool {
        self.0.redis.is_configured()
    }

    /// Versions committed by any process, about to be published: L2 gets a tombstone for
    /// each, in one round trip (per hash slot on a cluster). Called by the outbox relay
    /// before it hands the events to Kafka; does nothing without Redis, and a Redis
    /// failure only skips the write (L2 entries of unsettled tasks live no longer than
    /// L1's, settled tasks do not change).
    pub async fn announce(&self, versions: &[(TaskId, u32)]) {
        self.l2_put(versions.iter().map(|&(id, version)| (id, Entry::tombstone(version))).collect()).await;
    }

    /// Drops every L1 entry (tests use it to start from a cold cache).
    pub fn clear_local(&self) {
        self.0.l1.invalidate_all();
    }

    /// Compare-and-set into L1: only a higher rank replaces an entry.
    fn l1_put(&self, id: TaskId, entry: Entry) {
        let metrics = &self.0.metrics;
        self.0.l1.entry(id).and_compute_with(|current| match current {
            Some(current) if current.value().rank >= entry.rank => {
                if current.value().rank > entry.rank {
                    metrics.cache_stale_writes.inc();
                }
                Op::Nop
            }
            _ => Op::Put(entry),
        });
    }

    /// One `MGET` of `ids`. Task keys carry no hash tag, so tasks spread over every slot
    /// of a cluster; there the cluster connection splits the `MGET` by slot and returns
    /// the values in the order asked.
    async fn l2_get(&self, ids: &[TaskId]) -> Option<Vec<Option<Entry>>> {
        let link = &self.0.redis;
        if !link.is_configured() {
            return None;
        }
        let keys: Vec<String> = ids.iter().map(|id| link.key(&format!("task:{id}"))).collect();
        let raw: Vec<Option<Vec<u8>>> =
            link.call(|mut conn| async move { redis::cmd("MGET").arg(&keys).query_async(&mut conn).await }).await?;
        Some(raw.into_iter().map(|value| value.and_then(|bytes| codec::decode(&bytes))).collect())
    }

    /// Set-if-higher-rank into L2, pipelined: one round trip on a standalone server, one
    /// per hash slot (all at once) on a cluster.
    async fn l2_put(&self, fills: Vec<(TaskId, Entry)>) {
        let link = &self.0.redis;
        if fills.is_empty() || !link.is_configured() {
            return;
        }
        let script = &*codec::SET_IF_HIGHER;
        let commands: Vec<(String, redis::Cmd)> = fills
            .iter()
            .map(|(id, entry)| {
                let key = link.key(&format!("task:{id}"));
                let ttl = self.l2_ttl(entry).as_millis() as u64;
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(script.get_hash()).arg(1).arg(&key).arg(entry.rank).arg(codec::encode(entry)).arg(ttl);
                (key, cmd)
            })
            .collect();
        // Repeating a set-if-higher write is harmless, as a reload of the script requires.
        let outcome = link.call(|mut conn| async move { conn.exec_pipelined(commands, Some(script)).await }).await;
        if outcome.is_none() {
            tracing::debug!(entries = fills.len(), "L2 write skipped (redis unavailable)");
        }
    }

    /// Settled tasks live long in L2; anything that can still change (or whose lease a
    /// heartbeat extends in place) no longer than in L1.
    fn l2_ttl(&self, entry: &Entry) -> Duration {
        let settings = &self.0.settings;
        match &entry.value {
            Value::Task(task) if task.status.is_terminal() => {
                let jitter = rand::rng().random_range(0.9..1.1);
                settings.l2_ttl.mul_f64(jitter)
            }
            Value::Task(_) => settings.l1_ttl,
            Value::Missing => settings.null_ttl,
            Value::Tombstone => TOMBSTONE_TTL,
        }
    }
}

/// Transitions are written through at commit. Creations are not: nobody has read a new
/// task yet, and a burst of them would push hot tasks out of L1.
impl CommitListener for TaskCache {
    fn committed(&self, change: &Transition, _traceparent: Option<&str>) {
        if change.event.as_ref().is_none_or(|e| e.previous_status.is_some()) {
            TaskCache::committed(self, &change.task);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
