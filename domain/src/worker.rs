//! Workers: who they are, what they serve, how much they take.

use crate::{DomainError, QueueName};

/// Most queues one worker may serve.
pub const MAX_WORKER_QUEUES: usize = 64;
/// Largest capacity a worker may declare.
pub const MAX_WORKER_CAPACITY: u32 = 1_000;
/// Longest worker display name, in characters.
pub const MAX_WORKER_NAME_CHARS: usize = 128;

/// Whether a worker takes new offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerStatus {
    /// Connected or heartbeating within its TTL: receives offers.
    Online,
    /// Finishing its running tasks; receives no new offers.
    Draining,
    /// Gone: its offers and leases are reclaimed.
    Offline,
}

impl WorkerStatus {
    /// The storage spelling, e.g. `"ONLINE"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Online => "ONLINE",
            WorkerStatus::Draining => "DRAINING",
            WorkerStatus::Offline => "OFFLINE",
        }
    }

    /// Parses the storage spelling; anything unknown reads as `Offline` (the safe side).
    pub fn from_stored(s: &str) -> Self {
        match s {
            "ONLINE" => WorkerStatus::Online,
            "DRAINING" => WorkerStatus::Draining,
            _ => WorkerStatus::Offline,
        }
    }
}

/// A validated `registerWorker` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRegistration {
    /// Display name (1–128 characters).
    pub name: String,
    /// Queues served: 1–64 distinct valid queue names, sorted.
    pub queues: Vec<QueueName>,
    /// Concurrent tasks accepted (1–1000).
    pub capacity: u32,
    /// Whether the worker takes its offers as they come: the dispatcher then offers
    /// tasks already `RUNNING` and the worker sends no `acceptTask` (`false` after
    /// [`WorkerRegistration::parse`]).
    pub auto_accept: bool,
}

impl WorkerRegistration {
    /// Validates a registration; errors name the input field.
    pub fn parse(name: &str, queues: &[String], capacity: i64) -> Result<Self, DomainError> {
        let name = name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_WORKER_NAME_CHARS {
            return Err(DomainError::invalid("name", "must be 1 to 128 characters"));
        }
        if queues.is_empty() || queues.len() > MAX_WORKER_QUEUES {
            return Err(DomainError::invalid("queues", "must list 1 to 64 queues"));
        }
        let mut parsed = queues
            .iter()
            .map(|q| QueueName::parse(q).map_err(|e| e.in_field("queues")))
            .collect::<Result<Vec<_>, _>>()?;
        parsed.sort();
        parsed.dedup();
        let capacity = u32::try_from(capacity)
            .ok()
            .filter(|c| (1..=MAX_WORKER_CAPACITY).contains(c))
            .ok_or_else(|| DomainError::invalid("capacity", "must be between 1 and 1000"))?;
        Ok(WorkerRegistration { name: name.to_owned(), queues: parsed, capacity, auto_accept: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(err: DomainError) -> String {
        match err {
            DomainError::InvalidInput { field, .. } => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn registrations_are_validated_field_by_field() {
        let ok = WorkerRegistration::parse(" courier 7 ", &["b".into(), "a".into(), "b".into()], 3).expect("valid");
        assert_eq!(ok.name, "courier 7");
        assert_eq!(ok.queues.iter().map(QueueName::as_str).collect::<Vec<_>>(), ["a", "b"], "sorted, deduplicated");
        let cases = [
            ("", vec!["q".to_owned()], 1, "name", "empty name"),
            ("w", vec![], 1, "queues", "no queues"),
            ("w", vec!["Bad Queue".to_owned()], 1, "queues.queue", "invalid queue"),
            ("w", vec!["q".to_owned()], 0, "capacity", "zero capacity"),
            ("w", vec!["q".to_owned()], 1001, "capacity", "capacity too large"),
        ];
        for (name, queues, capacity, expected, why) in cases {
            let err = WorkerRegistration::parse(name, &queues, capacity).expect_err(why);
            assert_eq!(field(err), expected, "{why}");
        }
    }

    #[test]
    fn unknown_stored_statuses_read_as_offline() {
        for status in [WorkerStatus::Online, WorkerStatus::Draining, WorkerStatus::Offline] {
            assert_eq!(WorkerStatus::from_stored(status.as_str()), status);
        }
        assert_eq!(WorkerStatus::from_stored("??"), WorkerStatus::Offline);
    }
}
