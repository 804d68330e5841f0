//! The dispatcher: turns `QUEUED` tasks into work done (README, Dispatching and workers).
//!
//! Three loops, each owned by the application's task tracker and stopped by its
//! shutdown token:
//! - the **matcher** ([`matcher`]) consumes `<prefix>.tasks.dispatch` in a consumer group,
//!   keeps the ready tasks in per-queue dispatch order ([`ready`]) and offers them to
//!   the `ONLINE` workers whose `assignments` stream this process holds, least loaded
//!   first, honouring each queue's pause flag, rate limit and max concurrency (global:
//!   enforced in the offer transaction, see `Store::offer_many`);
//! - the **reaper** ([`reaper::run_reaper`]) takes workers past their TTL offline and
//!   reclaims lapsed offers, lapsed leases, tasks past their deadline and tasks held by
//!   offline workers;
//! - the **scheduler** ([`reaper::run_scheduler`]) moves due `SCHEDULED` tasks to
//!   `QUEUED` within 100 ms of their `runAt`.
//!
//! Every change they make goes through the store's conditional transactions, so several
//! dispatcher processes can run side by side: the database decides who wins.

pub(crate) mod matcher;
mod ready;
pub(crate) mod reaper;
pub(crate) mod retention;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

/// This process's name among dispatchers: the workers whose `assignments` stream it holds
/// are marked with it (`workers.connected_to`), and only this process offers them tasks.
/// Unique per start (host, process id and a random part), so a restarted process never
/// mistakes the workers of its previous life for its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DispatcherId(Arc<str>);

impl DispatcherId {
    /// A fresh id for this process.
    pub(crate) fn generate() -> DispatcherId {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| {
                h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').take(64).collect()
            })
            .filter(|h: &String| !h.is_empty())
            .unwrap_or_else(|| "host".to_owned());
        let random = uuid::Uuid::new_v4().simple().to_string();
        DispatcherId(format!("{host}-{}-{}", std::process::id(), &random[..8]).into())
    }

    /// The id as stored.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The dispatcher of this process, if it runs one (schema data): what an `assignments`
/// stream marks its worker with, and where it registers itself as open.
#[derive(Debug, Clone, Default)]
pub struct LocalDispatcher {
    pub(crate) id: Option<DispatcherId>,
    pub(crate) streams: OpenStreams,
}

/// The workers whose `assignments` stream is open on this process, with how many each
/// has open. The matcher starts an offer (for a worker registered with `autoAccept`) only
/// for a worker in here: a started offer counts an attempt, so it must go where it is
/// delivered at once. Workers whose stream is not open here (it closed, moved to another
/// process, or the worker only heartbeats) get plain offers, which lapse at no cost. At
/// most one entry per open stream, and the streams are bounded by the WebSocket limits.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenStreams(Arc<Mutex<HashMap<String, u32>>>);

impl OpenStreams {
    /// Registers an open stream of `worker`, until the guard is dropped.
    pub(crate) fn open(&self, worker: &str) -> OpenStream {
        *self.streams().entry(worker.to_owned()).or_default() += 1;
        OpenStream { streams: self.clone(), worker: worker.to_owned() }
    }

    /// Whether `worker` has a stream open on this process.
    pub(crate) fn is_open(&self, worker: &str) -> bool {
        self.streams().contains_key(worker)
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // The map stays consistent whatever a panicking holder was doing: plain counts.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One open `assignments` stream in [`OpenStreams`]; dropping it closes it there.
#[derive(Debug)]
pub(crate) struct OpenStream {
    streams: OpenStreams,
    worker: String,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut streams = self.streams.streams();
        if let Some(open) = streams.get_mut(&self.worker) {
            *open -= 1;
            if *open == 0 {
                streams.remove(&self.worker);
            }
        }
    }
}

/// Dispatcher settings from the configuration.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// How long a worker has to accept an offer.
    pub offer_timeout: Duration,
    /// A worker neither subscribed to `assignments` nor heartbeating for this long goes
    /// `OFFLINE`.
    pub worker_ttl: Duration,
    /// Most tasks the matcher holds in memory.
    pub ready_capacity: usize,
    /// How often the reaper runs.
    pub reaper_interval: Duration,
    /// How long finished tasks are kept.
    pub retention: retention::Retention,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_counts_as_open_while_any_of_its_streams_is() {
        let streams = OpenStreams::default();
        let first = streams.open("w1");
        let second = streams.open("w1");
        assert!(streams.is_open("w1") && !streams.is_open("w2"));
        drop(first);
        assert!(streams.is_open("w1"), "one stream is still open");
        drop(second);
        assert!(!streams.is_open("w1"));
        assert!(streams.streams().is_empty(), "closed workers leave nothing behind");
    }

    #[test]
    fn dispatcher_ids_are_unique_per_start_and_fit_the_column() {
        let (a, b) = (DispatcherId::generate(), DispatcherId::generate());
        assert_ne!(a, b);
        assert!(a.as_str().len() <= 128, "{}", a.as_str());
        assert!(a.as_str().contains(&std::process::id().to_string()));
    }
}
