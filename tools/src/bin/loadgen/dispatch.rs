//! `dispatch`: K reference workers serve a fresh queue while creators feed it at a fixed
//! rate and an operator's subscription (one per instance) records every task's way through.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use taskwire_tools::load::{self, add_errors, brief, failover_list, latency_ms, lock, post, timeline};
use taskwire_worker::{Handler, Outcome, Stopped, Worker, WorkerConfig, WorkerStats};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    Clock, SETTLE, Target,
    args::Options,
    creates::{Creates, OnAck, creator_tokens, paced_creates},
    events::{Event, Socket, open_events, read_events},
    mint,
};

/// Reference workers started at once.
const WORKER_START_CONCURRENCY: usize = 50;
/// Heartbeat period of the reference workers (leases last 30 s by default).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// What one task went through, as seen by the creators and the observer (µs since the
/// epoch; server times from the events' `at`, client times from [`Clock`]).
#[derive(Debug, Default, Clone, Copy)]
struct TaskTimes {
    /// Client: `createTask` answered with this task.
    acked: Option<i64>,
    /// Server: the first event (`seq` 1, the creation).
    created: Option<i64>,
    /// Server: the first offer event: `ASSIGNED`, or `RUNNING` for an offer that started
    /// the task (`--auto-accept` workers).
    assigned: Option<i64>,
    /// Server: the first `RUNNING` event (the worker accepted the offer, or the offer
    /// started the task).
    running: Option<i64>,
    /// Server: the `SUCCEEDED` event.
    succeeded: Option<i64>,
    /// Client: the `SUCCEEDED` event arrived.
    succeeded_received: Option<i64>,
}

/// Per-task times, and how many tasks are both acknowledged and seen to succeed.
#[derive(Default)]
struct Ledger {
    tasks: Mutex<HashMap<u128, TaskTimes>>,
    finished: AtomicU64,
}

impl Ledger {
    /// Waits until every acknowledged task (`created` of them) was seen to succeed, for at
    /// most `grace`; the seconds waited.
    async fn wait_for_finished(&self, created: u64, grace: Duration) -> f64 {
        let started = Instant::now();
        while self.finished.load(Ordering::Relaxed) < created && started.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed().as_secs_f64()
    }

    fn ack(&self, task: u128, at: i64) {
        let mut tasks = lock(&self.tasks);
        let times = tasks.entry(task).or_default();
        times.acked = Some(at);
        if times.succeeded_received.is_some() {
            self.finished.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn event(&self, event: &Event, received: i64) {
        let mut tasks = lock(&self.tasks);
        let times = tasks.entry(event.task).or_default();
        if event.seq == 1 {
            times.created = Some(event.at);
        }
        match event.status.as_str() {
            "ASSIGNED" if times.assigned.is_none() => times.assigned = Some(event.at),
            "RUNNING" if times.running.is_none() => {
                times.running = Some(event.at);
                // An accepted offer's ASSIGNED came first (events of a task arrive in
                // order); without one, the offer started the task.
                times.assigned.get_or_insert(event.at);
            }
            "SUCCEEDED" if times.succeeded.is_none() => {
                times.succeeded = Some(event.at);
                times.succeeded_received = Some(received);
                if times.acked.is_some() {
                    self.finished.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

/// What the observer saw besides the task times.
#[derive(Default)]
struct Observed {
    /// Events by status.
    statuses: BTreeMap<String, u64>,
    /// Dropped connections and subscription errors, by reason.
    errors: BTreeMap<String, u64>,
}

/// The operator's `taskEvents` subscription: feeds the ledger, resubscribing when the
/// server ends it (e.g. `SLOW_SUBSCRIBER`) or the connection drops, until `stop`.
async fn observe(
    socket: Socket,
    ledger: Arc<Ledger>,
    (ws, token, queue): (String, String, String),
    clock: Clock,
    stop: CancellationToken,
) -> Observed {
    let mut observed = Observed::default();
    let mut socket = Some(socket);
    while !stop.is_cancelled() {
        let mut open = match socket.take() {
            Some(open) => open,
            None => match open_events(&ws, &token, &queue).await {
                Ok(open) => open,
                Err(reason) => {
                    *observed.errors.entry(format!("observer: connect: {reason}")).or_default() += 1;
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            },
        };
        let statuses = &mut observed.statuses;
        let mut on_event = |event: Event, received: i64| {
            ledger.event(&event, received);
            *statuses.entry(event.status).or_default() += 1;
        };
        match read_events(&mut open, clock, &stop, &mut on_event).await {
            None => break,
            Some(reason) => *observed.errors.entry(format!("observer: {reason}")).or_default() += 1,
        }
    }
    observed
}

/// `dispatch`: K reference workers serve a fresh queue while creators feed it at a fixed
/// rate and an operator's subscription (one per instance) records every task's way through.
pub(crate) async fn dispatch(o: &Options, target: &Target) -> Result<(Value, String), String> {
    let clock = target.clock;
    let ledger = Arc::new(Ledger::default());
    let stop = CancellationToken::new();
    let observer_token = mint(o, &format!("loadgen-{}-observer", o.run), &["operator"])?;
    let observers = start_observers(o, target, &observer_token, &ledger, &stop).await?;
    let (workers, mut errors) = match start_workers(o).await {
        Ok(started) => started,
        Err(e) => {
            observers.stop(&stop).await;
            return Err(e);
        }
    };
    tokio::time::sleep(SETTLE).await;

    let creation_started = clock.now();
    let acks = ledger.clone();
    let on_ack: OnAck = Arc::new(move |task, at| acks.ack(task, at));
    let creates = paced_creates(o, target, creator_tokens(o)?, o.max_requests, on_ack).await;
    let grace_seconds = ledger.wait_for_finished(creates.created, o.grace).await;
    let grace_end = clock.now();
    let mut tasks = std::mem::take(&mut *lock(&ledger.tasks));

    let mut workers_by_url: BTreeMap<String, u64> = BTreeMap::new();
    for worker in &workers {
        *workers_by_url.entry(worker.url().to_owned()).or_default() += 1;
    }
    let stopped = futures::future::join_all(workers.into_iter().map(Worker::stop)).await;
    let (observer_urls, observed) = observers.stop(&stop).await;

    let checked = check_unseen(o, target, &observer_token, &mut tasks, grace_end).await;
    add_worker_errors(&mut errors, &stopped);
    add_errors(&mut errors, creates.errors.clone());
    for seen in &observed {
        add_errors(&mut errors, seen.errors.clone());
    }
    add_errors(&mut errors, checked.errors.clone());
    let run = DispatchRun {
        summary: TaskSummary::of(&tasks),
        creates,
        grace_seconds,
        creation_started,
        stopped,
        workers_by_url,
        observer_urls,
        observed,
        checked,
        errors,
    };
    let result = run.result(o);
    let line = run.line(o, &result);
    Ok((result, line))
}

/// The operators' subscriptions of a dispatch run, and the instance each one watches.
struct Observers {
    urls: Vec<String>,
    handles: Vec<JoinHandle<Observed>>,
}

impl Observers {
    /// Ends the subscriptions; the instances they watched and what each saw.
    async fn stop(self, stop: &CancellationToken) -> (Vec<String>, Vec<Observed>) {
        stop.cancel();
        let observed = futures::future::join_all(self.handles).await;
        (self.urls, observed.into_iter().map(Result::unwrap_or_default).collect())
    }
}

/// Opens the observers' subscriptions (`--observers`, default one per instance, observer
/// i on instance i mod N): every instance's subscribers see every task's events (another
/// instance's changes arrive through Kafka); the ledger keeps the first copy of each.
async fn start_observers(
    o: &Options,
    target: &Target,
    token: &str,
    ledger: &Arc<Ledger>,
    stop: &CancellationToken,
) -> Result<Observers, String> {
    let count = o.observers.unwrap_or(target.ws.len());
    let mut observers = Observers { urls: Vec::with_capacity(count), handles: Vec::with_capacity(count) };
    for i in 0..count {
        let ws = target.ws(i).to_owned();
        let socket = match open_events(&ws, token, &o.queue).await {
            Ok(socket) => socket,
            Err(e) => {
                observers.stop(stop).await;
                return Err(format!("the observer's subscription on {ws} failed: {e}"));
            }
        };
        let reconnect = (ws.clone(), token.to_owned(), o.queue.clone());
        observers.handles.push(tokio::spawn(observe(socket, ledger.clone(), reconnect, target.clock, stop.clone())));
        observers.urls.push(ws);
    }
    Ok(observers)
}

/// Starts the reference workers, worker i on instance i mod N with the others as its
/// fail-over list; they complete every task at once. The workers, and start failures by
/// reason; an error when none started.
async fn start_workers(o: &Options) -> Result<(Vec<Worker>, BTreeMap<String, u64>), String> {
    let handler: Handler = Arc::new(|_| async { Outcome::Complete(None) }.boxed());
    let mut configs = Vec::with_capacity(o.workers);
    for i in 0..o.workers {
        let name = format!("loadgen-{}-worker-{i}", o.run);
        let token = mint(o, &name, &["worker"])?;
        let queues = vec![o.queue.clone()];
        configs.push(WorkerConfig {
            url: failover_list(&o.urls, i),
            token,
            name,
            queues,
            capacity: o.capacity,
            heartbeat_every: HEARTBEAT,
            auto_accept: o.auto_accept,
        });
    }
    let (workers, failures) = load::start_workers(configs, handler, WORKER_START_CONCURRENCY).await;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for e in failures {
        *errors.entry(format!("worker start: {e}")).or_default() += 1;
    }
    if workers.is_empty() {
        return Err(format!("no worker started: {errors:?}"));
    }
    Ok((workers, errors))
}

/// Failed accepts and reports of the workers, by code.
fn add_worker_errors(errors: &mut BTreeMap<String, u64>, stopped: &[Stopped]) {
    for record in stopped.iter().flat_map(|s| &s.log) {
        if let Some(Err(e)) = &record.accept {
            *errors.entry(format!("worker accept: {}", e.code())).or_default() += 1;
        }
        if let Some(Err(e)) = &record.answer {
            *errors.entry(format!("worker report: {}", e.code())).or_default() += 1;
        }
    }
}

/// What the server's histories said about the tasks the observers did not see succeed.
#[derive(Default)]
struct Checked {
    /// Tasks not finished within the grace period, by status.
    unfinished: BTreeMap<String, u64>,
    /// Tasks whose success only the history showed.
    succeeded_from_history: u64,
    /// Histories not read, by reason.
    errors: BTreeMap<String, u64>,
}

/// The observers may have missed events (a dropped connection, `SLOW_SUBSCRIBER`): the
/// server's history says what really happened to every acknowledged task not seen to
/// succeed. Fills in the times it finds; a success after `grace_end` does not count.
async fn check_unseen(
    o: &Options,
    target: &Target,
    token: &str,
    tasks: &mut HashMap<u128, TaskTimes>,
    grace_end: i64,
) -> Checked {
    let unseen: Vec<u128> =
        tasks.iter().filter(|(_, t)| t.acked.is_some() && t.succeeded.is_none()).map(|(id, _)| *id).collect();
    let (histories, errors) = histories(o, target, token, unseen).await;
    let mut checked = Checked { errors, ..Checked::default() };
    for (id, history) in &histories {
        let Some(times) = tasks.get_mut(id) else { continue };
        times.created = times.created.or(history.created);
        times.assigned = times.assigned.or(history.assigned);
        match history.succeeded {
            Some(at) if at <= grace_end => {
                times.succeeded = Some(at);
                checked.succeeded_from_history += 1;
            }
            Some(_) => *checked.unfinished.entry("SUCCEEDED after the grace period".to_owned()).or_default() += 1,
            None => *checked.unfinished.entry(history.status.clone()).or_default() += 1,
        }
    }
    checked
}

/// Counts and latencies (µs) of the acknowledged tasks.
#[derive(Default)]
struct TaskSummary {
    created: u64,
    assigned: u64,
    succeeded: u64,
    /// Acknowledged tasks whose creation event nobody saw.
    missed_creation: u64,
    /// Tasks seen in events whose create was not acknowledged.
    unacknowledged: u64,
    to_assigned: Vec<i64>,
    to_succeeded: Vec<i64>,
    /// Create acknowledged → `SUCCEEDED` received, on the client clock.
    end_to_end: Vec<i64>,
    /// The stages between, for the tasks seen in every one (one attempt, as a rule).
    to_running: Vec<i64>,
    running_to_succeeded: Vec<i64>,
    /// `(created, created → assigned)` of every assigned task.
    assigned_by_creation: Vec<(i64, i64)>,
    /// The last success (server time).
    last_success: Option<i64>,
}

impl TaskSummary {
    fn of(tasks: &HashMap<u128, TaskTimes>) -> TaskSummary {
        let mut s = TaskSummary::default();
        for times in tasks.values() {
            let Some(acked) = times.acked else {
                s.unacknowledged += 1;
                continue;
            };
            s.created += 1;
            if times.created.is_none() {
                s.missed_creation += 1;
            }
            if let Some(at) = times.assigned {
                s.assigned += 1;
                s.to_assigned.extend(times.created.map(|c| at - c));
                s.assigned_by_creation.extend(times.created.map(|c| (c, at - c)));
            }
            if let Some(at) = times.succeeded {
                s.succeeded += 1;
                s.to_succeeded.extend(times.created.map(|c| at - c));
                s.last_success = s.last_success.max(Some(at));
            }
            if let Some(received) = times.succeeded_received {
                s.end_to_end.push(received - acked);
            }
            if let (Some(assigned), Some(running), Some(done)) = (times.assigned, times.running, times.succeeded) {
                s.to_running.push(running - assigned);
                s.running_to_succeeded.push(done - running);
            }
        }
        s
    }
}

/// Everything a dispatch run measured, for its JSON result and summary line.
struct DispatchRun {
    summary: TaskSummary,
    creates: Creates,
    grace_seconds: f64,
    /// When creation started (client clock, µs since the epoch).
    creation_started: i64,
    stopped: Vec<Stopped>,
    /// Workers per instance when the run ended.
    workers_by_url: BTreeMap<String, u64>,
    /// The instance of each observer, and what each saw.
    observer_urls: Vec<String>,
    observed: Vec<Observed>,
    checked: Checked,
    errors: BTreeMap<String, u64>,
}

impl DispatchRun {
    /// Tasks not seen to finish, by status; those no history was read for are "not checked".
    fn unfinished(&self) -> BTreeMap<String, u64> {
        let mut unfinished = self.checked.unfinished.clone();
        let not_checked = (self.summary.created - self.summary.succeeded).saturating_sub(unfinished.values().sum());
        if not_checked > 0 {
            unfinished.insert("not checked".to_owned(), not_checked);
        }
        unfinished
    }

    /// Successes per second, from the first slot to the last success (server time, same
    /// machine).
    fn succeeded_per_second(&self) -> f64 {
        let window = self.summary.last_success.map_or(0.0, |last| (last - self.creation_started) as f64 / 1e6);
        if window > 0.0 { self.summary.succeeded as f64 / window } else { 0.0 }
    }

    fn created_per_second(&self) -> f64 {
        self.creates.created as f64 / self.creates.seconds.max(1e-9)
    }

    /// The workers' counters, summed.
    fn workers(&self, o: &Options) -> Value {
        let sum = |counter: fn(&WorkerStats) -> u64| self.stopped.iter().map(|s| counter(&s.stats)).sum::<u64>();
        let mut workers = json!({
            "requested": o.workers,
            "started": self.stopped.len(),
            "capacity": o.capacity,
            "auto_accept": o.auto_accept,
            "offered": sum(|s| s.offered),
            "accepted": sum(|s| s.accepted),
            "completed": sum(|s| s.completed),
            "failed": sum(|s| s.failed),
            "released": sum(|s| s.released),
            "lease_lost": sum(|s| s.lease_lost),
            "errors": sum(|s| s.errors),
            "duplicates": sum(|s| s.duplicates),
            "ignored": sum(|s| s.ignored),
            "reconnects": sum(|s| s.reconnects),
            "heartbeat_errors": sum(|s| s.heartbeat_errors),
        });
        if o.urls.len() > 1 {
            workers["failovers"] = json!(sum(|s| s.failovers));
            workers["by_url_at_end"] = json!(self.workers_by_url);
        }
        workers
    }

    /// The full result (`--out`).
    fn result(&self, o: &Options) -> Value {
        let s = &self.summary;
        let latency = json!({
            "create_request": latency_ms(self.creates.micros.iter().map(|&m| i64::from(m)).collect()),
            "created_to_assigned": latency_ms(s.to_assigned.clone()),
            "created_to_succeeded": latency_ms(s.to_succeeded.clone()),
            "assigned_to_running": latency_ms(s.to_running.clone()),
            "running_to_succeeded": latency_ms(s.running_to_succeeded.clone()),
            "ack_to_succeeded_received": latency_ms(s.end_to_end.clone()),
        });
        // The first observer's event counts stand for the run (each observer sees them all).
        let events = self.observed.first().map(|first| json!(first.statuses)).unwrap_or_default();
        let mut result = json!({
            "scenario": "dispatch",
            "queue": o.queue,
            "connections": o.connections,
            "rate": o.rate,
            "creation_seconds": self.creates.seconds,
            "grace_seconds": self.grace_seconds,
            "late_creates": self.creates.late,
            "workers": self.workers(o),
            "tasks": {
                "created": s.created,
                "assigned": s.assigned,
                "succeeded": s.succeeded,
                "not_finished": s.created - s.succeeded,
                "unfinished_by_status": self.unfinished(),
                "succeeded_from_history": self.checked.succeeded_from_history,
                "creation_event_not_seen": s.missed_creation,
                "seen_but_not_acknowledged": s.unacknowledged,
            },
            "throughput": {
                "created_per_second": self.created_per_second(),
                "succeeded_per_second": self.succeeded_per_second(),
            },
            "latency_ms": latency,
            "created_to_assigned_by_second": timeline(self.creation_started, &s.assigned_by_creation),
            "events": events,
            "errors": self.errors,
        });
        if o.urls.len() > 1 {
            // With several observers on one URL, the last one's counts stand for that URL.
            let events_by_url: BTreeMap<&str, &BTreeMap<String, u64>> = self
                .observer_urls
                .iter()
                .map(String::as_str)
                .zip(self.observed.iter().map(|seen| &seen.statuses))
                .collect();
            result["urls"] = json!(o.urls);
            result["events_by_url"] = json!(events_by_url);
        }
        result
    }

    /// The summary line.
    fn line(&self, o: &Options, result: &Value) -> String {
        let s = &self.summary;
        let unfinished = self.unfinished();
        let unfinished_line = if unfinished.is_empty() { String::new() } else { format!(" {}", json!(unfinished)) };
        format!(
            "dispatch workers={}x{}{} rate={}/s c={}: created {} ({:.0}/s), assigned {}, succeeded {} ({:.0}/s), not finished {}{}; \
             p50/p95/p99/max created→assigned {}, created→succeeded {}, ack→SUCCEEDED received {}; errors {}",
            self.stopped.len(),
            o.capacity,
            if o.auto_accept { " (auto-accept)" } else { "" },
            o.rate,
            o.connections,
            s.created,
            self.created_per_second(),
            s.assigned,
            s.succeeded,
            self.succeeded_per_second(),
            s.created - s.succeeded,
            unfinished_line,
            brief(&result["latency_ms"]["created_to_assigned"]),
            brief(&result["latency_ms"]["created_to_succeeded"]),
            brief(&result["latency_ms"]["ack_to_succeeded_received"]),
            result["errors"],
        )
    }
}

/// Reading task histories after a dispatch run stops after this long.
const HISTORY_LIMIT: Duration = Duration::from_secs(30);
const HISTORY: &str = "query History($id: ID!) { task(id: $id) { status events(last: 100) { seq status at } } }";

/// A task's status and event times (µs since the epoch) as the server holds them.
#[derive(Debug, Default)]
struct History {
    status: String,
    created: Option<i64>,
    assigned: Option<i64>,
    succeeded: Option<i64>,
}

/// The histories of `ids`, read `o.connections` at a time for at most [`HISTORY_LIMIT`];
/// failures by reason.
async fn histories(
    o: &Options,
    target: &Target,
    token: &str,
    ids: Vec<u128>,
) -> (HashMap<u128, History>, BTreeMap<String, u64>) {
    let deadline = Instant::now() + HISTORY_LIMIT;
    let read = |id: u128| async move {
        if Instant::now() >= deadline {
            return (id, Err("history: not read in time".to_owned()));
        }
        let variables = json!({ "id": uuid::Uuid::from_u128(id).hyphenated().to_string() });
        let body = json!({ "query": HISTORY, "variables": variables });
        let answer = post(&target.http, target.graphql(id as usize), token, &body).await;
        (id, answer.map_err(|code| format!("history: {code}")).and_then(|v| history(&v["data"]["task"])))
    };
    let answers: Vec<_> = futures::stream::iter(ids).map(read).buffer_unordered(o.connections).collect().await;
    let (mut found, mut errors) = (HashMap::new(), BTreeMap::new());
    for (id, answer) in answers {
        match answer {
            Ok(history) => {
                found.insert(id, history);
            }
            Err(reason) => *errors.entry(reason).or_default() += 1,
        }
    }
    (found, errors)
}

fn history(task: &Value) -> Result<History, String> {
    let status = task["status"].as_str().ok_or("history: task not found")?.to_owned();
    let mut history = History { status, ..History::default() };
    for event in task["events"].as_array().into_iter().flatten() {
        let Some(at) = event["at"].as_str().and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok()) else {
            continue;
        };
        let at = Some(at.timestamp_micros());
        if event["seq"] == 1 {
            history.created = at;
        }
        match event["status"].as_str() {
            Some("ASSIGNED" | "RUNNING") if history.assigned.is_none() => history.assigned = at,
            Some("SUCCEEDED") => history.succeeded = at,
            _ => {}
        }
    }
    Ok(history)
}
