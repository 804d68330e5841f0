//! Offers as the worker receives them, and what a handler makes of them.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde_json::Value;

/// One offer received on the `assignments` subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The task's id.
    pub task_id: String,
    /// The fencing token every mutation about this offer must present.
    pub lease_token: String,
    /// When the offer (then, once accepted, the lease) expires, RFC 3339, as sent.
    pub lease_expires_at: String,
    /// The task's queue.
    pub queue: String,
    /// The task's kind.
    pub kind: String,
    /// The task's payload (`null` when it has none).
    pub payload: Value,
    /// The task's priority, 0–9.
    pub priority: i64,
    /// Attempts made so far, as the server counts them.
    pub attempts: i64,
    /// Attempts allowed before the task is `DEAD`.
    pub max_attempts: i64,
    /// The offer started the task (the worker registered with `auto_accept`): it is
    /// `RUNNING` already and needs no `acceptTask`.
    pub started: bool,
}

/// What the handler decided; the worker reports it to the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `completeTask` with this result.
    Complete(Option<Value>),
    /// `failTask`: retried later when `retryable` and attempts remain, else `DEAD`.
    Fail {
        /// The error message stored on the task.
        error: String,
        /// Whether the task may be retried.
        retryable: bool,
    },
    /// `releaseTask`: hand the task back to the queue.
    Release,
    /// Fault simulation, a hung process: stop heartbeating (for the whole worker, like a
    /// GC pause) for this long, then try to complete (`completeTask` with no result). The
    /// lease may expire meanwhile, in which case the completion answers `LEASE_LOST`.
    Stall(Duration),
    /// Report nothing. Returned by the handler (the task is already accepted), the task
    /// stays `RUNNING` on this worker, and heartbeats no longer name it: a worker that lost
    /// track of a task. Its lease lapses and the server reclaims it (a failed attempt). To
    /// let an *offer* lapse instead, refuse it with an [`OfferFilter`]; the log records
    /// such offers with this outcome.
    Ignore,
}

/// The task-handling function: called once per accepted offer.
pub type Handler = Arc<dyn Fn(Assignment) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Decides before acceptance whether to take an offer: `false` leaves it unaccepted, so the
/// offer lapses and the server offers the task again (to this or another worker). An offer
/// that started the task ([`Assignment::started`]) is handed back with `releaseTask`
/// instead, its attempt counted (`DEAD` if it was the last).
pub type OfferFilter = Arc<dyn Fn(&Assignment) -> bool + Send + Sync>;

/// Reads one `assignments` item; what is missing when it cannot.
pub(crate) fn parse_assignment(value: &Value) -> Result<Assignment, &'static str> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let task = &value["task"];
    Ok(Assignment {
        task_id: text(&task["id"]).ok_or("no task.id")?,
        lease_token: text(&value["leaseToken"]).ok_or("no leaseToken")?,
        lease_expires_at: text(&value["leaseExpiresAt"]).unwrap_or_default(),
        queue: text(&task["queue"]).unwrap_or_default(),
        kind: text(&task["kind"]).unwrap_or_default(),
        payload: task["payload"].clone(),
        priority: task["priority"].as_i64().unwrap_or_default(),
        attempts: task["attempts"].as_i64().unwrap_or_default(),
        max_attempts: task["maxAttempts"].as_i64().unwrap_or_default(),
        started: value["started"].as_bool().unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_an_assignment() {
        let value = json!({
            "leaseToken": "lt-1",
            "leaseExpiresAt": "2026-01-01T00:00:00Z",
            "task": { "id": "t-1", "queue": "q", "kind": "k", "payload": { "a": 1 }, "priority": 3, "attempts": 1, "maxAttempts": 5 },
        });
        let assignment = parse_assignment(&value).expect("parses");
        assert_eq!(assignment.task_id, "t-1");
        assert_eq!(assignment.lease_token, "lt-1");
        assert_eq!(assignment.payload, json!({ "a": 1 }));
        assert_eq!((assignment.priority, assignment.attempts, assignment.max_attempts), (3, 1, 5));
        assert!(!assignment.started, "an offer that does not say it started did not");
        let started = parse_assignment(&json!({ "leaseToken": "lt-2", "started": true, "task": { "id": "t-1" } }));
        assert!(started.expect("parses").started);
        assert!(parse_assignment(&json!({ "task": { "id": "t" } })).is_err());
    }
}
