//! The dispatcher: turns `QUEUED` tasks into work done (DESIGN.md §3).
//!
//! Three loops, each owned by the application's task tracker and stopped by its
//! shutdown token:
//! - the **matcher** ([`matcher`]) consumes `<prefix>.tasks.dispatch` in a consumer group,
//!   keeps the ready tasks in per-queue dispatch order ([`ready`]) and offers them to
//!   `ONLINE` workers with free capacity, least loaded first, honouring each queue's
//!   pause flag, rate limit ([`bucket`]) and max concurrency;
//! - the **reaper** ([`reaper::run_reaper`]) takes workers past their TTL offline and
//!   reclaims lapsed offers, lapsed leases, tasks past their deadline and tasks held by
//!   offline workers;
//! - the **scheduler** ([`reaper::run_scheduler`]) moves due `SCHEDULED` tasks to
//!   `QUEUED` within 100 ms of their `runAt`.
//!
//! Every change they make goes through the store's conditional transactions, so several
//! dispatcher processes can run side by side: the database decides who wins.

pub mod bucket;
pub mod matcher;
pub mod ready;
pub mod reaper;

use std::time::Duration;

/// Dispatcher settings from the configuration.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// How long a worker has to accept an offer. Default 10 s.
    pub offer_timeout: Duration,
    /// A worker neither subscribed to `assignments` nor heartbeating for this long goes
    /// `OFFLINE`. Default 30 s.
    pub worker_ttl: Duration,
    /// Most tasks the matcher holds in memory. Default 100 000.
    pub ready_capacity: usize,
    /// How often the reaper runs. Default 500 ms.
    pub reaper_interval: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            offer_timeout: Duration::from_secs(10),
            worker_ttl: Duration::from_secs(30),
            ready_capacity: 100_000,
            reaper_interval: Duration::from_millis(500),
        }
    }
}
