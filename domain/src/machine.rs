//! The task state machine: a pure function from (task, command) to the next state and
//! the event it produces, or a typed error.
//!
//! Persistence applies a [`Transition`] atomically: the row update is conditional on the
//! version the command was computed from, and the event and outbox rows are written in
//! the same transaction (README, Task lifecycle). Time and randomness come in as
//! arguments, so every rule here is deterministic and exhaustively testable.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{
    DomainError, LeaseToken, MaxAttempts, NewTask, TaskId, TaskStatus,
    task::{Task, TaskEvent, at_storage_precision},
};

/// Something that may happen to a task.
#[derive(Debug, Clone)]
pub enum Command {
    /// Move a due `SCHEDULED` task to `QUEUED` (or `DEAD` past its deadline).
    Promote,
    /// Offer a `QUEUED` task to a worker under a fresh lease token.
    Offer {
        /// Receiving worker.
        worker_id: String,
        /// Newly minted fencing token.
        lease_token: LeaseToken,
        /// When the offer lapses if not accepted.
        expires_at: DateTime<Utc>,
    },
    /// Offer a `QUEUED` task to a worker that takes its offers as they come (registered
    /// with `autoAccept`): the offer and its acceptance in one step, `QUEUED` →
    /// `RUNNING` under a fresh lease token; counts an attempt.
    Start {
        /// Receiving worker.
        worker_id: String,
        /// Newly minted fencing token.
        lease_token: LeaseToken,
        /// When the lease lapses unless heartbeats extend it.
        lease_expires_at: DateTime<Utc>,
    },
    /// The worker accepts its offer: `ASSIGNED` → `RUNNING`; counts an attempt. The
    /// holder accepting a task it already runs changes nothing (a retry whose first
    /// answer was lost).
    Accept {
        /// Calling worker.
        worker_id: String,
        /// Token the worker presents.
        lease_token: String,
        /// Lease expiry from now on.
        lease_expires_at: DateTime<Utc>,
    },
    /// The worker is alive: extend the lease of a `RUNNING` task (no event).
    Heartbeat {
        /// Calling worker.
        worker_id: String,
        /// Token the worker presents.
        lease_token: String,
        /// New lease expiry.
        lease_expires_at: DateTime<Utc>,
    },
    /// The worker finished: `RUNNING` → `SUCCEEDED`.
    Complete {
        /// Calling worker.
        worker_id: String,
        /// Token the worker presents.
        lease_token: String,
        /// Optional result.
        result: Option<Value>,
    },
    /// The worker failed: retry later through `SCHEDULED`, or `DEAD`.
    Fail {
        /// Calling worker.
        worker_id: String,
        /// Token the worker presents.
        lease_token: String,
        /// What went wrong.
        error: String,
        /// `false` sends the task straight to `DEAD`.
        retryable: bool,
        /// When the retry would run (now + backoff).
        retry_at: DateTime<Utc>,
    },
    /// The worker gives the task back without failing it.
    Release {
        /// Calling worker.
        worker_id: String,
        /// Token the worker presents.
        lease_token: String,
    },
    /// An offer lapsed unaccepted: back to `QUEUED`, not an attempt.
    ExpireOffer,
    /// A running lease lapsed: counts as a failed attempt.
    ExpireLease {
        /// When the retry would run (now + backoff).
        retry_at: DateTime<Utc>,
    },
    /// The lease holder went offline (no subscription, no heartbeat within its TTL):
    /// an offer goes back to `QUEUED` (not an attempt); a run counts as a failed attempt.
    Reclaim {
        /// When the retry would run (now + backoff).
        retry_at: DateTime<Utc>,
    },
    /// Cancel a non-terminal task.
    Cancel {
        /// Optional reason, recorded in the event.
        reason: Option<String>,
    },
    /// Operator retry: run a `DEAD`, `CANCELLED` or backing-off task now.
    Retry,
    /// Admin requeue of a `DEAD` task with a fresh attempt budget.
    Requeue,
    /// The deadline passed: `DEAD`.
    ExpireDeadline,
}

impl Command {
    /// The command with its instants truncated to storage precision.
    fn at_storage_precision(self) -> Self {
        let p = at_storage_precision;
        match self {
            Command::Offer { worker_id, lease_token, expires_at } => {
                Command::Offer { worker_id, lease_token, expires_at: p(expires_at) }
            }
            Command::Start { worker_id, lease_token, lease_expires_at } => {
                Command::Start { worker_id, lease_token, lease_expires_at: p(lease_expires_at) }
            }
            Command::Accept { worker_id, lease_token, lease_expires_at } => {
                Command::Accept { worker_id, lease_token, lease_expires_at: p(lease_expires_at) }
            }
            Command::Heartbeat { worker_id, lease_token, lease_expires_at } => {
                Command::Heartbeat { worker_id, lease_token, lease_expires_at: p(lease_expires_at) }
            }
            Command::Fail { worker_id, lease_token, error, retryable, retry_at } => {
                Command::Fail { worker_id, lease_token, error, retryable, retry_at: p(retry_at) }
            }
            Command::ExpireLease { retry_at } => Command::ExpireLease { retry_at: p(retry_at) },
            Command::Reclaim { retry_at } => Command::Reclaim { retry_at: p(retry_at) },
            other => other,
        }
    }

    /// A short verb for messages, e.g. `cancel`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Promote => "promote",
            Command::Offer { .. } => "offer",
            Command::Start { .. } => "start",
            Command::Accept { .. } => "accept",
            Command::Heartbeat { .. } => "heartbeat",
            Command::Complete { .. } => "complete",
            Command::Fail { .. } => "fail",
            Command::Release { .. } => "release",
            Command::ExpireOffer => "expire the offer of",
            Command::ExpireLease { .. } => "expire the lease of",
            Command::Reclaim { .. } => "reclaim",
            Command::Cancel { .. } => "cancel",
            Command::Retry => "retry",
            Command::Requeue => "requeue",
            Command::ExpireDeadline => "expire",
        }
    }
}

/// A side effect beyond the status event, carried out through the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The task became `QUEUED`: announce it on the dispatch topic.
    Dispatch,
    /// The task became `DEAD`: publish it on the dead-letter topic.
    DeadLetter,
}

/// The outcome of a command: the next state of the task, the event to append (if the
/// change is visible in the history) and the effects to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The task after the command; `version` is incremented, and `last_seq` too when
    /// there is an event.
    pub task: Task,
    /// The history entry, `None` for invisible changes such as a heartbeat.
    pub event: Option<TaskEvent>,
    /// Outbox effects besides the status event.
    pub effects: Vec<Effect>,
}

/// Builds the first state of a new task and its creation event.
///
/// `default_max_attempts` is the queue's setting, used when the input has none.
pub fn create(new: NewTask, id: TaskId, default_max_attempts: MaxAttempts, now: DateTime<Utc>) -> Transition {
    let now = at_storage_precision(now);
    let status = if new.run_at > now { TaskStatus::Scheduled } else { TaskStatus::Queued };
    let task = Task {
        id,
        queue: new.queue.to_string(),
        kind: new.kind.to_string(),
        payload: new.payload.map(|p| p.into_value()),
        priority: new.priority.get(),
        status,
        attempts: 0,
        max_attempts: new.max_attempts.unwrap_or(default_max_attempts).get(),
        run_at: new.run_at,
        deadline: new.deadline,
        created_by: new.created_by,
        idempotency_key: new.idempotency_key.map(|k| k.as_str().to_owned()),
        worker_id: None,
        lease_token: None,
        lease_expires_at: None,
        result: None,
        last_error: None,
        version: 1,
        last_seq: 1,
        created_at: now,
        updated_at: now,
    };
    let event = TaskEvent {
        task_id: id,
        seq: 1,
        status,
        previous_status: None,
        attempt: 0,
        worker_id: None,
        message: None,
        at: now,
    };
    let effects = if status == TaskStatus::Queued { vec![Effect::Dispatch] } else { vec![] };
    Transition { task, event: Some(event), effects }
}

/// Applies `command` to `task` at time `now`.
///
/// Errors: [`DomainError::InvalidTransition`] when the command does not fit the status
/// (`CONFLICT`), [`DomainError::LeaseLost`] when a worker command presents a token or
/// worker that is not the current lease holder, or the lease has lapsed.
pub fn transition(task: &Task, command: Command, now: DateTime<Utc>) -> Result<Transition, DomainError> {
    use TaskStatus::*;
    let now = at_storage_precision(now);
    let command = command.at_storage_precision();
    let invalid = |command: &Command| DomainError::InvalidTransition { status: task.status, command: command.name() };
    let deadline_passed = |at: DateTime<Utc>| task.deadline.is_some_and(|d| d <= at);
    let mut next = Change::new(task, now);

    match command {
        Command::Promote => match task.status {
            Scheduled if deadline_passed(now) => next.dead("deadline passed"),
            Scheduled if task.run_at <= now => next.queued(),
            _ => return Err(invalid(&command)),
        },
        Command::Offer { ref worker_id, ref lease_token, expires_at } => match task.status {
            Queued => {
                next.lease_to(worker_id, lease_token, expires_at);
                next.to(Assigned);
            }
            _ => return Err(invalid(&command)),
        },
        Command::Start { ref worker_id, ref lease_token, lease_expires_at } => match task.status {
            Queued => {
                next.lease_to(worker_id, lease_token, lease_expires_at);
                next.task.attempts += 1;
                next.to(Running);
            }
            _ => return Err(invalid(&command)),
        },
        Command::Accept { ref worker_id, ref lease_token, lease_expires_at } => {
            check_lease(task, worker_id, lease_token, now)?;
            match task.status {
                Assigned => {
                    next.task.attempts += 1;
                    next.task.lease_expires_at = Some(lease_expires_at);
                    next.to(Running);
                }
                // The holder accepting again (its first answer was lost on the way):
                // idempotent, nothing changes and no event is written.
                Running => next.silent = true,
                _ => return Err(invalid(&command)),
            }
        }
        Command::Heartbeat { ref worker_id, ref lease_token, lease_expires_at } => {
            check_lease(task, worker_id, lease_token, now)?;
            match task.status {
                Running => {
                    next.task.lease_expires_at = Some(lease_expires_at);
                    next.silent = true;
                }
                _ => return Err(invalid(&command)),
            }
        }
        Command::Complete { ref worker_id, ref lease_token, ref result } => {
            check_lease(task, worker_id, lease_token, now)?;
            match task.status {
                Running => {
                    next.task.result = result.clone();
                    next.clear_lease();
                    next.to(Succeeded);
                }
                _ => return Err(invalid(&command)),
            }
        }
        Command::Fail { ref worker_id, ref lease_token, ref error, retryable, retry_at } => {
            check_lease(task, worker_id, lease_token, now)?;
            match task.status {
                Running => {
                    next.task.last_error = Some(error.clone());
                    next.message = Some(error.clone());
                    if !retryable {
                        next.dead_keeping_message();
                    } else {
                        next.retry_or_die(retry_at);
                    }
                }
                _ => return Err(invalid(&command)),
            }
        }
        Command::Release { ref worker_id, ref lease_token } => {
            check_lease(task, worker_id, lease_token, now)?;
            next.message = Some("released by worker".into());
            match task.status {
                Assigned => next.queued(),
                // The run started, so its attempt stays counted; release skips the backoff.
                Running if task.attempts >= task.max_attempts => next.dead("attempts exhausted"),
                Running => next.queued(),
                _ => return Err(invalid(&command)),
            }
        }
        Command::ExpireOffer => match task.status {
            Assigned if lease_lapsed(task, now) => {
                next.message = Some("offer expired".into());
                next.queued();
            }
            _ => return Err(invalid(&command)),
        },
        Command::ExpireLease { retry_at } => match task.status {
            Running if lease_lapsed(task, now) => {
                next.task.last_error = Some("lease expired".into());
                next.message = Some("lease expired".into());
                next.retry_or_die(retry_at);
            }
            _ => return Err(invalid(&command)),
        },
        Command::Reclaim { retry_at } => match task.status {
            Assigned => {
                next.message = Some("worker offline".into());
                next.queued();
            }
            Running => {
                next.task.last_error = Some("worker offline".into());
                next.message = Some("worker offline".into());
                next.retry_or_die(retry_at);
            }
            _ => return Err(invalid(&command)),
        },
        Command::Cancel { ref reason } => match task.status {
            s if s.is_terminal() => return Err(invalid(&command)),
            _ => {
                next.message = reason.clone();
                next.clear_lease();
                next.to(Cancelled);
            }
        },
        Command::Retry => match task.status {
            Dead | Cancelled => {
                next.task.attempts = 0;
                next.task.last_error = None;
                next.task.run_at = now;
                next.message = Some("retried by operator".into());
                next.queued();
            }
            Scheduled => {
                next.task.run_at = now;
                next.message = Some("retried by operator".into());
                next.queued();
            }
            _ => return Err(invalid(&command)),
        },
        Command::Requeue => match task.status {
            Dead => {
                next.task.attempts = 0;
                next.task.last_error = None;
                next.task.run_at = now;
                next.message = Some("requeued by admin".into());
                next.queued();
            }
            _ => return Err(invalid(&command)),
        },
        Command::ExpireDeadline => match task.status {
            s if !s.is_terminal() && deadline_passed(now) => next.dead("deadline passed"),
            _ => return Err(invalid(&command)),
        },
    }
    Ok(next.finish())
}

fn lease_lapsed(task: &Task, now: DateTime<Utc>) -> bool {
    task.lease_expires_at.is_none_or(|at| at <= now)
}

/// Fencing: the caller must be the current holder, with the current token, in time.
fn check_lease(task: &Task, worker_id: &str, token: &str, now: DateTime<Utc>) -> Result<(), DomainError> {
    let holds = task.status.is_leased()
        && task.worker_id.as_deref() == Some(worker_id)
        && task.lease_token.as_ref().is_some_and(|t| t.as_str() == token)
        && !lease_lapsed(task, now);
    if holds { Ok(()) } else { Err(DomainError::LeaseLost) }
}

/// A transition under construction.
struct Change<'a> {
    before: &'a Task,
    task: Task,
    now: DateTime<Utc>,
    message: Option<String>,
    effects: Vec<Effect>,
    silent: bool,
}

impl<'a> Change<'a> {
    fn new(before: &'a Task, now: DateTime<Utc>) -> Self {
        Change { before, task: before.clone(), now, message: None, effects: vec![], silent: false }
    }

    fn to(&mut self, status: TaskStatus) {
        self.task.status = status;
    }

    /// Leases the task to `worker` under `token` until `until` (an offer, or a started run).
    fn lease_to(&mut self, worker: &str, token: &LeaseToken, until: DateTime<Utc>) {
        self.task.worker_id = Some(worker.to_owned());
        self.task.lease_token = Some(token.clone());
        self.task.lease_expires_at = Some(until);
    }

    fn clear_lease(&mut self) {
        self.task.lease_token = None;
        self.task.lease_expires_at = None;
    }

    fn queued(&mut self) {
        self.clear_lease();
        self.task.worker_id = None;
        self.to(TaskStatus::Queued);
        self.effects.push(Effect::Dispatch);
    }

    fn dead(&mut self, why: &str) {
        self.message = Some(match self.message.take() {
            Some(m) => format!("{why}: {m}"),
            None => why.to_owned(),
        });
        self.dead_keeping_message();
    }

    fn dead_keeping_message(&mut self) {
        self.clear_lease();
        self.to(TaskStatus::Dead);
        self.effects.push(Effect::DeadLetter);
    }

    /// After a failed attempt: back off through `SCHEDULED`, unless attempts or the
    /// deadline are exhausted.
    fn retry_or_die(&mut self, retry_at: DateTime<Utc>) {
        if self.task.attempts >= self.task.max_attempts {
            self.dead("attempts exhausted");
        } else if self.task.deadline.is_some_and(|d| d <= retry_at) {
            self.dead("deadline passed");
        } else {
            self.clear_lease();
            self.task.worker_id = None;
            self.task.run_at = retry_at;
            self.to(TaskStatus::Scheduled);
        }
    }

    fn finish(mut self) -> Transition {
        self.task.version = self.before.version + 1;
        self.task.updated_at = self.now;
        let event = if self.silent {
            None
        } else {
            self.task.last_seq = self.before.last_seq + 1;
            Some(TaskEvent {
                task_id: self.task.id,
                seq: self.task.last_seq,
                status: self.task.status,
                previous_status: Some(self.before.status),
                attempt: self.task.attempts,
                // The worker involved: the new holder, or the one that just let go.
                worker_id: self.task.worker_id.clone().or_else(|| self.before.worker_id.clone()),
                message: self.message,
                at: self.now,
            })
        };
        Transition { task: self.task, event, effects: self.effects }
    }
}

#[cfg(test)]
mod tests;
