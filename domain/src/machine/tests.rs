use chrono::Duration;
use proptest::prelude::*;

use super::*;
use crate::{CreateTaskInput, NewTask, TaskStatus::*};

const WORKER: &str = "worker-1";

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

fn new_task(max_attempts: i64) -> Task {
    let input =
        CreateTaskInput { queue: "q".into(), kind: "k".into(), max_attempts: Some(max_attempts), ..Default::default() };
    let parsed = NewTask::parse(input, "alice", now()).expect("valid input");
    create(parsed, TaskId::generate(now()), MaxAttempts::DEFAULT, now()).task
}

/// A task in `status`, with a live lease held by WORKER where that applies.
fn task_in(status: TaskStatus) -> Task {
    let mut task = new_task(3);
    task.status = status;
    if status.is_leased() {
        task.worker_id = Some(WORKER.into());
        task.lease_token = Some(LeaseToken::from_string("tok".into()));
        task.lease_expires_at = Some(now() + Duration::seconds(30));
    }
    if status == Running {
        task.attempts = 1;
    }
    task
}

fn every_command() -> Vec<Command> {
    let later = now() + Duration::seconds(10);
    vec![
        Command::Promote,
        Command::Offer { worker_id: WORKER.into(), lease_token: LeaseToken::generate(), expires_at: later },
        Command::Accept { worker_id: WORKER.into(), lease_token: "tok".into(), lease_expires_at: later },
        Command::Heartbeat { worker_id: WORKER.into(), lease_token: "tok".into(), lease_expires_at: later },
        Command::Complete { worker_id: WORKER.into(), lease_token: "tok".into(), result: None },
        Command::Fail {
            worker_id: WORKER.into(),
            lease_token: "tok".into(),
            error: "boom".into(),
            retryable: true,
            retry_at: later,
        },
        Command::Release { worker_id: WORKER.into(), lease_token: "tok".into() },
        Command::ExpireOffer,
        Command::ExpireLease { retry_at: later },
        Command::Reclaim { retry_at: later },
        Command::Cancel { reason: Some("changed my mind".into()) },
        Command::Retry,
        Command::Requeue,
        Command::ExpireDeadline,
        Command::Start { worker_id: WORKER.into(), lease_token: LeaseToken::generate(), lease_expires_at: later },
    ]
}

/// The full table: for every status and command, the resulting status or error code.
/// Leases are live, the task is due, attempts are left and there is no deadline.
#[test]
fn every_status_and_command_has_the_specified_outcome() {
    use crate::ErrorCode::{Conflict as C, LeaseLost as L};
    type Outcome = Result<TaskStatus, crate::ErrorCode>;
    let ok = Ok;
    // Columns follow every_command(): promote offer accept heartbeat complete fail release
    // expire-offer expire-lease reclaim cancel retry requeue expire-deadline start.
    let table: [(TaskStatus, [Outcome; 15]); 7] = [
        (
            Scheduled,
            [
                ok(Queued),
                Err(C),
                Err(L),
                Err(L),
                Err(L),
                Err(L),
                Err(L),
                Err(C),
                Err(C),
                Err(C),
                ok(Cancelled),
                ok(Queued),
                Err(C),
                Err(C),
                Err(C),
            ],
        ),
        (
            Queued,
            [
                Err(C),
                ok(Assigned),
                Err(L),
                Err(L),
                Err(L),
                Err(L),
                Err(L),
                Err(C),
                Err(C),
                Err(C),
                ok(Cancelled),
                Err(C),
                Err(C),
                Err(C),
                ok(Running),
            ],
        ),
        (
            Assigned,
            [
                Err(C),
                Err(C),
                ok(Running),
                Err(C),
                Err(C),
                Err(C),
                ok(Queued),
                Err(C),
                Err(C),
                ok(Queued),
                ok(Cancelled),
                Err(C),
                Err(C),
                Err(C),
                Err(C),
            ],
        ),
        (
            Running,
            [
                Err(C),
                Err(C),
                ok(Running),
                ok(Running),
                ok(Succeeded),
                ok(Scheduled),
                ok(Queued),
                Err(C),
                Err(C),
                ok(Scheduled),
                ok(Cancelled),
                Err(C),
                Err(C),
                Err(C),
                Err(C),
            ],
        ),
        (
            Succeeded,
            [
                Err(C),
                Err(C),
                Err(L),
                Err(L),
                Err(L),
                Err(L),
                Err(L),
                Err(C),
                Err(C),
                Err(C),
                Err(C),
                Err(C),
                Err(C),
                Err(C),
                Err(C),
            ],
        ),
        (
            Cancelled,
            [
                Err(C),
                Err(C),
                Err(L),
                Err(L),
                Err(L),
                Err(L),
                Err(L),
                Err(C),
                Err(C),
                Err(C),
                Err(C),
                ok(Queued),
                Err(C),
                Err(C),
                Err(C),
            ],
        ),
        (
            Dead,
            [
                Err(C),
                Err(C),
                Err(L),
                Err(L),
                Err(L),
                Err(L),
                Err(L),
                Err(C),
                Err(C),
                Err(C),
                Err(C),
                ok(Queued),
                ok(Queued),
                Err(C),
                Err(C),
            ],
        ),
    ];
    for (status, outcomes) in table {
        for (command, expected) in every_command().into_iter().zip(outcomes) {
            let name = command.name();
            let actual = transition(&task_in(status), command, now()).map(|t| t.task.status).map_err(|e| e.code());
            assert_eq!(actual, expected, "{name} on {status}");
        }
    }
}

#[test]
fn a_new_task_is_queued_when_due_and_scheduled_otherwise() {
    let due = new_task(3);
    assert_eq!(due.status, Queued);
    let input = CreateTaskInput {
        queue: "q".into(),
        kind: "k".into(),
        run_at: Some(now() + Duration::minutes(5)),
        ..Default::default()
    };
    let parsed = NewTask::parse(input, "alice", now()).expect("valid");
    let t = create(parsed, TaskId::generate(now()), MaxAttempts::DEFAULT, now());
    assert_eq!(t.task.status, Scheduled);
    assert_eq!(t.effects, vec![], "scheduled tasks are announced when promoted");
    assert_eq!(t.event.map(|e| (e.seq, e.previous_status)), Some((1, None)));
}

#[test]
fn queue_default_max_attempts_applies_only_without_an_explicit_value() {
    let input = CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
    let parsed = NewTask::parse(input, "a", now()).expect("valid");
    let seven = MaxAttempts::try_from(7).expect("in range");
    assert_eq!(create(parsed, TaskId::generate(now()), seven, now()).task.max_attempts, 7);
    assert_eq!(new_task(3).max_attempts, 3);
}

#[test]
fn worker_commands_need_the_current_token_the_same_worker_and_a_live_lease() {
    let later = now() + Duration::seconds(10);
    let running = task_in(Running);
    let complete = |worker: &str, token: &str| Command::Complete {
        worker_id: worker.into(),
        lease_token: token.into(),
        result: None,
    };
    assert_eq!(transition(&running, complete(WORKER, "old"), now()).err(), Some(DomainError::LeaseLost));
    assert_eq!(transition(&running, complete("other", "tok"), now()).err(), Some(DomainError::LeaseLost));
    let after_expiry = now() + Duration::seconds(31);
    assert_eq!(
        transition(&running, complete(WORKER, "tok"), after_expiry).err(),
        Some(DomainError::LeaseLost),
        "a lapsed lease is lost even before the reaper reclaims it"
    );
    let hb = Command::Heartbeat { worker_id: WORKER.into(), lease_token: "tok".into(), lease_expires_at: later };
    let beat = transition(&running, hb, now()).expect("heartbeat");
    assert_eq!(beat.event, None, "heartbeats leave no history");
    assert_eq!(beat.task.lease_expires_at, Some(later));
    assert_eq!(beat.task.version, running.version + 1);
}

#[test]
fn accepting_again_is_idempotent_for_the_holder_only() {
    let running = task_in(Running);
    let accept = |worker: &str, token: &str| Command::Accept {
        worker_id: worker.into(),
        lease_token: token.into(),
        lease_expires_at: now() + Duration::seconds(60),
    };
    let again = transition(&running, accept(WORKER, "tok"), now()).expect("the holder's retry succeeds");
    assert_eq!(again.event, None, "no history for a repeat");
    assert_eq!(again.task.attempts, running.attempts, "no second attempt");
    assert_eq!(again.task.lease_expires_at, running.lease_expires_at, "the lease is not extended by a repeat");
    assert_eq!(transition(&running, accept("other", "tok"), now()).err(), Some(DomainError::LeaseLost));
    assert_eq!(transition(&running, accept(WORKER, "old"), now()).err(), Some(DomainError::LeaseLost));
}

#[test]
fn cancel_wins_over_the_worker() {
    let cancelled = transition(&task_in(Running), Command::Cancel { reason: None }, now()).expect("cancel");
    assert_eq!(cancelled.task.lease_token, None);
    let late = Command::Complete { worker_id: WORKER.into(), lease_token: "tok".into(), result: None };
    assert_eq!(transition(&cancelled.task, late, now()).err(), Some(DomainError::LeaseLost));
}

#[test]
fn failures_back_off_until_attempts_are_exhausted() {
    let retry_at = now() + Duration::seconds(5);
    let fail = |retryable| Command::Fail {
        worker_id: WORKER.into(),
        lease_token: "tok".into(),
        error: "boom".into(),
        retryable,
        retry_at,
    };
    let first = transition(&task_in(Running), fail(true), now()).expect("fail");
    assert_eq!((first.task.status, first.task.run_at), (Scheduled, retry_at));
    assert_eq!(first.task.worker_id, None);
    assert_eq!(first.task.last_error.as_deref(), Some("boom"));

    let mut last = task_in(Running);
    last.attempts = last.max_attempts;
    let dead = transition(&last, fail(true), now()).expect("fail");
    assert_eq!(dead.task.status, Dead);
    assert_eq!(dead.effects, vec![Effect::DeadLetter]);
    assert_eq!(dead.event.and_then(|e| e.message).as_deref(), Some("attempts exhausted: boom"));

    let fatal = transition(&task_in(Running), fail(false), now()).expect("fail");
    assert_eq!(fatal.task.status, Dead, "non-retryable failures are dead at once");
}

#[test]
fn a_deadline_before_the_retry_kills_the_task() {
    let mut task = task_in(Running);
    task.deadline = Some(now() + Duration::seconds(3));
    let retry = Command::ExpireLease { retry_at: now() + Duration::seconds(5) };
    let lapsed = now() + Duration::seconds(31);
    task.lease_expires_at = Some(now());
    let t = transition(&task, retry, lapsed).expect("expire");
    assert_eq!(t.task.status, Dead);

    let mut scheduled = task_in(Scheduled);
    scheduled.deadline = Some(now());
    let promoted = transition(&scheduled, Command::Promote, now()).expect("promote");
    assert_eq!(promoted.task.status, Dead);
}

#[test]
fn expiry_commands_only_apply_once_the_lease_has_lapsed() {
    let assigned = task_in(Assigned);
    assert!(transition(&assigned, Command::ExpireOffer, now()).is_err(), "offer still live");
    let lapsed = now() + Duration::seconds(30);
    let back = transition(&assigned, Command::ExpireOffer, lapsed).expect("expire offer");
    assert_eq!((back.task.status, back.task.attempts), (Queued, 0), "an unaccepted offer is no attempt");
    assert_eq!(back.effects, vec![Effect::Dispatch]);
}

#[test]
fn a_started_offer_is_a_run_under_a_fresh_lease() {
    let queued = task_in(Queued);
    let until = now() + Duration::seconds(30);
    let token = LeaseToken::generate();
    let start = Command::Start { worker_id: WORKER.into(), lease_token: token.clone(), lease_expires_at: until };
    let t = transition(&queued, start, now()).expect("start");
    assert_eq!((t.task.status, t.task.attempts), (Running, 1), "starting counts an attempt");
    assert_eq!((t.task.worker_id.as_deref(), t.task.lease_token.as_ref()), (Some(WORKER), Some(&token)));
    assert_eq!(t.task.lease_expires_at, Some(until));
    let event = t.event.expect("an event");
    assert_eq!((event.previous_status, event.status, event.attempt), (Some(Queued), Running, 1));
    assert!(t.effects.is_empty());
    // The holder's acceptTask, sent anyway, changes nothing; its report completes the task.
    let accept =
        Command::Accept { worker_id: WORKER.into(), lease_token: token.as_str().into(), lease_expires_at: until };
    assert!(transition(&t.task, accept, now()).expect("accept").event.is_none());
    let complete = Command::Complete { worker_id: WORKER.into(), lease_token: token.as_str().into(), result: None };
    assert_eq!(transition(&t.task, complete, now()).expect("complete").task.status, Succeeded);
}

#[test]
fn a_scheduled_task_is_promoted_only_when_due() {
    let mut task = task_in(Scheduled);
    task.run_at = now() + Duration::seconds(1);
    assert!(transition(&task, Command::Promote, now()).is_err());
    assert!(transition(&task, Command::Promote, now() + Duration::seconds(1)).is_ok());
}

#[test]
fn requeue_gives_a_dead_task_a_fresh_attempt_budget() {
    let mut dead = task_in(Dead);
    dead.attempts = 3;
    let t = transition(&dead, Command::Requeue, now()).expect("requeue");
    assert_eq!((t.task.status, t.task.attempts), (Queued, 0));
}

/// One step of a random history.
fn arb_command() -> impl Strategy<Value = (u8, bool, bool, i64)> {
    // (which command, use the right token?, retryable?, seconds to advance the clock)
    (0u8..15, any::<bool>(), any::<bool>(), 0i64..60)
}

proptest! {
    /// Whatever happens, the machine keeps its invariants: attempts never exceed the
    /// limit, every event has the next seq, the version grows by one per change, a lease
    /// token exists exactly while the task is offered or running, and a waiting task
    /// belongs to no worker (finished ones remember who ran them).
    #[test]
    fn random_histories_keep_the_invariants(steps in prop::collection::vec(arb_command(), 1..60), max in 1i64..5) {
        let mut task = new_task(max);
        let mut clock = now();
        for (which, right_token, retryable, advance) in steps {
            clock += Duration::seconds(advance);
            let token = match (&task.lease_token, right_token) {
                (Some(t), true) => t.as_str().to_owned(),
                _ => "stale".to_owned(),
            };
            let later = clock + Duration::seconds(30);
            let command = match which {
                0 => Command::Promote,
                1 => Command::Offer { worker_id: WORKER.into(), lease_token: LeaseToken::generate(), expires_at: later },
                2 => Command::Accept { worker_id: WORKER.into(), lease_token: token, lease_expires_at: later },
                3 => Command::Heartbeat { worker_id: WORKER.into(), lease_token: token, lease_expires_at: later },
                4 => Command::Complete { worker_id: WORKER.into(), lease_token: token, result: None },
                5 => Command::Fail { worker_id: WORKER.into(), lease_token: token, error: "e".into(), retryable, retry_at: clock + Duration::seconds(2) },
                6 => Command::Release { worker_id: WORKER.into(), lease_token: token },
                7 => Command::ExpireOffer,
                8 => Command::ExpireLease { retry_at: clock + Duration::seconds(2) },
                9 => Command::Cancel { reason: None },
                10 => Command::Retry,
                11 => Command::Requeue,
                12 => Command::Reclaim { retry_at: clock + Duration::seconds(2) },
                13 => Command::Start { worker_id: WORKER.into(), lease_token: LeaseToken::generate(), lease_expires_at: later },
                _ => Command::ExpireDeadline,
            };
            let Ok(t) = transition(&task, command, clock) else { continue };
            prop_assert_eq!(t.task.version, task.version + 1);
            match &t.event {
                Some(e) => {
                    prop_assert_eq!(e.seq, task.last_seq + 1);
                    prop_assert_eq!(e.previous_status, Some(task.status));
                    prop_assert_eq!(e.status, t.task.status);
                }
                None => prop_assert_eq!(t.task.last_seq, task.last_seq),
            }
            prop_assert!(t.task.attempts <= t.task.max_attempts);
            prop_assert_eq!(t.task.status.is_leased(), t.task.lease_token.is_some());
            if t.task.status.is_leased() {
                prop_assert!(t.task.worker_id.is_some());
            }
            if matches!(t.task.status, Queued | Scheduled) {
                prop_assert!(t.task.worker_id.is_none(), "a waiting task belongs to no worker");
            }
            prop_assert_eq!(t.effects.contains(&Effect::Dispatch), t.task.status == Queued && task.status != Queued);
            prop_assert_eq!(t.effects.contains(&Effect::DeadLetter), t.task.status == Dead);
            task = t.task;
        }
    }
}
