//! Explicit conversions between rows and domain values.
//!
//! Stored values were validated on the way in; a row that does not convert back means
//! corruption or a bug, reported as `INTERNAL` with the offending row id in the log.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use taskwire_domain::{
    LeaseToken, TaskId, TaskStatus,
    task::{Task, TaskEvent},
};
use taskwire_entity::{task, task_event, worker};

use super::WorkerRecord;
use crate::error::{StoreError, StoreResult};

pub(super) fn to_ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(super) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn corrupt(what: &str, id: &str) -> StoreError {
    tracing::error!(row = id, "stored {what} does not convert back");
    StoreError::Internal
}

fn json_text(value: &Option<serde_json::Value>) -> Option<String> {
    value.as_ref().map(|v| v.to_string())
}

fn parse_json(text: Option<String>, id: &str) -> StoreResult<Option<serde_json::Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|_| corrupt("json", id))).transpose()
}

fn count(value: i32) -> u32 {
    u32::try_from(value).unwrap_or_default()
}

pub(super) fn task_from_row(row: task::Model) -> StoreResult<Task> {
    let id = TaskId::parse(&row.id).ok_or_else(|| corrupt("task id", &row.id))?;
    let status: TaskStatus = row.status.parse().map_err(|_| corrupt("status", &row.id))?;
    Ok(Task {
        id,
        payload: parse_json(row.payload, &row.id)?,
        result: parse_json(row.result, &row.id)?,
        queue: row.queue,
        kind: row.kind,
        priority: u8::try_from(row.priority).unwrap_or_default(),
        status,
        attempts: count(row.attempts),
        max_attempts: count(row.max_attempts),
        run_at: from_ms(row.run_at),
        deadline: row.deadline.map(from_ms),
        created_by: row.created_by,
        idempotency_key: row.idempotency_key,
        worker_id: row.worker_id,
        lease_token: row.lease_token.map(LeaseToken::from_string),
        lease_expires_at: row.lease_expires_at.map(from_ms),
        last_error: row.last_error,
        version: count(row.version),
        last_seq: count(row.last_seq),
        created_at: from_ms(row.created_at),
        updated_at: from_ms(row.updated_at),
    })
}

/// The full row of a task (for inserts), with the creation input's fingerprint.
pub(super) fn task_to_row(task: &Task, input_hash: &str) -> task::ActiveModel {
    let mut row = task_changes(task);
    row.id = Set(task.id.to_string());
    row.queue = Set(task.queue.clone());
    row.kind = Set(task.kind.clone());
    row.payload = Set(json_text(&task.payload));
    row.priority = Set(i16::from(task.priority));
    row.created_by = Set(task.created_by.clone());
    row.idempotency_key = Set(task.idempotency_key.clone());
    row.input_hash = Set(input_hash.to_owned());
    row.created_at = Set(to_ms(task.created_at));
    row
}

/// The columns a state transition may change (everything but identity and creation data).
pub(super) fn task_changes(task: &Task) -> task::ActiveModel {
    task::ActiveModel {
        status: Set(task.status.as_str().to_owned()),
        attempts: Set(task.attempts as i32),
        max_attempts: Set(task.max_attempts as i32),
        run_at: Set(to_ms(task.run_at)),
        deadline: Set(task.deadline.map(to_ms)),
        worker_id: Set(task.worker_id.clone()),
        lease_token: Set(task.lease_token.as_ref().map(|t| t.as_str().to_owned())),
        lease_expires_at: Set(task.lease_expires_at.map(to_ms)),
        result: Set(json_text(&task.result)),
        last_error: Set(task.last_error.clone()),
        version: Set(task.version as i32),
        last_seq: Set(task.last_seq as i32),
        updated_at: Set(to_ms(task.updated_at)),
        ..Default::default()
    }
}

pub(super) fn event_to_row(event: &TaskEvent) -> task_event::ActiveModel {
    task_event::ActiveModel {
        task_id: Set(event.task_id.to_string()),
        seq: Set(event.seq as i32),
        status: Set(event.status.as_str().to_owned()),
        previous_status: Set(event.previous_status.map(|s| s.as_str().to_owned())),
        attempt: Set(event.attempt as i32),
        worker_id: Set(event.worker_id.clone()),
        message: Set(event.message.clone()),
        at: Set(to_ms(event.at)),
        ..Default::default()
    }
}

pub(super) fn event_from_row(row: task_event::Model) -> StoreResult<TaskEvent> {
    let corrupt_event = || corrupt("event", &row.task_id);
    Ok(TaskEvent {
        task_id: TaskId::parse(&row.task_id).ok_or_else(corrupt_event)?,
        seq: count(row.seq),
        status: row.status.parse().map_err(|_| corrupt_event())?,
        previous_status: row.previous_status.map(|s| s.parse()).transpose().map_err(|_| corrupt_event())?,
        attempt: count(row.attempt),
        worker_id: row.worker_id,
        message: row.message,
        at: from_ms(row.at),
    })
}

pub(super) fn worker_from_row(row: worker::Model) -> StoreResult<WorkerRecord> {
    let queues: Vec<String> = serde_json::from_str(&row.queues).map_err(|_| corrupt("worker queues", &row.id))?;
    Ok(WorkerRecord {
        queues,
        capacity: count(row.capacity),
        active: count(row.active),
        status: row.status,
        last_seen_at: from_ms(row.last_seen_at),
        auto_accept: row.auto_accept,
        name: row.name,
        id: row.id,
    })
}
