//! The tasks as this process last committed them: what the batched writers plan against
//! instead of reading the rows again.
//!
//! A matcher round offers tasks this process has just created, and a worker completes
//! tasks this process has just offered to it: under dispatch load, the row a batch would
//! read first is, nearly always, the one this process wrote a few milliseconds before.
//! Reading it back cost a statement per offer round and per transition batch, and
//! decoding every row (payload included) on the server. So every commit remembers the
//! tasks it wrote ([`RecentTasks::remember`], from `Store::after_commit`), and
//! `offer_many` and `transition_many` take what they find here, reading only the rest.
//!
//! **Why a remembered state is safe to act on.** Every write those paths make is
//! conditional on the version the decision was made from, so a state that another process
//! (or a path of this one that does not pass through `after_commit`) has changed since
//! cannot be written over: the statement refuses, and the batch goes on from a fresh read.
//! Only a heartbeat changes a task without a new version, and it is handled where a batch
//! uses a remembered state (`Store::transition_many` and `tasks::doubtful`):
//! - a heartbeat extends a lease in place: a remembered lease end can be too early. A
//!   decision that fails on a remembered state is therefore made again on a fresh read
//!   (a lease that looked lapsed is not `LEASE_LOST`), and a decision that would write
//!   the remembered lease end back (a repeated `acceptTask`) is too. Every other write
//!   of a task row goes through `after_commit`.
//!
//! Bounded by an estimate of the bytes held ([`MAX_BYTES`]; payloads range from nothing
//! to 64 KiB), entries idle for [`IDLE`] are dropped, and an entry never replaces a
//! newer version of the same task.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use taskwire_domain::{TaskId, task::Task};

use super::Store;
use crate::error::StoreResult;

/// The bytes the remembered tasks may hold, estimated.
const MAX_BYTES: u64 = 32 * 1024 * 1024;
/// What an entry costs beside the task itself, estimated.
const OVERHEAD: usize = 128;
/// How long a task nobody wrote or used stays remembered.
const IDLE: Duration = Duration::from_secs(60);

/// See the module documentation. Cheap to clone: clones share the entries.
#[derive(Debug, Clone)]
pub(crate) struct RecentTasks {
    tasks: moka::sync::Cache<TaskId, Arc<Task>>,
}

impl Default for RecentTasks {
    fn default() -> Self {
        RecentTasks::with_capacity(MAX_BYTES)
    }
}

impl RecentTasks {
    /// Remembers up to about `bytes` of tasks.
    pub(crate) fn with_capacity(bytes: u64) -> RecentTasks {
        let tasks = moka::sync::Cache::builder()
            .max_capacity(bytes)
            .weigher(|_, task: &Arc<Task>| u32::try_from(OVERHEAD + task.approximate_size()).unwrap_or(u32::MAX))
            .time_to_idle(IDLE)
            .build();
        RecentTasks { tasks }
    }

    /// Remembers `task` as committed, unless a newer version of it is remembered already
    /// (two committers of this process can tell their commits in either order).
    pub(crate) fn remember(&self, task: &Task) {
        use moka::ops::compute::Op;
        // One call per key at a time: a check then an insert could let two committers
        // leave the older version.
        self.tasks.entry(task.id).and_compute_with(|known| match known {
            Some(known) if known.value().version > task.version => Op::Nop,
            _ => Op::Put(Arc::new(task.clone())),
        });
    }

    /// The remembered state of `id`, if any.
    pub(crate) fn get(&self, id: TaskId) -> Option<Arc<Task>> {
        self.tasks.get(&id)
    }

    /// Forgets `ids` (their remembered state turned out to be stale).
    pub(crate) fn forget(&self, ids: impl IntoIterator<Item = TaskId>) {
        for id in ids {
            self.tasks.invalidate(&id);
        }
    }
}

/// The state a batch plans against: each task as this process last committed it when it
/// remembers that, else as read.
#[derive(Debug, Default)]
pub(crate) struct Current {
    /// By id; a task that does not exist is absent.
    pub(crate) tasks: HashMap<TaskId, Task>,
    /// The ids whose state came from memory rather than from a read.
    pub(crate) remembered: HashSet<TaskId>,
}

impl Store {
    /// The state of the tasks `ids` for a batch: the remembered state of each one that
    /// `usable` accepts, and one read for the others.
    pub(crate) async fn current_tasks(
        &self,
        ids: impl IntoIterator<Item = TaskId>,
        usable: impl Fn(&Task) -> bool,
    ) -> StoreResult<Current> {
        let mut current = Current::default();
        let mut missing = HashSet::new();
        for id in ids {
            if current.tasks.contains_key(&id) || missing.contains(&id) {
                continue;
            }
            match self.recent.get(id) {
                Some(task) if usable(&task) => {
                    current.tasks.insert(id, Task::clone(&task));
                    current.remembered.insert(id);
                }
                _ => {
                    missing.insert(id);
                }
            }
        }
        self.read_into(&mut current, missing).await?;
        Ok(current)
    }

    /// Forgets the remembered states `current` used and reads those tasks afresh: the
    /// batch found one of them stale.
    pub(crate) async fn reread_remembered(&self, current: &mut Current) -> StoreResult<()> {
        let stale: Vec<TaskId> = current.remembered.iter().copied().collect();
        self.recent.forget(stale.iter().copied());
        self.read_into(current, stale).await
    }

    /// Reads the tasks `ids` into `current` in one statement, in place of what it held
    /// for them.
    pub(crate) async fn read_into(
        &self,
        current: &mut Current,
        ids: impl IntoIterator<Item = TaskId>,
    ) -> StoreResult<()> {
        let ids: Vec<TaskId> = ids.into_iter().collect();
        for id in &ids {
            current.tasks.remove(id);
            current.remembered.remove(id);
        }
        current.tasks.extend(self.tasks_by_ids(&ids).await?.into_iter().map(|task| (task.id, task)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use taskwire_domain::{CreateTaskInput, MaxAttempts, NewTask, machine};

    use super::*;

    fn task(payload: serde_json::Value) -> Task {
        let input =
            CreateTaskInput { queue: "q".into(), kind: "k".into(), payload: Some(payload), ..Default::default() };
        let new = NewTask::parse(input, "alice", Utc::now()).expect("valid input");
        machine::create(new, TaskId::generate(Utc::now()), MaxAttempts::DEFAULT, Utc::now()).task
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let recent = RecentTasks::default();
        let mut newer = task(serde_json::json!({}));
        newer.version = 3;
        let mut older = newer.clone();
        older.version = 2;

        recent.remember(&newer);
        recent.remember(&older);
        assert_eq!(recent.get(newer.id).expect("remembered").version, 3);

        recent.forget([newer.id]);
        assert!(recent.get(newer.id).is_none());
        recent.remember(&older);
        assert_eq!(recent.get(newer.id).expect("remembered again").version, 2);
    }

    #[test]
    fn the_bytes_held_are_bounded() {
        let recent = RecentTasks::with_capacity(1024 * 1024);
        let big = serde_json::Value::String("x".repeat(60 * 1024));
        let ids: Vec<TaskId> = (0..100)
            .map(|_| {
                let t = task(big.clone());
                recent.remember(&t);
                t.id
            })
            .collect();
        recent.tasks.run_pending_tasks();
        let held = ids.iter().filter(|id| recent.get(**id).is_some()).count();
        assert!(held <= 17, "1 MiB holds at most 17 tasks of 60 KiB, held {held}");
        assert!(recent.tasks.weighted_size() <= 1024 * 1024, "{}", recent.tasks.weighted_size());
    }
}
