//! Validated inputs: parse, don't validate.
//!
//! Each newtype can only be built through its `parse`/`try_from`, so a value of the type
//! is proof that the rule of README, Input rules holds. Errors name the offending input field.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{DomainError, task::at_storage_precision};

/// Largest serialized payload accepted, in bytes (64 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// How far ahead `runAt` may be.
pub const MAX_RUN_AT_HORIZON: Duration = Duration::days(30);
/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
/// `maxAttempts` when neither the input nor the queue sets it.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Checks `^[a-z0-9][a-z0-9._-]{0,63}$`, the rule shared by queue names and task kinds.
fn check_name(field: &str, s: &str) -> Result<(), DomainError> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if first_ok && rest_ok && s.len() <= 64 {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            "must match ^[a-z0-9][a-z0-9._-]{0,63}$ (lower-case letters, digits, '.', '_', '-'; at most 64)",
        ))
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Parses a name matching `^[a-z0-9][a-z0-9._-]{0,63}$`.
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                check_name($field, s).map(|()| $name(s.to_owned()))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The name of a queue, e.g. `emails` or `courier.eu-west`.
    QueueName,
    "queue"
);
name_type!(
    /// What kind of work a task is, e.g. `send-email`; workers branch on it.
    TaskKind,
    "kind"
);

/// A task priority from 0 to 9; 9 is dispatched first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Priority(u8);

impl Priority {
    /// The highest priority.
    pub const MAX: Priority = Priority(9);

    /// The numeric value (0–9).
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for Priority {
    type Error = DomainError;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        u8::try_from(value)
            .ok()
            .filter(|v| *v <= 9)
            .map(Priority)
            .ok_or_else(|| DomainError::invalid("priority", "must be between 0 and 9"))
    }
}

/// How many times a task may run before it is `DEAD` (1–100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaxAttempts(u32);

impl MaxAttempts {
    /// The default when neither the input nor the queue sets it.
    pub const DEFAULT: MaxAttempts = MaxAttempts(DEFAULT_MAX_ATTEMPTS);

    /// The numeric value.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for MaxAttempts {
    type Error = DomainError;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        u32::try_from(value)
            .ok()
            .filter(|v| (1..=100).contains(v))
            .map(MaxAttempts)
            .ok_or_else(|| DomainError::invalid("maxAttempts", "must be between 1 and 100"))
    }
}

/// A task payload: any JSON value up to [`MAX_PAYLOAD_BYTES`] serialized.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload(Value);

impl Payload {
    /// Accepts `value` when its compact serialization fits in 64 KiB.
    pub fn parse(value: Value) -> Result<Self, DomainError> {
        let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_PAYLOAD_BYTES {
            return Err(DomainError::invalid(
                "payload",
                format!("is {size} bytes serialized; the limit is {MAX_PAYLOAD_BYTES}"),
            ));
        }
        Ok(Payload(value))
    }

    /// The JSON value.
    pub fn as_value(&self) -> &Value {
        &self.0
    }

    /// Consumes the payload, returning the JSON value.
    pub fn into_value(self) -> Value {
        self.0
    }
}

/// A client-chosen key that makes `createTask` retries safe (unique per creator).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Accepts 1 to 128 characters.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let chars = s.chars().count();
        if chars == 0 || chars > MAX_IDEMPOTENCY_KEY_CHARS {
            return Err(DomainError::invalid(
                "idempotencyKey",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"),
            ));
        }
        Ok(IdempotencyKey(s.to_owned()))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The raw `CreateTaskInput` as a client sent it, before validation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CreateTaskInput {
    /// Target queue.
    pub queue: String,
    /// Task kind.
    pub kind: String,
    /// Optional JSON payload.
    pub payload: Option<Value>,
    /// Priority, 0–9 (default 0).
    pub priority: Option<i64>,
    /// Earliest start; `None` means now.
    pub run_at: Option<DateTime<Utc>>,
    /// Latest moment the task may still start or finish; past it the task is `DEAD`.
    pub deadline: Option<DateTime<Utc>>,
    /// Attempts before `DEAD`; `None` means the queue's default, else 5.
    pub max_attempts: Option<i64>,
    /// Optional idempotency key, unique per creator.
    pub idempotency_key: Option<String>,
}

impl CreateTaskInput {
    /// A fingerprint of the input as sent, used to tell a retry (same input) from a
    /// conflicting reuse of an idempotency key (different input).
    ///
    /// Omitted fields hash differently from explicit defaults on purpose: it is what the
    /// client sent, not what the server derived from it (which depends on the clock).
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::json!([
            self.queue,
            self.kind,
            self.payload.as_ref().map(canonical_json),
            self.priority,
            self.run_at.map(|t| t.timestamp_millis()),
            self.deadline.map(|t| t.timestamp_millis()),
            self.max_attempts,
        ]);
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// JSON text with object keys sorted at every level, so equal values hash equally
/// whatever order the client wrote the keys in.
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let body: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => {
            let body: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", body.join(","))
        }
        other => other.to_string(),
    }
}

/// A validated task creation request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Target queue.
    pub queue: QueueName,
    /// Task kind.
    pub kind: TaskKind,
    /// Payload, if any.
    pub payload: Option<Payload>,
    /// Priority.
    pub priority: Priority,
    /// When the task becomes ready (never before creation time).
    pub run_at: DateTime<Utc>,
    /// Optional deadline.
    pub deadline: Option<DateTime<Utc>>,
    /// Explicit attempt limit; `None` defers to the queue's setting.
    pub max_attempts: Option<MaxAttempts>,
    /// Optional idempotency key.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Fingerprint of the raw input (see [`CreateTaskInput::fingerprint`]).
    pub fingerprint: String,
    /// The subject that creates the task.
    pub created_by: String,
}

impl NewTask {
    /// Validates `input` for `created_by` at time `now`.
    pub fn parse(input: CreateTaskInput, created_by: &str, now: DateTime<Utc>) -> Result<Self, DomainError> {
        let fingerprint = input.fingerprint();
        let now = at_storage_precision(now);
        let input = CreateTaskInput {
            run_at: input.run_at.map(at_storage_precision),
            deadline: input.deadline.map(at_storage_precision),
            ..input
        };
        let run_at = match input.run_at {
            Some(at) if at > now + MAX_RUN_AT_HORIZON => {
                return Err(DomainError::invalid("runAt", "must be at most 30 days ahead"));
            }
            Some(at) => at.max(now),
            None => now,
        };
        if let Some(deadline) = input.deadline {
            if deadline <= now {
                return Err(DomainError::invalid("deadline", "must be in the future"));
            }
            if deadline < run_at {
                return Err(DomainError::invalid("deadline", "must not be before runAt"));
            }
        }
        Ok(NewTask {
            queue: QueueName::parse(&input.queue)?,
            kind: TaskKind::parse(&input.kind)?,
            payload: input.payload.map(Payload::parse).transpose()?,
            priority: input.priority.map(Priority::try_from).transpose()?.unwrap_or_default(),
            run_at,
            deadline: input.deadline,
            max_attempts: input.max_attempts.map(MaxAttempts::try_from).transpose()?,
            idempotency_key: input.idempotency_key.as_deref().map(IdempotencyKey::parse).transpose()?,
            fingerprint,
            created_by: created_by.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input() -> CreateTaskInput {
        CreateTaskInput { queue: "emails".into(), kind: "send".into(), ..Default::default() }
    }

    fn field_of(err: DomainError) -> String {
        match err {
            DomainError::InvalidInput { field, .. } => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn names_follow_the_contract_pattern() {
        let cases = [
            ("a", true, "single char"),
            ("0", true, "leading digit"),
            ("courier.eu-west_2", true, "dots dashes underscores"),
            (&"a".repeat(64), true, "64 chars"),
            (&"a".repeat(65), false, "65 chars"),
            ("", false, "empty"),
            ("-a", false, "leading dash"),
            (".a", false, "leading dot"),
            ("Emails", false, "upper case"),
            ("e mails", false, "space"),
            ("émails", false, "non-ascii"),
        ];
        for (name, ok, why) in cases {
            assert_eq!(QueueName::parse(name).is_ok(), ok, "queue case: {why}");
            assert_eq!(TaskKind::parse(name).is_ok(), ok, "kind case: {why}");
        }
        assert_eq!(field_of(TaskKind::parse("").unwrap_err()), "kind");
    }

    #[test]
    fn priority_and_max_attempts_enforce_their_ranges() {
        for (v, ok) in [(-1, false), (0, true), (9, true), (10, false)] {
            assert_eq!(Priority::try_from(v).is_ok(), ok, "priority {v}");
        }
        for (v, ok) in [(0, false), (1, true), (100, true), (101, false), (i64::MAX, false)] {
            assert_eq!(MaxAttempts::try_from(v).is_ok(), ok, "maxAttempts {v}");
        }
    }

    #[test]
    fn payload_is_limited_to_64_kib_serialized() {
        let fits = json!("x".repeat(MAX_PAYLOAD_BYTES - 2)); // two quote characters
        assert!(Payload::parse(fits).is_ok());
        let too_big = json!("x".repeat(MAX_PAYLOAD_BYTES - 1));
        assert_eq!(field_of(Payload::parse(too_big).unwrap_err()), "payload");
    }

    #[test]
    fn idempotency_key_is_one_to_128_characters() {
        assert!(IdempotencyKey::parse("k").is_ok());
        assert!(IdempotencyKey::parse(&"é".repeat(128)).is_ok(), "counted in characters");
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }

    #[test]
    fn run_at_is_at_most_30_days_ahead_and_never_in_the_past() {
        let now = Utc::now();
        let ok = NewTask::parse(CreateTaskInput { run_at: Some(now + Duration::days(30)), ..input() }, "alice", now);
        assert!(ok.is_ok());
        let too_far =
            NewTask::parse(CreateTaskInput { run_at: Some(now + Duration::days(31)), ..input() }, "alice", now);
        assert_eq!(field_of(too_far.unwrap_err()), "runAt");
        let past = NewTask::parse(CreateTaskInput { run_at: Some(now - Duration::days(1)), ..input() }, "alice", now);
        assert_eq!(past.map(|t| t.run_at).ok(), Some(at_storage_precision(now)), "a past runAt means now");
    }

    #[test]
    fn deadline_must_be_future_and_not_before_run_at() {
        let now = Utc::now();
        let past = CreateTaskInput { deadline: Some(now - Duration::seconds(1)), ..input() };
        assert_eq!(field_of(NewTask::parse(past, "a", now).unwrap_err()), "deadline");
        let before_run = CreateTaskInput {
            run_at: Some(now + Duration::hours(2)),
            deadline: Some(now + Duration::hours(1)),
            ..input()
        };
        assert_eq!(field_of(NewTask::parse(before_run, "a", now).unwrap_err()), "deadline");
    }

    #[test]
    fn defaults_apply_when_fields_are_omitted() {
        let now = Utc::now();
        let task = NewTask::parse(input(), "alice", now).expect("valid");
        assert_eq!(task.priority.get(), 0);
        assert_eq!(task.run_at, at_storage_precision(now), "now, at storage precision");
        assert_eq!(task.max_attempts, None, "queue default applies later");
        assert_eq!(task.created_by, "alice");
    }

    #[test]
    fn fingerprint_ignores_key_order_but_not_values() {
        let a = CreateTaskInput { payload: Some(json!({"a": 1, "b": {"c": 2, "d": 3}})), ..input() };
        let b = CreateTaskInput { payload: Some(json!({"b": {"d": 3, "c": 2}, "a": 1})), ..input() };
        let c = CreateTaskInput { payload: Some(json!({"a": 2, "b": {"c": 2, "d": 3}})), ..input() };
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        let keyed = CreateTaskInput { idempotency_key: Some("k".into()), ..a.clone() };
        assert_eq!(keyed.fingerprint(), a.fingerprint(), "the key itself is not part of the input");
        let prio = CreateTaskInput { priority: Some(1), ..a.clone() };
        assert_ne!(prio.fingerprint(), a.fingerprint());
    }
}
