//! The matcher's ready set: the `QUEUED` tasks of its partitions, per queue, in dispatch
//! order (priority desc, `runAt` asc, id asc), plus the Kafka offsets it may commit.
//!
//! An offset is committed only when every message before it has been *placed*: its task
//! offered, or found no longer `QUEUED`, or a duplicate of a task already held. So a
//! crash replays the unplaced messages rather than losing them. The set is bounded: when
//! it is full the matcher stops reading Kafka (the messages wait there, uncommitted)
//! until offers make room.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, HashMap},
};

use chrono::{DateTime, Utc};
use taskwire_domain::TaskId;

/// Where a dispatch message came from: `(partition, offset)`.
pub(crate) type Source = (i32, i64);

/// A task waiting for a worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The task.
    pub(crate) id: TaskId,
    /// Its queue.
    pub(crate) queue: String,
    /// 0–9, higher first.
    pub(crate) priority: u8,
    /// Earlier first among equal priorities.
    pub(crate) run_at: DateTime<Utc>,
    /// When it became `QUEUED` (for the dispatch latency metric).
    pub(crate) queued_at: DateTime<Utc>,
    /// The message that announced it; `None` when found by reconciliation.
    pub(crate) source: Option<Source>,
    /// W3C trace context of the message, continued by the offer.
    pub(crate) traceparent: Option<String>,
    /// The worker that just let the task go (its offer lapsed, it released the task or
    /// went offline): offered to another worker when one is free.
    pub(crate) avoid: Option<String>,
}

type Key = (Reverse<u8>, DateTime<Utc>, TaskId);

fn key(entry: &Entry) -> Key {
    (Reverse(entry.priority), entry.run_at, entry.id)
}

#[derive(Debug, Default)]
struct Partition {
    /// Offsets seen but not yet placed.
    unplaced: BTreeSet<i64>,
    /// One past the highest offset seen.
    next: i64,
    /// The last position reported for commit, if any.
    committed: Option<i64>,
}

/// The ready set. See the module docs.
#[derive(Debug)]
pub(crate) struct ReadySet {
    capacity: usize,
    queues: HashMap<String, BTreeMap<Key, Entry>>,
    index: HashMap<TaskId, (String, Key)>,
    partitions: HashMap<i32, Partition>,
}

impl ReadySet {
    /// An empty set holding at most `capacity` tasks.
    pub(crate) fn new(capacity: usize) -> Self {
        ReadySet {
            capacity: capacity.max(1),
            queues: HashMap::new(),
            index: HashMap::new(),
            partitions: HashMap::new(),
        }
    }

    /// Tasks held.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no task is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether the set is at its bound (the matcher then stops reading Kafka).
    pub(crate) fn is_full(&self) -> bool {
        self.index.len() >= self.capacity
    }

    /// Whether `id` is held.
    pub(crate) fn contains(&self, id: TaskId) -> bool {
        self.index.contains_key(&id)
    }

    /// Records that the message at `source` (if the announcement came from Kafka) was
    /// read and is already placed (a stale or duplicate announcement).
    pub(crate) fn placed_on_arrival(&mut self, source: Option<Source>) {
        if let Some((partition, offset)) = source {
            let p = self.partitions.entry(partition).or_default();
            p.next = p.next.max(offset + 1);
        }
    }

    /// Adds a task. Returns `false` when the task is already held or the set is full,
    /// and then places its message at once, except that a held task that came without a
    /// message (queued by this process, or found by reconciliation) takes the message
    /// over: its offset then waits for the task, as if the message had come first. The
    /// matcher never reads more messages than the set has room for, so only
    /// reconciliation and the local feed meet a full set.
    pub(crate) fn insert(&mut self, entry: Entry) -> bool {
        if let Some((queue, k)) = self.index.get(&entry.id) {
            let held = self.queues.get_mut(queue).and_then(|q| q.get_mut(k));
            match (held, entry.source) {
                (Some(held), Some(source)) if held.source.is_none() => {
                    held.source = Some(source);
                    self.unplaced(source);
                }
                _ => self.placed_on_arrival(entry.source),
            }
            return false;
        }
        if self.is_full() {
            self.placed_on_arrival(entry.source);
            return false;
        }
        if let Some(source) = entry.source {
            self.unplaced(source);
        }
        let k = key(&entry);
        self.index.insert(entry.id, (entry.queue.clone(), k));
        self.queues.entry(entry.queue.clone()).or_default().insert(k, entry);
        true
    }

    fn unplaced(&mut self, (partition, offset): Source) {
        let p = self.partitions.entry(partition).or_default();
        p.next = p.next.max(offset + 1);
        p.unplaced.insert(offset);
    }

    /// The next task of `queue` in dispatch order.
    pub(crate) fn peek(&self, queue: &str) -> Option<&Entry> {
        self.queues.get(queue).and_then(|q| q.values().next())
    }

    /// The tasks of `queue` in dispatch order.
    pub(crate) fn in_order<'a>(&'a self, queue: &str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.queues.get(queue).into_iter().flat_map(|q| q.values())
    }

    /// Removes `id` (offered, or no longer `QUEUED`) and places its message.
    pub(crate) fn remove(&mut self, id: TaskId) -> Option<Entry> {
        let (queue, k) = self.index.remove(&id)?;
        let tasks = self.queues.get_mut(&queue)?;
        let entry = tasks.remove(&k);
        if tasks.is_empty() {
            self.queues.remove(&queue);
        }
        if let Some((partition, offset)) = entry.as_ref().and_then(|e| e.source)
            && let Some(p) = self.partitions.get_mut(&partition)
        {
            p.unplaced.remove(&offset);
        }
        entry
    }

    /// Queues with tasks held, by name.
    pub(crate) fn queues(&self) -> Vec<String> {
        let mut names: Vec<String> = self.queues.keys().cloned().collect();
        names.sort();
        names
    }

    /// Drops the tasks and offsets of partitions this matcher no longer owns (after a
    /// consumer-group rebalance); their new owner replays them from its committed offset.
    /// Returns the tasks dropped.
    pub(crate) fn revoke(&mut self, partitions: &[i32]) -> Vec<TaskId> {
        let gone: Vec<TaskId> = self
            .queues
            .values()
            .flat_map(|q| q.values())
            .filter(|e| e.source.is_some_and(|(p, _)| partitions.contains(&p)))
            .map(|e| e.id)
            .collect();
        for id in &gone {
            self.remove(*id);
        }
        for p in partitions {
            self.partitions.remove(p);
        }
        gone
    }

    /// Positions to commit, per partition, that moved since the last call: the lowest
    /// unplaced offset, or one past the highest seen when all are placed.
    pub(crate) fn commits(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (partition, p) in &mut self.partitions {
            let position = p.unplaced.first().copied().unwrap_or(p.next);
            if p.committed.is_none_or(|c| position > c) {
                p.committed = Some(position);
                out.push((*partition, position));
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(queue: &str, priority: u8, run_at_s: i64, source: Option<Source>) -> Entry {
        let at = DateTime::from_timestamp(1_800_000_000 + run_at_s, 0).unwrap_or_default();
        Entry {
            id: TaskId::generate(Utc::now()),
            queue: queue.into(),
            priority,
            run_at: at,
            queued_at: at,
            source,
            traceparent: None,
            avoid: None,
        }
    }

    #[test]
    fn tasks_come_out_by_priority_then_run_at_then_id() {
        let mut set = ReadySet::new(10);
        let low = entry("q", 1, 0, None);
        let high_late = entry("q", 9, 10, None);
        let high_early = entry("q", 9, 5, None);
        let mut same_a = entry("q", 5, 0, None);
        let mut same_b = entry("q", 5, 0, None);
        if same_b.id < same_a.id {
            std::mem::swap(&mut same_a, &mut same_b);
        }
        for e in [&low, &same_b, &high_late, &same_a, &high_early] {
            assert!(set.insert(e.clone()));
        }
        let mut order = vec![];
        while let Some(next) = set.peek("q").map(|e| e.id) {
            order.push(next);
            set.remove(next);
        }
        assert_eq!(order, [high_early.id, high_late.id, same_a.id, same_b.id, low.id]);
        assert!(set.is_empty());
    }

    #[test]
    fn queues_are_kept_apart() {
        let mut set = ReadySet::new(10);
        let a = entry("a", 0, 0, None);
        let b = entry("b", 9, 0, None);
        set.insert(a.clone());
        set.insert(b.clone());
        assert_eq!(set.queues(), ["a", "b"]);
        assert_eq!(set.peek("a").map(|e| e.id), Some(a.id));
        assert_eq!(set.peek("b").map(|e| e.id), Some(b.id));
    }

    #[test]
    fn offsets_commit_only_below_the_lowest_unplaced_task() {
        let mut set = ReadySet::new(10);
        let first = entry("q", 0, 0, Some((0, 10)));
        let second = entry("q", 0, 1, Some((0, 11)));
        set.insert(first.clone());
        set.insert(second.clone());
        set.placed_on_arrival(Some((0, 12))); // a stale announcement
        assert_eq!(set.commits(), [(0, 10)], "nothing past the first unplaced task");
        set.remove(second.id);
        assert_eq!(set.commits(), [], "the first one still holds the position");
        set.remove(first.id);
        assert_eq!(set.commits(), [(0, 13)], "all placed: one past the highest seen");
        assert_eq!(set.commits(), [], "reported once");
    }

    #[test]
    fn duplicates_are_placed_at_once_and_the_bound_holds() {
        let mut set = ReadySet::new(2);
        let a = entry("q", 0, 0, Some((1, 0)));
        assert!(set.insert(a.clone()));
        let mut again = a.clone();
        again.source = Some((1, 1));
        assert!(!set.insert(again), "a duplicate is not held twice");
        assert!(set.insert(entry("q", 0, 0, Some((1, 2)))));
        assert!(set.is_full());
        assert!(!set.insert(entry("q", 0, 0, None)), "the bound holds");
        assert_eq!(set.len(), 2);
        assert_eq!(set.commits(), [(1, 0)]);
    }

    #[test]
    fn revoked_partitions_drop_their_tasks_and_offsets() {
        let mut set = ReadySet::new(10);
        let mine = entry("q", 0, 0, Some((0, 5)));
        let theirs = entry("q", 0, 0, Some((1, 7)));
        let found = entry("q", 0, 0, None);
        for e in [&mine, &theirs, &found] {
            set.insert(e.clone());
        }
        set.revoke(&[1]);
        assert!(set.contains(mine.id) && set.contains(found.id));
        assert!(!set.contains(theirs.id));
        assert_eq!(set.commits(), [(0, 5)]);
    }

    #[test]
    fn a_task_held_without_a_message_takes_over_its_message_when_it_comes() {
        let mut set = ReadySet::new(10);
        let local = entry("q", 0, 0, None);
        assert!(set.insert(local.clone()));
        let mut announced = local.clone();
        announced.source = Some((0, 3));
        assert!(!set.insert(announced), "held once");
        assert_eq!(set.len(), 1);
        assert_eq!(set.commits(), [(0, 3)], "the offset waits for the held task");
        set.remove(local.id);
        assert_eq!(set.commits(), [(0, 4)], "and moves on once it is placed");
    }
}
