//! Commit coalescing for single creates and for workers' task transitions.
//!
//! Concurrent `createTask` calls and workers' lease transitions (`acceptTask`,
//! `completeTask`, `failTask`, `releaseTask`) queue here, each kind in a queue of its own.
//! A committer takes everything waiting in both, transitions first, and commits it,
//! answering each caller only after that commit.
//! Nothing is delayed on purpose: while one batch commits, the next callers queue up and
//! go together in the next batch, so batches grow with load and a lone caller pays no
//! extra latency.
//!
//! Creates are independent (`CreateMode::PerInput`): an idempotency conflict answers only
//! its own caller. Transitions are applied the way `Store::transition_many` says: the
//! batch reads its tasks and queue settings once (or not at all, for tasks this process
//! wrote last), applies each decision conditionally on the task's version, and commits
//! once. A decision that fails answers its own caller; one that lost a race to another
//! writer is retried alone. Creates and transitions taken together share one transaction
//! (`Store::create_and_transition`: one `BEGIN`, one insert of events, one of outbox rows,
//! one `COMMIT`) when the transitions can be written all at once, and commit apart
//! otherwise. That matters most with several processes: each sees only its share of the
//! load, so each kind of write alone rarely finds company.
//!
//! On SQLite this is what lets writes keep up at all (every write transaction waits for
//! the previous one); on MySQL it turns ~8 round trips and a commit per transition into a
//! few statements per transition and one commit per batch. SQLite has one committer (it
//! has one writer), MySQL two ([`COMMITTERS_MYSQL`](super::COMMITTERS_MYSQL)); other
//! processes' committers write beside them. A batch written all at once locks its task
//! rows in id order, then the worker rows whose slots it frees in worker-id order, as an
//! offer round made all at once does: such writers wait for each other's rows but do not
//! deadlock. The paths that go one transition or offer at a time (after a race), and the
//! reaper (it claims tasks in the order they fell due), can still deadlock with a batch;
//! InnoDB rolls one side back, and a batch that lost is run again.
//!
//! Each queue is bounded ([`QUEUE`]): when full, callers wait (and their request timeout
//! bounds the wait). The committers end when the last `Store` handle is dropped.

use taskwire_domain::{NewTask, QueueSettings, TaskId, machine::Transition, task::Task};
use tokio::sync::{mpsc, oneshot};

use super::{CreateMode, CreateOutcome, Store, tasks::Together};
use crate::error::{StoreError, StoreResult};

/// Writes of one kind waiting to be committed, at most.
pub(super) const QUEUE: usize = 10_000;
/// Writes committed together, at most.
const MAX_BATCH: usize = 250;

pub(super) struct Pending {
    task: NewTask,
    traceparent: Option<String>,
    reply: oneshot::Sender<StoreResult<CreateOutcome>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

/// The committers' two queues, creates and transitions, each bounded at [`QUEUE`].
#[derive(Debug, Clone)]
pub(super) struct Queues {
    pub(super) creates: mpsc::Sender<Pending>,
    pub(super) transitions: mpsc::Sender<PendingTransition>,
}

/// What the committers take from: workers' transitions first (a lease or an offer waits
/// on them, and a burst of creates must not hold them up), then creates.
struct Waiting {
    creates: mpsc::Receiver<Pending>,
    transitions: mpsc::Receiver<PendingTransition>,
}

/// Starts `committers` coalescing tasks for `store` (a handle without queues of its own,
/// so the tasks do not keep their own queues open); they take turns at both queues.
/// SQLite has one writer, so one committer; MySQL commits several batches in parallel
/// (its group commit shares fsyncs). Each task ends when the queues close: when the last
/// outside `Store` handle is dropped.
pub(super) fn start(store: Store, committers: usize) -> Queues {
    let (creates, creates_rx) = mpsc::channel(QUEUE);
    let (transitions, transitions_rx) = mpsc::channel(QUEUE);
    let waiting =
        std::sync::Arc::new(tokio::sync::Mutex::new(Waiting { creates: creates_rx, transitions: transitions_rx }));
    for _ in 0..committers.max(1) {
        let (store, waiting) = (store.clone(), waiting.clone());
        tokio::spawn(async move {
            while let Some((creates, transitions)) = next_batch(&waiting).await {
                commit_writes(store.clone(), creates, transitions).await;
            }
        });
    }
    Queues { creates, transitions }
}

/// Takes whatever is waiting (at least one write, at most [`MAX_BATCH`], transitions
/// first); `None` once both queues are closed. Committers take turns: one waits for the
/// next write while the others commit what they took.
async fn next_batch(waiting: &tokio::sync::Mutex<Waiting>) -> Option<(Vec<Pending>, Vec<PendingTransition>)> {
    let mut waiting = waiting.lock().await;
    let Waiting { creates: creates_rx, transitions: transitions_rx } = &mut *waiting;
    let (mut creates, mut transitions) = (Vec::new(), Vec::new());
    tokio::select! {
        biased;
        Some(first) = transitions_rx.recv() => transitions.push(first),
        Some(first) = creates_rx.recv() => creates.push(first),
        else => return None,
    }
    take_waiting(transitions_rx, &mut transitions, MAX_BATCH - creates.len());
    take_waiting(creates_rx, &mut creates, MAX_BATCH - transitions.len());
    Some((creates, transitions))
}

/// Moves what waits in `queue` into `taken`, until `taken` holds `up_to`.
fn take_waiting<T>(queue: &mut mpsc::Receiver<T>, taken: &mut Vec<T>, up_to: usize) {
    while taken.len() < up_to {
        match queue.try_recv() {
            Ok(next) => taken.push(next),
            Err(_) => break,
        }
    }
}

/// Commits what one committer took: creates and transitions that waited together go in
/// one transaction when they can ([`Store::create_and_transition`]), else apart.
async fn commit_writes(store: Store, creates: Vec<Pending>, transitions: Vec<PendingTransition>) {
    if !creates.is_empty() && !transitions.is_empty() {
        let inputs: Vec<NewTask> = creates.iter().map(|p| p.task.clone()).collect();
        let traces: Vec<Option<&str>> = creates.iter().map(|p| p.traceparent.as_deref()).collect();
        match store.create_and_transition(&inputs, &traces, &transitions).await {
            Together::Committed(outcomes, steps) => {
                for (pending, outcome) in creates.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(Ok(outcome));
                }
                answer_transitions(&store, transitions, steps).await;
                return;
            }
            Together::Failed(e) => {
                for pending in creates {
                    let _ = pending.reply.send(Err(e.clone()));
                }
                for pending in transitions {
                    let _ = pending.reply.send(Err(e.clone()));
                }
                return;
            }
            Together::Apart => {}
        }
    }
    // Transitions first, as they were taken.
    if !transitions.is_empty() {
        commit_transitions(&store, transitions).await;
    }
    if !creates.is_empty() {
        commit_creates(store, creates).await;
    }
}

async fn commit_creates(store: Store, batch: Vec<Pending>) {
    let inputs: Vec<NewTask> = batch.iter().map(|p| p.task.clone()).collect();
    let traces: Vec<Option<&str>> = batch.iter().map(|p| p.traceparent.as_deref()).collect();
    match store.create_tasks_traced(inputs, CreateMode::PerInput, &traces).await {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
    }
}

impl Store {
    /// Creates one task, committed together with concurrent creates.
    pub async fn create_task(&self, task: NewTask, traceparent: Option<&str>) -> StoreResult<CreateOutcome> {
        let Some(queues) = &self.writes else {
            let mut outcomes = self.create_tasks(vec![task], CreateMode::PerInput, traceparent).await?;
            return outcomes.pop().ok_or(StoreError::Internal);
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending { task, traceparent: traceparent.map(str::to_owned), reply };
        queues.creates.send(pending).await.map_err(|_| StoreError::Unavailable)?;
        answer.await.map_err(|_| StoreError::Internal)?
    }
}

// ---------------------------------------------------------------------------------------
// Task transitions

/// A transition decision: the task's next state from its current state and its queue's
/// settings.
pub(super) type Decide = Box<dyn Fn(&Task, &QueueSettings) -> StoreResult<Transition> + Send + Sync>;

/// One caller's transition, waiting to be committed with others.
pub(super) struct PendingTransition {
    pub(super) id: TaskId,
    pub(super) traceparent: Option<String>,
    pub(super) decide: Decide,
    reply: oneshot::Sender<StoreResult<Task>>,
}

impl std::fmt::Debug for PendingTransition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingTransition").field("id", &self.id).finish_non_exhaustive()
    }
}

/// What became of one transition of a batch.
#[derive(Debug)]
pub(super) enum Step {
    /// Committed: the task's new state.
    Done(Box<Task>),
    /// Refused (the decision's error, `NOT_FOUND`, …); nothing changed.
    Failed(StoreError),
    /// The task changed under the batch (another writer): try again alone.
    Raced,
}

async fn commit_transitions(store: &Store, batch: Vec<PendingTransition>) {
    let steps = match store.transition_many(&batch).await {
        Ok(steps) => steps,
        Err(e) => {
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    answer_transitions(store, batch, steps).await;
}

/// Answers each transition of a committed batch; one that raced another writer is run
/// again alone.
async fn answer_transitions(store: &Store, batch: Vec<PendingTransition>, steps: Vec<Step>) {
    for (pending, step) in batch.into_iter().zip(steps) {
        let answer = match step {
            Step::Done(task) => Ok(*task),
            Step::Failed(e) => Err(e),
            Step::Raced => {
                let decide = pending.decide;
                store
                    .transition_inner(pending.id, pending.traceparent.as_deref(), true, |task, settings| {
                        decide(task, settings.ok_or(StoreError::Internal)?)
                    })
                    .await
            }
        };
        let _ = pending.reply.send(answer);
    }
}

impl Store {
    /// Applies a state change that needs the task's queue settings (lease length,
    /// backoff) under the optimistic lock: `decide` sees the current task and returns the
    /// transition or an error; on a lost race it is called again with the fresh state.
    /// Committed together with concurrent transitions (see the module docs).
    pub async fn transition_in_queue<F>(&self, id: TaskId, traceparent: Option<&str>, decide: F) -> StoreResult<Task>
    where
        F: Fn(&Task, &QueueSettings) -> StoreResult<Transition> + Send + Sync + 'static,
    {
        let Some(queues) = &self.writes else {
            return self
                .transition_inner(id, traceparent, true, |task, settings| {
                    decide(task, settings.ok_or(StoreError::Internal)?)
                })
                .await;
        };
        let (reply, answer) = oneshot::channel();
        let pending =
            PendingTransition { id, traceparent: traceparent.map(str::to_owned), decide: Box::new(decide), reply };
        queues.transitions.send(pending).await.map_err(|_| StoreError::Unavailable)?;
        answer.await.map_err(|_| StoreError::Internal)?
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::Utc;
    use taskwire_domain::{
        CreateTaskInput, TaskStatus, WorkerRegistration,
        machine::{self, Command},
    };

    use super::*;
    use crate::{
        OfferOutcome, PlannedOffer, Writer,
        testing::{another_process, test_store},
    };

    /// Two tasks offered to worker `w1` (capacity 2); their lease tokens.
    async fn offered(store: &Store) -> Vec<(TaskId, String)> {
        offered_to(store, "w1", 2).await
    }

    /// `n` tasks offered to worker `worker` (registered with capacity `n`); their lease
    /// tokens.
    async fn offered_to(store: &Store, worker: &str, n: u32) -> Vec<(TaskId, String)> {
        let registration = WorkerRegistration::parse("w", &["q".to_owned()], n.into()).expect("registration");
        store.register_worker(worker, &registration).await.expect("registered");
        let inputs = (0..n)
            .map(|_| {
                let input = CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
                NewTask::parse(input, "alice", Utc::now()).expect("valid input")
            })
            .collect();
        let created = store.create_tasks(inputs, CreateMode::AllOrNothing, None).await.expect("created");
        let offers: Vec<PlannedOffer> = created
            .iter()
            .map(|c| match c {
                CreateOutcome::Created(task) => {
                    PlannedOffer { id: task.id, worker_id: worker.into(), traceparent: None, lease: None }
                }
                other => panic!("created, not {other:?}"),
            })
            .collect();
        let outcomes =
            store.offer_many(&offers, &[], Utc::now() + chrono::Duration::seconds(30)).await.expect("offers").outcomes;
        outcomes
            .into_iter()
            .map(|o| match o {
                OfferOutcome::Offered(task) => {
                    (task.id, task.lease_token.as_ref().expect("leased").as_str().to_owned())
                }
                other => panic!("offered, not {other:?}"),
            })
            .collect()
    }

    fn accept(token: &str) -> impl Fn(&Task, &QueueSettings) -> StoreResult<Transition> + Send + Sync + 'static {
        accept_as("w1", token)
    }

    fn accept_as(
        worker: &str,
        token: &str,
    ) -> impl Fn(&Task, &QueueSettings) -> StoreResult<Transition> + Send + Sync + 'static {
        let (worker, token) = (worker.to_owned(), token.to_owned());
        move |task, queue| {
            let now = Utc::now();
            let expires = now + queue.lease();
            let command =
                Command::Accept { worker_id: worker.clone(), lease_token: token.clone(), lease_expires_at: expires };
            Ok(machine::transition(task, command, now)?)
        }
    }

    fn complete(token: &str) -> impl Fn(&Task, &QueueSettings) -> StoreResult<Transition> + Send + Sync + 'static {
        complete_as("w1", token)
    }

    fn complete_as(
        worker: &str,
        token: &str,
    ) -> impl Fn(&Task, &QueueSettings) -> StoreResult<Transition> + Send + Sync + 'static {
        let (worker, token) = (worker.to_owned(), token.to_owned());
        move |task, _| {
            let command = Command::Complete { worker_id: worker.clone(), lease_token: token.clone(), result: None };
            Ok(machine::transition(task, command, Utc::now())?)
        }
    }

    fn pending(id: TaskId, decide: Decide) -> PendingTransition {
        let (reply, _answer) = oneshot::channel();
        PendingTransition { id, traceparent: None, decide, reply }
    }

    /// Four running tasks, two each on workers `w1` and `w2`; `(task, worker, token)`.
    async fn running_on_two_workers(store: &Store) -> Vec<(TaskId, &'static str, String)> {
        let mut running = Vec::new();
        for worker in ["w1", "w2"] {
            for (id, token) in offered_to(store, worker, 2).await {
                store.transition_in_queue(id, None, accept_as(worker, &token)).await.expect("accepted");
                running.push((id, worker, token));
            }
        }
        running
    }

    /// A batch completing every task of `running`, each by its own worker.
    fn completing(running: &[(TaskId, &'static str, String)]) -> Vec<PendingTransition> {
        running.iter().map(|(id, worker, token)| pending(*id, Box::new(complete_as(worker, token)))).collect()
    }

    /// A decision that applies `command` to the task as if the time were `at`.
    fn at_time(command: Command, at: chrono::DateTime<Utc>) -> Decide {
        Box::new(move |task, _| Ok(machine::transition(task, command.clone(), at)?))
    }

    #[tokio::test]
    async fn a_batch_on_tasks_this_process_wrote_last_does_not_read_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let elsewhere = another_process(dir.path()).await;
        let running = running_on_two_workers(&store).await;
        let (here, there) = running.split_at(2);

        let before = store.stats().statements();
        let steps = store.transition_many(&completing(here)).await.expect("committed here");
        let remembered = store.stats().statements() - before;
        let before = elsewhere.stats().statements();
        let steps_there = elsewhere.transition_many(&completing(there)).await.expect("committed elsewhere");
        let read = elsewhere.stats().statements() - before;

        for step in steps.iter().chain(&steps_there) {
            assert!(matches!(step, Step::Done(t) if t.status == TaskStatus::Succeeded), "{step:?}");
        }
        // The same batch, on tasks the handle committed last and on tasks it never saw:
        // the second reads the tasks (and its queue settings) first.
        assert!(remembered < read, "{remembered} statements from memory, {read} with the read");
    }

    #[tokio::test]
    async fn a_lease_a_heartbeat_extended_elsewhere_is_not_taken_from_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let elsewhere = another_process(dir.path()).await;
        let tasks = offered_to(&store, "w1", 2).await;
        let mut remembered_end = Vec::new();
        for (id, token) in &tasks {
            let accepted = store.transition_in_queue(*id, None, accept(token)).await.expect("accepted");
            remembered_end.push(accepted.lease_expires_at.expect("leased"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let ids: Vec<TaskId> = tasks.iter().map(|(id, _)| *id).collect();
        let (_, renewed) = elsewhere.renew_leases("w1", &ids).await.expect("heartbeat through another process");
        let extended: Vec<_> = ids.iter().map(|id| renewed[id]).collect();
        assert!(extended[0] > remembered_end[0] + chrono::Duration::milliseconds(40), "{extended:?}");

        // A late `completeTask` between the remembered lease end and the extended one, and
        // a repeated `acceptTask` (it changes nothing but the row version).
        let ((a, token_a), (b, token_b)) = (&tasks[0], &tasks[1]);
        let late = remembered_end[0] + (extended[0] - remembered_end[0]) / 2;
        let complete = Command::Complete { worker_id: "w1".into(), lease_token: token_a.clone(), result: None };
        let batch = vec![pending(*a, at_time(complete, late)), pending(*b, Box::new(accept(token_b)))];
        let steps = store.transition_many(&batch).await.expect("committed");

        assert!(matches!(&steps[0], Step::Done(t) if t.status == TaskStatus::Succeeded), "not LEASE_LOST: {steps:?}");
        assert!(matches!(&steps[1], Step::Done(t) if t.status == TaskStatus::Running), "{steps:?}");
        let stored = elsewhere.task(*b).await.expect("read").expect("exists");
        assert_eq!(
            stored.lease_expires_at.map(|at| at.timestamp_millis()),
            Some(extended[1].timestamp_millis()),
            "the repeated accept kept the extended lease, not the remembered one"
        );
    }

    #[tokio::test]
    async fn a_task_changed_elsewhere_is_not_offered_from_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let elsewhere = another_process(dir.path()).await;
        let registration = WorkerRegistration::parse("w", &["q".to_owned()], 1).expect("registration");
        store.register_worker("w1", &registration).await.expect("registered");
        let input = CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
        let new = NewTask::parse(input, "alice", Utc::now()).expect("valid input");
        let CreateOutcome::Created(task) = store.create_task(new, None).await.expect("created") else {
            panic!("created")
        };
        assert!(store.recent.get(task.id).is_some(), "the create is remembered");
        elsewhere
            .transition(task.id, None, |t| Ok(machine::transition(t, Command::Cancel { reason: None }, Utc::now())?))
            .await
            .expect("cancelled through another process");

        let offer = PlannedOffer { id: task.id, worker_id: "w1".into(), traceparent: None, lease: None };
        let made = store.offer_many(&[offer], &[], Utc::now() + chrono::Duration::seconds(30)).await.expect("ran");

        assert_eq!(made.outcomes, [OfferOutcome::NotQueued]);
        let stored = store.task(task.id).await.expect("read").expect("exists");
        assert_eq!((stored.status, stored.last_seq), (TaskStatus::Cancelled, 2), "nothing written over the cancel");
        assert!(store.recent.get(task.id).is_none(), "the stale state is forgotten");
        let worker = store.workers_by_ids(&["w1".to_owned()]).await.expect("worker");
        assert_eq!(worker[0].active, 0, "no slot taken");

        // Offered through the other process and handed back there: `QUEUED` again, at a
        // version this process never saw. Offered here from a fresh read, not dropped.
        let input = CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
        let new = NewTask::parse(input, "alice", Utc::now()).expect("valid input");
        let CreateOutcome::Created(task) = store.create_task(new, None).await.expect("created") else {
            panic!("created")
        };
        let there = PlannedOffer { id: task.id, worker_id: "w1".into(), traceparent: None, lease: None };
        let expires = Utc::now() + chrono::Duration::seconds(30);
        let made = elsewhere.offer_many(std::slice::from_ref(&there), &[], expires).await.expect("offered there");
        let OfferOutcome::Offered(offered) = &made.outcomes[0] else { panic!("{made:?}") };
        let token = offered.lease_token.clone().expect("leased");
        elsewhere
            .transition(task.id, None, move |t| {
                let release = Command::Release { worker_id: "w1".into(), lease_token: token.as_str().to_owned() };
                Ok(machine::transition(t, release, Utc::now())?)
            })
            .await
            .expect("handed back there");

        let made = store.offer_many(&[there], &[], expires).await.expect("ran");

        assert!(matches!(&made.outcomes[0], OfferOutcome::Offered(t) if t.version == 4), "{made:?}");
    }

    #[tokio::test]
    async fn a_refusal_on_a_remembered_state_is_not_final() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let running = running_on_two_workers(&store).await;
        let (id, _, _) = &running[0];
        let ids = [*id];
        let current: HashMap<TaskId, Task> =
            store.tasks_by_ids(&ids).await.expect("read").into_iter().map(|t| (t.id, t)).collect();
        let settings = store.queue_settings_many(["q"]).await.expect("settings");
        let batch = vec![pending(*id, Box::new(complete_as("w1", "not-the-token")))];

        let writing = store.write_lock(Writer::Transition).await;
        let remembered = std::collections::HashSet::from(ids);
        let at_once = store.transition_all_at_once(&writing, &batch, &current, &remembered, &settings).await;
        assert!(at_once.expect("no error").is_none(), "left to the fresh read of the slow path");
        let read = store.transition_all_at_once(&writing, &batch, &current, &Default::default(), &settings).await;
        let steps = read.expect("no error").expect("answered at once");
        assert!(matches!(&steps[0], Step::Failed(e) if e.code().as_str() == "LEASE_LOST"), "{steps:?}");
    }

    #[tokio::test]
    async fn a_batch_of_distinct_tasks_is_one_task_update_and_one_slot_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let running = running_on_two_workers(&store).await;
        let batch = completing(&running);

        let before = store.stats().statements();
        let steps = store.transition_many(&batch).await.expect("committed");
        let statements = store.stats().statements() - before;

        assert!(steps.iter().all(|s| matches!(s, Step::Done(t) if t.status == TaskStatus::Succeeded)), "{steps:?}");
        // No read of the tasks (their accepts are remembered, see `recent`), at most one
        // of their queue's settings, then BEGIN, the tasks, one call freeing the workers'
        // slots and inserting events and outbox rows, COMMIT; one statement per task and
        // per worker would make 12, and one call per statement 8.
        assert!(statements <= 5, "{statements} statements for 4 transitions");
        let workers = store.workers_by_ids(&["w1".to_owned(), "w2".to_owned()]).await.expect("workers");
        assert!(workers.iter().all(|w| w.active == 0), "each worker freed both its slots: {workers:?}");
        for (id, _, _) in &running {
            let stored = store.task(*id).await.expect("read").expect("exists");
            assert_eq!((stored.status, stored.last_seq), (TaskStatus::Succeeded, 4));
        }
    }

    #[tokio::test]
    async fn a_task_changed_since_it_was_read_sends_the_batch_transition_by_transition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let running = running_on_two_workers(&store).await;
        let batch = completing(&running);
        let ids: Vec<TaskId> = running.iter().map(|(id, _, _)| *id).collect();
        let current: HashMap<TaskId, Task> =
            store.tasks_by_ids(&ids).await.expect("read").into_iter().map(|t| (t.id, t)).collect();
        let settings = store.queue_settings_many(["q"]).await.expect("settings");
        // Another writer moves the first task on after the batch read it.
        let (changed, worker, token) = &running[0];
        store.transition_in_queue(*changed, None, complete_as(worker, token)).await.expect("completed elsewhere");

        let writing = store.write_lock(Writer::Transition).await;
        let all_at_once = store
            .transition_all_at_once(&writing, &batch, &current, &Default::default(), &settings)
            .await
            .expect("no error");
        assert!(all_at_once.is_none(), "one stale row makes the statement refuse the whole batch");
        drop(writing);
        for id in &ids[1..] {
            let stored = store.task(*id).await.expect("read").expect("exists");
            assert_eq!(stored.status, TaskStatus::Running, "nothing of the batch was written");
        }

        // Run again, on a fresh read: the others commit, and the changed one alone is
        // refused (it is no longer running).
        let steps = store.transition_many(&batch).await.expect("committed");
        assert!(matches!(&steps[0], Step::Failed(_)), "{steps:?}");
        assert!(
            steps[1..].iter().all(|s| matches!(s, Step::Done(t) if t.status == TaskStatus::Succeeded)),
            "{steps:?}"
        );
        let workers = store.workers_by_ids(&["w1".to_owned(), "w2".to_owned()]).await.expect("workers");
        assert!(workers.iter().all(|w| w.active == 0), "every slot freed once: {workers:?}");
    }

    #[tokio::test]
    async fn concurrent_lease_transitions_commit_together_and_a_refusal_answers_only_its_caller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        assert!(store.writes.is_some(), "SQLite coalesces transitions");
        let tasks = offered(&store).await;
        let ((a, token_a), (b, token_b)) = (tasks[0].clone(), tasks[1].clone());

        let (first, second, stale) = tokio::join!(
            store.transition_in_queue(a, None, accept(&token_a)),
            store.transition_in_queue(b, None, accept(&token_b)),
            store.transition_in_queue(b, None, accept("not-the-token")),
        );
        assert_eq!(first.expect("accepted").status, TaskStatus::Running);
        assert_eq!(second.expect("accepted").status, TaskStatus::Running);
        assert_eq!(stale.expect_err("refused").code().as_str(), "LEASE_LOST");

        let (first, second) = tokio::join!(
            store.transition_in_queue(a, None, complete(&token_a)),
            store.transition_in_queue(b, None, complete(&token_b)),
        );
        assert_eq!(first.expect("completed").status, TaskStatus::Succeeded);
        assert_eq!(second.expect("completed").status, TaskStatus::Succeeded);
        for (id, _) in &tasks {
            let events = store.events_after(*id, 0, 10).await.expect("events");
            let statuses: Vec<TaskStatus> = events.iter().map(|e| e.status).collect();
            assert_eq!(
                statuses,
                [TaskStatus::Queued, TaskStatus::Assigned, TaskStatus::Running, TaskStatus::Succeeded],
                "one event per committed transition, none for the refused one"
            );
        }
        let worker = store.workers_by_ids(&["w1".to_owned()]).await.expect("worker");
        assert_eq!(worker[0].active, 0, "both slots freed");
    }

    /// On MySQL a batch that loses a deadlock is rolled back by InnoDB and run again: its
    /// callers never see it. The deadlock is made on purpose, against the lock order every
    /// Taskwire writer keeps (tasks, then workers): another transaction, bigger so that
    /// InnoDB picks the batch as the victim, locks worker `w1`; the batch completes `a`
    /// (locking task `a`) and waits for `w1` to free a's slot; the other transaction then
    /// asks for task `a`.
    #[tokio::test]
    async fn on_mysql_a_batch_that_loses_a_deadlock_is_run_again() {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        let Some(store) = crate::testing::mysql_test_store("on_mysql_a_batch_that_loses_a_deadlock_is_run_again").await
        else {
            return;
        };
        let metrics = crate::metrics::TestMetrics::new();
        store.observe(metrics.store.clone());
        let tasks = offered(&store).await;
        let (a, token_a) = tasks[0].clone();
        store.transition_in_queue(a, None, accept(&token_a)).await.expect("a accepted");

        let other = sea_orm::Database::connect(store.schema().url()).await.expect("second connection");
        let blocker = other.begin().await.expect("begin");
        for i in 0..20 {
            let filler =
                format!("INSERT INTO queues (name, paused, created_at, updated_at) VALUES ('filler{i}', 0, 0, 0)");
            blocker.execute_unprepared(&filler).await.expect("filler row");
        }
        blocker
            .execute_unprepared("UPDATE workers SET updated_at = updated_at + 1 WHERE id = 'w1'")
            .await
            .expect("lock w1");

        let batch_store = store.clone();
        let batch = tokio::spawn(async move {
            let (reply, _answer) = oneshot::channel();
            let batch =
                vec![PendingTransition { id: a, traceparent: None, decide: Box::new(complete(&token_a)), reply }];
            batch_store.transition_many(&batch).await
        });
        // Until the batch waits for `w1` (it holds task `a` by then). No other test of this
        // binary uses MySQL, so the waiting transaction is the batch. InnoDB refreshes
        // what INNODB_TRX shows at most every 100 ms, and not while it is read more often.
        let waiting = "SELECT COUNT(*) AS n FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'";
        for polls in 0.. {
            let row = other.query_one_raw(sea_orm::Statement::from_string(other.get_database_backend(), waiting));
            let n: i64 = row.await.expect("innodb_trx").expect("a row").try_get("", "n").expect("count");
            if n > 0 {
                break;
            }
            assert!(polls < 100, "the batch never waited for worker w1's lock");
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
        let deadlocked = blocker.execute_unprepared(&format!("SELECT id FROM tasks WHERE id = '{a}' FOR UPDATE")).await;
        assert!(deadlocked.is_ok(), "InnoDB rolled back the smaller transaction, the batch: {deadlocked:?}");
        blocker.rollback().await.expect("rollback");

        let steps = batch.await.expect("joined").expect("the batch committed on its second run");
        assert!(matches!(&steps[0], Step::Done(t) if t.status == TaskStatus::Succeeded), "{steps:?}");
        let worker = store.workers_by_ids(&["w1".to_owned()]).await.expect("worker");
        assert_eq!(worker[0].active, 1, "a's slot freed once, b still holds one");
        let conflicts =
            |outcome: &str| metrics.store.db_lock_conflicts.with_label_values(&["transition", outcome]).get();
        assert_eq!((conflicts("retried"), conflicts("exhausted")), (1, 0), "the deadlock was counted and retried");
    }

    /// Two batches in flight at once (on MySQL, two transactions whose statements
    /// interleave: what two processes' committers do), completing tasks spread over
    /// shared workers.
    /// Every transition commits once, and every worker slot taken is freed once.
    async fn concurrent_batches_commit_every_transition_once(store: &Store) {
        let mut tasks = Vec::new();
        for worker in ["w1", "w2", "w3", "w4"] {
            tasks.extend(offered_to(store, worker, 16).await.into_iter().map(|(id, token)| (id, worker, token)));
        }
        let accepts =
            tasks.iter().map(|(id, worker, token)| store.transition_in_queue(*id, None, accept_as(worker, token)));
        for accepted in futures::future::join_all(accepts).await {
            assert_eq!(accepted.expect("accepted").status, TaskStatus::Running);
        }
        // Alternate tasks to each batch: both free slots of all four workers.
        let (first, second): (Vec<_>, Vec<_>) = tasks.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let batch = |half: Vec<(usize, &(TaskId, &'static str, String))>| -> Vec<PendingTransition> {
            half.into_iter()
                .map(|(_, (id, worker, token))| pending(*id, Box::new(complete_as(worker, token))))
                .collect()
        };
        let (first, second) = (batch(first), batch(second));

        let (a, b) = tokio::join!(store.transition_many(&first), store.transition_many(&second));

        for step in a.expect("first batch").into_iter().chain(b.expect("second batch")) {
            assert!(matches!(&step, Step::Done(t) if t.status == TaskStatus::Succeeded), "{step:?}");
        }
        for (id, _, _) in &tasks {
            let events = store.events_after(*id, 0, 10).await.expect("events");
            assert_eq!(events.len(), 4, "QUEUED, ASSIGNED, RUNNING, SUCCEEDED once each: {events:?}");
        }
        let ids: Vec<String> = ["w1", "w2", "w3", "w4"].map(String::from).to_vec();
        let workers = store.workers_by_ids(&ids).await.expect("workers");
        assert!(workers.iter().all(|w| w.active == 0), "every slot freed once: {workers:?}");
    }

    on_both_backends!(
        concurrent_batches_commit_every_transition_once,
        sqlite_concurrent_batches_commit_every_transition_once,
        mysql_concurrent_batches_commit_every_transition_once
    );

    /// A create waiting for the committer, with its answer.
    fn create_waiting() -> (Pending, oneshot::Receiver<StoreResult<CreateOutcome>>) {
        let input = CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
        let task = NewTask::parse(input, "alice", Utc::now()).expect("valid input");
        let (reply, answer) = oneshot::channel();
        (Pending { task, traceparent: None, reply }, answer)
    }

    /// A transition waiting for the committer, with its answer.
    fn transition_waiting(id: TaskId, decide: Decide) -> (PendingTransition, oneshot::Receiver<StoreResult<Task>>) {
        let (reply, answer) = oneshot::channel();
        (PendingTransition { id, traceparent: None, decide, reply }, answer)
    }

    /// Write transactions counted so far: `(create, transition, together)`.
    fn writes(metrics: &crate::metrics::TestMetrics) -> (u64, u64, u64) {
        let counted = |writer: &str| metrics.store.db_writes.with_label_values(&[writer]).get();
        (counted("create"), counted("transition"), counted("together"))
    }

    /// A burst of creates does not hold workers' transitions up: a committer takes the
    /// waiting transitions first, then creates up to the batch's bound.
    #[tokio::test]
    async fn a_committer_takes_waiting_transitions_before_creates() {
        let (creates, creates_rx) = mpsc::channel(QUEUE);
        let (transitions, transitions_rx) = mpsc::channel(QUEUE);
        let waiting = tokio::sync::Mutex::new(Waiting { creates: creates_rx, transitions: transitions_rx });
        for _ in 0..MAX_BATCH + 50 {
            creates.send(create_waiting().0).await.expect("queued");
        }
        let (transition, _answer) = transition_waiting(TaskId::generate(Utc::now()), Box::new(accept("t")));
        transitions.send(transition).await.expect("queued");

        let (first_creates, first_transitions) = next_batch(&waiting).await.expect("a batch");
        assert_eq!((first_creates.len(), first_transitions.len()), (MAX_BATCH - 1, 1));
        let (rest, none) = next_batch(&waiting).await.expect("a batch");
        assert_eq!((rest.len(), none.len()), (51, 0));
        drop((creates, transitions));
        assert!(next_batch(&waiting).await.is_none(), "both queues closed");
    }

    /// Creates and transitions that waited for a committer together commit in one
    /// transaction (counted once, as `together`), each caller answered as if alone.
    async fn creates_and_transitions_waiting_together_commit_in_one_transaction(store: &Store) {
        let metrics = crate::metrics::TestMetrics::new();
        store.observe(metrics.store.clone());
        let tasks = offered(store).await;
        let before = writes(&metrics);
        let (first, first_created) = create_waiting();
        let (second, second_created) = create_waiting();
        let (accept_a, a_accepted) = transition_waiting(tasks[0].0, Box::new(accept(&tasks[0].1)));
        let (accept_b, b_accepted) = transition_waiting(tasks[1].0, Box::new(accept(&tasks[1].1)));

        commit_writes(store.clone(), vec![first, second], vec![accept_a, accept_b]).await;

        for created in [first_created, second_created] {
            let outcome = created.await.expect("answered").expect("created");
            let CreateOutcome::Created(task) = outcome else { panic!("created, not {outcome:?}") };
            let stored = store.task(task.id).await.expect("read").expect("stored");
            assert_eq!((stored.status, stored.version), (TaskStatus::Queued, task.version));
        }
        for accepted in [a_accepted, b_accepted] {
            let task = accepted.await.expect("answered").expect("accepted");
            assert_eq!(task.status, TaskStatus::Running);
            let events = store.events_after(task.id, 0, 10).await.expect("events");
            assert_eq!(events.len(), 3, "QUEUED, ASSIGNED, RUNNING: {events:?}");
        }
        let after = writes(&metrics);
        let counted = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        assert_eq!(counted, (0, 0, 1), "one transaction for all four");
    }

    on_both_backends!(
        creates_and_transitions_waiting_together_commit_in_one_transaction,
        sqlite_creates_and_transitions_waiting_together_commit_in_one_transaction,
        mysql_creates_and_transitions_waiting_together_commit_in_one_transaction
    );

    /// When the transitions cannot go all at once (here one task twice), the creates and
    /// the transitions that waited together commit apart, and every caller is answered.
    async fn creates_and_transitions_that_cannot_go_together_commit_apart(store: &Store) {
        let metrics = crate::metrics::TestMetrics::new();
        store.observe(metrics.store.clone());
        let tasks = offered(store).await;
        let (a, token) = tasks[0].clone();
        let before = writes(&metrics);
        let (create, created) = create_waiting();
        let (accept_a, accepted) = transition_waiting(a, Box::new(accept(&token)));
        let (complete_a, completed) = transition_waiting(a, Box::new(complete(&token)));

        commit_writes(store.clone(), vec![create], vec![accept_a, complete_a]).await;

        let outcome = created.await.expect("answered").expect("created");
        assert!(matches!(outcome, CreateOutcome::Created(_)), "{outcome:?}");
        assert_eq!(accepted.await.expect("answered").expect("accepted").status, TaskStatus::Running);
        assert_eq!(completed.await.expect("answered").expect("completed").status, TaskStatus::Succeeded);
        let after = writes(&metrics);
        let counted = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        assert_eq!(counted, (1, 1, 0), "the creates and the transitions apart");
    }

    on_both_backends!(
        creates_and_transitions_that_cannot_go_together_commit_apart,
        sqlite_creates_and_transitions_that_cannot_go_together_commit_apart,
        mysql_creates_and_transitions_that_cannot_go_together_commit_apart
    );

    #[tokio::test]
    async fn a_batch_applies_a_task_twice_in_order_and_refuses_unknown_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = test_store(dir.path()).await;
        let tasks = offered(&store).await;
        let (a, token) = tasks[0].clone();
        let batch = vec![
            pending(a, Box::new(accept(&token))),
            pending(TaskId::generate(Utc::now()), Box::new(accept(&token))),
            pending(a, Box::new(complete(&token))),
        ];

        let steps = store.transition_many(&batch).await.expect("committed");

        assert!(matches!(&steps[0], Step::Done(t) if t.status == TaskStatus::Running), "{steps:?}");
        assert!(matches!(&steps[1], Step::Failed(StoreError::NotFound(_))), "{steps:?}");
        assert!(matches!(&steps[2], Step::Done(t) if t.status == TaskStatus::Succeeded), "{steps:?}");
        let stored = store.task(a).await.expect("read").expect("exists");
        assert_eq!((stored.status, stored.last_seq), (TaskStatus::Succeeded, 4));
        let worker = store.workers_by_ids(&["w1".to_owned()]).await.expect("worker");
        assert_eq!(worker[0].active, 1, "task a's slot freed, task b still offered");
    }
}
