//! The Kafka wire schema: versioned JSON envelopes (README, Live updates over WebSocket).
//!
//! Consumers must tolerate duplicates and reordering across tasks: `(taskId, seq)`
//! identifies an event, and a consumer ignores a `seq` it has already applied.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    TaskStatus,
    task::{Task, TaskEvent},
};

/// The envelope version this code writes. Readers accept this version and ignore
/// unknown fields, so fields may be added without a version bump.
pub const ENVELOPE_VERSION: u32 = 1;

/// What an envelope announces; also selects the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvelopeType {
    /// A status change (`<prefix>.tasks.status`).
    #[serde(rename = "task.status")]
    Status,
    /// A task became ready for dispatch (`<prefix>.tasks.dispatch`).
    #[serde(rename = "task.dispatch")]
    Dispatch,
    /// A task is dead (`<prefix>.tasks.dead`).
    #[serde(rename = "task.dead")]
    Dead,
}

impl EnvelopeType {
    /// The topic suffix after the configured prefix, e.g. `tasks.status`.
    pub const fn topic_suffix(self) -> &'static str {
        match self {
            EnvelopeType::Status => "tasks.status",
            EnvelopeType::Dispatch => "tasks.dispatch",
            EnvelopeType::Dead => "tasks.dead",
        }
    }
}

/// One Kafka message value, keyed by task id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEnvelope {
    /// Schema version, [`ENVELOPE_VERSION`].
    pub v: u32,
    /// What the envelope announces.
    #[serde(rename = "type")]
    pub kind: EnvelopeType,
    /// The task.
    pub task_id: String,
    /// The event's per-task sequence number.
    pub seq: u32,
    /// Status after the change.
    pub status: TaskStatus,
    /// Status before the change, absent on creation.
    pub previous_status: Option<TaskStatus>,
    /// The task's queue.
    pub queue: String,
    /// Attempt count after the change.
    pub attempt: u32,
    /// Worker involved, if any.
    pub worker_id: Option<String>,
    /// When the change happened (RFC 3339).
    pub at: DateTime<Utc>,
    /// The task's creator, for routing events to their owner's subscriptions.
    pub created_by: String,
    /// The task row version after the change, for cache freshness checks.
    pub version: u32,
    /// The task's priority, for the dispatcher's ordering.
    pub priority: u8,
    /// When the task is ready, for the dispatcher's ordering.
    pub run_at: DateTime<Utc>,
    /// Event detail (cancel reason, failure message), if any.
    pub message: Option<String>,
}

impl TaskEnvelope {
    /// The envelope of `event` of `task` (the task as it is after the event).
    pub fn new(kind: EnvelopeType, task: &Task, event: &TaskEvent) -> Self {
        TaskEnvelope {
            v: ENVELOPE_VERSION,
            kind,
            task_id: task.id.to_string(),
            seq: event.seq,
            status: event.status,
            previous_status: event.previous_status,
            queue: task.queue.clone(),
            attempt: event.attempt,
            worker_id: event.worker_id.clone(),
            at: event.at,
            created_by: task.created_by.clone(),
            version: task.version,
            priority: task.priority,
            run_at: task.run_at,
            message: event.message.clone(),
        }
    }

    /// The task id, parsed; `None` for a malformed envelope.
    pub fn id(&self) -> Option<crate::TaskId> {
        crate::TaskId::parse(&self.task_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_matches_the_documented_wire_format() {
        let json = r#"{"v":1,"type":"task.status","taskId":"t1","seq":3,"status":"ASSIGNED",
            "previousStatus":"QUEUED","queue":"q","attempt":1,"workerId":"w","at":"2026-01-01T00:00:00Z",
            "createdBy":"alice","version":3,"priority":0,"runAt":"2026-01-01T00:00:00Z","message":null,
            "someFutureField":true}"#;
        let envelope: TaskEnvelope = serde_json::from_str(json).expect("parses");
        assert_eq!(envelope.kind, EnvelopeType::Status);
        assert_eq!(envelope.status, TaskStatus::Assigned);
        let back = serde_json::to_value(&envelope).expect("serializes");
        assert_eq!(back["type"], "task.status");
        assert_eq!(back["previousStatus"], "QUEUED");
        assert_eq!(back["taskId"], "t1");
    }
}
