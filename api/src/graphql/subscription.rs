//! Subscriptions: live task events over WebSocket (see `http::ws` for the protocols).
//!
//! Every stream registers with the hub *before* it reads the database, so nothing
//! committed in between is missed; duplicates from that overlap (or from Kafka's
//! at-least-once delivery) are dropped by `seq`. A gap (a `seq` further ahead than the
//! next one) or a flagged overflow is filled from `task_events`, the source of truth:
//! per task, a subscriber sees every event once, in order. An event Kafka loses at the
//! end of a task's history (nothing later reveals the gap) reaches the hub through its
//! history sweep (`live::sweep`) a few seconds later.
//!
//! The right to read a task is checked when a stream starts and again for every event it
//! delivers: a worker reads a task only while it holds it, so a `taskUpdated` stream of a
//! worker that let go of the task ends (`NOT_FOUND`, as if the task were missing) instead
//! of showing it the creator's task from then on. Each event says enough to decide (its
//! status and worker, with the creator known from the start), so the check costs no query.

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_graphql::{Context, ErrorExtensions, ID, Result, Subscription};
use chrono::Utc;
use futures::Stream;
use taskwire_domain::{
    DomainError, Role, TaskEnvelope, TaskId, TaskStatus,
    task::{Task, TaskEvent},
};

use super::{
    context::{principal, store},
    guards::RoleGuard,
    types::{AssignmentObject, QueueStatsObject, TaskEventFilter, TaskEventObject},
};
use crate::{
    cache::TaskCache,
    dispatch::{DispatcherId, LocalDispatcher, OpenStream},
    error::ApiError,
    live::{Generations, Hub, Next, Route},
    metrics::Metrics,
};
use taskwire_store::{EventScope, Store};

// Every database read inside a stream below is boxed: a stream's state is as large as
// its largest await point, and an inline query future would make every idle
// subscription carry a few KiB it only needs while the query runs.

/// Events replayed from the database per query.
const REPLAY_PAGE: u64 = 500;
/// How far back (before the last delivered event) a multi-task resync looks, to cover
/// events that committed out of timestamp order.
const RESYNC_OVERLAP: chrono::Duration = chrono::Duration::seconds(5);
/// Events a multi-task resync may return; more means the subscriber cannot keep up.
const RESYNC_LIMIT: u64 = 5_000;
/// Tasks a multi-task subscription surely remembers the last `seq` of, for de-duplication
/// and gap filling (it may remember up to twice as many; see [`SeqTracker`]). It must
/// cover a whole resync ([`RESYNC_LIMIT`] events) and the seconds an event's copies can
/// be apart (the Kafka copy of an event another process published at commit; the
/// history sweep's window): a task forgotten sooner could see an older event re-delivered,
/// or a later one delivered without filling the gap before it. 7,168 tasks fill an
/// 8,192-bucket table exactly, which bounds a subscription's tracker on the busiest
/// queue. A task heard of again is
/// kept, so only tasks silent while 7,168 others were heard of are forgotten.
const TRACKED_TASKS: usize = 7_168;
/// Tasks whose offer events an `assignments` subscription surely remembers (so that a
/// second copy of an offer event reads nothing: the hub drops most, not a copy routed
/// past a gap or of a task it forgot); a worker holds at most its capacity at once.
const OFFERS_TRACKED: usize = 1_024;
/// Minimum spacing of `queueStats` updates.
const QUEUE_STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Silence after which an `assignments` subscriber re-reads its offers and `queueStats`
/// refreshes anyway. (`taskUpdated` and `taskEvents` need no timer of their own: the
/// hub's history sweep, `live::sweep`, routes whatever Kafka loses or skips.)
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// The root subscription type.
#[derive(Default, Debug)]
pub struct Subscription;

/// The root subscription type: live updates over WebSocket or Server-Sent Events.
#[Subscription]
impl Subscription {
    /// A task's events in `seq` order without gaps: those after `afterSeq` from the
    /// history (by default the latest event only), then live.
    #[graphql(guard = "RoleGuard::authenticated()")]
    async fn task_updated(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The task's `id`.")] id: ID,
        #[graphql(desc = "Resume after this `seq` (0: the whole history); absent: from the latest event.")]
        after_seq: Option<i32>,
    ) -> Result<impl Stream<Item = Result<TaskEventObject>> + use<>> {
        let caller = principal(ctx)?.clone();
        let store = store(ctx)?.clone();
        let (hub, metrics) = live(ctx)?;
        let id = TaskId::parse(&id).ok_or(ApiError::NotFound("task"))?;
        let mut live = hub.subscribe(Route::task(id));
        let task = store.task(id).await.map_err(ApiError::from)?;
        let task = task.filter(|t| caller.can_read_task(&t.created_by, t.worker_id.as_deref()));
        let task = task.ok_or(ApiError::NotFound("task"))?;
        let created_by = task.created_by.clone();
        let may_read = move |event: &TaskEvent| {
            caller.can_read_task(&created_by, holder_after(event.status, event.worker_id.as_deref()))
        };
        let mut last = match after_seq {
            Some(seq) if seq < 0 => {
                return Err(ApiError::from(DomainError::invalid("afterSeq", "must be 0 or more")).into());
            }
            Some(seq) => seq as u32,
            None => task.last_seq.saturating_sub(1),
        };
        metrics.subscriptions.inc();
        let gauge = GaugeGuard(metrics.clone());
        Ok(async_stream::stream! {
            let _gauge = gauge;
            // Replay, then live. `last` is the highest seq delivered so far.
            let mut replay = true;
            loop {
                if replay || live.take_lagged() {
                    if !replay {
                        metrics.subscriber_resyncs.inc();
                    }
                    loop {
                        match Box::pin(store.events_after(id, last, REPLAY_PAGE)).await {
                            Ok(events) => {
                                let full = events.len() as u64 == REPLAY_PAGE;
                                // The page's latest event says whether the caller may read
                                // the task now; its history comes with that right.
                                if events.last().is_some_and(|event| !may_read(event)) {
                                    metrics.subscriptions_revoked.inc();
                                    yield Err(ApiError::NotFound("task").into());
                                    return;
                                }
                                for event in events {
                                    last = event.seq;
                                    yield Ok(TaskEventObject(event));
                                }
                                if !full { break; }
                            }
                            Err(e) => { yield Err(ApiError::from(e).into()); return; }
                        }
                    }
                    replay = false;
                    continue;
                }
                let Some(envelope) = live.events.recv().await else { return };
                if envelope.seq <= last {
                    continue; // already delivered (replay overlap or redelivery)
                }
                if envelope.seq > last + 1 {
                    replay = true; // a gap: the history has what Kafka has not shown us
                    continue;
                }
                last = envelope.seq;
                let event = event_of(&envelope);
                if !may_read(&event) {
                    metrics.subscriptions_revoked.inc();
                    yield Err(ApiError::NotFound("task").into());
                    return;
                }
                yield Ok(TaskEventObject(event));
            }
        })
    }

    /// For the calling worker: its outstanding offers first, then each new offer as it
    /// is made. While this subscription is open the worker counts as `ONLINE`. Register
    /// with `registerWorker` first (`NOT_FOUND` otherwise).
    #[graphql(guard = "RoleGuard::any_of(&[Role::Worker])")]
    async fn assignments(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = Result<AssignmentObject>> + use<>> {
        let worker_id = principal(ctx)?.subject.clone();
        let store = store(ctx)?.clone();
        let (hub, metrics) = live(ctx)?;
        let ttl = ctx.data_opt::<super::SchemaOptions>().map(|o| o.worker_ttl).unwrap_or(Duration::from_secs(30));
        let local = ctx.data_opt::<LocalDispatcher>();
        let dispatcher = local.and_then(|d| d.id.clone());
        // Registered before the first read, so no offer slips between the two.
        let live = hub.subscribe(Route::Worker(worker_id.clone()));
        // What the worker runs already, read before this stream counts as open: no offer
        // started for this stream is among these, and none of these is delivered by it.
        let running_before: HashSet<String> = Box::pin(store.offers_for(&worker_id))
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|task| task.status == TaskStatus::Running)
            .filter_map(|task| task.lease_token.map(|token| token.as_str().to_owned()))
            .collect();
        // Open before the worker is claimed: from the claim on, this process's matcher
        // may start the worker's offers, which this stream then delivers.
        let open = local.map(|d| d.streams.open(&worker_id));
        // From now on this process's dispatcher (if any) alone offers to the worker.
        store.touch_worker(&worker_id, dispatcher.as_ref().map(DispatcherId::as_str)).await.map_err(ApiError::from)?;
        metrics.subscriptions.inc();
        let cache = ctx.data_opt::<TaskCache>().cloned();
        let gauge = GaugeGuard(metrics.clone());
        let refresh = (ttl / 3).max(Duration::from_millis(100));
        let source = AssignmentSource { store, cache, metrics, dispatcher };
        Ok(assignment_stream(source, live, (worker_id, running_before), refresh, (gauge, open)))
    }

    /// Events of many tasks: a client's own tasks, or (operators) any queue's.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Client, Role::Operator])")]
    async fn task_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only events matching every given condition.")] filter: Option<TaskEventFilter>,
    ) -> Result<impl Stream<Item = Result<TaskEventObject>> + use<>> {
        let caller = principal(ctx)?.clone();
        let store = store(ctx)?.clone();
        let (hub, metrics) = live(ctx)?;
        let filter = filter.unwrap_or_default();
        let scope = if caller.sees_all_tasks() {
            EventScope { created_by: None, queue: filter.queue.clone() }
        } else {
            EventScope { created_by: Some(caller.subject.clone()), queue: filter.queue.clone() }
        };
        let route = match (&scope.created_by, &scope.queue) {
            (Some(creator), _) => Route::Creator(creator.clone()),
            (None, Some(queue)) => Route::Queue(queue.clone()),
            (None, None) => Route::All,
        };
        let statuses: Vec<taskwire_domain::TaskStatus> =
            filter.status.unwrap_or_default().into_iter().map(Into::into).collect();
        let mut live = hub.subscribe(route);
        metrics.subscriptions.inc();
        let gauge = GaugeGuard(metrics.clone());
        let mut seen = SeqTracker::default();
        let mut resume_from = Utc::now();
        Ok(async_stream::stream! {
            let _gauge = gauge;
            let wanted = |event: &TaskEvent| statuses.is_empty() || statuses.contains(&event.status);
            loop {
                if live.take_lagged() {
                    metrics.subscriber_resyncs.inc();
                    match Box::pin(store.events_in_scope_since(&scope, resume_from - RESYNC_OVERLAP, RESYNC_LIMIT)).await {
                        Ok(events) if events.len() as u64 == RESYNC_LIMIT => {
                            metrics.subscribers_too_slow.inc();
                            yield Err(too_slow());
                            return;
                        }
                        Ok(events) => {
                            for event in events {
                                if seen.accept(&event) {
                                    resume_from = resume_from.max(event.at);
                                    if wanted(&event) { yield Ok(TaskEventObject(event)); }
                                }
                            }
                        }
                        Err(e) => { yield Err(ApiError::from(e).into()); return; }
                    }
                    continue;
                }
                let Some(envelope) = live.events.recv().await else { return };
                if scope.queue.as_ref().is_some_and(|q| *q != envelope.queue) {
                    continue;
                }
                let Some(task_id) = TaskId::parse(&envelope.task_id) else { continue };
                // The route (the caller's own tasks, or an operator's queue) selects
                // readable tasks only; each event is checked as well, so that no route can
                // show a caller a task it may not read.
                if !caller.can_read_task(&envelope.created_by, holder_after(envelope.status, envelope.worker_id.as_deref())) {
                    continue;
                }
                // Fill a gap in a task we already follow from its history.
                if let Some(last) = seen.last(task_id).filter(|last| envelope.seq > last + 1) {
                    match Box::pin(store.events_after(task_id, last, REPLAY_PAGE)).await {
                        Ok(events) => {
                            for event in events.into_iter().filter(|e| e.seq <= envelope.seq) {
                                if seen.accept(&event) && wanted(&event) {
                                    yield Ok(TaskEventObject(event));
                                }
                            }
                        }
                        Err(e) => { yield Err(ApiError::from(e).into()); return; }
                    }
                    continue;
                }
                let event = event_of(&envelope);
                if seen.accept(&event) {
                    resume_from = resume_from.max(event.at);
                    if wanted(&event) { yield Ok(TaskEventObject(event)); }
                }
            }
        })
    }

    /// A queue's task counts by status and its oldest queued task's age: now, then after
    /// changes, at most once per second.
    #[graphql(guard = "RoleGuard::any_of(&[Role::Operator])")]
    async fn queue_stats(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The queue's name.")] name: String,
    ) -> Result<impl Stream<Item = Result<QueueStatsObject>> + use<>> {
        let store = store(ctx)?.clone();
        let (hub, metrics) = live(ctx)?;
        let name =
            taskwire_domain::QueueName::parse(&name).map_err(|e| ApiError::from(e.in_field("name")))?.to_string();
        let mut changes = hub.subscribe(Route::Queue(name.clone()));
        metrics.subscriptions.inc();
        let gauge = GaugeGuard(metrics.clone());
        Ok(async_stream::stream! {
            let _gauge = gauge;
            loop {
                match Box::pin(stats(&store, &name)).await {
                    Ok(stats) => yield Ok(stats),
                    Err(e) => { yield Err(e); return; }
                }
                tokio::time::sleep(QUEUE_STATS_INTERVAL).await;
                // Wait for a change (or refresh anyway after a while: ages grow and a
                // lost event must not freeze the numbers); fold what arrived meanwhile
                // into one update.
                let lagged = changes.take_lagged();
                if !lagged && changes.events.try_recv().is_err() {
                    tokio::select! {
                        change = changes.events.recv() => if change.is_none() { return },
                        () = tokio::time::sleep(IDLE_CHECK) => {}
                    }
                }
                while changes.events.try_recv().is_ok() {}
            }
        })
    }
}

/// Where an `assignments` stream reads offers: the database, and this process's task
/// cache (absent: every offer is read from the database).
struct AssignmentSource {
    store: Store,
    cache: Option<TaskCache>,
    metrics: Metrics,
    /// This process's dispatcher, which the stream's liveness refresh keeps claiming the
    /// worker for (a worker with streams on two processes ends up with the latest).
    dispatcher: Option<DispatcherId>,
}

impl AssignmentSource {
    /// The offer `envelope` announces, if this process committed it and L1 still holds
    /// exactly that version (written through at commit, before the event was routed).
    fn committed_offer(&self, envelope: &TaskEnvelope) -> Option<Task> {
        let task = self.cache.as_ref()?.local_version(envelope.id()?, envelope.version)?;
        (task.status.is_leased() && task.lease_token.is_some()).then(|| (*task).clone())
    }

    fn delivered(&self, source: &str) {
        self.metrics.assignments_delivered.with_label_values(&[source]).inc();
    }
}

/// The `assignments` stream of `worker`: outstanding offers (read from the database,
/// which alone holds lease tokens), then each new one. An offer event routed to the
/// worker (see [`is_offer`]) delivers its offer: from the task this process just
/// committed when L1 holds that very version (no query), otherwise by a re-read of the
/// worker's offers, as a lag and the periodic liveness refresh do. Offers are delivered
/// once each (by lease token).
///
/// A `RUNNING` task of the worker is an offer when the dispatcher started it for this
/// stream (a worker that takes its offers as they come): one the stream has not
/// delivered (an accepted offer was delivered `ASSIGNED`, under the same token) and that
/// was not running before the stream opened (`running_before`). Those earlier runs are
/// never delivered again: a restarted worker process would run them a second time under
/// the same token and attempt, and a task that crashes its worker would never use up its
/// attempts. Their leases lapse unless the worker still names them in its heartbeats.
fn assignment_stream(
    source: AssignmentSource,
    mut live: crate::live::Subscription,
    (worker_id, mut running_before): (String, HashSet<String>),
    refresh: Duration,
    guards: (GaugeGuard, Option<OpenStream>),
) -> impl Stream<Item = Result<AssignmentObject>> {
    async_stream::stream! {
        let _guards = guards;
        let store = &source.store;
        let mut delivered: HashSet<String> = HashSet::new();
        let mut offers_heard = SeqTracker::bounded(OFFERS_TRACKED);
        let mut check = true;
        let mut committed: Option<Task> = None;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
        loop {
            if let Some(task) = committed.take()
                && let Some(token) = task.lease_token.as_ref().map(|t| t.as_str().to_owned())
                && delivered.insert(token)
            {
                source.delivered("commit");
                yield Ok(AssignmentObject(task));
            }
            if check || live.take_lagged() {
                match Box::pin(store.offers_for(&worker_id)).await {
                    Ok(offers) => {
                        let current: HashSet<&str> =
                            offers.iter().filter_map(|t| t.lease_token.as_ref().map(|l| l.as_str())).collect();
                        delivered.retain(|token| current.contains(token.as_str()));
                        running_before.retain(|token| current.contains(token.as_str()));
                        for task in offers {
                            let Some(token) = task.lease_token.as_ref().map(|t| t.as_str().to_owned()) else { continue };
                            let earlier_run = task.status == TaskStatus::Running && running_before.contains(&token);
                            if !earlier_run && delivered.insert(token) {
                                source.delivered("database");
                                yield Ok(AssignmentObject(task));
                            }
                        }
                    }
                    Err(e) => { yield Err(ApiError::from(e).into()); return; }
                }
            }
            check = false;
            tokio::select! {
                next = live.next_or_idle(IDLE_CHECK) => match next {
                    Next::Event(envelope) => {
                        // An offer event can come twice (the hub drops most second copies,
                        // not all): only the first copy is acted on.
                        let offer = is_offer(&envelope)
                            && envelope.worker_id.as_deref() == Some(worker_id.as_str())
                            && offers_heard.accept(&event_of(&envelope));
                        if offer {
                            committed = source.committed_offer(&envelope);
                            check = committed.is_none();
                        }
                    }
                    Next::Idle => check = true,
                    Next::Closed => return,
                },
                _ = ticks.tick() => {
                    // An open subscription keeps the worker ONLINE.
                    let dispatcher = source.dispatcher.as_ref().map(DispatcherId::as_str);
                    if let Err(e) = Box::pin(store.touch_worker(&worker_id, dispatcher)).await {
                        tracing::warn!(worker = %worker_id, error = ?e, "cannot refresh worker liveness");
                    }
                    check = true;
                }
            }
        }
    }
}

async fn stats(store: &Store, name: &str) -> Result<QueueStatsObject> {
    let stats = store.queue_stats(name).await.map_err(ApiError::from)?;
    Ok(QueueStatsObject::new(name.to_owned(), stats, Utc::now()))
}

fn live(ctx: &Context<'_>) -> Result<(Arc<Hub>, Metrics), ApiError> {
    let hub = ctx.data_opt::<Arc<Hub>>().cloned();
    let metrics = ctx.data_opt::<Metrics>().cloned();
    match (hub, metrics) {
        (Some(hub), Some(metrics)) => Ok((hub, metrics)),
        _ => {
            tracing::error!("the live hub is missing from the schema data");
            Err(ApiError::Internal)
        }
    }
}

/// Whether `envelope` announces an offer: the task `ASSIGNED` to a worker, or started
/// straight from `QUEUED` for a worker that takes its offers as they come (an accepted
/// offer is `RUNNING` from `ASSIGNED`).
fn is_offer(envelope: &TaskEnvelope) -> bool {
    envelope.status == TaskStatus::Assigned
        || (envelope.status == TaskStatus::Running && envelope.previous_status == Some(TaskStatus::Queued))
}

/// Who holds the task after `event`: the worker it names, unless the task went back to
/// `QUEUED` or `SCHEDULED`, which ends every hold (the event then names the worker that
/// let go). This is the task's `worker_id` after the change, which visibility depends on.
fn holder_after(status: TaskStatus, worker_id: Option<&str>) -> Option<&str> {
    match status {
        TaskStatus::Queued | TaskStatus::Scheduled => None,
        _ => worker_id,
    }
}

/// The event an envelope announces.
fn event_of(envelope: &TaskEnvelope) -> TaskEvent {
    TaskEvent {
        task_id: TaskId::parse(&envelope.task_id).unwrap_or_else(|| TaskId::generate(envelope.at)),
        seq: envelope.seq,
        status: envelope.status,
        previous_status: envelope.previous_status,
        attempt: envelope.attempt,
        worker_id: envelope.worker_id.clone(),
        message: envelope.message.clone(),
        at: envelope.at,
    }
}

fn too_slow() -> async_graphql::Error {
    async_graphql::Error::new("the subscriber fell too far behind; resubscribe (taskUpdated takes afterSeq)")
        .extend_with(|_, e| {
            e.set("code", taskwire_domain::ErrorCode::Unavailable.as_str());
            e.set("reason", "SLOW_SUBSCRIBER");
        })
}

/// The highest `seq` delivered per task, for the tasks heard of most recently: the last
/// `generation` tasks heard of at least, twice as many at most ([`Generations`]), so
/// memory stays bounded whatever the traffic: a subscription to a busy queue does not
/// grow toward one entry per task it ever saw. A forgotten task starts over wherever it
/// is next seen.
#[derive(Debug)]
struct SeqTracker(Generations<TaskId, u32>);

impl Default for SeqTracker {
    fn default() -> Self {
        SeqTracker::bounded(TRACKED_TASKS)
    }
}

impl SeqTracker {
    /// A tracker that remembers the last `generation` tasks heard of (and at most twice
    /// as many).
    fn bounded(generation: usize) -> Self {
        SeqTracker(Generations::new(generation))
    }

    fn last(&self, task: TaskId) -> Option<u32> {
        self.0.get(&task).copied()
    }

    /// Whether `event` is new (and records it). Unknown tasks start wherever they are
    /// first seen.
    fn accept(&mut self, event: &TaskEvent) -> bool {
        if self.last(event.task_id).is_some_and(|last| event.seq <= last) {
            return false;
        }
        self.0.update(&event.task_id, || event.seq, |last| *last = event.seq);
        true
    }
}

/// Keeps the active-subscriptions gauge honest however the stream ends.
#[derive(Debug)]
struct GaugeGuard(Metrics);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.subscriptions.dec();
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use taskwire_domain::TaskStatus;

    use super::*;

    fn event(task: TaskId, seq: u32) -> TaskEvent {
        TaskEvent {
            task_id: task,
            seq,
            status: TaskStatus::Queued,
            previous_status: None,
            attempt: 0,
            worker_id: None,
            message: None,
            at: Utc::now(),
        }
    }

    /// Every event of every transition names, through [`holder_after`], exactly the
    /// worker the task is held by after it: the visibility check of each live event
    /// depends on that, and so must change with the state machine. And [`is_offer`]
    /// recognises exactly the events of offers (plain or started), which the
    /// `assignments` stream delivers.
    #[test]
    fn an_event_tells_who_holds_the_task_after_it() {
        use taskwire_domain::{
            CreateTaskInput, EnvelopeType, LeaseToken, MaxAttempts, NewTask,
            machine::{Command, create, transition},
        };
        let start = Utc::now();
        let later = start + chrono::Duration::seconds(10);
        let lapsed = start + chrono::Duration::seconds(60);
        let commands = |worker: &str| {
            vec![
                Command::Promote,
                Command::Offer { worker_id: "other".into(), lease_token: LeaseToken::generate(), expires_at: later },
                Command::Start {
                    worker_id: "other".into(),
                    lease_token: LeaseToken::generate(),
                    lease_expires_at: later,
                },
                Command::Accept { worker_id: worker.into(), lease_token: "tok".into(), lease_expires_at: later },
                Command::Heartbeat { worker_id: worker.into(), lease_token: "tok".into(), lease_expires_at: later },
                Command::Complete { worker_id: worker.into(), lease_token: "tok".into(), result: None },
                Command::Fail {
                    worker_id: worker.into(),
                    lease_token: "tok".into(),
                    error: "boom".into(),
                    retryable: true,
                    retry_at: later,
                },
                Command::Fail {
                    worker_id: worker.into(),
                    lease_token: "tok".into(),
                    error: "boom".into(),
                    retryable: false,
                    retry_at: later,
                },
                Command::Release { worker_id: worker.into(), lease_token: "tok".into() },
                Command::ExpireOffer,
                Command::ExpireLease { retry_at: lapsed },
                Command::Reclaim { retry_at: later },
                Command::Cancel { reason: None },
                Command::Retry,
                Command::Requeue,
                Command::ExpireDeadline,
            ]
        };
        let mut events = 0;
        for status in TaskStatus::ALL {
            // Attempts left or exhausted, a deadline or none, a held task or not; the
            // commands run while the lease lives and after it lapsed.
            for (exhausted, deadline, held) in
                [(false, false, true), (true, false, true), (false, true, true), (false, false, false)]
            {
                let input = CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
                let new = NewTask::parse(input, "alice", start).expect("valid input");
                let mut task = create(new, TaskId::generate(start), MaxAttempts::DEFAULT, start).task;
                task.status = status;
                if held && status != TaskStatus::Queued && status != TaskStatus::Scheduled {
                    task.worker_id = Some("w1".into());
                }
                if status.is_leased() {
                    task.lease_token = Some(LeaseToken::from_string("tok".into()));
                    task.lease_expires_at = Some(later);
                }
                task.attempts = if exhausted { task.max_attempts } else { 1 };
                task.deadline = deadline.then_some(start + chrono::Duration::seconds(5));
                for now in [start, lapsed] {
                    for command in commands("w1") {
                        let Ok(change) = transition(&task, command.clone(), now) else { continue };
                        let Some(event) = change.event else { continue };
                        events += 1;
                        assert_eq!(
                            holder_after(event.status, event.worker_id.as_deref()),
                            change.task.worker_id.as_deref(),
                            "{status:?} after {command:?} at {now}",
                        );
                        let envelope = TaskEnvelope::new(EnvelopeType::Status, &change.task, &event);
                        assert_eq!(
                            is_offer(&envelope),
                            matches!(command, Command::Offer { .. } | Command::Start { .. }),
                            "{status:?} after {command:?}: an offer event exactly when the command offers",
                        );
                    }
                }
            }
        }
        assert!(events > 40, "the table exercised the transitions ({events} events)");
    }

    #[test]
    fn the_tracker_drops_what_it_delivered_and_keeps_the_tasks_heard_of_lately() {
        let mut seen = SeqTracker::bounded(4);
        let kept = TaskId::generate(Utc::now());
        assert!(seen.accept(&event(kept, 1)));
        assert!(!seen.accept(&event(kept, 1)), "a duplicate");
        assert!(seen.accept(&event(kept, 3)), "a later seq");
        assert!(!seen.accept(&event(kept, 2)), "an older seq");

        // Ten other tasks pass while `kept` is heard of again every few: it stays.
        let others: Vec<TaskId> = (0..10).map(|_| TaskId::generate(Utc::now())).collect();
        for (i, other) in others.iter().enumerate() {
            assert!(seen.accept(&event(*other, 1)));
            if i % 3 == 2 {
                assert!(seen.accept(&event(kept, 4 + i as u32)));
            }
        }
        assert!(seen.last(kept).is_some(), "a task heard of lately is remembered");
        assert_eq!(seen.last(others[9]), Some(1));
        assert_eq!(seen.last(others[0]), None, "a task silent for long enough is forgotten");
        assert!(seen.accept(&event(others[0], 1)), "and starts over wherever it is next seen");
    }
}
