//! The matcher: from the dispatch topic to offers.
//!
//! A loop owned by the application: it reads `<prefix>.tasks.dispatch` in the consumer
//! group `<prefix>.dispatcher` (so dispatcher processes share partitions), keeps the
//! announced tasks that are still `QUEUED` in a bounded [`ReadySet`], and after each
//! batch, each wake-up (capacity freed, a worker came online, a queue changed) and each
//! tick, runs a *round*: for every queue that is not paused, it offers tasks in dispatch
//! order to the `ONLINE` workers serving the queue with free capacity whose `assignments`
//! stream this process holds (and those no dispatcher holds), least loaded first. A
//! round's offers are one conditional transaction (see `Store::offer_many`); the
//! database, not this loop, guarantees that a task has one lease, a worker never exceeds
//! its capacity, and a queue's max concurrency and rate limit hold over all dispatchers.
//!
//! **Ownership across processes.** Each dispatcher offers only to the workers connected
//! to its process, so dispatchers never plan against the same worker's capacity, and an
//! offer reaches its worker from this process's own commit, without a hop through Kafka
//! to another process. Tasks are not partitioned: a task reaches the matcher of the
//! process that queued it (the local feed) and of the process holding its Kafka
//! partition, and the first offer wins (the other finds it no longer `QUEUED`). A
//! dispatcher whose workers have free slots while it holds no task for them *pulls*
//! tasks that have waited [`PULL_GRACE`] from the database (every [`PULL_EVERY`]): that
//! is how tasks held by a dispatcher whose own workers are full reach idle workers
//! elsewhere.
//!
//! In a process that also serves the API, a task that becomes `QUEUED` here reaches the
//! matcher at commit through a bounded [`LocalFeed`] as well, so it is offered without
//! waiting for the relay → Kafka → consumer round trip. The Kafka copy still comes: it is
//! what other processes act on, and here it finds the task offered already (stale) or
//! still held (its offset is then tied to the held task). A full feed drops the newest
//! task, which then simply waits for its Kafka copy.
//!
//! Offsets are committed only below the lowest task not yet placed, so a crash replays.
//! At start, and every [`RECONCILE_EVERY`], tasks `QUEUED` in the database for a while
//! that the set does not hold are added too: nothing waits forever for a message Kafka
//! lost or a process that died holding it. While the matcher owns no partition (Kafka
//! down, or the group not joined yet) it reconciles every 250 ms instead: dispatching
//! degrades to database polling rather than stopping.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    message::{BorrowedMessage, Headers},
};
use taskwire_domain::{
    EnvelopeType, QueueSettings, TaskEnvelope, TaskId, TaskStatus,
    machine::{Effect, Transition},
    task::Task,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    DispatchSettings, DispatcherId, OpenStreams,
    ready::{Entry, ReadySet, Source},
};
use taskwire_store::{CommitListener, Limited, OfferOutcome, PlannedOffer, RosterChanges, Store, WorkerRecord};

use crate::{
    kafka::{ClosesAside, GroupContext, RebalanceListener, leave_group},
    metrics::Metrics,
    telemetry,
};

/// Longest the matcher sleeps without a message or wake-up (rate-limit refills, and
/// capacity freed by other processes, are noticed within this).
const TICK: Duration = Duration::from_millis(200);
/// How long shutdown waits for the group to take this dispatcher's partitions back.
const LEAVE_GROUP_LIMIT: Duration = Duration::from_secs(5);
/// After a round that offered nothing (every worker full or gone, queues paused or
/// rate-limited), the next round waits this long unless a local wake-up comes first
/// (capacity freed, a worker came online, a queue changed): new tasks alone cannot make
/// an offer possible, so they need not each cost a read of the workers. Capacity freed by
/// another process is noticed within this when no worker here has a free slot (a round
/// that finds none reads the workers), within [`ROSTER_MAX_AGE`] otherwise.
const IDLE_RECHECK: Duration = Duration::from_millis(25);
/// How long the matcher plans against the workers it read without reading them again (see
/// [`Roster`]): how long a change made through another process (a worker drained there)
/// can go unseen here.
const ROSTER_MAX_AGE: Duration = Duration::from_secs(1);
/// How long a queue at its concurrency cap sits out the rounds unless a local wake-up
/// comes first: the latency of noticing room freed through another process.
const CAP_RECHECK: Duration = Duration::from_millis(100);
/// Offers made in one transaction (a round makes more in several).
const OFFERS_PER_TRANSACTION: usize = 100;
/// Messages taken from Kafka (or the local feed) per batch at most.
const BATCH: usize = 500;
/// Tasks the local feed holds for the matcher at most (see [`LocalFeed`]).
const LOCAL_FEED_CAPACITY: usize = 4_096;
/// Local announcements remembered so that their Kafka copies skip the database check (see
/// [`Handled`]): a few seconds of dispatch at full speed.
const HANDLED_CAPACITY: usize = 8_192;
/// How often the ready set is reconciled with the database.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// How often the ready set is reconciled while the matcher owns no partition (start-up
/// until the group assigns it, rebalances, Kafka down): the dispatch latency then.
const UNASSIGNED_RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// Tasks `QUEUED` for less than this are left to their Kafka message.
const RECONCILE_GRACE: chrono::Duration = chrono::Duration::seconds(10);
/// How often a dispatcher with idle workers looks in the database for tasks that other
/// dispatchers hold but cannot place (see [`PULL_GRACE`]) while it holds tasks of other
/// queues ...
const PULL_EVERY: Duration = Duration::from_millis(100);
/// ... and while it holds none (then each look reads its workers first).
const IDLE_PULL_EVERY: Duration = Duration::from_millis(250);
/// A task `QUEUED` for longer than this, in a queue an idle local worker serves, is taken
/// over by the pull: the dispatcher that queued it normally offers it within milliseconds,
/// so one still waiting has no free worker there.
const PULL_GRACE: chrono::Duration = chrono::Duration::milliseconds(100);

/// This process's place in the dispatcher consumer group: whether it has joined yet,
/// and how many partitions it holds (`/readyz` reports it).
///
/// A fresh group assigns its first member only after the broker's initial rebalance
/// delay (3 s by default, on Kafka and on the embedded mock alike); until then, and
/// during later rebalances, the matcher dispatches by polling the database.
#[derive(Debug, Clone)]
pub struct GroupMembership {
    /// -1 until the first assignment, then the partitions held.
    partitions: Arc<AtomicI64>,
}

impl Default for GroupMembership {
    fn default() -> Self {
        GroupMembership { partitions: Arc::new(AtomicI64::new(-1)) }
    }
}

impl GroupMembership {
    /// `None` until the group has assigned this process (possibly nothing), then the
    /// number of partitions it holds.
    pub(crate) fn partitions(&self) -> Option<u32> {
        u32::try_from(self.partitions.load(Ordering::Relaxed)).ok()
    }

    fn set(&self, partitions: usize) {
        self.partitions.store(i64::try_from(partitions).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

/// Hears the dispatcher group's rebalances: records the partitions revoked, for the
/// matcher to drop what it holds from them, and the assignment, for [`GroupMembership`].
#[derive(Debug, Default, Clone)]
pub(crate) struct Rebalances {
    revoked: Arc<Mutex<Vec<i32>>>,
    membership: GroupMembership,
}

impl RebalanceListener for Rebalances {
    fn revoking(&self, partitions: &[i32]) {
        if let Ok(mut revoked) = self.revoked.lock() {
            revoked.extend_from_slice(partitions);
        }
    }

    fn assigned(&self, partitions: &[i32]) {
        self.membership.set(partitions.len());
        tracing::info!(?partitions, "dispatch partitions assigned");
    }

    fn revoked(&self, partitions: &[i32]) {
        self.membership.set(0);
        tracing::info!(partitions = partitions.len(), "dispatch partitions revoked");
    }

    fn failed(&self, error: &KafkaError) {
        tracing::warn!(error = %error, "dispatch consumer rebalance failed");
    }
}

impl Rebalances {
    fn take_revoked(&self) -> Vec<i32> {
        self.revoked.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default()
    }
}

/// The matcher's consumer of the dispatch topic.
pub(crate) type DispatchConsumer = StreamConsumer<GroupContext<Rebalances>>;

/// The matcher loop's state.
pub(crate) struct Matcher {
    store: Store,
    settings: DispatchSettings,
    metrics: Metrics,
    /// This process among dispatchers: it offers to the workers marked with it.
    id: DispatcherId,
    consumer: Arc<ClosesAside<DispatchConsumer>>,
    topic: String,
    wake: Arc<Notify>,
    ready: ReadySet,
    /// Queues whose global limits held offers back: until when, and whether it was the
    /// concurrency cap (see [`Matcher::hold`]).
    held: HashMap<String, (Instant, Limited)>,
    /// Queues for which local workers had free slots and the ready set held no task
    /// after the last round, with the free slots: what the next pull looks for.
    idle: Vec<(String, u32)>,
    /// Tasks queued by this process, straight from their commit. Never closes: `feed`
    /// holds a sender for as long as the matcher lives.
    local: mpsc::Receiver<Announcement>,
    feed: LocalFeed,
    handled: Handled,
    pacer: Pacer,
    /// The workers whose `assignments` stream is open on this process: the only ones
    /// offers are started for.
    streams: OpenStreams,
    /// This dispatcher's workers, kept between rounds.
    roster: Roster,
    /// What this process changes about workers (slots freed, roster changed).
    changes: RosterChanges,
}

/// This dispatcher's workers as last read, with the slots it has planned since and those
/// freed by this process's commits counted in: what a round plans against. Reading them
/// for every round cost a query returning every local worker, several hundred times a
/// second under load.
///
/// Read again when older than [`ROSTER_MAX_AGE`], when this process changed the roster
/// (a worker registered, came back, moved, was drained or went offline: see
/// [`RosterChanges`]), after an offer found a worker other than held here or a round's
/// offers failed, and before a round concludes that no worker is free: slots freed
/// through another process are not counted here. The offer transaction checks every
/// worker's state and capacity whatever this holds.
#[derive(Debug, Default)]
struct Roster {
    workers: Vec<WorkerRecord>,
    /// When read; `None`: read before the next round.
    read_at: Option<Instant>,
    /// [`RosterChanges::generation`] when read.
    generation: u64,
}

impl Roster {
    fn stale(&self, generation: u64) -> bool {
        generation != self.generation || self.read_at.is_none_or(|at| at.elapsed() >= ROSTER_MAX_AGE)
    }

    /// Counts in `freed` slots by worker.
    fn free(&mut self, freed: HashMap<String, u32>) {
        for (id, slots) in freed {
            if let Some(worker) = self.workers.iter_mut().find(|w| w.id == id) {
                worker.active = worker.active.saturating_sub(slots);
            }
        }
    }
}

/// When the next round may run: at once, unless the last one offered nothing; then after
/// [`IDLE_RECHECK`], or at the next wake-up.
#[derive(Debug, Default)]
struct Pacer {
    idle_until: Option<Instant>,
}

impl Pacer {
    /// Whether a round should run `now`; `woken` when a wake-up came since the last one.
    fn due(&self, now: Instant, woken: bool) -> bool {
        woken || self.idle_until.is_none_or(|until| now >= until)
    }

    /// Records a round that ran at `now`, settled `settled` ready tasks and left
    /// `waiting` ready.
    fn ran(&mut self, now: Instant, settled: usize, waiting: usize) {
        self.idle_until = (settled == 0 && waiting > 0).then(|| now + IDLE_RECHECK);
    }
}

/// The local announcements the ready set took, by task and event seq, the most recent
/// [`HANDLED_CAPACITY`]. The Kafka copy of one of them announces a state the matcher has
/// already acted on, so it needs no database check: if the task is still held, the held
/// task takes over the copy's offset; if not, it was offered (or found no longer
/// `QUEUED`) since, and the copy is stale. A copy of an announcement forgotten (older
/// than the bound, or its task dropped with a revoked partition) or never fed here
/// (queued by another process, dropped by a full feed or a full set) is checked against
/// the database as before.
#[derive(Debug, Default)]
struct Handled {
    order: VecDeque<(TaskId, u32)>,
    seqs: HashMap<TaskId, u32>,
}

impl Handled {
    fn remember(&mut self, id: TaskId, seq: u32) {
        self.seqs.insert(id, seq);
        self.order.push_back((id, seq));
        if self.order.len() > HANDLED_CAPACITY
            && let Some((oldest, seq)) = self.order.pop_front()
            && self.seqs.get(&oldest) == Some(&seq)
        {
            self.seqs.remove(&oldest);
        }
    }

    fn forget(&mut self, id: TaskId) {
        self.seqs.remove(&id);
    }

    fn contains(&self, id: TaskId, seq: u32) -> bool {
        self.seqs.get(&id) == Some(&seq)
    }
}

/// Hands tasks that became `QUEUED` in this process to its matcher at commit (the store's
/// store tells it as a commit listener, which calls [`LocalFeed::announce`]). Bounded: when the matcher is
/// [`LOCAL_FEED_CAPACITY`] behind, the newest task is dropped (counted as
/// `dispatch_local_total{outcome="dropped"}`) and is offered from its Kafka announcement
/// instead, like a task queued by another process. Never waits: it runs on the commit path.
#[derive(Debug, Clone)]
pub(crate) struct LocalFeed {
    tx: mpsc::Sender<Announcement>,
    metrics: Metrics,
}

impl LocalFeed {
    /// Announces `envelope` (a dispatch envelope) to the matcher, unless the feed is full.
    pub(crate) fn announce(&self, envelope: TaskEnvelope, traceparent: Option<&str>) {
        let announcement =
            Announcement { source: None, envelope: Some(envelope), traceparent: traceparent.map(str::to_owned) };
        let outcome = match self.tx.try_send(announcement) {
            Ok(()) => "fed",
            Err(mpsc::error::TrySendError::Full(_)) => "dropped",
            // The matcher has stopped (shutdown): Kafka holds the announcement.
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        };
        self.metrics.dispatch_local.with_label_values(&[outcome]).inc();
    }
}

/// A task this process committed into `QUEUED` (created, retried, requeued) reaches this
/// process's matcher at once; its Kafka copy comes later and is dropped as known.
impl CommitListener for LocalFeed {
    fn committed(&self, change: &Transition, traceparent: Option<&str>) {
        if let Some(event) = &change.event
            && change.effects.contains(&Effect::Dispatch)
        {
            self.announce(TaskEnvelope::new(EnvelopeType::Dispatch, &change.task, event), traceparent);
        }
    }
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher").field("topic", &self.topic).field("ready", &self.ready.len()).finish_non_exhaustive()
    }
}

impl Matcher {
    /// A matcher reading `topic` with `consumer` (subscribed, auto-commit off).
    pub(crate) fn new(
        store: Store,
        settings: DispatchSettings,
        metrics: Metrics,
        id: DispatcherId,
        consumer: DispatchConsumer,
        topic: String,
    ) -> Self {
        let wake = store.dispatch_signal();
        let changes = store.roster_changes();
        changes.track();
        let ready = ReadySet::new(settings.ready_capacity);
        let (tx, local) = mpsc::channel(LOCAL_FEED_CAPACITY);
        let feed = LocalFeed { tx, metrics: metrics.clone() };
        Matcher {
            store,
            settings,
            metrics,
            id,
            consumer: Arc::new(ClosesAside::new(consumer)),
            topic,
            wake,
            ready,
            held: HashMap::new(),
            idle: Vec::new(),
            local,
            feed,
            handled: Handled::default(),
            pacer: Pacer::default(),
            streams: OpenStreams::default(),
            roster: Roster::default(),
            changes,
        }
    }

    /// Where this process's `assignments` streams register themselves (see [`OpenStreams`]).
    pub(crate) fn open_streams(&self) -> OpenStreams {
        self.streams.clone()
    }

    /// The feed through which this process's commits hand newly `QUEUED` tasks to this
    /// matcher.
    pub(crate) fn local_feed(&self) -> LocalFeed {
        self.feed.clone()
    }

    /// This process's membership in the dispatcher group (for `/readyz`).
    pub(crate) fn membership(&self) -> GroupMembership {
        self.consumer.context().listener().membership.clone()
    }

    /// The dispatch consumer, shared (the lag sampler reads its positions).
    pub(crate) fn consumer(&self) -> Arc<ClosesAside<DispatchConsumer>> {
        self.consumer.clone()
    }

    /// Runs until `shutdown`, then commits what it placed.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        self.reconcile(Utc::now()).await;
        let mut reconciled = Instant::now();
        let mut pulled = Instant::now();
        loop {
            let revoked = self.consumer.context().listener().take_revoked();
            if !revoked.is_empty() {
                self.revoke(&revoked);
            }
            let mut batch = Vec::new();
            let mut woken = false;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {
                    woken = true;
                    // Capacity freed here may be room under a queue's cap.
                    self.held.retain(|_, (_, limited)| *limited != Limited::Concurrency);
                }
                () = tokio::time::sleep(TICK) => {}
                Some(first) = self.local.recv(), if !self.ready.is_full() => {
                    batch.push(first);
                    let room = self.room();
                    while batch.len() < room {
                        match self.local.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                }
                message = self.consumer.recv(), if !self.ready.is_full() => match message {
                    Ok(message) => {
                        batch.push(Announcement::read(&message));
                        // Never more than the set has room for: a message read is a
                        // message that must be held (or found stale or a duplicate).
                        let room = self.room();
                        while batch.len() < room {
                            match self.consumer.recv().now_or_never() {
                                Some(Ok(message)) => batch.push(Announcement::read(&message)),
                                _ => break,
                            }
                        }
                    }
                    Err(e) => {
                        // Broker outages surface here; librdkafka reconnects by itself,
                        // and the reconciliation covers what Kafka cannot deliver.
                        tracing::debug!(error = %e, "dispatch consumer error");
                    }
                },
            }
            self.ingest(batch).await;
            // Without partitions (Kafka down, or the group not yet joined) dispatching
            // falls back to polling the database every second, so it never stalls.
            let partitions = self.consumer.assignment().map(|a| a.count()).unwrap_or(0);
            self.metrics.dispatch_partitions.set(partitions as i64);
            let assigned = partitions > 0;
            let (every, grace) = if assigned {
                (RECONCILE_EVERY, RECONCILE_GRACE)
            } else {
                (UNASSIGNED_RECONCILE_EVERY, chrono::Duration::zero())
            };
            if reconciled.elapsed() >= every {
                self.reconcile(Utc::now() - grace).await;
                reconciled = Instant::now();
            }
            let pull_every = if self.ready.is_empty() { IDLE_PULL_EVERY } else { PULL_EVERY };
            if pulled.elapsed() >= pull_every {
                pulled = Instant::now();
                if self.pull().await > 0 {
                    woken = true;
                }
            }
            if self.pacer.due(Instant::now(), woken) {
                let settled = self.round().await;
                self.pacer.ran(Instant::now(), settled, self.ready.len());
            }
            self.metrics.dispatch_ready.set(self.ready.len() as i64);
            self.commit(CommitMode::Async);
        }
        self.commit(CommitMode::Sync);
        // Before the consumer is dropped: the group reassigns these partitions at once
        // rather than after the session time-out, and the close has nothing left to
        // rebalance (see `kafka::leave_group`).
        leave_group(&self.consumer, LEAVE_GROUP_LIMIT).await;
        tracing::info!("matcher stopped");
    }

    /// Drops what the matcher held from `partitions`: their new owner replays them. A
    /// replayed copy that comes back here later is checked, not trusted.
    fn revoke(&mut self, partitions: &[i32]) {
        for id in self.ready.revoke(partitions) {
            self.handled.forget(id);
        }
    }

    /// Announcements one batch may take: never more than the ready set has room for.
    fn room(&self) -> usize {
        self.settings.ready_capacity.saturating_sub(self.ready.len()).min(BATCH)
    }

    /// Adds the announced tasks that are still `QUEUED` (one query per batch for those
    /// from Kafka). Each is handled in a span (`kafka.dispatch` for a message, a child of
    /// the trace context in its headers; `dispatch.local` for the local feed, a child of
    /// the request that queued the task) when spans are exported.
    async fn ingest(&mut self, batch: Vec<Announcement>) {
        if batch.is_empty() {
            return;
        }
        // Local announcements come straight from their commit, and Kafka's copies of them
        // were acted on already: only the others need checking.
        let ids: Vec<TaskId> = batch
            .iter()
            .filter(|a| a.source.is_some())
            .filter_map(|a| a.envelope.as_ref())
            .filter_map(|e| e.id().filter(|id| !self.handled.contains(*id, e.seq)))
            .collect();
        let current = if ids.is_empty() { Ok(Vec::new()) } else { self.store.tasks_by_ids(&ids).await };
        let current = match current {
            Ok(tasks) => Some(tasks.into_iter().map(|t| (t.id, t)).collect::<HashMap<_, _>>()),
            Err(e) => {
                // Keep every announcement: the offer transaction checks the status anyway.
                tracing::warn!(error = ?e, "cannot check announced tasks; keeping them all");
                None
            }
        };
        for announcement in batch {
            let task_id = announcement.envelope.as_ref().map(|e| e.task_id.as_str());
            let span = match announcement.source {
                Some((partition, offset)) => tracing::info_span!(
                    "kafka.dispatch",
                    otel.kind = "consumer",
                    task_id,
                    partition,
                    offset,
                    outcome = tracing::field::Empty,
                ),
                None => tracing::info_span!("dispatch.local", task_id, outcome = tracing::field::Empty),
            };
            if let Some(traceparent) = &announcement.traceparent {
                telemetry::set_remote_parent(&span, traceparent);
            }
            let local = announcement.source.is_none();
            let outcome = span.in_scope(|| self.place(announcement, current.as_ref()));
            span.record("outcome", outcome);
            if !local {
                self.metrics.dispatch_messages.with_label_values(&[outcome]).inc();
            }
        }
    }

    /// Holds one announced task, or marks its message (if from Kafka) placed; returns the
    /// outcome. `current` holds the state of the tasks announced on Kafka (`None`: not
    /// known); a local announcement is trusted as it comes, straight from its commit, and
    /// so is a Kafka copy of one (see [`Handled`]).
    fn place(&mut self, announcement: Announcement, current: Option<&HashMap<TaskId, Task>>) -> &'static str {
        let source = announcement.source;
        let Some((id, envelope)) =
            announcement.envelope.filter(|e| e.kind == EnvelopeType::Dispatch).and_then(|e| e.id().map(|id| (id, e)))
        else {
            self.ready.placed_on_arrival(source);
            return "invalid";
        };
        let mut entry = Entry {
            id,
            queue: envelope.queue.clone(),
            priority: envelope.priority,
            run_at: envelope.run_at,
            queued_at: envelope.at,
            source,
            traceparent: announcement.traceparent,
            avoid: envelope
                .previous_status
                .is_some_and(TaskStatus::is_leased)
                .then(|| envelope.worker_id.clone())
                .flatten(),
        };
        let seq = envelope.seq;
        if source.is_some() && self.handled.contains(id, seq) {
            if self.ready.contains(id) {
                self.ready.insert(entry);
                return "duplicate";
            }
            self.ready.placed_on_arrival(source);
            return "stale";
        }
        if let (Some(tasks), Some(_)) = (current, source) {
            match tasks.get(&id) {
                Some(task) if task.status == TaskStatus::Queued => {
                    entry.priority = task.priority;
                    entry.run_at = task.run_at;
                }
                _ => {
                    self.ready.placed_on_arrival(source);
                    return "stale";
                }
            }
        }
        let queued = self.ready.insert(entry);
        if source.is_none() && self.ready.contains(id) {
            self.handled.remember(id, seq);
        }
        if queued { "queued" } else { "duplicate" }
    }

    /// Adds `QUEUED` tasks last changed before `cutoff` that the set does not hold.
    async fn reconcile(&mut self, cutoff: chrono::DateTime<Utc>) {
        let room = self.settings.ready_capacity.saturating_sub(self.ready.len()) as u64;
        if room == 0 {
            return;
        }
        match self.store.queued_tasks(cutoff, room).await {
            Ok(tasks) => {
                let found = self.hold_read(tasks);
                if found > 0 {
                    tracing::info!(found, "reconciliation found queued tasks without a pending announcement");
                }
            }
            Err(e) => tracing::warn!(error = ?e, "reconciliation failed; retrying later"),
        }
    }

    /// Offers what can be offered now; returns how many ready tasks it settled (offered,
    /// or found no longer `QUEUED`): 0 when nothing could be offered. Records which
    /// queues local workers could serve more of ([`Matcher::pull`]).
    ///
    /// A round reads what it plans against, plans every offer against the capacities it
    /// read, then makes the offers in as few transactions as possible.
    async fn round(&mut self) -> usize {
        self.idle.clear();
        if self.ready.is_empty() {
            return 0;
        }
        self.metrics.dispatch_rounds.inc();
        let now = Utc::now();
        let Some(mut snapshot) = self.read_snapshot(now, false).await else { return 0 };
        let clock = Instant::now();
        self.held.retain(|_, (until, _)| *until > clock);
        let mut plan = self.plan(&mut snapshot);
        if plan.is_empty() && !snapshot.fresh {
            // No free slot as counted here: read the workers before concluding so (slots
            // freed through another process are not counted).
            let Some(fresh) = self.read_snapshot(now, true).await else { return 0 };
            snapshot = fresh;
            plan = self.plan(&mut snapshot);
        }
        let mut workers = std::mem::take(&mut snapshot.workers);
        let limited = snapshot.limited_queues();
        let expires_at = now + self.settings.offer_timeout;
        let mut settled = 0;
        for chunk in plan.chunks(OFFERS_PER_TRANSACTION) {
            match self.offer(chunk, &limited, expires_at, clock, &mut workers).await {
                Some(settled_now) => settled += settled_now,
                None => {
                    // What the failed transaction left is unknown: read the workers next round.
                    self.roster.read_at = None;
                    break;
                }
            }
        }
        self.idle = self.idle_queues(&workers);
        self.roster.workers = workers;
        settled
    }

    /// What a round plans against: the queues the ready set holds tasks of, their
    /// settings, and the workers this dispatcher may offer to, as held (see [`Roster`])
    /// or, with `fresh` or when those are stale, read. `None` when there is no worker, or
    /// when they or the settings cannot be read.
    async fn read_snapshot(&mut self, now: DateTime<Utc>, fresh: bool) -> Option<Snapshot> {
        let fresh = self.refresh_roster(now, fresh).await?;
        if self.roster.workers.is_empty() {
            return None;
        }
        let queues = self.ready.queues();
        match self.store.queue_settings_many(queues.iter().map(String::as_str)).await {
            Ok(settings) => {
                Some(Snapshot { queues, settings, workers: std::mem::take(&mut self.roster.workers), fresh })
            }
            Err(e) => {
                tracing::warn!(error = ?e, "cannot load queue settings; retrying");
                None
            }
        }
    }

    /// Brings the roster up to date: reads it again with `fresh` or when it is stale, else
    /// counts in the slots this process freed. Whether it read; `None` when a read failed.
    async fn refresh_roster(&mut self, now: DateTime<Utc>, fresh: bool) -> Option<bool> {
        if fresh || self.roster.stale(self.changes.generation()) {
            return self.read_roster(now).await.then_some(true);
        }
        self.roster.free(self.changes.take_freed());
        Some(false)
    }

    /// Reads this dispatcher's workers into the roster; `false` when they cannot be read.
    async fn read_roster(&mut self, now: DateTime<Utc>) -> bool {
        // The generation before the read: a change made while it runs is read again next
        // time. The slots freed so far are in what it reads, and so may be some freed
        // while it runs: all are dropped after it, since counting a slot twice would
        // plan offers a worker has no room for (a whole transaction refused), while a
        // slot missed is found by the next read.
        let generation = self.changes.generation();
        let Some(workers) = self.local_workers(now).await else {
            self.roster.read_at = None;
            return false;
        };
        self.changes.take_freed();
        self.roster = Roster { workers, read_at: Some(Instant::now()), generation };
        true
    }

    /// The round's offers, in dispatch order within each queue: each ready task goes to
    /// the least loaded worker that serves its queue, while the queue is neither paused
    /// nor held and its concurrency cap allows. Counts the planned offers into the
    /// snapshot's workers.
    fn plan(&self, snapshot: &mut Snapshot) -> Vec<(PlannedOffer, DateTime<Utc>)> {
        let mut plan = Vec::new();
        for queue in &snapshot.queues {
            let Some(settings) = snapshot.settings.get(queue) else { continue };
            if settings.paused || self.held.contains_key(queue) {
                continue;
            }
            let mut budget = settings.max_concurrency.unwrap_or(u32::MAX);
            for entry in self.ready.in_order(queue) {
                if budget == 0 {
                    break;
                }
                let Some(worker) = least_loaded(&mut snapshot.workers, queue, entry.avoid.as_deref()) else { break };
                worker.active += 1;
                budget -= 1;
                // A worker that takes its offers as they come gets the task started,
                // under the queue's lease (its acceptance is not waited for), when its
                // stream is open here to deliver it at once.
                let starts = worker.auto_accept && self.streams.is_open(&worker.id);
                let lease = starts.then(|| settings.lease());
                let offer = PlannedOffer {
                    id: entry.id,
                    worker_id: worker.id.clone(),
                    traceparent: entry.traceparent.clone(),
                    lease,
                };
                plan.push((offer, entry.queued_at));
            }
        }
        plan
    }

    /// Makes `planned` offers (with when each task was queued) in one transaction, holds
    /// back the queues whose limits refused some, and records each outcome; returns how
    /// many ready tasks it settled, or `None` when the transaction failed. `workers` (the
    /// round's, its planned offers counted in) gets back the slots of offers not made.
    async fn offer(
        &mut self,
        planned: &[(PlannedOffer, DateTime<Utc>)],
        limited: &[&str],
        expires_at: DateTime<Utc>,
        clock: Instant,
        workers: &mut [WorkerRecord],
    ) -> Option<usize> {
        let offers: Vec<PlannedOffer> = planned.iter().map(|(offer, _)| offer.clone()).collect();
        let made = match self.store.offer_many_as(Some(self.id.as_str()), &offers, limited, expires_at).await {
            Ok(made) => made,
            Err(e) => {
                tracing::warn!(error = ?e, offers = offers.len(), "offers failed; retrying");
                return None;
            }
        };
        for (queue, limited) in made.limited {
            self.hold(queue, limited, clock);
        }
        let mut settled = 0;
        for ((offer, queued_at), outcome) in planned.iter().zip(made.outcomes) {
            if !matches!(outcome, OfferOutcome::Offered(_))
                && let Some(worker) = workers.iter_mut().find(|w| w.id == offer.worker_id)
            {
                worker.active = worker.active.saturating_sub(1);
            }
            if outcome == OfferOutcome::WorkerUnavailable {
                // Drained, offline, or full through another process: not as held here.
                self.roster.read_at = None;
            }
            if self.record(offer, *queued_at, outcome) {
                settled += 1;
            }
        }
        Some(settled)
    }

    /// Records the outcome of one offer: a task offered, or found no longer `QUEUED`,
    /// leaves the ready set (an offered one is counted, with how long it waited);
    /// returns whether it did.
    fn record(&mut self, offer: &PlannedOffer, queued_at: DateTime<Utc>, outcome: OfferOutcome) -> bool {
        match outcome {
            OfferOutcome::Offered(task) => {
                self.ready.remove(offer.id);
                self.metrics.dispatch_offers.inc();
                let waited = (task.updated_at - queued_at).to_std().unwrap_or_default();
                self.metrics.dispatch_latency.observe(waited.as_secs_f64());
                tracing::debug!(task = %offer.id, worker = %offer.worker_id, "offered");
                true
            }
            OfferOutcome::NotQueued => {
                self.ready.remove(offer.id);
                true
            }
            // Drained, offline or full since it was read, or the queue is at its
            // limits (other dispatchers count too): the task stays ready and a
            // later round offers it.
            OfferOutcome::WorkerUnavailable | OfferOutcome::QueueLimited => false,
        }
    }

    /// Leaves `queue` out of the rounds after its limits held offers back: a rate-limited
    /// queue until its shared bucket holds a token again, a queue at its concurrency cap
    /// until a local wake-up (capacity freed here) or [`CAP_RECHECK`] (freed elsewhere).
    /// Without this, a capped queue with a backlog would cost each dispatcher an offer
    /// transaction every [`IDLE_RECHECK`].
    fn hold(&mut self, queue: String, limited: Limited, now: Instant) {
        let wait = match limited {
            Limited::Rate(wait) => wait,
            Limited::Concurrency => CAP_RECHECK,
        };
        self.held.insert(queue, (now + wait, limited));
    }

    /// The workers this dispatcher may offer to (see `Store::dispatcher_workers`); `None`
    /// when they cannot be read.
    async fn local_workers(&self, now: DateTime<Utc>) -> Option<Vec<WorkerRecord>> {
        match self.store.dispatcher_workers(now - self.settings.worker_ttl, self.id.as_str()).await {
            Ok(workers) => Some(workers),
            Err(e) => {
                tracing::warn!(error = ?e, "cannot load workers; retrying");
                None
            }
        }
    }

    /// The queues `workers` (as planned) still have free slots for while the ready set
    /// holds none of their tasks, with those slots (bounded by the ready set's room).
    fn idle_queues(&self, workers: &[WorkerRecord]) -> Vec<(String, u32)> {
        let mut free: HashMap<&str, u32> = HashMap::new();
        for worker in workers.iter().filter(|w| w.active < w.capacity) {
            for queue in &worker.queues {
                let slots = free.entry(queue.as_str()).or_default();
                *slots = slots.saturating_add(worker.capacity - worker.active);
            }
        }
        let room = u32::try_from(self.room()).unwrap_or(u32::MAX);
        free.into_iter()
            .filter(|(queue, _)| self.ready.peek(queue).is_none())
            .map(|(queue, slots)| (queue.to_owned(), slots.min(room)))
            .filter(|(_, slots)| *slots > 0)
            .collect()
    }

    /// Takes over tasks that have waited [`PULL_GRACE`] in the queues local workers have
    /// free slots for (as the last round found them; with nothing ready, as the roster
    /// holds them, read again when stale); returns how many it added to the ready set.
    async fn pull(&mut self) -> usize {
        if self.ready.is_empty() {
            if self.refresh_roster(Utc::now(), false).await.is_none() {
                return 0;
            }
            self.idle = self.idle_queues(&self.roster.workers);
        }
        let idle = std::mem::take(&mut self.idle);
        if idle.is_empty() {
            return 0;
        }
        let queues: Vec<&str> = idle.iter().map(|(q, _)| q.as_str()).collect();
        let slots: u64 = idle.iter().map(|(_, n)| u64::from(*n)).sum();
        let tasks = match self.store.queued_tasks_in(&queues, Utc::now() - PULL_GRACE, slots.min(BATCH as u64)).await {
            Ok(tasks) => tasks,
            Err(e) => {
                tracing::warn!(error = ?e, "cannot pull queued tasks; retrying");
                return 0;
            }
        };
        let added = self.hold_read(tasks);
        if added > 0 {
            self.metrics.dispatch_pulled.inc_by(added as u64);
        }
        added
    }

    /// Holds `QUEUED` tasks read from the database (no announcement behind them); returns
    /// how many the ready set did not hold yet.
    fn hold_read(&mut self, tasks: Vec<Task>) -> usize {
        let mut added = 0;
        for task in tasks {
            let entry = Entry {
                id: task.id,
                queue: task.queue,
                priority: task.priority,
                run_at: task.run_at,
                queued_at: task.updated_at,
                source: None,
                traceparent: None,
                avoid: None,
            };
            if self.ready.insert(entry) {
                added += 1;
            }
        }
        added
    }

    /// Commits the positions below which every message is placed.
    fn commit(&mut self, mode: CommitMode) {
        let positions = self.ready.commits();
        if positions.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in positions {
            if list.add_partition_offset(&self.topic, partition, Offset::Offset(offset)).is_err() {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&list, mode) {
            // The next commit carries the same or higher positions.
            tracing::debug!(error = %e, "offset commit failed");
        }
    }
}

/// What a round plans against, read at its start.
#[derive(Debug)]
struct Snapshot {
    /// The queues the ready set holds tasks of, by name.
    queues: Vec<String>,
    /// Their settings (a queue missing here is not offered from this round).
    settings: HashMap<String, QueueSettings>,
    /// The workers this dispatcher may offer to; planning counts its offers into their
    /// `active`.
    workers: Vec<WorkerRecord>,
    /// Whether `workers` were read for this round (not held from an earlier one).
    fresh: bool,
}

impl Snapshot {
    /// The queues with a cap or a rate: the offer transaction enforces them over every
    /// dispatcher; planning only keeps a round from planning beyond the cap itself.
    fn limited_queues(&self) -> Vec<&str> {
        self.queues
            .iter()
            .filter(|q| {
                self.settings.get(*q).is_some_and(|s| s.max_concurrency.is_some() || s.rate_limit_per_second.is_some())
            })
            .map(String::as_str)
            .collect()
    }
}

/// The worker serving `queue` with free capacity and the lowest load (active /
/// capacity, then active count, then id); `avoid` only when no other worker is free.
fn least_loaded<'a>(workers: &'a mut [WorkerRecord], queue: &str, avoid: Option<&str>) -> Option<&'a mut WorkerRecord> {
    let load = |w: &WorkerRecord| f64::from(w.active) / f64::from(w.capacity.max(1));
    let avoided = |w: &WorkerRecord| avoid == Some(w.id.as_str());
    workers.iter_mut().filter(|w| w.active < w.capacity && w.queues.iter().any(|q| q == queue)).min_by(|a, b| {
        avoided(a)
            .cmp(&avoided(b))
            .then(load(a).total_cmp(&load(b)))
            .then(a.active.cmp(&b.active))
            .then(a.id.cmp(&b.id))
    })
}

/// A dispatch announcement, decoded: a Kafka message, or a task queued by this process
/// (no source).
#[derive(Debug)]
struct Announcement {
    source: Option<Source>,
    envelope: Option<TaskEnvelope>,
    traceparent: Option<String>,
}

impl Announcement {
    fn read(message: &BorrowedMessage<'_>) -> Self {
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "traceparent")
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        });
        Announcement {
            source: Some((message.partition(), message.offset())),
            envelope: message.payload().and_then(|p| serde_json::from_slice(p).ok()),
            traceparent,
        }
    }
}

#[cfg(test)]
mod tests {
    use taskwire_domain::machine::{self, Command};

    use super::*;

    fn worker(id: &str, active: u32, capacity: u32, queues: &[&str]) -> WorkerRecord {
        WorkerRecord {
            id: id.into(),
            name: id.into(),
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            capacity,
            active,
            status: "ONLINE".into(),
            last_seen_at: Utc::now(),
            auto_accept: false,
        }
    }

    #[test]
    fn after_a_round_that_settled_nothing_the_next_waits_for_a_wake_up_or_the_recheck() {
        let mut pacer = Pacer::default();
        let start = Instant::now();
        assert!(pacer.due(start, false), "the first round runs at once");

        pacer.ran(start, 0, 5);
        assert!(!pacer.due(start, false), "a new task alone does not make another round");
        assert!(!pacer.due(start + IDLE_RECHECK / 2, false));
        assert!(pacer.due(start + IDLE_RECHECK / 2, true), "a wake-up (capacity freed) does at once");
        assert!(pacer.due(start + IDLE_RECHECK, false), "and so does the recheck");

        pacer.ran(start, 3, 5);
        assert!(pacer.due(start, false), "a round that settled something is followed at once");
        pacer.ran(start, 0, 0);
        assert!(pacer.due(start, false), "nothing waiting: nothing to hold back");
    }

    #[test]
    fn the_least_loaded_worker_serving_the_queue_is_chosen() {
        let mut workers = vec![
            worker("busy", 3, 4, &["q"]),
            worker("idle-elsewhere", 0, 4, &["other"]),
            worker("half", 2, 4, &["q"]),
            worker("full", 1, 1, &["q"]),
            worker("big", 2, 8, &["q", "other"]),
        ];
        let pick = |workers: &mut Vec<WorkerRecord>, queue: &str, avoid: Option<&str>| {
            least_loaded(workers, queue, avoid).map(|w| w.id.clone())
        };
        assert_eq!(pick(&mut workers, "q", None).as_deref(), Some("big"));
        assert_eq!(pick(&mut workers, "other", None).as_deref(), Some("idle-elsewhere"));
        assert_eq!(pick(&mut workers, "q", Some("big")).as_deref(), Some("half"), "the last holder goes last");
        assert_eq!(pick(&mut workers, "other", Some("idle-elsewhere")).as_deref(), Some("big"));
        assert!(pick(&mut workers, "nobody", None).is_none());
        workers.retain(|w| w.id != "half" && w.id != "busy");
        assert_eq!(pick(&mut workers, "q", Some("big")).as_deref(), Some("big"), "when nobody else is free");
        workers.retain(|w| w.id != "big");
        assert!(pick(&mut workers, "q", None).is_none(), "a full worker is never chosen");
    }

    fn envelope_template() -> TaskEnvelope {
        TaskEnvelope {
            v: 1,
            kind: EnvelopeType::Dispatch,
            task_id: String::new(),
            seq: 1,
            status: TaskStatus::Queued,
            previous_status: None,
            queue: "q".into(),
            attempt: 0,
            worker_id: None,
            at: Utc::now(),
            created_by: "alice".into(),
            version: 1,
            priority: 0,
            run_at: Utc::now(),
            message: None,
        }
    }

    #[test]
    fn a_full_local_feed_drops_the_newest_task_and_counts_it() {
        let metrics = Metrics::new();
        let (tx, mut rx) = mpsc::channel(2);
        let feed = LocalFeed { tx, metrics: metrics.clone() };
        let task = |n: u8| {
            let id = TaskId::generate(Utc::now());
            TaskEnvelope { task_id: id.to_string(), priority: n, ..envelope_template() }
        };
        let sent: Vec<TaskEnvelope> = (0..3).map(task).collect();
        for envelope in &sent {
            feed.announce(envelope.clone(), None);
        }
        let count = |outcome: &str| metrics.dispatch_local.with_label_values(&[outcome]).get();
        assert_eq!((count("fed"), count("dropped")), (2, 1));
        let kept: Vec<String> =
            std::iter::from_fn(|| rx.try_recv().ok()).filter_map(|a| a.envelope.map(|e| e.task_id)).collect();
        assert_eq!(kept, [sent[0].task_id.clone(), sent[1].task_id.clone()], "the oldest are kept, in order");
        drop(rx);
        feed.announce(sent[2].clone(), None);
        assert_eq!((count("fed"), count("dropped")), (2, 1), "a stopped matcher counts nothing");
    }

    fn announcement(id: TaskId, seq: u32, source: Option<Source>) -> Announcement {
        let envelope = TaskEnvelope { task_id: id.to_string(), seq, ..envelope_template() };
        Announcement { source, envelope: Some(envelope), traceparent: None }
    }

    /// A matcher on `store` whose consumer is never contacted (the tests call `ingest`
    /// and `round` themselves).
    fn quiet_matcher(store: &Store, metrics: &Metrics) -> Matcher {
        let consumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "matcher-test")
            .create_with_context(GroupContext::default())
            .expect("consumer");
        Matcher::new(
            store.clone(),
            crate::config::Config::defaults().dispatch,
            metrics.clone(),
            DispatcherId::generate(),
            consumer,
            "dispatch".into(),
        )
    }

    #[tokio::test]
    async fn kafka_copies_of_local_announcements_are_placed_without_a_query() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = taskwire_store::testing::test_store(dir.path()).await;
        let metrics = Metrics::new();
        let mut matcher = quiet_matcher(&store, &metrics);
        let statements = || store.stats().statements();
        let outcomes = |outcome: &str| metrics.dispatch_messages.with_label_values(&[outcome]).get();
        let (held, offered) = (TaskId::generate(Utc::now()), TaskId::generate(Utc::now()));

        let before = statements();
        matcher.ingest(vec![announcement(held, 1, None), announcement(offered, 1, None)]).await;
        assert_eq!(matcher.ready.len(), 2);
        matcher.ready.remove(offered); // as an offer does
        matcher.ingest(vec![announcement(held, 1, Some((0, 10))), announcement(offered, 1, Some((0, 11)))]).await;
        assert_eq!(statements(), before, "neither copy is checked against the database");
        assert_eq!((outcomes("duplicate"), outcomes("stale")), (1, 1));
        assert_eq!(matcher.ready.commits(), [(0, 10)], "the held task took its copy's offset over");

        // Another event of the same task was not fed here: it is checked (and, unknown
        // to the database, found stale).
        matcher.ingest(vec![announcement(offered, 2, Some((0, 12)))]).await;
        assert!(statements() > before, "a copy never fed here is checked");
        assert_eq!(outcomes("stale"), 2);

        // A revoked partition takes the held task away: a replay of its copy, should the
        // partition come back, is checked again rather than trusted.
        matcher.revoke(&[0]);
        assert!(matcher.ready.is_empty());
        let before = statements();
        matcher.ingest(vec![announcement(held, 1, Some((0, 10)))]).await;
        assert!(statements() > before, "a forgotten announcement is checked");
    }

    /// `n` tasks created `QUEUED` in queue `q`, announced to `matcher` as from this
    /// process.
    async fn queued(store: &Store, matcher: &mut Matcher, n: usize) -> Vec<TaskId> {
        let inputs = (0..n)
            .map(|_| {
                let input =
                    taskwire_domain::CreateTaskInput { queue: "q".into(), kind: "k".into(), ..Default::default() };
                taskwire_domain::NewTask::parse(input, "alice", Utc::now()).expect("valid input")
            })
            .collect();
        let created =
            store.create_tasks(inputs, taskwire_store::CreateMode::AllOrNothing, None).await.expect("created");
        let ids: Vec<TaskId> = created
            .into_iter()
            .map(|c| match c {
                taskwire_store::CreateOutcome::Created(task) => task.id,
                other => panic!("created, not {other:?}"),
            })
            .collect();
        matcher.ingest(ids.iter().map(|id| announcement(*id, 1, None)).collect()).await;
        ids
    }

    /// Worker `w1` hands task `id`, offered to it, back (through `store`).
    async fn release_by_w1(store: &Store, id: TaskId) {
        let token = store.task(id).await.expect("read").expect("exists").lease_token.expect("offered");
        store
            .transition(id, None, move |task| {
                let release = Command::Release { worker_id: "w1".into(), lease_token: token.as_str().to_owned() };
                Ok(machine::transition(task, release, Utc::now())?)
            })
            .await
            .expect("released");
    }

    #[tokio::test]
    async fn rounds_plan_against_the_held_workers_and_read_them_when_they_may_be_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = taskwire_store::testing::test_store(dir.path()).await;
        let metrics = Metrics::new();
        let mut matcher = quiet_matcher(&store, &metrics);
        let registration = |capacity| {
            taskwire_domain::WorkerRegistration::parse("w", &["q".to_owned()], capacity).expect("registration")
        };
        store.register_worker("w1", &registration(2)).await.expect("registered");
        store.touch_worker("w1", Some(matcher.id.as_str())).await.expect("held here");
        let read_at = |matcher: &Matcher| matcher.roster.read_at;

        let first = queued(&store, &mut matcher, 1).await;
        assert_eq!(matcher.round().await, 1, "offered");
        let read = read_at(&matcher).expect("the first round read the workers");
        queued(&store, &mut matcher, 1).await;
        assert_eq!(matcher.round().await, 1, "offered");
        assert_eq!(read_at(&matcher), Some(read), "the second planned against what the first read");

        // w1 is full: a round with a task waiting reads the workers before concluding so.
        let third = queued(&store, &mut matcher, 1).await;
        assert_eq!(matcher.round().await, 0);
        assert!(read_at(&matcher) > Some(read), "read again: slots may have been freed elsewhere");
        let read = read_at(&matcher).expect("read");

        // A slot freed through this process is counted in: offered without a read.
        release_by_w1(&store, first[0]).await;
        assert_eq!(matcher.round().await, 1, "the third task offered in the freed slot");
        assert_eq!(read_at(&matcher), Some(read), "no read: the freed slot was counted in");
        assert_eq!(store.task(third[0]).await.expect("read").expect("exists").status, TaskStatus::Assigned);

        // A change to the roster made here (a worker registered) is read at the next round.
        store.register_worker("w2", &registration(1)).await.expect("registered");
        store.touch_worker("w2", Some(matcher.id.as_str())).await.expect("held here");
        queued(&store, &mut matcher, 1).await;
        assert_eq!(matcher.round().await, 1, "offered to w2");
        assert!(read_at(&matcher) > Some(read), "read again after the roster changed");
        let read = read_at(&matcher).expect("read");

        // A worker drained through another process is not seen here until an offer to it
        // is refused; the roster is then read again.
        let elsewhere = taskwire_store::testing::another_process(dir.path()).await;
        release_by_w1(&store, third[0]).await;
        elsewhere.drain_worker("w1").await.expect("drained elsewhere");
        queued(&store, &mut matcher, 1).await;
        assert_eq!(matcher.round().await, 0, "refused: w1 is draining");
        assert_eq!(read_at(&matcher), None, "to be read again");
        assert_eq!(matcher.round().await, 0, "w2 is full");
        assert!(read_at(&matcher) > Some(read));
        let held: Vec<&str> = matcher.roster.workers.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(held, ["w2"], "the draining worker is out of the roster");
    }

    #[test]
    fn handled_announcements_are_bounded_and_keyed_by_event() {
        let mut handled = Handled::default();
        let first = TaskId::generate(Utc::now());
        handled.remember(first, 1);
        assert!(handled.contains(first, 1));
        assert!(!handled.contains(first, 2), "another event of the task is another announcement");
        handled.remember(first, 3);
        assert!(!handled.contains(first, 1) && handled.contains(first, 3), "the latest event counts");
        for _ in 0..HANDLED_CAPACITY {
            handled.remember(TaskId::generate(Utc::now()), 1);
        }
        assert!(!handled.contains(first, 3), "the oldest are forgotten past the bound");
        assert_eq!(handled.seqs.len(), HANDLED_CAPACITY);
        assert!(handled.order.len() <= HANDLED_CAPACITY);
    }
}
