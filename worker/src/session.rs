//! The worker's background tasks: the subscription (with reconnection and fail-over), the
//! handling of each offer, and the heartbeat.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Assignment, Outcome, Stamp, TaskRecord,
    offer::parse_assignment,
    shared::{
        ACCEPT, BACKOFF_MAX, BACKOFF_MIN, COMPLETE, FAIL, HEARTBEAT, RELEASE, STARTED_PERMIT_WAIT, SUBSCRIPTION_ID,
        Shared, bump, lock,
    },
    transport::{self, Socket, describe_close},
};

/// A connection that lived at least this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(2);
/// The shortest heartbeat period honoured.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// Time given to a closing WebSocket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection ended.
enum SessionEnd {
    /// `stop`: the subscription was completed and the socket closed.
    Stopped,
    /// `disconnect_for`: the socket was dropped on purpose.
    Partitioned,
    /// The connection dropped or the server ended the subscription.
    Dropped(String),
    /// The server refused the subscription (`error`); register again before retrying.
    Rejected(String),
}

/// Keeps the subscription open: reconnects with backoff, sits out partitions, ends on stop.
pub(crate) async fn connection_loop(
    shared: Arc<Shared>,
    socket: Socket,
    root: CancellationToken,
    intake: CancellationToken,
    handlers: TaskTracker,
) {
    let mut socket = Some(socket);
    let mut backoff = BACKOFF_MIN;
    let mut must_register = false;
    loop {
        if intake.is_cancelled() {
            return;
        }
        if let Some(until) = shared.partitioned_until() {
            drop(socket.take());
            tokio::select! {
                _ = intake.cancelled() => return,
                _ = tokio::time::sleep_until(until.into()) => {}
            }
            must_register = true;
            continue;
        }
        let current = match socket.take() {
            Some(current) => Some(current),
            None => {
                let attempt = async {
                    if must_register {
                        shared.register().await?;
                    }
                    shared.connect().await
                };
                let attempt = tokio::select! {
                    _ = intake.cancelled() => return,
                    attempt = attempt => attempt,
                };
                match attempt {
                    Ok(current) => {
                        must_register = false;
                        bump(&shared.counters.reconnects);
                        Some(current)
                    }
                    Err(e) => {
                        shared.note_error(e);
                        shared.fail_over();
                        None
                    }
                }
            }
        };
        if let Some(mut current) = current {
            let opened = Instant::now();
            match shared.session(&mut current, &intake, &root, &handlers).await {
                SessionEnd::Stopped => return,
                SessionEnd::Partitioned => {
                    // Dropped without a close handshake, like a cut cable.
                    drop(current);
                    continue;
                }
                SessionEnd::Dropped(reason) => {
                    shared.note_error(reason);
                    shared.fail_over();
                }
                SessionEnd::Rejected(reason) => {
                    shared.note_error(reason);
                    must_register = true;
                }
            }
            if opened.elapsed() >= STABLE_SESSION {
                backoff = BACKOFF_MIN;
            }
        }
        tokio::select! {
            _ = intake.cancelled() => return,
            _ = shared.partition_started.notified() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Calls `heartbeat` every period, except while stalled or partitioned.
pub(crate) async fn heartbeat_loop(shared: Arc<Shared>, root: CancellationToken) {
    let mut ticks = tokio::time::interval(shared.config.heartbeat_every.max(MIN_HEARTBEAT));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // The first tick is immediate; registration just counted as one.
    loop {
        tokio::select! {
            _ = root.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if shared.stalled() || shared.partitioned_until().is_some() {
            continue;
        }
        let beat = tokio::select! {
            _ = root.cancelled() => return,
            beat = shared.graphql(HEARTBEAT, json!({ "tasks": shared.tasks_in_hand() })) => beat,
        };
        bump(if beat.is_ok() { &shared.counters.heartbeats } else { &shared.counters.heartbeat_errors });
    }
}

impl Shared {
    /// Reads the subscription until it ends.
    async fn session(
        self: &Arc<Self>,
        socket: &mut Socket,
        intake: &CancellationToken,
        root: &CancellationToken,
        handlers: &TaskTracker,
    ) -> SessionEnd {
        loop {
            let message = tokio::select! {
                _ = intake.cancelled() => {
                    let complete = json!({ "id": SUBSCRIPTION_ID, "type": "complete" });
                    let closing = async {
                        let _ = transport::send(socket, complete).await;
                        let _ = socket.close(None).await;
                    };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
                    return SessionEnd::Stopped;
                }
                _ = self.partition_started.notified() => {
                    // A notification left over from an earlier partition is stale.
                    if self.partitioned_until().is_some() {
                        return SessionEnd::Partitioned;
                    }
                    continue;
                }
                message = socket.next() => message,
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    return SessionEnd::Dropped(format!("closed by server: {}", describe_close(frame.as_ref())));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return SessionEnd::Dropped(format!("WebSocket: {e}")),
                None => return SessionEnd::Dropped("WebSocket ended".to_owned()),
            };
            let message: Value = match serde_json::from_str(&text) {
                Ok(message) => message,
                Err(e) => {
                    self.note_error(format!("assignments: bad JSON from server: {e}"));
                    continue;
                }
            };
            match message["type"].as_str() {
                Some("ping") => {
                    if let Err(e) = transport::send(socket, json!({ "type": "pong" })).await {
                        return SessionEnd::Dropped(e.to_string());
                    }
                }
                Some("next") => self.on_next(&message["payload"], root, handlers),
                Some("error") => return SessionEnd::Rejected(format!("assignments refused: {}", message["payload"])),
                Some("complete") => return SessionEnd::Dropped("server completed the subscription".to_owned()),
                _ => {}
            }
        }
    }

    /// One `next` message of the subscription: an offer, or an error to note.
    fn on_next(self: &Arc<Self>, payload: &Value, root: &CancellationToken, handlers: &TaskTracker) {
        if let Some(errors) = payload.get("errors").filter(|e| !e.is_null()) {
            self.note_error(format!("assignments: {errors}"));
        }
        let assignment = &payload["data"]["assignments"];
        if !assignment.is_null() {
            match parse_assignment(assignment) {
                Ok(assignment) => self.offer(assignment, root, handlers),
                Err(e) => self.note_error(format!("assignments: {e}: {assignment}")),
            }
        }
    }

    /// Takes (or lets lapse) one delivered offer.
    fn offer(self: &Arc<Self>, assignment: Assignment, root: &CancellationToken, handlers: &TaskTracker) {
        if !lock(&self.seen).insert(&assignment.lease_token) {
            bump(&self.counters.duplicates);
            return;
        }
        bump(&self.counters.offered);
        let record = TaskRecord {
            task_id: assignment.task_id.clone(),
            lease_token: assignment.lease_token.clone(),
            queue: assignment.queue.clone(),
            kind: assignment.kind.clone(),
            attempts: assignment.attempts,
            offered_at: Stamp::now(),
            accept: None,
            accepted: false,
            accepted_at: None,
            outcome: None,
            answer: None,
            finished_at: None,
        };
        let wanted = std::panic::catch_unwind(AssertUnwindSafe(|| (self.filter)(&assignment))).unwrap_or(false);
        if assignment.started {
            self.take_started(assignment, record, wanted, root, handlers);
            return;
        }
        let permit = if wanted { self.permits.clone().try_acquire_owned().ok() } else { None };
        let Some(permit) = permit else {
            bump(&self.counters.ignored);
            self.record(TaskRecord { outcome: Some(Outcome::Ignore), finished_at: Some(Stamp::now()), ..record });
            return;
        };
        handlers.spawn(self.clone().run(assignment, record, permit, root.clone()));
    }

    /// Handles a taken offer until it is done or the worker is killed, counted in flight.
    async fn run(
        self: Arc<Self>,
        assignment: Assignment,
        record: TaskRecord,
        permit: OwnedSemaphorePermit,
        root: CancellationToken,
    ) {
        bump(&self.counters.in_flight);
        tokio::select! {
            _ = root.cancelled() => {}
            _ = self.handle(assignment, record, permit) => {}
        }
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes an offer that started the task (already `RUNNING` on this worker). The
    /// server reserved a slot for it, so a handler is about to be free when none is: a
    /// stalled handler keeps its slot until its report is answered, an earlier handler may
    /// still run a task that was offered again, or the server freed a slot without a
    /// report (a lapsed lease, a cancel) while that handler still runs. So it waits for a
    /// handler, for at most [`STARTED_PERMIT_WAIT`] and a quarter of the lease. An offer
    /// refused by the filter, or still without a handler then, is handed back with
    /// `releaseTask` (its attempt stays counted): left alone, its lease would lapse as a
    /// failed attempt after the whole lease.
    fn take_started(
        self: &Arc<Self>,
        assignment: Assignment,
        record: TaskRecord,
        wanted: bool,
        root: &CancellationToken,
        handlers: &TaskTracker,
    ) {
        let shared = self.clone();
        let root = root.clone();
        handlers.spawn(async move {
            let lease_left = chrono::DateTime::parse_from_rfc3339(&assignment.lease_expires_at)
                .ok()
                .and_then(|at| (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok())
                .unwrap_or_default();
            let wait = STARTED_PERMIT_WAIT.min(lease_left / 4);
            let permit = if wanted {
                tokio::select! {
                    _ = root.cancelled() => return,
                    permit = tokio::time::timeout(wait, shared.permits.clone().acquire_owned()) => {
                        permit.ok().and_then(Result::ok)
                    }
                }
            } else {
                None
            };
            let Some(permit) = permit else {
                bump(&shared.counters.ignored);
                let ids = json!({ "taskId": assignment.task_id, "leaseToken": assignment.lease_token });
                let answer = shared.task_mutation(RELEASE, ids, &shared.counters.released).await;
                let finished_at = Some(Stamp::now());
                shared.record(TaskRecord {
                    outcome: Some(Outcome::Release),
                    answer: Some(answer),
                    finished_at,
                    ..record
                });
                return;
            };
            shared.run(assignment, record, permit, root).await;
        });
    }

    /// Accept, run the handler, report; heartbeats name the task meanwhile.
    async fn handle(&self, assignment: Assignment, record: TaskRecord, permit: OwnedSemaphorePermit) {
        let task_id = assignment.task_id.clone();
        *lock(&self.in_hand).entry(task_id.clone()).or_default() += 1;
        self.handle_in_hand(assignment, record, permit).await;
        let mut in_hand = lock(&self.in_hand);
        if let Some(handlers) = in_hand.get_mut(&task_id) {
            *handlers -= 1;
            if *handlers == 0 {
                in_hand.remove(&task_id);
            }
        }
    }

    /// The tasks to name in a heartbeat.
    fn tasks_in_hand(&self) -> Vec<String> {
        lock(&self.in_hand).keys().cloned().collect()
    }

    async fn handle_in_hand(&self, assignment: Assignment, mut record: TaskRecord, permit: OwnedSemaphorePermit) {
        let ids = json!({ "taskId": assignment.task_id, "leaseToken": assignment.lease_token });
        if assignment.started {
            // The server started the task as it offered it: there is nothing to accept.
            bump(&self.counters.accepted);
            record.accepted = true;
        } else {
            let accept = self.task_mutation(ACCEPT, ids.clone(), &self.counters.accepted).await;
            record.accepted = accept.is_ok();
            record.accept = Some(accept);
        }
        if !record.accepted {
            record.finished_at = Some(Stamp::now());
            self.record(record);
            return;
        }
        record.accepted_at = Some(Stamp::now());
        let outcome = self.run_handler(assignment).await;
        record.outcome = Some(outcome.clone());
        // The server frees this slot when the report commits and may offer the next task
        // at once, over the WebSocket, before the report's answer arrives here. So the
        // handler's permit goes as soon as a report permit is held: a plain offer that
        // found no handler would be ignored and wait out the whole offer timeout. A stall
        // is a hung handler, which keeps its slot until it reports; an ignored task reports
        // nothing.
        let _reporting = match outcome {
            Outcome::Stall(_) => Some(permit),
            Outcome::Ignore => None,
            _ => {
                let reporting = self.reports.clone().acquire_owned().await.ok();
                drop(permit);
                reporting
            }
        };
        record.answer = self.report(ids, outcome).await;
        record.finished_at = Some(Stamp::now());
        self.record(record);
    }

    /// The handler's outcome; a handler that panics fails the task (retryable).
    async fn run_handler(&self, assignment: Assignment) -> Outcome {
        let handler = self.handler.clone();
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(assignment))) {
            Ok(work) => AssertUnwindSafe(work).catch_unwind().await,
            Err(panic) => Err(panic),
        };
        outcome.unwrap_or_else(|_| Outcome::Fail { error: "worker handler panicked".to_owned(), retryable: true })
    }

    /// Sends the mutation that reports `outcome` for the task and lease of `ids`; its
    /// answer, `None` when the outcome reports nothing.
    async fn report(&self, ids: Value, outcome: Outcome) -> Option<crate::Answer> {
        let with = |extra: Value| {
            let mut variables = ids.clone();
            if let (Some(variables), Value::Object(extra)) = (variables.as_object_mut(), extra) {
                variables.extend(extra);
            }
            variables
        };
        let c = &self.counters;
        match outcome {
            Outcome::Complete(result) => {
                Some(self.task_mutation(COMPLETE, with(json!({ "result": result })), &c.completed).await)
            }
            Outcome::Fail { error, retryable } => {
                let variables = with(json!({ "error": error, "retryable": retryable }));
                Some(self.task_mutation(FAIL, variables, &c.failed).await)
            }
            Outcome::Release => Some(self.task_mutation(RELEASE, ids.clone(), &c.released).await),
            Outcome::Stall(d) => {
                self.stall_for(d);
                tokio::time::sleep(d).await;
                Some(self.task_mutation(COMPLETE, with(json!({ "result": null })), &c.completed).await)
            }
            Outcome::Ignore => None,
        }
    }
}
