//! The L2 wire format and the set-if-higher-rank script.
//!
//! A value is `<rank>|<kind>|<body>`: kind `T` (a task, body = JSON of [`CachedTask`]),
//! `M` (no such task) or `X` (tombstone). The rank leads so the Lua script can compare
//! without decoding JSON. Lease tokens are not part of [`CachedTask`]: fencing tokens
//! never leave the database.

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use taskwire_domain::{TaskId, TaskStatus, task::Task};

use super::{Entry, Value};

/// `KEYS[1]` = key; `ARGV` = rank, encoded value, TTL in ms. Writes only when the key is
/// absent or holds a lower rank; returns 1 when it wrote.
pub(super) static SET_IF_HIGHER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local current = redis.call('GET', KEYS[1])
if current then
  local rank = tonumber(string.match(current, '^(%d+)|'))
  if rank and rank >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// The cached form of a task: every field but the lease token.
#[derive(Serialize, Deserialize)]
struct CachedTask {
    id: String,
    queue: String,
    kind: String,
    payload: Option<serde_json::Value>,
    priority: u8,
    status: TaskStatus,
    attempts: u32,
    max_attempts: u32,
    run_at: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    created_by: String,
    idempotency_key: Option<String>,
    worker_id: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    result: Option<serde_json::Value>,
    last_error: Option<String>,
    version: u32,
    last_seq: u32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The L2 bytes of `entry`.
pub(super) fn encode(entry: &Entry) -> Vec<u8> {
    let (kind, body) = match &entry.value {
        Value::Task(task) => ("T", serde_json::to_vec(&to_cached(task)).unwrap_or_default()),
        Value::Missing => ("M", Vec::new()),
        Value::Tombstone => ("X", Vec::new()),
    };
    let mut out = format!("{}|{kind}|", entry.rank).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The entry of L2 `bytes`; `None` for anything malformed (then it is a miss).
pub(super) fn decode(bytes: &[u8]) -> Option<Entry> {
    let mut parts = bytes.splitn(3, |b| *b == b'|');
    let rank: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let kind = parts.next()?;
    let body = parts.next()?;
    let value = match kind {
        b"T" => Value::Task(Arc::new(from_cached(serde_json::from_slice(body).ok()?)?)),
        b"M" => Value::Missing,
        b"X" => Value::Tombstone,
        _ => return None,
    };
    Some(Entry { rank, value })
}

fn to_cached(task: &Task) -> CachedTask {
    CachedTask {
        id: task.id.to_string(),
        queue: task.queue.clone(),
        kind: task.kind.clone(),
        payload: task.payload.clone(),
        priority: task.priority,
        status: task.status,
        attempts: task.attempts,
        max_attempts: task.max_attempts,
        run_at: task.run_at,
        deadline: task.deadline,
        created_by: task.created_by.clone(),
        idempotency_key: task.idempotency_key.clone(),
        worker_id: task.worker_id.clone(),
        lease_expires_at: task.lease_expires_at,
        result: task.result.clone(),
        last_error: task.last_error.clone(),
        version: task.version,
        last_seq: task.last_seq,
        created_at: task.created_at,
        updated_at: task.updated_at,
    }
}

fn from_cached(c: CachedTask) -> Option<Task> {
    Some(Task {
        id: TaskId::parse(&c.id)?,
        queue: c.queue,
        kind: c.kind,
        payload: c.payload,
        priority: c.priority,
        status: c.status,
        attempts: c.attempts,
        max_attempts: c.max_attempts,
        run_at: c.run_at,
        deadline: c.deadline,
        created_by: c.created_by,
        idempotency_key: c.idempotency_key,
        worker_id: c.worker_id,
        lease_token: None,
        lease_expires_at: c.lease_expires_at,
        result: c.result,
        last_error: c.last_error,
        version: c.version,
        last_seq: c.last_seq,
        created_at: c.created_at,
        updated_at: c.updated_at,
    })
}
