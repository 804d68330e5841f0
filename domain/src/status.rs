//! Task statuses.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::DomainError;

/// Where a task is in its lifecycle (README, Task lifecycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// Waiting for `runAt` (also while backing off before a retry).
    Scheduled,
    /// Ready, waiting for a worker.
    Queued,
    /// Offered to one worker under a lease; must be accepted before the offer expires.
    Assigned,
    /// Accepted by a worker (or started by the offer, for a worker registered with
    /// `autoAccept`); heartbeats extend the lease.
    Running,
    /// Completed by a worker. Terminal.
    Succeeded,
    /// Cancelled by its owner or an operator. Terminal.
    Cancelled,
    /// Attempts exhausted, non-retryable failure or deadline passed. Terminal until requeued.
    Dead,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Scheduled,
        TaskStatus::Queued,
        TaskStatus::Assigned,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Cancelled,
        TaskStatus::Dead,
    ];

    /// The wire and storage spelling, e.g. `"QUEUED"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Scheduled => "SCHEDULED",
            TaskStatus::Queued => "QUEUED",
            TaskStatus::Assigned => "ASSIGNED",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Succeeded => "SUCCEEDED",
            TaskStatus::Cancelled => "CANCELLED",
            TaskStatus::Dead => "DEAD",
        }
    }

    /// Whether no further transition happens without an operator (`SUCCEEDED`, `CANCELLED`, `DEAD`).
    pub const fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Cancelled | TaskStatus::Dead)
    }

    /// Whether a worker currently holds the task (offer or lease).
    pub const fn is_leased(self) -> bool {
        matches!(self, TaskStatus::Assigned | TaskStatus::Running)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| DomainError::invalid("status", format!("unknown status {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_its_string_form() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
        }
        assert!("queued".parse::<TaskStatus>().is_err(), "parsing is case-sensitive");
    }

    #[test]
    fn exactly_three_statuses_are_terminal() {
        let terminal: Vec<_> = TaskStatus::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, [TaskStatus::Succeeded, TaskStatus::Cancelled, TaskStatus::Dead]);
    }
}
