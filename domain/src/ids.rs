//! Identifiers.
//!
//! Task ids are UUIDv7: time-ordered (so listing by id is listing by creation time and
//! B-tree inserts stay append-mostly) and unguessable, never sequential. Within one
//! millisecond the ids one process makes still follow the order they were made in: the
//! 42 bits after the time are a counter reseeded at random every millisecond and counted
//! up within it (RFC 9562's monotonic method), and the last 32 bits stay random. Ids of
//! different processes within one millisecond sort in no particular order.

use std::{fmt, str::FromStr, sync::Mutex};

use chrono::{DateTime, Utc};
use rand::RngCore;
use uuid::{ContextV7, Uuid};

/// The opaque identifier of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh id whose time prefix is `now`, after every id this process made before
    /// for the same millisecond.
    pub fn generate(now: DateTime<Utc>) -> Self {
        static CONTEXT: Mutex<ContextV7> = Mutex::new(ContextV7::new());
        let ts = uuid::Timestamp::from_unix(&CONTEXT, now.timestamp().max(0) as u64, now.timestamp_subsec_nanos());
        TaskId(Uuid::new_v7(ts))
    }

    /// Parses the canonical string form; `None` for anything else.
    ///
    /// Callers answer an unparsable id exactly like an unknown one (`NOT_FOUND`), so ids
    /// cannot be probed.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::from_str(s).ok().filter(|u| u.get_version_num() == 7).map(TaskId)
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

/// A fencing token minted for every offer of a task to a worker.
///
/// Worker mutations must present the task's current token; an older token means the
/// worker lost its lease (`LEASE_LOST`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A new random token (128 bits, hex).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        LeaseToken(hex::encode(bytes))
    }

    /// Wraps a token read back from storage or presented by a worker.
    pub fn from_string(token: String) -> Self {
        LeaseToken(token)
    }

    /// The token's string form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseToken {
    // Tokens are credentials: keep them out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_sort_by_creation_time() {
        let earlier = TaskId::generate(DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default());
        let later = TaskId::generate(DateTime::from_timestamp(1_700_000_001, 0).unwrap_or_default());
        assert!(earlier < later);
        assert!(earlier.to_string() < later.to_string(), "string order matches time order");
    }

    #[test]
    fn task_ids_made_in_one_millisecond_follow_the_order_they_were_made_in() {
        let now = Utc::now();
        let ids: Vec<TaskId> = (0..1_000).map(|_| TaskId::generate(now)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "strictly increasing");
        assert!(ids.iter().all(|id| id.as_uuid().get_version_num() == 7));
    }

    #[test]
    fn task_id_round_trips_and_rejects_other_strings() {
        let id = TaskId::generate(Utc::now());
        assert_eq!(TaskId::parse(&id.to_string()), Some(id));
        for bad in ["", "1", "not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
            assert_eq!(TaskId::parse(bad), None, "{bad:?} must not parse");
        }
        let v4 = Uuid::new_v4().to_string();
        assert_eq!(TaskId::parse(&v4), None, "only v7 ids are ours");
    }

    #[test]
    fn lease_tokens_are_unique_and_not_logged() {
        let a = LeaseToken::generate();
        let b = LeaseToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(!format!("{a:?}").contains(a.as_str()));
    }
}
