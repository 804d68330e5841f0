//! The task record and its events, as the rules see them.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{LeaseToken, TaskId, TaskStatus};

/// Truncates an instant to the precision timestamps are stored with (milliseconds), so
/// what a mutation answers is exactly what a later read returns.
pub fn at_storage_precision(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

/// A task as stored: the full record the state machine works on.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Opaque, time-ordered id.
    pub id: TaskId,
    /// Queue name (validated on creation).
    pub queue: String,
    /// Task kind (validated on creation).
    pub kind: String,
    /// Optional JSON payload.
    pub payload: Option<Value>,
    /// 0–9, 9 first.
    pub priority: u8,
    /// Current status.
    pub status: TaskStatus,
    /// Runs started so far (incremented when a worker accepts).
    pub attempts: u32,
    /// Runs allowed before the task is `DEAD`.
    pub max_attempts: u32,
    /// When the task is (or becomes) ready.
    pub run_at: DateTime<Utc>,
    /// After this instant the task is `DEAD` instead of run.
    pub deadline: Option<DateTime<Utc>>,
    /// Subject that created the task.
    pub created_by: String,
    /// Client idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Worker holding the current offer or lease.
    pub worker_id: Option<String>,
    /// Fencing token of the current offer or lease.
    pub lease_token: Option<LeaseToken>,
    /// When the current offer or lease expires.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Result reported by the worker on success.
    pub result: Option<Value>,
    /// Error of the last failed attempt.
    pub last_error: Option<String>,
    /// Optimistic-lock version, incremented by every write of the row.
    pub version: u32,
    /// `seq` of the latest event of this task.
    pub last_seq: u32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Time of the latest write.
    pub updated_at: DateTime<Utc>,
}

impl Task {
    /// Roughly the bytes this task holds in memory, for caches bounded by memory rather
    /// than by a count of tasks whose payloads range from nothing to 64 KiB.
    pub fn approximate_size(&self) -> usize {
        let strings = [&self.queue, &self.kind, &self.created_by].iter().map(|s| s.len()).sum::<usize>()
            + [&self.idempotency_key, &self.worker_id, &self.last_error]
                .iter()
                .filter_map(|s| s.as_ref())
                .map(String::len)
                .sum::<usize>();
        let json = [&self.payload, &self.result].iter().filter_map(|v| v.as_ref()).map(json_size).sum::<usize>();
        std::mem::size_of::<Task>() + strings + json
    }
}

/// Roughly the bytes a JSON value holds.
fn json_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 16,
        Value::String(s) => 24 + s.len(),
        Value::Array(items) => 24 + items.iter().map(json_size).sum::<usize>(),
        Value::Object(fields) => 48 + fields.iter().map(|(k, v)| 32 + k.len() + json_size(v)).sum::<usize>(),
    }
}

/// One entry of a task's history (`task_events`): what changed, in `seq` order.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    /// The task.
    pub task_id: TaskId,
    /// Per-task sequence number, starting at 1, without gaps.
    pub seq: u32,
    /// Status after the change.
    pub status: TaskStatus,
    /// Status before the change (`None` for the creation event).
    pub previous_status: Option<TaskStatus>,
    /// The task's attempt count after the change.
    pub attempt: u32,
    /// Worker involved, if any.
    pub worker_id: Option<String>,
    /// Human-readable detail (cancel reason, failure message, …).
    pub message: Option<String>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_precision_is_milliseconds() {
        let at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.123456789Z").map(|d| d.to_utc()).unwrap_or_default();
        assert_eq!(at_storage_precision(at).to_rfc3339(), "2026-01-01T00:00:00.123+00:00");
    }
}
