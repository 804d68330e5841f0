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

use std::{sync::Arc, time::Duration};

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

/// The dispatcher of this process, if it runs one: what an `assignments` stream marks
/// its worker with (schema data).
#[derive(Debug, Clone, Default)]
pub struct LocalDispatcher(pub(crate) Option<DispatcherId>);

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatcher_ids_are_unique_per_start_and_fit_the_column() {
        let (a, b) = (DispatcherId::generate(), DispatcherId::generate());
        assert_ne!(a, b);
        assert!(a.as_str().len() <= 128, "{}", a.as_str());
        assert!(a.as_str().contains(&std::process::id().to_string()));
    }
}
