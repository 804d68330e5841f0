//! What this process changed about workers, for a dispatcher that keeps its workers in
//! memory between matcher rounds instead of reading them for every round.
//!
//! Two kinds of change reach such a dispatcher from here:
//! - **slots freed**: a commit that ends a lease (completed, failed, released, reclaimed)
//!   frees a slot of the worker that held it. These are counted by worker until the
//!   dispatcher takes them ([`RosterChanges::take_freed`]), and only once a dispatcher has
//!   asked for them ([`RosterChanges::track`]): an api-only process counts nothing.
//! - **the roster itself**: a worker registered, came back online, moved its stream to or
//!   from this process, was drained or taken offline. Each bumps a generation
//!   ([`RosterChanges::generation`]); a dispatcher that sees it move reads its workers
//!   again.
//!
//! Changes made through other processes are not seen here; the dispatcher bounds how
//! long it trusts what it holds, and the offer transaction checks every worker's state
//! and capacity anyway.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Workers with freed slots counted at most; beyond, the counts are dropped and the
/// generation bumped, so that the dispatcher reads its workers instead.
const MAX_FREED: usize = 10_000;

/// See the module documentation. Cheap to clone: clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct RosterChanges {
    generation: Arc<AtomicU64>,
    /// Slots freed by worker since last taken; `None` until a dispatcher tracks them.
    freed: Arc<Mutex<Option<HashMap<String, u32>>>>,
}

impl RosterChanges {
    /// Starts counting freed slots (a dispatcher runs in this process).
    pub fn track(&self) {
        if let Ok(mut freed) = self.freed.lock() {
            freed.get_or_insert_with(HashMap::new);
        }
    }

    /// Bumped by every change to the roster made through this process.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The slots freed by worker since the last call.
    pub fn take_freed(&self) -> HashMap<String, u32> {
        self.freed.lock().ok().and_then(|mut freed| freed.as_mut().map(std::mem::take)).unwrap_or_default()
    }

    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// One slot of `worker` freed by a commit of this process.
    pub(crate) fn freed(&self, worker: &str) {
        let Ok(mut freed) = self.freed.lock() else { return };
        let Some(counts) = freed.as_mut() else { return };
        if counts.len() >= MAX_FREED && !counts.contains_key(worker) {
            counts.clear();
            self.changed();
            return;
        }
        *counts.entry(worker.to_owned()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_slots_are_counted_only_once_tracked_and_taken_once() {
        let roster = RosterChanges::default();
        roster.freed("w1");
        assert!(roster.take_freed().is_empty(), "nobody tracks them yet");

        roster.track();
        roster.freed("w1");
        roster.freed("w1");
        roster.freed("w2");
        assert_eq!(roster.take_freed(), HashMap::from([("w1".to_owned(), 2), ("w2".to_owned(), 1)]));
        assert!(roster.take_freed().is_empty(), "taken once");
    }

    #[test]
    fn too_many_workers_drop_the_counts_and_bump_the_generation() {
        let roster = RosterChanges::default();
        roster.track();
        for i in 0..MAX_FREED {
            roster.freed(&format!("w{i}"));
        }
        let generation = roster.generation();
        roster.freed("one more");

        assert_eq!(roster.generation(), generation + 1, "the dispatcher reads its workers again");
        assert!(roster.take_freed().is_empty(), "the counts were dropped");
    }
}
