//! What a worker tells about its work: counters and one record per offer.

use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::{CallError, Outcome};

/// The server's answer to a task mutation: `Ok`, or why it failed (its stable code is
/// [`CallError::code`], e.g. `LEASE_LOST`, `TRANSPORT` or `HTTP_502`).
pub type Answer = Result<(), CallError>;

/// A moment, both monotonic (for durations) and wall-clock (to compare with server times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time.
    pub utc: DateTime<Utc>,
}

impl Stamp {
    /// Now.
    pub fn now() -> Stamp {
        Stamp { instant: Instant::now(), utc: Utc::now() }
    }
}

/// What happened to one offer. Added to the log once the worker is done with it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The task's id.
    pub task_id: String,
    /// The offer's lease token.
    pub lease_token: String,
    /// The task's queue.
    pub queue: String,
    /// The task's kind.
    pub kind: String,
    /// The task's attempts when offered.
    pub attempts: i64,
    /// When the offer arrived.
    pub offered_at: Stamp,
    /// The answer to `acceptTask`; `None` when the worker did not try (offer filtered out
    /// or capacity full, or an offer that started the task, which needs none).
    pub accept: Option<Answer>,
    /// Whether the worker holds the run: `acceptTask` succeeded, or the offer started the
    /// task.
    pub accepted: bool,
    /// When `acceptTask` succeeded.
    pub accepted_at: Option<Stamp>,
    /// The handler's outcome, or [`Outcome::Ignore`] for an offer left to lapse; `None`
    /// when acceptance failed.
    pub outcome: Option<Outcome>,
    /// The answer to `completeTask` / `failTask` / `releaseTask`; `None` when nothing was
    /// sent.
    pub answer: Option<Answer>,
    /// When the worker was done with the offer (the answer arrived, or it gave up).
    pub finished_at: Option<Stamp>,
}

/// Counters since start. `offered` counts distinct offers; every other counter counts
/// events, not tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Distinct offers received.
    pub offered: u64,
    /// Deliveries of an offer already received (same lease token), dropped.
    pub duplicates: u64,
    /// Offers not taken: filtered out, or beyond capacity (left to lapse, or handed back
    /// when the offer started the task).
    pub ignored: u64,
    /// Offers taken: successful `acceptTask` calls, and offers that started the task.
    pub accepted: u64,
    /// Successful `completeTask` calls.
    pub completed: u64,
    /// Successful `failTask` calls.
    pub failed: u64,
    /// Successful `releaseTask` calls.
    pub released: u64,
    /// Task mutations (accept, complete, fail, release) answered `LEASE_LOST`.
    pub lease_lost: u64,
    /// Task mutations answered with any other error.
    pub errors: u64,
    /// Successful `heartbeat` calls.
    pub heartbeats: u64,
    /// Failed `heartbeat` calls.
    pub heartbeat_errors: u64,
    /// Times the subscription was re-established after the first connection (after a
    /// drop, or after [`Worker::disconnect_for`](crate::Worker::disconnect_for)).
    pub reconnects: u64,
    /// Moves to the next URL of a fail-over list ([`WorkerConfig::url`](crate::WorkerConfig::url)).
    pub failovers: u64,
    /// Tasks in hand now (accepting, working, or reporting after the handler returned):
    /// at most twice the capacity, since a report's answer may still be on its way when the
    /// next task arrives.
    pub in_flight: u64,
    /// A description of the latest problem seen (failed request, dropped connection,
    /// subscription error), for people to read.
    pub last_error: Option<String>,
}

/// What [`Worker::stop`](crate::Worker::stop) leaves behind.
#[derive(Debug, Clone, PartialEq)]
pub struct Stopped {
    /// The final counters.
    pub stats: WorkerStats,
    /// The records not taken earlier, oldest first.
    pub log: Vec<TaskRecord>,
}
